"""The MM dynamics family: ``mm_dynamics`` (omics and image modalities) and ``mm_static``.

``mm_dynamics`` (Han et al., CVPR 2022; images as in the seed study): per modality a
feature-informativeness gate (omics: square linear layer + sigmoid; images: the compact U-Net
patch gate of :mod:`core.models.unet_gate`) multiplied into the input, an encoder, a
per-modality classifier and a confidence head regressing that classifier's true-class
probability (TCP); each latent is scaled by its confidence, the latents are concatenated and
a linear layer classifies. Loss = CE(fused) + per modality [mean gate (L1 sparsity) +
MSE(confidence, TCP) + CE(modality)], each term weighted once by its own weight (the
reference code multiplied the classification weight in again for every modality).

Switches: ``feature_informativeness`` (gates and their sparsity term) and
``modality_informativeness`` (per-modality classifier, confidence scaling and their two
terms, as in the seed study's ablation). As in the reference, the TCP target is not detached:
the MSE term trains the confidence head and also the modality classifier that produces the TCP.

``mm_static``: the same encoders, no gates, fixed per-modality weights on the latents,
concatenation and a linear classifier trained with (class-weighted) CE.

A sample without a modality contributes a zero latent for it and is left out of that
modality's loss terms.

Image gates have their own sparsity weight, ``w_sparsity_image``, 0 by default. Under the
omics weight (1) the patch gate saturates at ~0 early in training: the image is multiplied
by zero, its gradient through the sigmoid vanishes and it never comes back (measured on the
validation sets of cells and derm7pt; on derm7pt, where the images are the only input, the
model then predicts one class). The L1 term is still computed and reported for images.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from core.data.dataset import ModalitySpec
from core.errors import MMXError
from core.models.base import BranchedNet, DeepConfig, TorchMethod
from core.models.encoders import build_encoder
from core.models.registry import register_method
from core.models.unet_gate import PatchGate
from core.train.loop import TrainConfig
from core.train.output import ModelOutput


def reference_training() -> TrainConfig:
    """The MM dynamics reference schedule: Adam 1e-4, weight decay 1e-4, full batch, StepLR(500, 0.2)."""
    return TrainConfig(epochs=1000, batch_size=None, lr=1e-4, weight_decay=1e-4, lr_step=500, lr_gamma=0.2,
                       patience=None)


@dataclass
class FusionConfig(DeepConfig):
    """Encoders shared by ``mm_dynamics`` and ``mm_static``."""

    latent: dict[str, int] = field(default_factory=lambda: {"rna": 250, "protein": 35})  # by modality name
    omics_latent: int = 1000  # other omics modalities (the reference's hidden size)
    image_latent: int = 500  # image modalities not named in ``latent``
    dropout: float = 0.5
    train: TrainConfig = field(default_factory=reference_training)

    def latent_size(self, name: str, spec: ModalitySpec) -> int:
        return int(self.latent.get(name, self.image_latent if spec.kind == "image" else self.omics_latent))


@dataclass
class DynamicsConfig(FusionConfig):
    feature_informativeness: bool = True  # FI: gates on the inputs + L1 sparsity of the gates
    modality_informativeness: bool = True  # MI: TCP confidence scaling + its MSE and per-modality CE
    patch_size: int = 4  # image gate: pixels per patch side
    gate_width: int = 16  # image gate: channels of the U-Net on the patch grid
    w_fused: float = 1.0
    w_sparsity: float = 1.0
    # Image patch gates get no sparsity pressure by default: with any weight >= 0.01 the gate of
    # the U-Net collapsed to ~0 within a few epochs (the image switched off; derm7pt validation
    # balanced accuracy 0.20 at weight 1, 0.38 at 0.01, 0.47 at 0; see the module docstring).
    w_sparsity_image: float = 0.0
    w_confidence: float = 1.0
    w_modality: float = 1.0


@dataclass
class StaticConfig(FusionConfig):
    modality_weights: dict[str, float] = field(default_factory=dict)  # fixed latent weight (1 when not named)


@dataclass
class DynamicsOutput(ModelOutput):
    """A training-time output that also carries presence, so the loss can skip absent modalities."""

    present: dict[str, torch.Tensor] = field(default_factory=dict)


def xavier_init(net: nn.Module) -> nn.Module:
    """Xavier-normal weights and zero bias for every linear layer (the reference initialisation)."""
    for mod in net.modules():
        if isinstance(mod, nn.Linear):
            nn.init.xavier_normal_(mod.weight)
            nn.init.zeros_(mod.bias)
    return net


@functools.cache
def _rand_draws_bernoulli_masks() -> bool:
    """Whether ``torch.rand(float64) < q`` draws the very mask ``bernoulli_(q)`` draws from the same
    generator state. It does where torch takes its portable per-element bernoulli path (e.g. AMD
    CPUs), which is about 2x slower than ``torch.rand``; not where it uses MKL (Intel CPUs)."""
    a = torch.empty(4096).bernoulli_(0.5, generator=torch.Generator().manual_seed(0))
    b = torch.rand(4096, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) < 0.5
    return torch.equal(a, b.float())


class SameMaskDropout(nn.Dropout):
    """``nn.Dropout`` with a faster mask draw on CPUs where it gives the same numbers (see
    :func:`_rand_draws_bernoulli_masks`): the same mask, scaling and product as torch's CPU
    dropout, so training is bit-identical; elsewhere plain dropout. On ROSMAP the three
    1000-wide dropouts were a fifth of an epoch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and 0 < self.p < 1 and x.device.type == "cpu" and _rand_draws_bernoulli_masks()):
            return super().forward(x)
        keep = (torch.rand(x.shape, dtype=torch.float64) < 1 - self.p).to(x.dtype)
        return x * keep.div_(1 - self.p)


def _same_mask_dropouts(net: nn.Module) -> nn.Module:
    """``net`` with every plain ``nn.Dropout`` replaced by :class:`SameMaskDropout` (no weights change)."""
    for name, child in net.named_children():
        if type(child) is nn.Dropout:
            setattr(net, name, SameMaskDropout(child.p))
        else:
            _same_mask_dropouts(child)
    return net


def _encoders(specs: dict[str, ModalitySpec], cfg: FusionConfig) -> nn.ModuleDict:
    return _same_mask_dropouts(nn.ModuleDict({
        m: build_encoder(s, cfg.latent_size(m, s), cfg.dropout, cfg.encoder, cfg.freeze_encoder,
                         cfg.encoder_tune_stages)
        for m, s in specs.items()}))


def _gate(spec: ModalitySpec, cfg: DynamicsConfig) -> nn.Module:
    if spec.kind == "image":
        return PatchGate(spec.image_shape[0], cfg.patch_size, cfg.gate_width)
    return nn.Sequential(nn.Linear(spec.n_features, spec.n_features), nn.Sigmoid())


class MMDynamicsNet(BranchedNet):
    def __init__(self, specs: dict[str, ModalitySpec], n_classes: int, cfg: DynamicsConfig):
        super().__init__()
        self.cfg = cfg
        self.sparsity_weight = {m: cfg.w_sparsity_image if s.kind == "image" else cfg.w_sparsity
                                for m, s in specs.items()}
        self.encoders = _encoders(specs, cfg)
        sizes = {m: cfg.latent_size(m, s) for m, s in specs.items()}
        fi = cfg.feature_informativeness
        self.gates = nn.ModuleDict({m: _gate(s, cfg) for m, s in specs.items()}) if fi else None
        if cfg.modality_informativeness:
            self.heads = nn.ModuleDict({m: nn.Linear(d, n_classes) for m, d in sizes.items()})
            self.confidence = nn.ModuleDict({m: nn.Linear(d, 1) for m, d in sizes.items()})
        else:
            self.heads = self.confidence = None
        self.classifier = nn.Linear(sum(sizes.values()), n_classes)
        xavier_init(self)

    def new_output(self, present: dict[str, torch.Tensor]) -> DynamicsOutput:
        return DynamicsOutput(logits=torch.empty(0), present=present)

    def branch(self, m: str, v: torch.Tensor, present: torch.Tensor, out: ModelOutput | None = None) -> torch.Tensor:
        if self.gates is not None:
            gate = self.gates[m](v)
            if out is not None:
                out.feature_maps[m] = gate
            v = v * gate
        h = self.encoders[m](v)
        if self.heads is not None:
            conf = self.confidence[m](h).squeeze(1)
            if out is not None:
                out.modality_logits[m] = self.heads[m](h)
                out.modality_weights[m] = conf
            h = h * conf[:, None]
        return h * present[:, None].to(h.dtype)

    def loss(self, out: DynamicsOutput, y: torch.Tensor, weight: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        ce, terms = super().loss(out, y, weight)
        total = cfg.w_fused * ce
        for m in self.encoders:
            rows = out.present[m]
            if not bool(rows.any()):
                continue
            if m in out.feature_maps:
                l1 = out.feature_maps[m][rows].float().mean()
                total = total + self.sparsity_weight[m] * l1
                terms[f"sparsity/{m}"] = float(l1.detach())
            if m in out.modality_logits:
                logits, target = out.modality_logits[m][rows].float(), y[rows]
                tcp = torch.softmax(logits, 1).gather(1, target[:, None]).squeeze(1)
                mse = F.mse_loss(out.modality_weights[m][rows].float(), tcp)
                ce_m = F.cross_entropy(logits, target, weight=weight)
                total = total + cfg.w_confidence * mse + cfg.w_modality * ce_m
                terms[f"confidence/{m}"] = float(mse.detach())
                terms[f"modality_ce/{m}"] = float(ce_m.detach())
        return total, terms


class MMStaticNet(BranchedNet):
    def __init__(self, specs: dict[str, ModalitySpec], n_classes: int, cfg: StaticConfig):
        super().__init__()
        unknown = set(cfg.modality_weights) - set(specs)
        if unknown:
            raise MMXError(f"mm_static: modality weights given for {sorted(unknown)}, which the data lacks "
                           f"(modalities: {list(specs)})")
        self.encoders = _encoders(specs, cfg)
        self.register_buffer("weights", torch.tensor([float(cfg.modality_weights.get(m, 1.0)) for m in specs]))
        self.index = {m: i for i, m in enumerate(specs)}
        self.classifier = nn.Linear(sum(cfg.latent_size(m, s) for m, s in specs.items()), n_classes)
        xavier_init(self)

    def branch(self, m: str, v: torch.Tensor, present: torch.Tensor, out: ModelOutput | None = None) -> torch.Tensor:
        h = self.encoders[m](v)
        w = self.weights[self.index[m]]
        if out is not None:
            out.modality_weights[m] = w.expand(len(h))
        return h * w * present[:, None].to(h.dtype)


@register_method("mm_dynamics", DynamicsConfig, family="mm_dynamics",
                 description="MM dynamics: feature gates (U-Net patch gate for images) + TCP modality confidence")
class MMDynamics(TorchMethod):
    resident_inputs = True
    native_absence = "left out: its latent is zeroed before fusion and its confidence is not used"

    def build_net(self) -> BranchedNet:
        return MMDynamicsNet(self.specs, self.n_classes, self.config)


@register_method("mm_static", StaticConfig, family="mm_dynamics",
                 description="MM static: MM dynamics encoders, fixed modality weights, concatenation")
class MMStatic(TorchMethod):
    resident_inputs = True
    native_absence = "left out: its latent is zeroed before the fused classifier"

    def build_net(self) -> BranchedNet:
        return MMStaticNet(self.specs, self.n_classes, self.config)
