"""``hypermm`` (Chaptoukaev et al., 2024): learn from samples with missing modalities, without
imputation and without dummy inputs.

Step 1 trains a *universal feature extractor* phi on every single observed modality: a
backbone shared by the image modalities (ImageNet VGG11 features, frozen, when those weights
are already in the torchvision cache; else a small CNN trained from scratch, with a logged
warning), small input adapters taking each omics modality to the backbone's width, then one
layer whose weight and bias a hypernetwork generates from the modality id (an MLP over a
learned modality embedding). Loss = ``ce_weight`` * CE(head(h)) + ``recon_weight`` *
MSE(decoder(h), backbone features).

Step 2 freezes phi. A sample is the *set* of its observed modalities, each encoded by phi
with its own modality id; sets of different sizes are padded and masked, aggregated by mean,
sum or max, and rho (an MLP) classifies. A modality a sample lacks is simply not in its set.

Reference defects not repeated: inputs travel with their modality id (never paired by list
position); one loss over all observed (sample, modality) pairs and one optimiser step per
batch (not a step per modality with gradients zeroed per batch); AUROC comes from
probabilities (:mod:`core.metrics`), never from rounded predictions.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data.dataset import ModalitySpec
from core.errors import MMXError
from core.models.base import Method, MethodConfig, Net
from core.models.encoders import OmicsEncoder, SmallCNN, image_encoder, init_pretrained
from core.models.registry import register_method
from core.models.weights import IMAGENET
from core.train import loop
from core.train.loop import TrainConfig
from core.train.output import ModelOutput

log = logging.getLogger(__name__)

AGGREGATIONS = ("mean", "sum", "max")
BACKBONES = ("auto", "vgg11", "small_cnn", "resnet", "pretrained", *IMAGENET)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class HyperMMConfig(MethodConfig):
    # auto (VGG11 when cached, else small_cnn) | vgg11 | small_cnn | resnet | pretrained | efficientnet_lite0
    # (core.models.encoders)
    backbone: str = "auto"
    freeze_encoder: bool = False  # backbone 'pretrained' / ImageNet only: keep the trunk's starting weights fixed
    encoder_tune_stages: int | None = None  # ImageNet encoders: train only the last N trunk units (None: all)
    width: int = 128  # output width of the hypernetwork layer (and of the small CNN backbone)
    embedding_dim: int = 8  # learned modality embedding fed to the hypernetwork
    hyper_hidden: int = 32  # hidden units of the hypernetwork MLP
    adapter_dropout: float = 0.2  # omics input adapters (Linear + ReLU + dropout)
    head_hidden: int = 64  # step-1 classification head
    ce_weight: float = 1.0
    recon_weight: float = 1.0
    aggregation: str = "mean"  # mean | sum | max over the set of observed modalities
    rho_hidden: int = 128
    rho_dropout: float = 0.5
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=60, batch_size=64, lr=1e-3, patience=15))
    rho_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=100, batch_size=64, lr=1e-3,
                                                                       patience=20))


# ---------------------------------------------------------------- backbone
def cached_vgg11_weights() -> Path | None:
    """The ImageNet VGG11 weights file when it is already in the torchvision cache (never downloads)."""
    from torchvision.models import VGG11_Weights

    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(VGG11_Weights.IMAGENET1K_V1.url)
    return path if path.is_file() else None


class VGGFeatures(nn.Module):
    """ImageNet VGG11 convolutional features, frozen, global-average-pooled to 512 values."""

    out_features = 512

    def __init__(self, weights: Path | None):
        """``weights``: the cached ImageNet file; None builds the layers only (a checkpoint fills them)."""
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["A"])  # VGG11's convolutional part
        if weights is not None:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                                      if k.startswith("features.")})
        self.features = features.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.features((x - self.mean) / self.std), 1).flatten(1)


def build_backbone(choice: str, in_channels: int, width: int, pretrained: bool = True,
                   freeze: bool = False, tune_stages: int | None = None) -> tuple[nn.Module, str]:
    """The image backbone and its resolved name (``vgg11``, ``small_cnn``, or the
    :mod:`core.models.encoders` name). ``pretrained=False``: VGG11 layers without the ImageNet weights, for a model
    whose weights come from a checkpoint."""
    if choice not in BACKBONES:
        raise MMXError(f"backbone={choice!r} is not one of {BACKBONES}")
    if choice in ("resnet", "pretrained", *IMAGENET):
        return image_encoder(in_channels, width, 0.0, choice, freeze, tune_stages), choice
    weights = None if choice == "small_cnn" else cached_vgg11_weights()
    if choice == "vgg11" and (in_channels != 3 or (weights is None and pretrained)):
        raise MMXError("backbone='vgg11' needs 3-channel images and the ImageNet VGG11 weights in the torchvision "
                       f"cache ({Path(torch.hub.get_dir()) / 'checkpoints'}); they are never downloaded here")
    if in_channels == 3 and (weights is not None or choice == "vgg11"):
        return VGGFeatures(weights if pretrained else None), "vgg11"
    if choice == "auto":
        log.warning("HyperMM: ImageNet VGG11 weights are not in the torchvision cache (%s); using a small CNN "
                    "trained from scratch as the backbone", Path(torch.hub.get_dir()) / "checkpoints")
    return SmallCNN(in_channels, width), "small_cnn"


# ---------------------------------------------------------------- phi
class HyperLinear(nn.Module):
    """A linear layer whose weight and bias are generated from a modality id by an MLP over a
    learned modality embedding.

    The generator's output layer starts with its bias at an ordinary linear layer's
    initialisation, and its hidden-to-output term is divided by the hidden width: each
    generated weight is a sum over ``hidden`` units, so without the division one Adam step
    would move every generated weight ``hidden`` times further than an ordinary layer's, and
    the layer would not train."""

    def __init__(self, n_ids: int, in_features: int, out_features: int, embedding_dim: int, hidden: int):
        super().__init__()
        self.in_features, self.out_features, self.hidden = in_features, out_features, hidden
        self.embedding = nn.Embedding(n_ids, embedding_dim)
        self.trunk = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, out_features * in_features + out_features)
        template = nn.Linear(in_features, out_features)
        with torch.no_grad():
            self.out.bias.copy_(torch.cat([template.weight.flatten(), template.bias]))

    def weights(self, modality_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The generated ``(weight out x in, bias out)`` for one modality."""
        h = self.trunk(self.embedding.weight[modality_id])
        p = self.out.bias + F.linear(h, self.out.weight) / self.hidden
        n = self.out_features * self.in_features
        return p[:n].view(self.out_features, self.in_features), p[n:]

    def forward(self, x: torch.Tensor, modality_id: int) -> torch.Tensor:
        return F.linear(x, *self.weights(modality_id))


class UniversalExtractor(nn.Module):
    """phi: backbone (images) or input adapter (omics), then the hypernetwork layer; plus the
    step-1 decoder (reconstructs the backbone features) and classification head."""

    def __init__(self, specs: dict[str, ModalitySpec], n_classes: int, cfg: HyperMMConfig, pretrained: bool = True):
        super().__init__()
        self.modality_ids = {m: i for i, m in enumerate(specs)}
        channels = {s.image_shape[0] for s in specs.values() if s.kind == "image"}
        if len(channels) > 1:
            raise MMXError("HyperMM shares one backbone across image modalities; "
                           f"their channel counts differ {channels}")
        self.backbone, self.backbone_name = (
            build_backbone(cfg.backbone, channels.pop(), cfg.width, pretrained, cfg.freeze_encoder,
                           cfg.encoder_tune_stages) if channels
            else (None, "none"))
        dim = self.backbone.out_features if self.backbone is not None else cfg.width
        self.adapters = nn.ModuleDict({m: OmicsEncoder(s.n_features, dim, cfg.adapter_dropout)
                                       for m, s in specs.items() if s.kind == "omics"})
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.hyper = HyperLinear(len(specs), dim, cfg.width, cfg.embedding_dim, cfg.hyper_hidden)
        self.decoder = nn.Linear(cfg.width, dim)
        self.head = nn.Sequential(nn.Linear(cfg.width, cfg.head_hidden), nn.ReLU(),
                                  nn.Linear(cfg.head_hidden, n_classes))

    def backbone_features(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """Backbone (images) or adapter (omics) output, layer-normalised: every modality reaches
        the generated layer on one scale (a small CNN from scratch starts with near-zero outputs)."""
        return self.norm(self.adapters[modality](x) if modality in self.adapters else self.backbone(x))

    def forward(self, x: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(backbone features, h)`` of observed inputs of one modality."""
        f = self.backbone_features(x, modality)
        return f, self.hyper(f, self.modality_ids[modality])

    def encode(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """h and head logits of every observed (sample, modality) pair, as ``N x D`` / ``N x C``
        per modality; rows of absent modalities stay zero and are never computed."""
        h_all, logits_all = {}, {}
        for m in self.modality_ids:
            rows = present[m].nonzero().squeeze(1)
            _, h = self(x[m][rows], m)
            logits = self.head(h)
            h_all[m] = h.new_zeros(len(present[m]), h.shape[1]).index_copy(0, rows, h)
            logits_all[m] = logits.new_zeros(len(present[m]), logits.shape[1]).index_copy(0, rows, logits)
        return h_all, logits_all


@dataclass
class PhiOutput(ModelOutput):
    """Step-1 output: also the observed rows, their (detached) backbone features and reconstructions."""

    rows: dict[str, torch.Tensor] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    reconstruction: dict[str, torch.Tensor] = field(default_factory=dict)


class PhiTraining(Net):
    """Step 1: every observed (sample, modality) pair is one training item for phi."""

    def __init__(self, phi: UniversalExtractor, ce_weight: float, recon_weight: float):
        super().__init__()
        self.phi, self.ce_weight, self.recon_weight = phi, ce_weight, recon_weight

    def forward(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> PhiOutput:
        out = PhiOutput(logits=torch.empty(0))
        n = len(next(iter(present.values())))
        for m in self.phi.modality_ids:
            rows = present[m].nonzero().squeeze(1)
            f, h = self.phi(x[m][rows], m)
            logits = self.phi.head(h)
            out.modality_logits[m] = logits.new_zeros(n, logits.shape[1]).index_copy(0, rows, logits)
            # reconstruction trains the generated layer and the decoder only: reaching the backbone, it
            # would pull the features towards zero, where they are trivially reconstructed
            target = f.detach()
            out.rows[m], out.features[m] = rows, target
            out.reconstruction[m] = self.phi.decoder(self.phi.hyper(target, self.phi.modality_ids[m]))
        count = torch.stack([present[m].float() for m in out.rows], 1).sum(1, keepdim=True)
        out.logits = sum(out.modality_logits.values()) / count.clamp(min=1)  # for validation: mean over the set
        return out

    def loss(self, out: PhiOutput, y: torch.Tensor, weight: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        logits = torch.cat([out.modality_logits[m][r] for m, r in out.rows.items()]).float()
        target = torch.cat([y[r] for r in out.rows.values()])
        ce = F.cross_entropy(logits, target, weight=weight)
        rec = F.mse_loss(torch.cat(list(out.reconstruction.values())).float(),
                         torch.cat(list(out.features.values())).float())
        terms = {"ce": float(ce.detach()), "reconstruction": float(rec.detach())}
        return self.ce_weight * ce + self.recon_weight * rec, terms


# ---------------------------------------------------------------- rho
def pack_sets(h: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each sample's observed modalities, left-aligned and padded to the largest set in the
    batch: ``(z N x K x D, mask N x K, modality index N x K, -1 on padding)``."""
    mods = list(h)
    z = torch.stack([h[m] for m in mods], 1)
    have = torch.stack([present[m] for m in mods], 1)
    order = torch.argsort((~have).int(), dim=1, stable=True)
    z = z.gather(1, order[..., None].expand_as(z))
    mask = have.gather(1, order)
    k = max(int(mask.sum(1).max()), 1)
    return z[:, :k], mask[:, :k], order.masked_fill(~mask, -1)[:, :k]


class SetClassifier(Net):
    """rho over a permutation-invariant aggregate (mean, sum or max) of a masked set."""

    def __init__(self, width: int, hidden: int, n_classes: int, dropout: float, aggregation: str):
        super().__init__()
        self.aggregation = aggregation
        self.rho = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def aggregate(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``N x D`` from ``z`` (N x K x D); padded entries (mask False) never contribute."""
        m = mask[..., None]
        if self.aggregation == "max":
            return z.masked_fill(~m, float("-inf")).amax(1)
        total = torch.where(m, z, torch.zeros_like(z)).sum(1)
        return total / m.sum(1).clamp(min=1) if self.aggregation == "mean" else total

    def classify(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rho(self.aggregate(z, mask))

    def forward(self, h: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> ModelOutput:
        z, mask, index = pack_sets(h, present)
        pooled = self.aggregate(z, mask)
        if self.aggregation == "max":  # share of the set representation's coordinates each modality supplies
            won = index.gather(1, z.masked_fill(~mask[..., None], float("-inf")).argmax(1))
            share = {m: (won == j).float().mean(1) for j, m in enumerate(h)}
        else:
            size = mask.sum(1).clamp(min=1).float()
            share = {m: present[m].float() / size for m in h}
        return ModelOutput(self.rho(pooled), modality_weights=share, latents=dict(h))


# ---------------------------------------------------------------- method
@register_method("hypermm", HyperMMConfig, family="missing",
                 description="HyperMM: hypernetwork universal feature extractor + set classifier over the observed "
                             "modalities (no imputation)")
class HyperMM(Method):
    native_absence = "left out: the set classifier pools only the modalities present (no imputation)"

    def __init__(self, specs, classes, config: HyperMMConfig):
        super().__init__(specs, classes, config)
        if config.aggregation not in AGGREGATIONS:
            raise MMXError(f"aggregation={config.aggregation!r} is not one of {AGGREGATIONS}")
        if config.ce_weight < 0 or config.recon_weight < 0 or config.ce_weight + config.recon_weight == 0:
            raise MMXError("HyperMM loss weights must be >= 0 and not both 0")
        if config.rho_train.augment:
            raise MMXError("HyperMM step 2 encodes each observed modality once with the frozen phi; "
                           "augmentation belongs to step 1 (train.augment)")
        # layers only: a fit loads the ImageNet weights afresh, a checkpoint brings its own
        self.phi, self.rho = self._build(pretrained=False)
        self.config = replace(config, backbone=self.phi.backbone_name if self.phi.backbone is not None
                              else config.backbone)  # the card records the backbone actually used

    def _build(self, pretrained: bool = True) -> tuple[UniversalExtractor, SetClassifier]:
        c = self.config
        return (UniversalExtractor(self.specs, self.n_classes, c, pretrained),
                SetClassifier(c.width, c.rho_hidden, self.n_classes, c.rho_dropout, c.aggregation))

    def module(self) -> nn.Module:
        """Everything a checkpoint must hold."""
        return nn.ModuleDict({"prep": self.prep, "phi": self.phi, "rho": self.rho})

    def _fit(self, data, split, seed, progress, callback) -> loop.FitResult:
        self.phi, self.rho = self._build()  # fresh weights drawn under the seed just set
        init_pretrained(self.phi)
        self.module().to(self.device)
        first = self.fit_phi(data, split, seed, progress, callback)
        second = self.fit_rho(data, split, seed, progress, callback)
        history = [{"step": 1, **h} for h in first.history] + [{"step": 2, **h} for h in second.history]
        return loop.FitResult(second.best_epoch, second.best_score, first.epochs_run + second.epochs_run,
                              first.seconds + second.seconds, history)

    def fit_phi(self, data, split, seed, progress=False, callback=None) -> loop.FitResult:
        """Step 1: phi on every observed modality of the training samples (validation selects)."""
        net = PhiTraining(self.phi, self.config.ce_weight, self.config.recon_weight)
        result = loop.fit(net, lambda b, train: net(self.prepared(b), b["present"]), data, split.train, split.val,
                          self.config.train, self.device, seed, progress, callback)
        self.phi.requires_grad_(False).eval()
        return result

    @torch.no_grad()
    def _encode_rows(self, data, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """h of every observed modality of rows ``idx`` (phi frozen, so once per row), indexed by row."""
        out = {m: torch.zeros(len(data), self.config.width, device=self.device) for m in self.specs}
        for chunk in loop.iterate(np.asarray(idx), 256):
            batch = loop.to_device(data.batch(chunk), self.device)
            h, _ = self.phi.encode(self.prepared(batch), batch["present"])
            for m in out:
                out[m][chunk.to(self.device)] = h[m].float()
        return out

    def fit_rho(self, data, split, seed, progress=False, callback=None) -> loop.FitResult:
        """Step 2: rho on the sets of observed modalities, phi frozen."""
        self.phi.requires_grad_(False).eval()
        cache = self._encode_rows(data, np.concatenate([split.train, split.val]))
        return loop.fit(self.rho, lambda b, train: self.rho({m: c[b["index"].to(c.device)] for m, c in cache.items()},
                                                            b["present"]),
                        data, split.train, split.val, self.config.rho_train, self.device, seed, progress, callback)

    def forward(self, batch: dict, masks=None) -> ModelOutput:
        """The full model on a device batch: each observed modality through phi, the set through rho."""
        h, modality_logits = self.phi.encode(self.prepared(batch, masks), batch["present"])
        out = self.rho(h, batch["present"])
        out.modality_logits = modality_logits
        return out

    def _predict_outputs(self, data, idx, masks) -> ModelOutput:
        self.module().to(self.device)
        return loop.predict_outputs(self.module(), lambda b, train: self.forward(b, masks), data, idx, self.device,
                                    self.config.rho_train.batch_size)
