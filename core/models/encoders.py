"""Shared encoders: one per modality kind, used by every deep method.

Images take one of :data:`ENCODERS`: ``small`` (the seed study's two-stage CNN), ``resnet`` (a
torchvision ResNet with one BasicBlock per stage at half width, ``weights=None``: sized for a
2-core CPU and a 5 MB trunk) or
``pretrained`` (the same ResNet starting from the self-supervised trunk that
``python train.py --pretrain`` writes, see :mod:`core.pretrain`), frozen or fine-tuned.
"""
from __future__ import annotations

import torch
from torch import nn

from core.data.dataset import ModalitySpec
from core.errors import MMXError

ENCODERS = ("small", "resnet", "pretrained")
TRUNK_WIDTH = 32  # channels of the first stage (torchvision's ResNets have 64); the stages double it
TRUNK_FEATURES = 8 * TRUNK_WIDTH


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


def resnet_trunk(in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet with one BasicBlock per stage, its stages rebuilt at
    :data:`TRUNK_WIDTH` x (1, 2, 4, 8) channels, no classifier: a :data:`TRUNK_FEATURES`-wide
    feature per image of any size (global average pool)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    net = ResNet(BasicBlock, [1, 1, 1, 1])
    net.inplanes = TRUNK_WIDTH
    net.conv1 = nn.Conv2d(in_channels, TRUNK_WIDTH, 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(TRUNK_WIDTH)
    net.layer1 = net._make_layer(BasicBlock, TRUNK_WIDTH, 1)
    net.layer2 = net._make_layer(BasicBlock, 2 * TRUNK_WIDTH, 1, stride=2)
    net.layer3 = net._make_layer(BasicBlock, 4 * TRUNK_WIDTH, 1, stride=2)
    net.layer4 = net._make_layer(BasicBlock, 8 * TRUNK_WIDTH, 1, stride=2)
    for m in net.modules():  # torchvision's initialisation, for the rebuilt layers
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()
    return net


class ResNetEncoder(nn.Module):
    """A ResNet trunk, then Linear + ReLU + dropout to ``latent`` (the contract of the other
    encoders). ``pretrained``: :func:`init_pretrained` loads the self-supervised trunk before
    training; ``freeze``: the trunk then stays fixed (and in eval mode, so its batch-norm
    statistics stay the pretrained ones)."""

    def __init__(self, in_channels: int, latent: int, dropout: float = 0.5, pretrained: bool = False,
                 freeze: bool = False):
        super().__init__()
        if freeze and not pretrained:
            raise MMXError("freezing the image encoder needs encoder='pretrained' (a random trunk would stay random)")
        self.trunk = resnet_trunk(in_channels)
        self.head = nn.Sequential(nn.Linear(TRUNK_FEATURES, latent), nn.ReLU(), nn.Dropout(dropout))
        self.pretrained, self.freeze = pretrained, freeze
        self.out_features = latent
        if freeze:
            self.trunk.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNetEncoder:
        super().train(mode)
        if self.freeze:
            self.trunk.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def build_encoder(spec: ModalitySpec, latent: int, dropout: float = 0.5, encoder: str = "small",
                  freeze: bool = False) -> nn.Module:
    """The encoder for a modality of this kind (``encoder`` chooses among :data:`ENCODERS` for images)."""
    if spec.kind == "omics":
        return OmicsEncoder(spec.n_features, latent, dropout)
    return image_encoder(spec.image_shape[0], latent, dropout, encoder, freeze)


def image_encoder(in_channels: int, latent: int, dropout: float = 0.5, encoder: str = "small",
                  freeze: bool = False) -> nn.Module:
    if encoder not in ENCODERS:
        raise MMXError(f"image encoder {encoder!r} is not one of {ENCODERS}")
    if encoder == "small":
        if freeze:
            raise MMXError("freezing the image encoder needs encoder='pretrained'")
        return SmallCNN(in_channels, latent, dropout=dropout)
    return ResNetEncoder(in_channels, latent, dropout, pretrained=encoder == "pretrained", freeze=freeze)


def init_pretrained(net: nn.Module) -> None:
    """Load the self-supervised trunk into every ``pretrained`` ResNet encoder of ``net`` (called
    before training; a loaded checkpoint brings its own weights and never needs the file)."""
    encoders = [m for m in net.modules() if isinstance(m, ResNetEncoder) and m.pretrained]
    if encoders:
        from core.pretrain import load_trunk

        state = load_trunk()
        for m in encoders:
            m.trunk.load_state_dict(state, strict=True)
