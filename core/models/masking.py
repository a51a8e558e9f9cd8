"""Test-time masking of any subset of modalities, on prepared inputs.

Images: ``gray`` (uniform 0.5, the seed study's), ``zeros``, ``blur``, ``mean`` (the training
mean image), ``patches`` (listed patches filled, by default gray; ``keep=True`` fills every
other patch instead) and ``topk`` (the k most informative patches by the model's own map
filled). As text: ``gray``, ``topk:8``, ``patches:0,17,33``. Patches live on the model's own
patch grid (its ``patch_size``; 4 px for models without one). Omics: ``zeros`` (after
scaling) or ``mean`` (the training mean). Only the masked modalities change; presence is left
as it is (masking is not missingness).
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

DEFAULT_PATCH = 4  # pixels per patch side for models without a patch grid of their own
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


def parse_mask(mask: dict[str, str | MaskSpec] | None, specs: dict[str, ModalitySpec],
               patch_size: int | None = None) -> dict[str, MaskSpec]:
    """Normalise ``{"image": "gray"}``-style input, check modes against modality kinds and put
    patch masks on the model's patch grid (``patch_size``; None: a model without one, 4 px)."""
    out = {}
    for m, v in (mask or {}).items():
        if m not in specs:
            raise MMXError(f"cannot mask {m!r}: the model has modalities {list(specs)}")
        spec = _spec(v, m)
        allowed = IMAGE_MODES if specs[m].kind == "image" else OMICS_MODES
        if spec.mode not in allowed:
            raise MMXError(f"mask mode {spec.mode!r} is not valid for {specs[m].kind} {m!r}; use one of {allowed}")
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
            spec = dataclasses.replace(spec, patch_size=patch_size or DEFAULT_PATCH)
        out[m] = spec
    return out


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


def apply_mask(x: dict[str, torch.Tensor], mask: dict[str, MaskSpec], training_mean=None,
               feature_maps: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Return a copy of prepared inputs ``x`` with the modalities in ``mask`` masked."""
    out = dict(x)
    for m, spec in mask.items():
        if m not in x:
            raise MMXError(f"cannot mask {m!r}: the inputs hold {list(x)}")
        _check_numbers(spec, m)
        v = x[m]
        if spec.mode in ("patches", "topk"):
            if v.ndim != 4:
                raise MMXError(f"patch masking of {m!r} needs images (N x C x H x W), not shape {tuple(v.shape)}")
            n, _, h, w = v.shape
            p = spec.patch_size or DEFAULT_PATCH
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
