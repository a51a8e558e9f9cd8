"""MM dynamics family (mm_dynamics, mm_static, cnn): gates, patch maps, FI/MI switches, loss
weights, masking, best-weight copies, evaluation without augmentation, determinism, learning,
explain outputs, absent modalities. Real data (small subsets) except for pure unit checks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from core import metrics
from core.data.splits import Split
from core.errors import MMXError
from core.explain.informativeness import explain
from core.models import get_method
from core.models.masking import MaskSpec, apply_mask, parse_mask, top_patches
from core.models.unet_gate import PatchGate
from core.train import loop

FAST = dict(batch_size=16, lr=1e-3, lr_step=None, patience=None)
PRI = ["protein", "rna", "image"]


def small_split(n: int, seed: int = 0, n_train: int = 48, n_val: int = 16, n_test: int = 32) -> Split:
    idx = np.random.default_rng(seed).permutation(n)
    return Split("small", idx[:n_train], idx[n_train:n_train + n_val], idx[n_train + n_val:n_train + n_val + n_test])


def fit(task_or_ds, name, mods=None, split=None, seed=0, **cfg):
    ds = getattr(task_or_ds, "dataset", task_or_ds)
    ds = ds.select(mods) if mods else ds
    m = get_method(name, ds.specs, ds.classes, **cfg)
    m.fit(ds, split or small_split(len(ds)), seed=seed)
    return m, ds


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fitted(cells):
    """MM dynamics on protein + RNA + image, a few epochs on a small real subset."""
    split = small_split(len(cells.dataset))
    m, ds = fit(cells, "mm_dynamics", PRI, split, epochs=3, **FAST)
    return m, ds, split


# ------------------------------------------------------------------ gates and patch maps
def test_gates_lie_strictly_between_0_and_1(fitted):
    m, ds, split = fitted
    maps = m.predict(ds, split.test).output.feature_maps
    assert set(maps) == set(PRI)
    for name, g in maps.items():
        assert float(g.min()) > 0.0 and float(g.max()) < 1.0, name
        assert float(g.std()) > 0.0, name  # not a constant gate


@pytest.mark.parametrize("patch,size,grid", [(4, 64, 16), (5, 64, 13), (8, 30, 4), (1, 12, 12)])
def test_patch_map_constant_within_patches_and_grid_size(patch, size, grid):
    torch.manual_seed(0)
    gate = PatchGate(3, patch)
    x = torch.rand(2, 3, size, size)
    g = gate.grid(x)
    full = gate(x)
    assert g.shape == (2, 1, grid, grid) and full.shape == (2, 1, size, size)
    for r in range(grid):
        for c in range(grid):
            cell = full[:, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch]
            assert torch.equal(cell, g[:, :, r:r + 1, c:c + 1].expand_as(cell))
    assert len(torch.unique(g)) > 1  # the map varies across patches


def test_patch_size_reaches_the_method_and_explain_api(cells):
    split = small_split(len(cells.dataset), n_train=24, n_val=8, n_test=8)
    m, ds = fit(cells, "mm_dynamics", ["image"], split, epochs=1, patch_size=8, **FAST)
    info = explain(m, ds, split.test)
    assert info.patch_maps["image"].shape == (8, 8, 8) and info.patch_size["image"] == 8
    full = m.predict(ds, split.test).output.feature_maps["image"][:, 0].numpy()
    np.testing.assert_array_equal(info.pixel_map("image", 3), full[3])


# ------------------------------------------------------------------ switches and loss
@pytest.mark.parametrize("fi,mi", [(False, False), (True, False), (False, True), (True, True)])
def test_fi_mi_switches_remove_exactly_their_terms_and_weights_apply_once(demo, fi, mi):
    ds = demo.dataset
    w = dict(w_fused=2.0, w_sparsity=0.5, w_sparsity_image=0.1, w_confidence=3.0, w_modality=0.25)
    m = get_method("mm_dynamics", ds.specs, ds.classes, feature_informativeness=fi, modality_informativeness=mi, **w)
    m.prep.fit(ds.modalities, ds.present, torch.arange(len(ds)))
    batch = ds.batch(np.arange(40))
    torch.manual_seed(0)
    m.net.train()
    out = m.forward(batch, train=True)
    total, terms = m.net.loss(out, batch["y"], loop.class_weights(batch["y"], ds.n_classes))
    mods = list(ds.specs)
    want = {"ce"} | ({f"sparsity/{k}" for k in mods} if fi else set()) | \
        ({f"{t}/{k}" for k in mods for t in ("confidence", "modality_ce")} if mi else set())
    assert set(terms) == want
    assert bool(out.feature_maps) == fi and (m.net.gates is not None) == fi
    assert bool(out.modality_weights) == mi and bool(out.modality_logits) == mi
    per_term = {"sparsity/image": w["w_sparsity_image"], "sparsity": w["w_sparsity"], "confidence": w["w_confidence"],
                "modality_ce": w["w_modality"]}
    expect = w["w_fused"] * terms["ce"] + sum(per_term.get(k, per_term[k.split("/")[0]]) * v
                                              for k, v in terms.items() if k != "ce")
    assert float(total.detach()) == pytest.approx(expect, rel=1e-5)  # each weight applied once, never compounded


def test_confidence_scales_the_latent(demo):
    ds = demo.dataset
    m = get_method("mm_dynamics", ds.specs, ds.classes)
    m.prep.fit(ds.modalities, ds.present, torch.arange(len(ds)))
    m.net.eval()
    with torch.no_grad():
        out = m.forward(ds.batch(np.arange(8)))
        x = m.prepared(ds.batch(np.arange(8)))
        h = m.net.encoders["rna"](x["rna"] * m.net.gates["rna"](x["rna"]))
    torch.testing.assert_close(out.latents["rna"], h * out.modality_weights["rna"][:, None])


def test_mm_static_fixed_weights(demo):
    ds = demo.dataset
    m = get_method("mm_static", ds.specs, ds.classes, modality_weights={"rna": 1.0, "protein": 3.0, "image": 6.0})
    m.prep.fit(ds.modalities, ds.present, torch.arange(len(ds)))
    m.net.eval()
    with torch.no_grad():
        out = m.forward(ds.batch(np.arange(5)))
        h = m.net.encoders["image"](m.prepared(ds.batch(np.arange(5)))["image"])
    assert out.modality_weights["protein"].tolist() == [3.0] * 5 and not out.feature_maps
    torch.testing.assert_close(out.latents["image"], 6.0 * h)
    with pytest.raises(MMXError, match="modality weights given for"):
        get_method("mm_static", ds.specs, ds.classes, modality_weights={"clinic": 2.0})


# ------------------------------------------------------------------ masking
def test_masking_modes_change_only_the_masked_inputs(fitted):
    m, ds, split = fitted
    batch = ds.batch(split.test)
    x = m.prepared(batch)
    maps = m.predict(ds, split.test).output.feature_maps
    cases = [("image", MaskSpec("gray")), ("image", MaskSpec("zeros")), ("image", MaskSpec("blur")),
             ("image", MaskSpec("patches", patches=(0, 17), patch_size=4)), ("image", MaskSpec("topk", k=3)),
             ("rna", MaskSpec("zeros")), ("protein", MaskSpec("mean"))]
    for mod, spec in cases:
        out = apply_mask(x, {mod: spec}, m.prep.training_mean, maps)
        for other in set(x) - {mod}:
            assert torch.equal(out[other], x[other]), (mod, spec.mode, other)
        assert not torch.equal(out[mod], x[mod]), (mod, spec.mode)
        if spec.mode in ("patches", "topk"):
            changed = (out[mod] != x[mod]).any(1)  # N x H x W
            grid = changed.view(len(changed), 16, 4, 16, 4).any(4).any(2).flatten(1)  # patches touched
            if spec.mode == "patches":
                expect = torch.zeros_like(grid)
                expect[:, [0, 17]] = True
                assert torch.equal(grid, expect)
            else:
                top = top_patches(maps[mod], 3, 4)
                assert all(set(torch.nonzero(grid[i]).flatten().tolist()) <= set(top[i].tolist())
                           for i in range(len(grid)))
            assert torch.all(out[mod][changed[:, None].expand_as(out[mod])] == 0.5)
    mean = apply_mask(x, {"protein": MaskSpec("mean")}, m.prep.training_mean)["protein"]
    assert torch.equal(mean, m.prep.training_mean("protein").expand_as(mean))


def test_mask_text_and_patch_grid(fitted):
    m, ds, split = fitted
    specs = m.specs
    assert parse_mask({"image": "topk:3"}, specs, 8)["image"] == MaskSpec("topk", k=3, patch_size=8)
    assert parse_mask({"image": "patches:0,17"}, specs)["image"] == MaskSpec("patches", patches=(0, 17), patch_size=4)
    for bad, match in [("topk", "topk:K"), ("topk:0", "k >= 1"), ("patches", "patches:i,j"), ("gray:2", "no argument")]:
        with pytest.raises(MMXError, match=match):
            parse_mask({"image": bad}, specs, 4)
    with pytest.raises(MMXError, match="needs a model with a patch"):
        parse_mask({"image": "topk:3"}, specs, None)
    with pytest.raises(MMXError, match="differs from the model's map"):
        parse_mask({"image": MaskSpec("topk", k=3, patch_size=4)}, specs, 8)
    with pytest.raises(MMXError, match="patch indices must lie in 0..255"):
        m.predict(ds, split.test, mask={"image": "patches:256"})
    plain, top = m.predict(ds, split.test), m.predict(ds, split.test, mask={"image": "topk:3"})
    assert not np.allclose(plain.proba, top.proba)
    small = {"image": torch.rand(2, 3, 8, 8)}
    assert apply_mask(small, {"image": MaskSpec("blur")})["image"].shape == (2, 3, 8, 8)  # kernel fits 8 px


def test_topk_masks_whole_patches_of_the_models_own_size(cells):
    split = small_split(len(cells.dataset))
    m, ds = fit(cells, "mm_dynamics", ["image"], split, epochs=1, patch_size=8, **FAST)
    x = m.prepared(ds.batch(split.test[:4]))
    maps = m.predict(ds, split.test[:4]).output.feature_maps
    spec = parse_mask({"image": "topk:1"}, m.specs, m.config.patch_size)
    out = apply_mask(x, spec, m.prep.training_mean, maps)["image"]
    changed = (out != x["image"]).any(1)  # N x H x W
    assert changed.sum(dim=(1, 2)).max() <= 64 and changed.view(4, 8, 8, 8, 8).any(4).any(2).sum(dim=(1, 2)).max() == 1


def test_masked_prediction_uses_the_mask_and_keeps_presence(fitted):
    m, ds, split = fitted
    plain = m.predict(ds, split.test)
    gray = m.predict(ds, split.test, mask={"image": "gray"})
    assert not np.allclose(plain.proba, gray.proba)
    # the omics gates see the same inputs; only the image gate and the image confidence move
    torch.testing.assert_close(plain.output.feature_maps["rna"], gray.output.feature_maps["rna"])
    assert not torch.equal(plain.output.modality_weights["image"], gray.output.modality_weights["image"])
    assert torch.any(gray.output.latents["image"] != 0)  # masking is not missingness: the image latent stays
    with pytest.raises(MMXError, match="not valid for omics"):
        m.predict(ds, split.test, mask={"rna": "gray"})


# ------------------------------------------------------------------ training behaviour
@pytest.mark.parametrize("name,mods", [("mm_dynamics", PRI), ("mm_static", PRI), ("cnn", ["image"])])
def test_best_validation_weights_are_a_true_copy(cells, monkeypatch, name, mods):
    ds = cells.dataset.select(mods)
    split = small_split(len(ds), seed=1)
    m = get_method(name, ds.specs, ds.classes, epochs=6, batch_size=16, lr=3e-3, patience=None)
    snapshots, evals = {}, []
    real_evaluate = loop.evaluate

    def peak_at_epoch_3(*a, **k):  # the real validation, scored so that epoch 3 is the best
        evals.append(1)
        return {**real_evaluate(*a, **k), "balanced_accuracy": 1.0 if len(evals) == 3 else 0.5}

    monkeypatch.setattr(loop, "evaluate", peak_at_epoch_3)

    def snap(epoch, _total, _hist):  # the live model after each epoch
        snapshots[epoch] = {k: v.detach().clone() for k, v in m.net.state_dict().items()}

    m.fit(ds, split, seed=0, callback=snap)
    best, last = m.fit_result.best_epoch, m.fit_result.epochs_run
    assert (best, last) == (3, 6)
    differs = lambda a, b: any(not torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert differs(snapshots[best], snapshots[last])  # the live model moved on after selection
    final = m.net.state_dict()
    assert not differs(snapshots[best], final)  # ...yet the returned model is the best epoch's
    hist = {h["epoch"]: h for h in m.fit_result.history}
    assert hist[best]["balanced_accuracy"] == max(h["balanced_accuracy"] for h in hist.values())


@pytest.mark.parametrize("name,mods", [("mm_dynamics", PRI), ("cnn", ["image"])])
def test_no_random_augmentation_at_evaluation(cells, monkeypatch, name, mods):
    calls = []
    real = loop.random_flips
    monkeypatch.setattr(loop, "random_flips", lambda *a, **k: calls.append(1) or real(*a, **k))
    split = small_split(len(cells.dataset), n_train=32, n_val=8, n_test=16)
    m, ds = fit(cells, name, mods, split, epochs=2, augment=True, **FAST)
    assert len(calls) == 2 * 2  # flips on every training batch (2 epochs x 2 batches), none on validation
    calls.clear()
    a, b = m.predict(ds, split.test), m.predict(ds, split.test)
    assert not calls and np.array_equal(a.proba, b.proba)
    m.net.eval()
    with torch.no_grad():
        direct = torch.softmax(m.forward(ds.batch(split.test)).logits, 1).numpy()
    np.testing.assert_allclose(a.proba, direct, rtol=1e-5, atol=1e-6)


def test_same_seed_gives_identical_metrics(cells):
    split = small_split(len(cells.dataset), n_train=32, n_val=8, n_test=24)
    y = cells.dataset.y[split.test].numpy()

    def run(seed):
        m, ds = fit(cells, "mm_dynamics", ["protein", "image"], split, seed=seed, epochs=2, augment=True, **FAST)
        p = m.predict(ds, split.test).proba
        return p, metrics.compute(y, p)

    (p1, m1), (p2, m2), (p3, _) = run(5), run(5), run(6)
    assert np.array_equal(p1, p2) and m1 == m2
    assert not np.array_equal(p1, p3)


def test_overfits_a_small_real_subset(cells):
    """Proves learning: 60 real cells (protein + RNA + image) fitted to >= 95 % training accuracy."""
    split = small_split(len(cells.dataset), seed=2, n_train=48, n_val=12, n_test=8)
    m, ds = fit(cells, "mm_dynamics", PRI, split, epochs=30, fixed_schedule=True, **FAST)
    seen = np.r_[split.train, split.val]  # fixed schedule: both trained on, final weights kept
    acc = metrics.compute(ds.y[seen].numpy(), m.predict(ds, seen).proba)["accuracy"]
    assert acc >= 0.95, acc


def test_fixed_schedule_keeps_final_weights_and_trains_on_validation(cells, monkeypatch):
    from core.data.dataset import MultimodalDataset

    ds = cells.dataset.select(["protein"])
    split = small_split(len(ds), n_train=40, n_val=20, n_test=10)
    seen, states = [], {}
    real_batch = MultimodalDataset.batch
    monkeypatch.setattr(MultimodalDataset, "batch", lambda self, idx: seen.append(np.asarray(idx).copy())
                        or real_batch(self, idx))
    m = get_method("mm_dynamics", ds.specs, ds.classes, epochs=3, batch_size=None, fixed_schedule=True)
    m.fit(ds, split, seed=0, callback=lambda e, t, h: states.__setitem__(
        e, {k: v.clone() for k, v in m.net.state_dict().items()}))
    assert sorted(np.unique(np.concatenate(seen)).tolist()) == sorted(np.r_[split.train, split.val].tolist())
    assert m.fit_result.best_epoch == 3 and all(set(h) == {"epoch", "train_loss"} for h in m.fit_result.history)
    assert all(torch.equal(v, m.net.state_dict()[k]) for k, v in states[3].items())
    rows = ds.modalities["protein"][torch.as_tensor(np.r_[split.train, split.val])].float()
    torch.testing.assert_close(m.prep.shift_protein, rows.min(0).values)  # scaling fitted on every row that trains


# ------------------------------------------------------------------ explain outputs
def test_explain_outputs_of_a_forward_pass(fitted):
    m, ds, split = fitted
    info = explain(m, ds, split.test)
    n = len(split.test)
    assert info.feature_scores["rna"].shape == (n, 1000) and info.feature_scores["protein"].shape == (n, 134)
    assert info.feature_names["protein"] == ds.specs["protein"].feature_names
    assert info.patch_maps["image"].shape == (n, 16, 16)
    assert set(info.modality_weights) == set(PRI) and info.modality_weights["rna"].shape == (n,)
    for p in info.modality_proba.values():
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(info.proba, m.predict(ds, split.test).proba)
    top = info.top_features("protein", k=5, sample=0)
    assert list(top["informativeness"]) == sorted(info.feature_scores["protein"][0], reverse=True)[:5]
    with pytest.raises(MMXError):
        info.top_features("image")


def test_checkpoint_round_trip_keeps_predictions_and_explanations(fitted, tmp_path):
    from core.checkpoint import load_checkpoint, save_checkpoint

    m, ds, split = fitted
    loaded = load_checkpoint(save_checkpoint(m, tmp_path / "mm", task="cells"))
    a, b = explain(m, ds, split.test[:6]), explain(loaded, ds, split.test[:6])
    np.testing.assert_allclose(a.proba, b.proba, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.patch_maps["image"], b.patch_maps["image"], rtol=1e-5, atol=1e-6)
    with pytest.raises(MMXError, match="not fitted"):
        explain(get_method("mm_dynamics", ds.specs, ds.classes), ds, split.test[:2])


# ------------------------------------------------------------------ cnn and absent modalities
def test_cnn_takes_any_single_image_modality(derm7pt, cells):
    ds = derm7pt.dataset
    split = small_split(len(ds), n_train=24, n_val=8, n_test=8)
    m, d = fit(derm7pt, "cnn", ["derm"], split, epochs=1, **FAST)
    assert m.predict(d, split.test).proba.shape == (8, 5)
    with pytest.raises(MMXError, match="exactly one image modality"):
        get_method("cnn", ds.specs, ds.classes)
    with pytest.raises(MMXError, match="accepts"):
        get_method("cnn", {"rna": cells.dataset.specs["rna"]}, cells.dataset.classes)


def test_absent_clinical_photo_adds_no_latent_and_no_loss_terms(derm7pt):
    ds = derm7pt.dataset
    absent = np.flatnonzero(~ds.present["clinic"].numpy())
    assert len(absent) == 9
    idx = np.r_[absent[:3], np.flatnonzero(ds.present["clinic"].numpy())[:3]]
    m = get_method("mm_dynamics", ds.specs, ds.classes)
    m.prep.fit(ds.modalities, ds.present, torch.arange(len(ds)))
    m.net.eval()
    with torch.no_grad():
        out = m.forward(ds.batch(idx))
        assert torch.all(out.latents["clinic"][:3] == 0) and torch.any(out.latents["clinic"][3:] != 0)
        _, terms = m.net.loss(out, ds.y[idx], None)
        only_absent = m.forward(ds.batch(absent[:3]))
        _, terms_absent = m.net.loss(only_absent, ds.y[absent[:3]], None)
    assert "sparsity/clinic" in terms and not any(k.endswith("/clinic") for k in terms_absent)
    with torch.no_grad():
        _, terms_present = m.net.loss(m.forward(ds.batch(idx[3:])), ds.y[idx[3:]], None)
    for key in ("sparsity/clinic", "confidence/clinic", "modality_ce/clinic"):
        assert terms[key] == pytest.approx(terms_present[key], rel=1e-5), key  # absent rows add nothing


def test_explanations_are_blank_where_a_modality_is_absent(derm7pt):
    ds = derm7pt.dataset
    absent = np.flatnonzero(~ds.present["clinic"].numpy())[:3]
    present = np.flatnonzero(ds.present["clinic"].numpy())
    split = Split("blank", present[:24], present[24:32], np.r_[absent, present[32:35]])
    m = get_method("mm_dynamics", ds.specs, ds.classes, epochs=1, batch_size=16)
    m.fit(ds, split, device="cpu")
    info = explain(m, ds, split.test)
    for maps in (info.patch_maps, info.modality_weights, info.modality_proba):
        assert np.isnan(maps["clinic"][:3]).all() and not np.isnan(maps["clinic"][3:]).any()
        assert not np.isnan(maps["derm"]).any()


def test_binary_f1_is_the_positive_class_f1():
    y = np.array([0, 0, 0, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])  # class 1: P = 1/2, R = 1
    assert metrics.compute(y, proba)["f1"] == pytest.approx(2 / 3)
    assert "f1" not in metrics.compute(np.array([0, 1, 2]), np.eye(3))


# ------------------------------------------------------------------ experiments: findings follow the numbers
def test_findings_are_computed_from_the_numbers(make_table):
    """Findings call an effect only when its paired bootstrap interval excludes 0."""
    from core.experiments import mmdynamics as exp

    labels = ["MM dynamics P+R+I", "MM dynamics P+R+I*", "MM dynamics P+R", "MM static P+R+I", "MM static P+R+I*"]
    hurts_dyn = exp.masked_findings(make_table(dict(zip(labels, [0.9, 0.5, 0.85, 0.9, 0.8]))))
    hurts_sta = exp.masked_findings(make_table(dict(zip(labels, [0.9, 0.85, 0.85, 0.9, 0.5]))))
    close = exp.masked_findings(make_table(dict(zip(labels, [0.9, 0.89, 0.85, 0.9, 0.895]))))
    assert "MM static*: **holds**" in hurts_dyn and "95% CI" in hurts_dyn
    assert "MM static*: **is reversed**" in hurts_sta
    assert "MM static*: **no difference called**" in close
    abl = exp.ablation_findings(make_table({"None": 0.6, "FI": 0.9, "MI": 0.6, "Both": 0.9}))
    assert "(FI vs None): **FI above None**" in abl and "(Both vs MI): **Both above MI**" in abl
    assert "(None ≥ MI): **no difference called**" in abl and "(FI ≥ Both): **no difference called**" in abl
    abl = exp.ablation_findings(make_table({"None": 0.9, "FI": 0.6, "MI": 0.9, "Both": 0.6}))
    assert "**FI below None**" in abl and "**Both below MI**" in abl
    ref = exp.SCHEDULE_VARIANTS[0][0]
    assert "keeps it" in exp.schedule_findings(make_table({ref: 0.80, "500 epochs": 0.78}), 5, 245)
    close = exp.schedule_findings(make_table({ref: 0.80, "500 epochs": 0.81}), 5, 245)
    assert "ranks 2 of 2" in close and "keeps the published schedule" in close
    assert "worth adopting" in exp.schedule_findings(make_table({ref: 0.70, "500 epochs": 0.85}), 5, 245)


def test_ablation_figure_has_one_group_per_variant():
    from core.viz.ablation import ablation_figure

    s = {v: {"balanced_accuracy": (0.8, 0.02), "f1_macro": (0.7, 0.03)} for v in ("None", "FI", "MI", "Both")}
    fig = ablation_figure(s, metrics=("balanced_accuracy", "f1_macro"))
    assert len(fig.data) == 2 and list(fig.data[0].x) == ["None", "FI", "MI", "Both"]
    assert fig.data[1].y[0] == pytest.approx(70.0) and fig.data[1].error_y.array[0] == pytest.approx(3.0)


def test_experiment_writes_tables_and_figure(cells, tmp_path, monkeypatch):
    from core.experiments import get_experiment, list_experiments
    from core.experiments import mmdynamics as exp
    from core.viz.export import result_formats

    names = {e.name for e in list_experiments()}
    assert {"cells/image_dynamics", "cells/masked_image", "cells/ablation_fi_mi", "rosmap/mmdynamics",
            "rosmap/schedule_cv", "derm7pt/image_dynamics"} <= names
    quick = [dataclasses.replace(r, config={**r.config, "epochs": 1}) for r in exp.ABLATION_ROWS]
    monkeypatch.setattr(exp, "ABLATION_ROWS", quick)
    paths = get_experiment("cells/ablation_fi_mi").run(out_dir=tmp_path, device="cpu")
    md = (tmp_path / "cells" / "ablation_fi_mi.md").read_text()
    assert "python train.py --experiment cells/ablation_fi_mi" in md and "## Findings" in md
    assert "| Both |" in md and (tmp_path / "cells" / f"ablation_fi_mi.{result_formats()[0]}") in paths
