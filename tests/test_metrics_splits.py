"""Metrics against hand-computed values; splits are disjoint, stratified and seeded."""
from __future__ import annotations

import numpy as np
import pytest

from core import metrics
from core.data.splits import leave_one_group_out, stratified_splits


def test_metrics_hand_computed():
    y = np.array([0, 0, 0, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])  # predictions 0, 1, 0, 1
    m = metrics.compute(y, proba)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    # class 0: P=1, R=2/3, F1=0.8 ; class 1: P=0.5, R=1, F1=2/3
    assert m["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["f1_weighted"] == pytest.approx(0.75 * 0.8 + 0.25 * 2 / 3)
    assert m["precision_weighted"] == pytest.approx(0.75 * 1 + 0.25 * 0.5)
    assert m["recall_weighted"] == pytest.approx(0.75)
    # positive score 0.7 beats 0.1 and 0.4 but not 0.8: AUROC = 2/3
    assert m["auroc"] == pytest.approx(2 / 3)


def test_auroc_ties_and_multiclass():
    y = np.array([0, 1, 2, 2])
    p = np.eye(3)[[0, 1, 2, 2]] * 0.9 + 0.1 / 3
    assert metrics.auroc(y, p) == pytest.approx(1.0)
    assert np.isnan(metrics.auroc(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]])))


def test_summary_and_table_format():
    s = metrics.summarize([{"accuracy": 0.8}, {"accuracy": 0.9}])
    assert s["accuracy"] == pytest.approx((0.85, 0.05))
    assert metrics.fmt(*s["accuracy"]) == "85.0 ± 5.0"
    t = metrics.markdown_table({"A": s, "B": {"accuracy": (0.5, 0.0)}}, columns=("accuracy",))
    assert "| A | **85.0 ± 5.0** |" in t and "| B | 50.0 ± 0.0 |" in t


def test_leave_one_group_out_and_stratified():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    groups = np.repeat(["a", "b", "c"], 30)
    splits = leave_one_group_out(groups, y, seeds=(0, 1))
    assert len(splits) == 6
    for s in splits:
        assert set(groups[s.test]) and not set(groups[s.test]) & set(groups[np.r_[s.train, s.val]])
    assert not np.array_equal(splits[0].val, splits[1].val)  # seeds differ
    again = leave_one_group_out(groups, y, seeds=(0, 1))
    assert all(np.array_equal(a.val, b.val) for a, b in zip(splits, again))
    st = stratified_splits(y, seeds=(0,), test_fraction=0.3)[0]
    assert len(st.test) == 27 and abs(np.bincount(y[st.test]) / 27 - np.bincount(y) / 90).max() < 0.05
