"""The MM dynamics family's reproduction tables (the seed study's tables on our real tasks).

- ``cells/image_dynamics``: CNN (I), MM dynamics R+I, P+I, P+R+I, MM static P+R+I.
- ``cells/masked_image``: the image masked gray at test time only, against a model trained
  without the image.
- ``cells/ablation_fi_mi``: None / FI / MI / Both for MM dynamics on R+P, with a figure.
- ``rosmap/mmdynamics``: MM dynamics and MM static on the MOGONET split and on 5 repeated
  stratified 70/30 splits.
- ``rosmap/schedule_cv``: the reference training schedule against nearby variants, by 5-fold
  cross-validation inside the MOGONET training part (the test part is never read).
- ``derm7pt/image_dynamics``: Image MM dynamics and MM static on clinical + dermoscopic
  images, diagnosis, official split.

Every findings paragraph is computed from the table's numbers. On a CPU the runs use one
intra-op thread: on the shared 2-core machine two threads made these small networks several
times slower (``bench/train_speed.py --threads`` shows the effect).
"""
from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import torch

from core import metrics, stats
from core.data.splits import stratified_kfold
from core.data.tasks import TaskData, get_task
from core.experiments import command, findings, register_experiment
from core.experiments.findings import CI_NOTE, Table, mean_std
from core.experiments.runner import Row, duration, pct, run_rows, run_table, write_table
from core.train.device import resolve_device
from core.viz.ablation import ablation_figure
from core.viz.export import result_formats, save_figure

# Mini-batch Adam with early stopping on the inner validation set; chosen so that the whole
# cells image-dynamics table (30 fits) stays within 15 minutes on the 2-core CPU.
CELLS_TRAIN = dict(epochs=40, batch_size=32, lr=1e-3, lr_step=None, patience=10, augment=True)
# The seed study's fixed latent weights of MM static: protein 3, RNA 1, image 6.
SEED_STATIC_WEIGHTS = {"protein": 3.0, "rna": 1.0, "image": 6.0}
# ROSMAP: the reference protocol (full batch, Adam 1e-4, StepLR(500, 0.2), 1000 epochs on the
# whole training part, final weights; no selection, so the test set is never looked at).
ROSMAP_TRAIN = dict(fixed_schedule=True)
# derm7pt: the cells recipe with a longer patience (a harder task); images at 64 px so that the
# 6 fits of two image encoders + gates take about half an hour on the 2-core CPU (128 px: ~4x).
DERM_TRAIN = dict(epochs=60, batch_size=32, lr=1e-3, lr_step=None, patience=15, augment=True)
#: EfficientNet-Lite0 from ImageNet at its own 224 px: the stem and stages 1-5 keep their weights (their
#: output is computed once per image where a method can), stages 6-7 and the head convolution train with
#: AdamW at a lower rate than the new head, cosine decay; bench/finetune_regimes.py's "last stages", which
#: beat both the frozen trunk and full fine-tuning on derm7pt's dermoscopy (results/bench/finetune_regimes.md)
IMAGENET_LAST_STAGES = dict(encoder="efficientnet_lite0", encoder_tune_stages=3, image_size=224, epochs=30,
                            batch_size=32, lr=1e-3, encoder_lr=3e-4, optimizer="adamw", cosine=True, patience=10,
                            augment=True)
#: the same with only the last stage and the head convolution trained (bench/finetune_regimes.py's "last
#: stage"): a training step costs ~3.5x less (results/bench/imagenet_steps.md: 18.8 against 65.5 ms per
#: image on one busy core), for tables whose fits would not otherwise finish on the CPU (pbc's 1,860
#: training images; guidance's C_I and C_S)
IMAGENET_LAST_STAGE = {**IMAGENET_LAST_STAGES, "encoder_tune_stages": 2}
DERM_IMAGE_SIZE = 64
# the metric the findings are stated in (robust to the cells' class imbalance)
KEY = "balanced_accuracy"


def one_cpu_thread(run):
    """Run an experiment with one intra-op thread when on a CPU (the previous count is restored)."""

    @functools.wraps(run)
    def wrapped(out_dir="results", device="auto", data_dir=None, progress=False, **kw) -> list[Path]:
        before = torch.get_num_threads()
        if resolve_device(device).type == "cpu":
            torch.set_num_threads(1)
        try:
            return run(out_dir, device, data_dir, progress, **kw)
        finally:
            torch.set_num_threads(before)

    return wrapped


def static_config(mods: tuple[str, ...], train: dict) -> dict:
    """MM static with the seed study's fixed modality weights for these modalities."""
    return {**train, "modality_weights": {m: SEED_STATIC_WEIGHTS[m] for m in mods if m in SEED_STATIC_WEIGHTS}}


def _mean_std(t: Table, label: str, metric: str = KEY) -> str:
    return mean_std(t, label, metric)


def compare(t: Table, a: str, b: str, claim: str, metric: str = KEY) -> str:
    return findings.compare(t, a, b, claim, metric)


def _name(metric: str) -> str:
    return metrics.LABELS.get(metric, metric).lower()


# ----------------------------------------------------------------------------- cells
PRI = ("protein", "rna", "image")
RESNET = {"encoder": "resnet"}  # from scratch
PRETRAINED = {"encoder": "pretrained"}  # the self-supervised trunk, fine-tuned
IMAGE_ROWS = [
    Row("CNN (I)", "cnn", ("image",), CELLS_TRAIN),
    Row("MM dynamics R+I", "mm_dynamics", ("rna", "image"), CELLS_TRAIN),
    Row("MM dynamics P+I", "mm_dynamics", ("protein", "image"), CELLS_TRAIN),
    Row("MM dynamics P+R+I", "mm_dynamics", ("protein", "rna", "image"), CELLS_TRAIN),
    Row("MM static P+R+I", "mm_static", ("protein", "rna", "image"), static_config(PRI, CELLS_TRAIN)),
    # the image encoders of :mod:`core.models.encoders` next to the small CNN's rows
    Row("CNN (I), ResNet", "cnn", ("image",), {**CELLS_TRAIN, **RESNET}),
    Row("CNN (I), ResNet pretrained", "cnn", ("image",), {**CELLS_TRAIN, **PRETRAINED}),
    Row("MM dynamics P+R+I, ResNet pretrained", "mm_dynamics", PRI, {**CELLS_TRAIN, **PRETRAINED}),
    Row("MM static P+R+I, ResNet pretrained", "mm_static", PRI, {**static_config(PRI, CELLS_TRAIN), **PRETRAINED}),
]


def image_findings(s: Table) -> str:
    best = max(s, key=lambda k: s[k].summary[KEY][0])
    return "\n".join([
        f"Stated in {_name(KEY)}. {CI_NOTE}",
        compare(s, "MM static P+R+I", "MM dynamics P+R+I", "Seed finding *MM static ≥ MM dynamics*"),
        compare(s, "MM dynamics P+R+I", "CNN (I)", "Adding the omics to the image helps"),
        compare(s, "MM dynamics P+R+I", "MM dynamics R+I", "Adding protein to RNA + image helps"),
        compare(s, "MM dynamics P+R+I", "MM dynamics P+I", "Adding RNA to protein + image helps"),
        f"- Best row: {best} ({_mean_std(s, best)}). The image is a class-matched picture, not the same "
        f"cell, and T, B and NK/ILC share the lymphocyte images, so the image alone cannot separate "
        f"those three lineages (CNN (I) {_mean_std(s, 'CNN (I)')}).",
        *encoder_findings(s),
    ])


def encoder_findings(s: Table) -> list[str]:
    """Each encoder row (``<label>, <encoder>``) against the same row with the small CNN."""
    pairs = [(label, *label.split(", ", 1)) for label in s if ", " in label]
    return [compare(s, label, base, f"{base}: the {encoder} encoder instead of the small CNN")
            for label, base, encoder in pairs if base in s]


@register_experiment("cells/image_dynamics", "cells: CNN (I), MM dynamics R+I / P+I / P+R+I, MM static P+R+I")
@one_cpu_thread
def cells_image_dynamics(out_dir="results", device="auto", data_dir=None, progress=False,
        task="cells") -> list[Path]:
    name = "cells/image_dynamics"
    _, path = run_table("image_dynamics", "Image MM dynamics on cells (leave-one-donor-out x 3 seeds)", task,
                        IMAGE_ROWS, device=device, out_dir=out_dir, data_dir=data_dir, findings=image_findings,
                        progress=progress, command=command(name, task))
    return [path.with_suffix(".json"), path]


GRAY = {"image": "gray"}
MASKED_ROWS = [
    Row("MM dynamics P+R+I", "mm_dynamics", ("protein", "rna", "image"), CELLS_TRAIN),
    Row("MM dynamics P+R+I*", "mm_dynamics", ("protein", "rna", "image"), CELLS_TRAIN, mask=GRAY),
    Row("MM dynamics P+R", "mm_dynamics", ("protein", "rna"), CELLS_TRAIN),
    Row("MM static P+R+I", "mm_static", ("protein", "rna", "image"), static_config(PRI, CELLS_TRAIN)),
    Row("MM static P+R+I*", "mm_static", ("protein", "rna", "image"), static_config(PRI, CELLS_TRAIN),
        mask=GRAY),
]


def masked_findings(s: Table) -> str:
    dyn, dyn_m, sta, sta_m = "MM dynamics P+R+I", "MM dynamics P+R+I*", "MM static P+R+I", "MM static P+R+I*"
    cost_dyn, cost_sta = findings.difference(s, dyn, dyn_m, KEY), findings.difference(s, sta, sta_m, KEY)
    gap = stats.bootstrap({k: s[k].runs for k in (dyn, dyn_m, sta, sta_m)}, KEY,
                          lambda m: (m[dyn] - m[dyn_m]) - (m[sta] - m[sta_m]))
    verdict = ("holds" if gap.estimate > 0 else "is reversed") if gap.called else "no difference called"
    return "\n".join([
        f"`*`: the image is replaced by uniform gray (0.5) at test time only; the models are the ones "
        f"trained with the image (unmasked rows, same weights). Stated in {_name(KEY)}. {CI_NOTE}",
        f"- Seed finding *masking the image hurts MM dynamics more than MM static*: **{verdict}**. "
        f"Masking costs MM dynamics {cost_dyn.text()} ({_mean_std(s, dyn)} -> {_mean_std(s, dyn_m)}) and MM static "
        f"{cost_sta.text()} ({_mean_std(s, sta)} -> {_mean_std(s, sta_m)}); the difference of the two costs is "
        f"{gap.text()}.",
        compare(s, dyn_m, "MM dynamics P+R",
                "A model trained with the image and tested without it against one trained on P+R"),
    ])


@register_experiment("cells/masked_image", "cells: image masked gray at test time (MM dynamics, MM static) vs P+R")
@one_cpu_thread
def cells_masked_image(out_dir="results", device="auto", data_dir=None, progress=False,
        task="cells") -> list[Path]:
    name = "cells/masked_image"
    _, path = run_table("masked_image", "Masking the image at test time (cells, leave-one-donor-out x 3 seeds)",
                        task, MASKED_ROWS, device=device, out_dir=out_dir, data_dir=data_dir,
                        findings=masked_findings, progress=progress, command=command(name, task))
    return [path.with_suffix(".json"), path]


def _ablation(fi: bool, mi: bool) -> dict:
    return {**CELLS_TRAIN, "feature_informativeness": fi, "modality_informativeness": mi}


# omics only and quick (about 7 s a fit), so ten seeds: a tighter interval for the four-way comparison
ABLATION_SEEDS = tuple(range(10))
ABLATION_ROWS = [
    Row("None", "mm_dynamics", ("rna", "protein"), _ablation(False, False)),
    Row("FI", "mm_dynamics", ("rna", "protein"), _ablation(True, False)),
    Row("MI", "mm_dynamics", ("rna", "protein"), _ablation(False, True)),
    Row("Both", "mm_dynamics", ("rna", "protein"), _ablation(True, True)),
]


def ablation_findings(s: Table) -> str:
    return "\n".join([
        "FI: feature-informativeness gates (+ their L1 term); MI: TCP confidence scaling (+ its MSE and "
        f"per-modality CE terms). MM dynamics on RNA + protein; stated in {_name(KEY)}. {CI_NOTE}",
        compare(s, "FI", "None", "Seed finding *FI helps* (FI vs None)"),
        compare(s, "Both", "MI", "Seed finding *FI helps* (Both vs MI)"),
        compare(s, "None", "MI", "Seed finding *MI does not help* (None ≥ MI)"),
        compare(s, "FI", "Both", "Seed finding *MI does not help* (FI ≥ Both)"),
    ])


@register_experiment("cells/ablation_fi_mi", "cells: MM dynamics on R+P with FI / MI switched on and off (+ figure)")
@one_cpu_thread
def cells_ablation(out_dir="results", device="auto", data_dir=None, progress=False,
        task="cells") -> list[Path]:
    name = "cells/ablation_fi_mi"
    results, path = run_table("ablation_fi_mi", "FI / MI ablation of MM dynamics on RNA + protein (cells, "
                              f"leave-one-donor-out x {len(ABLATION_SEEDS)} seeds)", task, ABLATION_ROWS,
                              task_options={"seeds": ABLATION_SEEDS}, device=device, out_dir=out_dir, data_dir=data_dir,
                              findings=ablation_findings, progress=progress, command=command(name, task))
    fig = ablation_figure({r.row.label: r.summary for r in results},
                          title="MM dynamics on cells (RNA + protein): feature / modality informativeness")
    figures = save_figure(fig, path.with_name("ablation_fi_mi"), result_formats())
    return [path.with_suffix(".json"), path, *figures]


# ----------------------------------------------------------------------------- rosmap
ROSMAP_COLUMNS = ("accuracy", "f1", "auroc", "f1_weighted", "f1_macro", "recall_weighted", "precision_weighted",
                  "balanced_accuracy")
TARGET = {"accuracy": 0.815, "auroc": 0.874}  # the published MOGONET figures on this split


def rosmap_findings(s: Table, seconds: float) -> str:
    dyn = "MM dynamics (MOGONET split)"
    acc, auc = s[dyn].summary["accuracy"][0], s[dyn].summary["auroc"][0]
    met = acc >= TARGET["accuracy"] and auc >= TARGET["auroc"]
    return "\n".join([
        "Training: the reference protocol (full batch, Adam lr 1e-4, weight decay 1e-4, StepLR(500, 0.2), "
        "1000 epochs) on the whole training part, final weights kept: no model selection, so the test set "
        "is used only for the numbers above. Features min-max scaled with training statistics. The schedule is "
        f"checked against {len(SCHEDULE_VARIANTS) - 1} variants by cross-validation inside the training part in "
        f"`schedule_cv.md`. {CI_NOTE}",
        f"- Target (the published MOGONET figures, ACC ≥ {pct(TARGET['accuracy'])}, AUC ≥ {pct(TARGET['auroc'])}, "
        f"mean of 5 seeds): **{'met' if met else 'not met'}**, MM dynamics ACC {_mean_std(s, dyn, 'accuracy')}, "
        f"AUC {_mean_std(s, dyn, 'auroc')}. Whole table (20 fits) wall time {duration(seconds)}.",
        compare(s, "MM static (MOGONET split)", dyn,
                "Seed finding *MM static ≥ MM dynamics* (MOGONET split, accuracy)", "accuracy"),
        compare(s, "MM static (repeated 70/30)", "MM dynamics (repeated 70/30)",
                "Seed finding *MM static ≥ MM dynamics* (repeated 70/30, accuracy)", "accuracy"),
    ])


@register_experiment("rosmap/mmdynamics", "rosmap: MM dynamics and MM static, MOGONET split and 5 x 70/30")
@one_cpu_thread
def rosmap_mmdynamics(out_dir="results", device="auto", data_dir=None, progress=False,
        task="rosmap") -> list[Path]:
    td = get_task(task, data_dir)
    t0 = time.perf_counter()
    results = []
    for scheme, tag in (("mogonet", "MOGONET split"), ("repeated_70_30", "repeated 70/30")):
        rows = [Row(f"MM dynamics ({tag})", "mm_dynamics", None, ROSMAP_TRAIN),
                Row(f"MM static ({tag})", "mm_static", None, ROSMAP_TRAIN)]
        results += run_rows(td, rows, scheme, device=device, progress=progress)
    seconds = time.perf_counter() - t0
    text = rosmap_findings({r.row.label: r for r in results}, seconds)
    path = write_table(out_dir, td, "mmdynamics", "MM dynamics and MM static on ROSMAP (5 seeds per split scheme)",
                       results, ROSMAP_COLUMNS, seconds, device, text, command("rosmap/mmdynamics", task))
    return [path.with_suffix(".json"), path]


# ----------------------------------------------------------------------------- derm7pt
DERM_ROWS = [
    Row("Image MM dynamics (clinic + derm)", "mm_dynamics", ("clinic", "derm"), DERM_TRAIN),
    Row("MM static (clinic + derm)", "mm_static", ("clinic", "derm"), DERM_TRAIN),
    Row("Image MM dynamics (clinic + derm), ResNet pretrained", "mm_dynamics", ("clinic", "derm"),
        {**DERM_TRAIN, **PRETRAINED}),
    Row("MM static (clinic + derm), ResNet pretrained", "mm_static", ("clinic", "derm"), {**DERM_TRAIN, **PRETRAINED}),
]


def derm_findings(s: Table, n_without_clinic: int) -> str:
    dyn, sta = "Image MM dynamics (clinic + derm)", "MM static (clinic + derm)"
    return "\n".join([
        f"Diagnosis (5 classes), official split, 3 seeds, images resized to {DERM_IMAGE_SIZE} px; stated in "
        f"{_name(KEY)} (the classes are imbalanced). {CI_NOTE} "
        f"The {n_without_clinic} cases without a clinical photo contribute no clinical latent and no clinical "
        "loss terms.",
        compare(s, sta, dyn, "Seed finding *MM static ≥ MM dynamics*"),
        compare(s, sta, dyn, "The same in weighted F1", "f1_weighted"),
        *encoder_findings(s),
    ])


@register_experiment("derm7pt/image_dynamics", "derm7pt: Image MM dynamics and MM static, clinical + dermoscopic")
@one_cpu_thread
def derm_image_dynamics(out_dir="results", device="auto", data_dir=None, progress=False,
        task="derm7pt") -> list[Path]:
    name = "derm7pt/image_dynamics"
    ds = get_task(task, data_dir, image_size=DERM_IMAGE_SIZE).dataset
    n_without_clinic = int((~ds.present["clinic"]).sum())
    _, path = run_table("image_dynamics", "Image MM dynamics on derm7pt (diagnosis, official split x 3 seeds)",
                        task, DERM_ROWS, task_options={"image_size": DERM_IMAGE_SIZE}, device=device,
                        out_dir=out_dir, data_dir=data_dir, progress=progress, command=command(name, task),
                        findings=lambda table: derm_findings(table, n_without_clinic))
    return [path.with_suffix(".json"), path]


# Variants of the reference schedule, compared without the test part: each trains on 4/5 of the
# MOGONET training part and is scored on the held-out fifth (fixed schedule, final weights).
SCHEDULE_VARIANTS = [
    ("Reference: 1000 epochs, StepLR(500, 0.2), Adam 1e-4", {}),
    ("500 epochs", {"epochs": 500}),
    ("1500 epochs, StepLR(750, 0.2)", {"epochs": 1500, "lr_step": 750}),
    ("Adam lr 3e-4", {"lr": 3e-4}),
    ("Unweighted CE", {"class_weighted": False}),
    ("Gate sparsity weight 0.1", {"w_sparsity": 0.1}),
    ("Dropout 0.3", {"dropout": 0.3}),
    # shorter schedules with the same lr x epochs budget, for a faster fit (bench/rosmap_vs_reference.py)
    ("300 epochs, StepLR(150, 0.2), Adam 3e-4", {"epochs": 300, "lr_step": 150, "lr": 3e-4}),
    ("200 epochs, StepLR(100, 0.2), Adam 5e-4", {"epochs": 200, "lr_step": 100, "lr": 5e-4}),
]


def schedule_findings(s: Table, folds: int, n: int) -> str:
    ranked = sorted(s, key=lambda lab: -s[lab].summary["accuracy"][0])
    ref = SCHEDULE_VARIANTS[0][0]
    best = ranked[0]
    lines = [f"MM dynamics, {folds}-fold stratified cross-validation inside the MOGONET training part ({n} patients; "
             "the test part is never read), fixed schedule, final weights, seed 0. Every variant is scored on the "
             f"same folds, so the comparison is paired by fold and patient. {CI_NOTE}",
             f"- Best mean cross-validated accuracy: {best} ({_mean_std(s, best, 'accuracy')}); the reference "
             f"schedule ranks {ranked.index(ref) + 1} of {len(ranked)} ({_mean_std(s, ref, 'accuracy')})."]
    if best == ref:
        lines.append("- No variant has a higher mean than the reference schedule, so `rosmap/mmdynamics` keeps it.")
        return "\n".join(lines)
    d = findings.difference(s, best, ref, "accuracy")
    lines.append(compare(s, best, ref, f"{best} against the reference", "accuracy"))
    if d.called:
        lines.append(f"- {best} leads the reference with an interval that excludes 0: worth adopting.")
    else:
        lines.append(f"- The best variant's lead ({d.text()}, about {d.estimate * n:.0f} of the {n} patients) is not "
                     "called, so `rosmap/mmdynamics` keeps the published schedule.")
    return "\n".join(lines)


def training_part_cv(td: TaskData) -> TaskData:
    """5 stratified folds of the MOGONET training part (train + val; the test part is left out)."""
    first = td.splits["mogonet"][0]
    part = np.concatenate([first.train, first.val])
    folds = stratified_kfold(part, td.dataset.y.numpy(), 5, seed=0, prefix="mogonet_train_cv")
    return TaskData(td.dataset, {"mogonet_train_cv": folds}, td.description)


@register_experiment("rosmap/schedule_cv", "rosmap: MM dynamics' reference schedule vs variants, 5-fold CV on the "
                                           "training part only")
@one_cpu_thread
def rosmap_schedule_cv(out_dir="results", device="auto", data_dir=None, progress=False,
        task="rosmap") -> list[Path]:
    td = get_task(task, data_dir)
    cv = training_part_cv(td)
    folds = cv.splits["mogonet_train_cv"]
    rows = [Row(label, "mm_dynamics", None, {**ROSMAP_TRAIN, **cfg}) for label, cfg in SCHEDULE_VARIANTS]
    t0 = time.perf_counter()
    results = run_rows(cv, rows, device=device, progress=progress)
    seconds = time.perf_counter() - t0
    text = schedule_findings({r.row.label: r for r in results}, len(folds), len(folds[0].train) + len(folds[0].test))
    path = write_table(out_dir, td, "schedule_cv", "MM dynamics schedule check on ROSMAP (5-fold CV inside the "
                       "MOGONET training part)", results, ROSMAP_COLUMNS, seconds, device, text,
                       command("rosmap/schedule_cv", task))
    return [path.with_suffix(".json"), path]
