"""Cost of one training step of EfficientNet-Lite0 at 224 px per number of trained trunk units.

With ``encoder_tune_stages=k`` only the last ``k`` units train and the frozen units' output is
computed once per image (``core.models.prefix_cache``), so a step runs the trained units alone:
forward, backward and an AdamW update on a batch of that cached output. ``k`` = 0 is the frozen
trunk (a head on pooled features), 2 the last stage + head convolution, 3 stages 6-7 + head
convolution, 9 every unit on the images. Prints milliseconds per image per step and the ratio to
the cheapest, writes ``results/bench/imagenet_steps.md``.

    python bench/imagenet_steps.py [--units 0,2,3,9] [--batch-size 32] [--steps 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench import _common as common  # noqa: E402
from core.models.encoders import ImageNetEncoder  # noqa: E402

SIZE = 224


def step_ms(units: int, batch: int, steps: int) -> float:
    """Milliseconds per image of one training step with the last ``units`` units trained."""
    enc = ImageNetEncoder("efficientnet_lite0", 3, 128, tune_stages=units)
    images = torch.rand(batch, 3, SIZE, SIZE)
    cached = units < enc.n_units
    with torch.no_grad():
        x = enc.prefix(images) if cached else images
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-4)
    enc.train()

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        enc(x).square().mean().backward()
        opt.step()

    with enc.from_prefix() if cached else torch.enable_grad():
        one()  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            one()
    return (time.perf_counter() - t0) / steps / batch * 1000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--units", default="0,2,3,9")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    started, header = common.now(), common.machine_lines()
    times = {int(k): step_ms(int(k), a.batch_size, a.steps) for k in a.units.split(",")}
    low = min(times.values())
    table = common.md_table(["trained units", "ms per image per step", "x cheapest"],
                            [[k, f"{v:.1f}", f"{v / low:.1f}"] for k, v in times.items()])
    print(table)
    common.write_report("imagenet_steps.py", "imagenet_steps", "EfficientNet-Lite0 training step by trained units",
                        started, header, __doc__.split("\n\n    python")[0] + f"\n\nBatch {a.batch_size}, {a.steps} "
                        "timed steps after one warm-up, random images. Times are wall-clock on a shared machine: upper "
                        "bounds.\n\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
