"""What-if predictions on one sample: switch modalities off (masked or absent), mask image
patches, and watch the prediction and the learned maps move.

The dashboard's live controls are one :class:`Masking`; :func:`live_predict` answers it with the
unmasked and the masked explain outputs, and :func:`patch_ablation` traces the predicted class's
probability as more and more patches are masked in a chosen order.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from core.data.dataset import MultimodalDataset
from core.errors import MMXError
from core.explain.informativeness import Informativeness, explain
from core.explain.sample import Sample
from core.models.base import Method
from core.models.masking import DEFAULT_PATCH, IMAGE_MODES, OMICS_MODES, PATCH_FILLS, MaskSpec

ABSENT = "absent"  # a switched-off modality treated as missing (the model's own handling), not masked
PATCH_ORDERS = ("most", "least", "random")  # most / least informative first, or a seeded shuffle


def off_modes(method: Method, modality: str) -> tuple[str, ...]:
    """How ``modality`` can be switched off: the masks of its kind, or left absent (when the model
    reads another modality and does not need this one)."""
    kind = method.specs[modality].kind
    if kind == "image":
        masks = tuple(m for m in IMAGE_MODES if m in PATCH_FILLS)
    else:  # the training mean first: the same default as the cohort masking table
        masks = tuple(sorted(OMICS_MODES, key=lambda m: m != "mean"))
    can_lack = modality not in method.required_modalities() and len(method.predicts_from()) > 1
    return (*masks, ABSENT) if can_lack else masks


@dataclass(frozen=True)
class Masking:
    """The live controls: modalities switched off (``{modality: mode}``, a mask mode or
    :data:`ABSENT`) and, per image modality, patches to mask (``keep=True``: keep only those)
    filled with ``fill``."""

    off: dict[str, str] = field(default_factory=dict)
    patches: dict[str, tuple[int, ...]] = field(default_factory=dict)
    keep: bool = False
    fill: str = "gray"

    @property
    def active(self) -> bool:
        return bool(self.off) or any(self.patches.values()) or (self.keep and bool(self.patches))

    def mask_specs(self, method: Method) -> dict[str, MaskSpec]:
        """The masks :meth:`Method.predict` applies (absent modalities are not masks)."""
        out = {}
        for m, mode in self.off.items():
            if m not in method.predicts_from():
                raise MMXError(f"cannot switch off {m!r}: the model predicts from {list(method.predicts_from())}")
            if mode not in off_modes(method, m):
                raise MMXError(f"{m!r} cannot be switched off as {mode!r}; use one of {off_modes(method, m)}")
            if mode != ABSENT:
                out[m] = MaskSpec(mode)
        for m, idx in self.patches.items():
            if m in self.off or not (idx or self.keep):
                continue
            if method.specs.get(m) is None or method.specs[m].kind != "image":
                raise MMXError(f"patch masks need an image modality; {m!r} is not one of the model's images")
            out[m] = MaskSpec("patches", patches=tuple(int(i) for i in idx), fill=self.fill, keep=self.keep,
                              patch_size=patch_size(method))
        return out

    def as_dict(self) -> dict:
        return {"off": dict(self.off), "patches": {m: list(v) for m, v in self.patches.items()}, "keep": self.keep,
                "fill": self.fill}


def patch_size(method: Method) -> int:
    """Pixels per patch side: the model's own grid (MM dynamics' gate), else the default grid."""
    return int(getattr(method.config, "patch_size", None) or DEFAULT_PATCH)


def patch_grid(method: Method, modality: str) -> tuple[int, int]:
    """Rows and columns of patches over an image modality."""
    _, h, w = method.specs[modality].image_shape
    p = patch_size(method)
    return -(-h // p), -(-w // p)


@dataclass
class Live:
    """The sample unmasked and as masked; ``masked`` is ``unmasked`` when nothing is masked."""

    unmasked: Informativeness
    masked: Informativeness
    masking: Masking

    def table(self) -> pd.DataFrame:
        """Per class: probability unmasked, masked and the change (percentage points)."""
        p, q = self.unmasked.proba[0], self.masked.proba[0]
        return pd.DataFrame({"class": self.unmasked.classes, "probability": p, "masked": q,
                             "change (pp)": 100 * (q - p)})

    @property
    def top(self) -> tuple[str, str]:
        """Predicted class unmasked and masked."""
        c = self.unmasked.classes
        return c[int(self.unmasked.proba[0].argmax())], c[int(self.masked.proba[0].argmax())]


def live_predict(method: Method, sample: Sample, masking: Masking | None = None,
                 unmasked: Informativeness | None = None) -> Live:
    """Explain ``sample`` as given and under ``masking`` (pass ``unmasked`` when already known)."""
    masking = masking or Masking()
    base = unmasked if unmasked is not None else explain(method, sample.data)
    if not masking.active:
        return Live(base, base, masking)
    specs = masking.mask_specs(method)
    data = without(sample.data, [m for m, mode in masking.off.items() if mode == ABSENT])
    need = [m for m in method.required_modalities() if not bool(data.present[m][0])]
    if need:
        raise MMXError(f"model {method.name!r} predicts from {need} alone: it cannot be left absent")
    return Live(base, explain(method, data, mask=specs), masking)


def without(data: MultimodalDataset, modalities: list[str]) -> MultimodalDataset:
    """``data`` with ``modalities`` absent (slots zeroed, presence False)."""
    if not modalities:
        return data
    present = {m: (torch.zeros_like(p) if m in modalities else p) for m, p in data.present.items()}
    if not torch.stack(list(present.values())).any(0).all():
        raise MMXError("every modality would be absent: keep at least one switched on")
    x = {m: (torch.zeros_like(v) if m in modalities else v) for m, v in data.modalities.items()}
    return dataclasses.replace(data, modalities=x, present=present, _hash=None)


def patch_order(method: Method, info: Informativeness, modality: str, order: str = "most",
                seed: int = 0) -> np.ndarray:
    """Flat patch indices in masking order: by the learned map (``most`` / ``least`` informative
    first; ties by index) or a seeded random permutation."""
    if order not in PATCH_ORDERS:
        raise MMXError(f"patch order {order!r}: use one of {PATCH_ORDERS}")
    rows, cols = patch_grid(method, modality)
    if order == "random":
        return np.random.default_rng(seed).permutation(rows * cols)
    if modality not in info.patch_maps:
        raise MMXError(f"{method.name!r} learns no patch map for {modality!r}: only a random order is possible")
    v = info.patch_maps[modality][0].ravel()
    return np.argsort(-v if order == "most" else v, kind="stable")


def patch_ablation(method: Method, sample: Sample, modality: str, order: str = "most",
                   ks: list[int] | None = None, seed: int = 0, fill: str = "gray",
                   unmasked: Informativeness | None = None) -> pd.DataFrame:
    """The unmasked predicted class's probability with the first ``k`` patches of ``order``
    masked, for each ``k`` in ``ks`` (default: 17 steps from none to all)."""
    base = unmasked if unmasked is not None else explain(method, sample.data)
    target = int(base.proba[0].argmax())
    ranked = patch_order(method, base, modality, order, seed)
    ks = ks if ks is not None else sorted({int(round(k)) for k in np.linspace(0, len(ranked), 17)})
    rows = []
    for k in ks:
        masking = Masking(patches={modality: tuple(ranked[:k].tolist())}, fill=fill)
        proba = base.proba[0] if k == 0 else method.predict(sample.data, mask=masking.mask_specs(method)).proba[0]
        rows.append({"k": k, "order": order, "probability": float(proba[target]),
                     "predicted": base.classes[int(proba.argmax())]})
    return pd.DataFrame(rows)


def model_input(method: Method, sample: Sample, modality: str, masking: Masking | None = None) -> np.ndarray:
    """What the model sees of an image modality under ``masking``: ``H x W x 3`` uint8."""
    specs = (masking or Masking()).mask_specs(method)
    specs = {modality: specs[modality]} if modality in specs else {}
    x = method.prepared(sample.data.batch([0]), specs)[modality][0]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def parse_patches(text: str, n_patches: int) -> tuple[int, ...]:
    """Patch indices from text such as ``"0-15, 40, 41"`` (flat, row-major on the patch grid)."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise MMXError(f"patches {part!r}: write indices and ranges such as 0-15, 40, 41") from None
        if not (0 <= a <= b < n_patches):
            raise MMXError(f"patches {part!r}: indices run from 0 to {n_patches - 1}")
        out.extend(range(a, b + 1))
    return tuple(sorted(set(out)))
