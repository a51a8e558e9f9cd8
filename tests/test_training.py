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


def _snapshots():
    """A training callback that keeps a real copy of the net after every epoch, and the snapshots."""
    snaps = {}

    def callback(method):
        def cb(epoch, total, record):  # the method builds a fresh net in fit, so look it up each time
            snaps[epoch] = {k: v.detach().clone() for k, v in method.net.state_dict().items()}
        return cb

    return snaps, callback


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_best_epoch_weights_are_restored_not_the_last(demo, monkeypatch):
    """Validation scores are scripted (best at epoch 2 of 4), so the restore is exercised for sure:
    the returned net equals its snapshot after epoch 2 and differs from the last epoch's. Deleting
    the restore, or keeping ``net.state_dict()`` by reference instead of a copy, fails this."""
    scores = iter([0.5, 0.9, 0.6, 0.4])
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: {"loss": 1.0, "balanced_accuracy": next(scores)})
    ds, split = demo.dataset, demo.splits["logo"][0]
    m = get_method("late_mlp", ds.specs, ds.classes, epochs=4, patience=None)
    snaps, callback = _snapshots()
    m.fit(ds, split, seed=0, callback=callback(m))
    assert m.fit_result.best_epoch == 2 and m.fit_result.epochs_run == 4
    final = m.net.state_dict()
    assert not _same(snaps[2], snaps[4])  # training moved the weights after the best epoch
    assert _same(final, snaps[2]) and not _same(final, snaps[4])


def test_restored_net_scores_what_its_best_epoch_scored(demo):
    """Real validation: after epoch 3 the weights are wrecked in place each epoch (as a diverging
    run would), so the best epoch is early. The returned net must score exactly the best epoch's
    validation loss; in-place wrecking also spoils a best state held by reference."""
    ds, split = demo.dataset, demo.splits["logo"][0]
    m = get_method("late_mlp", ds.specs, ds.classes, epochs=6, patience=None, monitor="loss")

    def wreck(epoch, total, record):
        if epoch >= 3:
            with torch.no_grad():
                for p in m.net.parameters():
                    p.mul_(-40.0).add_(3.0)

    m.fit(ds, split, seed=0, callback=wreck)
    hist = {h["epoch"]: h for h in m.fit_result.history}
    best = m.fit_result.best_epoch
    assert best <= 3 < m.fit_result.epochs_run and hist[6]["loss"] > 10 * hist[best]["loss"]
    val = loop.evaluate(m.net, m.forward, ds, split.val, m.device, loop.class_weights(ds.y[split.train], 4), 64)
    assert val["loss"] == hist[best]["loss"] and val["balanced_accuracy"] == hist[best]["balanced_accuracy"]
    val_proba = m.predict(ds, split.val).proba
    assert metrics.compute(ds.y[split.val].numpy(), val_proba)["balanced_accuracy"] == hist[best]["balanced_accuracy"]


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


def test_training_batches_never_hold_a_single_row():
    """A last training chunk of one row joins the one before (batch norm cannot train on it);
    evaluation chunks and other remainders are left as they are, and every row comes once."""
    gen = torch.Generator().manual_seed(0)
    chunks = [c.tolist() for c in loop.iterate(np.arange(65), 32, gen)]
    assert [len(c) for c in chunks] == [32, 33] and sorted(sum(chunks, [])) == list(range(65))
    assert [len(c) for c in loop.iterate(np.arange(66), 32, gen)] == [32, 32, 2]
    assert [len(c) for c in loop.iterate(np.arange(65), 32)] == [32, 32, 1]
    assert [len(c) for c in loop.iterate(np.arange(1), 32, gen)] == [1]


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

    for task, method, extra in (("cells", "early_lr", ["--modalities", "rna,protein", "--seeds", "0"]),
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


def _mm_dynamics_fit(demo, resident: bool, plain_dropout: bool, monkeypatch) -> tuple[list[float], dict]:
    from core.models import mmdynamics

    ds, split = demo.dataset, demo.splits["logo"][0]
    with monkeypatch.context() as mp:
        if plain_dropout:
            mp.setattr(mmdynamics, "_same_mask_dropouts", lambda net: net)
        m = get_method("mm_dynamics", ds.specs, ds.classes, epochs=3, batch_size=16, patience=None)
        m.resident_inputs = resident
        m.fit(ds, split, seed=0)
    return [h["train_loss"] for h in m.fit_result.history], m.net.state_dict()


def test_resident_inputs_and_same_mask_dropout_train_exactly_as_before(demo, monkeypatch):
    """The fast paths of a fit (prepared rows kept on the device, the faster dropout mask draw)
    give bit-identical losses and weights to the per-step path with torch's dropout, on
    mini-batches with shuffling and an image modality (the demo task)."""
    base_losses, base_state = _mm_dynamics_fit(demo, resident=False, plain_dropout=True, monkeypatch=monkeypatch)
    for resident, plain in ((True, True), (False, False), (True, False)):
        losses, state = _mm_dynamics_fit(demo, resident, plain, monkeypatch)
        assert losses == base_losses, (resident, plain)
        assert _same(state, base_state), (resident, plain)


def test_resident_rows_are_used_and_marked_prepared(demo, monkeypatch):
    """A method that opts in trains on prepared device rows (validation still prepares its own);
    modality dropout keeps the per-step path."""
    ds, split = demo.dataset, demo.splits["logo"][0]
    seen = []
    for dropout in (0.0, 0.3):
        m = get_method("mm_dynamics", ds.specs, ds.classes, epochs=1, batch_size=32, patience=None,
                       modality_dropout=dropout)
        forward = m.forward
        monkeypatch.setattr(m, "forward", lambda b, train=False, masks=None, d=dropout, f=forward: (
            train and seen.append((d, bool(b.get("prepared"))))) or f(b, train, masks))
        m.fit(ds, split, seed=0)
    assert {p for d, p in seen if d == 0.0} == {True} and {p for d, p in seen if d > 0} == {False}


def test_same_mask_dropout_is_torch_dropout():
    from core.models.mmdynamics import SameMaskDropout

    x = torch.randn(37, 53, requires_grad=True)
    for p in (0.5, 0.3):
        torch.manual_seed(1)
        a = torch.nn.functional.dropout(x, p, training=True)
        ga, = torch.autograd.grad(a.sum(), x)
        torch.manual_seed(1)
        b = SameMaskDropout(p).train()(x)
        gb, = torch.autograd.grad(b.sum(), x)
        assert torch.equal(a, b) and torch.equal(ga, gb)
    assert torch.equal(SameMaskDropout(0.5).eval()(x), x)
