"""What a forward pass returns: logits plus whatever explains them."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelOutput:
    """Fused logits and, where the method has them, per-modality logits, feature-informativeness
    maps (omics ``N x F``; images ``N x 1 x H x W``), modality weights (``N``) and latents."""

    logits: torch.Tensor
    modality_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    feature_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    modality_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    latents: dict[str, torch.Tensor] = field(default_factory=dict)

    def detach_cpu(self) -> "ModelOutput":
        f = lambda d: {k: v.detach().float().cpu() for k, v in d.items()}  # noqa: E731
        return ModelOutput(self.logits.detach().float().cpu(), f(self.modality_logits), f(self.feature_maps),
                           f(self.modality_weights), f(self.latents))

    @staticmethod
    def concat(parts: list["ModelOutput"]) -> "ModelOutput":
        """Join per-batch outputs along the sample axis."""
        cat = lambda key: {k: torch.cat([getattr(p, key)[k] for p in parts]) for k in getattr(parts[0], key)}  # noqa: E731
        return ModelOutput(torch.cat([p.logits for p in parts]), cat("modality_logits"), cat("feature_maps"),
                           cat("modality_weights"), cat("latents"))
