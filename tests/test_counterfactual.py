"""Counterfactual masks: on toy models whose decision rests on known features, patches or modalities
the minimal flip set is exactly those; a returned set is verified (it flips, or keeps) and has no
removable element; whole-modality sets come from an exhaustive search."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.data.splits import Split
from core.errors import MMXError
from core.explain.attributions import Differentiable, differentiable
from core.explain.counterfactual import (
    MODALITIES,
    counterfactuals,
    grow_and_prune,
    modality_sets,
    try_set,
    unit_orders,
)
from core.explain.faithfulness import RANDOM, explanations, variant_proba
from core.models.registry import get_method


@pytest.fixture(scope="module")
def fitted(demo):
    """A fitted demo model: its specs, input preparation and training mean are real; the tests give it
    toy decision functions."""
    data = demo.dataset
    split = Split("s", np.arange(0, 60), np.arange(60, 80), np.arange(80, 100), seed=0)
    m = get_method("mm_static", data.specs, data.classes, train={"epochs": 1})
    m.fit(data, split, seed=0, device="cpu")
    return m, data


def _toy(method, logits_of) -> Differentiable:
    real = differentiable(method)
    return Differentiable(real.method, real.modalities, real.prepare, logits_of)


def _rna_rule(features: tuple[int, ...]):
    """Class 0 while the listed RNA features together stay above their fill; masking all of them
    (but no fewer) hands the decision to class 1."""
    def logits(x, present):
        evidence = x["rna"][:, list(features)].sum(1)  # 1 per listed feature left at 1, 0 at the fill
        return torch.stack([evidence, torch.full_like(evidence, 0.5), torch.full_like(evidence, -9.0),
                            torch.full_like(evidence, -9.0)], 1)
    return logits


def test_a_toy_omics_rule_gets_exactly_its_features(fitted):
    method, data = fitted
    diff = differentiable(method)
    inputs, present = diff.inputs(data, np.array([0]))
    j = diff.modalities.index("rna")
    base = diff.baselines(inputs, "zeros")[j]
    x = inputs[j].clone()
    x[0] = base[0]
    x[0, [3, 7]] = 1.0  # the two features carry the evidence; with either one left, class 0 still wins
    inputs = tuple(x if i == j else v for i, v in enumerate(inputs))
    toy = _toy(method, _rna_rule((3, 7)))
    n = x.shape[1]
    ranked = np.array([3, 7, *[k for k in range(n) if k not in (3, 7)]])
    shuffled = np.random.default_rng(0).permutation(n)
    orders = {"ranked": ranked, "shuffled": shuffled}  # searched in lockstep, each its own answer
    flips = grow_and_prune(toy, inputs, present, j, orders, "flip", "zeros", budget=1.0)
    keeps = grow_and_prune(toy, inputs, present, j, orders, "keep", "zeros", budget=1.0)
    for name in orders:
        s, k = flips[name], keeps[name]
        assert s.explainer == k.explainer == name
        assert s.found and sorted(s.units) == [3, 7] and s.original == 0 and s.result == 1, s
        assert k.found and k.size == 1 and k.units[0] in (3, 7) and k.result == 0, k
    assert flips["ranked"].rows < flips["shuffled"].rows  # the right order needs fewer variants


def test_a_toy_patch_rule_gets_exactly_its_patches(fitted):
    method, data = fitted
    diff = differentiable(method)
    inputs, present = diff.inputs(data, np.array([1]))
    j = diff.modalities.index("image")
    p = 4  # demo images: 32 px, 8 x 8 patches of 4 px
    wanted = (5, 10, 42)

    def logits(x, present):
        img = x["image"]
        score = sum(img[:, :, (u // 8) * p:(u // 8 + 1) * p, (u % 8) * p:(u % 8 + 1) * p].mean((1, 2, 3))
                    for u in wanted)
        return torch.stack([score, 0.05 + 0 * score, -9 + 0 * score, -9 + 0 * score], 1)  # 0.1 a listed patch

    x = torch.zeros_like(inputs[j])
    for u in wanted:
        x[:, :, (u // 8) * p:(u // 8 + 1) * p, (u % 8) * p:(u % 8 + 1) * p] = 0.1
    inputs = tuple(x if i == j else v for i, v in enumerate(inputs))
    toy = _toy(method, logits)
    order = np.random.default_rng(1).permutation(64)
    s = grow_and_prune(toy, inputs, present, j, {"o": order}, "flip", "zeros", budget=1.0)["o"]
    assert s.found and sorted(s.units) == sorted(wanted) and s.result == 1, s  # two left still outweigh class 1
    k = grow_and_prune(toy, inputs, present, j, {"o": order}, "keep", "zeros", budget=1.0)["o"]
    assert k.found and k.size == 1 and k.units[0] in wanted, k  # one real patch alone keeps class 0


def test_no_flip_within_the_budget_is_an_answer(fitted):
    method, data = fitted
    diff = differentiable(method)
    inputs, present = diff.inputs(data, np.array([2]))
    toy = _toy(method, lambda x, p: torch.tensor([[5.0, 0.0, 0.0, 0.0]]).expand(len(x["rna"]), 4))
    j = diff.modalities.index("protein")
    s = grow_and_prune(toy, inputs, present, j, {"o": np.arange(inputs[j].shape[1])}, "flip", "mean", budget=0.25)["o"]
    assert not s.found and s.units == () and s.result == s.original == 0


def test_whole_modality_search_is_exact(fitted):
    method, data = fitted
    diff = differentiable(method)
    inputs, present = diff.inputs(data, np.array([3]))

    def logits(x, present):  # class 0 needs rna AND protein present; image alone never decides
        both = present["rna"].float() * present["protein"].float()
        return torch.stack([both, 0.5 * torch.ones_like(both), -9 + 0 * both, -9 + 0 * both], 1)

    toy = _toy(method, logits)
    flip = modality_sets(toy, inputs, present, "flip", "absent")
    assert flip.found and flip.size == 1 and flip.units[0] in ("rna", "protein") and flip.result == 1
    keep = modality_sets(toy, inputs, present, "keep", "absent")
    assert keep.found and sorted(keep.units) == ["protein", "rna"]


def test_every_returned_set_answers_and_has_no_removable_element(fitted):
    """On a real fitted model, every explainer's flip and keep sets: the set itself answers (verified
    here again) and dropping any one element no longer does."""
    method, data = fitted
    diff = differentiable(method)
    for row in (80, 85, 90):
        explained, _ = explanations(method, data, np.array([row]), ("integrated_gradients",))
        cf = counterfactuals(method, data, row, explained, fill="mean", budget=1.0)
        inputs, present = diff.inputs(data, np.array([row]))
        assert set(cf.sets) >= {("rna", RANDOM, "flip"), ("rna", "integrated_gradients", "keep"),
                                (MODALITIES, "exact", "flip")}
        for (m, e, kind), s in cf.sets.items():
            if m == MODALITIES or not s.found:
                continue
            def answers(units) -> bool:
                p = try_set(method, data, row, m, units, kind, "mean")
                return (p.argmax() != s.original) if kind == "flip" else (p.argmax() == s.original)

            assert answers(s.units), (m, e, kind)
            assert all(not answers(s.units[:i] + s.units[i + 1:]) for i in range(s.size)) or s.size == 1, (m, e)


def test_varying_one_modality_encodes_the_others_once_and_answers_as_the_whole_net(fitted):
    """A net whose modalities meet only at fusion gives the same probabilities when the inputs that
    do not vary are encoded once as when every variant runs through the whole net."""
    method, data = fitted
    diff = differentiable(method)
    assert diff.fusion is not None
    inputs, present = diff.inputs(data, np.array([80, 81, 82]))
    g = torch.Generator().manual_seed(0)
    for j, x in enumerate(inputs):
        variants = [x * torch.rand(x.shape, generator=g) for _ in range(4)]
        fused = variant_proba(diff, inputs, present, variants, j)
        whole = Differentiable(diff.method, diff.modalities, diff.prepare, diff.logits_of)  # no fusion shortcut
        plain = variant_proba(whole, inputs, present, variants, j)
        with torch.no_grad():
            direct = np.stack([diff.proba(*(v if i == j else u for i, u in enumerate(inputs)), *present).numpy()
                               for v in variants])
        np.testing.assert_allclose(fused, plain, atol=1e-6)
        np.testing.assert_allclose(fused, direct, atol=1e-6)


def test_orders_and_settings_are_checked(fitted):
    method, data = fitted
    explained, _ = explanations(method, data, np.array([80, 81]), ("integrated_gradients",))
    with pytest.raises(MMXError, match="is not of sample"):
        unit_orders(method, data, 80, explained)
    one, _ = explanations(method, data, np.array([80]), ("integrated_gradients",))
    with pytest.raises(MMXError, match="fill"):
        counterfactuals(method, data, 80, one, fill="gray")
    with pytest.raises(MMXError, match="budget"):
        counterfactuals(method, data, 80, one, budget=0)
