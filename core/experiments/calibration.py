"""Calibration of the shipped models: ``python train.py --experiment <task>/calibration``.

For every checkpoint of the task: ECE (15 bins) before and after temperature scaling and
90 % split-conformal sets (:mod:`core.calibration`) and a reliability diagram. Nothing is trained and
nothing is written into the cards: the release records the same calibration in each card when it
trains the model (which is how the dashboard shows a prediction set beside every prediction); the
table records the sha256 of the weights it read, so a retrained model shows the table is stale. The
calibration rows are the validation part of the card's own split (or half its test part, for a
model that trained on the validation part).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from core.calibration import CONFIDENCE, calibration_parts, calibration_record, reliability
from core.errors import MMXError
from core.evaluate import card_split, predictable
from core.experiments import command, register_per_task
from core.experiments.runner import SYNTHETIC_BANNER, duration, weights_line
from core.shipped import available, load, weights_of
from core.train.device import resolve_device
from core.train.results import atomic_write_text, write_json
from core.viz.calibration import reliability_figure
from core.viz.export import result_formats, save_figure

TASKS = ("cells", "rosmap", "derm7pt", "pbc")


def _row(name: str, rec: dict) -> str:
    c = rec["conformal"]
    return (f"| {name} | {rec['calibrated_on'].split(' (')[0]} ({rec['n_calibration']}) | {rec['n_measured']} | "
            f"{100 * rec['ece']:.1f} | {rec['temperature']:.2f} | {100 * rec['ece_scaled']:.1f} | "
            f"{100 * c['coverage']:.1f} | {c['mean_set_size']:.2f} | {100 * c['singleton']:.0f} | "
            f"{100 * c['empty']:.0f} |")


def findings(records: dict[str, dict]) -> str:
    """What the numbers say: which models are over- or under-confident and whether the sets
    reach their coverage (within two binomial standard errors of the measured rows)."""
    lines = []
    for name, r in records.items():
        c, t = r["conformal"], r["temperature"]
        mood = ("over-confident (T > 1 softens it)" if t > 1.05 else "under-confident (T < 1 sharpens it)" if t < 0.95
                else "about right (T close to 1)")
        se = np.sqrt(c["confidence"] * (1 - c["confidence"]) / r["n_measured"])
        reach = ("reaches" if c["coverage"] >= c["confidence"] - 2 * se else "falls short of")
        lines.append(f"- **{name}**: ECE {100 * r['ece']:.1f} % -> {100 * r['ece_scaled']:.1f} % with T = {t:.2f}, "
                     f"so the model is {mood}. The {100 * c['confidence']:.0f} % sets cover "
                     f"{100 * c['coverage']:.1f} % "
                     f"of {r['n_measured']} measured samples ({reach} the target within 2 standard errors, "
                     f"{100 * se:.1f} points) with {c['mean_set_size']:.2f} classes on average.")
    return "\n".join(lines)


def run_calibration(task: str, out_dir: str | Path = "results", device: str = "auto",
                    data_dir: str | Path | None = None) -> list[Path]:
    """Calibrate every shipped model of ``task`` and write the table and diagram (the cards are the
    release's: untouched)."""
    shipped = [m for m in available() if m.task == task and m.error is None]
    if not shipped:
        raise MMXError(f"no shipped models of task {task!r} to calibrate (python train.py --release trains them)")
    t0 = time.perf_counter()
    records, bins, synthetic, timings, weights = {}, {}, False, {}, {}
    for m in shipped:
        start = time.perf_counter()
        method = load(task, m.name, device=str(resolve_device(device)))
        data, split = card_split(method, task, data_dir)
        synthetic |= bool(data.synthetic)
        rec = calibration_record(method, data, split)
        _, measured, _ = calibration_parts(method, split)
        measured, _ = predictable(method, data, measured)
        bins[m.name] = reliability(method.predict(data, measured).proba, data.y[torch.as_tensor(measured)].numpy())
        records[m.name] = rec
        weights.update(weights_of(method))
        timings[m.name] = round(time.perf_counter() - start, 1)
    seconds = time.perf_counter() - t0
    base = Path(out_dir) / task / "calibration"
    figures = save_figure(reliability_figure(bins, f"{task}: reliability of the shipped models (measured rows)"),
                          base.with_name("calibration_reliability"), result_formats())
    cmd = command(f"{task}/calibration") if task in TASKS else command("cells/calibration", task)
    write_json(base.with_suffix(".json"), {"title": f"Calibration of the shipped {task} models", "task": task,
                                           "synthetic": synthetic, "command": cmd,
                                           "wall_seconds": round(seconds, 1), "seconds": timings,
                                           "weights": weights, "records": records,
                                           "figures": [f.name for f in figures]})
    shown = next((f.name for f in figures if f.suffix == ".png"), None)
    md = [f"# Calibration of the shipped {task} models", ""]
    if synthetic:
        md += [SYNTHETIC_BANNER, ""]
    md += [f"Produced by: `{cmd}`", "",
           f"Temperature and {100 * CONFIDENCE:.0f} % split-conformal sets (crepes, hinge score, no smoothing) are "
           "fitted on the calibration rows (the validation part of the card's split; for a model that trained on its "
           "validation part, a seeded half of the test part) and measured on the rest of the test part. ECE: "
           "torchmetrics, 15 equal-width bins, top-class confidence, in %. T > 1: the model was over-confident. "
           "The release records the same calibration in each checkpoint's card (`calibration`), and the dashboard "
           "shows each prediction's set.", "", weights_line(weights), "",
           "| model | calibrated on (n) | measured n | ECE % | T | ECE after T % | coverage % | mean set size "
           "| single-class sets % | empty sets % |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
           *[_row(name, rec) for name, rec in records.items()], "",
           f"Wall time {duration(seconds)} (per model: "
           + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + "). Raw numbers: `calibration.json`.", "",
           "## Findings", "", findings(records), ""]
    if shown:
        md += [f"![Reliability diagrams]({shown})", ""]
    atomic_write_text(base.with_suffix(".md"), "\n".join(md))
    return [base.with_suffix(".md"), base.with_suffix(".json"), *figures]


register_per_task("calibration", TASKS, lambda task: f"{task}: ECE, temperature scaling and 90 % conformal sets "
                                                    "of every shipped model (measured again; the cards are left alone)",
                  run_calibration)
