"""What would change it: minimal counterfactual masks of one prediction.

Two questions a ranking alone cannot answer, asked of one sample and verified by forward passes:

- **Minimal flip**: the smallest set of units (omics features, or image patches of the model's grid)
  of one modality whose masking changes the predicted class; and the smallest set of whole
  modalities that does.
- **Minimal keep** (sufficiency): the smallest set that, with everything else of the modality (or
  every other modality) masked, keeps the prediction.

Unit sets grow in an explainer's order (the learned map, integrated gradients, occlusion,
GradientSHAP, or a seeded random order): the first ``k`` whose masking flips (keeps) the prediction,
found by a coarse pass over growing ``k`` and an exact pass between the last two coarse steps; then
the set is pruned, lowest-ranked first: chunks of halving size while the answer holds without them,
then single elements, until a batched pass shows that no single element can go. So the answer is *1-minimal* (no single element is superfluous), not the global
minimum, which would need every subset. Modalities are few, so their sets come from an exact search
over all subsets. Masking replaces units with the fill the attributions use (the training mean
after scaling, or zeros; for whole modalities also ``absent``: the model's own handling of a missing
modality). "No flip within the budget" (a share of the modality's units) is an answer too.

Everything runs as batched forward passes of masked copies (:func:`core.explain.faithfulness.variant_proba`).
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from core.data.dataset import MultimodalDataset
from core.errors import MMXError
from core.explain.attributions import BASELINES, Differentiable, differentiable
from core.explain.faithfulness import LEARNED, NAMES, RANDOM, ranking, unit_scores, variant_proba
from core.explain.informativeness import Informativeness
from core.explain.live import patch_grid, patch_size
from core.models.base import Method
from core.models.masking import patch_grid_mask

KINDS = ("flip", "keep")
MODALITIES = "modalities"  # the "modality" of a set of whole modalities
EXACT = "exact"  # the "explainer" of a set found by exhaustive search
ORDERS = (LEARNED, "integrated_gradients", "occlusion", "gradient_shap")  # explainers whose order sets grow in
BUDGET = 0.5  # share of a modality's units a set may take
FILLS = (*BASELINES, "absent")


@dataclass
class MaskSet:
    """A verified counterfactual mask of one sample: ``units`` (unit indices, or modality names) masked
    (``flip``) or kept alone (``keep``), and what the model then predicts."""

    modality: str
    explainer: str
    kind: str
    units: tuple
    n_units: int
    found: bool
    original: int  # predicted class index without the mask
    result: int  # predicted class index with it
    p_before: float  # p(original class) without the mask
    p_after: float  # p(original class) with it
    p_result: float  # p(result class) with it
    rows: int = 0  # forward rows the search took

    @property
    def size(self) -> int:
        return len(self.units)

    @property
    def share(self) -> float:
        return self.size / self.n_units if self.n_units else float("nan")

    def patches(self, cols: int) -> list[tuple[int, int]]:
        """The set as (row, column) of the patch grid (image modalities)."""
        return [(int(u) // cols, int(u) % cols) for u in self.units]


@dataclass
class Counterfactuals:
    """Every set found for one sample: ``sets[(modality, explainer, kind)]``."""

    id: str
    classes: tuple[str, ...]
    fill: str
    budget: float
    sets: dict[tuple[str, str, str], MaskSet] = field(default_factory=dict)
    seconds: float = 0.0

    def table(self, names: dict[str, tuple[str, ...]] | None = None, cols: dict[str, int] | None = None) -> pd.DataFrame:
        """One row per set: modality, explainer, kind, size, share of the units, the class it leads to
        and both probabilities, and the units by name (``names``: feature names per modality;
        ``cols``: patch-grid columns per image modality)."""
        rows = []
        for (m, e, k), s in self.sets.items():
            if m == MODALITIES:
                units = ", ".join(map(str, s.units))
            elif names and m in names:
                units = ", ".join(names[m][int(u)] for u in s.units)
            elif cols and m in cols:
                units = ", ".join(f"({r}, {c})" for r, c in s.patches(cols[m]))
            else:
                units = ", ".join(map(str, s.units))
            rows.append({"modality": m, "explainer": NAMES.get(e, e), "kind": k, "found": s.found, "size": s.size,
                         "share %": round(100 * s.share, 1), "predicted": self.classes[s.original],
                         "becomes": self.classes[s.result], f"p(original) before": round(s.p_before, 4),
                         "p(original) after": round(s.p_after, 4), "p(new class) after": round(s.p_result, 4),
                         "units": units})
        return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- one modality's units
def _select(diff: Differentiable, j: int, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Bool mask of input ``j`` (one sample, ``x``: 1 x ...) that is True on the ``units``."""
    m = diff.modalities[j]
    if diff.method.specs[m].kind == "omics":
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device).index_fill_(1, units.to(x.device), True)
    return patch_grid_mask(1, x.shape[-2], x.shape[-1], patch_size(diff.method), units.to(x.device)[None])


def _variant(diff: Differentiable, j: int, x: torch.Tensor, base: torch.Tensor, units, kind: str) -> torch.Tensor:
    """Input ``j`` with ``units`` at the fill (flip) or only ``units`` real (keep)."""
    sel = _select(diff, j, x, torch.as_tensor(list(units), dtype=torch.long))
    return torch.where(sel, base, x) if kind == "flip" else torch.where(sel, x, base)


def _hits(proba: np.ndarray, original: int, kind: str) -> np.ndarray:
    """Which variants (``V x 1 x C`` probabilities) answer the question: another class (flip), the
    same class (keep)."""
    pred = proba[:, 0].argmax(1)
    return pred != original if kind == "flip" else pred == original


def _steps(limit: int) -> list[int]:
    """Growing set sizes for the coarse pass: every size up to 8, then about 25 % more each step."""
    out, k = [], 1
    while k < limit:
        out.append(k)
        k = k + 1 if k < 8 else max(k + 1, math.ceil(k * 1.25))
    return [*out, limit]


def _prune(run, chosen: list, p: np.ndarray, original: int, kind: str) -> tuple[list, np.ndarray]:
    """Drop units while the answer holds, the lowest-ranked first: chunks of halving size (one batched
    pass per removal), then single units (a batched pass finds the removable ones, each is then
    dropped if the answer still holds without it); it ends on a batched pass in which no single unit
    can go. ``p``: the probabilities of ``chosen``'s variant; returned for the pruned set."""
    size = len(chosen) // 2
    while (size := min(size, len(chosen) // 2)) > 1:
        chunks = [set(chosen[i:i + size]) for i in range(0, len(chosen), size)]
        trials = [t for c in chunks if (t := [u for u in chosen if u not in c])]
        tp = run(trials)
        ok = np.flatnonzero(_hits(tp, original, kind))
        if len(ok):
            chosen, p = trials[int(ok[-1])], tp[int(ok[-1]), 0]
        else:
            size //= 2
    while len(chosen) > 1:
        trials = [chosen[:i] + chosen[i + 1:] for i in range(len(chosen))]
        tp = run(trials)
        ok = np.flatnonzero(_hits(tp, original, kind))
        if not len(ok):
            break
        removable = [chosen[int(i)] for i in ok[::-1]]  # the lowest ranked first
        chosen, p = trials[int(ok[-1])], tp[int(ok[-1]), 0]
        for u in removable[1:]:
            trial = [v for v in chosen if v != u]
            if not trial:
                break
            one = run([trial])
            if _hits(one, original, kind)[0]:
                chosen, p = trial, one[0, 0]
    return chosen, p


def grow_and_prune(diff: Differentiable, inputs: tuple, present: tuple, j: int, order: np.ndarray, kind: str,
                   fill: str, budget: float) -> MaskSet:
    """The set of input ``j``'s units, grown in ``order`` and pruned (see the module docstring)."""
    x, base = inputs[j], diff.baselines(inputs, fill)[j]
    full = variant_proba(diff, inputs, present, [x], j)[0, 0]
    original = int(full.argmax())
    n = len(order)
    limit = max(1, min(n, math.ceil(budget * n)))
    rows = 1

    def run(sets: list) -> np.ndarray:
        nonlocal rows
        rows += len(sets)
        return variant_proba(diff, inputs, present, [_variant(diff, j, x, base, s, kind) for s in sets], j)

    coarse = _steps(limit)
    proba = run([order[:k] for k in coarse])
    hit = np.flatnonzero(_hits(proba, original, kind))
    if not len(hit):
        p = proba[-1, 0]
        return MaskSet(diff.modalities[j], "", kind, (), n, False, original, int(p.argmax()), float(full[original]),
                       float(p[original]), float(p.max()), rows)
    first = int(hit[0])
    lo = coarse[first - 1] if first else 0
    between = list(range(lo + 1, coarse[first]))
    if between:
        fine = run([order[:k] for k in between])
        fine_hit = np.flatnonzero(_hits(fine, original, kind))
        if len(fine_hit):
            first_k, p = between[int(fine_hit[0])], fine[int(fine_hit[0]), 0]
        else:
            first_k, p = coarse[first], proba[first, 0]
    else:
        first_k, p = coarse[first], proba[first, 0]
    chosen, p = _prune(run, list(order[:first_k]), p, original, kind)
    result = int(p.argmax())
    return MaskSet(diff.modalities[j], "", kind, tuple(int(u) for u in chosen), n, True, original, result,
                   float(full[original]), float(p[original]), float(p[result]), rows)


# ----------------------------------------------------------------------------- whole modalities
def modality_sets(diff: Differentiable, inputs: tuple, present: tuple, kind: str, fill: str) -> MaskSet:
    """The smallest set of the sample's modalities whose masking flips (``flip``) or which alone keeps
    (``keep``) the prediction, by exhaustive search (ties: the largest effect on the original class's
    probability). ``fill='absent'`` treats masked modalities as missing."""
    mods = diff.modalities
    have = [i for i, p in enumerate(present) if bool(p[0])]
    base = diff.baselines(inputs, fill) if fill != "absent" else inputs
    full = variant_proba(diff, inputs, present, [inputs], None)[0, 0]
    original = int(full.argmax())
    subsets = [c for r in range(1, len(have) + 1) for c in itertools.combinations(have, r)]
    if kind == "keep":
        subsets = [s for s in subsets if len(s) < len(have)] or subsets

    def masked(s: tuple[int, ...]) -> set[int]:
        return set(s) if kind == "flip" else set(have) - set(s)

    variants = [tuple(base[i] if i in masked(s) else inputs[i] for i in range(len(mods))) for s in subsets]
    pres = [tuple(torch.zeros_like(present[i]) if fill == "absent" and i in masked(s) else present[i]
                  for i in range(len(mods))) for s in subsets]
    proba = variant_proba(diff, inputs, present, variants, None, pres) if subsets else np.zeros((0, 1, len(full)))
    hits = [k for k in range(len(subsets)) if _hits(proba[k:k + 1], original, kind)[0]]
    if not hits:
        return MaskSet(MODALITIES, EXACT, kind, (), len(have), False, original, original, float(full[original]),
                       float(full[original]), float(full[original]), len(subsets) + 1)
    size = min(len(subsets[k]) for k in hits)
    best = min((k for k in hits if len(subsets[k]) == size),
               key=lambda k: proba[k, 0, original] if kind == "flip" else -proba[k, 0, original])
    p = proba[best, 0]
    return MaskSet(MODALITIES, EXACT, kind, tuple(mods[i] for i in subsets[best]), len(have), True, original,
                   int(p.argmax()), float(full[original]), float(p[original]), float(p.max()), len(subsets) + 1)


# ----------------------------------------------------------------------------- one sample, every explainer
def unit_orders(method: Method, data: MultimodalDataset, row: int, explained: dict[str, Informativeness],
                seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """``orders[modality][explainer]``: the sample's units, most important first, for each explanation
    of the one sample ``row`` and a seeded random order."""
    diff = differentiable(method)
    for name, info in explained.items():
        if list(map(str, info.ids)) != [str(data.ids[row])]:
            raise MMXError(f"explanation {name!r} is not of sample {data.ids[row]!r} alone")
    out = {}
    for i, m in enumerate(diff.modalities):
        if not bool(data.present[m][row]):
            continue
        orders = {e: ranking(s)[0] for e, info in explained.items()
                  if (s := unit_scores(diff.method, info, m)) is not None and np.isfinite(s[0]).any()}
        n = diff.method.specs[m].n_features if diff.method.specs[m].kind == "omics" else int(
            np.prod(patch_grid(diff.method, m)))
        orders[RANDOM] = np.random.default_rng([seed, i, row]).permutation(n)
        out[m] = orders
    return out


def counterfactuals(method: Method, data: MultimodalDataset, row: int, explained: dict[str, Informativeness], *,
                    fill: str = "mean", budget: float = BUDGET, kinds: tuple[str, ...] = KINDS,
                    seed: int = 0) -> Counterfactuals:
    """Minimal flip and keep sets of sample ``row`` for every modality and every explanation in
    ``explained`` (name -> that sample's maps, e.g. from
    :func:`core.explain.faithfulness.explanations`) plus a random order, and over whole modalities.
    ``fill`` masks units (``mean`` or ``zeros``); ``absent`` is for whole modalities only (units then
    take the training mean)."""
    if fill not in FILLS:
        raise MMXError(f"fill {fill!r}: use one of {FILLS}")
    if not 0 < budget <= 1:
        raise MMXError(f"budget must be a share of the units in (0, 1], got {budget}")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise MMXError(f"unknown kinds {unknown}; use {KINDS}")
    t0 = time.perf_counter()
    diff = differentiable(method)
    inputs, present = diff.inputs(data, np.asarray([row]))
    out = Counterfactuals(str(data.ids[row]), method.classes, fill, budget)
    unit_fill = "mean" if fill == "absent" else fill
    for m, orders in unit_orders(method, data, row, explained, seed).items():
        j = diff.modalities.index(m)
        for e, order in orders.items():
            for kind in kinds:
                s = grow_and_prune(diff, inputs, present, j, order, kind, unit_fill, budget)
                s.explainer = e
                out.sets[(m, e, kind)] = s
    if len(diff.modalities) > 1:
        for kind in kinds:
            out.sets[(MODALITIES, EXACT, kind)] = modality_sets(diff, inputs, present, kind, fill)
    out.seconds = time.perf_counter() - t0
    return out


def try_set(method: Method, data: MultimodalDataset, row: int, modality: str, units, kind: str = "flip",
            fill: str = "mean") -> np.ndarray:
    """Class probabilities of sample ``row`` with ``units`` of ``modality`` masked (``flip``) or kept alone
    (``keep``): to check an edited set."""
    diff = differentiable(method)
    inputs, present = diff.inputs(data, np.asarray([row]))
    j = diff.modalities.index(modality)
    base = diff.baselines(inputs, "mean" if fill == "absent" else fill)[j]
    return variant_proba(diff, inputs, present, [_variant(diff, j, inputs[j], base, units, kind)], j)[0, 0]
