"""Test-time masking of any subset of modalities, on prepared inputs.

Images: ``gray`` (uniform 0.5, the seed study's), ``zeros``, ``blur``, ``patches`` (listed
patches set to gray) and ``topk`` (the k most informative patches by the model's own map set
to gray). Omics: ``zeros`` (after scaling) or ``mean`` (the training mean). Only the masked
modalities change; presence is left as it is (masking is not missingness).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.data.dataset import ModalitySpec
from core.errors import MMXError

IMAGE_MODES = ("gray", "zeros", "blur", "patches", "topk")
OMICS_MODES = ("zeros", "mean")


@dataclass(frozen=True)
class MaskSpec:
    """How to mask one modality. ``patches``: flat patch indices (row-major on the patch grid)."""

    mode: str
    patches: tuple[int, ...] = ()
    k: int = 0
    patch_size: int = 4
    blur_sigma: float = 3.0


def parse_mask(mask: dict[str, str | MaskSpec] | None, specs: dict[str, ModalitySpec]) -> dict[str, MaskSpec]:
    """Normalise ``{"image": "gray"}``-style input and check modes against modality kinds."""
    out = {}
    for m, v in (mask or {}).items():
        if m not in specs:
            raise MMXError(f"cannot mask {m!r}: the model has modalities {list(specs)}")
        spec = v if isinstance(v, MaskSpec) else MaskSpec(str(v))
        allowed = IMAGE_MODES if specs[m].kind == "image" else OMICS_MODES
        if spec.mode not in allowed:
            raise MMXError(f"mask mode {spec.mode!r} is not valid for {specs[m].kind} {m!r}; use one of {allowed}")
        out[m] = spec
    return out


def patch_grid_mask(n: int, h: int, w: int, patch_size: int, patches: torch.Tensor) -> torch.Tensor:
    """``N x 1 x H x W`` bool: True inside the listed patches (``patches``: N x k flat indices)."""
    gw = -(-w // patch_size)
    gh = -(-h // patch_size)
    grid = torch.zeros(n, gh * gw, dtype=torch.bool, device=patches.device)
    grid.scatter_(1, patches.long(), True)
    full = grid.view(n, 1, gh, gw).repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    return full[:, :, :h, :w]


def top_patches(feature_map: torch.Tensor, k: int, patch_size: int) -> torch.Tensor:
    """Flat indices of the ``k`` patches with the highest mean informativeness (``N x k``)."""
    pooled = F.avg_pool2d(feature_map.float(), patch_size, ceil_mode=True).flatten(1)
    return pooled.topk(min(k, pooled.shape[1]), dim=1).indices


def apply_mask(x: dict[str, torch.Tensor], mask: dict[str, MaskSpec], training_mean=None,
               feature_maps: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Return a copy of prepared inputs ``x`` with the modalities in ``mask`` masked."""
    out = dict(x)
    for m, spec in mask.items():
        v = x[m]
        if spec.mode == "zeros":
            out[m] = torch.zeros_like(v)
        elif spec.mode == "mean":
            out[m] = training_mean(m).to(v).expand_as(v).clone()
        elif spec.mode == "gray":
            out[m] = torch.full_like(v, 0.5)
        elif spec.mode == "blur":
            from torchvision.transforms.functional import gaussian_blur

            k = 2 * int(3 * spec.blur_sigma) + 1
            out[m] = gaussian_blur(v, [k, k], [spec.blur_sigma, spec.blur_sigma])
        else:  # patches / topk
            n, _, h, w = v.shape
            if spec.mode == "patches":
                idx = torch.tensor(spec.patches, device=v.device).long().expand(n, -1)
            else:
                if feature_maps is None or m not in feature_maps:
                    raise MMXError(f"top-k patch masking of {m!r} needs a model with an informativeness map")
                idx = top_patches(feature_maps[m], spec.k, spec.patch_size)
            sel = patch_grid_mask(n, h, w, spec.patch_size, idx)
            out[m] = torch.where(sel, torch.full_like(v, 0.5), v)
    return out
