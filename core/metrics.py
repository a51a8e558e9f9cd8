"""The metric table used everywhere: the seed study's six columns (+ AUROC).

``compute`` scores one prediction; ``summarize`` turns many (folds x seeds) into mean and
std; ``markdown_table`` renders rows in the seed study's percentage format.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import numpy as np
from sklearn import metrics as skm

SIX = ("f1_weighted", "f1_macro", "recall_weighted", "precision_weighted", "accuracy", "balanced_accuracy")
LABELS = {
    "f1_weighted": "F1 (weighted)", "f1_macro": "F1 macro", "recall_weighted": "Recall (weighted)",
    "precision_weighted": "Precision (weighted)", "accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy",
    "auroc": "AUROC", "f1_micro": "F1 micro", "f1": "F1 (positive class)",
}


def auroc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Binary AUROC from the positive-class probability; for more classes the macro mean of
    one-vs-rest AUROCs over classes that occur (NaN when undefined)."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape[1] == 2:
        return float(skm.roc_auc_score(y_true, proba[:, 1])) if len(np.unique(y_true)) == 2 else float("nan")
    scores = [skm.roc_auc_score(y_true == k, proba[:, k]) for k in range(proba.shape[1])
              if 0 < (y_true == k).sum() < len(y_true)]
    return float(np.mean(scores)) if scores else float("nan")


def compute(y_true: Sequence[int], proba: np.ndarray, with_auroc: bool | None = None,
            labels: Sequence[int] | None = None) -> dict[str, float]:
    """All metrics of one prediction. ``proba`` is N x C; AUROC is added for binary tasks
    (or when ``with_auroc`` is True). ``labels`` restricts the per-class averages of F1,
    precision and recall to those classes (e.g. the classes present in a user's data).

    One rule for every per-class average, scikit-learn's: a class that occurs in neither the
    truth nor the prediction is left out (macro F1 and balanced accuracy alike), a class that is
    predicted but absent from the truth counts with F1 = 0 and has no weight in weighted means."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba)
    pred = proba.argmax(1)
    kw = dict(zero_division=0, labels=labels)
    out = {
        "f1_weighted": skm.f1_score(y_true, pred, average="weighted", **kw),
        "f1_macro": skm.f1_score(y_true, pred, average="macro", **kw),
        "recall_weighted": skm.recall_score(y_true, pred, average="weighted", **kw),
        "precision_weighted": skm.precision_score(y_true, pred, average="weighted", **kw),
        "accuracy": skm.accuracy_score(y_true, pred),
        "balanced_accuracy": balanced_accuracy(y_true, pred),
        "f1_micro": skm.f1_score(y_true, pred, average="micro", **kw),
    }
    if proba.shape[1] == 2:  # binary F1 of the positive class, the "F1" of MOGONET's tables
        out["f1"] = skm.f1_score(y_true, pred, labels=[0, 1], average="binary", pos_label=1, zero_division=0)
    if with_auroc or (with_auroc is None and proba.shape[1] == 2):
        out["auroc"] = auroc(y_true, proba)
    return {k: float(v) for k, v in out.items()}


def balanced_accuracy(y_true: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's balanced accuracy (mean recall over the classes in ``y_true``), without its
    warning about predicted classes that the truth lacks (they cannot add recall)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(skm.balanced_accuracy_score(y_true, pred))


def confusion(y_true: Sequence[int], pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Counts, true class on rows and predicted class on columns, over all ``n_classes`` (a class
    missing from one run still gets its row and column, so the matrices of several runs add up)."""
    return skm.confusion_matrix(np.asarray(y_true), np.asarray(pred), labels=np.arange(n_classes))


def mcnemar(y_true: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int]) -> float:
    """Two-sided exact McNemar p-value for two classifiers on the same samples: a binomial
    test (p = 1/2) on the discordant pairs, b = only A right and c = only B right."""
    from scipy.stats import binom

    y_true, pred_a, pred_b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    right_a, right_b = pred_a == y_true, pred_b == y_true
    b, c = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    if b + c == 0:
        return 1.0
    return float(min(1.0, 2 * binom.cdf(min(b, c), b + c, 0.5)))


def summarize(runs: Iterable[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and sample standard deviation (ddof 1: the spread of a few runs is an estimate, and
    the population formula understates it) of each metric over runs; the std is NaN for one run."""
    runs = list(runs)
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    return {k: (mean_std([r[k] for r in runs])) for k in keys}


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1) ignoring NaN; std NaN with fewer than two values."""
    v = np.asarray(list(values), dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


STD_NOTE = "std = sample standard deviation (ddof 1) over runs"


def fmt(mean: float, std: float, percent: bool = True, digits: int = 1) -> str:
    """``85.7 ± 1.2`` (percent) or ``0.857 ± 0.012``; the mean alone when the std is undefined."""
    if np.isnan(mean):
        return "n/a"
    scale, d = (100, digits) if percent else (1, digits + 2)
    return f"{scale * mean:.{d}f}" + ("" if np.isnan(std) else f" ± {scale * std:.{d}f}")


def markdown_table(rows: dict[str, dict[str, tuple[float, float]]], columns: Sequence[str] = SIX,
                   percent: bool = True, bold_best: bool = True, first_header: str = "Method") -> str:
    """One row per entry of ``rows`` (name -> summary), best mean per column in bold."""
    best = {c: max((r[c][0] for r in rows.values() if c in r and not np.isnan(r[c][0])), default=None)
            for c in columns}
    head = f"| {first_header} | " + " | ".join(LABELS.get(c, c) for c in columns) + " |"
    lines = [head, "|" + " --- |" * (len(columns) + 1)]
    for name, r in rows.items():
        cells = []
        for c in columns:
            if c not in r:
                cells.append("")
                continue
            s = fmt(*r[c], percent=percent)
            top = bold_best and len(rows) > 1 and best[c] is not None and r[c][0] == best[c]
            cells.append(f"**{s}**" if top else s)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
