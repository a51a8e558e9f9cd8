"""Match an uploaded table's features to the feature list a model was trained on.

Features are matched by name (exactly, else ignoring case); features the model needs but the
upload lacks are filled (zeros or given values, the checkpoint's rule) and reported; features
the model does not know are ignored and reported.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data.dataset import ModalitySpec
from core.data.readers import Table
from core.errors import MMXError


@dataclass(frozen=True)
class FeatureMatch:
    """What matching found: counts and the names filled in or ignored."""

    modality: str
    matched: int
    missing: tuple[str, ...]
    unknown: tuple[str, ...]

    def summary(self) -> str:
        text = f"{self.modality}: {self.matched} of {self.matched + len(self.missing)} features matched"
        if self.missing:
            text += f"; {len(self.missing)} missing and filled (e.g. {', '.join(self.missing[:5])})"
        if self.unknown:
            text += f"; {len(self.unknown)} unknown and ignored (e.g. {', '.join(self.unknown[:5])})"
        return text


def match_features(table: Table, spec: ModalitySpec, fill_values: np.ndarray | None = None,
                   min_fraction: float = 0.5) -> tuple[np.ndarray, FeatureMatch]:
    """``table.X`` reordered to ``spec.feature_names``; absent features take ``fill_values``
    (zeros when None). Fewer than ``min_fraction`` matched features is an error: the upload is
    most likely another modality or uses other identifiers."""
    if spec.kind != "omics":
        raise MMXError(f"modality {spec.name!r} is an image; it has no feature list to match")
    X = np.asarray(table.X)
    if X.ndim != 2 or X.shape != (len(table.ids), len(table.features)):
        raise MMXError(f"values are {' x '.join(map(str, X.shape))} but there are {len(table.ids)} samples and "
                       f"{len(table.features)} features", table.source)
    if X.dtype.kind not in "biuf":
        raise MMXError(f"values are {X.dtype}, not numbers", table.source)
    fill = np.zeros(spec.n_features, np.float32) if fill_values is None else np.asarray(fill_values, np.float32)
    if fill.shape != (spec.n_features,) or not np.isfinite(fill).all():
        raise MMXError(f"fill values for {spec.name!r} must be {spec.n_features} finite numbers (got shape "
                       f"{fill.shape})", table.source)
    exact = {f: i for i, f in enumerate(table.features)}
    folded = {f.lower(): i for i, f in enumerate(table.features)}
    cols = np.array([exact.get(f, folded.get(f.lower(), -1)) for f in spec.feature_names])
    found = cols >= 0
    if found.mean() < min_fraction:
        raise MMXError(f"only {int(found.sum())} of {spec.n_features} {spec.name} features found by name "
                       f"(e.g. expected {list(spec.feature_names[:3])}, got {list(table.features[:3])})",
                       table.source)
    out = np.repeat(fill[None], len(table.ids), 0)
    out[:, found] = X[:, cols[found]]
    bad = ~np.isfinite(out)
    if bad.any():  # readers refuse these; a Table built by hand may still hold them
        r, c = np.argwhere(bad)[0]
        raise MMXError(f"{int(bad.sum())} missing or infinite values, first at sample {table.ids[r]!r}, feature "
                       f"{spec.feature_names[c]!r}", table.source)
    used = set(cols[found].tolist())
    unknown = tuple(f for i, f in enumerate(table.features) if i not in used)
    missing = tuple(f for f, ok in zip(spec.feature_names, found) if not ok)
    return out, FeatureMatch(spec.name, int(found.sum()), missing, unknown)
