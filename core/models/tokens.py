"""Turning a modality into a sequence of tokens, for the attention-based methods (HEALNet, MCAT).

Omics: contiguous chunks of features, each chunk projected by its *own* weights (a chunk of
genes is not interchangeable with another, so no weights are shared). Images: non-overlapping
square patches, a shared linear projection plus a learned position embedding. Both map a
per-token score back onto features or pixels, so attention can be shown as an
informativeness map.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.data.dataset import ModalitySpec


class GroupedLinear(nn.Module):
    """``N x G x n_in -> N x G x n_out`` with separate weights per group ``G``."""

    def __init__(self, groups: int, n_in: int, n_out: int):
        super().__init__()
        bound = 1 / math.sqrt(n_in)  # nn.Linear's default initialisation, per group
        self.weight = nn.Parameter(torch.empty(groups, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ngi,gio->ngo", x, self.weight) + self.bias


class FeatureChunks(nn.Module):
    """Omics ``N x F`` -> ``N x T x dim``: ``T = ceil(F / chunk)`` chunks (the last one zero-padded)."""

    def __init__(self, n_features: int, chunk: int, dim: int):
        super().__init__()
        self.n_features = n_features
        self.chunk = max(1, min(chunk, n_features))
        self.n_tokens = -(-n_features // self.chunk)
        self.project = GroupedLinear(self.n_tokens, self.chunk, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.n_tokens * self.chunk - self.n_features
        x = F.pad(x, (0, pad)) if pad else x
        return self.project(x.view(len(x), self.n_tokens, self.chunk))

    def to_inputs(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-token ``N x T`` -> per-feature ``N x F`` (each feature gets its chunk's score)."""
        return scores.repeat_interleave(self.chunk, 1)[:, :self.n_features]


class ImagePatches(nn.Module):
    """Image ``N x C x H x W`` -> ``N x T x dim``: ``patch x patch`` tiles (right/bottom edge zero-padded)."""

    def __init__(self, image_shape: tuple[int, int, int], patch: int, dim: int):
        super().__init__()
        c, self.h, self.w = image_shape
        self.patch = patch
        self.grid = (-(-self.h // patch), -(-self.w // patch))
        self.n_tokens = self.grid[0] * self.grid[1]
        self.project = nn.Conv2d(c, dim, patch, stride=patch)
        self.position = nn.Parameter(torch.randn(self.n_tokens, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, self.grid[1] * self.patch - self.w, 0, self.grid[0] * self.patch - self.h))
        return self.project(x).flatten(2).transpose(1, 2) + self.position

    def to_inputs(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-token ``N x T`` -> per-pixel ``N x 1 x H x W``, constant inside each patch."""
        grid = scores.view(len(scores), 1, *self.grid)
        full = grid.repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3)
        return full[:, :, :self.h, :self.w]


def tokenizer(spec: ModalitySpec, dim: int, omics_chunk: int, image_patch: int) -> FeatureChunks | ImagePatches:
    """The tokenizer for a modality of this kind."""
    if spec.kind == "omics":
        return FeatureChunks(spec.n_features, omics_chunk, dim)
    return ImagePatches(spec.image_shape, image_patch, dim)
