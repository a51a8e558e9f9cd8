"""``cnn``: the image-only baseline (the seed study's "CNN (I)"): the shared small CNN encoder (or
another of :mod:`core.models.encoders`) and a linear classifier on one image modality, trained with
class-weighted CE. With an ImageNet encoder whose first units stay frozen, training computes their
output once per image and trains the rest on it (the same model, far fewer operations per step)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from core.errors import MMXError
from core.models.base import DeepConfig, Net, TorchMethod
from core.models.encoders import SmallCNN, image_encoder
from core.models.prefix_cache import PrefixCache, cacheable
from core.models.registry import register_method
from core.train.loop import TrainConfig
from core.train.output import ModelOutput


@dataclass
class CNNConfig(DeepConfig):
    latent: int = 500
    hidden: int = 256  # width of the encoder's first fully connected layer (most of the model's weights)
    dropout: float = 0.5
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=60, batch_size=32, lr=1e-3, patience=15,
                                                                   augment=True))


class CNNNet(Net):
    def __init__(self, modality: str, in_channels: int, n_classes: int, latent: int, dropout: float, hidden: int,
                 encoder: str = "small", freeze: bool = False, tune_stages: int | None = None):
        super().__init__()
        self.modality = modality
        small = encoder == "small" and not freeze and tune_stages is None  # the seed study's CNN: its own width
        self.encoder = (SmallCNN(in_channels, latent, hidden=hidden, dropout=dropout) if small
                        else image_encoder(in_channels, latent, dropout, encoder, freeze, tune_stages))
        self.classifier = nn.Linear(latent, n_classes)

    def forward(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> ModelOutput:
        z = self.encoder(x[self.modality])
        return ModelOutput(self.classifier(z), latents={self.modality: z})


@register_method("cnn", CNNConfig, family="baseline", description="image-only small CNN on one image modality")
class CNN(TorchMethod):
    kinds = ("image",)
    native_absence = "impossible: the model has this one modality"

    def __init__(self, specs, classes, config):
        if len(specs) != 1:
            image = next((m for m, v in specs.items() if v.kind == "image"), "image")
            raise MMXError(f"method 'cnn' takes exactly one image modality, got {list(specs)}; "
                           f"select one (e.g. --modalities {image})")
        super().__init__(specs, classes, config)

    def training_forward(self, data, rows):
        encoders = cacheable({m: self.net.encoder for m in self.specs}, self.config.train)
        if not encoders:
            return super().training_forward(data, rows)
        cache = PrefixCache(encoders, data, self.prep, rows, self.device)
        flips = self.config.train.augment

        def forward(batch: dict, train: bool = False) -> ModelOutput:
            with cache.active():
                return self.net(cache.inputs(batch["index"], flips=train and flips), batch["present"])

        return forward, None

    def build_net(self) -> Net:
        (m, spec), = self.specs.items()
        cfg = self.config
        return CNNNet(m, spec.image_shape[0], self.n_classes, cfg.latent, cfg.dropout, cfg.hidden, cfg.encoder,
                      cfg.freeze_encoder, cfg.encoder_tune_stages)
