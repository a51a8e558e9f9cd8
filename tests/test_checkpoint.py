"""Checkpoints round-trip exactly, are verified by hash, and never unpickle."""
from __future__ import annotations

import json

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


def test_tampered_weights_rejected(trained, tmp_path):
    folder = save_checkpoint(trained, tmp_path / "ck")
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(MMXError, match="sha256 of the weights does not match"):
        load_checkpoint(folder)


def test_bad_cards_rejected(trained, tmp_path):
    folder = save_checkpoint(trained, tmp_path / "ck")
    (folder / "card.json").write_text("{not json")
    with pytest.raises(MMXError, match="card is not valid JSON"):
        load_checkpoint(folder)
    with pytest.raises(MMXError, match="checkpoint card not found"):
        load_checkpoint(tmp_path / "nowhere")


def test_pickle_file_is_not_loaded(trained, tmp_path):
    import pickle

    folder = save_checkpoint(trained, tmp_path / "ck")
    payload = pickle.dumps({"x": 1})
    (folder / "model.safetensors").write_bytes(payload)
    card = json.loads((folder / "card.json").read_text())
    import hashlib

    card["sha256"] = hashlib.sha256(payload).hexdigest()
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(MMXError, match="not a readable safetensors file"):
        load_checkpoint(folder)


def test_sklearn_method_cannot_be_saved(demo, tmp_path):
    ds = demo.dataset
    m = get_method("early_lr", ds.specs, ds.classes)
    with pytest.raises(MMXError, match="no tensor weights"):
        save_checkpoint(m, tmp_path / "x")
