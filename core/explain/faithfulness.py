"""Are explanations faithful to the model? Deletion and insertion curves (Petsiuk et al. 2018)
for the learned maps, every captum explainer and a random order, per sample and over a cohort.

What is removed: **one modality at a time**. For modality m, its units (omics features, or
patches of the model's patch grid, all channels) are ranked by an explainer's score for the
sample, highest first (ties by index); the other modalities stay as they are. *Deletion* replaces
the first k units with the fixed baseline (the training mean by default, as the attributions use;
a fill of :mod:`core.models.masking`), going from the real input to the all-baseline one;
*insertion* starts from the all-baseline modality and puts the first k real units back. The curve
is the probability of the originally predicted class at ``steps + 1`` fractions 0, 1/steps, ..., 1
of the modality's units (k = round(fraction x units)). Per-modality curves keep explainers
comparable: units of different modalities (a gene, a 48-value patch) and gate values of different
gates are on no common scale, so ranking them together would measure the scales, not the orders.

AUC is the trapezoid area under a curve over fractions in [0, 1], so it lies in [0, 1]. Deletion:
lower is more faithful (the probability falls as soon as the top units go); insertion: higher is
more faithful. Each explainer is compared with the seeded random order, paired by sample, with a
two-sided Wilcoxon signed-rank test (scipy).

Cost is bounded: every curve is ``steps - 1`` forward rows per sample (the two end points are shared
by all orders), batched several masked copies per forward pass.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy.stats import wilcoxon

from core.data.dataset import MultimodalDataset
from core.errors import MMXError
from core.explain.attributions import (
    BASELINES,
    EXPLAINERS,
    LABELS,
    ROWS,
    Differentiable,
    attribute,
    differentiable,
    sample_rows,
    to_patches,
)
from core.explain.informativeness import Informativeness, explain
from core.explain.live import patch_grid, patch_size
from core.models.base import Method
from core.models.masking import patch_grid_mask

STEPS = 20
CURVES = ("deletion", "insertion")
LEARNED = "learned"  # the model's own maps (MM dynamics' FI gates), from :func:`core.explain.informativeness.explain`
RANDOM = "random"  # a seeded random order per sample: the reference every explainer must beat
NAMES = {LEARNED: "Learned FI", **LABELS, RANDOM: "Random"}
ALPHA = 0.05


@dataclass
class Faithfulness:
    """Deletion and insertion curves of samples ``ids``: ``curves[modality][explainer][curve]`` is
    ``N x (steps + 1)`` probabilities of class ``target`` (NaN rows: the sample lacks the modality)."""

    ids: np.ndarray
    classes: tuple[str, ...]
    target: np.ndarray
    fractions: np.ndarray
    curves: dict[str, dict[str, dict[str, np.ndarray]]]
    baseline: str
    seed: int
    seconds: dict[str, float] = field(default_factory=dict)  # time each explanation (and the curves) took

    def auc(self, modality: str, explainer: str, curve: str) -> np.ndarray:
        """Per-sample area under one curve (NaN where the sample lacks the modality)."""
        return np.trapezoid(self.curves[modality][explainer][curve], self.fractions, axis=1)

    def mean_curves(self) -> dict[str, dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]:
        """Cohort mean and sample standard deviation of every curve, at each fraction."""
        return {m: {e: {c: (np.nanmean(v, 0), np.nanstd(v, 0, ddof=1) if len(v) > 1 else np.zeros(v.shape[1]))
                        for c, v in by_curve.items() if np.isfinite(v).any()}
                    for e, by_curve in by_explainer.items()}
                for m, by_explainer in self.curves.items()}

    def table(self, alpha: float = ALPHA) -> pd.DataFrame:
        """One row per modality, explainer and curve: samples, AUC mean and std (ddof 1), the mean
        paired difference to the random order, the Wilcoxon p-value and the verdict."""
        rows = []
        for m, by_explainer in self.curves.items():
            for c in CURVES:
                for e in by_explainer:
                    rows.append({"modality": m, "explainer": e, "curve": c,
                                 **paired(self.auc(m, e, c), self.auc(m, RANDOM, c), c, alpha, e == RANDOM)})
        return pd.DataFrame(rows)

    def versus(self, explainer: str, others: tuple[str, ...], alpha: float = ALPHA) -> pd.DataFrame:
        """``explainer`` against each of ``others`` (paired by sample), per modality and curve;
        ``verdict`` says whether ``explainer`` is the more faithful one."""
        rows = []
        for m, by_explainer in self.curves.items():
            if explainer not in by_explainer:
                continue
            for o in (o for o in others if o in by_explainer and o != explainer):
                for c in CURVES:
                    rows.append({"modality": m, "explainer": explainer, "other": o, "curve": c,
                                 **paired(self.auc(m, explainer, c), self.auc(m, o, c), c, alpha)})
        return pd.DataFrame(rows)


def paired(a: np.ndarray, b: np.ndarray, curve: str, alpha: float = ALPHA, same: bool = False) -> dict:
    """AUCs ``a`` against ``b`` on the samples both have: mean and std of ``a``, mean difference,
    two-sided Wilcoxon signed-rank p-value and ``better`` / ``worse`` / ``no difference`` (for
    deletion lower is better). ``same``: ``a`` is ``b`` itself (no test)."""
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = len(a)
    out = {"n": n, "auc_mean": float(a.mean()) if n else np.nan, "auc_std": float(a.std(ddof=1)) if n > 1 else np.nan,
           "delta": float((a - b).mean()) if n else np.nan, "p_value": np.nan, "verdict": ""}
    if same or n == 0:
        return out
    d = a - b
    out["p_value"] = 1.0 if np.all(d == 0) else float(wilcoxon(a, b).pvalue)
    good = out["delta"] < 0 if curve == "deletion" else out["delta"] > 0
    out["verdict"] = "no difference" if out["p_value"] >= alpha else ("better" if good else "worse")
    return out


def unit_scores(method: Method, info: Informativeness, modality: str) -> np.ndarray | None:
    """``N x units`` scores of one modality from any explanation (None when it has none): omics
    features as they are; image maps on the model's patch grid (a finer map, e.g. pixels, is
    averaged into the patches)."""
    if method.specs[modality].kind == "omics":
        return info.feature_scores.get(modality)
    maps = info.patch_maps.get(modality)
    if maps is None:
        return None
    grid = patch_grid(method, modality)
    if maps.shape[1:] != grid:
        p = patch_size(method)
        if maps.shape[1:] != tuple(method.specs[modality].image_shape[1:]):
            raise MMXError(f"{modality!r} map of shape {maps.shape[1:]} is neither the {grid} patch grid nor pixels")
        maps = to_patches(torch.as_tensor(maps, dtype=torch.float32)[:, None], p, "mean").numpy()
    return maps.reshape(len(maps), -1)


def ranking(scores: np.ndarray) -> np.ndarray:
    """Units in removal order per sample: highest score first, ties by index."""
    return np.argsort(-np.nan_to_num(scores, nan=-np.inf), axis=1, kind="stable")


def curves(method: Method, data: MultimodalDataset, idx: np.ndarray | None, explanations: dict[str, Informativeness],
           *, steps: int = STEPS, baseline: str = "mean", seed: int = 0, batch_size: int = 8) -> Faithfulness:
    """Deletion and insertion curves of every explanation in ``explanations`` (name -> maps, on the
    same samples ``idx``) and of a seeded random order, for each modality the model reads."""
    if steps < 2:
        raise MMXError(f"faithfulness curves need at least 2 steps, got {steps}")
    if baseline not in BASELINES:
        raise MMXError(f"baseline {baseline!r}: use one of {BASELINES}")
    if RANDOM in explanations:
        raise MMXError(f"{RANDOM!r} is the built-in seeded order; name the explanation otherwise")
    diff = differentiable(method)
    idx = sample_rows(data, idx)
    for name, info in explanations.items():
        if len(info.ids) != len(idx) or not np.array_equal(info.ids, data.ids[idx]):
            raise MMXError(f"explanation {name!r} is of other samples than the ones asked")
    target = method.predict(data, idx).proba.argmax(1)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    out = Faithfulness(data.ids[idx], method.classes, target, fractions, {}, baseline, seed)
    for i, m in enumerate(diff.modalities):
        orders = {e: ranking(s) for e, info in explanations.items()
                  if (s := unit_scores(diff.method, info, m)) is not None}
        units = n_units(diff.method, m)
        orders[RANDOM] = np.random.default_rng([seed, i]).permuted(np.tile(np.arange(units), (len(idx), 1)), axis=1)
        ks = np.rint(fractions * units).astype(int)
        have = np.flatnonzero(data.present[m][torch.as_tensor(idx)].numpy())
        out.curves[m] = {e: {c: np.full((len(idx), steps + 1), np.nan) for c in CURVES} for e in orders}
        for start in range(0, len(have), batch_size):
            pos = have[start:start + batch_size]
            _fill(out.curves[m], diff, data, idx[pos], pos, i, {e: o[pos] for e, o in orders.items()}, ks,
                  target[pos], baseline)
    return out


def explanations(method: Method, data: MultimodalDataset, idx: np.ndarray | None = None,
                 explainers: tuple[str, ...] = (LEARNED, *EXPLAINERS), *, baseline: str = "mean", seed: int = 0,
                 attribution: dict | None = None) -> tuple[dict[str, Informativeness], dict[str, float]]:
    """Samples ``idx`` explained by each of ``explainers`` (``learned``: the model's own maps;
    captum's with :func:`~core.explain.attributions.attribute` options ``attribution``), and the
    seconds each took."""
    unknown = [e for e in explainers if e != LEARNED and e not in EXPLAINERS]
    if unknown:
        raise MMXError(f"unknown explainers {unknown}; use {LEARNED!r} and/or {EXPLAINERS}")
    idx = sample_rows(data, idx)
    out, seconds = {}, {}
    for e in explainers:
        t0 = time.perf_counter()
        out[e] = (explain(method, data, idx) if e == LEARNED else
                  attribute(method, data, idx, e, baseline=baseline, seed=seed, **(attribution or {})))
        seconds[e] = time.perf_counter() - t0
    return out, seconds


def faithfulness(method: Method, data: MultimodalDataset, idx: np.ndarray | None = None,
                 explainers: tuple[str, ...] = (LEARNED, *EXPLAINERS), *, steps: int = STEPS,
                 baseline: str = "mean", seed: int = 0, batch_size: int = 8,
                 attribution: dict | None = None) -> Faithfulness:
    """Explain samples ``idx`` with each of ``explainers`` (:func:`explanations`) and trace their
    curves; ``seconds`` records what each explanation and the curves took."""
    idx = sample_rows(data, idx)
    explained, seconds = explanations(method, data, idx, explainers, baseline=baseline, seed=seed,
                                      attribution=attribution)
    t0 = time.perf_counter()
    result = curves(method, data, idx, explained, steps=steps, baseline=baseline, seed=seed, batch_size=batch_size)
    result.seconds = {**seconds, "curves": time.perf_counter() - t0}
    return result


def _fill(curves_m: dict, diff: Differentiable, data: MultimodalDataset, rows: np.ndarray, pos: np.ndarray, j: int,
          orders: dict[str, np.ndarray], ks: np.ndarray, target: np.ndarray, baseline: str) -> None:
    """Curves of samples ``rows`` (result rows ``pos``) for modality number ``j``: the shared end
    points, then every order's interior steps, several masked copies per forward pass."""
    inputs, present = diff.inputs(data, rows)
    base = diff.baselines(inputs, baseline)
    t = torch.as_tensor(target)
    full = _proba(diff, inputs, present, [inputs[j]], j, t)[0]
    empty = _proba(diff, inputs, present, [base[j]], j, t)[0]
    for e, order in orders.items():
        o = torch.as_tensor(order, device=inputs[j].device)
        for c in CURVES:
            kept = [_masked(diff, j, inputs[j], base[j], o, int(k), c) for k in ks[1:-1]]
            ends = (full, empty) if c == "deletion" else (empty, full)
            curves_m[e][c][pos] = np.column_stack([ends[0], *_proba(diff, inputs, present, kept, j, t), ends[1]])


def _masked(diff: Differentiable, j: int, x: torch.Tensor, base: torch.Tensor, order: torch.Tensor, k: int,
            curve: str) -> torch.Tensor:
    """Input ``j`` with its first ``k`` ranked units at the baseline (deletion) or with only those
    units real and the rest at the baseline (insertion)."""
    m = diff.modalities[j]
    method = diff.method
    if method.specs[m].kind == "omics":
        sel = torch.zeros(x.shape, dtype=torch.bool, device=x.device).scatter_(1, order[:, :k], True)
    else:
        sel = patch_grid_mask(len(x), x.shape[-2], x.shape[-1], patch_size(method), order[:, :k])
    return torch.where(sel, base, x) if curve == "deletion" else torch.where(sel, x, base)


def _proba(diff: Differentiable, inputs: tuple, present: tuple, variants: list[torch.Tensor], j: int,
           target: torch.Tensor) -> list[np.ndarray]:
    """The target class's probability with input ``j`` replaced by each of ``variants``."""
    proba = variant_proba(diff, inputs, present, variants, j)
    return list(np.take_along_axis(proba, target.numpy()[None, :, None], 2)[:, :, 0])


@torch.no_grad()
def variant_proba(diff: Differentiable, inputs: tuple, present: tuple, variants: list[torch.Tensor], j: int | None,
                  presences: list[tuple] | None = None) -> np.ndarray:
    """``V x N x C`` class probabilities with input ``j`` replaced by each of the ``V`` variants (the
    other inputs unchanged, encoded once where the net allows: :meth:`Differentiable.varying`;
    ``j=None``: each variant is the whole input tuple, presence optionally per variant)."""
    if j is not None:
        return batched_proba(diff.varying(j, inputs, present), variants, len(present[0]))
    pres = presences if presences is not None else [present] * len(variants)
    whole = [(*v, *q) for v, q in zip(variants, pres)]
    return batched_proba(lambda *t: diff.proba(*t), whole, len(present[0]))


@torch.no_grad()
def batched_proba(proba, variants: list, n: int) -> np.ndarray:
    """``V x N x C``: ``proba`` (of one tensor, or of a tuple of tensors) of each of the ``V`` variants
    of ``N`` rows, in forward passes of at most about :data:`~core.explain.attributions.ROWS` rows."""
    per_pass = max(1, ROWS // n)
    out = []
    for s in range(0, len(variants), per_pass):
        group = variants[s:s + per_pass]
        if isinstance(group[0], torch.Tensor):
            p = proba(torch.cat(group))
        else:
            p = proba(*(torch.cat([g[i] for g in group]) for i in range(len(group[0]))))
        out.append(p.cpu().view(len(group), n, -1).numpy())
    return np.concatenate(out) if out else np.zeros((0, n, 0), dtype=np.float32)


def n_units(method: Method, modality: str) -> int:
    """How many units (omics features, or patches of the model's grid) a modality has."""
    spec = method.specs[modality]
    if spec.kind == "omics":
        return spec.n_features
    rows, cols = patch_grid(method, modality)
    return rows * cols
