"""Is a difference between two rows of a result table real? A paired, two-stage bootstrap.

A table row is scored on a few runs (folds x seeds), each on its own test cases. Two rows of
one table share those runs and cases, so their difference is resampled *paired*: first the
runs (with replacement: the seed-to-seed spread), then each drawn run's test cases (with
replacement: the case-to-case spread), the same draws for every row. Any statistic of the rows'
run-averaged metrics (a difference, a difference of differences, a relative change) gets a
percentile interval, and an effect is called only when that interval excludes 0.

Metrics are computed from confusion matrices, vectorised over the resamples, with
scikit-learn's rules (``core.metrics.compute``; the tests check they agree).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

from core.errors import MMXError

N_BOOT = 2000
LEVEL = 0.95


def confusions(y: np.ndarray, pred: np.ndarray, idx: np.ndarray, n_classes: int) -> np.ndarray:
    """``B x C x C`` confusion counts (truth on rows) of the resamples ``idx`` (``B x n``)."""
    b = np.arange(idx.shape[0])[:, None]
    flat = (b * n_classes + y[idx]) * n_classes + pred[idx]
    return np.bincount(flat.ravel(), minlength=idx.shape[0] * n_classes * n_classes).reshape(
        idx.shape[0], n_classes, n_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, dtype=float), where=den > 0)


def from_confusion(cm: np.ndarray, metric: str) -> np.ndarray:
    """One metric per confusion matrix of ``cm`` (``B x C x C``), as ``core.metrics.compute``."""
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(float)
    support = cm.sum(2).astype(float)
    predicted = cm.sum(1).astype(float)
    n = support.sum(1)
    f1 = _ratio(2 * tp, support + predicted)
    if metric in ("accuracy", "recall_weighted", "f1_micro"):
        return tp.sum(1) / n
    if metric == "balanced_accuracy":  # classes in the truth
        present = support > 0
        return _ratio(tp, support).sum(1) / present.sum(1)
    if metric == "f1_macro":  # classes in the truth or the prediction
        seen = (support + predicted) > 0
        return f1.sum(1) / seen.sum(1)
    if metric == "f1_weighted":
        return (f1 * support).sum(1) / n
    if metric == "precision_weighted":
        return (_ratio(tp, predicted) * support).sum(1) / n
    if metric == "f1":  # binary, positive class 1
        return f1[:, 1]
    raise MMXError(f"no bootstrap rule for metric {metric!r}")


def auroc_resampled(y: np.ndarray, score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Binary AUROC of each resample (rank formula, ties averaged); NaN where a class is missing."""
    t = y[idx] == 1
    ranks = rankdata(score[idx], axis=1)
    pos = t.sum(1).astype(float)
    neg = idx.shape[1] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * t).sum(1) - pos * (pos + 1) / 2) / (pos * neg)


def run_metric(run: Mapping, metric: str, idx: np.ndarray, n_classes: int) -> np.ndarray:
    """``metric`` of one run's stored predictions on the case resamples ``idx``. AUROC reads the
    run's ``score`` (binary) or ``proba`` (binary, or the one-vs-rest mean over the classes that
    occur in the resample, as ``core.metrics.auroc``); ``recall_class_<k>`` is class k's recall."""
    y = np.asarray(run["y"])
    if metric == "auroc":
        if "score" in run:
            return auroc_resampled(y, np.asarray(run["score"], dtype=float), idx)
        if "proba" not in run:
            raise MMXError("a bootstrap of AUROC needs each run's scores ('score') or probabilities ('proba')")
        proba = np.asarray(run["proba"], dtype=float)
        if proba.shape[1] == 2:
            return auroc_resampled(y, proba[:, 1], idx)
        per_class = np.stack([auroc_resampled((y == k).astype(int), proba[:, k], idx) for k in range(proba.shape[1])])
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample where no class has both sides
            return np.nanmean(per_class, axis=0)
    cm = confusions(y, np.asarray(run["pred"]), idx, n_classes)
    if metric.startswith("recall_class_"):
        k = int(metric.rsplit("_", 1)[1])
        return _ratio(np.diagonal(cm, axis1=1, axis2=2)[:, k].astype(float), cm.sum(2)[:, k].astype(float))
    return from_confusion(cm, metric)


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    level: float = LEVEL

    @property
    def called(self) -> bool:
        """True when the interval excludes 0 (the effect is called)."""
        return self.low > 0 or self.high < 0

    def text(self, scale: float = 100, unit: str = " points") -> str:
        """``+3.1 points (95% CI +0.4 to +5.9)``."""
        f = lambda v: f"{scale * v:+.1f}"  # noqa: E731
        return f"{f(self.estimate)}{unit} ({100 * self.level:.0f}% CI {f(self.low)} to {f(self.high)})"


def bootstrap(runs: Mapping[str, Sequence[Mapping]], metric: str,
              statistic: Callable[[dict[str, np.ndarray]], np.ndarray], n_boot: int = N_BOOT, seed: int = 0,
              level: float = LEVEL) -> Interval:
    """Interval of ``statistic`` over rows ``runs`` (label -> that row's runs, each with ``y``,
    ``pred`` and, for AUROC, ``score`` or ``proba``). Run ``i`` of every row must be scored on the
    same cases.
    ``statistic`` maps label -> run-averaged metric (arrays of equal shape) to the quantity."""
    labels = list(runs)
    n_runs = {len(runs[k]) for k in labels}
    if len(n_runs) != 1 or not n_runs.pop():
        raise MMXError(f"rows {labels} do not have the same, non-zero number of runs")
    first = runs[labels[0]]
    for k in labels[1:]:
        for a, b in zip(first, runs[k]):
            if not np.array_equal(a["y"], b["y"]):
                raise MMXError(f"rows {labels[0]!r} and {k!r} are not scored on the same test cases")
    n_classes = 1 + max(int(max(max(r["y"]), max(r.get("pred", [0])))) for k in labels for r in runs[k])
    rng = np.random.default_rng(seed)
    n_r = len(first)
    # stage 1: per run, n_boot case resamples, the same for every row (paired)
    vals = {k: np.empty((n_r, n_boot)) for k in labels}
    full = {k: np.empty(n_r) for k in labels}
    for i in range(n_r):
        n = len(first[i]["y"])
        idx = rng.integers(0, n, (n_boot, n))
        for k in labels:
            vals[k][i] = run_metric(runs[k][i], metric, idx, n_classes)
            full[k][i] = run_metric(runs[k][i], metric, np.arange(n)[None], n_classes)[0]
    # stage 2: per replicate, draw runs with replacement, each with one of its case resamples
    rr = rng.integers(0, n_r, (n_boot, n_r))
    kk = rng.integers(0, n_boot, (n_boot, n_r))
    with np.errstate(invalid="ignore"):
        reps = np.asarray(statistic({k: np.nanmean(vals[k][rr, kk], axis=1) for k in labels}), dtype=float)
        est = float(np.asarray(statistic({k: np.array([np.nanmean(full[k])]) for k in labels}))[0])
    return _percentile(est, reps, level)


def difference(runs_a: Sequence[Mapping], runs_b: Sequence[Mapping], metric: str, **kw) -> Interval:
    """Interval of ``metric(a) - metric(b)`` (run-averaged), paired over runs and cases."""
    return bootstrap({"a": runs_a, "b": runs_b}, metric, lambda m: m["a"] - m["b"], **kw)


def relative_change(runs_new: Sequence[Mapping], runs_base: Sequence[Mapping], metric: str, **kw) -> Interval:
    """Interval of ``(metric(new) - metric(base)) / metric(base)`` (a fraction; x100 for %)."""
    return bootstrap({"new": runs_new, "base": runs_base}, metric,
                     lambda m: (m["new"] - m["base"]) / np.where(m["base"] == 0, np.nan, m["base"]), **kw)


def paired_median_difference(a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                             level: float = LEVEL) -> Interval:
    """Interval of ``median(a) - median(b)`` for values paired by sample (e.g. two explainers' flip-set
    sizes on the same samples): the samples resampled with replacement, the same draws for both."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if not len(a):
        return Interval(float("nan"), float("nan"), float("nan"), level)
    idx = np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))
    return _percentile(float(np.median(a) - np.median(b)), np.median(a[idx], 1) - np.median(b[idx], 1), level)


def sample_interval(values: np.ndarray, statistic: Callable[..., np.ndarray] = np.nanmean, n_boot: int = N_BOOT,
                    seed: int = 0, level: float = LEVEL) -> Interval:
    """Interval of ``statistic`` over the samples (the last axis of ``values``; NaN: a sample without a
    value), averaged over the first axis when there are two (e.g. retrainings, each scored on the same
    samples): the samples resampled with replacement, the same draws for every row."""
    v = np.atleast_2d(np.asarray(values, dtype=float))
    if not np.isfinite(v).any():
        return Interval(float("nan"), float("nan"), float("nan"), level)
    idx = np.random.default_rng(seed).integers(0, v.shape[-1], (n_boot, v.shape[-1]))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample (or a row) with no finite value
        est = float(np.nanmean(statistic(v, axis=-1)))
        reps = np.nanmean(statistic(v[:, idx], axis=-1), axis=0)
    return _percentile(est, reps, level)


def _percentile(estimate: float, reps: np.ndarray, level: float) -> Interval:
    """``estimate`` with the percentile interval of its bootstrap replicates ``reps`` (non-finite ones dropped)."""
    reps = reps[np.isfinite(reps)]
    if not len(reps):
        return Interval(estimate, float("nan"), float("nan"), level)
    lo, hi = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
    return Interval(estimate, float(lo), float(hi), level)
