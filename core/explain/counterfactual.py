"""What would change it: minimal counterfactual masks of one prediction.

Two questions a ranking alone cannot answer, asked of one sample and verified by forward passes:

- **Minimal flip**: the smallest set of units (omics features, or image patches of the model's grid)
  of one modality whose masking changes the predicted class; and the smallest set of whole
  modalities that does.
- **Minimal keep** (sufficiency): the smallest set that, with everything else of the modality (or
  every other modality) masked, keeps the prediction.

Unit sets grow in an explainer's order (the learned map, integrated gradients, occlusion,
GradientSHAP, or a seeded random order): the first ``k`` whose masking flips (keeps) the prediction,
found by a coarse pass over growing ``k`` and finer passes between the first that answers and the step
before it; then the set is pruned in rounds: a batched pass leaves out each unit in turn (which can
go), a second drops the first 2, 3, 5, ... of those together, those whose own removal left the answer
clearest first (the most that can go at once), until a pass shows that no single unit can go. So the
answer is *1-minimal* (no single unit is superfluous), not
the global minimum, which would need every subset. Modalities are few, so their sets come from an exact search
over all subsets. Masking replaces units with the fill the attributions use (the training mean
after scaling, or zeros; for whole modalities also ``absent``: the model's own handling of a missing
modality). "No flip within the budget" (a share of the modality's units) is an answer too.

Everything runs as batched forward passes of masked copies; the searches of one modality (one per
order) run in lockstep, so each pass holds what all of them ask for next, and a net whose modalities
meet only at fusion encodes the others once (:meth:`core.explain.attributions.Differentiable.varying`).
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
from core.explain.faithfulness import (LEARNED, NAMES, RANDOM, batched_proba, n_units, ranking, unit_scores,
                                       variant_proba)
from core.explain.informativeness import Informativeness
from core.explain.live import patch_grid, patch_size
from core.models.base import Method
from core.models.unet_gate import expand_patches

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
def _variants(diff: Differentiable, j: int, x: torch.Tensor, base: torch.Tensor, units: np.ndarray,
              kind: str) -> list[torch.Tensor]:
    """Input ``j`` (one sample, ``x``: 1 x ...) once per row of ``units`` (``V x n`` bool over the
    modality's units): the row's units at the fill (flip), or only they real (keep)."""
    m = diff.modalities[j]
    sel = torch.from_numpy(units).to(x.device)
    if diff.method.specs[m].kind != "omics":
        rows, cols = patch_grid(diff.method, m)
        sel = expand_patches(sel.view(len(units), 1, rows, cols), patch_size(diff.method), x.shape[-2], x.shape[-1])
    return list((torch.where(sel, base, x) if kind == "flip" else torch.where(sel, x, base)).split(1))


def _rows(n: int, sets: list) -> np.ndarray:
    """``len(sets) x n`` bool: True on each set's units."""
    out = np.zeros((len(sets), n), dtype=bool)
    for i, s in enumerate(sets):
        out[i, np.asarray(list(s), dtype=np.int64)] = True
    return out


def _hits(proba: np.ndarray, original: int, kind: str) -> np.ndarray:
    """Which variants (``V x 1 x C`` probabilities) answer the question: another class (flip), the
    same class (keep)."""
    return _margin(proba, original, kind) > 0


def _margin(proba: np.ndarray, original: int, kind: str) -> np.ndarray:
    """How clearly each variant answers: the best other class's probability over the original's
    (flip), or the other way round (keep); positive where it answers."""
    p = proba[:, 0]
    other = np.delete(p, original, axis=1).max(1) if p.shape[1] > 1 else np.zeros(len(p))
    return (other - p[:, original]) if kind == "flip" else (p[:, original] - other)


def _steps(limit: int) -> list[int]:
    """Growing set sizes for the coarse pass: 1, 2, 3, 4, then doubling."""
    out, k = [], 1
    while k < limit:
        out.append(k)
        k = k + 1 if k < 4 else 2 * k
    return [*out, limit]


def _first(prefixes, sizes: list[int], original: int, kind: str):
    """Generator: the first prefix size that answers and its probabilities (None and the last size's
    if none does): ``sizes`` in one pass, then between the first that answers and the size before it,
    up to 3 evenly spread sizes per pass until the two are adjacent. Yields the unit matrices of the
    prefix sizes (``prefixes``) it needs and is sent their probabilities."""
    proba = yield prefixes(sizes)
    hit = np.flatnonzero(_hits(proba, original, kind))
    if not len(hit):
        return None, proba[-1, 0]
    first = int(hit[0])
    lo, hi, p = (sizes[first - 1] if first else 0), sizes[first], proba[first, 0]
    while hi - lo > 1:
        between = sorted({int(round(v)) for v in np.linspace(lo, hi, 5)[1:-1]} - {lo, hi})
        proba = yield prefixes(between)
        hit = np.flatnonzero(_hits(proba, original, kind))
        if len(hit):
            first = int(hit[0])
            lo, hi, p = (between[first - 1] if first else lo), between[first], proba[first, 0]
        else:
            lo = between[-1]
    return hi, p


def _prune(chosen: np.ndarray, p: np.ndarray, original: int, kind: str, n: int):
    """Generator: drop units while the answer holds, in rounds of two batched passes: every single unit
    left out (which units can go), then the first 2, 3, ... of those left out together, those whose own
    removal left the answer clearest first (how many can go at once: the most that still answer). It
    ends on a pass in which no single unit can go, so the set is 1-minimal. ``chosen``: unit indices,
    most important first; ``p``: the probabilities of its variant. Yields ``V x n`` unit matrices, is
    sent their probabilities, returns the pruned set and its probabilities."""
    while len(chosen) > 1:
        row = np.zeros(n, dtype=bool)
        row[chosen] = True
        singles = np.tile(row, (len(chosen), 1))
        singles[np.arange(len(chosen)), chosen] = False
        tp = yield singles
        margin = _margin(tp, original, kind)
        ok = np.flatnonzero(margin > 0)
        if not len(ok):
            break
        ok = ok[np.lexsort((-ok, -margin[ok]))]  # the clearest first; ties: the lowest ranked
        removable = chosen[ok]
        gone, p = removable[:1], tp[int(ok[0]), 0]
        most = min(len(removable), len(chosen) - 1)  # never the empty set
        if most >= 2:
            counts = np.unique(np.r_[np.round(1.25 ** np.arange(1, 1 + math.ceil(math.log(most, 1.25)))), most]
                               .clip(2, most).astype(np.int64))
            together = np.tile(row, (len(counts), 1))
            together[:, removable] &= np.arange(len(removable))[None, :] >= counts[:, None]
            gp = yield together
            hit = np.flatnonzero(_hits(gp, original, kind))
            if len(hit):
                gone, p = removable[:counts[hit[-1]]], gp[int(hit[-1]), 0]
        chosen = chosen[~np.isin(chosen, gone)]
    return chosen, p


def _search(order: np.ndarray, limit: int, original: int, kind: str):
    """Generator: one order's set, grown (:func:`_first`) and pruned (:func:`_prune`); returns the
    set (None if none within ``limit`` units) and its probabilities."""
    n = len(order)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    first_k, p = yield from _first(lambda ks: rank[None, :] < np.asarray(ks)[:, None], _steps(limit), original, kind)
    if first_k is None:
        return None, p
    return (yield from _prune(order[:first_k], p, original, kind, n))


@torch.no_grad()
def grow_and_prune(diff: Differentiable, inputs: tuple, present: tuple, j: int, orders: dict[str, np.ndarray],
                   kind: str, fill: str, budget: float) -> dict[str, MaskSet]:
    """The set of input ``j``'s units grown in each of ``orders`` (name -> units, most important first)
    and pruned (see the module docstring). The searches run in lockstep: each forward pass holds the
    variants every unfinished search asks for next, and the other modalities are encoded once."""
    x, base = inputs[j], diff.baselines(inputs, fill)[j]
    proba_of = diff.varying(j, inputs, present)
    full = batched_proba(proba_of, [x], 1)[0, 0]
    original = int(full.argmax())
    n = n_units(diff.method, diff.modalities[j])
    limit = max(1, min(n, math.ceil(budget * n)))
    searches = {e: _search(np.asarray(o, dtype=np.int64), limit, original, kind) for e, o in orders.items()}
    rows = dict.fromkeys(orders, 1)
    done, asked = {}, {}
    for e, g in searches.items():
        asked[e] = next(g)
    while asked:
        names = list(asked)
        proba = batched_proba(proba_of, _variants(diff, j, x, base, np.concatenate([asked[e] for e in names]), kind), 1)
        parts = np.split(proba, np.cumsum([len(asked[e]) for e in names])[:-1])
        for e, part in zip(names, parts):
            rows[e] += len(asked.pop(e))
            try:
                asked[e] = searches[e].send(part)
            except StopIteration as stop:
                done[e] = stop.value
    out = {}
    for e, (chosen, p) in done.items():
        result = int(p.argmax())
        units = () if chosen is None else tuple(int(u) for u in chosen)
        out[e] = MaskSet(diff.modalities[j], e, kind, units, n, chosen is not None, original, result,
                         float(full[original]), float(p[original]), float(p[result]), rows[e])
    return {e: out[e] for e in orders}


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
        orders[RANDOM] = np.random.default_rng([seed, i, row]).permutation(n_units(diff.method, m))
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
        for kind in kinds:
            for e, s in grow_and_prune(diff, inputs, present, j, orders, kind, unit_fill, budget).items():
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
    units = _rows(n_units(diff.method, modality), [units])
    return variant_proba(diff, inputs, present, _variants(diff, j, inputs[j], base, units, kind), j)[0, 0]
