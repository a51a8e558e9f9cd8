"""``<task>/counterfactual`` (cells, derm7pt, pbc): how small is the smallest mask that changes the
shipped model's answer, when the mask grows in each explainer's order?

For a seeded subsample of the model's test split, every modality and every explainer (the learned
map where the model has one, integrated gradients, occlusion, GradientSHAP, a seeded random order):
the minimal flip set of :mod:`core.explain.counterfactual` (training-mean fill, at most half of the
modality's units). A ranking that found what the model relies on flips it with fewer units than a
random order: the table gives the median flip size per explainer (as a share of the modality's units)
with a paired bootstrap interval of its difference to random, and the share of samples with no flip
within the budget (counted, for the medians, as one unit past the budget). Whole modalities: how many
must go (absent) before the answer changes. ``task="demo"`` runs a quick MM dynamics fit instead.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.experiments import command, register_per_task
from core.experiments.faithfulness import ATTRIBUTION, SEED, learns_maps, seeded_rows, shipped_model
from core.experiments.runner import SYNTHETIC_BANNER, duration, weights_line
from core.explain.counterfactual import BUDGET, MODALITIES, ORDERS, counterfactuals
from core.explain.faithfulness import NAMES, RANDOM, explanations
from core.shipped import weights_of
from core.stats import paired_median_difference
from core.train.results import atomic_write_text, write_json
from core.viz.counterfactual import flip_sizes_figure
from core.viz.export import result_formats, save_figure

NAME = "counterfactual"
MODELS = {"cells": "mm_dynamics", "derm7pt": "mm_dynamics", "pbc": "cnn", "demo": "mm_dynamics"}
SAMPLES = {"cells": 48, "derm7pt": 48, "pbc": 48, "demo": 8}
FILL = "mean"




def run(task: str, out_dir: str | Path = "results", device: str = "auto", data_dir: str | None = None) -> list[Path]:
    t0 = time.perf_counter()
    method, data, test, source = shipped_model(task, data_dir, device, MODELS.get(task, "mm_dynamics"))
    idx = seeded_rows(test, SAMPLES.get(task, SAMPLES["demo"]))
    n = len(idx)
    learned = learns_maps(method, data, int(idx[0]))
    orders = ORDERS if learned else ORDERS[1:]
    sets = []
    for row in idx:
        explained, _ = explanations(method, data, np.array([row]), orders, seed=SEED, attribution=ATTRIBUTION)
        cf = counterfactuals(method, data, int(row), explained, fill=FILL, kinds=("flip",), seed=SEED)
        for (m, e, _), s in cf.sets.items():
            sets.append({"id": str(data.ids[row]), "modality": m, "explainer": e, "found": s.found, "size": s.size,
                         "units": s.n_units, "share": s.share if s.found else np.nan,
                         "censored": s.size if s.found else int(np.ceil(BUDGET * s.n_units)) + 1,
                         "seconds": cf.seconds})
    frame = pd.DataFrame(sets)
    seconds = time.perf_counter() - t0
    name = data.name
    base = Path(out_dir) / name / NAME
    summary = summarise(frame)
    figures = save_figure(flip_sizes_figure(frame[frame.modality != MODALITIES], NAMES,
                                            f"{name}{' (SYNTHETIC)' if data.synthetic else ''}: minimal flip set "
                                            f"as a share of the modality's units, {n} test samples"),
                          base, result_formats())
    cmd = command(f"{task}/{NAME}") if task in ("cells", "derm7pt", "pbc") else command(f"cells/{NAME}", task)
    weights = weights_of(method)
    write_json(base.with_suffix(".json"), {
        "title": NAME, "task": name, "synthetic": data.synthetic, "command": cmd, "wall_seconds": round(seconds, 1),
        "source": source, "weights": weights, "samples": int(n), "fill": FILL, "budget": BUDGET, "seed": SEED,
        "attribution": ATTRIBUTION, "summary": summary.replace({np.nan: None}).to_dict("records"),
        "sets": frame.replace({np.nan: None}).to_dict("records"), "figures": [f.name for f in figures]})
    atomic_write_text(base.with_suffix(".md"), markdown(frame, summary, data.synthetic, cmd, source, weights, n,
                                                        len(test), seconds, figures, name))
    return [base.with_suffix(".md"), base.with_suffix(".json"), *figures]


register_per_task(NAME, ("cells", "derm7pt", "pbc"),
                  lambda task: f"{task}: minimal flip sets of the shipped {MODELS[task]} model grown in each "
                               "explainer's order against a random order (+ figure)",
                  run, one_thread=True)


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Per modality and explainer: samples, median flip share of the found sets, flips found, and the
    median censored size against random's (paired bootstrap interval)."""
    rows = []
    for (m, e), g in frame.groupby(["modality", "explainer"], sort=False):
        row = {"modality": m, "explainer": e, "n": len(g), "found_pct": 100 * g.found.mean(),
               "median_size": float(np.median(g.censored)), "units": int(g.units.max()),
               "median_share_pct": 100 * float(np.nanmedian(g.share)) if g.found.any() else np.nan}
        rnd = frame[(frame.modality == m) & (frame.explainer == RANDOM)].set_index("id").censored
        if m != MODALITIES and e != RANDOM and len(rnd):
            d = paired_median_difference(g.set_index("id").censored.loc[rnd.index].to_numpy(), rnd.to_numpy())
            row |= {"vs_random": d.estimate, "low": d.low, "high": d.high,
                    "verdict": ("smaller" if d.high < 0 else "larger" if d.low > 0 else "no difference")}
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame, summary: pd.DataFrame, synthetic: bool, cmd: str, source: str, weights: dict,
             n: int, n_test: int, seconds: float, figures: list[Path], name: str) -> str:
    md = [f"# Minimal counterfactual masks: what changes the model's answer ({name})", ""]
    if synthetic:
        md += [SYNTHETIC_BANNER, ""]
    md += [f"Produced by: `{cmd}`", "", f"Model: {source}. {weights_line(weights)}", "",
           f"Samples: {n} of the {n_test} test samples (seeded, seed {SEED}). For each sample, each modality and each "
           "explainer, the set of units (omics features, patches of the model's grid) grown in the explainer's "
           f"order until masking it with the training mean changes the predicted class, then pruned until no single "
           f"unit can be dropped (`core.explain.counterfactual`); at most {100 * BUDGET:.0f} % of the modality's "
           "units. Every set is verified by a forward pass. A smaller set means the ranking found what the model "
           "relies on. Medians count a sample without a flip as one unit past the budget; the interval is a paired "
           "bootstrap (2000 resamples of the samples) of the median difference to the random order. Whole modalities: "
           "an exact search over the subsets, masked modalities absent (the model's own handling).", "",
           "| modality | explainer | samples | flips found % | median size (units) | median share of units, found % "
           "| vs random: median difference (95% CI) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary.itertuples():
        vs = ("—" if pd.isna(getattr(r, "low", np.nan)) else
              f"{r.vs_random:+.1f} ({r.low:+.1f} to {r.high:+.1f}), {r.verdict}")
        share = "—" if pd.isna(r.median_share_pct) else f"{r.median_share_pct:.1f}"
        md.append(f"| {r.modality} | {NAMES.get(r.explainer, r.explainer)} | {r.n} | {r.found_pct:.0f} | "
                  f"{r.median_size:.1f} of {r.units} | {share} | {vs} |")
    if figures:
        shown = next((f.name for f in figures if f.suffix == ".png"), figures[0].name)
        md += ["", f"![Minimal flip set sizes]({shown})"]
    md += ["", f"Wall time {duration(seconds)} (explanations and searches, one CPU thread). Every set: `{NAME}.json`.",
           "", "## Findings", "", findings(summary)]
    return "\n".join(md) + "\n"


def findings(summary: pd.DataFrame) -> str:
    lines = []
    units = summary[summary.modality != MODALITIES]
    for m, g in units.groupby("modality", sort=False):
        rnd = g[g.explainer == RANDOM].iloc[0]
        parts = [f"{NAMES.get(r.explainer, r.explainer)} median {r.median_size:.1f} units ({r.verdict}: "
                 f"{r.vs_random:+.1f}, 95% CI {r.low:+.1f} to {r.high:+.1f}; flips within the budget {r.found_pct:.0f} %)"
                 for r in g[g.explainer != RANDOM].itertuples()]
        lines.append(f"- **{m}** (random order: median {rnd.median_size:.1f} of {rnd.units} units, flips within the "
                     f"budget {rnd.found_pct:.0f} %): " + "; ".join(parts) + ".")
    mods = summary[summary.modality == MODALITIES]
    if len(mods):
        r = mods.iloc[0]
        lines.append(f"- **Whole modalities**: leaving modalities out changed the answer in {r.found_pct:.0f} % of the "
                     f"samples (median {r.median_size:.1f} modalities, a sample without a change counted as one more).")
    compared = units[units.explainer != RANDOM]
    lines.append(f"- Over all modalities, {int((compared.verdict == 'smaller').sum())} of {len(compared)} explainer "
                 f"orders needed smaller flip sets than random (interval below 0), "
                 f"{int((compared.verdict == 'larger').sum())} larger, the rest no difference called.")
    return "\n".join(lines)
