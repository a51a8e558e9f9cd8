"""``<task>/sanity`` (cells, derm7pt, pbc, rosmap): do the explanations of the shipped model depend on
what it learned? Cascading randomisation of its layers and a retraining on permuted labels
(:mod:`core.explain.sanity`), for the learned maps and captum's explainers, on a seeded subsample of
its test split. The permuted-label model is the shipped model's own recipe (its card's config, split
and input size) trained on the training and validation rows with their labels shuffled.
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
from core.explain.sanity import FLAG_AT, Sanity, cascade, permuted_labels
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




def permuted_model(method, task: str, data_dir, device: str, seed: int = SEED):
    """The shipped model's recipe trained on its split with the training and validation labels shuffled."""
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
    permuted = ""
    if task != "demo":
        t1 = time.perf_counter()
        other = permuted_model(method, task, data_dir, device)
        permuted_labels(result, method, other, data, idx, names, seed=SEED, attribution=ATTRIBUTION)
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
        "summary": summary.replace({np.nan: None}).to_dict("records"), "figures": [f.name for f in figures]})
    atomic_write_text(base.with_suffix(".md"), markdown(result, summary, flagged, data.synthetic, cmd, source, weights,
                                                        n, len(test), seconds, t_cascade, permuted, figures, data.name))
    return [base.with_suffix(".md"), base.with_suffix(".json"), *figures]


register_per_task(NAME, ("cells", "derm7pt", "pbc", "rosmap"),
                  lambda task: f"{task}: sanity checks of every explainer of the shipped {MODELS[task]} model: "
                               "cascading randomisation and permuted labels (+ figure)",
                  run, one_thread=True)


def markdown(result: Sanity, summary: pd.DataFrame, flagged: dict[str, str], synthetic: bool, cmd: str, source: str,
             weights: dict, n: int, n_test: int, seconds: float, t_cascade: float, permuted: str,
             figures: list[Path], name: str) -> str:
    md = [f"# Sanity checks of the explanations ({name})", ""]
    if synthetic:
        md += [SYNTHETIC_BANNER, ""]
    md += [f"Produced by: `{cmd}`", "", f"Model: {source}. {weights_line(weights)}", "",
           f"Samples: {n} of the {n_test} test samples (seeded, seed {SEED}). Cascading randomisation (Adebayo et al., "
           f"NeurIPS 2018): the model's {len(result.layer_names)} parameterised layers re-drawn from their initial "
           f"distribution from the output side down (per-modality branches level by level), at depths "
           f"{', '.join(map(str, result.depths))} (0: the trained model); "
           + ("and the same recipe trained on permuted training labels. " if permuted else "no permuted-label "
              "retraining for the synthetic task. ")
           + "Similarity to the trained model's explanation of the same sample: Spearman rank correlation of the unit "
           "scores and, for patch maps, SSIM (torchmetrics, each map rescaled to [0, 1]); mean over the samples. "
           f"An explainer whose mean Spearman with every layer random, or with permuted labels, is still "
           f"{FLAG_AT} or more is flagged: its picture does not depend on what the model learned. captum's "
           "sensitivity and infidelity are not reported: the two checks here answer the question asked.", "",
           "Layers, output side first: " + ", ".join(f"`{n_}`" for n_ in result.layer_names) + ".", "",
           "| explainer | modality | measure | " + " | ".join(f"depth {d}" for d in result.depths)
           + (" | permuted labels |" if permuted else " |"),
           "| --- | --- | --- |" + " --- |" * (len(result.depths) + bool(permuted))]
    for (e, m, s), g in summary.groupby(["explainer", "modality", "measure"], sort=False):
        by = {str(r.depth): r.mean for r in g.itertuples()}
        cells = [f"{by[str(d)]:.2f}" if np.isfinite(by.get(str(d), np.nan)) else "—" for d in result.depths]
        if permuted:
            cells.append(f"{by['permuted']:.2f}" if np.isfinite(by.get("permuted", np.nan)) else "—")
        md.append(f"| {NAMES.get(e, e)} | {m} | {s} | " + " | ".join(cells) + " |")
    if figures:
        shown = next((f.name for f in figures if f.suffix == ".png"), figures[0].name)
        md += ["", f"![Similarity against randomised depth]({shown})"]
    md += ["", f"Wall time {duration(seconds)} (cascade {duration(t_cascade)}"
           + (f"; permuted labels {permuted}" if permuted else "") + f"). Raw numbers: `{NAME}.json`.", "",
           "## Findings", "", findings(summary, result, flagged, bool(permuted))]
    return "\n".join(md) + "\n"


def findings(summary: pd.DataFrame, result: Sanity, flagged: dict[str, str], permuted: bool) -> str:
    lines = []
    full = str(result.depths[-1])
    rho = summary[summary.measure == "spearman"]
    for e, g in rho.groupby("explainer", sort=False):
        at_full = {r.modality: r.mean for r in g.itertuples() if str(r.depth) == full}
        first = {r.modality: r.mean for r in g.itertuples() if str(r.depth) == str(result.depths[1])}
        text = (f"- **{NAMES.get(e, e)}**: rank correlation with the trained model's maps "
                + ", ".join(f"{m} {first[m]:.2f} after the top layer, {at_full[m]:.2f} with every layer random"
                            for m in at_full))
        if permuted:
            perm = {r.modality: r.mean for r in g.itertuples() if str(r.depth) == "permuted"}
            text += "; with permuted labels " + ", ".join(f"{m} {v:.2f}" for m, v in perm.items())
        text += (f". **Flagged**: {flagged[e]}." if e in flagged else ". It changes with the model, as it should.")
        lines.append(text)
    if LEARNED in result.cascade:
        lines.append("- The learned maps are the gates at the input: by construction they stay the same until the "
                     "cascade reaches the gate layers themselves, so their column shows where in the network the map "
                     "comes from rather than whether it tracks the classifier.")
    return "\n".join(lines)
