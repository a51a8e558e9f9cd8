"""The paired bootstrap: its metrics agree with scikit-learn's, and it calls an effect only when
the data carry one."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from core import metrics, stats
from core.errors import MMXError

METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "precision_weighted", "recall_weighted",
           "f1_micro")


@pytest.mark.parametrize("seed", range(6))
def test_confusion_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = 40, 5
    y = rng.integers(0, c - 1, n)  # class 4 never true ...
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, c, n))  # ... but sometimes predicted
    if seed % 2:
        pred[pred == 3] = 0  # and class 3 sometimes never predicted
    proba = np.eye(c)[pred]
    ref = metrics.compute(y, proba)
    idx = np.arange(n)[None]
    for m in METRICS:
        got = stats.from_confusion(stats.confusions(y, pred, idx, c), m)[0]
        assert got == pytest.approx(ref[m]), m


def test_binary_f1_and_auroc_with_ties_match_sklearn():
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    score = np.array([0.5, 0.5, 0.2, 0.8, 0.2, 0.9, 0.7, 0.5])  # tied scores across classes
    pred = (score > 0.5).astype(int)
    idx = np.arange(8)[None]
    assert stats.auroc_resampled(y, score, idx)[0] == pytest.approx(roc_auc_score(y, score))
    f1 = metrics.compute(y, np.eye(2)[pred])["f1"]
    assert stats.from_confusion(stats.confusions(y, pred, idx, 2), "f1")[0] == pytest.approx(f1)


def _runs(rng, n_runs, n, accuracy):
    """Runs whose predictions are right with probability ``accuracy`` (4 classes)."""
    out = []
    for _ in range(n_runs):
        y = rng.integers(0, 4, n)
        wrong = (y + rng.integers(1, 4, n)) % 4
        out.append({"y": y, "pred": np.where(rng.random(n) < accuracy, y, wrong)})
    return out


def _same_cases(base, rng, accuracy):
    """Other predictions on the cases of ``base``."""
    out = []
    for r in base:
        y = r["y"]
        wrong = (y + rng.integers(1, 4, len(y))) % 4
        out.append({"y": y, "pred": np.where(rng.random(len(y)) < accuracy, y, wrong)})
    return out


def test_a_clear_difference_is_called_and_a_null_one_is_not():
    rng = np.random.default_rng(0)
    base = _runs(rng, 3, 300, 0.6)
    better = _same_cases(base, rng, 0.9)
    d = stats.difference(better, base, "accuracy")
    assert d.called and d.estimate > 0.2 and d.low > 0.15
    assert d.estimate == pytest.approx(np.mean([np.mean(b["pred"] == b["y"]) - np.mean(a["pred"] == a["y"])
                                                for a, b in zip(base, better)]))
    same = stats.difference(base, base, "balanced_accuracy")
    assert (same.estimate, same.low, same.high) == (0, 0, 0) and not same.called
    noise = [stats.difference(_same_cases(base, rng, 0.6), base, "accuracy", seed=s) for s in range(20)]
    assert sum(n.called for n in noise) <= 3  # about 5% false calls expected at 95%


def test_seed_spread_widens_the_interval():
    """Three seeds that disagree (one much better) give a wider interval than three that agree."""
    rng = np.random.default_rng(1)
    base = _runs(rng, 3, 200, 0.6)
    steady = _same_cases(base, rng, 0.7)
    erratic = [_same_cases(base[:1], rng, 0.95)[0], *_same_cases(base[1:], rng, 0.6)]
    a, b = stats.difference(steady, base, "accuracy"), stats.difference(erratic, base, "accuracy")
    assert (b.high - b.low) > 1.5 * (a.high - a.low)


def test_bootstrap_is_deterministic_and_refuses_unpaired_rows():
    rng = np.random.default_rng(2)
    base = _runs(rng, 2, 50, 0.5)
    other = _same_cases(base, rng, 0.7)
    assert stats.difference(other, base, "f1_macro") == stats.difference(other, base, "f1_macro")
    with pytest.raises(MMXError, match="same test cases"):
        stats.difference(_runs(rng, 2, 50, 0.5), base, "accuracy")
    with pytest.raises(MMXError, match="same, non-zero number of runs"):
        stats.difference(other[:1], base, "accuracy")


def test_relative_change_and_contrast():
    rng = np.random.default_rng(3)
    base = _runs(rng, 3, 300, 0.5)
    up = _same_cases(base, rng, 0.75)
    rel = stats.relative_change(up, base, "accuracy")
    acc = lambda rs: np.mean([np.mean(r["pred"] == r["y"]) for r in rs])  # noqa: E731
    assert rel.estimate == pytest.approx((acc(up) - acc(base)) / acc(base))
    assert rel.called and rel.low > 0.2
    both = stats.bootstrap({"a": up, "b": base, "c": up, "d": base}, "accuracy",
                           lambda m: (m["a"] - m["b"]) - (m["c"] - m["d"]))
    assert both.estimate == 0 and not both.called
    assert rel.text().startswith(f"{100 * rel.estimate:+.1f} points (95% CI ")


def test_multiclass_auroc_and_class_recall_match_the_metrics():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 60)
    y[y == 3] = 2  # class 3 never occurs: left out of the one-vs-rest mean
    proba = rng.dirichlet(np.ones(4), 60)
    run = {"y": y, "pred": proba.argmax(1), "proba": proba}
    idx = np.arange(60)[None]
    assert stats.run_metric(run, "auroc", idx, 4)[0] == pytest.approx(metrics.auroc(y, proba))
    recall_1 = np.mean(proba.argmax(1)[y == 1] == 1)
    assert stats.run_metric(run, "recall_class_1", idx, 4)[0] == pytest.approx(recall_1)
    binary = {"y": (y == 1).astype(int), "proba": np.column_stack([1 - proba[:, 1], proba[:, 1]])}
    assert stats.run_metric(binary, "auroc", idx, 2)[0] == pytest.approx(roc_auc_score(binary["y"], proba[:, 1]))


def test_sample_interval_covers_the_mean_and_averages_rows_on_the_same_draws():
    rng = np.random.default_rng(0)
    v = rng.normal(0.3, 0.2, 200)
    ci = stats.sample_interval(v)
    assert ci.low < 0.3 < ci.high and np.isclose(ci.estimate, v.mean()) and ci.high - ci.low < 0.1
    few = stats.sample_interval(v[:20])
    assert few.high - few.low > ci.high - ci.low  # fewer samples: a wider interval
    two = stats.sample_interval(np.stack([v, v + 1.0]))  # rows resampled together: the mean of two rows, offset 0.5
    assert np.isclose(two.estimate, v.mean() + 0.5) and np.isclose(two.low, ci.low + 0.5)
    with_gaps = v.copy()
    with_gaps[::4] = np.nan  # a sample without a value is left out, not counted as 0
    assert np.isclose(stats.sample_interval(with_gaps).estimate, np.nanmean(with_gaps))
    assert np.isclose(stats.sample_interval(v, np.nanmedian).estimate, np.median(v))
    assert np.isnan(stats.sample_interval(np.full(5, np.nan)).estimate)
