"""Baseline tables: the seed study's "Reproduction of MM dynamics" rows in one harness.

- ``cells/reproduction_rp``: RNA + protein, leave-one-donor-out x 3 seeds; KNN, LR, NN, RF
  and SVM (early fusion), HEALNet (intermediate), MCAT, MM static and MM dynamics (late).
  MM static / MM dynamics use the training recipe and the seed study's static weights of the
  MM dynamics tables (:mod:`core.experiments.mmdynamics`), so the rows are comparable across files.
- ``derm7pt/image_only``: the image-only CNN (the seed study's "CNN (I)") on each derm7pt
  image, diagnosis, official split x 3 seeds, with the image size and recipe of the
  ``derm7pt/image_dynamics`` table.
- ``rosmap/baselines``: the same methods on ROSMAP (mRNA + methylation + miRNA), the MOGONET
  train/test split x 5 seeds. MCAT takes exactly two omics: mRNA guides methylation, fixed
  before any result was seen (mRNA plays the paper's genomic role).

Every row trains on the split's training rows; the deep rows select their epoch on its
validation rows; the early-fusion rows do no selection.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from core import metrics
from core.data.tasks import get_task
from core.experiments import command, register_experiment
from core.experiments.mmdynamics import CELLS_TRAIN, DERM_IMAGE_SIZE, DERM_TRAIN, SEED_STATIC_WEIGHTS
from core.experiments.runner import Row, run_rows, run_table, write_table
from core.models.mmdynamics import reference_training

EARLY = (("KNN", "early_knn"), ("LR", "early_lr"), ("NN", "early_mlp"), ("RF", "early_rf"), ("SVM", "early_svm"))


def reproduction_rows(modalities: tuple[str, ...], mcat_modalities: tuple[str, str], mcat_label: str = "MCAT (late)",
                      mm_train: dict | None = None) -> list[Row]:
    """The nine rows, labelled ``method (fusion)`` as in the seed study's table; MCAT's first
    modality guides; ``mm_train`` overrides the MM rows' training settings."""
    mm = mm_train or {}
    static = {m: SEED_STATIC_WEIGHTS[m] for m in modalities if m in SEED_STATIC_WEIGHTS}
    rows = [Row(f"{label} (early)", name, modalities) for label, name in EARLY]
    return rows + [
        Row("HEALNet (intermediate)", "healnet", modalities),
        Row(mcat_label, "mcat", mcat_modalities, {"guide": mcat_modalities[0]}),
        Row("MM static (late)", "mm_static", modalities, {**mm, "modality_weights": static}),
        Row("MM dynamics (late)", "mm_dynamics", modalities, dict(mm)),
    ]


def strongest(summaries: dict[str, dict], runs: dict[str, list[float]] | None = None,
              columns: tuple[str, ...] = metrics.SIX) -> str:
    """Says, from the means, which row leads each column and whether LR is the strongest; with
    ``runs`` (label -> weighted F1 per run, the same splits in the same order) also how often the
    leader beats LR run by run, which the fold-dominated standard deviations hide."""
    leaders = {c: max(summaries, key=lambda r: summaries[r][c][0]) for c in columns}
    wins = {r: sum(leaders[c] == r for c in columns) for r in summaries}
    top = max(wins, key=wins.get)
    lr = next(r for r in summaries if r.startswith("LR"))
    key = "f1_weighted"
    lr_m, lr_s = summaries[lr][key]
    best = leaders[key]
    b_m, b_s = summaries[best][key]
    lead = ", ".join(f"{metrics.LABELS[c]}: {leaders[c]}" for c in columns)
    if top == lr:
        verdict = (f"LR is again the strongest: it has the best mean in {wins[lr]} of {len(columns)} columns "
                   f"(F1 weighted {metrics.fmt(lr_m, lr_s)}).")
    else:
        verdict = (f"LR is not the strongest here: {top} has the best mean in {wins[top]} of {len(columns)} "
                   f"columns, LR in {wins[lr]} (F1 weighted: LR {metrics.fmt(lr_m, lr_s)}, "
                   f"{best} {metrics.fmt(b_m, b_s)}).")
    gap = abs(b_m - lr_m)
    if best != lr:
        if gap > max(lr_s, b_s):
            verdict += " The F1 gap between them is larger than the run-to-run standard deviation of either."
        else:
            verdict += (f" The F1 gap between them ({100 * gap:.1f} points) is within the larger run-to-run standard "
                        f"deviation ({100 * max(lr_s, b_s):.1f}).")
        if runs is not None:
            ahead = sum(b > a for a, b in zip(runs[lr], runs[best]))
            verdict += f" Split by split, {best} has the higher F1 in {ahead} of {len(runs[lr])} runs."
    deep = [r for r in summaries if r.split(" (")[0] in ("HEALNet", "MCAT", "MM static", "MM dynamics")]
    early = [r for r in summaries if r.endswith("(early)")]
    best_deep = max(deep, key=lambda r: summaries[r][key][0])
    best_early = max(early, key=lambda r: summaries[r][key][0])
    relation = "above" if summaries[best_deep][key][0] > summaries[best_early][key][0] else "at or below"
    return (f"{verdict}\n\nBest mean per column: {lead}.\n\nThe best deep model by F1 weighted, {best_deep} "
            f"({metrics.fmt(*summaries[best_deep][key])}), is {relation} the best early-fusion baseline, "
            f"{best_early} ({metrics.fmt(*summaries[best_early][key])}).")


_REF = reference_training()
CELLS_PROTOCOL = (
    "Protocol: every row trains on the training rows of the training donor; the deep rows keep the epoch "
    "that is best on the inner validation rows, the early-fusion rows select nothing. MM static and MM dynamics "
    f"use the recipe of the MM dynamics tables (Adam lr {CELLS_TRAIN['lr']}, batch {CELLS_TRAIN['batch_size']}, "
    f"up to {CELLS_TRAIN['epochs']} epochs, patience {CELLS_TRAIN['patience']}) and MM static the seed study's "
    f"fixed latent weights (protein {SEED_STATIC_WEIGHTS['protein']:g}, RNA {SEED_STATIC_WEIGHTS['rna']:g}). "
    "MCAT: RNA, cut into 6 contiguous gene groups, queries protein.")
ROSMAP_PROTOCOL = (
    "Protocol: every row trains on the training rows of the MOGONET training part; the deep rows keep the epoch "
    "that is best on the inner validation rows, the early-fusion rows select nothing. MM static and MM dynamics "
    f"use their default, the reference optimiser (full batch, Adam lr {_REF.lr:g}, StepLR({_REF.lr_step}, "
    f"{_REF.lr_gamma:g}), {_REF.epochs} epochs) with that same "
    "selection, so their numbers differ from `rosmap/mmdynamics`, which trains on training + validation rows "
    "with a fixed schedule. MCAT takes two omics: mRNA, cut into 6 contiguous feature groups, queries "
    "methylation; miRNA is not used.")


def _baseline_table(task: str, name: str, title: str, rows: list[Row], protocol: str, out_dir, device, data_dir,
                    progress) -> list[Path]:
    td = get_task(task, data_dir)
    t0 = time.perf_counter()
    results = run_rows(td, rows, device=device, progress=progress)
    seconds = time.perf_counter() - t0
    summaries = {r.row.label: r.summary for r in results}
    per_run = {r.row.label: [run["metrics"]["f1_weighted"] for run in r.runs] for r in results}
    text = protocol + "\n\n" + strongest(summaries, per_run)
    path = write_table(out_dir, td, name, title, results, seconds=seconds, device=device, findings=text,
                       command=_command(f"{task}/{name}"))
    return [path, path.with_suffix(".json")]


def _command(name: str) -> str:
    """The command line, with the thread setting when one was given (it can change the last
    bits of CPU arithmetic, and so the deep rows)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    return (f"OMP_NUM_THREADS={threads} " if threads else "") + command(name)


@register_experiment("cells/reproduction_rp",
                     "seed study's reproduction table on RNA + protein: 5 early-fusion baselines, HEALNet, MCAT, "
                     "MM static, MM dynamics; leave-one-donor-out x 3 seeds")
def cells_reproduction(out_dir="results", device="auto", data_dir=None, progress=False) -> list[Path]:
    rows = reproduction_rows(("rna", "protein"), ("rna", "protein"), mm_train=CELLS_TRAIN)
    return _baseline_table("cells", "reproduction_rp", "Reproduction of MM dynamics on cells (RNA + protein)", rows,
                           CELLS_PROTOCOL, out_dir, device, data_dir, progress)


@register_experiment("rosmap/baselines",
                     "the reproduction table's methods on ROSMAP (MOGONET split x 5 seeds); MCAT on mRNA + methylation")
def rosmap_baselines(out_dir="results", device="auto", data_dir=None, progress=False) -> list[Path]:
    rows = reproduction_rows(("mRNA", "methylation", "miRNA"), ("mRNA", "methylation"),
                             "MCAT (late; mRNA + methylation)")
    return _baseline_table("rosmap", "baselines", "Baselines on ROSMAP (AD vs normal)", rows, ROSMAP_PROTOCOL,
                           out_dir, device, data_dir, progress)


DERM_ROWS = [
    # 9 cases (2 per test set) have no clinical photo: ``unimodal`` trains the CNN on the cases that have
    # one and gives the others the training class frequencies, instead of showing the CNN a black image
    Row("CNN (clinical photo)", "unimodal", ("clinic", "derm"), {"modality": "clinic", "base": "cnn",
                                                                "base_config": DERM_TRAIN}),
    Row("CNN (dermoscopic image)", "cnn", ("derm",), DERM_TRAIN),
]


def derm_findings(summaries: dict[str, dict], majority: tuple[str, float]) -> str:
    """``majority``: the most common test class and its share (what always guessing it scores)."""
    clinic, derm = (r.label for r in DERM_ROWS)
    lines = [f"Diagnosis (5 classes), images at {DERM_IMAGE_SIZE} px, the recipe of `derm7pt/image_dynamics` "
             f"(Adam lr {DERM_TRAIN['lr']}, batch {DERM_TRAIN['batch_size']}, up to {DERM_TRAIN['epochs']} epochs, "
             f"patience {DERM_TRAIN['patience']}, random flips while training)."]
    for key in ("balanced_accuracy", "f1_weighted"):
        (mc, sc), (md, sd) = summaries[clinic][key], summaries[derm][key]
        better, worse = (derm, clinic) if md >= mc else (clinic, derm)
        clear = "larger than" if abs(md - mc) > max(sc, sd) else "within"
        lines.append(f"- {metrics.LABELS[key]}: {better} {metrics.fmt(*summaries[better][key])} vs {worse} "
                     f"{metrics.fmt(*summaries[worse][key])}; the gap is {clear} the run-to-run standard deviation.")
    name, share = majority
    below = [r for r in (clinic, derm) if summaries[r]["accuracy"][0] < share]
    if below:
        lines.append(f"- Accuracy of {' and '.join(below)} is below the {100 * share:.1f}% that always answering "
                     f"{name} scores: the class-weighted loss and the selection on balanced accuracy trade the "
                     "common class for the rare ones.")
    return "\n".join(lines)


@register_experiment("derm7pt/image_only", "derm7pt: image-only CNN on the clinical photo and on the dermoscopic image")
def derm_image_only(out_dir="results", device="auto", data_dir=None, progress=False) -> list[Path]:
    td = get_task("derm7pt", data_dir, image_size=DERM_IMAGE_SIZE)
    y = td.dataset.y[torch.as_tensor(td.splits["official"][0].test)]
    counts = torch.bincount(y, minlength=td.dataset.n_classes)
    majority = (td.dataset.classes[int(counts.argmax())], float(counts.max() / counts.sum()))
    _, path = run_table("image_only", "Image-only CNN on derm7pt (diagnosis, official split x 3 seeds)", "derm7pt",
                        DERM_ROWS, task_options={"image_size": DERM_IMAGE_SIZE}, device=device, out_dir=out_dir,
                        data_dir=data_dir, findings=lambda summaries: derm_findings(summaries, majority),
                        progress=progress, command=_command("derm7pt/image_only"))
    return [path, path.with_suffix(".json")]
