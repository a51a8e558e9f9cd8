"""Training and inference speed and peak memory of every registered method on each task.

Each method is built from the registry (so methods added later are timed too) on the task's
modalities it accepts; a method that needs a narrower input (``cnn``: one image modality;
``mcat``: two omics) gets the first subset that works. One fit on the first split of the
task's default split scheme, with a fixed number of epochs and no early stopping, then one
prediction of the test samples.

    python bench/train_speed.py [--tasks cells,rosmap] [--methods mm_dynamics,cnn] [--epochs 5]
                                [--batch-size 32] [--threads 1] [--device cpu]
                                [--out results/bench/train_speed.md]

train samples/s counts training samples processed per second of fitting (epochs x training rows
/ fit seconds; a two-stage method counts both stages' epochs); predict samples/s is test rows per
second of prediction; ``x fastest`` is the fit time relative to the fastest method on that task.
Peak RSS growth is the process's resident high-water mark during fit + predict above its
resident size when the method started (the task's data already loaded); on CUDA the peak
allocated device memory is reported too. A synthetic task (``demo``) is labelled SYNTHETIC.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench import _common as common  # noqa: E402
from core.data.tasks import get_task  # noqa: E402
from core.errors import MMXError  # noqa: E402
from core.models.registry import get_method, list_methods, method_entry, training_stages, with_epochs  # noqa: E402
from core.train.device import resolve_device  # noqa: E402
from core.train.results import atomic_write_text  # noqa: E402

HEADERS = ["method", "modalities", "epochs", "fit s", "train samples/s", "predict s", "predict samples/s",
           "peak RSS growth MB", "CUDA peak MB", "device", "x fastest"]


def build(name: str, data, epochs: int, batch_size: int | None = None):
    """The method on the widest modality set it accepts, else its first workable pair, else one modality;
    every training stage runs ``epochs`` epochs without early stopping."""
    entry = method_entry(name)
    stages = training_stages(entry.config_cls)
    cfg = with_epochs(entry.config_cls, {f"{s}.{k}": v for s in stages for k, v in
                                         [("patience", None)] + ([("batch_size", batch_size)] if batch_size else [])},
                      epochs) if stages else {}
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
    """One fit and one test prediction: seconds, throughput and peak memory."""
    method, data = build(name, task.dataset, epochs, batch_size)
    split = task.splits[task.default_split][0]
    dev = resolve_device(device)
    common.reset_peak(dev)
    rss0 = common.current_rss()
    t0 = time.perf_counter()
    fit = method.fit(data, split, seed=0, device=device)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    method.predict(data, split.test)
    pred_s = time.perf_counter() - t1
    gpu = common.cuda_peak(dev)
    return {"modalities": "+".join(data.specs), "epochs": fit.epochs_run, "fit_s": fit_s, "predict_s": pred_s,
            "samples_per_s": fit.epochs_run * len(split.train) / fit_s, "n_test": len(split.test),
            "predict_per_s": len(split.test) / pred_s, "peak_rss_mb": max(0, common.peak_rss() - rss0) / common.MB,
            "cuda_peak_mb": None if gpu is None else gpu / common.MB, "device": str(dev)}


def table_rows(rows: dict[str, dict]) -> list[list]:
    """Formatted cells of :data:`HEADERS`, one row per timed method."""
    fastest = min((r["fit_s"] for r in rows.values()), default=1.0)
    return [[name, r["modalities"], r["epochs"], f"{r['fit_s']:.2f}", f"{r['samples_per_s']:.0f}",
             f"{r['predict_s']:.3f}", f"{r['predict_per_s']:.0f}", f"{r['peak_rss_mb']:.0f}",
             "-" if r["cuda_peak_mb"] is None else f"{r['cuda_peak_mb']:.0f}", r["device"],
             f"{r['fit_s'] / fastest:.1f}x"] for name, r in rows.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="cells,rosmap,derm7pt,pbc")
    ap.add_argument("--methods", default="", help="comma-separated (default: every registered method)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=0, help="override deep methods' batch size (0: their default)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(common.ROOT / "results" / "bench" / "train_speed.md"),
                    help="the Markdown report ('' writes none)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start, started = time.perf_counter(), common.now()
    names = args.methods.split(",") if args.methods else [m.name for m in list_methods()]
    header = common.machine_lines() + [
        f"{args.epochs} epochs per deep method (every training stage), no early stopping; one fit on the first "
        "split of the task's default scheme, then one prediction of its test rows"]
    print("\n".join(header))
    sections = []
    tasks = args.tasks.split(",")
    for i, task_name in enumerate(tasks):
        task = get_task(task_name)
        split = task.splits[task.default_split][0]
        label = f"{task_name} (SYNTHETIC data)" if task.dataset.synthetic else task_name
        title = (f"{label}: {len(split.train)} training and {len(split.test)} test samples, split "
                 f"{split.name}")
        print(f"\n{title}", flush=True)
        time_method("late_mlp", task, 1, args.device)  # warm-up (thread pools, lazy imports), not reported
        rows, notes = {}, []
        for name in names:
            try:
                rows[name] = time_method(name, task, args.epochs, args.device, args.batch_size or None)
                print(f"  {name}: fit {rows[name]['fit_s']:.1f} s", flush=True)
            except MMXError as e:
                notes.append(f"{name}: skipped: {e}")
            except (RuntimeError, ValueError) as e:  # a method's own failure: report it, time the rest
                notes.append(f"{name}: FAILED: {type(e).__name__}: {e}")
        table = common.md_table(HEADERS, table_rows(rows))
        print(table + "".join(f"\n{n}" for n in notes))
        notes.append(f"load average (1, 5, 15 min) when this task ended: {common.load_now()}")
        sections.append(f"## {title}\n\n{table}\n" + "".join(f"\n- {n}" for n in notes) + "\n")
        if args.out:  # after every task: an interrupted run keeps what it measured
            write_report(args.out, started, time.perf_counter() - start, header, sections, i + 1 == len(tasks))
    print(f"\nwhole run: {(time.perf_counter() - start) / 60:.1f} min" + (f"; wrote {args.out}" if args.out else ""))


def write_report(path: str, started: str, seconds: float, header: list[str], sections: list[str], done: bool) -> None:
    span = f"wall time {seconds / 60:.1f} min for the whole run" if done else \
        f"interrupted or still running: {seconds / 60:.1f} min so far"
    atomic_write_text(path, (
        f"# Training and inference speed\n\nMeasured {started} by `bench/train_speed.py` ({span}):\n\n"
        f"    {common.command_line('train_speed.py')}\n\n```\n" + "\n".join(header) + "\n```\n\n"
        "Times are wall-clock seconds on a machine shared with other jobs (see the load average): upper bounds, "
        "for comparing methods within a table rather than as absolute speeds. Peak RSS growth: resident "
        "high-water mark during fit + predict above the resident size when the method started (the task's data "
        "already loaded). epochs: what the fit reports, summed over training stages; for a scikit-learn method "
        "its own iteration count (so its train samples/s is not comparable).\n\n" + "\n".join(sections)))

if __name__ == "__main__":
    main()
