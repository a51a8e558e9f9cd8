"""Input preparation that travels with the weights: omics scaling with training statistics,
images from uint8 to [0, 1]. Kept as buffers so a checkpoint is self-contained."""
from __future__ import annotations

import torch
from torch import nn

from core.data.dataset import ModalitySpec

IMAGE_CHUNK = 256  # images per step of the mean-image sum (its float64 copy: 25 MB at 64 px)


class InputPrep(nn.Module):
    """Min-max (the MM dynamics recipe) or standard scaling per omics modality, fitted on the
    training rows where the modality is present. Also keeps the training mean (after scaling;
    for images the mean image in [0, 1]) for mean-masking and mean imputation."""

    def __init__(self, specs: dict[str, ModalitySpec], scaling: str = "minmax"):
        super().__init__()
        if scaling not in ("minmax", "standard", "none"):
            raise ValueError(f"unknown scaling {scaling!r}")
        self.specs = specs
        self.scaling = scaling
        for m, s in specs.items():
            if s.kind == "omics":
                self.register_buffer(f"shift_{m}", torch.zeros(s.n_features))
                self.register_buffer(f"scale_{m}", torch.ones(s.n_features))
                self.register_buffer(f"mean_{m}", torch.zeros(s.n_features))
            else:
                self.register_buffer(f"mean_{m}", torch.zeros(s.image_shape))

    @torch.no_grad()
    def fit(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor], rows: torch.Tensor) -> "InputPrep":
        """Fit on ``rows`` of the full modality tensors ``x`` where each modality is present. The
        mean image is summed over chunks of rows, so fitting holds no copy of the training images."""
        for m, s in self.specs.items():
            keep = rows[present[m][rows]]
            if s.kind != "omics":
                total = torch.zeros(s.image_shape, dtype=torch.float64)
                for chunk in keep.split(IMAGE_CHUNK):
                    total += x[m][chunk].sum(0, dtype=torch.float64)
                getattr(self, f"mean_{m}").copy_(total / max(len(keep), 1) / 255.0)
                continue
            v = x[m][keep].float()
            if self.scaling == "minmax":
                shift, scale = v.min(0).values, v.max(0).values - v.min(0).values
            elif self.scaling == "standard":
                shift, scale = v.mean(0), v.std(0)
            else:
                shift, scale = torch.zeros_like(v[0]), torch.ones_like(v[0])
            scale = torch.where(scale > 1e-8, scale, torch.ones_like(scale))
            getattr(self, f"shift_{m}").copy_(shift)
            getattr(self, f"scale_{m}").copy_(scale)
            getattr(self, f"mean_{m}").copy_(((v - shift) / scale).mean(0))
        return self

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for m, v in x.items():
            if self.specs[m].kind == "omics":
                out[m] = (v.float() - getattr(self, f"shift_{m}")) / getattr(self, f"scale_{m}")
            else:
                out[m] = v.float() / 255.0 if v.dtype == torch.uint8 else v.float()
        return out

    def training_mean(self, m: str) -> torch.Tensor:
        return getattr(self, f"mean_{m}")

    def raw_training_mean(self, m: str) -> torch.Tensor:
        """The training mean of omics modality ``m`` in input units (before scaling): what a
        feature an upload lacks is filled with."""
        return getattr(self, f"shift_{m}") + getattr(self, f"scale_{m}") * getattr(self, f"mean_{m}")
