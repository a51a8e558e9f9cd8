"""Training speed of every registered method on each task: wall time and samples/s.

Each method is built from the registry (so methods added later are timed too) on the task's
modalities it accepts; a method that needs a narrower input (``cnn``: one image modality;
``mcat``: two omics) gets the first subset that works. One fit on the first split of the
task's default split scheme, with a fixed number of epochs and no early stopping, then one
prediction of the test samples.

    python bench/train_speed.py [--tasks cells,rosmap] [--methods mm_dynamics,cnn] [--epochs 5]
                                [--batch-size 32] [--threads 1] [--device cpu]

samples/s counts training samples processed per second of fitting (epochs x training rows /
fit seconds); ``x fastest`` is the fit time relative to the fastest method on that task.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core.data.tasks import get_task  # noqa: E402
from core.errors import MMXError  # noqa: E402
from core.models.registry import get_method, list_methods, method_entry  # noqa: E402


def build(name: str, data, epochs: int, batch_size: int | None = None):
    """The method on the widest modality set it accepts, else its first workable pair, else one modality."""
    entry = method_entry(name)
    cfg = {}
    if hasattr(entry.config_cls(), "train"):
        cfg = {"epochs": epochs, "patience": None, **({"batch_size": batch_size} if batch_size else {})}
    kinds = getattr(entry.cls, "kinds", ("omics", "image"))
    mods = [m for m, s in data.specs.items() if s.kind in kinds]
    for choice in [mods] + [list(c) for c in itertools.combinations(mods, 2)] + [[m] for m in mods]:
        if not choice:
            continue
        try:
            sub = data.select(choice)
            return get_method(name, sub.specs, sub.classes, **cfg), sub
        except MMXError as e:
            reason = str(e)
    raise MMXError(reason if mods else f"no modality of kind {kinds}")


def time_method(name: str, task, epochs: int, device: str, batch_size: int | None = None) -> dict:
    method, data = build(name, task.dataset, epochs, batch_size)
    split = task.splits[task.default_split][0]
    t0 = time.perf_counter()
    fit = method.fit(data, split, seed=0, device=device)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    method.predict(data, split.test)
    pred_s = time.perf_counter() - t1
    return {"modalities": "+".join(data.specs), "epochs": fit.epochs_run, "fit_s": fit_s, "predict_s": pred_s,
            "samples_per_s": fit.epochs_run * len(split.train) / fit_s, "n_test": len(split.test)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="cells,rosmap,derm7pt")
    ap.add_argument("--methods", default="", help="comma-separated (default: every registered method)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=0, help="override deep methods' batch size (0: their default)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.methods.split(",") if args.methods else [m.name for m in list_methods()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
          f"{args.epochs} epochs per deep method")
    for task_name in args.tasks.split(","):
        task = get_task(task_name)
        split = task.splits[task.default_split][0]
        print(f"\n{task_name}: {len(split.train)} training samples, split {split.name}")
        print(f"{'method':<16} {'modalities':<28} {'epochs':>6} {'fit s':>8} {'samples/s':>10} {'predict s':>10} "
              f"{'x fastest':>9}")
        time_method("late_mlp", task, 1, args.device)  # warm-up (thread pools, lazy imports), not reported
        rows = {}
        for name in names:
            try:
                rows[name] = time_method(name, task, args.epochs, args.device, args.batch_size or None)
            except MMXError as e:
                print(f"{name:<16} skipped: {e}")
            except (RuntimeError, ValueError) as e:  # a method's own failure: report it, time the rest
                print(f"{name:<16} FAILED: {type(e).__name__}: {e}")
        fastest = min((r["fit_s"] for r in rows.values()), default=1.0)
        for name, r in rows.items():
            print(f"{name:<16} {r['modalities']:<28} {r['epochs']:>6} {r['fit_s']:>8.2f} {r['samples_per_s']:>10.0f} "
                  f"{r['predict_s']:>10.2f} {r['fit_s'] / fastest:>8.1f}x")


if __name__ == "__main__":
    main()
