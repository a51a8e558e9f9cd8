"""The one in-memory form every task takes: :class:`MultimodalDataset`.

Omics are float32 ``N x F`` tensors, images uint8 ``N x C x H x W``. Whether a sample has a
modality is a fact of the data, kept in ``present`` (a missing modality is never a zero
vector in disguise: its slot holds zeros *and* ``present`` is False).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from core.errors import MMXError

Kind = Literal["omics", "image"]


@dataclass(frozen=True)
class ModalitySpec:
    """What a modality is: its kind, feature names (omics) or image shape, preprocessing."""

    name: str
    kind: Kind
    feature_names: tuple[str, ...] = ()
    image_shape: tuple[int, int, int] | None = None  # (C, H, W)
    preprocessing: str = ""

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "feature_names": list(self.feature_names),
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "preprocessing": self.preprocessing,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModalitySpec":
        return cls(
            name=d["name"],
            kind=d["kind"],
            feature_names=tuple(d.get("feature_names") or ()),
            image_shape=tuple(d["image_shape"]) if d.get("image_shape") else None,
            preprocessing=d.get("preprocessing", ""),
        )


@dataclass(frozen=True)
class Target:
    """An extra label column (e.g. a derm7pt criterion) besides the main ``y``."""

    y: torch.Tensor
    classes: tuple[str, ...]


@dataclass
class MultimodalDataset:
    """Samples x modalities, with labels, groups (donor/patient) and sample ids."""

    name: str
    modalities: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    y: torch.Tensor
    classes: tuple[str, ...]
    groups: np.ndarray
    ids: np.ndarray
    specs: dict[str, ModalitySpec]
    targets: dict[str, Target] = field(default_factory=dict)
    synthetic: bool = False
    _hash: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.y)
        if set(self.modalities) != set(self.specs) or set(self.present) != set(self.specs):
            raise MMXError(f"dataset {self.name!r}: modalities, presence masks and specs disagree")
        for m, x in self.modalities.items():
            spec = self.specs[m]
            if x.shape[0] != n or self.present[m].shape != (n,):
                raise MMXError(f"dataset {self.name!r}: modality {m!r} has {x.shape[0]} rows, labels have {n}")
            if spec.kind == "omics" and (x.dtype != torch.float32 or x.ndim != 2 or x.shape[1] != spec.n_features):
                raise MMXError(f"dataset {self.name!r}: omics {m!r} must be float32 N x {spec.n_features}")
            if spec.kind == "image" and (x.dtype != torch.uint8 or tuple(x.shape[1:]) != spec.image_shape):
                raise MMXError(f"dataset {self.name!r}: image {m!r} must be uint8 N x {spec.image_shape}")
        if self.present and not torch.stack(list(self.present.values())).any(0).all():
            raise MMXError(f"dataset {self.name!r}: some samples have no modality at all")
        if len(self.groups) != n or len(self.ids) != n:
            raise MMXError(f"dataset {self.name!r}: groups/ids length differs from labels")
        if len(set(self.ids.tolist())) != n:
            raise MMXError(f"dataset {self.name!r}: sample ids are not unique")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def subset(self, idx: np.ndarray | torch.Tensor | list[int]) -> "MultimodalDataset":
        """The samples at ``idx`` (a view-free copy of the selected rows)."""
        i = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return replace(
            self,
            modalities={m: x[i] for m, x in self.modalities.items()},
            present={m: p[i] for m, p in self.present.items()},
            y=self.y[i],
            groups=self.groups[i.numpy()],
            ids=self.ids[i.numpy()],
            targets={k: Target(t.y[i], t.classes) for k, t in self.targets.items()},
            _hash=None,
        )

    def select(self, modalities: list[str] | tuple[str, ...]) -> "MultimodalDataset":
        """Keep only the named modalities; samples left with none are an error."""
        unknown = [m for m in modalities if m not in self.specs]
        if unknown:
            raise MMXError(f"dataset {self.name!r} has no modality {unknown}; it has {list(self.specs)}")
        return replace(
            self,
            modalities={m: self.modalities[m] for m in modalities},
            present={m: self.present[m] for m in modalities},
            specs={m: self.specs[m] for m in modalities},
            _hash=None,
        )

    def with_target(self, target: str) -> "MultimodalDataset":
        """Use an extra label column (e.g. a derm7pt criterion) as ``y``."""
        if target in ("", "y", None):
            return self
        if target not in self.targets:
            raise MMXError(f"dataset {self.name!r} has no target {target!r}; it has {list(self.targets)}")
        t = self.targets[target]
        return replace(self, y=t.y, classes=t.classes, _hash=None)

    def batch(self, idx: np.ndarray | torch.Tensor) -> dict:
        """A training/inference batch: ``{"x": {m: tensor}, "present": {m: bool}, "y", "index"}``."""
        i = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return {
            "x": {m: x[i] for m, x in self.modalities.items()},
            "present": {m: p[i] for m, p in self.present.items()},
            "y": self.y[i],
            "index": i,
        }

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.y, minlength=self.n_classes).tolist()
        return dict(zip(self.classes, counts))

    def data_hash(self) -> str:
        """sha256 over every modality, presence mask and label (identifies the data a result used)."""
        if self._hash is None:
            h = hashlib.sha256()
            for m in sorted(self.modalities):
                h.update(m.encode())
                h.update(self.modalities[m].contiguous().numpy().tobytes())
                h.update(self.present[m].numpy().tobytes())
            h.update(self.y.numpy().tobytes())
            h.update("\x00".join(map(str, self.ids)).encode())
            self._hash = h.hexdigest()
        return self._hash

    def summary(self) -> dict:
        """Sizes and counts, for listings (Home page, CLI)."""
        return {
            "task": self.name,
            "samples": len(self),
            "classes": self.class_counts(),
            "modalities": {
                m: (f"{s.n_features} features" if s.kind == "omics" else "x".join(map(str, s.image_shape or ())))
                + f" ({int(self.present[m].sum())} present)"
                for m, s in self.specs.items()
            },
            "groups": len(set(self.groups.tolist())),
            "by_group": {str(g): dict(zip(self.classes, torch.bincount(self.y[torch.as_tensor(self.groups == g)],
                                                                       minlength=self.n_classes).tolist()))
                         for g in sorted(set(self.groups.tolist()))} if len(set(self.groups.tolist())) <= 6 else {},
            "synthetic": self.synthetic,
        }
