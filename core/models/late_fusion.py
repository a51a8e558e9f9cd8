"""``late_mlp``: one encoder + classifier per modality; the fused decision is the mean of the
per-modality logits over the modalities a sample has (so missing ones are simply left out)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from core.models.base import DeepConfig, Net, TorchMethod
from core.models.encoders import build_encoder
from core.models.registry import register_method
from core.train.loop import TrainConfig
from core.train.output import ModelOutput


@dataclass
class LateMLPConfig(DeepConfig):
    latent: int = 128
    dropout: float = 0.5
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=100, batch_size=64, lr=1e-3, patience=20))


class LateFusionNet(Net):
    def __init__(self, specs, n_classes: int, latent: int, dropout: float, encoder: str = "small",
                 freeze: bool = False, tune_stages: int | None = None):
        super().__init__()
        self.encoders = nn.ModuleDict({m: build_encoder(s, latent, dropout, encoder, freeze, tune_stages)
                                       for m, s in specs.items()})
        self.heads = nn.ModuleDict({m: nn.Linear(latent, n_classes) for m in specs})

    def forward(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> ModelOutput:
        latents = {m: enc(x[m]) for m, enc in self.encoders.items()}
        logits = {m: self.heads[m](z) for m, z in latents.items()}
        w = torch.stack([present[m].float() for m in logits], 1)  # N x M
        fused = (torch.stack(list(logits.values()), 1) * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1)
        return ModelOutput(fused, modality_logits=logits, latents=latents)


@register_method("late_mlp", LateMLPConfig, family="baseline",
                 description="late fusion: per-modality encoder + classifier, mean of logits over present modalities")
class LateMLP(TorchMethod):
    native_absence = "left out: the logits are averaged over the modalities present"

    def build_net(self) -> Net:
        cfg = self.config
        return LateFusionNet(self.specs, self.n_classes, cfg.latent, cfg.dropout, cfg.encoder, cfg.freeze_encoder,
                             cfg.encoder_tune_stages)
