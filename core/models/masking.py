"""Test-time masking of any subset of modalities, on prepared inputs.

Images: ``gray`` (uniform 0.5, the seed study's), ``zeros``, ``blur``, ``mean`` (the training
mean image), ``patches`` (listed patches filled, by default gray; ``keep=True`` fills every
other patch instead) and ``topk`` (the k most informative patches by the model's own map
filled). As text: ``gray``, ``topk:8``, ``patches:0,17,33``. Patches live on the model's own
patch grid (its ``patch_size``; 16 patches a side, at least 4 px, for models without one). Omics: ``zeros`` (after
scaling) or ``mean`` (the training mean). Only the masked modalities change; presence is left
as it is (masking is not missingness). A :class:`RowMasks` masks each data row its own way, so
the masked variants of one sample run as one batch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from numbers import Integral, Real

import torch
import torch.nn.functional as F

from core.data.dataset import ModalitySpec
from core.errors import MMXError
from core.models.unet_gate import expand_patches

DEFAULT_PATCH = 4  # pixels per patch side, at least, for models without a patch grid of their own


def default_patch(side: int) -> int:
    """Patch side for a model without a grid of its own: 16 patches a side (4 px up to 64 px images),
    so explaining a 224 px image stays 256 patches, not 3,136."""
    return max(DEFAULT_PATCH, side // 16)
IMAGE_MODES = ("gray", "zeros", "blur", "mean", "patches", "topk")
PATCH_FILLS = ("gray", "zeros", "blur", "mean")  # what a masked patch holds
OMICS_MODES = ("zeros", "mean")


@dataclass(frozen=True)
class MaskSpec:
    """How to mask one modality. ``patches``: flat patch indices (row-major on the patch grid);
    ``fill``: what masked patches hold; ``keep``: mask every patch except the listed ones."""

    mode: str
    patches: tuple[int, ...] = ()
    fill: str = "gray"
    keep: bool = False
    k: int = 0
    patch_size: int | None = None  # None: the model's patch size
    blur_sigma: float = 3.0


@dataclass(frozen=True)
class RowMasks:
    """One modality masked per row of the data predicted: ``specs[i]`` masks row ``i`` (None:
    left as it is). Lets K masked copies of a sample share one forward pass."""

    specs: tuple[MaskSpec | None, ...]


Mask = MaskSpec | RowMasks


class RowMaskMismatch(MMXError):
    """Per-row masks that do not line up with the rows predicted: a method that predicts a subset
    of its rows (unimodal: those holding its modality) cannot take them."""


def _spec(value: str | MaskSpec, where: str) -> MaskSpec:
    """``MaskSpec`` from text: ``mode``, ``topk:K`` or ``patches:i,j,...``."""
    if isinstance(value, MaskSpec):
        return value
    mode, _, arg = str(value).partition(":")
    try:
        if mode == "topk":
            return MaskSpec(mode, k=int(arg))
        if mode == "patches":
            return MaskSpec(mode, patches=tuple(int(p) for p in arg.split(",")))
    except ValueError:
        hint = "topk:K (e.g. topk:8)" if mode == "topk" else "patches:i,j,... (flat indices on the patch grid)"
        raise MMXError(f"mask {where}={value!r}: write {hint}") from None
    if arg:
        raise MMXError(f"mask {where}={value!r}: mode {mode!r} takes no argument")
    return MaskSpec(mode)


def parse_mask(mask: dict[str, str | Mask] | None, specs: dict[str, ModalitySpec],
               patch_size: int | None = None) -> dict[str, Mask]:
    """Normalise ``{"image": "gray"}``-style input, check modes against modality kinds and put
    patch masks on the model's patch grid (``patch_size``; None: a model without one, :func:`default_patch`)."""
    out: dict[str, Mask] = {}
    for m, v in (mask or {}).items():
        if m not in specs:
            raise MMXError(f"cannot mask {m!r}: the model has modalities {list(specs)}")
        if isinstance(v, RowMasks):
            out[m] = RowMasks(tuple(None if s is None else _checked(s, m, specs[m], patch_size) for s in v.specs))
        else:
            out[m] = _checked(_spec(v, m), m, specs[m], patch_size)
    return out


def _checked(spec: MaskSpec, m: str, modality: ModalitySpec, patch_size: int | None) -> MaskSpec:
    """``spec`` checked against the modality's kind, on the model's patch grid."""
    allowed = IMAGE_MODES if modality.kind == "image" else OMICS_MODES
    if spec.mode not in allowed:
        raise MMXError(f"mask mode {spec.mode!r} is not valid for {modality.kind} {m!r}; use one of {allowed}")
    if spec.mode == "topk" and spec.k < 1:
        raise MMXError(f"mask {m}=topk needs k >= 1 patches (e.g. topk:8)")
    if spec.mode == "patches" and not spec.patches and not spec.keep:
        raise MMXError(f"mask {m}=patches needs patch indices (e.g. patches:0,17)")
    if spec.fill not in PATCH_FILLS:
        raise MMXError(f"mask {m}: patch fill {spec.fill!r} is not one of {PATCH_FILLS}")
    _check_numbers(spec, m)
    if spec.mode == "topk" and patch_size is None:
        raise MMXError(f"top-k patch masking of {m!r} needs a model with a patch informativeness map")
    if spec.mode == "topk" and spec.patch_size not in (None, patch_size):
        raise MMXError(f"mask {m}=topk: patch size {spec.patch_size} differs from the model's map "
                       f"({patch_size} px)")
    if spec.mode in ("patches", "topk") and spec.patch_size is None:
        spec = dataclasses.replace(spec, patch_size=patch_size or default_patch(max(modality.image_shape[1:])))
    return spec


def check_rows(mask: dict[str, Mask], n: int) -> None:
    """Per-row masks must name every row of the ``n`` predicted, so no row takes another's mask."""
    for m, v in mask.items():
        if isinstance(v, RowMasks) and len(v.specs) != n:
            raise RowMaskMismatch(f"mask {m}: {len(v.specs)} per-row masks for {n} rows of data")


def uses_topk(mask: dict[str, Mask]) -> bool:
    """True when some row is masked by the unmasked map's top patches (so that map is needed first)."""
    specs = [s for v in mask.values() for s in (v.specs if isinstance(v, RowMasks) else (v,))]
    return any(s is not None and s.mode == "topk" for s in specs)


def _check_numbers(spec: MaskSpec, m: str) -> None:
    """Numbers a mask is made of, checked before they reach torch (which overflows or divides by zero)."""
    if spec.patch_size is not None and not (isinstance(spec.patch_size, Integral) and spec.patch_size >= 1):
        raise MMXError(f"mask {m}: patch size must be a whole number of pixels >= 1, not {spec.patch_size!r}")
    if not (isinstance(spec.blur_sigma, Real) and 0.01 <= spec.blur_sigma <= 1000):  # tinier ones blur into NaN
        raise MMXError(f"mask {m}: blur sigma must be 0.01 to 1000 pixels, not {spec.blur_sigma!r}")
    if not isinstance(spec.k, Integral) or any(not isinstance(p, Integral) or p < 0 for p in spec.patches):
        raise MMXError(f"mask {m}: patch indices and k must be whole numbers >= 0")


def patch_grid_mask(n: int, h: int, w: int, patch_size: int, patches: torch.Tensor) -> torch.Tensor:
    """``N x 1 x H x W`` bool: True inside the listed patches (``patches``: N x k flat indices)."""
    gw = -(-w // patch_size)
    gh = -(-h // patch_size)
    if patches.numel() and (int(patches.min()) < 0 or int(patches.max()) >= gh * gw):
        raise MMXError(f"patch indices must lie in 0..{gh * gw - 1} (a {gh} x {gw} grid of {patch_size} px patches)")
    grid = torch.zeros(n, gh * gw, dtype=torch.bool, device=patches.device)
    grid.scatter_(1, patches.long(), True)
    return expand_patches(grid.view(n, 1, gh, gw), patch_size, h, w)


def top_patches(feature_map: torch.Tensor, k: int, patch_size: int) -> torch.Tensor:
    """Flat indices of the ``k`` patches with the highest mean informativeness (``N x k``)."""
    pooled = F.avg_pool2d(feature_map.float(), patch_size, ceil_mode=True).flatten(1)
    return pooled.topk(min(k, pooled.shape[1]), dim=1).indices


def apply_mask(x: dict[str, torch.Tensor], mask: dict[str, Mask], training_mean=None,
               feature_maps: dict[str, torch.Tensor] | None = None,
               rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Return a copy of prepared inputs ``x`` with the modalities in ``mask`` masked; ``rows``:
    the data rows ``x`` holds, which :class:`RowMasks` are indexed by."""
    out = dict(x)
    for m, spec in mask.items():
        if m not in x:
            raise MMXError(f"cannot mask {m!r}: the inputs hold {list(x)}")
        if isinstance(spec, RowMasks):
            out[m] = _apply_rows(m, x[m], spec, rows, training_mean, feature_maps)
            continue
        _check_numbers(spec, m)
        v = x[m]
        if spec.mode in ("patches", "topk"):
            if v.ndim != 4:
                raise MMXError(f"patch masking of {m!r} needs images (N x C x H x W), not shape {tuple(v.shape)}")
            n, _, h, w = v.shape
            p = spec.patch_size or default_patch(max(h, w))
            if spec.mode == "patches":
                cells = -(-h // p) * -(-w // p)
                if any(i >= cells for i in spec.patches):
                    raise MMXError(f"patch indices must lie in 0..{cells - 1} (the {p} px patch grid of {m!r})")
                idx = torch.tensor(spec.patches, device=v.device).long().expand(n, -1)
            else:
                if feature_maps is None or m not in feature_maps:
                    raise MMXError(f"top-k patch masking of {m!r} needs a model with an informativeness map")
                idx = top_patches(feature_maps[m], spec.k, p)
            sel = patch_grid_mask(n, h, w, p, idx)
            filled = apply_mask({m: v}, {m: MaskSpec(spec.fill, blur_sigma=spec.blur_sigma)}, training_mean)[m]
            out[m] = torch.where(~sel if spec.keep else sel, filled, v)
        elif spec.mode == "zeros":
            out[m] = torch.zeros_like(v)
        elif spec.mode == "mean":
            if training_mean is None:
                raise MMXError(f"mask {m}=mean needs the training mean (a fitted model's prep)")
            out[m] = training_mean(m).to(v).expand_as(v).clone()
        elif spec.mode == "gray":
            out[m] = torch.full_like(v, 0.5)
        elif spec.mode == "blur":
            from torchvision.transforms.functional import gaussian_blur

            side = min(v.shape[-2:])
            k = min(2 * int(3 * spec.blur_sigma) + 1, side if side % 2 else side - 1)  # the kernel must fit
            out[m] = gaussian_blur(v, [k, k], [spec.blur_sigma, spec.blur_sigma])
        else:
            raise MMXError(f"unknown mask mode {spec.mode!r}")
    return out


def _apply_rows(m: str, v: torch.Tensor, spec: RowMasks, rows: torch.Tensor | None, training_mean,
                feature_maps: dict[str, torch.Tensor] | None) -> torch.Tensor:
    """``v`` with each row masked by its own spec: the rows sharing a spec are masked together."""
    if rows is None:
        raise MMXError(f"per-row masks of {m!r} need the data rows of the batch")
    rows = rows.tolist()
    if any(not 0 <= r < len(spec.specs) for r in rows):
        raise RowMaskMismatch(f"mask {m}: {len(spec.specs)} per-row masks do not cover data rows {rows}")
    groups: dict[MaskSpec, list[int]] = {}
    for i, r in enumerate(rows):
        if spec.specs[r] is not None:
            groups.setdefault(spec.specs[r], []).append(i)
    out = v.clone()
    for s, pos in groups.items():
        at = torch.tensor(pos, device=v.device)
        fm = None if feature_maps is None or m not in feature_maps else {m: feature_maps[m][at]}
        out[at] = apply_mask({m: v[at]}, {m: s}, training_mean, fm)[m]
    return out
