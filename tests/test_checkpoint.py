"""Checkpoints round-trip exactly, are verified by hash, and never unpickle."""
from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest

from core.checkpoint import load_checkpoint, save_checkpoint
from core.errors import MMXError
from core.models import get_method


@pytest.fixture(scope="module")
def trained(demo):
    ds = demo.dataset
    m = get_method("late_mlp", ds.specs, ds.classes, epochs=3)
    m.fit(ds, demo.splits["logo"][0], seed=0)
    return m


def test_round_trip_same_predictions(trained, demo, tmp_path):
    folder = save_checkpoint(trained, tmp_path / "ck", task="demo", metrics={"accuracy": 1.0},
                             data_hash=demo.dataset.data_hash())
    card = json.loads((folder / "card.json").read_text())
    assert card["method"] == "late_mlp" and card["classes"] == list(demo.dataset.classes)
    assert card["modalities"][0]["feature_names"][:2] == ["GENE0", "GENE1"]
    loaded = load_checkpoint(folder)
    a = trained.predict(demo.dataset, np.arange(30)).proba
    b = loaded.predict(demo.dataset, np.arange(30)).proba
    assert np.allclose(a, b, atol=1e-6)


def _rewrite_card(folder, **changes) -> None:
    card = json.loads((folder / "card.json").read_text())
    card.update(changes)
    (folder / "card.json").write_text(json.dumps(card))


def test_tampered_weights_rejected(trained, tmp_path):
    folder = save_checkpoint(trained, tmp_path / "ck")
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(MMXError, match="model.safetensors: sha256 does not match the card"):
        load_checkpoint(folder)


def test_bad_cards_rejected(trained, tmp_path):
    folder = save_checkpoint(trained, tmp_path / "ck")
    (folder / "card.json").write_text("{not json")
    with pytest.raises(MMXError, match="card is not valid JSON"):
        load_checkpoint(folder)
    with pytest.raises(MMXError, match="checkpoint card not found"):
        load_checkpoint(tmp_path / "nowhere")


def test_card_pointing_to_a_missing_file_is_refused(trained, tmp_path):
    folder = save_checkpoint(trained, tmp_path / "ck")
    (folder / "model.safetensors").unlink()
    with pytest.raises(MMXError, match="model.safetensors: file listed in the card not found"):
        load_checkpoint(folder)


@pytest.mark.parametrize("name", ["../model.safetensors", "model.pkl", ".hidden.skops", "sub/model.safetensors"])
def test_card_listing_other_files_is_refused(trained, tmp_path, name):
    """Only the weights and skops files in the folder itself are ever read."""
    folder = save_checkpoint(trained, tmp_path / "ck")
    card = json.loads((folder / "card.json").read_text())
    _rewrite_card(folder, files={**card["files"], name: "0" * 64})
    with pytest.raises(MMXError, match="card lists a file"):
        load_checkpoint(folder)


def _pickle_as(folder, name: str) -> None:
    """Replace ``name`` with a pickle and give the card its true hash (a forger's checkpoint)."""
    payload = pickle.dumps({"x": 1})
    (folder / name).write_bytes(payload)
    card = json.loads((folder / "card.json").read_text())
    _rewrite_card(folder, files={**card["files"], name: hashlib.sha256(payload).hexdigest()})


def test_pickle_renamed_to_safetensors_is_not_loaded(trained, tmp_path):
    folder = save_checkpoint(trained, tmp_path / "ck")
    _pickle_as(folder, "model.safetensors")
    with pytest.raises(MMXError, match="not a readable safetensors file"):
        load_checkpoint(folder)


@pytest.fixture(scope="module")
def forest(demo):
    ds = demo.dataset
    m = get_method("early_rf", ds.specs, ds.classes, n_estimators=5, image_grid=2)
    m.fit(ds, demo.splits["logo"][0], seed=0)
    return m


def test_pickle_renamed_to_skops_is_not_loaded(forest, tmp_path):
    folder = save_checkpoint(forest, tmp_path / "ck")
    assert load_checkpoint(folder).is_fitted
    _pickle_as(folder, "estimator.skops")
    with pytest.raises(MMXError, match="estimator.skops is not a readable skops file"):
        load_checkpoint(folder)


def test_skops_file_with_an_untrusted_type_is_refused(forest, tmp_path):
    """A skops file may only hold the listed scikit-learn types: one holding anything else (here
    a FunctionTransformer of ``os.system``) is refused unread."""
    import os

    import skops.io as sio
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    folder = save_checkpoint(forest, tmp_path / "ck")
    payload = sio.dumps(make_pipeline(FunctionTransformer(os.system), forest.model[-1]))
    (folder / "estimator.skops").write_bytes(payload)
    card = json.loads((folder / "card.json").read_text())
    _rewrite_card(folder, files={**card["files"], "estimator.skops": hashlib.sha256(payload).hexdigest()})
    with pytest.raises(MMXError, match="types outside the trusted list"):
        load_checkpoint(folder)


def test_card_for_another_method_is_refused(trained, forest, tmp_path):
    """The late-fusion files under a card that says early_rf are refused before any is read."""
    folder = save_checkpoint(trained, tmp_path / "ck")
    _rewrite_card(folder, method="early_rf", config={})
    with pytest.raises(MMXError, match="does not fit method 'early_rf'"):
        load_checkpoint(folder)
