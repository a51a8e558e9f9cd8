"""Metrics against hand-computed values; splits are disjoint, stratified and seeded."""
from __future__ import annotations

import numpy as np
import pytest

from core import metrics
from core.data.splits import leave_one_group_out, stratified_kfold, stratified_splits, with_inner_validation
from core.errors import MMXError


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


def test_auroc_with_tied_scores():
    """Tied scores across the classes count one half: positives {0.5, 0.8} against negatives
    {0.5, 0.2} win 3 of 4 pairs and tie 1, so AUROC = 3.5 / 4."""
    y = np.array([0, 1, 0, 1])
    p1 = np.array([0.5, 0.5, 0.2, 0.8])
    assert metrics.auroc(y, np.column_stack([1 - p1, p1])) == pytest.approx(0.875)
    # multiclass, one-vs-rest: class 2 has a tie between a member and a non-member
    y3 = np.array([0, 1, 2, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.6, 0.3], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    # class 0: 1.0; class 1: positive 0.6 vs negatives {0.1, 0.6, 0.2} -> 2.5/3; class 2: positives
    # {0.3, 0.6} vs negatives {0.1, 0.3} -> (0.5 + 1 + 1 + 1) / 4
    assert metrics.auroc(y3, p) == pytest.approx((1.0 + 2.5 / 3 + 3.5 / 4) / 3)
    assert np.isnan(metrics.auroc(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]])))


def test_one_rule_for_classes_absent_from_truth_and_prediction():
    """Class 2 occurs in neither: macro F1 and balanced accuracy both leave it out (sklearn)."""
    y = np.array([0, 0, 1, 1])
    proba = np.eye(3)[[0, 1, 1, 1]]
    m = metrics.compute(y, proba)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1) / 2)
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)  # not divided by 3
    # a class predicted but never true still counts, with F1 = 0
    m2 = metrics.compute(y, np.eye(3)[[0, 2, 1, 1]])
    assert m2["f1_macro"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_summary_uses_the_sample_std_and_table_format():
    s = metrics.summarize([{"accuracy": 0.8}, {"accuracy": 0.9}])
    assert s["accuracy"] == pytest.approx((0.85, np.sqrt(0.005)))  # ddof 1: 0.0707, not 0.05
    assert metrics.fmt(*s["accuracy"]) == "85.0 ± 7.1"
    one = metrics.summarize([{"accuracy": 0.8}])
    assert np.isnan(one["accuracy"][1]) and metrics.fmt(*one["accuracy"]) == "80.0"
    t = metrics.markdown_table({"A": s, "B": {"accuracy": (0.5, 0.0)}}, columns=("accuracy",))
    assert "| A | **85.0 ± 7.1** |" in t and "| B | 50.0 ± 0.0 |" in t


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


def test_stratified_kfold_partitions_each_class():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    idx = np.arange(10, 200)  # a part of the data, as the schedule check uses it
    folds = stratified_kfold(idx, y, k=5, seed=1)
    assert len(folds) == 5 and all(len(f.val) == 0 for f in folds)
    tests = np.concatenate([f.test for f in folds])
    assert np.array_equal(np.sort(tests), idx)  # every row held out exactly once
    for f in folds:
        assert np.array_equal(np.sort(np.r_[f.train, f.test]), idx)
    for c in range(3):  # per class, fold sizes differ by at most one
        sizes = [int((y[f.test] == c).sum()) for f in folds]
        assert max(sizes) - min(sizes) <= 1
    assert all(np.array_equal(a.test, b.test) for a, b in zip(folds, stratified_kfold(idx, y, k=5, seed=1)))
    assert not np.array_equal(folds[0].test, stratified_kfold(idx, y, k=5, seed=2)[0].test)
    with pytest.raises(MMXError, match="k >= 2"):
        stratified_kfold(idx, y, k=1)


def test_with_inner_validation_keeps_the_test_part_and_splits_train():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    train, test = np.arange(70), np.arange(70, 100)
    splits = with_inner_validation("fixed", train, test, y, seeds=(0, 1), val_fraction=0.2)
    assert [s.name for s in splits] == ["fixed/seed=0", "fixed/seed=1"]
    for s in splits:
        assert np.array_equal(s.test, test)
        assert np.array_equal(np.sort(np.r_[s.train, s.val]), train)
        assert abs(len(s.val) - 14) <= 2
        for c in (0, 1):
            assert (y[s.val] == c).sum() >= 1 and (y[s.train] == c).sum() >= 1
    assert not np.array_equal(splits[0].val, splits[1].val)
