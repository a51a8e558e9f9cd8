"""How to train an ImageNet encoder on a 2-core CPU: three regimes of ``cnn`` with EfficientNet-Lite0
at the weights' own 224 px, on derm7pt's photos (official split) and pbc (first stratified split):

- frozen: every trunk unit keeps its ImageNet weights; their pooled output is computed once per image
  and a head is trained on it;
- last stages: the last ``TUNED`` units (stages 6-7 and the head convolution) train, on the frozen
  units' output computed once per image (that output is flipped where images would be);
- last stage: the same with only stage 7 and the head convolution trained (fewer operations per step);
- full: every unit trains on the images, with random resized crops, rotations, flips and colour jitter.

Prints validation and test balanced accuracy, accuracy and the wall time of each, and writes
``results/bench/<--out>.md`` (default ``finetune_regimes``). ``--seeds 0,1,2`` for several seeds (default: 0).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common  # noqa: E402
from core.data.dataset import MultimodalDataset  # noqa: E402
from core.data.splits import Split  # noqa: E402
from core.data.tasks import get_task  # noqa: E402
from core.evaluate import score  # noqa: E402
from core.experiments.mmdynamics import IMAGENET_LAST_STAGE, IMAGENET_LAST_STAGES  # noqa: E402
from core.models.registry import get_method  # noqa: E402

SIZE = 224
TUNED = IMAGENET_LAST_STAGES["encoder_tune_stages"]
REGIMES = {
    "frozen": dict(encoder_tune_stages=0, train=dict(epochs=80, batch_size=32, lr=1e-3, optimizer="adamw",
                                                     cosine=True, patience=20, augment=False)),
    "last stages": {k: v for k, v in IMAGENET_LAST_STAGES.items() if k not in ("encoder", "image_size")},
    "last stage": {k: v for k, v in IMAGENET_LAST_STAGE.items() if k not in ("encoder", "image_size")},
    "full": dict(train=dict(epochs=12, batch_size=32, lr=1e-3, encoder_lr=3e-4, optimizer="adamw", cosine=True,
                            patience=6, strong_augment=True)),
}
TARGETS = {"derm7pt dermoscopy": ("derm7pt", "derm"), "derm7pt clinical photo": ("derm7pt", "clinic"),
           "pbc": ("pbc", "image")}


def with_modality(ds: MultimodalDataset, modality: str) -> tuple[MultimodalDataset, Callable[[Split], Split]]:
    """``ds`` reduced to ``modality`` and the samples that have it (9 derm7pt cases lack a clinical
    photo), and a function taking a split of ``ds`` to the same split of those samples."""
    has = ds.present[modality].numpy()
    at = np.cumsum(has) - 1  # position of each kept sample

    def kept(split: Split) -> Split:
        return dataclasses.replace(split, **{k: at[v[has[v]]] for k, v in
                                             (("train", split.train), ("val", split.val), ("test", split.test))})

    return ds.subset(np.flatnonzero(has)).select([modality]), kept


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--regimes", default=",".join(REGIMES))
    p.add_argument("--out", default="finetune_regimes", help="results/bench/<out>.md")
    a = p.parse_args(argv)
    rows = []
    for target in a.targets.split(","):
        task, modality = TARGETS[target]
        td = get_task(task, image_size=SIZE)
        data, in_data = with_modality(td.dataset, modality)
        for regime in a.regimes.split(","):
            for seed in (int(s) for s in a.seeds.split(",")):
                split = in_data(td.splits[td.default_split][seed])
                m = get_method("cnn", data.specs, data.classes, encoder="efficientnet_lite0", **REGIMES[regime])
                t0 = time.perf_counter()
                fit = m.fit(data, split, seed=split.seed, device="cpu")
                took = time.perf_counter() - t0
                val, test = (score(m, data, rows_)["metrics"] for rows_ in (split.val, split.test))
                rows.append((target, regime, seed, val["balanced_accuracy"], test["balanced_accuracy"],
                             test["accuracy"], fit.best_epoch, took))
                print(f"{target:<24} {regime:<12} seed {seed}: val bal.acc {100 * val['balanced_accuracy']:.1f}, "
                      f"test bal.acc {100 * test['balanced_accuracy']:.1f}, acc {100 * test['accuracy']:.1f}, "
                      f"best epoch {fit.best_epoch}, {took / 60:.1f} min", flush=True)
    started = common.now()
    table = common.md_table(["target", "regime", "seed", "validation bal. acc.", "test bal. acc.", "test acc.",
                             "best epoch", "wall min"],
                            [[t, r, s, f"{100 * v:.1f}", f"{100 * b:.1f}", f"{100 * c:.1f}", e, f"{w / 60:.1f}"]
                             for t, r, s, v, b, c, e, w in rows])
    print(table)
    common.write_report("finetune_regimes.py", a.out, "Fine-tuning regimes of EfficientNet-Lite0 (ImageNet weights) "
                        "on a 2-core CPU", started, common.machine_lines(), __doc__.split("\n\nPrints")[0] + "\n\n"
                        + f"cnn at {SIZE} px; recipes in the script (AdamW, cosine schedule, early stopping on "
                        "validation balanced accuracy, class-weighted loss). Times are wall-clock on a shared machine: "
                        "upper bounds.\n\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
