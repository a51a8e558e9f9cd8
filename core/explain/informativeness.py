"""The learned explanations of one forward pass: feature informativeness (the gates), patch
maps, modality weights (TCP confidences) and per-modality probabilities.

These come from the model itself (``mm_dynamics`` learns them); any fitted method can be
asked, and it returns what it has (e.g. ``mm_static`` has fixed modality weights only).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from core.data.dataset import MultimodalDataset
from core.errors import MMXError
from core.models.base import Method
from core.models.masking import MaskSpec


@dataclass
class Informativeness:
    """Per-sample explain outputs for samples ``ids`` (rows in the order asked)."""

    ids: np.ndarray
    classes: tuple[str, ...]
    proba: np.ndarray  # N x C, fused prediction
    feature_scores: dict[str, np.ndarray] = field(default_factory=dict)  # omics: N x F gate values
    feature_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    patch_maps: dict[str, np.ndarray] = field(default_factory=dict)  # images: N x rows x cols, one value per patch
    patch_size: dict[str, int] = field(default_factory=dict)
    image_hw: dict[str, tuple[int, int]] = field(default_factory=dict)  # images: height, width in pixels
    modality_weights: dict[str, np.ndarray] = field(default_factory=dict)  # N (TCP confidence or fixed weight)
    modality_proba: dict[str, np.ndarray] = field(default_factory=dict)  # N x C, each modality's own classifier

    def pixel_map(self, modality: str, sample: int) -> np.ndarray:
        """The patch map of one sample at pixel resolution (each patch value repeated)."""
        grid = self._patches(modality)[sample]
        p = self.patch_size[modality]
        h, w = self.image_hw[modality]
        return np.kron(grid, np.ones((p, p), dtype=grid.dtype))[:h, :w]

    def top_features(self, modality: str, k: int = 10, sample: int | None = None) -> pd.DataFrame:
        """The ``k`` most informative features of an omics modality for one sample (row index
        into this result), or averaged over all samples when ``sample`` is None."""
        if modality not in self.feature_scores:
            raise MMXError(f"no feature informativeness for {modality!r}; available: {sorted(self.feature_scores)}")
        scores = self.feature_scores[modality]
        v = scores.mean(0) if sample is None else scores[sample]
        order = np.argsort(-v, kind="stable")[:k]
        return pd.DataFrame({"feature": np.asarray(self.feature_names[modality])[order], "informativeness": v[order]})

    def _patches(self, modality: str) -> np.ndarray:
        if modality not in self.patch_maps:
            raise MMXError(f"no patch map for {modality!r}; available: {sorted(self.patch_maps)}")
        return self.patch_maps[modality]


def explain(method: Method, data: MultimodalDataset, idx: np.ndarray | None = None,
            mask: dict[str, str | MaskSpec] | None = None) -> Informativeness:
    """Run the fitted ``method`` on samples ``idx`` of ``data`` (optionally with modalities
    masked) and collect everything its forward pass says about why."""
    if not method.is_fitted:  # neither fitted nor loaded from a checkpoint
        raise MMXError(f"method {method.name!r} is not fitted; fit it or load a checkpoint first")
    data = method.check_data(data)
    idx = np.arange(len(data)) if idx is None else np.asarray(idx)
    pred = method.predict(data, idx, mask=mask)
    out = pred.output
    info = Informativeness(ids=data.ids[idx], classes=method.classes, proba=pred.proba)
    patch = int(getattr(method.config, "patch_size", 1))
    for m, fm in out.feature_maps.items():
        if method.specs[m].kind == "omics":
            info.feature_scores[m] = fm.numpy()
            info.feature_names[m] = method.specs[m].feature_names
        else:  # N x 1 x H x W, constant inside each patch: one value per patch
            info.patch_maps[m] = fm[:, 0, ::patch, ::patch].numpy()
            info.patch_size[m] = patch
            info.image_hw[m] = tuple(fm.shape[-2:])
    info.modality_weights = {m: w.numpy() for m, w in out.modality_weights.items()}
    info.modality_proba = {m: torch.softmax(v.float(), 1).numpy() for m, v in out.modality_logits.items()}
    _blank_absent(info, {m: ~data.present[m][torch.as_tensor(idx)].numpy() for m in method.specs})
    return info


def _blank_absent(info: Informativeness, absent: dict[str, np.ndarray]) -> None:
    """NaN wherever a sample lacks the modality: a gate, confidence or prediction computed from a
    placeholder input explains nothing (the model gives that modality no latent)."""
    for maps in (info.feature_scores, info.patch_maps, info.modality_weights, info.modality_proba):
        for m, v in maps.items():
            if absent[m].any():
                maps[m] = v.astype(np.float64 if v.dtype == np.float64 else np.float32, copy=True)
                maps[m][absent[m]] = np.nan
