"""The CUDA path: every method trains, predicts, explains and round-trips its checkpoint on a GPU.

Skipped where torch sees no GPU (CI has none); run on a GPU machine with
``python -m pytest -q tests/test_cuda.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.train_speed import build
from core.checkpoint import load_checkpoint, save_checkpoint
from core.errors import MMXError
from core.explain.attributions import attribute
from core.explain.informativeness import explain
from core.models import list_methods

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.parametrize("name", [m.name for m in list_methods()])
def test_method_trains_predicts_and_explains_on_cuda(name, demo, tmp_path):
    method, data = build(name, demo.dataset, epochs=2)
    split = demo.splits[demo.default_split][0]
    method.fit(data, split, seed=0, device="cuda")
    test = np.asarray(split.test)[:40]
    pred = method.predict(data, test)
    assert np.isfinite(pred.proba).all() and np.allclose(pred.proba.sum(1), 1, atol=1e-4)
    info = explain(method, data, test[:8])
    assert np.allclose(info.proba, pred.proba[:8], atol=1e-5)
    try:
        attr = attribute(method, data, test[:4], n_steps=4)
    except MMXError as e:  # a scikit-learn baseline has no gradients to attribute
        assert "not a torch network" in str(e)
    else:
        assert all(np.isfinite(v).all() for v in attr.feature_scores.values())
    folder = save_checkpoint(method, tmp_path / "ck", task="demo", metrics={}, data_hash=data.data_hash())
    on_cpu = load_checkpoint(folder, "cpu").predict(data, test).proba
    assert np.abs(on_cpu - pred.proba).max() < 0.05  # bf16 autocast on CUDA, float32 on the CPU
