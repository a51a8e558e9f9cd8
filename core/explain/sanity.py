"""Would the explanation look the same if the model had learned nothing? Sanity checks after Adebayo
et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018), for every explainer the tool shows.

- **Cascading randomisation**: the model's parameterised layers are re-drawn from their initial
  distribution from the output side down, one more layer at each depth, and the samples explained
  again. An explanation that stays similar while the layers that make the decision are random is not
  explaining the decision.
- **Label permutation**: the same recipe trained on permuted training labels (a model that can only
  memorise), several times (each a new shuffle and initialisation: one draw can land near or far from
  the real model by chance); their explanations against the real model's.

Similarity per sample and modality: Spearman's rank correlation of the unit scores (omics features,
patches of the model's grid; scipy), and for patch maps the structural similarity (SSIM, torchmetrics)
of the two maps, each rescaled to [0, 1]. An explainer is *flagged* when its mean Spearman at full
randomisation (or, averaged over the retrainings, with permuted labels) is still at least
:data:`FLAG_AT`.

Beside them, captum's two metrics of the trained model's explanations (``captum.metrics``, Yeh et al.,
"On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019), per explainer and modality:

- **infidelity** in the units the tool shows: random subsets of the units are masked (the fill the
  attributions use), and the sum of their scores, optimally rescaled, is compared with the drop in the
  predicted class's probability (mean squared error; lower: the map predicts what masking does). A
  seeded random score per unit is the reference.
- **max-sensitivity**: the largest relative change of the explanation under uniform input noise of
  radius :data:`RADIUS` (lower: a steadier explanation).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from captum.metrics import infidelity, sensitivity_max
from scipy.stats import spearmanr
from torch import nn

from core.data.dataset import MultimodalDataset
from core.errors import MMXError
from core.explain.attributions import Differentiable, differentiable, unit_attributions
from core.explain.faithfulness import LEARNED, RANDOM, explanations, unit_scores
from core.explain.informativeness import Informativeness
from core.explain.live import patch_grid, patch_size
from core.models.base import Method, TorchMethod
from core.models.unet_gate import expand_patches
from core.stats import sample_interval

FLAG_AT = 0.5
MEASURES = ("spearman", "ssim")
METRICS = ("infidelity", "sensitivity")
INFIDELITY_DRAWS = 64  # masked subsets per sample
SENSITIVITY_DRAWS = 8  # noisy copies per sample
SENSITIVITY_SAMPLES = 8  # samples whose sensitivity is measured (each re-explains the sample per copy)
RADIUS = 0.02  # max-sensitivity's noise (captum's default), in the prepared inputs' units


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
    explanation; ``permuted[explainer][modality][measure]``: ``retrainings x N`` similarities of the
    label-permuted models'."""

    ids: np.ndarray
    depths: list[int]
    layer_names: list[str]
    cascade: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    permuted: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    explained: dict[str, Informativeness] = field(default_factory=dict)  # the trained model's, every check's reference
    metrics: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)  # [explainer][modality][metric]

    def summary(self) -> list[dict]:
        """Mean similarity per explainer, modality, measure and depth (depth ``permuted`` for the
        label-permuted models: the mean of the retrainings' means, with the lowest and highest), with a
        bootstrap 95 % interval over the samples (``low``, ``high``)."""
        rows = []
        for e, by_m in self.cascade.items():
            for m, by_s in by_m.items():
                for s, v in by_s.items():
                    for d, row in zip(self.depths, v):
                        ci = sample_interval(row)
                        rows.append({"explainer": e, "modality": m, "measure": s, "depth": d, "mean": ci.estimate,
                                     "low": ci.low, "high": ci.high, "n": int(np.isfinite(row).sum())})
                    p = self.permuted.get(e, {}).get(m, {}).get(s)
                    if p is not None:
                        ci = sample_interval(p)
                        each = [float(np.nanmean(r)) if np.isfinite(r).any() else np.nan for r in p]
                        rows.append({"explainer": e, "modality": m, "measure": s, "depth": "permuted",
                                     "mean": ci.estimate, "low": ci.low, "high": ci.high,
                                     "n": int(np.isfinite(p).sum()), "retrainings": len(p),
                                     "lowest": float(np.nanmin(each)) if np.isfinite(each).any() else np.nan,
                                     "highest": float(np.nanmax(each)) if np.isfinite(each).any() else np.nan})
        return rows

    def metric_summary(self) -> list[dict]:
        """captum's metrics per explainer, modality and metric: mean and median over the samples (the
        median with a bootstrap 95 % interval: ``low``, ``high``); for infidelity also the share of samples
        where it is below the random scores' (``below random %``) and the median of its ratio to theirs, per
        sample (``to random``, ``to random low``, ``to random high``: below 1, the scores beat random)."""
        rows = []
        for e, by_m in self.metrics.items():
            for m, by_s in by_m.items():
                for s, v in by_s.items():
                    ok = np.isfinite(v)
                    ci = sample_interval(v, np.nanmedian)
                    row = {"explainer": e, "modality": m, "metric": s, "n": int(ok.sum()),
                           "mean": float(v[ok].mean()) if ok.any() else np.nan,
                           "median": ci.estimate, "low": ci.low, "high": ci.high}
                    ref = self.metrics.get(RANDOM, {}).get(m, {}).get(s)
                    if s == "infidelity" and e != RANDOM and ref is not None:
                        both = ok & np.isfinite(ref)
                        row["below random %"] = float(100 * np.mean(v[both] < ref[both])) if both.any() else np.nan
                        with np.errstate(divide="ignore", invalid="ignore"):
                            r = sample_interval(np.where(both & (ref > 0), v / ref, np.nan), np.nanmedian)
                        row.update({"to random": r.estimate, "to random low": r.low, "to random high": r.high})
                    rows.append(row)
        return rows

    def flagged(self, at: float = FLAG_AT) -> dict[str, str]:
        """Explainers whose mean Spearman stays at or above ``at`` with every layer random or with
        permuted labels, with the reason in words (and the interval over the samples)."""
        out = {}
        for e, by_m in self.cascade.items():
            why = []
            for m, by_s in by_m.items():
                full = sample_interval(by_s["spearman"][-1])
                if full.estimate >= at:
                    why.append(f"{m}: rank correlation {_ci(full)} with every layer random")
                p = self.permuted.get(e, {}).get(m, {}).get("spearman")
                perm = sample_interval(p) if p is not None else None
                if perm is not None and perm.estimate >= at:
                    each = [float(np.nanmean(r)) for r in p if np.isfinite(r).any()]
                    why.append(f"{m}: rank correlation {_ci(perm)} with models trained on permuted "
                               f"labels (mean of {len(each)}; {min(each):.2f} to {max(each):.2f})")
            if why:
                out[e] = "; ".join(why)
        return out

    def per_sample(self) -> dict:
        """Every similarity and metric, per sample (NaN: None), for the JSON a table is written from."""
        def plain(tree):
            if isinstance(tree, dict):
                return {k: plain(v) for k, v in tree.items()}
            a = np.asarray(tree, dtype=float)
            return [plain(r) for r in a] if a.ndim > 1 else [round(float(x), 6) if np.isfinite(x) else None for x in a]
        return {"ids": [str(i) for i in self.ids], "cascade": plain(self.cascade), "permuted": plain(self.permuted),
                "metrics": plain(self.metrics)}


def _ci(ci) -> str:
    """``0.62 (95% CI 0.55 to 0.70)``."""
    return f"{ci.estimate:.2f} ({100 * ci.level:.0f}% CI {ci.low:.2f} to {ci.high:.2f})"


def cascade(method: Method, data: MultimodalDataset, idx: np.ndarray, explainers: tuple[str, ...], *,
            seed: int = 0, attribution: dict | None = None, most: int = 6) -> Sanity:
    """Explain ``idx`` with the trained model and with its copies randomised to each of :func:`depths`."""
    names = [n for n, _ in layers(method, data, int(idx[0]))]
    ds = depths(len(names), most)
    base, _ = explanations(method, data, idx, explainers, seed=seed, attribution=attribution)
    out = Sanity(data.ids[idx], ds, names, explained=base)
    per_depth = []
    for d in ds:
        model = method if d == 0 else randomised(method, names, d, seed)
        now = base if d == 0 else explanations(model, data, idx, explainers, seed=seed, attribution=attribution)[0]
        per_depth.append({e: similarity(method, base[e], now[e]) for e in explainers})
    for e in explainers:
        out.cascade[e] = {m: {s: np.stack([pd_[e][m][s] for pd_ in per_depth]) for s in by_s}
                          for m, by_s in per_depth[0][e].items()}
    return out


def permuted_labels(sanity: Sanity, method: Method, shuffled: list[Method], data: MultimodalDataset, idx: np.ndarray,
                    explainers: tuple[str, ...], *, seed: int = 0, attribution: dict | None = None) -> Sanity:
    """Add to ``sanity`` the similarity of the explanations of each of ``shuffled`` (the same recipe
    trained on permuted labels, one per shuffle) to those of ``method`` (``sanity.explained``, from
    :func:`cascade`)."""
    base = sanity.explained
    each = []
    for other in shuffled:
        explained, _ = explanations(other, data, idx, explainers, seed=seed, attribution=attribution)
        each.append({e: similarity(method, base[e], explained[e]) for e in explainers})
    sanity.permuted = {e: {m: {s: np.stack([one[e][m][s] for one in each]) for s in by_s}
                           for m, by_s in each[0][e].items()} for e in explainers}
    return sanity


# ----------------------------------------------------------------------------- captum.metrics
def _masked_forward(diff: Differentiable, inputs: tuple, present: tuple, j: int, fill: str):
    """Class probabilities of one sample as a function of ``z`` (``V x units`` in [0, 1]): input ``j``
    with each unit kept (1) or at the fill (0), the other inputs as given."""
    m = diff.modalities[j]
    x, base = inputs[j], diff.baselines(inputs, fill)[j]
    proba = diff.varying(j, inputs, present)
    image = diff.method.specs[m].kind != "omics"
    rows, cols = patch_grid(diff.method, m) if image else (0, 0)

    def forward(z: torch.Tensor) -> torch.Tensor:
        z = z.to(x)
        if image:
            z = expand_patches(z.view(len(z), 1, rows, cols), patch_size(diff.method), x.shape[-2], x.shape[-1])
        return proba(base + z * (x - base))

    return forward


def unit_infidelity(diff: Differentiable, inputs: tuple, present: tuple, j: int, scores: np.ndarray, *,
                    fill: str = "mean", draws: int = INFIDELITY_DRAWS, seed: int = 0) -> float:
    """captum's infidelity of one sample's unit ``scores`` for input ``j``: ``draws`` random subsets of
    the units (each a share drawn uniformly up to a half) masked at ``fill``; the scores, rescaled by the
    best factor, against the drop in the predicted class's probability. NaN for missing scores."""
    if not np.isfinite(scores).all():
        return float("nan")
    forward = _masked_forward(diff, inputs, present, j, fill)
    n = len(scores)
    with torch.no_grad():
        target = int(forward(torch.ones(1, n)).argmax(1))
    gen = torch.Generator().manual_seed(seed)

    def perturb(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        share = torch.rand(len(z), 1, generator=gen) * 0.5
        drop = (torch.rand(z.shape, generator=gen) < share).to(z)
        return drop, z - drop

    value = infidelity(forward, perturb, torch.ones(1, n), torch.as_tensor(scores, dtype=torch.float32)[None],
                       target=target, n_perturb_samples=draws, normalize=True)
    return float(value[0])


def _explainer_fn(diff: Differentiable, inputs: tuple, present: tuple, j: int, explainer: str, options: dict):
    """The explanation of input ``j``'s units as a function of that input (a batch of noisy copies of
    one sample's, as captum's sensitivity asks), the other inputs as given: captum's explainers
    (scaled, as the tool shows them) or the model's own learned map."""
    m = diff.modalities[j]

    def expand(v: torch.Tensor, r: int) -> torch.Tensor:
        return v.repeat(r, *[1] * (v.ndim - 1))

    def explain_fn(xs: tuple[torch.Tensor, ...], target: torch.Tensor) -> tuple[torch.Tensor]:
        r = len(xs[0]) // len(inputs[j])
        full = tuple(xs[0] if i == j else expand(v, r) for i, v in enumerate(inputs))
        pres = tuple(expand(p, r) for p in present)
        if explainer != LEARNED:
            return (unit_attributions(explainer, diff, full, pres, target, **options)[j].flatten(1),)
        out = diff.method.net(dict(zip(diff.modalities, full)), dict(zip(diff.modalities, pres))).feature_maps[m]
        if diff.method.specs[m].kind != "omics":
            out = out[:, 0, ::patch_size(diff.method), ::patch_size(diff.method)].flatten(1)
        return (out,)  # a tuple: captum iterates over the original's explanation

    return explain_fn


def unit_sensitivity(diff: Differentiable, inputs: tuple, present: tuple, j: int, explainer: str, *,
                     options: dict | None = None, draws: int = SENSITIVITY_DRAWS, radius: float = RADIUS,
                     seed: int = 0) -> float:
    """captum's max-sensitivity of one sample's explanation of input ``j``: the largest change of its
    unit scores, relative to their norm, over ``draws`` copies of the input with uniform noise of
    ``radius``."""
    explain_fn = _explainer_fn(diff, inputs, present, j, explainer, {"seed": seed, **(options or {})})
    with torch.no_grad():
        target = diff.varying(j, inputs, present)(inputs[j]).argmax(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        value = sensitivity_max(explain_fn, (inputs[j],), perturb_radius=radius, n_perturb_samples=draws,
                                target=target)
    return float(value[0])


def captum_metrics(sanity: Sanity, method: Method, data: MultimodalDataset, idx: np.ndarray,
                   explainers: tuple[str, ...], *, seed: int = 0, attribution: dict | None = None,
                   sensitivity_samples: int = SENSITIVITY_SAMPLES) -> Sanity:
    """Add to ``sanity`` captum's infidelity of each explainer's explanation of each sample ``idx`` by
    the trained ``method``, per modality, and the max-sensitivity of the first ``sensitivity_samples``;
    infidelity also for a seeded random score per unit (``random``), the reference an explanation
    should beat (the explanations: ``sanity.explained``, from :func:`cascade`). Learned maps get a
    sensitivity only from a torch network whose forward pass returns them."""
    diff = differentiable(method)
    explained = sanity.explained
    options = dict(attribution or {})
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {e: {} for e in (*explainers, RANDOM)}
    for j, m in enumerate(diff.modalities):
        scores = {e: unit_scores(diff.method, explained[e], m) for e in explainers}
        scores = {e: v for e, v in scores.items() if v is not None}
        if not scores:
            continue
        n_units = next(iter(scores.values())).shape[1]
        scores[RANDOM] = np.random.default_rng([seed, j]).random((len(idx), n_units))
        for e in scores:
            out[e][m] = {"infidelity": np.full(len(idx), np.nan)}
            if e != RANDOM and (e != LEARNED or isinstance(diff.method, TorchMethod)):
                out[e][m]["sensitivity"] = np.full(len(idx), np.nan)
        for i, row in enumerate(idx):
            inputs, present = diff.inputs(data, np.asarray([row]))
            if not bool(present[j][0]):
                continue
            for e, v in scores.items():
                out[e][m]["infidelity"][i] = unit_infidelity(diff, inputs, present, j, v[i], seed=seed + i)
                if "sensitivity" in out[e][m] and i < sensitivity_samples:
                    out[e][m]["sensitivity"][i] = unit_sensitivity(diff, inputs, present, j, e, options=options,
                                                                   seed=seed + i)
    sanity.metrics = {e: by_m for e, by_m in out.items() if by_m}
    return sanity
