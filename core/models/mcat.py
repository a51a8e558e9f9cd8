"""``mcat``: Multimodal Co-Attention Transformer for two omics.

Chen R. J., Lu M. Y., Weng W.-H., Chen T. Y., Williamson D. F. K., Manz T., Shady M.,
Mahmood F. "Multimodal Co-Attention Transformer for Survival Prediction in Gigapixel Whole
Slide Images." ICCV 2021.

In the paper, genomic signatures (six gene-family groups, each embedded by its own
self-normalising network) are the queries of a co-attention over the bag of slide-patch
embeddings. Here both streams are omics: the *guide* modality is cut into ``n_groups``
feature groups, each embedded by its own SNN (the paper's genomic tokens); the other
modality is cut into chunks of ``bag_chunk`` features, each projected by its own weights
(the paper's instance bag). Then, as in the paper: genomic-guided co-attention (guide tokens
query the bag), a transformer encoder per stream (the co-attended bag, and the guide tokens),
gated attention pooling per stream, and a concatenation head.

Exactly two omics modalities, both present for every sample: MCAT has no rule for a missing
stream, so such data are refused rather than imputed.

Explain output: ``feature_maps`` per modality — for the guide, its pooling attention over
groups; for the other omics, the co-attention weights of each group weighted by the pooling
attention over the co-attended tokens — spread onto the features.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from core.errors import MMXError
from core.models.base import DeepConfig, Net, TorchMethod
from core.models.registry import register_method
from core.models.tokens import FeatureChunks, GroupedLinear
from core.train.loop import TrainConfig
from core.train.output import ModelOutput


@dataclass
class MCATConfig(DeepConfig):
    guide: str | None = None  # the omics whose groups query the other (default: the first modality)
    n_groups: int = 6  # feature groups of the guide (the paper's six genomic signatures)
    bag_chunk: int = 8  # features per token of the other omics
    dim: int = 64  # token width (the paper's 256, smaller for small cohorts)
    heads: int = 4  # heads of the stream transformers (the co-attention has one, as in the paper)
    layers: int = 2
    dropout: float = 0.25
    # small cohorts: batches of 16 give the deep stack enough optimizer steps per epoch (the paper
    # accumulates gradients over 32 of ~1000 slides), and the validation loss selects the epoch
    # (balanced accuracy on a few dozen validation rows stalls early and stops training too soon)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=100, batch_size=16, lr=5e-4, patience=20,
                                                                   monitor="loss"))


class GatedAttentionPool(nn.Module):
    """Gated attention pooling (Ilse et al. 2018, as in MCAT): ``N x T x d -> N x d`` and weights ``N x T``."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Dropout(dropout))
        self.b = nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.score = nn.Linear(dim, 1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.softmax(self.score(self.a(h) * self.b(h)).squeeze(-1), dim=1)
        return (w.unsqueeze(-1) * h).sum(1), w


class Stream(nn.Module):
    """Transformer encoder over a token sequence, gated attention pooling, then rho (FC + ReLU)."""

    def __init__(self, dim: int, heads: int, layers: int, dropout: float):
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.pool = GatedAttentionPool(dim, dropout)
        self.rho = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, w = self.pool(self.encoder(tokens))
        return self.rho(pooled), w


class MCATNet(Net):
    def __init__(self, guide_spec, bag_spec, n_classes: int, cfg: MCATConfig):
        super().__init__()
        self.guide, self.bag = guide_spec.name, bag_spec.name
        f = guide_spec.n_features
        self.guide_tokens = FeatureChunks(f, -(-f // cfg.n_groups), cfg.dim)
        g = self.guide_tokens.n_tokens
        # each group's SNN (Klambauer et al. 2017): Linear -> ELU -> AlphaDropout, twice, own weights per group
        self.guide_snn = nn.Sequential(nn.ELU(), nn.AlphaDropout(cfg.dropout), GroupedLinear(g, cfg.dim, cfg.dim),
                                       nn.ELU(), nn.AlphaDropout(cfg.dropout))
        self.bag_tokens = FeatureChunks(bag_spec.n_features, cfg.bag_chunk, cfg.dim)
        self.bag_fc = nn.Sequential(nn.ReLU(), nn.Dropout(cfg.dropout))
        self.coattn = nn.MultiheadAttention(cfg.dim, 1, batch_first=True)
        self.guided_stream = Stream(cfg.dim, cfg.heads, cfg.layers, cfg.dropout)
        self.guide_stream = Stream(cfg.dim, cfg.heads, cfg.layers, cfg.dropout)
        self.head = nn.Sequential(nn.Linear(2 * cfg.dim, cfg.dim), nn.ReLU(), nn.Linear(cfg.dim, cfg.dim), nn.ReLU(),
                                  nn.Linear(cfg.dim, n_classes))

    def forward(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> ModelOutput:
        g = self.guide_snn(self.guide_tokens(x[self.guide]))  # N x groups x d
        b = self.bag_fc(self.bag_tokens(x[self.bag]))  # N x chunks x d
        guided, coattn = self.coattn(g, b, b, need_weights=True)  # N x groups x d; N x groups x chunks
        h_bag, w_bag = self.guided_stream(guided)
        h_guide, w_guide = self.guide_stream(g)
        logits = self.head(torch.cat([h_bag, h_guide], 1))
        bag_scores = torch.einsum("ng,ngc->nc", w_bag.float(), coattn.float())
        maps = {self.guide: self.guide_tokens.to_inputs(w_guide.float()),
                self.bag: self.bag_tokens.to_inputs(bag_scores)}
        return ModelOutput(logits, feature_maps=maps, latents={self.bag: h_bag, self.guide: h_guide})


@register_method("mcat", MCATConfig, family="baseline",
                 description="MCAT (Chen et al. 2021) for two omics: guided co-attention, transformers, gated "
                             "attention pooling, concatenation")
class MCAT(TorchMethod):
    kinds = ("omics",)

    def __init__(self, specs, classes, config: MCATConfig):
        if len(specs) != 2 or any(s.kind != "omics" for s in specs.values()):
            raise MMXError("method 'mcat' needs exactly two omics modalities; got "
                           + ", ".join(f"{m} ({s.kind})" for m, s in specs.items()))
        if config.guide is not None and config.guide not in specs:
            raise MMXError(f"mcat guide {config.guide!r} is not one of the modalities {list(specs)}")
        if config.modality_dropout > 0 and config.missing == "native":
            raise MMXError("mcat cannot skip a dropped modality: give modality_dropout together with a filling "
                           "(missing=zeros or mean)")
        super().__init__(specs, classes, config)

    def build_net(self) -> Net:
        guide = self.config.guide or next(iter(self.specs))
        bag = next(m for m in self.specs if m != guide)
        return MCATNet(self.specs[guide], self.specs[bag], self.n_classes, self.config)

    def _fit(self, data, split, seed, progress, callback):
        self._require_both(data, np.concatenate([split.train, split.val]))
        return super()._fit(data, split, seed, progress, callback)

    def _predict_outputs(self, data, idx, masks) -> ModelOutput:
        self._require_both(data, idx)
        return super()._predict_outputs(data, idx, masks)

    def _require_both(self, data, idx) -> None:
        i = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        lacking = {m: int((~data.present[m][i]).sum()) for m in self.specs}
        if any(lacking.values()):
            raise MMXError(f"method 'mcat' needs both omics for every sample; in data {data.name!r} "
                           + ", ".join(f"{n} samples lack {m}" for m, n in lacking.items() if n))
