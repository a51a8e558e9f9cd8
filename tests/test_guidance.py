"""Deep multimodal guidance: staged training with frozen parts, inference from the inferior
modality only, class weighting after shuffling, McNemar, the comparison API (real data)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from core import metrics
from core.data.dataset import MultimodalDataset
from core.errors import MMXError
from core.experiments.guidance import torch_threads
from core.explain.guidance import class_deltas, head_test, latent_map, sample_comparison
from core.models import get_method
from core.models.guidance import Decoder, _GuideStage, _TaskStage
from core.train import loop
from core.train.loop import TrainConfig

FAST = dict(train=TrainConfig(epochs=25, batch_size=32, patience=10),
            guide_train=TrainConfig(epochs=60, batch_size=64, patience=15, monitor="loss", class_weighted=False),
            decoder_train=TrainConfig(epochs=40, batch_size=64, patience=10))


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def fitted(cells):
    """RNA (I) guided by protein (S) on donor fold 0, with a record of every stage's training:
    parameters of the other parts before/after, and the batches and class weights the loss saw."""
    ds = cells.dataset
    split = cells.splits["leave_one_donor_out"][0]
    m = get_method("guidance", ds.specs, ds.classes, inferior="rna", superior="protein",
                   latent_sizes={"rna": 64, "protein": 32}, **FAST)
    record = {"stages": [], "batches": [], "losses": []}
    real_fit, real_batch, real_loss = loop.fit, MultimodalDataset.batch, Decoder.loss

    def spy_fit(net, forward, data, train_idx, val_idx, cfg, device, seed, *a, **k):
        parts = {"c_i": m.net.c_i, "c_s": m.net.c_s, "guide": m.net.guide}
        before = {p: _state(v) for p, v in parts.items()}
        res = real_fit(net, forward, data, train_idx, val_idx, cfg, device, seed, *a, **k)
        record["stages"].append({"net": net, "data": data, "train": np.asarray(train_idx), "params": k.get("params"),
                                 "changed": {p: not _same(before[p], _state(v)) for p, v in parts.items()},
                                 "frozen": {p: not any(q.requires_grad for q in v.parameters()) for p, v in parts.items()}})
        return res

    def spy_batch(self, idx):
        b = real_batch(self, idx)
        record["batches"].append((self, b))
        return b

    def spy_loss(self, out, y, weight):
        record["losses"].append((y.clone(), None if weight is None else weight.clone()))
        return real_loss(self, out, y, weight)

    with torch_threads(1), pytest.MonkeyPatch.context() as mp:  # 1 thread: robust on a busy 2-core machine
        mp.setattr(loop, "fit", spy_fit)
        mp.setattr(MultimodalDataset, "batch", spy_batch)
        mp.setattr(Decoder, "loss", spy_loss)
        m.fit(ds, split, seed=0)
    return m, ds, split, record


def _stage(record, kind):
    return [s for s in record["stages"] if isinstance(s["net"], kind)]


def test_encoders_frozen_while_guide_trains_and_guide_frozen_while_decoder_trains(fitted):
    m, _, _, record = fitted
    (g,) = _stage(record, _GuideStage)
    assert not g["changed"]["c_i"] and not g["changed"]["c_s"] and g["changed"]["guide"]
    assert g["frozen"]["c_i"] and g["frozen"]["c_s"]
    assert {id(p) for p in g["params"]} == {id(p) for p in m.net.guide.parameters()}
    decoders = _stage(record, Decoder)
    assert len(decoders) == 2  # D_c and the S+I decoder
    for d in decoders:
        assert not any(d["changed"].values()) and all(d["frozen"].values())
    task_stages = _stage(record, _TaskStage)
    assert [s["changed"]["c_i"] for s in task_stages] == [True, False]  # C_I trains, then C_S leaves it alone


def test_guide_learns_the_mapping(fitted):
    m, *_ = fitted
    hist = m.stages["G"].history
    assert m.stages["G"].best_score < hist[0]["loss"]  # validation MSE went down
    assert min(h["loss"] for h in hist) == m.stages["G"].best_score


def test_decoder_logits_are_the_last_linear_output(fitted):
    m, ds, split, _ = fitted
    dec = copy.deepcopy(m.net.decoder).train().requires_grad_(True)  # dropout active, as while training
    last = dec.mlp[-1]
    assert isinstance(last, nn.Linear)
    seen = {}
    last.register_forward_hook(lambda mod, inp, out: seen.setdefault("out", out))
    lat = m.predict(ds, split.test[:64], head="I").output.latents
    logits = dec({"G(z_I)": lat["G(z_I)"], "z_I": lat["z_I"]}).logits
    assert torch.equal(logits, seen["out"])  # nothing (ReLU, dropout) after the last linear layer
    assert (logits < 0).any()
    logits.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dec.parameters())  # no dead layer


def test_class_weights_match_training_labels_after_shuffling(fitted):
    m, ds, split, record = fitted
    d_c = _stage(record, Decoder)[0]
    lat = d_c["data"]
    expected = loop.class_weights(ds.y[torch.as_tensor(split.train)], ds.n_classes)
    assert not torch.allclose(expected, torch.ones_like(expected))  # the classes are imbalanced
    weights = [w for _, w in record["losses"]]
    assert all(torch.allclose(w, expected) for w in weights)
    pos = {i: k for k, i in enumerate(ds.ids)}
    z_i = m.predict(ds, head="I").output.latents["z_I"]
    train_batches = [b for d, b in record["batches"] if d is lat and len(b["index"]) > 0
                     and set(b["index"].tolist()) <= set(d_c["train"].tolist())]
    assert train_batches
    assert any(not torch.equal(b["index"], b["index"].sort().values) for b in train_batches)  # rows were shuffled
    for b in train_batches:
        rows = torch.tensor([pos[i] for i in lat.ids[b["index"].numpy()]])
        assert torch.equal(b["y"], ds.y[rows])  # each label travels with its own sample's latents
        assert torch.allclose(b["x"]["z_I"], z_i[rows], atol=1e-5)


def test_inference_reads_only_the_inferior_modality(fitted):
    m, ds, split, _ = fitted
    full = m.predict(ds, split.test).proba
    rna_only = m.predict(ds.select(["rna"]), split.test).proba
    scrambled = ds.select(["rna", "protein"])
    scrambled.modalities["protein"] = torch.rand_like(scrambled.modalities["protein"]) * 100
    assert np.array_equal(full, rna_only)
    assert np.array_equal(full, m.predict(scrambled, split.test).proba)
    for head in ("S", "S+I"):
        with pytest.raises(MMXError, match="uses only the inferior modality 'rna'.*needs the superior"):
            m.predict(ds, split.test, head=head)
    with pytest.raises(MMXError, match="reads only 'rna'"):
        m.predict(ds, split.test, mask={"protein": "zeros"})
    with pytest.raises(MMXError, match="lacks modalities"):
        m.reference_predict(ds.select(["rna"]), split.test, head="S")


def test_guided_model_learns_real_cells_and_batch_does_not_matter(fitted):
    m, ds, split, _ = fitted
    y = ds.y[split.test].numpy()
    for head in ("I", "G(I)", "G(I)+I"):
        assert metrics.compute(y, m.predict(ds, split.test, head=head).proba)["balanced_accuracy"] > 0.75, head
    assert metrics.compute(y, m.reference_predict(ds, split.test, head="S").proba)["balanced_accuracy"] > 0.75
    one = np.concatenate([m.predict(ds, split.test[k:k + 1]).proba for k in range(5)])
    assert np.allclose(one, m.predict(ds, split.test[:5]).proba, atol=1e-6)
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.module().modules())


def test_samples_without_the_inferior_modality_are_refused(data_dir):
    from core.data.tasks import get_task

    ds = get_task("derm7pt", image_size=32).dataset
    m = get_method("guidance", ds.specs, ds.classes, inferior="clinic", superior=("derm",))
    missing = np.flatnonzero(~ds.present["clinic"].numpy())
    with pytest.raises(MMXError, match="lack \\['clinic'\\]"):
        m.predict(ds, missing[:2])


def test_roles_are_checked(cells):
    ds = cells.dataset
    with pytest.raises(MMXError, match="inferior modality 'dna'"):
        get_method("guidance", ds.specs, ds.classes, inferior="dna")
    with pytest.raises(MMXError, match="superior modalities other than the inferior"):
        get_method("guidance", ds.specs, ds.classes, inferior="rna", superior=("rna",))
    m = get_method("guidance", ds.specs, ds.classes, inferior="image", superior="rna,protein")
    assert m.superior == ("rna", "protein") and list(m.specs) == ["image", "rna", "protein"]


def test_multitask_encoders_and_retarget(data_dir):
    """Extra tasks train extra heads with labels looked up by the shuffled batch's rows; retarget
    reuses the frozen encoders and G and trains only the decoders."""
    from core.data.tasks import get_task

    td = get_task("derm7pt", image_size=32)
    ds, split = td.dataset, td.splits["official"][0]
    seen = []
    real_loss = _TaskStage.loss

    def spy(self, out, y, weight):
        seen.append(torch.equal(y, ds.y[self.rows]))
        return real_loss(self, out, y, weight)

    cfg = dict(train=TrainConfig(epochs=2, batch_size=64, monitor="loss"),
               guide_train=TrainConfig(epochs=5, monitor="loss", class_weighted=False),
               decoder_train=TrainConfig(epochs=5))
    m = get_method("guidance", ds.specs, ds.classes, inferior="clinic", superior=("derm",), tasks=("BWV",),
                   latent=32, guide_hidden=64, bottleneck=32, **cfg)
    with torch_threads(1), pytest.MonkeyPatch.context() as mp:
        mp.setattr(_TaskStage, "loss", spy)
        m.fit(ds, split, seed=0)
    assert seen and all(seen)
    bwv = m.retarget("BWV", ds)
    assert bwv.classes == ds.targets["BWV"].classes
    assert bwv.net.c_i.encoders is m.net.c_i.encoders and bwv.net.guide is m.net.guide
    assert set(bwv.stages) == {"C_I", "C_S", "G", "D_c", "S+I"}
    test = split.test[ds.present["clinic"].numpy()[split.test]]
    data = ds.with_target("BWV")
    p = bwv.predict(data, test).proba
    assert p.shape == (len(test), 2) and np.allclose(p.sum(1), 1, atol=1e-5)
    head = m._reusable.task_heads["C_I"]["BWV"]
    z = bwv.predict(data, test[:8], head="I").output.latents["z_I"]
    assert torch.allclose(bwv.predict(data, test[:8], head="I").output.logits, head(z), atol=1e-5)
    shared = m.latents(ds, test)  # one pass of the encoders serves the retargeted model's heads too
    for model, d in ((m, ds), (bwv, data)):
        probs = model.head_probabilities(shared)
        for h in ("I", "G(I)", "G(I)+I"):
            assert np.allclose(probs[h], model.predict(d, test, head=h).proba, atol=1e-5), h
        for h in ("S", "S+I"):
            assert np.allclose(probs[h], model.reference_predict(d, test, head=h).proba, atol=1e-5), h
    with pytest.raises(MMXError, match="retarget to 'PN' needs"):
        m.retarget("PN", ds)


def test_mcnemar_matches_hand_computed_cases():
    y = np.zeros(9, dtype=int)
    a = np.array([0, 1, 1, 1, 1, 1, 1, 0, 0])  # right on 0, 7, 8
    b = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0])  # right on 1..8
    # discordant: only A right = 1 (sample 0), only B right = 6 (samples 1..6); n = 7
    # two-sided exact p = 2 * P(X <= 1 | 7, 1/2) = 2 * (1 + 7) / 128 = 0.125
    assert metrics.mcnemar(y, a, b) == pytest.approx(0.125)
    assert metrics.mcnemar(y, b, a) == pytest.approx(0.125)
    assert metrics.mcnemar(y[:5], np.ones(5, int), np.zeros(5, int)) == pytest.approx(2 / 32)
    assert metrics.mcnemar(y, a, a) == 1.0
    assert metrics.mcnemar([0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0]) == 1.0  # 2 vs 2: capped at 1


def test_comparison_api(fitted):
    m, ds, split, _ = fitted
    k = int(split.test[3])
    t = sample_comparison(m, ds, k)
    assert list(t["class"]) == list(ds.classes) and t["true"].sum() == 1 and t["true"].iloc[int(ds.y[k])]
    assert np.allclose(t["I"], m.predict(ds, [k], head="I").proba[0])
    assert np.allclose(t["G(I)+I"], m.predict(ds, [k]).proba[0])
    assert np.allclose(t["change"], t["G(I)+I"] - t["I"])

    d = class_deltas(m, ds, split.test)
    y = ds.y[split.test].numpy()
    pred_i = m.predict(ds, split.test, head="I").label
    recall_i = [(pred_i[y == c] == c).mean() for c in range(ds.n_classes)]
    assert np.allclose(d["recall I"], recall_i) and list(d["support"]) == list(np.bincount(y, minlength=6))
    assert np.allclose(d["delta_f1"], d["f1 G(I)+I"] - d["f1 I"])
    test = head_test(m, ds, split.test)
    pred_g = m.predict(ds, split.test).label
    assert test["accuracy I"] == pytest.approx((pred_i == y).mean()) and test["n"] == len(y)
    assert test["only G(I)+I right"] == ((pred_g == y) & (pred_i != y)).sum()
    assert test["p"] == pytest.approx(metrics.mcnemar(y, pred_i, pred_g))

    idx = split.test[:40]
    pts = latent_map(m, ds, idx)
    assert len(pts) == 3 * len(idx) and set(pts["kind"]) == {"z_I", "G(z_I)", "z_S"}
    assert set(pts.loc[pts["kind"] == "z_I", "space"]) == {"inferior"}
    assert np.isfinite(pts[["x", "y"]].to_numpy()).all()
    g = m.predict(ds, idx).output.latents["G(z_I)"]
    zs = m.reference_predict(ds, idx, head="S").output.latents["z_S"]
    assert np.allclose(pts["mapping_error"].iloc[:len(idx)], ((g - zs) ** 2).mean(1).numpy(), atol=1e-6)
    with pytest.raises(MMXError, match="fitted 'guidance' model"):
        sample_comparison(get_method("early_lr", ds.specs, ds.classes), ds, 0)


def test_checkpoint_round_trip(fitted, tmp_path):
    from core.checkpoint import load_checkpoint, save_checkpoint

    m, ds, split, _ = fitted
    loaded = load_checkpoint(save_checkpoint(m, tmp_path / "g", task="cells"))
    for head in ("I", "G(I)", "G(I)+I"):
        assert np.allclose(loaded.predict(ds, split.test, head=head).proba, m.predict(ds, split.test, head=head).proba,
                           atol=1e-6)


def test_melanoma_from_predicted_criteria():
    from core.data.splits import Split
    from core.experiments.guidance import CRITERIA, ROWS, _melanoma_runs

    # case 0: PN atypical (2) + BWV present (2) = 4; case 1: only STR irregular = 1; case 2: nothing = 0
    classes = {"PN": [2, 0, 0], "BWV": [1, 0, 0], "VS": [0, 0, 0], "PIG": [0, 0, 0], "STR": [0, 2, 0],
               "DaG": [0, 0, 0], "RS": [0, 0, 0]}
    n_cls = {"PN": 3, "BWV": 2, "VS": 3, "PIG": 3, "STR": 3, "DaG": 3, "RS": 2}
    probs = {c: {r: np.eye(n_cls[c])[classes[c]] for r in ROWS} for c in CRITERIA}
    y = np.array([1, 0, 0])
    runs = _melanoma_runs(Split("s", np.array([5]), np.array([6]), np.array([0, 1, 2])), y, probs)
    thr1, thr3 = runs
    assert thr1["column"] == "melanoma>=1" and thr3["column"] == "melanoma>=3"
    assert thr1["metrics"]["I"]["accuracy"] == pytest.approx(2 / 3)  # score >= 1 flags cases 0 and 1
    assert thr3["metrics"]["I"]["accuracy"] == 1.0  # score >= 3 flags case 0 only
    assert thr3["metrics"]["I"]["auroc"] == 1.0 and thr3["mcnemar_p"] == 1.0
