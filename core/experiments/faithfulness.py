"""``cells/faithfulness`` and ``derm7pt/faithfulness``: are the learned FI maps of the shipped MM
dynamics models faithful to the models, compared with captum's attributions and a random order?

Each run loads the shipped ``mm_dynamics`` checkpoint (its FI gates on cells' RNA and protein, its
patch maps on the cells image and on derm7pt's clinical and dermoscopic photos), draws a seeded
random subsample of its test split (the cost of occlusion and feature ablation grows with the
number of units: 1390 per cell, 512 per lesion; the sample count keeps a run within about 8
minutes on one CPU thread) and traces per-modality deletion and insertion curves of the learned
maps, integrated gradients, occlusion, feature ablation, GradientSHAP and a random order
(:mod:`core.explain.faithfulness`). ``task="demo"`` trains a quick MM dynamics on the synthetic
task instead (no checkpoint), for tests.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.data.dataset import MultimodalDataset
from core.data.tasks import get_task
from core.experiments import command, register_experiment
from core.experiments.mmdynamics import one_cpu_thread
from core.experiments.runner import SYNTHETIC_BANNER, duration, weights_line
from core.explain.attributions import EXPLAINERS
from core.explain.faithfulness import (
    ALPHA,
    CURVES,
    LEARNED,
    NAMES,
    RANDOM,
    STEPS,
    Faithfulness,
    explanations,
    faithfulness,
)
from core.explain.live import patch_grid, patch_size
from core.explain.sample import heldout_cohort
from core.models.base import Method
from core.models.registry import get_method
from core.shipped import load, weights_of
from core.train.device import resolve_device
from core.train.results import atomic_write_text, write_json
from core.viz.export import result_formats, save_figure
from core.viz.faithfulness import curves_figure

NAME = "faithfulness"
SAMPLES = {"cells": 64, "derm7pt": 120, "demo": 12}  # test samples drawn (seeded) per task
SEED = 0
DEMO_TRAIN = dict(epochs=4, batch_size=32, lr=1e-3, lr_step=None, patience=None)
# captum settings (the defaults of core.explain.attributions.attribute, stated here for the tables)
ATTRIBUTION = dict(n_steps=32, n_samples=16, n_baselines=16, stdevs=0.1, window=2)


@register_experiment("cells/faithfulness", "cells: deletion / insertion faithfulness of MM dynamics' learned FI maps "
                                           "vs captum attributions and random (+ figure)")
@one_cpu_thread
def cells_faithfulness(out_dir="results", device="auto", data_dir=None, progress=False, task="cells") -> list[Path]:
    return run("cells/faithfulness", task, out_dir, device, data_dir)


@register_experiment("derm7pt/faithfulness", "derm7pt: deletion / insertion faithfulness of Image MM dynamics' patch "
                                             "maps vs captum attributions and random (+ figure)")
@one_cpu_thread
def derm_faithfulness(out_dir="results", device="auto", data_dir=None, progress=False, task="derm7pt") -> list[Path]:
    return run("derm7pt/faithfulness", task, out_dir, device, data_dir)


def run(name: str, task: str, out_dir: str | Path, device: str, data_dir: str | None, steps: int = STEPS) -> list[Path]:
    """Explain a seeded subsample of the model's test split with every explainer, trace the curves
    and write ``<out_dir>/<task>/faithfulness.{md,json}`` and the curves figure."""
    t0 = time.perf_counter()
    method, data, test, source = shipped_model(task, data_dir, device)
    n = min(SAMPLES.get(task, SAMPLES["demo"]), len(test))
    idx = test[np.sort(np.random.default_rng(SEED).choice(len(test), n, replace=False))]
    result = faithfulness(method, data, idx, (LEARNED, *EXPLAINERS), steps=steps, seed=SEED, attribution=ATTRIBUTION)
    seconds = time.perf_counter() - t0
    base = Path(out_dir) / data.name / NAME
    title = f"Faithfulness of the learned FI maps vs captum attributions ({data.name}, MM dynamics)"
    fig = curves_figure(result.fractions, {m: {e: {c: v[0] for c, v in by.items()} for e, by in ex.items()}
                                           for m, ex in result.mean_curves().items()}, NAMES,
                        title=f"{data.name}{' (SYNTHETIC)' if data.synthetic else ''}: mean deletion / insertion "
                              f"curves over {n} test samples")
    figures = save_figure(fig, base, result_formats())
    cmd = command(name, task)
    grids = {m: (*patch_grid(method, m), patch_size(method)) for m, s in method.specs.items() if s.kind == "image"}
    setting = {"samples": int(n), "test_samples": int(len(test)), "steps": steps, "baseline": result.baseline,
               "seed": SEED, "source": source, "patch_grids": grids, "attribution": ATTRIBUTION,
               "weights": weights_of(method)}
    write_json(base.with_suffix(".json"), _payload(result, data, method, cmd, seconds, device, setting, figures))
    atomic_write_text(base.with_suffix(".md"), _markdown(result, data, cmd, seconds, setting, figures, title))
    return [base.with_suffix(".md"), base.with_suffix(".json"), *figures]


def seeded_rows(test: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of the ``test`` rows, drawn with the experiments' seed, in their order."""
    n = min(n, len(test))
    return test[np.sort(np.random.default_rng(SEED).choice(len(test), n, replace=False))]


def learns_maps(method: Method, data: MultimodalDataset, row: int) -> bool:
    """Whether the model gives its own informativeness maps (MM dynamics), tried on one row."""
    own = explanations(method, data, np.array([row]), (LEARNED,))[0][LEARNED]
    return bool(own.feature_scores or own.patch_maps)


def shipped_model(task: str, data_dir: str | None, device: str,
                  name: str = "mm_dynamics") -> tuple[Method, MultimodalDataset, np.ndarray, str]:
    """The model, its data and test rows: the shipped checkpoint ``<task>/<name>``, or a quick MM
    dynamics fit on ``demo``."""
    if task == "demo":
        td = get_task(task, data_dir)
        split = td.splits[td.default_split][0]
        method = get_method("mm_dynamics", td.dataset.specs, td.dataset.classes, **DEMO_TRAIN)
        method.fit(td.dataset, split, seed=SEED, device=device)
        return (method, td.dataset, np.asarray(split.test),
                f"MM dynamics trained for {DEMO_TRAIN['epochs']} epochs on the synthetic demo task, test part of "
                f"split {split.name}")
    method = load(task, name, device=str(resolve_device(device)))
    cohort = heldout_cohort(method, data_dir)
    return (method, cohort.data, np.asarray(cohort.idx),
            f"shipped checkpoint `checkpoints/{task}/{name}`, {cohort.source} ({method.card['split']['name']})")


def _markdown(result: Faithfulness, data: MultimodalDataset, cmd: str, seconds: float, setting: dict,
              figures: list[Path], title: str) -> str:
    table, vs = result.table(), result.versus(LEARNED, EXPLAINERS)
    a = setting["attribution"]
    md = [f"# {title}", ""]
    if data.synthetic:
        md += [SYNTHETIC_BANNER, ""]
    md += [
        f"Produced by: `{cmd}`", "",
        f"Model: {setting['source']}. {weights_line(setting['weights'])}", "",
        f"Samples: {setting['samples']} of the {setting['test_samples']} test samples "
        f"(seeded random subsample, seed {SEED}; the cost of occlusion and feature ablation grows with the units per "
        "sample, and the subsample keeps the run within about 8 minutes on one CPU thread). Explained class: each "
        "sample's predicted class.", "",
        f"Protocol: one modality at a time, its units (omics features; patches of the model's own grid, all "
        f"channels{_grid_note(setting['patch_grids'])}) are ranked by each explainer for the sample, most important "
        f"first. Deletion replaces the top k units with the baseline ({_baseline_note(result.baseline)}), insertion "
        f"starts from the all-baseline modality and puts the top k real units back; the other modalities stay real. "
        f"The curve is the probability of the originally predicted class at {setting['steps'] + 1} fractions 0, "
        f"1/{setting['steps']}, ..., 1 of the units; AUC = trapezoid area, in [0, 1]. Deletion: lower is more "
        "faithful; insertion: higher. Each explainer against the seeded random order, paired by sample: two-sided "
        f"Wilcoxon signed-rank test, 'better' / 'worse' at p < {ALPHA}. AUC mean ± std (sample standard "
        "deviation, ddof 1) over the samples that have the modality. Attributions: captum 0.9 on the scaled "
        f"inputs the network sees, target = predicted-class probability, the same baseline; integrated gradients "
        f"{a['n_steps']} steps, occlusion {a['window']} x {a['window']}-patch windows moved one patch at a time (one "
        f"feature on omics), feature ablation one patch / feature at a time, GradientSHAP {a['n_samples']} draws "
        f"per sample from {a['n_baselines']} references (the baseline + Gaussian noise, sd {a['stdevs']}), seeded.",
        "",
        "## Deletion and insertion AUC", "",
        _auc_table(table, result), "",
    ]
    if figures:
        shown = next((f.name for f in figures if f.suffix == ".png"), figures[0].name)
        md += [f"![Deletion and insertion curves]({shown})", "",
               "Files: " + ", ".join(f"[{f.name}]({f.name})" for f in figures) + ". Mean over samples per fraction.",
               ""]
    if len(vs):
        md += ["## Learned FI maps against each captum explainer (paired by sample)", "", _versus_table(vs), ""]
    md += [f"Wall time {duration(seconds)} (loading, explanations and curves; "
           + ", ".join(f"{NAMES.get(k, k)} {v:.1f} s" for k, v in result.seconds.items())
           + f"). Per-sample AUCs and the mean curves: `{NAME}.json`.", "",
           "## Findings", "", findings(result, alpha=ALPHA)]
    return "\n".join(md) + "\n"


def _grid_note(grids: dict[str, tuple[int, int, int]]) -> str:
    return "".join(f"; {m}: {r} x {c} patches of {p} px" for m, (r, c, p) in grids.items())


def _baseline_note(baseline: str) -> str:
    return ("the training mean after scaling; for images the mean training image" if baseline == "mean"
            else "zeros after scaling")


def _p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else f"{p:.2g}"


def _auc_table(table: pd.DataFrame, result: Faithfulness) -> str:
    lines = ["| Modality | Explainer | Deletion AUC ↓ | vs random (Δ, p) | Insertion AUC ↑ | vs random (Δ, p) | "
             "Explanation time (all modalities) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for (m, e), g in table.groupby(["modality", "explainer"], sort=False):
        cells = []
        for c in CURVES:
            r = g[g.curve == c].iloc[0]
            cells += [f"{r.auc_mean:.3f} ± {r.auc_std:.3f}",
                      "—" if e == RANDOM else f"{r.delta:+.3f}, p {_p(r.p_value)}, {r.verdict}"]
        took = result.seconds.get(e)
        lines.append(f"| {m} | {NAMES[e]} | " + " | ".join(cells) + f" | {'—' if took is None else f'{took:.1f} s'} |")
    return "\n".join(lines)


def _versus_table(vs: pd.DataFrame) -> str:
    lines = ["| Modality | Captum explainer | Deletion: Δ AUC learned − captum, p | Insertion: Δ, p |",
             "| --- | --- | --- | --- |"]
    for (m, o), g in vs.groupby(["modality", "other"], sort=False):
        cells = [f"{r.delta:+.3f}, p {_p(r.p_value)}, learned {r.verdict}" for c in CURVES
                 for r in [g[g.curve == c].iloc[0]]]
        lines.append(f"| {m} | {NAMES[o]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(result: Faithfulness, alpha: float = ALPHA) -> str:
    """Per modality: the learned map against random and against captum's explainers, the most
    faithful explainer per curve; then the counts over all modality x curve comparisons."""
    table, vs = result.table(alpha), result.versus(LEARNED, EXPLAINERS, alpha)
    lines = []
    for m in result.curves:
        t = table[table.modality == m]
        parts = []
        for c in CURVES:
            tc = t[(t.curve == c) & (t.explainer != RANDOM)]
            rnd = t[(t.curve == c) & (t.explainer == RANDOM)].iloc[0]
            best = tc.sort_values("auc_mean", ascending=c == "deletion").iloc[0]
            text = f"{c}: random {rnd.auc_mean:.3f}, most faithful {NAMES[best.explainer]} {best.auc_mean:.3f}"
            learned = tc[tc.explainer == LEARNED]
            if len(learned):
                r = learned.iloc[0]
                v = vs[(vs.modality == m) & (vs.curve == c)]
                text += (f"; learned FI {r.auc_mean:.3f} (vs random: {r.verdict}, Δ {r.delta:+.3f}, p {_p(r.p_value)}; "
                         f"vs the {len(v)} captum explainers: {_counts(v)})")
            parts.append(text)
        d = result.curves[m][RANDOM]["deletion"]
        lines.append(f"- **{m}** ({int(t.n.iloc[0])} samples; the whole modality at the baseline changes the predicted "
                     f"class's probability by {np.nanmean(d[:, -1] - d[:, 0]):+.3f} on average, the room every curve "
                     "has): " + "; ".join(parts) + ".")
    captum = table[table.explainer.isin(EXPLAINERS)]
    learned = table[table.explainer == LEARNED]
    summary = (f"- Over all modalities and both curves: captum's explainers are better than random in "
               f"{int((captum.verdict == 'better').sum())} of {len(captum)} (explainer x modality x curve) comparisons")
    if len(learned):
        summary += (f"; the learned FI maps are better than random in {int((learned.verdict == 'better').sum())} of "
                    f"{len(learned)} and, against captum's explainers (paired), {_counts(vs)} of {len(vs)} "
                    "comparisons. So the learned maps are "
                    + _overall(learned, vs))
    return "\n".join(lines + [summary + "."])


def _counts(v: pd.DataFrame) -> str:
    return (f"more faithful in {int((v.verdict == 'better').sum())}, less in {int((v.verdict == 'worse').sum())}, "
            f"no difference in {int((v.verdict == 'no difference').sum())}")


def _overall(learned: pd.DataFrame, vs: pd.DataFrame) -> str:
    """One sentence on the learned maps, from the verdict counts."""
    rnd = "more faithful than random" if (learned.verdict == "better").all() else (
        "not consistently more faithful than random" if (learned.verdict == "better").any() else
        "no more faithful than random")
    if (vs.verdict == "better").sum() > (vs.verdict == "worse").sum():
        cap = "more faithful than captum's attributions in most comparisons"
    elif (vs.verdict == "worse").sum() > (vs.verdict == "better").sum():
        cap = "less faithful than captum's attributions in most comparisons"
    else:
        cap = "as faithful as captum's attributions overall"
    return f"{rnd}, and {cap}"


def _payload(result: Faithfulness, data: MultimodalDataset, method: Method, cmd: str, seconds: float, device: str,
             setting: dict, figures: list[Path]) -> dict:
    return {
        "title": "faithfulness", "task": data.name, "synthetic": data.synthetic, "command": cmd,
        "data_hash": data.data_hash(), "device": str(resolve_device(device)), "host": platform.node(),
        "torch": torch.__version__, "wall_seconds": round(seconds, 1), "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "method": method.name, **setting, "alpha": ALPHA, "explainers": [LEARNED, *EXPLAINERS, RANDOM],
        "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
        "ids": [str(i) for i in result.ids], "target": [result.classes[t] for t in result.target],
        "fractions": result.fractions.round(4).tolist(),
        "summary": _records(result.table()), "learned_vs_captum": _records(result.versus(LEARNED, EXPLAINERS)),
        "auc": {m: {e: {c: _floats(result.auc(m, e, c)) for c in CURVES} for e in ex}
                for m, ex in result.curves.items()},
        "mean_curves": {m: {e: {c: {"mean": _floats(v[0]), "std": _floats(v[1])} for c, v in by.items()}
                            for e, by in ex.items()} for m, ex in result.mean_curves().items()},
        "figures": [f.name for f in figures],
    }


def _floats(v: np.ndarray) -> list:
    return [None if not np.isfinite(x) else round(float(x), 4) for x in np.asarray(v, dtype=float)]


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
            for row in frame.to_dict("records")]
