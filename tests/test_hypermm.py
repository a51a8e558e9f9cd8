"""HyperMM, missingness simulation and the absent-modality strategies of the method layer."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from core import metrics
from core.data.missing import draw_presence, missing_fractions, simulate_missing
from core.data.splits import Split
from core.errors import MMXError
from core.models import get_method
from core.models.hypermm import HyperMM, SetClassifier, pack_sets

FAST = {"backbone": "small_cnn", "epochs": 3, "patience": None, "rho_train": {"epochs": 3, "patience": None}}


@pytest.fixture(scope="module")
def demo_missing(demo):
    """The synthetic demo with every modality missing for about 40 % of the samples."""
    return simulate_missing(demo.dataset, {"rna": 0.4, "protein": 0.4, "image": 0.4}, seed=1)


@pytest.fixture(scope="module")
def trained(demo, demo_missing):
    m = get_method("hypermm", demo_missing.specs, demo_missing.classes, **FAST)
    m.fit(demo_missing, demo.splits["logo"][0], seed=0)
    return m


# ------------------------------------------------------------------ missingness simulation
def test_missingness_never_drops_every_modality(demo):
    ds = demo.dataset
    for rates in ({"rna": 1.0, "protein": 1.0, "image": 1.0}, {"rna": 0.9, "protein": 0.9, "image": 0.9}):
        out = simulate_missing(ds, rates, seed=0)
        assert torch.stack(list(out.present.values())).any(0).all()
    assert all(f == pytest.approx(2 / 3, abs=0.1) for f in missing_fractions(out).values())


def test_missingness_is_reproducible_by_seed(demo):
    ds = demo.dataset
    rates = {"rna": 0.5, "image": 0.25}
    a, b, c = (simulate_missing(ds, rates, seed=s) for s in (7, 7, 8))
    assert all(torch.equal(a.present[m], b.present[m]) for m in ds.specs)
    assert a.data_hash() == b.data_hash() != c.data_hash()
    frac = missing_fractions(a)
    assert frac["protein"] == 0.0  # not named: untouched
    assert frac["rna"] == pytest.approx(0.5, abs=0.1) and frac["image"] == pytest.approx(0.25, abs=0.1)
    gone = ~a.present["image"]
    assert (a.modalities["image"][gone] == 0).all() and torch.equal(a.modalities["rna"][a.present["rna"]],
                                                                    ds.modalities["rna"][a.present["rna"]])
    assert ds.present["image"].all()  # the input dataset is left as it was


def test_missingness_keeps_real_absences(derm7pt):
    ds = derm7pt.dataset
    out = simulate_missing(ds, {"derm": 0.5}, seed=0)
    assert not (out.present["clinic"] & ~ds.present["clinic"]).any()  # never invents a clinical photo
    assert out.present["derm"][~ds.present["clinic"]].all()  # the 9 cases without one keep their dermoscopy
    assert (~out.present["derm"]).float().mean() == pytest.approx(0.5, abs=0.05)


def test_missingness_rejects_bad_input(demo):
    with pytest.raises(MMXError, match="no modality"):
        simulate_missing(demo.dataset, {"dna": 0.5}, seed=0)
    with pytest.raises(MMXError, match=r"\[0, 1\]"):
        simulate_missing(demo.dataset, {"rna": 1.5}, seed=0)


def test_draw_presence_rescues_from_own_modalities():
    present = torch.tensor([[True, False, True], [False, True, False]]).repeat(200, 1)
    keep = draw_presence(present, torch.ones(3), torch.Generator().manual_seed(0))
    assert (keep.sum(1) == 1).all() and not (keep & ~present).any()
    assert keep[::2, 0].any() and keep[::2, 2].any()  # the rescued modality is drawn, not always the first


# ------------------------------------------------------------------ the set function
def _sets(n=6, k=3, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, d, generator=g)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=torch.bool)[:n]
    return z, mask


@pytest.mark.parametrize("aggregation", ["mean", "sum", "max"])
def test_set_function_is_permutation_invariant(aggregation):
    torch.manual_seed(0)
    rho = SetClassifier(5, 8, 3, 0.5, aggregation).eval()
    z, mask = _sets()
    ref = rho.classify(z, mask)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):  # a different order for every sample, padding moved around too
        perm = torch.stack([torch.randperm(3, generator=g) for _ in range(len(z))])
        out = rho.classify(z.gather(1, perm[..., None].expand_as(z)), mask.gather(1, perm))
        assert torch.allclose(out, ref, atol=1e-6)
    # and at the level of modalities: listing them in another order changes nothing
    h = {m: z[:, j] for j, m in enumerate("abc")}
    present = {m: mask[:, j] for j, m in enumerate("abc")}
    flipped = {m: h[m] for m in "cab"}
    assert torch.allclose(rho(h, present).logits, rho(flipped, {m: present[m] for m in "cab"}).logits, atol=1e-6)


@pytest.mark.parametrize("aggregation", ["mean", "sum", "max"])
def test_padding_content_never_reaches_the_output(aggregation):
    torch.manual_seed(0)
    rho = SetClassifier(5, 8, 3, 0.0, aggregation).eval()
    z, mask = _sets()
    garbage = torch.where(mask[..., None], z, torch.full_like(z, 1e3))
    assert torch.allclose(rho.classify(z, mask), rho.classify(garbage, mask), atol=1e-5)
    assert not torch.allclose(rho.classify(z, mask), rho.classify(garbage, torch.ones_like(mask)))


def test_sets_are_packed_left_with_their_modality_ids():
    h = {m: torch.full((3, 2), float(j + 1)) for j, m in enumerate(("rna", "protein", "image"))}
    present = {"rna": torch.tensor([True, False, False]), "protein": torch.tensor([False, False, True]),
               "image": torch.tensor([True, True, True])}
    z, mask, index = pack_sets(h, present)
    assert z.shape == (3, 2, 2)  # padded to the largest set in the batch, not to the number of modalities
    assert mask.tolist() == [[True, True], [True, False], [True, True]]
    assert index.tolist() == [[0, 2], [2, -1], [1, 2]]
    assert z[0, :, 0].tolist() == [1.0, 3.0] and z[2, :, 0].tolist() == [2.0, 3.0]


def test_prediction_does_not_depend_on_batch_or_absent_slots(demo, demo_missing, trained):
    test = demo.splits["logo"][0].test
    sizes = torch.stack([demo_missing.present[m][test] for m in demo_missing.specs], 1).sum(1)
    assert set(sizes.tolist()) == {1, 2, 3}  # the batch mixes set sizes
    together = trained.predict(demo_missing, test).proba
    for i in (0, int(np.argmax(sizes.numpy() == 1)), int(np.argmax(sizes.numpy() == 2))):
        alone = trained.predict(demo_missing, test[i:i + 1]).proba
        assert np.allclose(alone[0], together[i], atol=1e-5)
    # what sits in the slot of an absent modality is never read (no dummy inputs)
    noisy = demo_missing.subset(np.arange(len(demo_missing)))
    g = torch.Generator().manual_seed(0)
    for m, x in noisy.modalities.items():
        absent = ~noisy.present[m]
        if x.dtype == torch.uint8:
            x[absent] = torch.randint(0, 255, x[absent].shape, generator=g, dtype=torch.uint8)
        else:
            x[absent] = torch.randn(x[absent].shape, generator=g) * 10
    assert np.allclose(trained.predict(noisy, test).proba, together, atol=1e-6)


def test_modality_weights_follow_the_observed_set(demo_missing, trained):
    out = trained.predict(demo_missing).output
    for m in demo_missing.specs:
        absent = ~demo_missing.present[m]
        assert (out.modality_weights[m][absent] == 0).all()
        assert (out.latents[m][absent] == 0).all() and (out.modality_logits[m][absent] == 0).all()
    total = sum(out.modality_weights.values())
    assert torch.allclose(total, torch.ones_like(total))


# ------------------------------------------------------------------ phi
def test_hypernetwork_generates_different_weights_per_modality(trained):
    hyper = trained.phi.hyper
    generated = [hyper.weights(i) for i in range(len(trained.specs))]
    for w, b in generated:
        assert w.shape == (hyper.out_features, hyper.in_features) and b.shape == (hyper.out_features,)
    for i in range(len(generated)):
        for j in range(i + 1, len(generated)):
            assert not torch.allclose(generated[i][0], generated[j][0])
            assert not torch.allclose(generated[i][1], generated[j][1])
    # the generated layer is what phi applies: the same features give different h per modality
    f = torch.randn(4, hyper.in_features)
    assert not torch.allclose(hyper(f, 0), hyper(f, 1))


def test_phi_is_trained_in_step1_and_frozen_in_step2(demo, demo_missing, monkeypatch):
    seen = {}
    fit_phi, fit_rho = HyperMM.fit_phi, HyperMM.fit_rho

    def clone(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def spy_phi(self, *a, **k):
        seen["phi_init"] = clone(self.phi)
        return fit_phi(self, *a, **k)

    def spy_rho(self, *a, **k):
        seen["phi_mode"] = (self.phi.training, any(p.requires_grad for p in self.phi.parameters()))
        seen["phi_before"], seen["rho_before"] = clone(self.phi), clone(self.rho)
        result = fit_rho(self, *a, **k)
        seen["phi_after"], seen["rho_after"] = clone(self.phi), clone(self.rho)
        return result

    monkeypatch.setattr(HyperMM, "fit_phi", spy_phi)
    monkeypatch.setattr(HyperMM, "fit_rho", spy_rho)
    m = get_method("hypermm", demo_missing.specs, demo_missing.classes, **FAST)
    m.fit(demo_missing, demo.splits["logo"][0], seed=0)
    changed = lambda a, b: [k for k in a if not torch.equal(a[k], b[k])]  # noqa: E731
    assert changed(seen["phi_init"], seen["phi_before"])  # step 1 trained phi
    assert seen["phi_mode"] == (False, False)  # step 2 encodes with phi frozen and in eval mode (no dropout)
    assert not changed(seen["phi_before"], seen["phi_after"])  # step 2 left it as it was
    assert changed(seen["rho_before"], seen["rho_after"])  # ... and trained rho
    assert not any(p.requires_grad for p in m.phi.parameters())
    assert [h["step"] for h in m.fit_result.history][0] == 1 and m.fit_result.history[-1]["step"] == 2


def test_small_cnn_backbone_when_vgg_weights_are_not_cached(demo, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    ds = demo.dataset
    with caplog.at_level(logging.WARNING, logger="core.models.hypermm"):
        m = get_method("hypermm", ds.specs, ds.classes)
    assert m.config.backbone == "small_cnn"  # what a checkpoint card records
    assert any("small CNN trained from scratch" in r.getMessage() for r in caplog.records)
    vgg = get_method("hypermm", ds.specs, ds.classes, backbone="vgg11")  # layers only, for a checkpoint
    with pytest.raises(MMXError, match="never downloaded"):
        vgg.fit(ds, demo.splits["logo"][0])


def test_vgg11_backbone_from_the_torchvision_cache(demo, tmp_path, monkeypatch):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    reference = make_layers(cfgs["A"])
    (tmp_path / "checkpoints").mkdir()
    torch.save({f"features.{k}": v for k, v in reference.state_dict().items()},
               tmp_path / "checkpoints" / "vgg11-8a719046.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    ds = demo.dataset
    m = get_method("hypermm", ds.specs, ds.classes)
    assert m.config.backbone == "vgg11" and m.phi.backbone.out_features == 512
    m.phi, m.rho = m._build()  # what a fit starts from
    assert all(torch.equal(a, b) for a, b in zip(m.phi.backbone.features.state_dict().values(),
                                                 reference.state_dict().values()))
    assert not any(p.requires_grad for p in m.phi.backbone.parameters())  # ImageNet features stay frozen
    assert m.phi.adapters["rna"][0].out_features == 512  # omics adapters reach the backbone's width
    h, _ = m.phi.encode(m.prepared(ds.batch(np.arange(4))), {k: torch.ones(4, dtype=torch.bool) for k in ds.specs})
    assert h["image"].shape == (4, m.config.width)


def test_hypermm_rejects_bad_settings(demo):
    ds = demo.dataset
    with pytest.raises(MMXError, match="aggregation"):
        get_method("hypermm", ds.specs, ds.classes, aggregation="median")
    with pytest.raises(MMXError, match="loss weights"):
        get_method("hypermm", ds.specs, ds.classes, ce_weight=0.0, recon_weight=0.0)


# ------------------------------------------------------------------ comparators: fills, dropout, unimodal
def test_absent_modalities_filled_per_strategy(demo, demo_missing):
    split = demo.splits["logo"][0]
    batch = demo_missing.batch(np.arange(40))
    for missing in ("native", "zeros", "mean", "gray"):
        m = get_method("late_mlp", demo_missing.specs, demo_missing.classes, missing=missing, epochs=1)
        m.fit(demo_missing, split, seed=0)
        x, present = m.model_inputs(batch)
        plain = m.prepared(batch)
        for mod, spec in demo_missing.specs.items():
            absent = ~batch["present"][mod]
            assert torch.equal(x[mod][~absent], plain[mod][~absent])  # observed rows untouched
            if missing == "native":
                assert torch.equal(present[mod], batch["present"][mod])
                continue
            assert present[mod].all()  # the net is told everything is there
            expected = {"zeros": 0.0, "gray": 0.5 if spec.kind == "image" else 0.0}.get(missing)
            if expected is None:
                expected = m.prep.training_mean(mod)
            assert torch.allclose(x[mod][absent], torch.as_tensor(expected).expand_as(x[mod][absent]))
    tr = torch.as_tensor(split.train)
    seen = demo_missing.present["image"][tr]
    mean_image = demo_missing.modalities["image"][tr][seen].float().mean(0) / 255
    assert torch.allclose(m.prep.training_mean("image"), mean_image, atol=1e-5)
    with pytest.raises(MMXError, match="missing="):
        get_method("late_mlp", demo.dataset.specs, demo.dataset.classes, missing="median")


def test_modality_dropout_only_while_training(demo):
    ds = demo.dataset
    m = get_method("late_mlp", ds.specs, ds.classes, missing="zeros", modality_dropout=0.5, epochs=2)
    m.fit(ds, demo.splits["logo"][0], seed=0)
    batch = ds.batch(np.arange(100))
    torch.manual_seed(0)
    dropped = m.model_inputs({**batch, "present": dict(batch["present"])}, train=True)[0]
    kept = torch.stack([(dropped[k] == m.prepared(batch)[k]).flatten(1).all(1) for k in ds.specs], 1)
    assert (~kept).any() and kept.any(1).all()  # some inputs dropped, never all of a sample's
    assert np.array_equal(m.predict(ds, np.arange(20)).proba, m.predict(ds, np.arange(20)).proba)
    assert all(torch.equal(a, b) for a, b in zip(m.model_inputs(batch)[0].values(), m.prepared(batch).values()))


def test_unimodal_predicts_prior_without_its_modality(demo, demo_missing):
    split = demo.splits["logo"][0]
    m = get_method("unimodal", demo_missing.specs, demo_missing.classes, modality="protein",
                   base_config={"epochs": 5})
    m.fit(demo_missing, split, seed=0)
    proba = m.predict(demo_missing, split.test).proba
    have = demo_missing.present["protein"][split.test].numpy()
    prior = np.bincount(demo_missing.y[split.train].numpy(), minlength=4) / len(split.train)
    assert np.allclose(proba[~have], prior, atol=1e-6)
    sub = demo_missing.subset(split.test[have]).select(["protein"])
    assert np.allclose(proba[have], m.inner.predict(sub).proba, atol=1e-6)


# ------------------------------------------------------------------ real data
def test_hypermm_learns_real_cells_with_missing_modalities(cells):
    ds = simulate_missing(cells.dataset, {"rna": 0.5, "protein": 0.5, "image": 0.5}, seed=0)
    split = cells.splits["leave_one_donor_out"][0]
    m = get_method("hypermm", ds.specs, ds.classes, backbone="small_cnn", epochs=12,
                   rho_train={"epochs": 30, "patience": 10})
    m.fit(ds, split, seed=0)
    y = ds.y[split.test].numpy()
    proba = m.predict(ds, split.test).proba
    assert metrics.compute(y, proba)["balanced_accuracy"] > 0.6
    only_image = (ds.present["image"] & ~ds.present["rna"] & ~ds.present["protein"]).numpy()[split.test]
    assert only_image.sum() > 10  # samples with one modality are predicted from it alone
    assert np.allclose(m.predict(ds, split.test).output.modality_weights["image"].numpy()[only_image], 1.0)


def test_hypermm_uses_real_derm7pt_missingness(derm7pt):
    ds = derm7pt.dataset
    no_clinic = np.flatnonzero(~ds.present["clinic"].numpy())
    assert len(no_clinic) == 9
    official = derm7pt.splits["official"][0]
    small = Split("small", official.train[:60], official.val[:30], no_clinic)  # 128 px images: keep it short
    m = get_method("hypermm", ds.specs, ds.classes, **FAST)
    m.fit(ds, small, seed=0)
    out = m.predict(ds, no_clinic).output
    assert (out.modality_weights["clinic"] == 0).all() and (out.modality_weights["derm"] == 1).all()
    assert np.isfinite(m.predict(ds, no_clinic).proba).all()


def test_checkpoint_card_records_the_backbone(demo_missing, trained, tmp_path):
    from core.checkpoint import load_checkpoint, read_card, save_checkpoint

    save_checkpoint(trained, tmp_path / "hypermm", task="demo")
    assert read_card(tmp_path / "hypermm")["config"]["backbone"] == "small_cnn"
    again = load_checkpoint(tmp_path / "hypermm")
    assert np.allclose(again.predict(demo_missing).proba, trained.predict(demo_missing).proba, atol=1e-6)


def test_robustness_figure_draws_one_line_per_method_and_metric():
    from core.viz.robustness import robustness_figure

    curves = {"Accuracy": {"HyperMM": [(0.5, 0.7, 0.05), (0.0, 0.9, 0.01)], "zero filling": [(0.0, 0.8, 0.0)]},
              "AUROC": {"HyperMM": [(0.0, 0.95, 0.01)], "zero filling": [(0.0, 0.9, 0.0)]}}
    fig = robustness_figure(curves, "t", highlight="HyperMM")
    assert len(fig.data) == 4 and sum(t.showlegend for t in fig.data) == 2
    first = fig.data[0]
    assert list(first.x) == [0.0, 50.0] and list(first.y) == [90.0, 70.0]  # sorted by rate, in percent
    assert list(first.error_y.array) == [1.0, 5.0] and first.line.width > fig.data[1].line.width


def test_majority_rate_and_note(derm7pt):
    from core.experiments import hypermm as exp
    from core.experiments.runner import Row, RowResult

    cls, share = exp.majority_rate(derm7pt, None)
    test = derm7pt.splits[derm7pt.default_split][0].test
    assert cls == "NEV" and share == pytest.approx(float((derm7pt.dataset.y[test] == 0).float().mean()))
    assert exp.majority_rate(derm7pt, "melanoma")[1] > 0.5

    def scenario(accs):
        return {"results": [RowResult(Row(lab, "x"), [{"metrics": {"accuracy": a, "auroc": 0.7}}])
                            for lab, a in accs.items()]}

    near = exp.majority_note([scenario({exp.HYPERMM: 0.47, "LR": share - 0.01})], (cls, share))
    assert f"{100 * share:.1f} %" in near and "LR reaches within 2 points" in near
    far = exp.majority_note([scenario({exp.HYPERMM: 0.47, "LR": share - 0.1})], (cls, share))
    assert far.endswith("test set.")


def test_vgg11_checkpoint_loads_without_the_torchvision_cache(demo_missing, tmp_path, monkeypatch):
    from torchvision.models.vgg import cfgs, make_layers

    from core.checkpoint import load_checkpoint, save_checkpoint

    cache = tmp_path / "hub"
    (cache / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["A"]).state_dict().items()},
               cache / "checkpoints" / "vgg11-8a719046.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(cache))
    ds = demo_missing
    m = get_method("hypermm", ds.specs, ds.classes, epochs=1, rho_train={"epochs": 1, "batch_size": 64})
    split = Split("s", np.arange(0, 40), np.arange(40, 60), np.arange(60, 80))
    m.fit(ds, split)
    save_checkpoint(m, tmp_path / "vgg", task="demo")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty"))
    again = load_checkpoint(tmp_path / "vgg")
    assert again.config.backbone == "vgg11"
    assert np.allclose(again.predict(ds, split.test).proba, m.predict(ds, split.test).proba, atol=1e-6)
