"""Sanity checks of explanations: randomising the model's layers from the top makes gradient
explanations less similar to the trained model's; the learned gates sit at the input, so they stay
the same until the cascade reaches them; a model trained on permuted labels explains otherwise."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.data.splits import Split
from core.explain.attributions import differentiable
from core.explain.sanity import (captum_metrics, cascade, depths, layers, permuted_labels, randomised,
                                 unit_sensitivity)
from core.models.registry import get_method

SPLIT = Split("s", np.arange(0, 60), np.arange(60, 80), np.arange(80, 100), seed=0)


@pytest.fixture(scope="module")
def trained(demo):
    data = demo.dataset.select(["rna", "protein"])
    m = get_method("mm_dynamics", data.specs, data.classes, train={"epochs": 30, "batch_size": 32, "lr": 1e-3,
                                                                   "lr_step": None, "patience": None})
    m.fit(data, SPLIT, seed=0, device="cpu")
    return m, data


def test_layers_run_from_the_output_down_and_randomising_leaves_the_model_alone(trained):
    m, data = trained
    names = [n for n, _ in layers(m, data)]
    assert names[0] == "classifier" and names[-2:] in (["gates.rna.0", "gates.protein.0"],
                                                      ["gates.protein.0", "gates.rna.0"]), names  # forward order
    before = {k: v.clone() for k, v in m.weights().items()}
    r = randomised(m, names, 2, seed=0)
    assert all(torch.equal(before[k], v) for k, v in m.weights().items())  # the original is untouched
    changed = [k for k, v in r.weights().items() if not torch.equal(before[k], v)]
    assert changed and all(any(k.startswith(f"net.{n}.") for n in names[:2]) for k in changed)
    assert depths(10) == [0, 1, 2, 4, 8, 10] and depths(3) == [0, 1, 2, 3]


def test_randomised_models_explain_less_like_the_trained_one(trained):
    m, data = trained
    idx = SPLIT.test[:10]
    s = cascade(m, data, idx, ("learned", "integrated_gradients"), most=4)
    for mod in ("rna", "protein"):
        ig = s.cascade["integrated_gradients"][mod]["spearman"]
        assert np.allclose(ig[0], 1.0)  # depth 0 is the trained model itself
        assert np.nanmean(ig[-1]) < np.nanmean(ig[0]) - 0.3, ig.mean(1)
        learned = s.cascade["learned"][mod]["spearman"]
        assert np.allclose(learned[1], 1.0)  # the top layer is not a gate: the gates are unchanged
        assert np.nanmean(learned[-1]) < 0.9  # with every layer random the gates are too
    rows = s.summary()
    assert {r["depth"] for r in rows} == set(s.depths)


def test_a_model_trained_on_permuted_labels_is_compared(trained):
    m, data = trained
    rng = np.random.default_rng(0)
    shuffled_data = data.__class__(**{**data.__dict__, "y": data.y[torch.as_tensor(rng.permutation(len(data)))],
                                      "_hash": None})
    other = get_method("mm_dynamics", data.specs, data.classes, **{"train": {"epochs": 30, "batch_size": 32,
                                                                             "lr_step": None, "patience": None}})
    other.fit(shuffled_data, SPLIT, seed=0, device="cpu")
    idx = SPLIT.test[:10]
    s = cascade(m, data, idx, ("integrated_gradients",), most=2)
    permuted_labels(s, m, [other, m], data, idx, ("integrated_gradients",))  # the model itself: similarity 1
    p = s.permuted["integrated_gradients"]["rna"]["spearman"]
    assert p.shape == (2, 10) and np.nanmean(p[0]) < 0.9 and np.allclose(p[1], 1.0)
    row = next(r for r in s.summary() if r["depth"] == "permuted" and r["measure"] == "spearman"
               and r["modality"] == "rna")
    assert row["retrainings"] == 2 and row["highest"] == 1.0 and row["lowest"] < 0.9
    assert np.isclose(row["mean"], (row["lowest"] + row["highest"]) / 2)
    assert row["low"] <= row["mean"] <= row["high"] and row["low"] < row["high"]  # an interval over the samples
    stored = json.loads(json.dumps(s.per_sample()))  # what the table's JSON keeps: every sample's similarity
    assert np.allclose(np.asarray(stored["permuted"]["integrated_gradients"]["rna"]["spearman"], dtype=float), p,
                       atol=1e-6, equal_nan=True) and stored["ids"] == [str(i) for i in data.ids[idx]]
    flagged = s.flagged(at=-1.0)  # every explainer is flagged at an impossible bar, with its reasons
    assert "integrated_gradients" in flagged and "permuted labels" in flagged["integrated_gradients"]


def test_captum_metrics_rank_explanations_against_random_scores(trained):
    m, data = trained
    idx = SPLIT.test[:10]
    s = cascade(m, data, idx, ("learned", "integrated_gradients"), most=2)
    captum_metrics(s, m, data, idx, ("learned", "integrated_gradients"), attribution={"n_steps": 16},
                   sensitivity_samples=6)
    for mod in ("rna", "protein"):
        ig, rnd = s.metrics["integrated_gradients"][mod], s.metrics["random"][mod]
        assert ig["infidelity"].shape == (10,) and np.isfinite(ig["infidelity"]).all()
        assert np.mean(ig["infidelity"] < rnd["infidelity"]) >= 0.7, (ig["infidelity"], rnd["infidelity"])
        sensitivity = s.metrics["learned"][mod]["sensitivity"]  # measured on the first samples only
        assert "sensitivity" not in rnd and np.isfinite(sensitivity[:6]).all() and np.isnan(sensitivity[6:]).all()
    rows = s.metric_summary()
    assert {(r["metric"], r["explainer"]) for r in rows} == {
        ("infidelity", "learned"), ("infidelity", "integrated_gradients"), ("infidelity", "random"),
        ("sensitivity", "learned"), ("sensitivity", "integrated_gradients")}
    ig = next(r for r in rows if r["explainer"] == "integrated_gradients" and r["metric"] == "infidelity"
              and r["modality"] == "rna")
    assert ig["below random %"] >= 70
    assert ig["to random low"] <= ig["to random"] < 1 and ig["to random high"] >= ig["to random"]
    assert ig["low"] <= ig["median"] <= ig["high"]


def test_sensitivity_grows_with_the_noise_and_is_zero_without(trained):
    m, data = trained
    diff = differentiable(m)
    inputs, present = diff.inputs(data, SPLIT.test[:1])
    opts = {"n_steps": 16}
    assert unit_sensitivity(diff, inputs, present, 0, "integrated_gradients", options=opts, radius=0.0) < 1e-6  # batch sums differ in the last bits
    small = unit_sensitivity(diff, inputs, present, 0, "integrated_gradients", options=opts, radius=0.01)
    large = unit_sensitivity(diff, inputs, present, 0, "integrated_gradients", options=opts, radius=1.0)
    assert 0 < small < large

