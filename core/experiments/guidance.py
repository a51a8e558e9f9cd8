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

from core import metrics
from core.data.tasks import get_task
from core.data.tasks.derm7pt import seven_point_score
from core.experiments import command, register_experiment
from core.experiments.runner import duration
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


def row_probabilities(method, data, test: np.ndarray) -> dict[str, np.ndarray]:
    """Test-set class probabilities of every paper row from one fitted guidance model."""
    out = {h: method.reference_predict(data, test, head=h).proba for h in ("S+I", "S")}
    out.update({h: method.predict(data, test, head=h).proba for h in ("I", "G(I)", "G(I)+I")})
    return {r: out[r] for r in ROWS}


def _one_hot(pred: np.ndarray, n: int) -> np.ndarray:
    return np.eye(n)[pred]


def _values(runs: list[dict], column: str, row: str, metric: str) -> list[float]:
    return [r["metrics"][row][metric] for r in runs if r["column"] == column]


def _delta(runs, column, metric) -> float:
    """Relative change (%) of the mean of G(I)+I over the mean of I."""
    base = np.mean(_values(runs, column, "I", metric))
    return float(100 * (np.mean(_values(runs, column, "G(I)+I", metric)) - base) / base) if base else float("nan")


def rows_table(runs: list[dict], columns: list[tuple[str, str, str]], mcnemar: bool = True) -> str:
    """The paper's layout: one line per row and one column per (task, metric, header), then Δ%
    and (``mcnemar``) the McNemar p-values of the column's runs."""
    lines = ["| Model | " + " | ".join(h for _, _, h in columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for row in ROWS:
        cells = [metrics.fmt(np.mean(v), np.std(v)) for v in (_values(runs, c, row, m) for c, m, _ in columns)]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("| Δ% G(I)+I over I | " + " | ".join(f"{_delta(runs, c, m):+.1f}%" for c, m, _ in columns) + " |")
    if mcnemar:  # once per task (the test does not depend on the metric)
        ps = [" / ".join(f"{r['mcnemar_p']:.2g}" for r in runs if r["column"] == c)
              if c not in [k for k, _, _ in columns[:i]] else "" for i, (c, _, _) in enumerate(columns)]
        lines.append("| McNemar p, G(I)+I vs I (per run) | " + " | ".join(ps) + " |")
    return "\n".join(lines)


def findings(runs: list[dict], columns: list[tuple[str, str]]) -> str:
    """What the numbers show, in words (balanced accuracy): where the guided G(I)+I beats the
    unguided I and whether by more than the run-to-run spread, how McNemar's tests come out, and
    how S and G(I) compare with I."""
    ba = "balanced_accuracy"
    mean = lambda c, row: float(np.mean(_values(runs, c, row, ba)))  # noqa: E731
    std = lambda c, row: float(np.std(_values(runs, c, row, ba)))  # noqa: E731

    def change(c: str, h: str) -> str:
        clear = abs(mean(c, "G(I)+I") - mean(c, "I")) > max(std(c, "G(I)+I"), std(c, "I"))
        return f"{h} {_delta(runs, c, ba):+.1f}%" + ("" if clear else " (within the run-to-run std)")

    def listing(label: str, items: list[str]) -> str:
        return f"{label} {', '.join(items)}" if items else ""

    d = {c: _delta(runs, c, ba) for c, _ in columns}
    parts = [listing("higher in", [change(c, h) for c, h in columns if d[c] >= 0.05]),  # +0.0% counts as unchanged
             listing("lower in", [change(c, h) for c, h in columns if d[c] <= -0.05]),
             listing("unchanged in", [h for c, h in columns if abs(d[c]) < 0.05])]
    tests = [r["mcnemar_p"] for r in runs]
    sig = [r for r in runs if r["mcnemar_p"] < 0.05]
    better = sum(r["metrics"]["G(I)+I"]["accuracy"] > r["metrics"]["I"]["accuracy"] for r in sig)
    s_better = [(c, h) for c, h in columns if mean(c, "S") > mean(c, "I")]
    closed = [h for c, h in s_better if mean(c, "G(I)+I") > mean(c, "I")]
    g_better = [h for c, h in columns if mean(c, "G(I)") > mean(c, "I")]
    joint_below = [h for c, h in columns if mean(c, "S+I") < mean(c, "S")]
    return "\n".join([
        "- Balanced accuracy of the guided G(I)+I against the unguided I: " + "; ".join(p for p in parts if p) + ".",
        f"- McNemar's exact test of G(I)+I against I on each run's test set: p < 0.05 in {len(sig)} of {len(tests)} "
        f"tests ({better} with G(I)+I the more accurate, {len(sig) - better} with I); median p = {np.median(tests):.2g}.",
        f"- The superior modality alone (S) beats I in {len(s_better)} of {len(columns)} "
        + ("column" if len(columns) == 1 else "columns")
        + (f"; G(I)+I recovers part of that gap in {', '.join(closed) or 'none of them'}" if s_better else "") + ".",
        f"- G(I) alone (C_S's head on the mapped latent) beats I in {', '.join(g_better) or 'no column'}.",
        f"- The S+I decoder (both modalities, on the frozen z_S and z_I) is below S alone in "
        f"{', '.join(joint_below) or 'no column'}.",
    ])


def _header(title: str, name: str, ds, device: str, seconds: float) -> dict:
    return {"title": title, "task": ds.name, "synthetic": ds.synthetic, "command": command(name),
            "data_hash": ds.data_hash(), "device": str(resolve_device(device)), "host": platform.node(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "wall_seconds": round(seconds, 1),
            "written": time.strftime("%Y-%m-%d %H:%M:%S")}


def _write(out_dir, name: str, payload: dict, md: list[str]) -> list[Path]:
    base = Path(out_dir) / name
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
                     "n_test": len(y_mel), "mcnemar_p": metrics.mcnemar(y_mel, pred["I"], pred["G(I)+I"])})
    return runs


@register_experiment("derm7pt/guidance", "deep multimodal guidance: clinical photo guided by dermoscopy; "
                                         "diagnosis, 7 criteria, melanoma from the 7-point score")
@torch_threads(THREADS)
def run_derm7pt(out_dir="results", device="auto", data_dir=None, progress=False) -> list[Path]:
    name = "derm7pt/guidance"
    t0 = time.perf_counter()
    td = get_task("derm7pt", data_dir, image_size=DERM_IMAGE_SIZE)
    ds = td.dataset
    has_clinic = ds.present["clinic"].numpy()
    runs, fits = [], []
    for split in td.splits["official"]:
        test = split.test[has_clinic[split.test]]
        base = get_method("guidance", ds.specs, ds.classes, **DERM_CONFIG)
        base.fit(ds, split, seed=split.seed, device=device, progress=progress)
        models = {"diagnosis": base} | {c: base.retarget(c, ds, progress=progress) for c in CRITERIA}
        probs = {}
        for target, model in models.items():
            data = ds.with_target(None if target == "diagnosis" else target)
            probs[target] = row_probabilities(model, data, test)
            y = data.y[torch.as_tensor(test)].numpy()
            runs.append({"column": target, "split": split.name, "seed": split.seed, "n_test": len(test),
                         "metrics": {r: metrics.compute(y, p) for r, p in probs[target].items()},
                         "mcnemar_p": metrics.mcnemar(y, probs[target]["I"].argmax(1), probs[target]["G(I)+I"].argmax(1))})
            fits.append({"target": target, "seed": split.seed, "fit_seconds": round(model.fit_result.seconds, 1),
                         "stages": {s: {"best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                                        "seconds": round(r.seconds, 1)} for s, r in model.stages.items()}})
        runs += _melanoma_runs(split, ds.targets["melanoma"].y[torch.as_tensor(test)].numpy(), probs)
        print(f"  {split.name}: done at {duration(time.perf_counter() - t0)}")
    seconds = time.perf_counter() - t0
    columns = [(t, "DIAG" if t == "diagnosis" else t) for t in DERM_TARGETS] + \
              [(f"melanoma>={t}", f"MEL (score ≥ {t})") for t in MELANOMA_THRESHOLDS]
    n_test, n_all = runs[0]["n_test"], len(td.splits["official"][0].test)
    payload = {**_header("Deep multimodal guidance on Derm7pt: clinical (I) guided by dermoscopic (S)", name, ds,
                         device, seconds),
               "image_size": DERM_IMAGE_SIZE, "config": _config_dict(DERM_CONFIG), "runs": runs, "fits": fits}
    mel = [r for r in runs if r["column"] == "melanoma>=1"]  # AUROC does not depend on the threshold
    auroc = ["| Model | " + " | ".join(f"seed {r['seed']}" for r in mel) + " | mean ± std |",
             "|" + " --- |" * (len(mel) + 2)]
    mean_auroc = {}
    for row in ROWS:
        v = [r["metrics"][row]["auroc"] for r in mel]
        mean_auroc[row] = np.mean(v)
        auroc.append(f"| {row} | " + " | ".join(f"{100 * x:.1f}" for x in v) + f" | {metrics.fmt(np.mean(v), np.std(v))} |")
    auroc += ["", f"Melanoma AUROC of the guided G(I)+I is {100 * mean_auroc['G(I)+I']:.1f} against "
                  f"{100 * mean_auroc['I']:.1f} for the unguided I (S: {100 * mean_auroc['S']:.1f}, "
                  f"S+I: {100 * mean_auroc['S+I']:.1f})."]
    md = [
        f"# {payload['title']}", "",
        f"Produced by: `{payload['command']}`", "",
        "Rows (Mallya & Hamarneh, MICCAI 2022): " + "; ".join(f"**{r}** = {ROW_NOTES[r]}" for r in ROWS) + ".",
        f"Mean ± std over the 3 seeds of the official split, percent; test set = the {n_test} of {n_all} official "
        f"test cases that have a clinical photo (the other {n_all - n_test} cannot be predicted from the inferior "
        "modality alone; DeepGuide's label files also leave out pairs without a clinical photo).", "",
        "## Balanced accuracy", "", rows_table(runs, [(c, "balanced_accuracy", h) for c, h in columns]), "",
        "## Micro F1", "", rows_table(runs, [(c, "f1_micro", h) for c, h in columns], mcnemar=False), "",
        "## Melanoma from the predicted seven-point score: AUROC", "",
        "The score is computed from each row's predicted criteria (major criteria PN atypical, BWV present, "
        "VS irregular score 2; PIG, STR, DaG irregular and RS present score 1); melanoma is predicted when the "
        "score reaches the threshold (1 or 3, the MEL columns above). AUROC ranks cases by the integer score.", "",
        *auroc, "",
        "## Findings", "", findings(runs, columns), "",
        "## Choices (to finish on 2 CPU cores)", "",
        f"- Images {DERM_IMAGE_SIZE} x {DERM_IMAGE_SIZE} (task option `image_size`; decoded once, then read from the "
        "disk cache), random flips while training C_I and C_S.",
        "- Encoders trained from scratch (`SmallCNN`, latent 256); the reference used ImageNet-pretrained "
        "Inception features, so absolute numbers are lower than the paper's.",
        "- One C_I and one C_S per seed, each with a head for the diagnosis and for each of the 7 criteria (mean "
        "class-weighted CE over the 8 tasks, early-stopped on the mean validation CE), like the reference's "
        "multi-task features; one G per seed (it maps latents and does not depend on the target). D_c and the S+I "
        "decoder are trained per target on the frozen latents. Every row of a target comes from the same "
        "C_I / C_S, so the rows differ only by what the paper varies.",
        f"- C_I / C_S: at most {DERM_CONFIG['train'].epochs} epochs, patience {DERM_CONFIG['train'].patience}, batch "
        f"{DERM_CONFIG['train'].batch_size}, Adam lr {DERM_CONFIG['train'].lr}. G: MSE, early-stopped on validation "
        "MSE. D_c: class-weighted CE, early-stopped on validation balanced accuracy.",
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
CELL_SCALING = "standard"  # omics standardised with training statistics (a little better than min-max here)


@register_experiment("cells/guidance", "deep multimodal guidance: RNA guided by protein; cell image guided by RNA + protein")
@torch_threads(THREADS)
def run_cells(out_dir="results", device="auto", data_dir=None, progress=False) -> list[Path]:
    name = "cells/guidance"
    t0 = time.perf_counter()
    td = get_task("cells", data_dir)
    ds = td.dataset
    runs, per_class, configs = [], {}, {}
    for key, (title, cfg) in CELL_SETTINGS.items():
        cfg = {"latent_sizes": CELL_LATENTS, "scaling": CELL_SCALING, **cfg}
        configs[key] = _config_dict(cfg)
        tables = []
        for split in td.splits["leave_one_donor_out"]:
            m = get_method("guidance", ds.specs, ds.classes, **cfg)
            m.fit(ds, split, seed=split.seed, device=device, progress=progress)
            probs = row_probabilities(m, ds, split.test)
            y = ds.y[torch.as_tensor(split.test)].numpy()
            runs.append({"column": key, "split": split.name, "seed": split.seed, "n_test": len(split.test),
                         "metrics": {r: metrics.compute(y, p) for r, p in probs.items()},
                         "mcnemar_p": metrics.mcnemar(y, probs["I"].argmax(1), probs["G(I)+I"].argmax(1)),
                         "fit_seconds": round(m.fit_result.seconds, 1),
                         "stages": {s: r.best_epoch for s, r in m.stages.items()}})
            tables.append(class_deltas(m, ds, split.test))
        per_class[key] = pd.concat(tables).groupby("class", sort=False)[
            ["support", "recall I", "recall G(I)+I", "delta_recall"]].mean().reset_index()
        print(f"  {key}: done at {duration(time.perf_counter() - t0)}")
    seconds = time.perf_counter() - t0
    payload = {**_header("Deep multimodal guidance on cells (CITE-seq + class-matched images)", name, ds, device,
                         seconds), "config": configs, "runs": runs,
               "per_class_recall": {k: v.to_dict(orient="records") for k, v in per_class.items()}}
    md = [f"# {payload['title']}", "", f"Produced by: `{payload['command']}`", "",
          "Rows (Mallya & Hamarneh, MICCAI 2022): " + "; ".join(f"**{r}** = {ROW_NOTES[r]}" for r in ROWS) + ".",
          "Leave-one-donor-out (2 folds x seeds 0, 1, 2 = 6 runs), mean ± std, percent. The image is a "
          "class-matched microscopy image, not the same cell as the RNA and protein. T, B and NK_ILC cells all "
          "get lymphocyte images, so a model that sees only the image (rows I, G(I), G(I)+I of the second table) "
          "cannot tell these three apart: its recall changes among them move guesses between classes the image "
          "does not separate, not information that guidance added.", ""]
    for key, (title, _) in CELL_SETTINGS.items():
        sub = [r for r in runs if r["column"] == key]
        md += [f"## {title}", "",
               rows_table(sub, [(key, "balanced_accuracy", "Balanced accuracy"), (key, "f1_micro", "F1 micro")]), "",
               "Per-class recall, mean over the 6 runs (support = mean test cells per run):", "",
               _class_table(per_class[key]), "",
               "Findings:", "", findings(sub, [(key, title)]), _class_findings(per_class[key]), ""]
    md += ["## Setup", "",
           f"- Encoders: omics `OmicsEncoder`, image `SmallCNN`; latent sizes {CELL_LATENTS} (the seed study's). "
           "G: 512 -> 256 -> 512 hidden, MSE, early-stopped on validation MSE; D_c and the S+I decoder: class-weighted "
           "CE, early-stopped on validation balanced accuracy; every stage uses the split's own validation set.",
           f"- Wall time {duration(seconds)} on `{payload['device']}` with {payload['threads']} torch threads. "
           f"Raw per-run numbers: `guidance.json`. Data hash `{payload['data_hash'][:16]}`."]
    return _write(out_dir, name, payload, md)


def _class_findings(t: pd.DataFrame) -> str:
    """The classes whose mean recall guidance moves by a point or more, in words."""
    up = t[t["delta_recall"] >= 0.01].sort_values("delta_recall", ascending=False)
    down = t[t["delta_recall"] <= -0.01].sort_values("delta_recall")
    say = lambda d: ", ".join(f"{r['class']} {100 * r['delta_recall']:+.1f}" for r in d.to_dict(orient="records"))  # noqa: E731
    return (f"- Per class (mean recall, points): guidance raises {say(up) or 'no class'} and lowers "
            f"{say(down) or 'no class'}; other classes move by less than a point.")


def _class_table(t) -> str:
    lines = ["| Class | support | recall I | recall G(I)+I | change |", "| --- | --- | --- | --- | --- |"]
    for r in t.to_dict(orient="records"):
        lines.append(f"| {r['class']} | {r['support']:.0f} | {100 * r['recall I']:.1f} | "
                     f"{100 * r['recall G(I)+I']:.1f} | {100 * r['delta_recall']:+.1f} |")
    return "\n".join(lines)


def _config_dict(cfg: dict) -> dict:
    return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in cfg.items()}
