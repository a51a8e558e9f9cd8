"""``<task>/sanity`` (cells, derm7pt, pbc, rosmap): do the explanations of the shipped model depend on
what it learned? Cascading randomisation of its layers and retrainings on permuted labels
(:mod:`core.explain.sanity`), for the learned maps and captum's explainers, on a seeded subsample of
its test split, with captum's infidelity and max-sensitivity of the trained model's explanations. A
permuted-label model is the shipped model's own recipe (its card's config, split and input size)
trained on the training and validation rows with their labels shuffled; three of them (seeds
:data:`PERMUTED`), because one draw can land near or far from the real model by chance.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.evaluate import card_split
from core.experiments import command, register_per_task
from core.experiments.faithfulness import ATTRIBUTION, SEED, learns_maps, seeded_rows, shipped_model
from core.experiments.runner import SYNTHETIC_BANNER, duration, weights_line
from core.explain.faithfulness import LEARNED, NAMES
from core.explain.sanity import (FLAG_AT, INFIDELITY_DRAWS, RADIUS, SENSITIVITY_DRAWS, SENSITIVITY_SAMPLES, Sanity,
                                 captum_metrics, cascade, permuted_labels)
from core.models.registry import get_method
from core.shipped import weights_of
from core.train.results import atomic_write_text, write_json
from core.viz.export import result_formats, save_figure
from core.viz.sanity import sanity_figure

NAME = "sanity"
MODELS = {"cells": "mm_dynamics", "derm7pt": "mm_dynamics", "rosmap": "mm_dynamics", "pbc": "cnn",
          "demo": "mm_dynamics"}
SAMPLES = {"cells": 24, "derm7pt": 24, "rosmap": 24, "pbc": 24, "demo": 8}
EXPLAINERS = ("integrated_gradients", "occlusion", "gradient_shap")
PERMUTED = (0, 1, 2)  # seeds of the permuted-label retrainings (each: its own shuffle and initialisation)


def permuted_model(method, task: str, data_dir, device: str, seed: int = SEED):
    """The shipped model's recipe trained on its split with the training and validation labels shuffled
    (``seed``: the shuffle and the training's seed)."""
    data, split = card_split(method, task, data_dir)
    rows = np.union1d(split.train, split.val)
    y = data.y.clone()
    y[torch.as_tensor(rows)] = y[torch.as_tensor(np.random.default_rng(seed).permutation(rows))]
    shuffled = dataclasses.replace(data, y=y, _hash=None)
    card = method.card
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in card["config"].items()}
    other = get_method(card["method"], data.specs, data.classes, **config)
    other.fit(shuffled, split, seed=seed, device=device)
    return other


def run(task: str, out_dir: str | Path = "results", device: str = "auto", data_dir: str | None = None) -> list[Path]:
    t0 = time.perf_counter()
    method, data, test, source = shipped_model(task, data_dir, device, MODELS.get(task, "mm_dynamics"))
    idx = seeded_rows(test, SAMPLES.get(task, SAMPLES["demo"]))
    n = len(idx)
    names = ((LEARNED,) if learns_maps(method, data, int(idx[0])) else ()) + EXPLAINERS
    result = cascade(method, data, idx, names, seed=SEED, attribution=ATTRIBUTION)
    t_cascade = time.perf_counter() - t0
    t1 = time.perf_counter()
    captum_metrics(result, method, data, idx, names, seed=SEED, attribution=ATTRIBUTION)
    t_metrics = time.perf_counter() - t1
    permuted = ""
    if task != "demo":
        t1 = time.perf_counter()
        others = [permuted_model(method, task, data_dir, device, seed) for seed in PERMUTED]
        permuted_labels(result, method, others, data, idx, names, seed=SEED, attribution=ATTRIBUTION)
        permuted = f"{duration(time.perf_counter() - t1)} (retraining and explaining)"
    seconds = time.perf_counter() - t0
    base = Path(out_dir) / data.name / NAME
    summary = pd.DataFrame(result.summary())
    figures = save_figure(sanity_figure(summary, NAMES, f"{data.name}{' (SYNTHETIC)' if data.synthetic else ''}: "
                                        f"similarity to the trained model's explanations, {n} test samples"),
                          base, result_formats())
    cmd = command(f"{task}/{NAME}") if task in MODELS and task != "demo" else command(f"cells/{NAME}", task)
    weights = weights_of(method)
    flagged = result.flagged()
    write_json(base.with_suffix(".json"), {
        "title": NAME, "task": data.name, "synthetic": data.synthetic, "command": cmd, "wall_seconds": round(seconds, 1),
        "source": source, "weights": weights, "samples": int(n), "seed": SEED, "attribution": ATTRIBUTION,
        "layers": result.layer_names, "depths": result.depths, "flag_at": FLAG_AT, "flagged": flagged,
        "summary": summary.replace({np.nan: None}).to_dict("records"),
        "metrics": pd.DataFrame(result.metric_summary()).replace({np.nan: None}).to_dict("records"),
        "per_sample": result.per_sample(),
        "figures": [f.name for f in figures]})
    atomic_write_text(base.with_suffix(".md"), markdown(result, summary, flagged, data.synthetic, cmd, source, weights,
                                                        n, len(test), seconds, t_cascade, t_metrics, permuted, figures, data.name))
    return [base.with_suffix(".md"), base.with_suffix(".json"), *figures]


register_per_task(NAME, ("cells", "derm7pt", "pbc", "rosmap"),
                  lambda task: f"{task}: sanity checks of every explainer of the shipped {MODELS[task]} model: "
                               "cascading randomisation and permuted labels (+ figure)",
                  run, one_thread=True)


def markdown(result: Sanity, summary: pd.DataFrame, flagged: dict[str, str], synthetic: bool, cmd: str, source: str,
             weights: dict, n: int, n_test: int, seconds: float, t_cascade: float, t_metrics: float, permuted: str,
             figures: list[Path], name: str) -> str:
    md = [f"# Sanity checks of the explanations ({name})", ""]
    if synthetic:
        md += [SYNTHETIC_BANNER, ""]
    md += [f"Produced by: `{cmd}`", "", f"Model: {source}. {weights_line(weights)}", "",
           f"Samples: {n} of the {n_test} test samples (seeded, seed {SEED}). Cascading randomisation (Adebayo et al., "
           f"NeurIPS 2018): the model's {len(result.layer_names)} parameterised layers re-drawn from their initial "
           f"distribution from the output side down (per-modality branches level by level), at depths "
           f"{', '.join(map(str, result.depths))} (0: the trained model); "
           + (f"and the same recipe trained on permuted training labels, {len(PERMUTED)} times (seeds "
              f"{', '.join(map(str, PERMUTED))}: each its own shuffle and initialisation; the column gives the mean "
              "and its interval, then the lowest and highest retraining's mean). " if permuted else "no permuted-label "
              "retraining for the synthetic task. ")
           + "Similarity to the trained model's explanation of the same sample: Spearman rank correlation of the unit "
           "scores and, for patch maps, SSIM (torchmetrics, each map rescaled to [0, 1]); mean over the samples, "
           "in brackets its 95 % bootstrap interval (the samples resampled; for permuted labels the same draws "
           "for every retraining). "
           f"An explainer whose mean Spearman with every layer random, or with permuted labels (mean of the retrainings), is still "
           f"{FLAG_AT} or more is flagged: its picture does not depend on what the model learned.", "",
           "Layers, output side first: " + ", ".join(f"`{n_}`" for n_ in result.layer_names) + ".", "",
           "| explainer | modality | measure | " + " | ".join(f"depth {d}" for d in result.depths)
           + (" | permuted labels |" if permuted else " |"),
           "| --- | --- | --- |" + " --- |" * (len(result.depths) + bool(permuted))]
    for (e, m, s), g in summary.groupby(["explainer", "modality", "measure"], sort=False):
        by = {str(r.depth): r for r in g.itertuples()}
        cells = [ci(by.get(str(d))) for d in result.depths]
        if permuted:
            p = by.get("permuted")
            cells.append(f"{ci(p)}; {p.lowest:.2f} to {p.highest:.2f}" if p is not None and np.isfinite(p.mean)
                         else "—")
        md.append(f"| {NAMES.get(e, e)} | {m} | {s} | " + " | ".join(cells) + " |")
    if figures:
        shown = next((f.name for f in figures if f.suffix == ".png"), figures[0].name)
        md += ["", f"![Similarity against randomised depth]({shown})"]
    md += ["", "## captum.metrics of the trained model's explanations", "",
           "`captum.metrics` (Yeh et al., NeurIPS 2019) on the same samples, in the units the tool shows (omics "
           "features, patches of the model's grid). **Infidelity** (lower is better): "
           f"{INFIDELITY_DRAWS} random subsets of the units per sample (each a share drawn uniformly up to a half) "
           "set to the training mean; the sum of their scores, rescaled by the best factor, against the drop in the "
           "predicted class's probability (mean squared error). *Random* is a seeded random score per unit: an "
           "explanation that predicts what masking does beats it; `below random` is the share of samples where it "
           "does. **Max-sensitivity** (lower: steadier): the largest change of the sample's scores, relative to "
           f"their norm, over {SENSITIVITY_DRAWS} copies of the input with uniform noise of radius {RADIUS} (in the "
           f"prepared inputs' units: scaled features, normalised pixels), for the first {SENSITIVITY_SAMPLES} samples "
           "(each copy is explained again). Medians with their 95 % bootstrap interval over the samples; *to random* is "
           "the median over the samples of the ratio of a sample's infidelity to its random scores' (infidelities "
           "of different samples differ by orders of magnitude; the ratio compares like with like): below 1 with "
           "the whole interval, the explanation predicts masking better than chance.", "",
           "| explainer | modality | infidelity median | to random | below random | max-sensitivity median |",
           "| --- | --- | --- | --- | --- | --- |"]
    md += metric_rows(result.metric_summary())
    md += ["", f"Wall time {duration(seconds)} (cascade {duration(t_cascade)}; captum.metrics {duration(t_metrics)}"
           + (f"; permuted labels {permuted}" if permuted else "") + f"). Raw numbers: `{NAME}.json`.", "",
           "## Findings", "", findings(summary, result, flagged, bool(permuted))]
    return "\n".join(md) + "\n"


def ci(row, fmt: str = "{:.2f}", est: str = "mean", low: str = "low", high: str = "high") -> str:
    """``0.12 [0.05, 0.20]`` from a summary row (a named tuple or a dict); ``—`` without a value."""
    get = (lambda k: row.get(k)) if isinstance(row, dict) else (lambda k: getattr(row, k, None))
    v = None if row is None else get(est)
    if v is None or not np.isfinite(v):
        return "—"
    lo, hi = get(low), get(high)
    bounds = f" [{fmt.format(lo)}, {fmt.format(hi)}]" if lo is not None and np.isfinite(lo) else ""
    return fmt.format(v) + bounds


def metric_rows(metrics: list[dict]) -> list[str]:
    """One table row per explainer and modality: infidelity, its median ratio to the random scores' and the
    share of samples below them, max-sensitivity; each with its interval."""
    by: dict[tuple[str, str], dict[str, dict]] = {}
    for r in metrics:
        by.setdefault((r["explainer"], r["modality"]), {})[r["metric"]] = r
    out = []
    for (e, m), v in by.items():
        inf, sen = v.get("infidelity"), v.get("sensitivity")
        share = None if inf is None else inf.get("below random %")
        out.append(f"| {NAMES.get(e, e)} | {m} | {ci(inf, '{:.2e}', 'median')} | "
                   f"{ci(inf, '{:.2f}', 'to random', 'to random low', 'to random high')} | "
                   f"{f'{share:.0f} %' if share is not None and np.isfinite(share) else '—'} | "
                   f"{ci(sen, '{:.2e}', 'median')} |")
    return out


def findings(summary: pd.DataFrame, result: Sanity, flagged: dict[str, str], permuted: bool) -> str:
    lines = []
    full = str(result.depths[-1])
    rho = summary[summary.measure == "spearman"]
    for e, g in rho.groupby("explainer", sort=False):
        at_full = {r.modality: r for r in g.itertuples() if str(r.depth) == full}
        first = {r.modality: r for r in g.itertuples() if str(r.depth) == str(result.depths[1])}
        text = (f"- **{NAMES.get(e, e)}**: rank correlation with the trained model's maps (mean [95 % interval]) "
                + ", ".join(f"{m} {ci(first[m])} after the top layer, {ci(at_full[m])} with every layer random"
                            for m in at_full))
        if permuted:
            perm = {r.modality: r for r in g.itertuples() if str(r.depth) == "permuted"}
            text += (f"; with permuted labels (mean of {len(PERMUTED)} retrainings, then the lowest to highest "
                     "retraining's) " + ", ".join(f"{m} {ci(r)}, {r.lowest:.2f} to {r.highest:.2f}"
                                                  for m, r in perm.items()))
        text += (f". **Flagged**: {flagged[e]}." if e in flagged else ". It changes with the model, as it should.")
        lines.append(text)
    if LEARNED in result.cascade:
        lines.append("- The learned maps are the gates at the input: by construction they stay the same until the "
                     "cascade reaches the gate layers themselves, so their column shows where in the network the map "
                     "comes from rather than whether it tracks the classifier.")
    metrics = result.metric_summary()
    inf = [r for r in metrics if r["metric"] == "infidelity" and np.isfinite(r.get("to random", np.nan))]
    if inf:
        def named(r: dict) -> str:
            return (f"{NAMES.get(r['explainer'], r['explainer'])} on {r['modality']} "
                    f"({ci(r, '{:.2f}', 'to random', 'to random low', 'to random high')}; "
                    f"{r['below random %']:.0f} % of samples below)")
        beats = [named(r) for r in inf if r["to random high"] < 1]
        worse = [named(r) for r in inf if r["to random low"] > 1]
        tied = [named(r) for r in inf if r["to random high"] >= 1 >= r["to random low"]]
        lines.append("- **Infidelity** (median ratio to the random scores' on the same sample [95 % interval]): "
                     "below random, the whole interval below 1, for " + (", ".join(beats) if beats else "no explainer")
                     + ("; not told apart from random for " + ", ".join(tied) if tied else "")
                     + ("; above random for " + ", ".join(worse) if worse else "") + ".")
    sen = sorted((r for r in metrics if r["metric"] == "sensitivity" and np.isfinite(r["median"])),
                 key=lambda r: r["median"])
    if sen:
        lines.append("- **Max-sensitivity** (median [95 % interval]), steadiest first: " + ", ".join(
            f"{NAMES.get(r['explainer'], r['explainer'])} on {r['modality']} {ci(r, '{:.2g}', 'median')}"
            for r in sen) + ".")
    return "\n".join(lines)
