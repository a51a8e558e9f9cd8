"""Calibration: ECE against known toys, temperature scaling, split-conformal coverage on a large
synthetic set, and the calibration rows a model may use."""
from __future__ import annotations

import numpy as np
import pytest

from core.calibration import Conformal, calibration_parts, ece, fit_temperature, reliability, softmax
from core.data.splits import Split
from core.errors import MMXError
from core.models.registry import get_method


def _calibrated(n: int, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities drawn first, labels drawn from them: calibrated by construction."""
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet(np.full(k, 0.5), size=n)
    y = (rng.random(n)[:, None] > np.cumsum(proba, 1)).sum(1)
    return proba, np.minimum(y, k - 1)


def test_ece_is_zero_when_confidence_equals_accuracy_in_every_bin():
    proba = np.array([[0.8, 0.2]] * 10 + [[0.1, 0.9]] * 10)
    y = np.array([0] * 8 + [1] * 2 + [1] * 9 + [0] * 1)  # 80 % right at 0.8, 90 % right at 0.9
    assert ece(proba, y) == pytest.approx(0.0, abs=1e-7)
    assert ece(np.eye(3)[[0, 1, 2, 1]], np.array([0, 1, 2, 1])) == pytest.approx(0.0, abs=1e-7)


def test_ece_of_an_over_confident_toy_is_the_gap():
    proba = np.array([[0.9, 0.1]] * 10)
    y = np.array([0] * 6 + [1] * 4)
    assert ece(proba, y) == pytest.approx(0.3, abs=1e-6)


def test_reliability_bins_add_up_to_the_ece():
    proba, y = _calibrated(2000, seed=1)
    proba = softmax(np.log(proba) * 2)  # sharpened: over-confident
    bins = reliability(proba, y)
    full = bins[bins["count"] > 0]
    weighted = (full["count"] * (full["accuracy"] - full["confidence"]).abs()).sum() / len(y)
    assert bins["count"].sum() == len(y) and weighted == pytest.approx(ece(proba, y), abs=1e-5)
    assert (full["confidence"] > full["accuracy"]).mean() > 0.7


def test_temperature_undoes_a_known_sharpening():
    proba, y = _calibrated(20000, seed=2)
    logits = np.log(proba) * 3
    t = fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert ece(softmax(logits, t), y) < 0.3 * ece(softmax(logits), y)
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95])
def test_conformal_coverage_on_a_large_synthetic_set_is_within_two_points(confidence):
    proba, y = _calibrated(25000, seed=3)
    cal, test = slice(0, 5000), slice(5000, None)
    c = Conformal.fit(proba[cal], y[cal], tuple("abcde"), confidence)
    result = c.evaluate(proba[test], y[test])
    assert abs(result["coverage"] - confidence) <= 0.02, result
    assert 1 <= result["mean_set_size"] <= 5


def test_conformal_sets_round_trip_through_a_card_and_list_likely_classes_first():
    proba, y = _calibrated(500, k=4, seed=4)
    c = Conformal.fit(proba, y, ("w", "x", "y", "z"))
    card = {"classes": ["w", "x", "y", "z"], "calibration": {"conformal": c.to_dict()}}
    again = Conformal.from_card(card)
    assert again == c and Conformal.from_card({"classes": ["w"]}) is None
    sets = again.sets(np.array([[0.7, 0.2, 0.06, 0.04], [0.01, 0.01, 0.01, 0.97]]))
    assert sets[0][0] == "w" and sets[1] == ("z",)
    with pytest.raises(MMXError, match="4 class probabilities"):
        c.sets(np.array([[0.5, 0.5]]))


def test_bad_calibration_input_is_refused():
    with pytest.raises(MMXError, match="NaN"):
        ece(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(MMXError, match="labels must lie"):
        Conformal.fit(np.array([[0.5, 0.5]]), np.array([2]), ("a", "b"))
    with pytest.raises(MMXError, match="confidence"):
        Conformal.fit(np.array([[0.5, 0.5]]), np.array([1]), ("a", "b"), confidence=1.0)


def test_a_model_that_trained_on_its_validation_part_is_calibrated_on_half_the_test_part(demo):
    split = Split("s", np.arange(0, 100), np.arange(100, 130), np.arange(130, 200), seed=0)
    specs = {m: demo.dataset.specs[m] for m in ("rna", "protein")}
    selected = get_method("mm_dynamics", specs, demo.dataset.classes)
    cal, measured, what = calibration_parts(selected, split)
    assert what == "validation part" and (cal == split.val).all() and (measured == split.test).all()
    fixed = get_method("mm_dynamics", specs, demo.dataset.classes, train={"fixed_schedule": True})
    cal, measured, what = calibration_parts(fixed, split)
    assert what.startswith("half of the test part")
    assert not np.intersect1d(cal, measured).size and sorted([*cal, *measured]) == list(split.test)
