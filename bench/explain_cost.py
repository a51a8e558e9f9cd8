"""Cost of explaining one pbc image per encoder: each captum explainer's seconds per sample and the
peak memory it adds, for the CNN rows of ``results/pbc/cnn.md`` (small CNN and ResNet at 64 px,
EfficientNet-Lite0 at 224 px).

Every table that explains a shipped model (faithfulness, counterfactual, sanity) and the dashboard's
live explanations pay this per sample, so the ratio to the ResNet at 64 px (the shipped pbc CNN) is
what moving a shipped model to EfficientNet-Lite0 multiplies them by. Explanation cost does not
depend on how well a model is trained, so each model is trained one epoch on a few rows only.
Writes ``results/bench/explain_cost.md``.

    python bench/explain_cost.py [--samples 4] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import _common as common  # noqa: E402
from core.data.splits import Split  # noqa: E402
from core.data.tasks import get_task  # noqa: E402
from core.experiments.pbc import LITE0_LAST_STAGE, PBC_CNN  # noqa: E402
from core.explain.attributions import attribute  # noqa: E402
from core.models.registry import get_method  # noqa: E402

EXPLAINERS = ("integrated_gradients", "gradient_shap", "occlusion")
#: (label, cnn config, image size); the first is the reference of the ratios
MODELS = (("ResNet, 64 px", {**PBC_CNN, "encoder": "resnet"}, 64),
          ("small CNN, 64 px", PBC_CNN, 64),
          ("EfficientNet-Lite0, 224 px", LITE0_LAST_STAGE, 224))


def cost(config: dict, size: int, samples: int) -> dict[str, tuple[float, float]]:
    """Per explainer: seconds per sample and peak resident memory added (MB)."""
    data = get_task("pbc", image_size=size).dataset
    rows = np.random.default_rng(0).permutation(len(data))
    split = Split("bench", rows[:64], rows[64:96], rows[96:96 + samples])
    method = get_method("cnn", data.specs, data.classes, **{**config, "epochs": 1})
    method.fit(data, split, seed=0, device="cpu")
    out = {}
    for explainer in EXPLAINERS:
        attribute(method, data, split.test[:1], explainer)  # warm-up
        common.reset_peak()
        base = common.current_rss()
        t0 = time.perf_counter()
        attribute(method, data, split.test, explainer)
        out[explainer] = ((time.perf_counter() - t0) / samples, (common.peak_rss() - base) / common.MB)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    started, header = common.now(), common.machine_lines()
    costs = {label: cost(config, size, a.samples) for label, config, size in MODELS}
    ref = costs[MODELS[0][0]]
    table = common.md_table(
        ["model", *[f"{e}: s per sample (x ResNet 64 px)" for e in EXPLAINERS],
         *[f"{e}: peak MB added" for e in EXPLAINERS]],
        [[label, *[f"{c[e][0]:.2f} (x{c[e][0] / ref[e][0]:.1f})" for e in EXPLAINERS],
          *[f"{c[e][1]:.0f}" for e in EXPLAINERS]] for label, c in costs.items()])
    print(table)
    common.write_report("explain_cost.py", "explain_cost", "Explaining one pbc image, per encoder", started, header,
                        __doc__.split("\n\n    python")[0] + f"\n\n{a.samples} samples per explainer after one "
                        "warm-up sample, captum's defaults of the tool (IG 32 steps, GradientSHAP 16 draws, occlusion "
                        "windows of 2 x 2 of the 16 x 16 patch grid). Times are wall-clock on a shared machine: upper "
                        "bounds.\n\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
