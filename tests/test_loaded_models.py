"""Loaded models are whole: a model loaded from a checkpoint answers every call the freshly
fitted one does, with the same outputs (predictions with every explain tensor, test-time masks,
the informativeness explanations, and for guidance every head, the comparisons, the latent map
and retarget), and it counts as fitted (``is_fitted``, ``fit_result`` from the card).

Every registered method is covered through ``list_methods()``: each one is fitted on the
synthetic demo task (tiny settings), saved, loaded and compared.
"""
from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from core.checkpoint import load_checkpoint, read_card, save_checkpoint
from core.data.dataset import Target
from core.errors import MMXError
from core.explain.guidance import class_deltas, latent_map, sample_comparison
from core.explain.informativeness import explain
from core.models import get_method, list_methods
from core.models.guidance import INFERENCE_HEADS, REFERENCE_HEADS
from core.train.loop import TrainConfig

TIGHT = dict(rtol=1e-6, atol=1e-7)
TINY = TrainConfig(epochs=2, batch_size=32, patience=None)

# small working settings per method: (modalities, overrides). A method registered later with
# no entry here fails test_every_method_has_a_small_config: add one.
SETTINGS = {
    "late_mlp": (("rna", "protein", "image"), dict(train=TINY, latent=16)),
    "mm_dynamics": (("rna", "protein", "image"), dict(train=TINY, latent={"rna": 16, "protein": 8}, image_latent=16,
                                                      gate_width=4)),
    "mm_static": (("rna", "protein", "image"), dict(train=TINY, latent={"rna": 16, "protein": 8}, image_latent=16,
                                                    modality_weights={"rna": 0.5})),
    "healnet": (("rna", "protein", "image"), dict(train=TINY, n_latents=4, latent_dim=16, token_dim=16,
                                                  latent_heads=2)),
    "mcat": (("rna", "protein"), dict(train=TINY, dim=16, heads=2, layers=1, n_groups=3)),
    "cnn": (("image",), dict(train=TINY, latent=16)),
    "hypermm": (("rna", "protein", "image"), dict(backbone="small_cnn", width=16, head_hidden=16, rho_hidden=16,
                                                  train=TINY, rho_train=TINY)),
    "guidance": (("rna", "protein"), dict(inferior="rna", superior=("protein",), tasks=("parity",), latent=16,
                                          guide_hidden=16, bottleneck=8, decoder_hidden=16, train=TINY,
                                          guide_train=dataclasses.replace(TINY, monitor="loss", class_weighted=False),
                                          decoder_train=TINY)),
    "unimodal": (("protein",), dict(modality="protein", base="late_mlp", base_config={"train": TINY, "latent": 16})),
    "early_lr": (("rna", "protein", "image"), dict(image_grid=2)),
    "early_knn": (("rna", "protein", "image"), dict(image_grid=2)),
    "early_mlp": (("rna", "protein", "image"), dict(image_grid=2, hidden=(8,), max_iter=20)),
    "early_rf": (("rna", "protein", "image"), dict(image_grid=2, n_estimators=10)),
    "early_svm": (("rna", "protein", "image"), dict(image_grid=2, calibration_folds=3)),
}

METHODS = [e.name for e in list_methods()]


@pytest.fixture(scope="module")
def data(demo):
    """The demo data with an extra label column (so guidance can be fitted with a task and retargeted)."""
    ds = demo.dataset
    parity = Target(ds.y % 2, ("even", "odd"))
    return dataclasses.replace(ds, targets={**ds.targets, "parity": parity}, _hash=None)


@pytest.fixture(scope="module")
def split(demo):
    return demo.splits["logo"][0]


def _build(name: str, ds):
    mods, overrides = SETTINGS[name]
    return get_method(name, {m: ds.specs[m] for m in mods}, ds.classes, **overrides)


def _fit(name: str, ds, split):
    m = _build(name, ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. scikit-learn's convergence warning after 20 iterations
        m.fit(ds, split, seed=0)
    return m


@pytest.fixture(scope="module")
def checkpoints(data, split, tmp_path_factory, one_thread):
    """``get(name) -> (fitted, loaded, folder)``, each method fitted and saved once per module."""
    cache = {}

    def get(name: str):
        if name not in cache:
            fitted = _fit(name, data, split)
            folder = save_checkpoint(fitted, tmp_path_factory.mktemp(name), task="demo")
            cache[name] = (fitted, load_checkpoint(folder), folder)
        return cache[name]

    return get


@pytest.fixture(scope="module", params=METHODS)
def pair(request, checkpoints):
    """(fitted, loaded) for one checkpointable method."""
    return checkpoints(request.param)[:2]


# ------------------------------------------------------------------ helpers
def same_output(a, b) -> None:
    np.testing.assert_allclose(a.logits.numpy(), b.logits.numpy(), **TIGHT)
    for field in ("modality_logits", "feature_maps", "modality_weights", "latents"):
        da, db = getattr(a, field), getattr(b, field)
        assert da.keys() == db.keys(), field
        for k in da:
            np.testing.assert_allclose(da[k].numpy(), db[k].numpy(), **TIGHT, err_msg=f"{field}[{k}]")


def same_prediction(a, b) -> None:
    np.testing.assert_allclose(a.proba, b.proba, **TIGHT)
    np.testing.assert_array_equal(a.label, b.label)
    same_output(a.output, b.output)


def same_explanation(a, b) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.classes == b.classes and a.feature_names == b.feature_names
    assert a.patch_size == b.patch_size and a.image_hw == b.image_hw
    np.testing.assert_allclose(a.proba, b.proba, **TIGHT)
    for field in ("feature_scores", "patch_maps", "modality_weights", "modality_proba"):
        da, db = getattr(a, field), getattr(b, field)
        assert da.keys() == db.keys(), field
        for k in da:
            np.testing.assert_allclose(da[k], db[k], **TIGHT, err_msg=f"{field}[{k}]")
    for m in a.feature_scores:
        for sample in (0, None):
            pd.testing.assert_frame_equal(a.top_features(m, k=5, sample=sample), b.top_features(m, k=5, sample=sample),
                                          rtol=1e-6, atol=1e-7)
    for m in a.patch_maps:
        np.testing.assert_allclose(a.pixel_map(m, 0), b.pixel_map(m, 0), **TIGHT)


def masks_for(method) -> list[dict]:
    """Test-time masks that apply: the inferior modality only for guidance; gray, blur and (with a
    patch map) top-k for an image, zeros and the training mean for omics."""
    specs = {method.inferior: method.specs[method.inferior]} if method.name == "guidance" else method.specs
    out = []
    for m, s in specs.items():
        if s.kind == "image":
            out += [{m: "gray"}, {m: "blur"}, {m: "patches:0,5"}]
            if hasattr(method.config, "patch_size"):
                out.append({m: "topk:4"})
        else:
            out += [{m: "zeros"}, {m: "mean"}]
    return out


# ------------------------------------------------------------------ every method
def test_every_method_has_a_small_config():
    assert set(METHODS) <= set(SETTINGS), f"add small settings for {sorted(set(METHODS) - set(SETTINGS))}"


def test_scikit_learn_models_are_stored_without_pickle(checkpoints):
    """A linear model is arrays in the safetensors file; the others a skops file whose types
    are all on the trusted list; a unimodal model keeps its inner method's files, prefixed."""
    from core.models.early_fusion import SKOPS_FILE

    for name in METHODS:
        card = read_card(checkpoints(name)[2])
        expect = {"model.safetensors"} | ({SKOPS_FILE} if name.startswith("early_") and name != "early_lr" else set())
        assert set(card["files"]) == expect, name


def test_loaded_model_is_fitted(pair):
    fitted, loaded = pair
    assert fitted.is_fitted and loaded.is_fitted
    a, b = fitted.fit_result, loaded.fit_result
    assert (b.best_epoch, b.epochs_run) == (a.best_epoch, a.epochs_run)
    assert b.best_score == pytest.approx(a.best_score, nan_ok=True)
    assert b.seconds == pytest.approx(a.seconds, abs=0.01) and b.history == []
    card = loaded.card
    assert card["best_epoch"] == a.best_epoch and card["epochs_run"] == a.epochs_run
    assert isinstance(card["method_state"], dict)


def test_predictions_and_explain_outputs_are_equal(pair, data, split):
    fitted, loaded = pair
    idx = split.test[:40]
    same_prediction(fitted.predict(data, idx), loaded.predict(data, idx))
    same_prediction(fitted.predict(data), loaded.predict(data))  # every sample, default idx


def test_masked_predictions_are_equal(pair, data, split):
    fitted, loaded = pair
    idx = split.test[:24]
    masks = masks_for(fitted)
    assert masks
    for mask in masks:
        same_prediction(fitted.predict(data, idx, mask=mask), loaded.predict(data, idx, mask=mask))


def test_informativeness_is_equal(pair, data, split):
    fitted, loaded = pair
    idx = split.test[:24]
    same_explanation(explain(fitted, data, idx), explain(loaded, data, idx))
    mask = masks_for(fitted)[0]
    same_explanation(explain(fitted, data, idx, mask=mask), explain(loaded, data, idx, mask=mask))


# ------------------------------------------------------------------ guidance
@pytest.fixture(scope="module")
def guidance_pair(checkpoints):
    return checkpoints("guidance")


def test_guidance_heads_and_stages(guidance_pair, data, split):
    fitted, loaded, _ = guidance_pair
    idx = split.test
    for head in INFERENCE_HEADS:
        same_prediction(fitted.predict(data, idx, head=head), loaded.predict(data, idx, head=head))
    for head in REFERENCE_HEADS:
        same_prediction(fitted.reference_predict(data, idx, head=head), loaded.reference_predict(data, idx, head=head))
    assert loaded.stages.keys() == fitted.stages.keys() == {"C_I", "C_S", "G", "D_c", "S+I"}
    for k, r in fitted.stages.items():
        assert loaded.stages[k].summary() == r.summary() and loaded.stages[k].history == []
    assert loaded.task_heads["C_I"].keys() == {"parity"}


@pytest.mark.filterwarnings("ignore:n_jobs value")  # UMAP: a seed means one thread
def test_guidance_comparisons_work_on_a_loaded_model(guidance_pair, data, split):
    """The comparisons refused a loaded model before (it had no fit_result)."""
    fitted, loaded, _ = guidance_pair
    k = int(split.test[3])
    pd.testing.assert_frame_equal(sample_comparison(fitted, data, k), sample_comparison(loaded, data, k),
                                  rtol=1e-6, atol=1e-7)
    pd.testing.assert_frame_equal(class_deltas(fitted, data, split.test), class_deltas(loaded, data, split.test),
                                  rtol=1e-6, atol=1e-7)
    idx = split.test[:20]
    a, b = latent_map(fitted, data, idx, seed=0, n_neighbors=5), latent_map(loaded, data, idx, seed=0, n_neighbors=5)
    pd.testing.assert_frame_equal(a.drop(columns=["x", "y"]), b.drop(columns=["x", "y"]), rtol=1e-6, atol=1e-7)
    assert np.isfinite(b[["x", "y"]].to_numpy()).all()
    np.testing.assert_allclose(a[["x", "y"]].to_numpy(), b[["x", "y"]].to_numpy(), **TIGHT)  # seeded UMAP


def test_guidance_retarget_works_on_a_loaded_model(guidance_pair, data, split, tmp_path):
    """retarget needs the frozen latents of the fit: a loaded model computes them again from the
    card's split and the data, and trains the same decoders."""
    fitted, _, folder = guidance_pair
    loaded = load_checkpoint(folder)  # its own copy: retarget caches the latents it rebuilds
    a, b = fitted.retarget("parity", data), loaded.retarget("parity", data)
    assert b.classes == ("even", "odd") and b.is_fitted
    target = data.with_target("parity")
    for head in INFERENCE_HEADS:
        same_prediction(a.predict(target, split.test, head=head), b.predict(target, split.test, head=head))
    assert b.stages.keys() == a.stages.keys()
    # a retargeted model (its heads shared with the task heads) saves and loads whole too
    again = load_checkpoint(save_checkpoint(a, tmp_path / "parity"))
    for head in INFERENCE_HEADS:
        same_prediction(a.predict(target, split.test, head=head), again.predict(target, split.test, head=head))
    pd.testing.assert_frame_equal(class_deltas(a, target, split.test), class_deltas(again, target, split.test))


def test_loaded_guidance_retarget_checks_its_data(guidance_pair, data):
    _, _, folder = guidance_pair
    loaded = load_checkpoint(folder)
    other = dataclasses.replace(data, modalities={**data.modalities, "rna": data.modalities["rna"] + 1.0}, _hash=None)
    with pytest.raises(MMXError, match="training rows of data 'demo' differ"):
        loaded.retarget("parity", other)
    with pytest.raises(MMXError, match="retarget to 'nope' needs"):
        loaded.retarget("nope", data)


# ------------------------------------------------------------------ cards
def test_unfitted_model_is_not_saved(data, tmp_path):
    m = _build("late_mlp", data)
    assert not m.is_fitted
    with pytest.raises(MMXError, match="not fitted"):
        save_checkpoint(m, tmp_path / "ck")
    with pytest.raises(MMXError, match="not fitted"):
        explain(m, data, np.arange(4))


def test_card_without_the_new_fields_still_loads(checkpoints, data, split, tmp_path):
    """A card written before fit numbers and method state were kept loads as fitted (numbers unknown)."""
    fitted = checkpoints("late_mlp")[0]
    folder = save_checkpoint(fitted, tmp_path / "old")
    card = read_card(folder)
    for key in ("best_score", "epochs_run", "method_state"):
        del card[key]
    (folder / "card.json").write_text(json.dumps(card))
    loaded = load_checkpoint(folder)
    assert loaded.is_fitted and loaded.fit_result.best_epoch == fitted.fit_result.best_epoch
    assert np.isnan(loaded.fit_result.best_score) and loaded.fit_result.epochs_run == 0
    same_prediction(fitted.predict(data, split.test), loaded.predict(data, split.test))


def test_card_state_is_restored_before_the_weights(guidance_pair, tmp_path):
    """The task heads' shapes come from the card: without them the weights do not fit."""
    _, _, folder = guidance_pair
    card = read_card(folder)
    card["method_state"]["task_heads"] = {}
    (tmp_path / "card.json").write_text(json.dumps(card))
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(MMXError, match="weights do not fit"):
        load_checkpoint(tmp_path)
    assert load_checkpoint(folder).task_heads["C_S"]["parity"].out_features == 2
