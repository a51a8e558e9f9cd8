"""Experiments: methods x modalities x (folds x seeds), summarised into result tables.

A table is a list of :class:`Row` s run on one task; rows that differ only by a test-time
mask reuse the same trained models. Every table is written as
``results/<task>/<name>.json`` (every fold's raw numbers, config, data hash, wall time,
device, command) and ``.md`` (mean ± std in the seed study's format).
"""
from __future__ import annotations

import dataclasses
import json
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core import metrics
from core.data.tasks import TaskData, get_task
from core.errors import MMXError
from core.models.registry import get_method
from core.train import distributed
from core.train.device import resolve_device
from core.train.results import atomic_write_text, write_json


@dataclass
class Row:
    """One line of a result table."""

    label: str
    method: str
    modalities: tuple[str, ...] | None = None  # None: every modality of the task
    config: dict = field(default_factory=dict)
    mask: dict[str, str] | None = None  # test-time masking
    target: str | None = None  # an extra label column instead of y
    image_size: int | None = None  # this row's images at another size than the table's (the same samples)


@dataclass
class RowResult:
    row: Row
    runs: list[dict]  # one per split: {"split", "seed", "metrics", "fit_seconds", "best_epoch", "n_test"}

    @property
    def summary(self) -> dict[str, tuple[float, float]]:
        return metrics.summarize([r["metrics"] for r in self.runs])


SYNTHETIC_BANNER = "**SYNTHETIC DATA** (the `demo` task): these numbers say nothing about real cells."


def predictions(y: np.ndarray, proba: np.ndarray) -> dict:
    """What a run keeps of its test predictions so that rows can be compared case by case later
    (:mod:`core.stats`): true and predicted labels and the class probabilities (4 decimals)."""
    proba = np.asarray(proba, dtype=float)
    return {"y": np.asarray(y).tolist(), "pred": proba.argmax(1).tolist(), "proba": np.round(proba, 4).tolist()}


def _model_key(row: Row, split_name: str) -> str:
    return json.dumps([row.method, row.modalities, row.config, row.target, row.image_size, split_name], sort_keys=True,
                      default=str)


def run_rows(task: TaskData, rows: list[Row], split: str | None = None, seeds: tuple[int, ...] | None = None,
             device: str = "auto", progress: bool = False, log: Callable[[str], None] = print,
             resized: Callable[[int], TaskData] | None = None) -> list[RowResult]:
    """Train and evaluate every row on every split of ``task`` (optionally only ``seeds``); a row with
    its own ``image_size`` runs on ``resized(size)``, the same task at that size."""
    scheme = split or task.default_split
    if scheme not in task.splits:
        raise MMXError(f"task {task.dataset.name!r} has no split {scheme!r}; it has {list(task.splits)}")
    splits = [s for s in task.splits[scheme] if seeds is None or s.seed in seeds]
    if not splits:
        raise MMXError(f"no split of {scheme!r} uses seeds {seeds}")
    trained: dict[str, tuple] = {}
    results = []
    for row in rows:
        if row.image_size is not None and resized is None:
            raise MMXError(f"row {row.label!r} asks for {row.image_size} px images: give run_rows a resized task")
        data = (resized(row.image_size) if row.image_size is not None else task).dataset.with_target(row.target)
        data = data.select(list(row.modalities)) if row.modalities else data
        runs = []
        for sp in splits:
            key = _model_key(row, sp.name)
            if key not in trained:
                method = get_method(row.method, data.specs, data.classes, **row.config)
                fit = method.fit(data, sp, seed=sp.seed, device=device, progress=progress)
                trained[key] = (method, fit)
            method, fit = trained[key]
            pred = method.predict(data, sp.test, mask=row.mask)
            y = data.y[torch.as_tensor(sp.test)].numpy()
            m = metrics.compute(y, pred.proba, with_auroc=True)
            runs.append({"split": sp.name, "seed": sp.seed, "metrics": m, "fit_seconds": fit.seconds,
                         "best_epoch": fit.best_epoch, "n_test": int(len(sp.test)),
                         **({"chosen": method.chosen} if getattr(method, "chosen", None) else {}),
                         **predictions(y, pred.proba)})
            log(f"  {row.label:<28} {sp.name:<28} acc {m['accuracy']:.3f}  bal.acc {m['balanced_accuracy']:.3f}  "
                f"({fit.seconds:.1f} s)")
        results.append(RowResult(row, runs))
    return results


def write_table(out_dir: str | Path, task: TaskData, name: str, title: str, results: list[RowResult],
                columns: tuple[str, ...] = metrics.SIX, seconds: float = 0.0, device: str = "auto",
                findings: str = "", command: str | None = None, extra: dict | None = None) -> Path:
    """Write ``<out_dir>/<task>/<name>.json`` and ``.md``; returns the Markdown path."""
    ds = task.dataset
    command = command or "python " + " ".join(shlex.quote(a) for a in sys.argv)
    dev = str(resolve_device(device))
    base = Path(out_dir) / ds.name / name
    payload = {
        "title": title, "task": ds.name, "synthetic": ds.synthetic, "command": command,
        "data_hash": ds.data_hash(), "device": dev, "processes": distributed.world_size(), "host": platform.node(),
        "torch": torch.__version__,
        "wall_seconds": round(seconds, 1), "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rows": [{"label": r.row.label, "row": dataclasses.asdict(r.row),
                  "classes": list(ds.with_target(r.row.target).classes), "runs": r.runs,
                  "summary": {k: list(v) for k, v in r.summary.items()}} for r in results],
        **(extra or {}),
    }
    write_json(base.with_suffix(".json"), payload)
    if ds.n_classes == 2 and "auroc" not in columns:
        columns = (*columns, "auroc")
    table = metrics.markdown_table({r.row.label: r.summary for r in results}, columns)
    n_runs = len(results[0].runs) if results else 0
    md = [f"# {title}", ""]
    if ds.synthetic:
        md += [SYNTHETIC_BANNER, ""]
    md += [
        f"Produced by: `{command}`", "",
        f"Mean ± std over {n_runs} runs (folds x seeds), percent; {metrics.STD_NOTE}. Best mean per column "
        "in bold.", "",
        table, "",
        f"Data hash `{ds.data_hash()[:16]}`, device `{dev}`, wall time {duration(seconds)}. "
        f"Raw per-run numbers: `{base.name}.json`.",
    ]
    if findings:
        md += ["", "## Findings", "", findings]
    atomic_write_text(base.with_suffix(".md"), "\n".join(md) + "\n")
    return base.with_suffix(".md")


def run_table(name: str, title: str, task: str, rows: list[Row], split: str | None = None,
              seeds: tuple[int, ...] | None = None, task_options: dict | None = None, device: str = "auto",
              out_dir: str | Path = "results", data_dir: str | None = None,
              findings: Callable[[dict[str, RowResult]], str] | None = None, columns: tuple[str, ...] = metrics.SIX,
              progress: bool = False, command: str | None = None) -> tuple[list[RowResult], Path]:
    """Run ``rows`` on ``task`` and write the table; ``findings(label -> RowResult)`` writes the prose."""
    td = get_task(task, data_dir, **(task_options or {}))
    t0 = time.perf_counter()
    results = run_rows(td, rows, split, seeds, device, progress,
                       resized=lambda size: get_task(task, data_dir, **{**(task_options or {}), "image_size": size}))
    seconds = time.perf_counter() - t0
    text = findings({r.row.label: r for r in results}) if findings else ""
    path = write_table(out_dir, td, name, title, results, columns, seconds, device, text, command)
    return results, path


def duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def weights_line(weights: dict[str, dict[str, str]]) -> str:
    """The shipped weights a table read (:func:`core.shipped.weights_of`), for its Markdown."""
    if not weights:
        return "Weights read: none shipped (a model trained for this run)."
    return "Weights read (sha256, first 16 hex digits; the JSON has them whole): " + "; ".join(
        f"`{key}` " + ", ".join(f"{f} {h[:16]}" for f, h in files.items()) for key, files in weights.items()) + "."


def pct(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{100 * x:.1f}"
