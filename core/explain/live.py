"""What-if predictions on one sample: switch modalities off (masked or absent), mask image
patches, and watch the prediction and the learned maps move.

The dashboard's live controls are one :class:`Masking`; :func:`live_predict` answers it with the
unmasked and the masked explain outputs, and :func:`patch_ablation` traces the predicted class's
probability as more and more patches are masked in a chosen order. Both go through
:func:`explain_variants`: every variant of the sample in one forward pass, not one pass each.
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
from core.models.masking import (
    IMAGE_MODES,
    OMICS_MODES,
    PATCH_FILLS,
    MaskSpec,
    RowMaskMismatch,
    RowMasks,
    default_patch,
)

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
    """Pixels per patch side: the model's own grid (MM dynamics' gate), else the default grid for its
    largest image (:func:`~core.models.masking.default_patch`)."""
    own = getattr(method.config, "patch_size", None)
    sides = [max(s.image_shape[1:]) for s in method.specs.values() if s.kind == "image"]
    return int(own or default_patch(max(sides, default=0)))


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
    """Explain ``sample`` as given and under ``masking`` (pass ``unmasked`` when already known);
    what is not known yet comes from one forward pass."""
    masking = masking or Masking()
    todo = ([] if unmasked is not None else [Masking()]) + ([masking] if masking.active else [])
    out = explain_variants(method, sample, todo)
    base = unmasked if unmasked is not None else out.pop(0)
    return Live(base, out[0] if masking.active else base, masking)


def explain_variants(method: Method, sample: Sample, maskings: list[Masking]) -> list[Informativeness]:
    """``sample`` explained under each of ``maskings`` by one forward pass over copies of its row,
    each with its own modalities absent and masked by its own specs; the same outputs as one
    :func:`~core.explain.informativeness.explain` per masking, at the cost of about one. A method
    that predicts only some of the copies (unimodal, when a variant lacks its modality) gets one
    pass per masking."""
    if not maskings:
        return []
    try:
        return _explain_batched(method, sample, maskings)
    except RowMaskMismatch:
        return [_explain_batched(method, sample, [masking])[0] for masking in maskings]


def _explain_batched(method: Method, sample: Sample, maskings: list[Masking]) -> list[Informativeness]:
    rows = [variant_row(method, sample.data, masking) for masking in maskings]
    specs = [masking.mask_specs(method) for masking in maskings]
    if len(rows) == 1:  # nothing to batch: no copies, no per-row masks
        return [explain(method, rows[0], mask=specs[0])]
    modalities = dict.fromkeys(m for s in specs for m in s)
    info = explain(method, stacked(rows), mask={m: RowMasks(tuple(s.get(m) for s in specs)) for m in modalities})
    one = lambda d, i: {m: v[i:i + 1] for m, v in d.items()}  # noqa: E731
    return [dataclasses.replace(info, ids=sample.data.ids, proba=info.proba[i:i + 1],
                                feature_scores=one(info.feature_scores, i), patch_maps=one(info.patch_maps, i),
                                modality_weights=one(info.modality_weights, i),
                                modality_proba=one(info.modality_proba, i)) for i in range(len(maskings))]


def variant_row(method: Method, data: MultimodalDataset, masking: Masking) -> MultimodalDataset:
    """The one-row ``data`` with the modalities ``masking`` leaves absent taken out."""
    data = without(data, [m for m, mode in masking.off.items() if mode == ABSENT])
    need = [m for m in method.required_modalities() if not bool(data.present[m][0])]
    if need:
        raise MMXError(f"model {method.name!r} predicts from {need} alone: it cannot be left absent")
    return data


def stacked(rows: list[MultimodalDataset]) -> MultimodalDataset:
    """Variants of one sample's row as one dataset (ids numbered: a dataset's ids are unique)."""
    first = rows[0]
    cat = lambda part: {m: torch.cat([getattr(r, part)[m] for r in rows]) for m in first.specs}  # noqa: E731
    n = len(rows)
    ids = np.array([f"{first.ids[0]}#{i}" for i in range(n)])
    return dataclasses.replace(first, modalities=cat("modalities"), present=cat("present"), y=first.y.repeat(n),
                               groups=np.repeat(first.groups, n), ids=ids, targets={}, _hash=None)


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
    masked, for each ``k`` in ``ks`` (default: 17 steps from none to all); the masked steps in
    one forward pass."""
    base = unmasked if unmasked is not None else explain(method, sample.data)
    target = int(base.proba[0].argmax())
    ranked = patch_order(method, base, modality, order, seed)
    ks = ks if ks is not None else sorted({int(round(k)) for k in np.linspace(0, len(ranked), 17)})
    masked = iter(explain_variants(method, sample, [Masking(patches={modality: tuple(ranked[:k].tolist())}, fill=fill)
                                                    for k in ks if k]))
    rows = []
    for k in ks:
        proba = base.proba[0] if k == 0 else next(masked).proba[0]
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
