"""The shared training loop and the skeleton methods, on the synthetic and the real data."""
from __future__ import annotations

import json

import numpy as np
import torch

from core import metrics
from core.models import get_method, list_methods
from core.train import loop


def _fit(method, task, seed=0, **cfg):
    ds = task.dataset
    m = get_method(method, ds.specs, ds.classes, **cfg)
    m.fit(ds, task.splits[task.default_split][0], seed=seed)
    return m


def test_registry_lists_skeleton_methods():
    names = {m.name for m in list_methods()}
    assert {"early_lr", "late_mlp"} <= names


def test_best_weights_are_a_copy_and_restored(demo, monkeypatch):
    saved = {}
    real_fit = loop.fit

    def spy(net, *a, **k):
        res = real_fit(net, *a, **k)
        saved["state"] = {k_: v.clone() for k_, v in net.state_dict().items()}
        return res

    monkeypatch.setattr(loop, "fit", spy)
    m = _fit("late_mlp", demo, epochs=6, patience=None)
    # the net holds the best weights; mutating it now must not change the saved snapshot
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(1.0)
    assert any(not torch.equal(saved["state"][k], v) for k, v in m.net.state_dict().items())
    hist = m.fit_result.history
    best = max(hist, key=lambda h: (h["balanced_accuracy"], -h["loss"]))
    assert m.fit_result.best_epoch == best["epoch"]


def test_best_epoch_state_is_not_the_last(demo):
    """With a huge learning rate late epochs get worse; the returned net must be the best one."""
    ds = demo.dataset
    split = demo.splits["logo"][0]
    m = get_method("late_mlp", ds.specs, ds.classes, epochs=8, patience=None, lr=1e-3)
    m.fit(ds, split, seed=0)
    val = metrics.compute(ds.y[split.val].numpy(), m.predict(ds, split.val).proba)
    assert val["balanced_accuracy"] == max(h["balanced_accuracy"] for h in m.fit_result.history)


def test_same_seed_same_metrics(demo):
    split = demo.splits["logo"][0]
    p1 = _fit("late_mlp", demo, seed=3, epochs=4).predict(demo.dataset, split.test).proba
    p2 = _fit("late_mlp", demo, seed=3, epochs=4).predict(demo.dataset, split.test).proba
    p3 = _fit("late_mlp", demo, seed=4, epochs=4).predict(demo.dataset, split.test).proba
    assert np.array_equal(p1, p2) and not np.array_equal(p1, p3)


def test_no_augmentation_at_evaluation(demo):
    m = _fit("late_mlp", demo, epochs=2, augment=True)
    a = m.predict(demo.dataset, np.arange(20)).proba
    b = m.predict(demo.dataset, np.arange(20)).proba
    assert np.array_equal(a, b)


def test_class_weights_inverse_frequency():
    w = loop.class_weights(torch.tensor([0, 0, 0, 1]), 3)
    assert torch.allclose(w, torch.tensor([4 / 9, 4 / 3, 1.0]))


def test_skeleton_methods_learn_real_cells(cells):
    ds = cells.dataset.select(["rna", "protein"])
    split = cells.splits["leave_one_donor_out"][0]
    for name, cfg in (("early_lr", {}), ("late_mlp", {"epochs": 30})):
        m = get_method(name, ds.specs, ds.classes, **cfg)
        m.fit(ds, split, seed=0)
        acc = metrics.compute(ds.y[split.test].numpy(), m.predict(ds, split.test).proba)["accuracy"]
        assert acc > 0.8, (name, acc)


def test_train_cli_writes_tables(tmp_path, data_dir):
    import train

    for task, method, extra in (("cells", "early_lr", ["--modalities", "rna,protein"]),
                                ("rosmap", "late_mlp", ["--epochs", "5", "--seeds", "0"])):
        assert train.main(["--task", task, "--method", method, "--out", str(tmp_path), *extra]) == 0
        js = list((tmp_path / task).glob("*.json"))
        md = list((tmp_path / task).glob("*.md"))
        assert len(js) == 1 and len(md) == 1
        payload = json.loads(js[0].read_text())
        assert payload["rows"][0]["runs"] and payload["data_hash"] and "python" in payload["command"]
        assert "| Method |" in md[0].read_text()


def test_train_cli_reports_bad_input(capsys):
    import train

    assert train.main(["--task", "nope", "--method", "early_lr"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
