"""Post-hoc attributions from captum (integrated gradients, occlusion, feature ablation,
GradientSHAP) for every differentiable method, in the same shape as the learned maps.

:func:`attribute` returns an :class:`Attributions`, which *is* an
:class:`~core.explain.informativeness.Informativeness`: one score per omics feature
(``feature_scores[m]``, N x F) and one per patch of the model's own patch grid
(``patch_maps[m]``, N x rows x cols), so pages and :mod:`core.explain.faithfulness` treat the
learned maps and every explainer alike. Conventions, the same for every explainer:

- **What is explained**: the softmax probability of ``target`` (default: the predicted class),
  as a function of the *prepared* inputs the network sees (scaled omics, images in [0, 1], absent
  modalities filled per the method's ``missing`` setting). Methods are run as they predict:
  ``guidance`` through its guided head ``G(I)+I`` from the inferior modality alone (the only
  modality it gets scores for), ``hypermm`` through phi and the set classifier over the modalities
  present, ``unimodal`` through its base method on its one modality.
- **Baseline**: fixed, ``mean`` (the training mean after scaling; for images the mean training
  image) or ``zeros`` (after scaling), the fills of :mod:`core.models.masking`. Integrated
  gradients integrates from it, occlusion and feature ablation replace units with it, and
  GradientSHAP draws its references from a seeded distribution around it
  (``n_baselines`` copies plus Gaussian noise of sd ``stdevs``); captum's own random draws are
  seeded too, so a call is deterministic for a given ``seed`` and ``batch_size``.
- **Units**: an omics feature, or an image patch on the model's grid
  (:func:`core.explain.live.patch_grid`). Occlusion slides a window of ``window`` x ``window``
  patches one patch at a time over the grid (each patch gets the mean effect of the windows that
  cover it); feature ablation removes one patch (all channels) or one feature at a time; on
  omics both remove one feature at a time.
- **Patch value**: gradient attributions are additive per pixel and channel, so a patch gets
  their *signed sum* (integrated gradients keeps completeness: the values of a sample add up to
  p(x) - p(baseline)); ablation attributions hold the unit's effect at every element, so a patch
  gets their mean (= the effect of removing it). Positive: evidence for the target class.
- **Normalisation** (``normalize=True``, the default): each sample's scores of a modality are
  divided by their largest absolute value, so they lie in [-1, 1] with the sample's strongest
  evidence at 1. Their positive part reads on the learned gates' 0..1 scale (clip at 0, or show
  a diverging scale); the order of units, which the faithfulness curves use, is unchanged.
  ``normalize=False`` keeps probability units (comparable across modalities and samples).
- Modalities a sample lacks get NaN, as in the learned maps.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import FeatureAblation, GradientShap, IntegratedGradients, Occlusion

from core.data.dataset import MultimodalDataset
from core.errors import MMXError
from core.explain.informativeness import Informativeness, _blank_absent
from core.explain.live import patch_grid, patch_size
from core.models.base import BranchedNet, Method, TorchMethod
from core.models.guidance import GuidanceMethod
from core.models.hypermm import HyperMM
from core.models.masking import MaskSpec, apply_mask
from core.models.unimodal import Unimodal
from core.train import loop

EXPLAINERS = ("integrated_gradients", "occlusion", "feature_ablation", "gradient_shap")
LABELS = {"integrated_gradients": "Integrated Gradients", "occlusion": "Occlusion",
          "feature_ablation": "Feature Ablation", "gradient_shap": "GradientSHAP"}
BASELINES = ("mean", "zeros")
ADDITIVE = ("integrated_gradients", "gradient_shap")  # per-element attributions that sum to a unit's share
ROWS = 256  # rows per forward pass (samples x steps, perturbations or draws)
#: image pixels per forward pass that keeps gradients: ROWS rows of 64 x 64. A backward pass stores
#: every activation, so at 224 px ROWS rows of EfficientNet-Lite0 would hold over 10 GB; larger
#: images get proportionally fewer rows per pass (integrated gradients: the same result in more
#: passes; GradientSHAP: its noise drawn per group of samples)
GRADIENT_PIXELS = ROWS * 64 * 64


@dataclass
class Attributions(Informativeness):
    """A captum explainer's scores in the learned maps' shape, plus how they were made."""

    explainer: str = ""
    target: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # N class indices explained
    baseline: str = "mean"
    normalized: bool = True


@dataclass
class Differentiable:
    """A fitted method's prediction as a differentiable function of the prepared inputs it reads."""

    method: Method  # whose input preparation and nets run (a ``unimodal`` model's base method)
    modalities: tuple[str, ...]  # the inputs, in the order captum gets them
    prepare: Callable[[dict], tuple[dict, dict]]  # device batch -> (prepared inputs, presence) as the net gets them
    logits_of: Callable[[dict, dict], torch.Tensor]
    fusion: BranchedNet | None = None  # the net, when its modalities meet only at fusion (logits_of runs it)

    def inputs(self, data: MultimodalDataset, rows: np.ndarray) -> tuple[tuple[torch.Tensor, ...], tuple]:
        """Prepared inputs and presence of ``rows``, one tensor per modality."""
        batch = loop.to_device(data.select(list(self.modalities)).batch(np.asarray(rows)), self.method.device)
        x, present = self.prepare(batch)
        return tuple(x[m] for m in self.modalities), tuple(present[m] for m in self.modalities)

    def proba(self, *tensors: torch.Tensor) -> torch.Tensor:
        """Class probabilities from the inputs followed by the presence masks (captum's call shape:
        presence travels as additional forward arguments, expanded with the inputs)."""
        k = len(self.modalities)
        x, present = dict(zip(self.modalities, tensors[:k])), dict(zip(self.modalities, tensors[k:]))
        # an empty slice of every input joins the graph: an input the prediction ignores gets a zero
        # gradient instead of captum's "not used in the graph" error
        tie = sum(v.flatten(1)[:, :0].sum(1) for v in tensors[:k])
        return torch.softmax(self.logits_of(x, present).float() + tie[:, None], 1)

    def varying(self, j: int, inputs: tuple[torch.Tensor, ...], present: tuple) -> Callable[[torch.Tensor], torch.Tensor]:
        """Class probabilities as a function of input ``j`` alone: ``f(xj)``, ``xj`` holding variants of
        input ``j``'s ``N`` rows stacked variant by variant, the other inputs as given. A net whose
        modalities meet only at fusion encodes the other inputs once instead of once per variant."""
        n = len(present[0])

        def repeat(v: torch.Tensor, r: int) -> torch.Tensor:
            return v.repeat(r, *[1] * (v.ndim - 1))

        if self.fusion is None:
            return lambda xj: self.proba(*(xj if i == j else repeat(v, len(xj) // n) for i, v in enumerate(inputs)),
                                         *(repeat(p, len(xj) // n) for p in present))
        net = self.fusion
        fixed = {m: net.branch(m, inputs[i], present[i]) for i, m in enumerate(self.modalities) if i != j}

        def proba(xj: torch.Tensor) -> torch.Tensor:
            r = len(xj) // n
            if xj.ndim == 4:  # images: channels-last convolutions run about twice as fast on a CPU
                xj = xj.contiguous(memory_format=torch.channels_last)
            own = net.branch(self.modalities[j], xj, repeat(present[j], r))
            latents = {m: repeat(fixed[m], r) if m in fixed else own for m in self.modalities}
            return torch.softmax(net.fuse(latents).float(), 1)

        return proba

    def baselines(self, inputs: tuple[torch.Tensor, ...], kind: str) -> tuple[torch.Tensor, ...]:
        """The fixed baseline of every input (a masking fill of :mod:`core.models.masking`)."""
        filled = apply_mask(dict(zip(self.modalities, inputs)), {m: MaskSpec(kind) for m in self.modalities},
                            self.method.prep.training_mean)
        return tuple(filled[m].detach() for m in self.modalities)


def differentiable(method: Method) -> Differentiable:
    """How ``method`` predicts, as a function captum can differentiate and perturb; methods that
    are not torch networks (the scikit-learn baselines) raise :class:`MMXError`."""
    if isinstance(method, Unimodal):
        return differentiable(method.inner)
    if isinstance(method, TorchMethod):
        net, mods = method.net, tuple(method.specs)
        return _placed(Differentiable(method, mods, method.model_inputs, lambda x, p: net(x, p).logits,
                                      net if isinstance(net, BranchedNet) else None))
    if isinstance(method, GuidanceMethod):
        inf = method.inferior
        return _placed(Differentiable(method, (inf,), lambda b: (method.prepared(b), b["present"]),
                                      lambda x, p: method.net.infer(x, "G(I)+I").logits))
    if isinstance(method, HyperMM):
        return _placed(Differentiable(method, tuple(method.specs), lambda b: (method.prepared(b), b["present"]),
                                      lambda x, p: method.rho(method.phi.encode(x, p)[0], p).logits))
    raise MMXError(f"method {method.name!r} is not a torch network: captum attributions need a differentiable "
                   "model (use its learned or permutation-based explanations instead)")


def _placed(diff: Differentiable) -> Differentiable:
    """Nets on the method's device and in eval mode (dropout off), as when it predicts."""
    diff.method.module().to(diff.method.device).eval()
    return diff


def attribute(method: Method, data: MultimodalDataset, idx: np.ndarray | None = None,
              explainer: str = "integrated_gradients", target: int | np.ndarray | None = None, *,
              baseline: str = "mean", normalize: bool = True, batch_size: int = 16, n_steps: int = 32,
              n_samples: int = 16, n_baselines: int = 16, stdevs: float = 0.1, window: int = 2,
              seed: int = 0) -> Attributions:
    """Attributions of ``explainer`` for samples ``idx`` of ``data`` towards ``target`` (one class
    index for all, one per sample, or None: each sample's predicted class); see the module
    docstring for the baseline, units and normalisation. ``n_steps``: integrated-gradients steps;
    ``n_samples`` / ``n_baselines`` / ``stdevs``: GradientSHAP's draws per sample, reference set
    and noise; ``window``: occlusion window side in patches; ``batch_size``: samples per captum call."""
    if explainer not in EXPLAINERS:
        raise MMXError(f"unknown explainer {explainer!r}; explainers are {EXPLAINERS}")
    if baseline not in BASELINES:
        raise MMXError(f"baseline {baseline!r}: use one of {BASELINES}")
    if not method.is_fitted:
        raise MMXError(f"method {method.name!r} is not fitted; fit it or load a checkpoint first")
    if min(batch_size, n_steps, n_samples, n_baselines, window) < 1:
        raise MMXError("batch_size, n_steps, n_samples, n_baselines and window must be >= 1")
    diff = differentiable(method)
    idx = sample_rows(data, idx)
    proba = method.predict(data, idx).proba  # checks the data against the method
    targets = _targets(target, proba)
    out = Attributions(ids=data.ids[idx], classes=method.classes, proba=proba, explainer=explainer,
                       target=targets, baseline=baseline, normalized=normalize)
    specs, p = diff.method.specs, patch_size(diff.method)
    parts: dict[str, list[np.ndarray]] = {m: [] for m in diff.modalities}
    for start in range(0, len(idx), batch_size):
        rows = idx[start:start + batch_size]
        inputs, present = diff.inputs(data, rows)
        t = torch.as_tensor(targets[start:start + batch_size], device=method.device)
        units = unit_attributions(explainer, diff, inputs, present, t, baseline=baseline, normalize=normalize,
                                  n_steps=n_steps, n_samples=n_samples, n_baselines=n_baselines, stdevs=stdevs,
                                  window=window, seed=seed + start)
        for m, a in zip(diff.modalities, units):
            parts[m].append(a.cpu().numpy())
    for m in diff.modalities:
        scores = np.concatenate(parts[m])
        if specs[m].kind == "omics":
            out.feature_scores[m], out.feature_names[m] = scores, specs[m].feature_names
        else:
            out.patch_maps[m], out.patch_size[m], out.image_hw[m] = scores, p, tuple(specs[m].image_shape[1:])
    _blank_absent(out, {m: ~data.present[m][torch.as_tensor(idx)].numpy() for m in diff.modalities})
    return out


def unit_attributions(explainer: str, diff: Differentiable, inputs: tuple, present: tuple, target: torch.Tensor, *,
                      baseline: str = "mean", normalize: bool = True, n_steps: int = 32, n_samples: int = 16,
                      n_baselines: int = 16, stdevs: float = 0.1, window: int = 2, seed: int = 0
                      ) -> tuple[torch.Tensor, ...]:
    """One captum call on prepared ``inputs`` (a batch of samples) towards ``target``: per input, the
    scores of its units (``N x features``, or ``N x rows x cols`` patches), each sample divided by its
    largest absolute score when ``normalize``; seeded (see :func:`attribute` for the options)."""
    with _seeded(seed):
        attrs = _captum(explainer, diff, inputs, present, diff.baselines(inputs, baseline), target,
                        n_steps=n_steps, n_samples=n_samples, n_baselines=n_baselines, stdevs=stdevs,
                        window=window, seed=seed)
    p, out = patch_size(diff.method), []
    for m, a in zip(diff.modalities, attrs):
        a = a.detach().float()
        if diff.method.specs[m].kind != "omics":
            a = to_patches(a, p, "sum" if explainer in ADDITIVE else "mean")
        if normalize:
            top = a.abs().flatten(1).amax(1).view(-1, *[1] * (a.ndim - 1))
            a = a / torch.where(top > 0, top, torch.ones_like(top))
        out.append(a)
    return tuple(out)


def to_patches(pixels: torch.Tensor, patch: int, how: str) -> torch.Tensor:
    """``N x C x H x W`` per-element values -> ``N x rows x cols`` per patch: their ``sum`` or
    ``mean`` over channels and the patch's pixels (edge patches: the pixels they have)."""
    x = pixels.float().sum(1, keepdim=True)
    total = F.avg_pool2d(x, patch, ceil_mode=True, divisor_override=1)
    if how == "sum":
        return total[:, 0]
    count = F.avg_pool2d(torch.ones_like(x), patch, ceil_mode=True, divisor_override=1) * pixels.shape[1]
    return (total / count)[:, 0]


def gradient_rows(method: Method) -> int:
    """Rows per forward pass with gradients: :data:`ROWS`, fewer for images above 64 x 64
    (:data:`GRADIENT_PIXELS`)."""
    pixels = [s.image_shape[1] * s.image_shape[2] for s in method.specs.values() if s.kind != "omics"]
    return max(1, min(ROWS, GRADIENT_PIXELS // max(pixels))) if pixels else ROWS


def _captum(explainer: str, diff: Differentiable, inputs: tuple, present: tuple, base: tuple, target: torch.Tensor,
            *, n_steps: int, n_samples: int, n_baselines: int, stdevs: float, window: int, seed: int) -> tuple:
    """One captum call on one batch of samples; per-element attributions, one tensor per input."""
    n = len(target)
    if explainer == "integrated_gradients":
        return IntegratedGradients(diff.proba).attribute(inputs, baselines=base, target=target,
                                                         additional_forward_args=present, n_steps=n_steps,
                                                         internal_batch_size=gradient_rows(diff.method))
    if explainer == "gradient_shap":
        gen = torch.Generator().manual_seed(seed)
        refs = tuple(b[:1] + stdevs * torch.randn((n_baselines, *b.shape[1:]), generator=gen).to(b) for b in base)
        step = max(1, gradient_rows(diff.method) // n_samples)  # captum draws n_samples rows per sample at once
        parts = [GradientShap(diff.proba).attribute(tuple(x[s:s + step] for x in inputs), baselines=refs,
                                                    target=target[s:s + step], n_samples=n_samples,
                                                    additional_forward_args=tuple(p[s:s + step] for p in present))
                 for s in range(0, n, step)]
        return tuple(torch.cat(a) for a in zip(*parts))
    per_eval = max(1, ROWS // n)
    if explainer == "occlusion":
        windows, strides = zip(*(_window(diff.method, m, window) for m in diff.modalities))
        attrs = Occlusion(diff.proba).attribute(inputs, sliding_window_shapes=windows, strides=strides,
                                                baselines=base, target=target, additional_forward_args=present,
                                                perturbations_per_eval=per_eval)
        return tuple(torch.nan_to_num(a) for a in attrs)  # pixels no window covers (a partial edge patch): 0
    return FeatureAblation(diff.proba).attribute(inputs, baselines=base, target=target,
                                                 additional_forward_args=present,
                                                 feature_mask=_unit_masks(diff.method, diff.modalities, inputs),
                                                 perturbations_per_eval=per_eval)


def _window(method: Method, modality: str, window: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Occlusion window and stride: one feature for omics; ``window`` x ``window`` patches (all
    channels, clipped to the image) moved one patch at a time for images."""
    spec = method.specs[modality]
    if spec.kind == "omics":
        return (1,), (1,)
    c, h, w = spec.image_shape
    p = patch_size(method)
    return (c, min(window * p, h), min(window * p, w)), (c, p, p)


def _unit_masks(method: Method, modalities: tuple[str, ...], inputs: tuple) -> tuple[torch.Tensor, ...]:
    """Feature-ablation groups, numbered across all inputs (captum ablates equal ids together):
    each omics feature, each image patch over all its channels."""
    masks, offset = [], 0
    for m, x in zip(modalities, inputs):
        if method.specs[m].kind == "omics":
            ids = torch.arange(x.shape[1]).view(1, -1)
        else:
            p, cols = patch_size(method), patch_grid(method, m)[1]
            r, c = torch.arange(x.shape[-2]) // p, torch.arange(x.shape[-1]) // p
            ids = (r[:, None] * cols + c[None, :]).view(1, 1, *x.shape[-2:])
        masks.append((ids + offset).to(x.device))
        offset = int(masks[-1].max()) + 1
    return tuple(masks)


def _targets(target: int | np.ndarray | None, proba: np.ndarray) -> np.ndarray:
    """One class index per sample: the predicted class, or the given class(es), checked."""
    n, c = proba.shape
    if target is None:
        return proba.argmax(1).astype(np.int64)
    t = np.broadcast_to(np.asarray(target, dtype=np.int64), (n,)) if np.ndim(target) == 0 else np.asarray(target)
    if t.shape != (n,) or not np.issubdtype(t.dtype, np.integer) or (t < 0).any() or (t >= c).any():
        raise MMXError(f"target must be a class index in 0..{c - 1}, or one per sample ({n}); got {target!r}")
    return t.astype(np.int64)


def sample_rows(data: MultimodalDataset, idx: np.ndarray | None) -> np.ndarray:
    """The samples asked for (all when None); at least one."""
    idx = np.arange(len(data)) if idx is None else np.asarray(idx)
    if len(idx) == 0:
        raise MMXError("no samples to explain: idx is empty")
    return idx


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed the global generators captum draws from (numpy's and torch's), restoring them after."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)
