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
validation rows; the early-fusion rows choose their hyper-parameters by cross-validation inside
the training rows (``core.models.early_fusion``).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from core import metrics
from core.data.tasks import get_task
from core.experiments import command, findings, register_experiment
from core.experiments.findings import CI_NOTE, Table, mean_std
from core.experiments.mmdynamics import (CELLS_TRAIN, DERM_IMAGE_SIZE, DERM_TRAIN, IMAGENET_LAST_STAGES,
                                         SEED_STATIC_WEIGHTS)
from core.experiments.runner import Row, RowResult, run_rows, run_table, write_table
from core.models.mmdynamics import reference_training
from core.models.registry import method_entry

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


def strongest(table: Table, columns: tuple[str, ...] = metrics.SIX) -> str:
    """Says which row leads each column (by mean), whether LR is the strongest, and whether the
    leader's F1 difference from LR and the best deep row's from the best early-fusion row are
    called by the paired bootstrap (runs, then test cases)."""
    s = {label: r.summary for label, r in table.items()}
    leaders = {c: max(s, key=lambda r: s[r][c][0]) for c in columns}
    wins = {r: sum(leaders[c] == r for c in columns) for r in s}
    top = max(wins, key=wins.get)
    lr = next(r for r in s if r.startswith("LR"))
    key = "f1_weighted"
    best = leaders[key]
    lead = ", ".join(f"{metrics.LABELS[c]}: {leaders[c]}" for c in columns)
    if top == lr:
        verdict = (f"LR has the best mean in {wins[lr]} of {len(columns)} columns "
                   f"(F1 weighted {mean_std(table, lr, key)}).")
    else:
        verdict = (f"LR is not the leader by means here: {top} has the best mean in {wins[top]} of {len(columns)} "
                   f"columns, LR in {wins[lr]} (F1 weighted: LR {mean_std(table, lr, key)}, "
                   f"{best} {mean_std(table, best, key)}).")
    if best != lr:
        d = findings.difference(table, best, lr, key)
        verdict += (f" F1 weighted of {best} minus LR: {d.text()}; "
                    + ("called." if d.called else "not called, so LR is not shown to be weaker."))
    deep = [r for r in s if r.split(" (")[0] in ("HEALNet", "MCAT", "MM static", "MM dynamics")]
    early = [r for r in s if r.endswith("(early)")]
    best_deep = max(deep, key=lambda r: s[r][key][0])
    best_early = max(early, key=lambda r: s[r][key][0])
    d = findings.difference(table, best_deep, best_early, key)
    return (f"{verdict}\n\nBest mean per column: {lead}.\n\nThe best deep model by F1 weighted, {best_deep} "
            f"({mean_std(table, best_deep, key)}), against the best early-fusion baseline, {best_early} "
            f"({mean_std(table, best_early, key)}): {d.text()}, **{findings.verdict(d, best_deep, best_early)}**.")


_REF = reference_training()
EARLY_SEARCH = ("the early-fusion rows choose their hyper-parameters by 5-fold stratified cross-validation inside the "
                "training rows (weighted F1; " + "; ".join(
                    f"{label} {', '.join(f'{k} {v}' for k, v in method_entry(name).cls.grid.items())}"
                    for label, name in EARLY) + "; the values chosen per run are in the JSON)")
CELLS_PROTOCOL = (
    "Protocol: every row trains on the training rows of the training donor; the deep rows keep the epoch "
    f"that is best on the inner validation rows, {EARLY_SEARCH}. MM static and MM dynamics "
    f"use the recipe of the MM dynamics tables (Adam lr {CELLS_TRAIN['lr']}, batch {CELLS_TRAIN['batch_size']}, "
    f"up to {CELLS_TRAIN['epochs']} epochs, patience {CELLS_TRAIN['patience']}) and MM static the seed study's "
    f"fixed latent weights (protein {SEED_STATIC_WEIGHTS['protein']:g}, RNA {SEED_STATIC_WEIGHTS['rna']:g}). "
    "MCAT: RNA, cut into 6 contiguous gene groups, queries protein.")
ROSMAP_PROTOCOL = (
    "Protocol: every row trains on the training rows of the MOGONET training part; the deep rows keep the epoch "
    f"that is best on the inner validation rows, {EARLY_SEARCH}. MM static and MM dynamics "
    f"use their default, the reference optimiser (full batch, Adam lr {_REF.lr:g}, StepLR({_REF.lr_step}, "
    f"{_REF.lr_gamma:g}), {_REF.epochs} epochs) with that same "
    "selection, so their numbers differ from `rosmap/mmdynamics`, which trains on training + validation rows "
    "with a fixed schedule. MCAT takes two omics: mRNA, cut into 6 contiguous feature groups, queries "
    "methylation; miRNA is not used.")


def chosen(results: list[RowResult]) -> str:
    """The hyper-parameters each early-fusion row chose, run by run."""
    parts = []
    for r in results:
        picks = [run["chosen"] for run in r.runs if run.get("chosen")]
        if picks:
            keys = [k for k in picks[0] if not k.startswith("cv")]
            parts.append(f"{r.row.label.split(' (')[0]} " + ", ".join(
                f"{k} " + " / ".join(str(p[k]) for p in picks) for k in keys))
    if not parts:
        return ""
    return "Hyper-parameters chosen by the cross-validated search, run by run: " + "; ".join(parts) + "."


def _baseline_table(experiment: str, task: str, title: str, rows: list[Row], protocol: str, out_dir, device,
                    data_dir, progress) -> list[Path]:
    td = get_task(task, data_dir)
    t0 = time.perf_counter()
    results = run_rows(td, rows, device=device, progress=progress)
    seconds = time.perf_counter() - t0
    text = "\n\n".join([f"{protocol} {CI_NOTE}", strongest({r.row.label: r for r in results}), chosen(results)])
    path = write_table(out_dir, td, experiment.split("/")[1], title, results, seconds=seconds, device=device,
                       findings=text, command=command(experiment, task))
    return [path, path.with_suffix(".json")]


@register_experiment("cells/reproduction_rp",
                     "seed study's reproduction table on RNA + protein: 5 early-fusion baselines, HEALNet, MCAT, "
                     "MM static, MM dynamics; leave-one-donor-out x 3 seeds")
def cells_reproduction(out_dir="results", device="auto", data_dir=None, progress=False,
                       task="cells") -> list[Path]:
    rows = reproduction_rows(("rna", "protein"), ("rna", "protein"), mm_train=CELLS_TRAIN)
    return _baseline_table("cells/reproduction_rp", task, "Reproduction of MM dynamics on cells (RNA + protein)", rows,
                           CELLS_PROTOCOL, out_dir, device, data_dir, progress)


@register_experiment("rosmap/baselines",
                     "the reproduction table's methods on ROSMAP (MOGONET split x 5 seeds); MCAT on mRNA + methylation")
def rosmap_baselines(out_dir="results", device="auto", data_dir=None, progress=False,
                     task="rosmap") -> list[Path]:
    rows = reproduction_rows(("mRNA", "methylation", "miRNA"), ("mRNA", "methylation"),
                             "MCAT (late; mRNA + methylation)")
    return _baseline_table("rosmap/baselines", task, "Baselines on ROSMAP (AD vs normal)", rows, ROSMAP_PROTOCOL,
                           out_dir, device, data_dir, progress)


# the image encoders compared (:mod:`core.models.encoders`): the small CNN's rows come first; the
# ImageNet encoder with its own recipe and input size (``image_size``)
ENCODER_VARIANTS = (("", {}), (", ResNet", {"encoder": "resnet"}),
                    (", ResNet pretrained", {"encoder": "pretrained"}),
                    (", EfficientNet-Lite0 ImageNet", IMAGENET_LAST_STAGES))
#: balanced accuracy the image-only CNNs are held to (percent)
DERM_GOALS = {"clinic": 55.0, "derm": 62.0}


def derm_rows(suffix: str = "", encoder: dict | None = None) -> list[Row]:
    """The clinical-photo and dermoscopic-image CNN rows with one image encoder.

    9 cases (2 per test set) have no clinical photo: ``unimodal`` trains the CNN on the cases that
    have one and gives the others the training class frequencies, instead of showing the CNN a
    black image. An encoder's ``image_size`` is the rows' input size (the table's otherwise)."""
    train = {**DERM_TRAIN, **(encoder or {})}
    size = train.pop("image_size", None)
    return [Row(f"CNN (clinical photo){suffix}", "unimodal", ("clinic", "derm"),
                {"modality": "clinic", "base": "cnn", "base_config": train}, image_size=size),
            Row(f"CNN (dermoscopic image){suffix}", "cnn", ("derm",), train, image_size=size)]


DERM_ROWS = [row for suffix, encoder in ENCODER_VARIANTS for row in derm_rows(suffix, encoder)]


def derm_findings(table: Table, majority: tuple[str, float]) -> str:
    """``majority``: the most common test class and its share (what always guessing it scores)."""
    clinic, derm = (r.label for r in derm_rows())
    lines = [f"Diagnosis (5 classes), images at {DERM_IMAGE_SIZE} px, the recipe of `derm7pt/image_dynamics` "
             f"(Adam lr {DERM_TRAIN['lr']}, batch {DERM_TRAIN['batch_size']}, up to {DERM_TRAIN['epochs']} epochs, "
             f"patience {DERM_TRAIN['patience']}, random flips while training). Encoders: the small CNN, a ResNet "
             "from scratch, and the ResNet from the self-supervised trunk (`checkpoints/encoders/resnet_simclr`, "
             "fine-tuned), the same recipe for all; and EfficientNet-Lite0 from its ImageNet weights at the "
             f"{IMAGENET_LAST_STAGES['image_size']} px it was trained at, with the recipe "
             "`bench/finetune_regimes.py` chose on the dermoscopic images (`results/bench/finetune_regimes.md`): "
             f"the stem and stages 1-5 keep their weights, the last {IMAGENET_LAST_STAGES['encoder_tune_stages']} "
             f"units train (AdamW, lr {IMAGENET_LAST_STAGES['lr']} for the head and "
             f"{IMAGENET_LAST_STAGES['encoder_lr']} for the trunk, cosine decay, up to "
             f"{IMAGENET_LAST_STAGES['epochs']} epochs, patience {IMAGENET_LAST_STAGES['patience']}, flips of the "
             f"frozen units' output). {CI_NOTE}"]
    for key in ("balanced_accuracy", "f1_weighted"):
        lines.append(findings.compare(table, derm, clinic, "Dermoscopic against clinical", key))
    for suffix, _ in ENCODER_VARIANTS[1:]:
        for row, small in zip(derm_rows(suffix), (clinic, derm)):
            if row.label in table:
                lines.append(findings.compare(table, row.label, small, f"Encoder{suffix} against the small CNN",
                                              "balanced_accuracy"))
    for photo, what, rows in (("clinic", "clinical photo", [r for r in table if "(clinical photo)" in r]),
                              ("derm", "dermoscopic image", [r for r in table if "(dermoscopic image)" in r])):
        if rows:
            best = max(rows, key=lambda r: table[r].summary["balanced_accuracy"][0])
            got, goal = 100 * table[best].summary["balanced_accuracy"][0], DERM_GOALS[photo]
            lines.append(f"- Goal for the {what}: balanced accuracy {goal:.0f} or more. Best row: {best}, "
                         f"{got:.1f}: " + ("met." if got >= goal else f"missed by {goal - got:.1f} points."))
    name, share = majority
    below = [r for r in table if table[r].summary["accuracy"][0] < share]
    if below:
        lines.append(f"- Mean accuracy of {', '.join(below)} is below the {100 * share:.1f}% that always answering "
                     f"{name} scores: the class-weighted loss and the selection on balanced accuracy trade the "
                     "common class for the rare ones.")
    return "\n".join(lines)


@register_experiment("derm7pt/image_only", "derm7pt: image-only CNN on the clinical photo and on the dermoscopic image")
def derm_image_only(out_dir="results", device="auto", data_dir=None, progress=False,
                    task="derm7pt") -> list[Path]:
    td = get_task(task, data_dir, image_size=DERM_IMAGE_SIZE)
    y = td.dataset.y[torch.as_tensor(td.splits["official"][0].test)]
    counts = torch.bincount(y, minlength=td.dataset.n_classes)
    majority = (td.dataset.classes[int(counts.argmax())], float(counts.max() / counts.sum()))
    _, path = run_table("image_only", "Image-only CNN on derm7pt (diagnosis, official split x 3 seeds)", task,
                        DERM_ROWS, task_options={"image_size": DERM_IMAGE_SIZE}, device=device, out_dir=out_dir,
                        data_dir=data_dir, findings=lambda table: derm_findings(table, majority),
                        progress=progress, command=command("derm7pt/image_only", task))
    return [path, path.with_suffix(".json")]
