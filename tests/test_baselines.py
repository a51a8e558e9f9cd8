"""Baselines: early fusion (KNN, LR, MLP, RF, SVM), HEALNet and MCAT on the synthetic and real data,
HEALNet's per-sample handling of missing modalities, MCAT's configuration checks."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from core import metrics
from core.errors import MMXError
from core.experiments.baselines import strongest
from core.models import get_method

EARLY = ("early_knn", "early_lr", "early_mlp", "early_rf", "early_svm")
DEEP_FAST = {"epochs": 25, "patience": None}  # enough to learn the real cells, short enough for CI
DEEP_DEMO = {"epochs": 60}  # the small synthetic training set gives few steps per epoch


pytestmark = pytest.mark.usefixtures("one_thread")


def _fit_score(name, ds, split, **cfg):
    m = get_method(name, ds.specs, ds.classes, **cfg)
    m.fit(ds, split, seed=split.seed)
    pred = m.predict(ds, split.test)
    assert pred.proba.shape == (len(split.test), ds.n_classes)
    assert np.allclose(pred.proba.sum(1), 1, atol=1e-5)
    return m, metrics.compute(ds.y[split.test].numpy(), pred.proba)


@pytest.mark.parametrize("name", [*EARLY, "healnet"])
def test_baseline_learns_demo(demo, name):
    _, m = _fit_score(name, demo.dataset, demo.splits["logo"][0], **({} if name in EARLY else DEEP_DEMO))
    assert m["balanced_accuracy"] > 0.8, m  # 4 classes: chance is 0.25


def test_mcat_learns_demo_whatever_the_seed(demo):
    """MCAT once learned demo with some seeds only (0.50 with seed 0: few optimizer steps per epoch
    and early stopping on balanced accuracy over 23 validation rows); every seed of 0-9 must learn."""
    ds = demo.dataset.select(["rna", "protein"])
    split = demo.splits["logo"][0]
    scores = {}
    for seed in range(10):
        m = get_method("mcat", ds.specs, ds.classes, **DEEP_DEMO)
        m.fit(ds, split, seed=seed)
        scores[seed] = metrics.compute(ds.y[split.test].numpy(), m.predict(ds, split.test).proba)["balanced_accuracy"]
    assert min(scores.values()) > 0.8, scores


def _learned_cells(m: dict) -> bool:
    return m["accuracy"] > 0.8 and m["balanced_accuracy"] > 0.6  # majority class: 31% of the test donor


@pytest.mark.parametrize("name", [*EARLY, "mcat"])
def test_baseline_learns_real_cells(cells, name):
    """RNA + protein, trained on one donor and tested on the other."""
    ds = cells.dataset.select(["rna", "protein"])
    _, m = _fit_score(name, ds, cells.splits["leave_one_donor_out"][0], **({} if name in EARLY else DEEP_FAST))
    assert _learned_cells(m), m


def test_early_fusion_scaling_uses_training_rows_only(cells):
    """Replacing every non-training row by garbage changes nothing the model learned."""
    ds = cells.dataset.select(["rna", "protein"])
    split = cells.splits["leave_one_donor_out"][0]
    rest = np.setdiff1d(np.arange(len(ds)), split.train)
    noisy = {m: x.clone() for m, x in ds.modalities.items()}
    for x in noisy.values():
        x[rest] = torch.rand(len(rest), x.shape[1]) * 1e4
    garbage = dataclasses.replace(ds, modalities=noisy, _hash=None)
    a = get_method("early_svm", ds.specs, ds.classes)
    a.fit(ds, split, seed=0)
    b = get_method("early_svm", ds.specs, ds.classes)
    b.fit(garbage, split, seed=0)
    assert np.array_equal(a.predict(ds, split.train[:50]).proba, b.predict(ds, split.train[:50]).proba)
    scaler = a.model[0]
    assert np.allclose(scaler.mean_, a.features(ds, split.train).mean(0), atol=1e-5)


def test_early_fusion_honours_test_time_masks(cells):
    ds = cells.dataset.select(["rna", "protein"])
    split = cells.splits["leave_one_donor_out"][0]
    m = get_method("early_lr", ds.specs, ds.classes)
    m.fit(ds, split, seed=0)
    full = m.predict(ds, split.test).proba
    masked = m.predict(ds, split.test, mask={"protein": "zeros"}).proba
    assert not np.allclose(full, masked)


# ------------------------------------------------------------------ HEALNet and missing modalities
@pytest.fixture(scope="module")
def healnet_cells(cells):
    ds = cells.dataset.select(["rna", "protein"])
    split = cells.splits["leave_one_donor_out"][0]
    m = get_method("healnet", ds.specs, ds.classes, **DEEP_FAST)
    m.fit(ds, split, seed=0)
    return m, ds, split


def test_healnet_learns_real_cells(healnet_cells):
    m, ds, split = healnet_cells
    score = metrics.compute(ds.y[split.test].numpy(), m.predict(ds, split.test).proba)
    assert _learned_cells(score), score


def _without(ds, modality, idx, fill):
    """``ds`` with ``modality`` absent for samples ``idx``, its slot holding ``fill``."""
    x = ds.modalities[modality].clone()
    x[idx] = fill(x[idx])
    present = {k: v.clone() for k, v in ds.present.items()}
    present[modality][idx] = False
    return dataclasses.replace(ds, modalities={**ds.modalities, modality: x}, present=present, _hash=None)


def test_healnet_missing_modality_ignores_slot_content(healnet_cells):
    """Absent protein: zeros, huge values or NaN in its slot give the same prediction; the real
    protein, present, gives a different one."""
    m, ds, split = healnet_cells
    idx = split.test[:60]
    absent = m.predict(_without(ds, "protein", idx, torch.zeros_like), idx).proba
    huge = m.predict(_without(ds, "protein", idx, lambda x: torch.randn_like(x) * 1e6), idx).proba
    nan_pred = m.predict(_without(ds, "protein", idx, lambda x: torch.full_like(x, float("nan"))), idx)
    real = m.predict(ds, idx).proba
    np.testing.assert_allclose(huge, absent, atol=1e-6)
    np.testing.assert_allclose(nan_pred.proba, absent, atol=1e-6)
    assert np.isfinite(absent).all()
    assert nan_pred.output.feature_maps["protein"].eq(0).all()  # no attention to an absent modality, no NaN
    assert (np.abs(real - absent).max(1) > 1e-4).all()


class _NoUpdate(torch.nn.Module):
    """A cross-attention step that leaves the latent array as it is."""

    def forward(self, s, tokens):
        return s, torch.zeros(*s.shape[:2], tokens.shape[1])


def test_healnet_missing_modality_is_skipped_not_zero_filled(healnet_cells):
    """Without protein a sample predicts exactly as a net with no protein step at all would
    (zero tokens would still move the latents: that would be imputation, not skipping)."""
    m, ds, split = healnet_cells
    idx = split.test[:60]
    no_step = copy.deepcopy(m)
    for block in no_step.net.cross:
        block["protein"] = _NoUpdate()
    absent = _without(ds, "protein", idx, torch.zeros_like)
    np.testing.assert_allclose(m.predict(absent, idx).proba, no_step.predict(absent, idx).proba, atol=1e-6)
    assert (np.abs(m.predict(ds, idx).proba - no_step.predict(ds, idx).proba).max(1) > 1e-4).all()


def test_healnet_skips_a_missing_modality_per_sample_not_per_batch(healnet_cells):
    """In one batch, samples with protein predict as if every sample had it, samples without it
    as if none had it: the gate is per sample."""
    m, ds, split = healnet_cells
    idx = split.test[:60]
    lacking = idx[::2]
    mixed = m.predict(_without(ds, "protein", lacking, torch.zeros_like), idx).proba
    none = m.predict(_without(ds, "protein", idx, torch.zeros_like), idx).proba
    full = m.predict(ds, idx).proba
    np.testing.assert_allclose(mixed[::2], none[::2], atol=1e-6)
    np.testing.assert_allclose(mixed[1::2], full[1::2], atol=1e-6)


def test_healnet_errors_are_raised_not_skipped(healnet_cells):
    m, ds, split = healnet_cells
    batch = ds.batch(split.test[:4])
    x = m.prepared(batch)
    x["protein"] = x["protein"][:, :10]  # wrong width: must fail loudly
    with pytest.raises(RuntimeError):
        m.net(x, batch["present"])


def test_healnet_trains_with_real_missing_clinical_photos(data_dir):
    """derm7pt: 9 cases have no clinical photo; HEALNet trains and predicts on all cases, and
    those cases' predictions do not depend on what their empty slot holds."""
    from core.data.tasks import get_task

    td = get_task("derm7pt", image_size=32)
    ds, split = td.dataset, td.splits["official"][0]
    missing = np.flatnonzero(~ds.present["clinic"].numpy())
    assert len(missing) == 9
    m = get_method("healnet", ds.specs, ds.classes, epochs=3, patience=None, image_patch=8)
    m.fit(ds, split, seed=0)
    noisy = ds.modalities["clinic"].clone()
    noisy[missing] = torch.randint(0, 256, noisy[missing].shape, dtype=torch.uint8)
    garbage = dataclasses.replace(ds, modalities={**ds.modalities, "clinic": noisy}, _hash=None)
    idx = np.concatenate([missing, split.test[:30]])
    a, b = m.predict(ds, idx), m.predict(garbage, idx)
    np.testing.assert_allclose(a.proba, b.proba, atol=1e-6)
    assert a.output.feature_maps["clinic"][:9].abs().max() == 0  # no attention to an absent photo
    assert a.output.feature_maps["derm"].shape == (len(idx), 1, 32, 32)


# ------------------------------------------------------------------ MCAT
@pytest.mark.parametrize("mods", [("rna",), ("rna", "protein", "image"), ("rna", "image")])
def test_mcat_needs_exactly_two_omics(demo, mods):
    ds = demo.dataset.select(list(mods))
    with pytest.raises(MMXError, match="exactly two omics"):
        get_method("mcat", ds.specs, ds.classes)


def test_mcat_refuses_modality_dropout_without_a_filling(demo):
    ds = demo.dataset.select(["rna", "protein"])
    with pytest.raises(MMXError, match="cannot skip a dropped modality"):
        get_method("mcat", ds.specs, ds.classes, modality_dropout=0.3)
    get_method("mcat", ds.specs, ds.classes, modality_dropout=0.3, missing="zeros")  # zero filling is explicit


def test_mcat_rejects_three_omics_of_rosmap_and_unknown_guide(rosmap):
    ds = rosmap.dataset
    with pytest.raises(MMXError, match="exactly two omics"):
        get_method("mcat", ds.specs, ds.classes)
    two = ds.select(["mRNA", "methylation"])
    with pytest.raises(MMXError, match="guide 'miRNA'"):
        get_method("mcat", two.specs, two.classes, guide="miRNA")


def test_mcat_refuses_samples_lacking_a_modality(demo):
    ds = demo.dataset.select(["rna", "protein"])
    split = demo.splits["logo"][0]
    m = get_method("mcat", ds.specs, ds.classes, epochs=1)
    m.fit(ds, split, seed=0)
    gappy = _without(ds, "protein", split.test[:3], torch.zeros_like)
    with pytest.raises(MMXError, match="3 samples lack protein"):
        m.predict(gappy, split.test)


def test_mcat_explain_maps_cover_both_omics(demo):
    ds = demo.dataset.select(["rna", "protein"])
    split = demo.splits["logo"][0]
    m = get_method("mcat", ds.specs, ds.classes, epochs=1, guide="protein")
    m.fit(ds, split, seed=0)
    out = m.predict(ds, split.test[:5]).output
    assert out.feature_maps["rna"].shape == (5, 60) and out.feature_maps["protein"].shape == (5, 16)
    # guide pooling weights and co-attention are distributions over tokens
    n_tok = m.net.guide_tokens.n_tokens
    per_token = out.feature_maps["protein"][:, ::m.net.guide_tokens.chunk][:, :n_tok]
    assert torch.allclose(per_token.sum(1), torch.ones(5), atol=1e-5)


# ------------------------------------------------------------------ findings text
def test_findings_name_the_leader_and_whether_lr_leads(make_table):
    rows = {"KNN (early)": 0.80, "LR (early)": 0.95, "HEALNet (intermediate)": 0.90, "MCAT (late)": 0.85,
            "MM static (late)": 0.70, "MM dynamics (late)": 0.75}
    text = strongest(make_table(rows))
    assert text.startswith("LR has the best mean in 6 of 6")
    assert "HEALNet (intermediate)" in text and "**HEALNet (intermediate) below LR (early)**" in text
    text = strongest(make_table({**rows, "MM static (late)": 0.99}))
    assert text.startswith("LR is not the leader by means here: MM static (late) has the best mean in")
    assert "MM static (late) minus LR" in text and "called." in text
    assert "**MM static (late) above LR (early)**" in text
    text = strongest(make_table({**rows, "MM static (late)": 0.955}))
    assert "not called, so LR is not shown to be weaker" in text


def test_derm_findings_compare_the_two_images_and_the_majority_rate(make_table):
    from core.experiments.baselines import derm_findings, derm_rows

    clinic, derm = (r.label for r in derm_rows())
    text = derm_findings(make_table({clinic: 0.30, derm: 0.60}, n_classes=5), ("NEV", 0.55))
    assert f"Dermoscopic against clinical: **{derm} above {clinic}**" in text
    assert f"Mean accuracy of {clinic} is below the 55.0% that always answering NEV scores" in text
    resnet = derm_rows(", ResNet")[1].label
    text = derm_findings(make_table({clinic: 0.30, derm: 0.40, resnet: 0.70}, n_classes=5), ("NEV", 0.55))
    assert f"Encoder, ResNet against the small CNN: **{resnet} above {derm}**" in text
    assert f"Goal for the dermoscopic image: balanced accuracy 62 or more. Best row: {resnet}" in text
    assert text.split("Goal for the dermoscopic image")[1].split("\n")[0].endswith("met.")
    text = derm_findings(make_table({clinic: 0.60, derm: 0.61}, n_classes=5), ("NEV", 0.55))
    assert "**no difference called**" in text and "below the 55.0%" not in text
    assert f"Goal for the clinical photo: balanced accuracy 55 or more. Best row: {clinic}" in text
    goal = text.split("Goal for the dermoscopic image")[1].split("\n")[0]  # ~61: short of 62
    got = float(goal.split(", ")[-1].split(":")[0])
    assert got < 62 and goal.endswith(f"missed by {62 - got:.1f} points.")


def test_early_fusion_search_folds_keep_groups_whole():
    """With enough groups in the training rows the search folds never split a group; with one
    group (a single training donor) they are stratified folds; a class too rare to split turns
    the search off."""
    m = get_method("early_lr", _demo_specs(), ("a", "b"))
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    groups = rng.integers(0, 10, 100).astype(str)
    folds, text = m._folds(y, groups, seed=0)
    assert "groups not split" in text
    for tr, te in folds.split(np.zeros((100, 1)), y, groups):
        assert not set(groups[tr]) & set(groups[te])
    folds, text = m._folds(y, np.full(100, "donor"), seed=0)
    assert "one group" in text and folds.get_n_splits() == 5
    assert m._folds(np.array([0] * 10 + [1]), np.arange(11).astype(str), seed=0) is None


def _demo_specs():
    from core.data.tasks import get_task

    return get_task("demo").dataset.select(["rna"]).specs


def test_early_fusion_search_picks_from_the_grid_and_uses_training_rows_only(demo):
    ds, split = demo.dataset, demo.splits["logo"][0]
    m = get_method("early_knn", ds.specs, ds.classes)
    m.fit(ds, split, seed=0)
    assert m.chosen["n_neighbors"] in m.grid["n_neighbors"] and m.chosen["weights"] in m.grid["weights"]
    assert 0 < m.chosen["cv_f1_weighted"] <= 1 and m.fit_result.best_score == m.chosen["cv_f1_weighted"]
    fixed = get_method("early_knn", ds.specs, ds.classes, search=False)
    fixed.fit(ds, split, seed=0)
    assert fixed.chosen == {}


def test_early_svm_searches_with_a_class_of_six(cells):
    """Trained on donor s1d1, Progenitor has 6 cells: a search fold holds 4, fewer than the 5
    calibration folds of the SVM's probabilities; the calibration takes what the class allows."""
    ds = cells.dataset.select(["rna", "protein"])
    split = next(s for s in cells.splits["leave_one_donor_out"] if s.name.startswith("test=s1d2"))
    assert np.bincount(ds.y[split.train].numpy()).min() == 6
    m = get_method("early_svm", ds.specs, ds.classes)
    m.fit(ds, split, seed=0)
    assert m.smallest_class == 4 and m.chosen["kernel"] in ("linear", "rbf")
    assert _learned_cells(metrics.compute(ds.y[split.test].numpy(), m.predict(ds, split.test).proba))
