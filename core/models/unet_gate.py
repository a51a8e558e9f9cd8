"""The image feature-informativeness gate of Image MM dynamics: a compact U-Net that gives
one value per patch.

A ``patch x patch`` strided convolution embeds each patch (so every grid cell sees exactly
its own pixels), a two-level U-Net (encoder, bottleneck at half the grid, decoder with a skip
connection) mixes context across patches, and a sigmoid gives the gate on the patch grid.
Repeating each value over its patch gives the pixel map, which is therefore exactly constant
inside every patch (what patch masking and the dashboard overlays rely on). Working on the
patch grid rather than on pixels keeps the gate about as cheap as the image encoder on a CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU())


def expand_patches(grid: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """``N x 1 x gh x gw`` patch values -> ``N x 1 x H x W`` pixels (each patch repeated)."""
    full = grid.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    return full[:, :, :height, :width]


class PatchGate(nn.Module):
    """Patch embedding -> two-level U-Net on the patch grid -> per-patch sigmoid gate."""

    def __init__(self, in_channels: int, patch_size: int = 4, width: int = 16):
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch size must be >= 1, got {patch_size}")
        self.patch_size = patch_size
        c = width
        self.embed = nn.Sequential(nn.Conv2d(in_channels, c, patch_size, stride=patch_size), nn.ReLU())
        self.encoder = _conv(c, c)
        self.middle = _conv(c, 2 * c)
        self.decoder = _conv(3 * c, c)
        self.head = nn.Conv2d(c, 1, 1)

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """Gate values on the patch grid, ``N x 1 x ceil(H/p) x ceil(W/p)``, in (0, 1)."""
        p = self.patch_size
        x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))  # partial edge patches padded with zeros
        e = self.encoder(self.embed(x))
        mid = self.middle(F.max_pool2d(e, 2, ceil_mode=True))
        d = self.decoder(torch.cat([F.interpolate(mid, size=e.shape[-2:]), e], 1))
        return torch.sigmoid(self.head(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate at pixel resolution, ``N x 1 x H x W``, constant inside each patch."""
        return expand_patches(self.grid(x), self.patch_size, x.shape[-2], x.shape[-1])
