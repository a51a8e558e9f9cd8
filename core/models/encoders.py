"""Shared encoders: one per modality kind, used by every deep method."""
from __future__ import annotations

from torch import nn

from core.data.dataset import ModalitySpec


class OmicsEncoder(nn.Sequential):
    """Linear + ReLU + dropout (the MM dynamics omics encoder)."""

    def __init__(self, n_in: int, latent: int, dropout: float = 0.5):
        super().__init__(nn.Linear(n_in, latent), nn.ReLU(), nn.Dropout(dropout))
        self.out_features = latent


class SmallCNN(nn.Sequential):
    """Two conv + max-pool stages, then two fully connected layers (the seed study's image
    encoder). An adaptive pool to 8 x 8 keeps the FC size fixed whatever the image size."""

    def __init__(self, in_channels: int, latent: int, channels: tuple[int, int] = (16, 32), hidden: int = 256,
                 dropout: float = 0.5):
        c1, c2 = channels
        super().__init__(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(8), nn.Flatten(),
            nn.Linear(c2 * 64, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, latent), nn.ReLU(),
        )
        self.out_features = latent


def build_encoder(spec: ModalitySpec, latent: int, dropout: float = 0.5) -> nn.Module:
    """The default encoder for a modality of this kind."""
    if spec.kind == "omics":
        return OmicsEncoder(spec.n_features, latent, dropout)
    return SmallCNN(spec.image_shape[0], latent, dropout=dropout)
