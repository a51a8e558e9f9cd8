"""``healnet``: hybrid early fusion through a shared latent array.

Hemker K., Simidjievski N., Jamnik M. "HEALNet: Multimodal Fusion for Heterogeneous
Biomedical Data." NeurIPS 2024 (arXiv:2311.09115).

A learned latent array (``n_latents x latent_dim``) is updated, layer after layer, by
cross-attention to each modality in turn (modality-specific cross-attention and feed-forward
weights), each pass followed by a self-attention block on the latent array that all
modalities share; the classifier reads the mean of the latent array. Modalities enter as
tokens (omics: feature chunks, images: patches; see :mod:`core.models.tokens`).

Missing modalities are handled per sample: a sample that lacks a modality keeps its latent
array unchanged at that modality's step (a per-sample gate on the update), while the other
samples of the batch are updated as usual. The missing slot is zeroed before tokenising, so
whatever the slot holds (zeros, garbage, NaN) cannot reach the prediction. Nothing is
skipped for the whole batch and no error is swallowed (the published code wraps the
cross-attention step in a bare ``try/except: pass``).

Explain output: ``feature_maps`` holds the last layer's cross-attention of the latents to
each modality's tokens (mean over latents), spread onto features or pixels; zero where the
modality is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from core.models.base import DeepConfig, Net, TorchMethod
from core.models.registry import register_method
from core.models.tokens import tokenizer
from core.train.loop import TrainConfig
from core.train.output import ModelOutput


@dataclass
class HEALNetConfig(DeepConfig):
    n_latents: int = 16
    latent_dim: int = 64
    token_dim: int = 64
    depth: int = 2  # passes of (cross-attention to every modality, then self-attention)
    tie_layers: bool = False  # one set of weights reused by every pass
    cross_heads: int = 1
    latent_heads: int = 4
    dropout: float = 0.1  # in the feed-forward blocks
    omics_chunk: int = 8  # omics features per token
    image_patch: int = 8  # image patch side in pixels
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=100, batch_size=32, lr=5e-4, patience=20))


class FeedForward(nn.Sequential):
    """Pre-norm two-layer MLP whose output is added to its input by the caller."""

    def __init__(self, dim: int, dropout: float, mult: int = 2):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(dim * mult, dim))


class CrossUpdate(nn.Module):
    """One modality's update of the latent array: cross-attention to its tokens, then feed-forward."""

    def __init__(self, latent_dim: int, token_dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm_latents = nn.LayerNorm(latent_dim)
        self.norm_tokens = nn.LayerNorm(token_dim)
        self.attn = nn.MultiheadAttention(latent_dim, heads, kdim=token_dim, vdim=token_dim, batch_first=True)
        self.ff = FeedForward(latent_dim, dropout)

    def forward(self, s: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.norm_tokens(tokens)
        a, weights = self.attn(self.norm_latents(s), t, t, need_weights=True)  # weights: N x latents x tokens
        s = s + a
        return s + self.ff(s), weights


class SelfUpdate(nn.Module):
    """Self-attention over the latent array, then feed-forward (shared by all modalities)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = FeedForward(dim, dropout)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        h = self.norm(s)
        s = s + self.attn(h, h, h, need_weights=False)[0]
        return s + self.ff(s)


class HEALNetNet(Net):
    def __init__(self, specs, n_classes: int, cfg: HEALNetConfig):
        super().__init__()
        self.depth = cfg.depth
        self.tokenizers = nn.ModuleDict({m: tokenizer(s, cfg.token_dim, cfg.omics_chunk, cfg.image_patch)
                                         for m, s in specs.items()})
        self.latents = nn.Parameter(torch.randn(cfg.n_latents, cfg.latent_dim) * 0.02)
        n_blocks = 1 if cfg.tie_layers else cfg.depth
        self.cross = nn.ModuleList([
            nn.ModuleDict({m: CrossUpdate(cfg.latent_dim, cfg.token_dim, cfg.cross_heads, cfg.dropout) for m in specs})
            for _ in range(n_blocks)])
        self.shared = nn.ModuleList([SelfUpdate(cfg.latent_dim, cfg.latent_heads, cfg.dropout)
                                     for _ in range(n_blocks)])
        self.head = nn.Sequential(nn.LayerNorm(cfg.latent_dim), nn.Linear(cfg.latent_dim, n_classes))

    def forward(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> ModelOutput:
        tokens = {}
        for m, tok in self.tokenizers.items():
            keep = present[m].view(-1, *[1] * (x[m].ndim - 1))
            tokens[m] = tok(torch.where(keep, x[m], torch.zeros_like(x[m])))
        n = len(present[next(iter(self.tokenizers))])
        s = self.latents.expand(n, -1, -1)
        attention = {}
        for layer in range(self.depth):
            block = layer % len(self.shared)
            for m, update in self.cross[block].items():
                updated, attention[m] = update(s, tokens[m])
                s = torch.where(present[m].view(-1, 1, 1), updated, s)  # samples lacking m keep their state
            s = self.shared[block](s)
        maps = {m: self.tokenizers[m].to_inputs(w.float().mean(1) * present[m][:, None])
                for m, w in attention.items()}
        return ModelOutput(self.head(s.mean(1)), feature_maps=maps)


@register_method("healnet", HEALNetConfig, family="baseline",
                 description="HEALNet (Hemker et al. 2024): shared latent array cross-attending to each modality; "
                             "per-sample missing modalities")
class HEALNet(TorchMethod):
    def build_net(self) -> Net:
        return HEALNetNet(self.specs, self.n_classes, self.config)
