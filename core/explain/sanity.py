"""Would the explanation look the same if the model had learned nothing? Sanity checks after Adebayo
et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018), for every explainer the tool shows.

- **Cascading randomisation**: the model's parameterised layers are re-drawn from their initial
  distribution from the output side down, one more layer at each depth, and the samples explained
  again. An explanation that stays similar while the layers that make the decision are random is not
  explaining the decision.
- **Label permutation**: the same recipe trained on permuted training labels (a model that can only
  memorise); its explanations against the real model's.

Similarity per sample and modality: Spearman's rank correlation of the unit scores (omics features,
patches of the model's grid; scipy), and for patch maps the structural similarity (SSIM, torchmetrics)
of the two maps, each rescaled to [0, 1]. An explainer is *flagged* when its mean Spearman at full
randomisation (or with permuted labels) is still at least :data:`FLAG_AT`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from core.data.dataset import MultimodalDataset
from core.errors import MMXError
from core.explain.attributions import differentiable
from core.explain.faithfulness import explanations, unit_scores
from core.explain.informativeness import Informativeness
from core.explain.live import patch_grid
from core.models.base import Method

FLAG_AT = 0.5
MEASURES = ("spearman", "ssim")


def layers(method: Method, data: MultimodalDataset, row: int = 0) -> list[tuple[str, nn.Module]]:
    """The network's modules that hold parameters of their own, output side first: the reverse of the
    order a forward pass of sample ``row`` calls them in, with the per-modality branches interleaved
    level by level (each modality's top layer, then each one's next...), shared layers before them;
    modules the forward pass never calls come last."""
    diff = differentiable(method)
    net = diff.method.net
    named = [(n, m) for n, m in net.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not named:
        raise MMXError(f"method {method.name!r} has no parameterised layers to randomise")
    called: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: called.append(n) if n not in called else None)
             for n, m in named]
    try:
        inputs, present = diff.inputs(data, np.asarray([row]))
        with torch.no_grad():
            diff.proba(*inputs, *present)
    finally:
        for h in hooks:
            h.remove()
    modules = dict(named)
    top_down = called[::-1] + [n for n, _ in named if n not in called]

    def branch(name: str) -> str | None:
        return next((part for part in name.split(".") if part in diff.modalities), None)

    shared = [n for n in top_down if branch(n) is None]
    chains = {b: [n for n in top_down if branch(n) == b] for b in diff.modalities}
    levels = [c[i] for i in range(max(map(len, chains.values()), default=0)) for c in chains.values() if i < len(c)]
    return [(n, modules[n]) for n in shared + levels]


def randomised(method: Method, names: list[str], depth: int, seed: int = 0) -> Method:
    """A copy of ``method`` whose top ``depth`` layers of ``names`` (:func:`layers`) are re-drawn, seeded."""
    out = copy.deepcopy(method)
    modules = dict(differentiable(out).method.net.named_modules())
    for i, module in enumerate(modules[n] for n in names[:depth]):
        torch.manual_seed(seed * 1000 + i)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            for p in module.parameters(recurse=False):
                nn.init.normal_(p, std=0.02)
    return out


def depths(n_layers: int, most: int = 6) -> list[int]:
    """0 (the trained model), 1, 2, 4, ... doubling, and all layers: at most ``most`` depths."""
    out, d = [0], 1
    while d < n_layers and len(out) < most - 1:
        out.append(d)
        d *= 2
    return [*out, n_layers]


def _unit(v: np.ndarray) -> np.ndarray:
    lo, hi = np.nanmin(v), np.nanmax(v)
    return np.zeros_like(v) if hi <= lo else (v - lo) / (hi - lo)


def similarity(method: Method, a: Informativeness, b: Informativeness) -> dict[str, dict[str, np.ndarray]]:
    """``out[modality][measure]``: per sample, Spearman of the unit scores of ``a`` and ``b``, and SSIM of
    their patch maps (images); NaN where a sample lacks the modality or a map is constant."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    diff = differentiable(method)
    out = {}
    for m in diff.modalities:
        sa, sb = unit_scores(diff.method, a, m), unit_scores(diff.method, b, m)
        if sa is None or sb is None:
            continue
        rho = np.full(len(sa), np.nan)
        for i, (x, y) in enumerate(zip(sa, sb)):
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.sum() > 2 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
                rho[i] = spearmanr(x[ok], y[ok]).statistic
        out[m] = {"spearman": rho}
        if diff.method.specs[m].kind == "image":
            rows, cols = patch_grid(diff.method, m)
            kernel = max(3, min(7, rows, cols) - (1 - min(7, rows, cols) % 2))
            s = np.full(len(sa), np.nan)
            for i, (x, y) in enumerate(zip(sa, sb)):
                if np.isfinite(x).all() and np.isfinite(y).all():
                    px = torch.tensor(_unit(x), dtype=torch.float32).view(1, 1, rows, cols)
                    py = torch.tensor(_unit(y), dtype=torch.float32).view(1, 1, rows, cols)
                    s[i] = float(ssim(px, py, data_range=1.0, kernel_size=kernel, gaussian_kernel=False))
            out[m]["ssim"] = s
    return out


@dataclass
class Sanity:
    """``cascade[explainer][modality][measure]``: ``len(depths) x N`` similarities to the trained model's
    explanation; ``permuted[explainer][modality][measure]``: N similarities of the label-permuted model's."""

    ids: np.ndarray
    depths: list[int]
    layer_names: list[str]
    cascade: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    permuted: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)

    def summary(self) -> list[dict]:
        """Mean similarity per explainer, modality, measure and depth (depth ``permuted`` for the
        label-permuted model)."""
        rows = []
        for e, by_m in self.cascade.items():
            for m, by_s in by_m.items():
                for s, v in by_s.items():
                    for d, row in zip(self.depths, v):
                        rows.append({"explainer": e, "modality": m, "measure": s, "depth": d,
                                     "mean": float(np.nanmean(row)) if np.isfinite(row).any() else np.nan,
                                     "n": int(np.isfinite(row).sum())})
                    p = self.permuted.get(e, {}).get(m, {}).get(s)
                    if p is not None:
                        rows.append({"explainer": e, "modality": m, "measure": s, "depth": "permuted",
                                     "mean": float(np.nanmean(p)) if np.isfinite(p).any() else np.nan,
                                     "n": int(np.isfinite(p).sum())})
        return rows

    def flagged(self, at: float = FLAG_AT) -> dict[str, str]:
        """Explainers whose mean Spearman stays at or above ``at`` with every layer random or with
        permuted labels, with the reason in words."""
        out = {}
        for e, by_m in self.cascade.items():
            why = []
            for m, by_s in by_m.items():
                full = float(np.nanmean(by_s["spearman"][-1])) if np.isfinite(by_s["spearman"][-1]).any() else np.nan
                if full >= at:
                    why.append(f"{m}: rank correlation {full:.2f} with every layer random")
                p = self.permuted.get(e, {}).get(m, {}).get("spearman")
                if p is not None and np.isfinite(p).any() and float(np.nanmean(p)) >= at:
                    why.append(f"{m}: rank correlation {float(np.nanmean(p)):.2f} with a model trained on permuted "
                               "labels")
            if why:
                out[e] = "; ".join(why)
        return out


def cascade(method: Method, data: MultimodalDataset, idx: np.ndarray, explainers: tuple[str, ...], *,
            seed: int = 0, attribution: dict | None = None, most: int = 6) -> Sanity:
    """Explain ``idx`` with the trained model and with its copies randomised to each of :func:`depths`."""
    names = [n for n, _ in layers(method, data, int(idx[0]))]
    ds = depths(len(names), most)
    base, _ = explanations(method, data, idx, explainers, seed=seed, attribution=attribution)
    out = Sanity(data.ids[idx], ds, names)
    per_depth = []
    for d in ds:
        model = method if d == 0 else randomised(method, names, d, seed)
        now = base if d == 0 else explanations(model, data, idx, explainers, seed=seed, attribution=attribution)[0]
        per_depth.append({e: similarity(method, base[e], now[e]) for e in explainers})
    for e in explainers:
        out.cascade[e] = {m: {s: np.stack([pd_[e][m][s] for pd_ in per_depth]) for s in by_s}
                          for m, by_s in per_depth[0][e].items()}
    return out


def permuted_labels(sanity: Sanity, method: Method, shuffled: Method, data: MultimodalDataset, idx: np.ndarray,
                    explainers: tuple[str, ...], *, seed: int = 0, attribution: dict | None = None) -> Sanity:
    """Add to ``sanity`` the similarity of the explanations of ``shuffled`` (the same recipe trained on
    permuted labels) to those of ``method``."""
    base, _ = explanations(method, data, idx, explainers, seed=seed, attribution=attribution)
    other, _ = explanations(shuffled, data, idx, explainers, seed=seed, attribution=attribution)
    sanity.permuted = {e: similarity(method, base[e], other[e]) for e in explainers}
    return sanity
