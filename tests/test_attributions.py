"""Captum attributions in the learned maps' shape: every differentiable method on the synthetic
demo task (tiny fits), the shipped cells model, and a probe model in which one known feature (or
one known patch) alone decides, so the right answer is known."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from core.errors import MMXError
from core.explain.attributions import EXPLAINERS, Attributions, attribute
from core.explain.informativeness import Informativeness
from core.explain.live import patch_grid, patch_order
from core.models.base import DeepConfig, Net, TorchMethod
from core.models.registry import get_method, method_entry, with_epochs
from core.train.loop import FitResult
from core.train.output import ModelOutput

# method -> (modalities used, config): every torch-network method, one epoch per training stage
METHODS = {
    "mm_dynamics": (None, {}), "mm_static": (None, {}), "late_mlp": (None, {}), "healnet": (None, {}),
    "mcat": (("rna", "protein"), {}), "cnn": (("image",), {}), "hypermm": (None, {"backbone": "small_cnn"}),
    "guidance": (None, {}), "unimodal": (None, {"modality": "image", "base": "mm_dynamics",
                                                "base_config": {"epochs": 1}}),
}
PROBE_FEATURE = 7  # rna feature the omics probe reads
PROBE_PATCH = 21  # image patch (row 2, column 5 of the demo's 8 x 8 grid) the image probe reads


@pytest.fixture(scope="module")
def split(demo):
    return demo.splits[demo.default_split][0]


@pytest.fixture(scope="module")
def fitted(demo, split, one_thread):
    out = {}
    for name, (mods, cfg) in METHODS.items():
        data = demo.dataset.select(list(mods)) if mods else demo.dataset
        overrides = cfg if name == "unimodal" else with_epochs(method_entry(name).config_cls, cfg, 1)
        method = get_method(name, data.specs, data.classes, **overrides)
        method.fit(data, split, seed=0, device="cpu")
        out[name] = method
    return out


def _expected_modalities(method) -> tuple[str, ...]:
    return (method.modality,) if method.name == "unimodal" else method.predicts_from()


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_and_explainer_gives_the_learned_maps_shape(fitted, demo, split, name):
    method, data, rows = fitted[name], demo.dataset, split.test[:4]
    for explainer in EXPLAINERS:
        a = attribute(method, data, rows, explainer)
        assert isinstance(a, Informativeness) and a.explainer == explainer
        assert np.array_equal(a.ids, data.ids[rows]) and a.proba.shape == (4, data.n_classes)
        assert np.array_equal(a.target, a.proba.argmax(1))
        assert set(a.feature_scores) | set(a.patch_maps) == set(_expected_modalities(method))
        for m, v in a.feature_scores.items():
            assert v.shape == (4, data.specs[m].n_features) and a.feature_names[m] == data.specs[m].feature_names
        for m, v in a.patch_maps.items():
            assert v.shape == (4, *patch_grid(method.inner if name == "unimodal" else method, m))
            assert a.image_hw[m] == (32, 32) and a.pixel_map(m, 0).shape == (32, 32)
        for v in (*a.feature_scores.values(), *a.patch_maps.values()):  # normalised per sample: [-1, 1], max |.| 1
            top = np.abs(v.reshape(4, -1)).max(1)
            assert np.isfinite(v).all() and np.all((top == 1) | (top == 0))


def test_integrated_gradients_are_complete_in_probability_units(fitted, demo, split):
    """Unnormalised IG of a sample adds up to p(x) - p(baseline) over all units and modalities:
    attributions are taken on the prepared inputs, against the training-mean baseline."""
    method, rows = fitted["mm_dynamics"], split.test[:6]
    a = attribute(method, demo.dataset, rows, "integrated_gradients", normalize=False, n_steps=64)
    total = sum(v.reshape(6, -1).sum(1) for v in (*a.feature_scores.values(), *a.patch_maps.values()))
    at_mean = method.predict(demo.dataset, rows, mask={m: "mean" for m in method.specs}).proba
    gap = a.proba[np.arange(6), a.target] - at_mean[np.arange(6), a.target]
    assert np.allclose(total, gap, atol=0.01)


def test_absent_modality_is_nan_and_targets_are_checked(fitted, demo, split):
    method, rows = fitted["mm_dynamics"], split.test[:4]
    lacking = demo.dataset.present["rna"].clone()
    lacking[torch.as_tensor(rows[:2])] = False
    data = dataclasses.replace(demo.dataset, present={**demo.dataset.present, "rna": lacking}, _hash=None)
    a = attribute(method, data, rows, "integrated_gradients", target=1)
    assert np.isnan(a.feature_scores["rna"][:2]).all() and np.isfinite(a.feature_scores["rna"][2:]).all()
    assert np.isfinite(a.feature_scores["protein"]).all() and (a.target == 1).all()
    for bad in (9, [0, 1]):
        with pytest.raises(MMXError, match="target"):
            attribute(method, data, rows, "occlusion", target=bad)
    with pytest.raises(MMXError, match="unknown explainer"):
        attribute(method, data, rows, "lime")
    with pytest.raises(MMXError, match="baseline"):
        attribute(method, data, rows, baseline="blur")
    with pytest.raises(MMXError, match="no samples"):
        attribute(method, data, rows[:0])


def test_sklearn_methods_are_refused(demo, split):
    method = get_method("early_lr", demo.dataset.specs, demo.dataset.classes, search=False)
    method.fit(demo.dataset, split, seed=0)
    with pytest.raises(MMXError, match="not a torch network"):
        attribute(method, demo.dataset, split.test[:2])


def test_gradient_shap_is_deterministic_for_a_seed(fitted, demo, split):
    method, rows = fitted["late_mlp"], split.test[:5]
    one, two = (attribute(method, demo.dataset, rows, "gradient_shap", seed=3) for _ in range(2))
    other = attribute(method, demo.dataset, rows, "gradient_shap", seed=4)
    assert all(np.array_equal(one.feature_scores[m], two.feature_scores[m]) for m in one.feature_scores)
    assert not np.array_equal(one.feature_scores["rna"], other.feature_scores["rna"])


def test_large_images_take_fewer_rows_per_gradient_pass(fitted, demo, split, monkeypatch):
    """At a pixel budget of 20 demo images per pass, no forward pass holds more than 20 rows (without it:
    6 samples x 32 steps, and 6 x 16 draws; at 224 px 256 rows of EfficientNet-Lite0 held over 10 GB);
    integrated gradients come out the same, GradientSHAP whole."""
    from core.explain import attributions

    method, rows = fitted["cnn"], split.test[:6]
    ig = attribute(method, demo.dataset, rows, "integrated_gradients")
    _, h, w = method.specs["image"].image_shape
    monkeypatch.setattr(attributions, "GRADIENT_PIXELS", 20 * h * w)
    assert attributions.gradient_rows(method) == 20
    seen: list[int] = []
    hook = method.net.register_forward_pre_hook(lambda _, args: seen.append(len(args[0]["image"])))
    try:
        small = attribute(method, demo.dataset, rows, "integrated_gradients")
        shap = attribute(method, demo.dataset, rows, "gradient_shap")
    finally:
        hook.remove()
    assert seen and max(seen) <= 20, seen
    assert np.allclose(small.patch_maps["image"], ig.patch_maps["image"], atol=1e-5)
    assert shap.patch_maps["image"].shape == ig.patch_maps["image"].shape
    assert np.isfinite(shap.patch_maps["image"]).all()


# ----------------------------------------------------------------------------- a model with a known answer
class ProbeNet(Net):
    """Two classes decided by one unit: logits (v, -v) with v = 8 x (unit - its training mean);
    the other classes stay far behind. Nothing else reaches the output."""

    def __init__(self, modality: str, unit: int, patch: int, n_classes: int):
        super().__init__()
        self.modality, self.unit, self.patch, self.n_classes = modality, unit, patch, n_classes
        self.register_buffer("centre", torch.zeros(()))

    def read(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return x[:, self.unit]
        cols = -(-x.shape[-1] // self.patch)
        r, c = divmod(self.unit, cols)
        p = self.patch
        return x[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p].mean((1, 2, 3))

    def forward(self, x, present) -> ModelOutput:
        v = 8 * (self.read(x[self.modality]) - self.centre)
        rest = torch.full((len(v), self.n_classes - 2), -6.0, dtype=v.dtype)
        return ModelOutput(torch.cat([torch.stack([v, -v], 1), rest], 1))


class Probe(TorchMethod):
    name = "probe"

    def __init__(self, specs, classes, modality: str, unit: int):
        self.probe = (modality, unit)
        super().__init__(specs, classes, DeepConfig())

    def build_net(self) -> Net:
        return ProbeNet(*self.probe, 4, self.n_classes)


def make_probe(demo, split, modality: str, unit: int) -> Probe:
    data = demo.dataset
    probe = Probe(data.specs, data.classes, modality, unit)
    tr = torch.as_tensor(split.train)
    probe.prep.fit(data.modalities, data.present, tr)
    probe.net.centre.fill_(float(probe.net.read(probe.prep.training_mean(modality)[None])[0]))
    probe.fit_result = FitResult(0, 0.0, 0, 0.0)
    return probe


@pytest.fixture(scope="module")
def probes(demo, split):
    return {m: make_probe(demo, split, m, unit) for m, unit in (("rna", PROBE_FEATURE), ("image", PROBE_PATCH))}


def decided(probe: Probe, demo, split) -> np.ndarray:
    """Test rows where the probed unit is clearly away from its baseline (a clear decision)."""
    rows = split.test
    v = probe.net.read(probe.prepared(demo.dataset.batch(rows))[probe.probe[0]]) - probe.net.centre
    return rows[(v.abs() > 0.05).numpy()][:12]


@pytest.mark.parametrize("modality", ["rna", "image"])
def test_ig_occlusion_and_ablation_rank_the_known_unit_first(probes, demo, split, modality):
    """(That the deletion curve does too, and a random order does not: tests/test_faithfulness.py.)"""
    probe = probes[modality]
    rows = decided(probe, demo, split)
    assert len(rows) >= 8
    unit = probe.probe[1]
    for explainer in ("integrated_gradients", "occlusion", "feature_ablation"):
        a = attribute(probe, demo.dataset, rows, explainer)
        scores = (a.feature_scores if modality == "rna" else a.patch_maps)[modality].reshape(len(rows), -1)
        assert (scores.argmax(1) == unit).all(), explainer
        assert np.allclose(scores[:, unit], 1.0)  # the strongest evidence, after normalisation
        if modality == "image":  # the live patch order (the dashboard's) reads attributions as it reads gates
            assert patch_order(probe, a, "image", "most")[0] == unit


@pytest.fixture(scope="module")
def cells_model(data_dir):
    from core.shipped import load

    return load("cells", "mm_dynamics")


def test_shipped_cells_model_attributions(cells_model, one_thread):
    from core.explain.sample import heldout_cohort

    cohort = heldout_cohort(cells_model)
    rows = cohort.idx[:3]
    specs = cells_model.specs
    for explainer in ("integrated_gradients", "gradient_shap", "occlusion"):
        a = attribute(cells_model, cohort.data, rows[:2] if explainer == "occlusion" else rows, explainer)
        n = len(a.ids)
        assert isinstance(a, Attributions) and a.proba.shape == (n, 6)
        assert a.feature_scores["rna"].shape == (n, 1000) and a.feature_scores["protein"].shape == (n, 134)
        assert a.patch_maps["image"].shape == (n, 16, 16) and a.patch_size["image"] == 4
        assert a.image_hw["image"] == (64, 64) and a.feature_names["rna"] == specs["rna"].feature_names
        assert len(a.top_features("rna", 5, sample=0)) == 5
        assert all(np.isfinite(v).all() and np.abs(v).max() <= 1 + 1e-6
                   for v in (*a.feature_scores.values(), *a.patch_maps.values()))
