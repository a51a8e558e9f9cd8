"""Deletion / insertion faithfulness: curves that start and end where the repo's own masking says,
AUCs in [0, 1], a probe model whose one deciding unit every faithful order removes first (and a
random order does not), and the demo experiment writing its table, JSON and figure."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from test_attributions import decided, make_probe

from core.errors import MMXError
from core.experiments import get_experiment
from core.explain.attributions import attribute
from core.explain.faithfulness import CURVES, LEARNED, RANDOM, curves, faithfulness
from core.models.registry import get_method
from core.viz.export import result_formats


@pytest.fixture(scope="module")
def split(demo):
    return demo.splits[demo.default_split][0]


@pytest.fixture(scope="module")
def model(demo, split, one_thread):
    method = get_method("mm_dynamics", demo.dataset.specs, demo.dataset.classes, epochs=3, batch_size=32, lr=1e-3,
                        lr_step=None)
    method.fit(demo.dataset, split, seed=0, device="cpu")
    return method


@pytest.fixture(scope="module")
def result(model, demo, split):
    return faithfulness(model, demo.dataset, split.test[:6], (LEARNED, "integrated_gradients"), steps=5)


def test_curves_start_and_end_where_masking_says(model, demo, split, result):
    rows = split.test[:6]
    p = model.predict(demo.dataset, rows).proba
    target = p.argmax(1)
    assert np.array_equal(result.target, target) and np.allclose(result.fractions, np.linspace(0, 1, 6))
    assert set(result.curves) == {"rna", "protein", "image"}
    for m, by_explainer in result.curves.items():
        assert set(by_explainer) == {LEARNED, "integrated_gradients", RANDOM}
        at_mean = model.predict(demo.dataset, rows, mask={m: "mean"}).proba[np.arange(6), target]
        for e, by_curve in by_explainer.items():
            d, i = by_curve["deletion"], by_curve["insertion"]
            assert d.shape == i.shape == (6, 6) and ((d >= 0) & (d <= 1)).all() and ((i >= 0) & (i <= 1)).all()
            assert np.allclose(d[:, 0], p[np.arange(6), target], atol=1e-5) and np.allclose(i[:, -1], d[:, 0])
            assert np.allclose(d[:, -1], at_mean, atol=1e-5) and np.allclose(i[:, 0], at_mean, atol=1e-5)
            for c in CURVES:
                auc = result.auc(m, e, c)
                assert ((auc >= 0) & (auc <= 1)).all()


def test_cohort_table_and_determinism(model, demo, split, result):
    table = result.table()
    assert len(table) == 3 * 3 * 2 and (table.n == 6).all()
    assert (table[table.explainer == RANDOM].verdict == "").all()
    assert set(table[table.explainer != RANDOM].verdict) <= {"better", "worse", "no difference"}
    assert table.p_value.dropna().between(0, 1).all() and table.auc_mean.between(0, 1).all()
    versus = result.versus(LEARNED, ("integrated_gradients",))
    assert len(versus) == 3 * 2 and set(versus.other) == {"integrated_gradients"}
    again = faithfulness(model, demo.dataset, split.test[:6], (LEARNED, "integrated_gradients"), steps=5)
    assert all(np.array_equal(again.curves[m][e][c], result.curves[m][e][c])
               for m in result.curves for e in result.curves[m] for c in CURVES)


def test_absent_samples_are_left_out_and_inputs_checked(model, demo, split):
    rows = split.test[:4]
    lacking = demo.dataset.present["image"].clone()
    lacking[torch.as_tensor(rows[:1])] = False
    data = dataclasses.replace(demo.dataset, present={**demo.dataset.present, "image": lacking}, _hash=None)
    res = faithfulness(model, data, rows, (LEARNED,), steps=4)
    assert np.isnan(res.curves["image"][LEARNED]["deletion"][0]).all()
    assert np.isfinite(res.curves["image"][RANDOM]["insertion"][1:]).all()
    table = res.table()
    assert (table[table.modality == "image"].n == 3).all() and (table[table.modality == "rna"].n == 4).all()
    with pytest.raises(MMXError, match="other samples"):
        curves(model, data, rows[:3], {"ig": attribute(model, data, rows, "integrated_gradients")})
    with pytest.raises(MMXError, match="unknown explainers"):
        faithfulness(model, data, rows, ("shap",))


@pytest.mark.parametrize("modality", ["rna", "image"])
def test_deletion_curve_removes_the_known_unit_first_and_random_does_not(demo, split, modality):
    probe = make_probe(demo, split, modality, 7 if modality == "rna" else 21)
    rows = decided(probe, demo, split)
    explanations = {e: attribute(probe, demo.dataset, rows, e) for e in ("integrated_gradients", "occlusion")}
    res = curves(probe, demo.dataset, rows, explanations, steps=10)
    for by_curve in res.curves[modality].values():  # one unit decides: every curve is a single step
        assert (np.diff(by_curve["deletion"], axis=1) <= 1e-6).all()
        assert (np.diff(by_curve["insertion"], axis=1) >= -1e-6).all()
    for e in explanations:  # gone at the first step (deletion), back at the first step (insertion)
        d, i = res.curves[modality][e]["deletion"], res.curves[modality][e]["insertion"]
        assert np.allclose(d[:, 1], d[:, -1]) and (d[:, 0] > d[:, -1] + 0.1).all() and np.allclose(i[:, 1], i[:, -1])
        assert (res.auc(modality, e, "deletion") <= res.auc(modality, RANDOM, "deletion") + 1e-9).all()
    rand = res.curves[modality][RANDOM]["deletion"]
    assert np.mean(np.isclose(rand[:, 1], rand[:, -1])) < 0.5  # a random order rarely removes it first
    table = res.table().query(f"modality == '{modality}' and explainer != '{RANDOM}'")
    assert (table.verdict == "better").all()


def test_demo_experiment_writes_table_json_and_figure(tmp_path, monkeypatch, one_thread):
    from core.experiments import faithfulness as exp

    monkeypatch.setattr(exp, "SAMPLES", {"demo": 6})
    monkeypatch.setattr(exp, "DEMO_TRAIN", {**exp.DEMO_TRAIN, "epochs": 2})
    written = get_experiment("derm7pt/faithfulness").run(out_dir=tmp_path, device="cpu", task="demo")
    md = (tmp_path / "demo" / "faithfulness.md").read_text()
    payload = json.loads((tmp_path / "demo" / "faithfulness.json").read_text())
    assert "python train.py --experiment derm7pt/faithfulness --task demo" in md and "SYNTHETIC DATA" in md
    assert "| Modality | Explainer | Deletion AUC ↓ |" in md and "## Findings" in md and "Wall time" in md
    assert "learned FI maps are better than random in" in md
    fmt = result_formats()[0]
    assert (tmp_path / "demo" / f"faithfulness.{fmt}").exists() and f"faithfulness.{fmt}" in md
    assert len(written) >= 3 and payload["samples"] == 6 and payload["wall_seconds"] >= 0
    assert {r["explainer"] for r in payload["summary"]} == {LEARNED, RANDOM, "integrated_gradients", "occlusion",
                                                            "feature_ablation", "gradient_shap"}
    assert len(payload["auc"]["rna"][LEARNED]["deletion"]) == 6
