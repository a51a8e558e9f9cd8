"""The output of an ImageNet encoder's frozen units, computed once per image for a whole fit.

Training only the last units of an :class:`~core.models.encoders.ImageNetEncoder` leaves the
output of the first ones unchanged from step to step, so a method that hands an image straight
to its encoder (no gate or mask in between) can compute that output once per training image
and train on it: the same model, a fraction of the operations per step. Where training flips
images, the cached feature maps are flipped instead: an augmentation in feature space, not the
same as flipping the image (learned kernels are not symmetric). ``cnn`` and guidance's C_I / C_S
train this way.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from core.data.dataset import MultimodalDataset
from core.models.encoders import ImageNetEncoder
from core.train.loop import TrainConfig, random_flips


def cacheable(encoders: Mapping[str, nn.Module], train: TrainConfig) -> dict[str, ImageNetEncoder]:
    """The encoders (by modality) with frozen first units whose output can be cached; none under
    ``strong_augment``, whose crops and colour changes must see the image."""
    if train.strong_augment:
        return {}
    return {m: e for m, e in encoders.items() if isinstance(e, ImageNetEncoder) and e.n_tuned < e.n_units}


class PrefixCache:
    """Frozen-unit outputs of ``encoders`` for ``rows`` of ``data``, computed from the images as
    ``prep`` (the method's input preparation) gives them, on ``device``."""

    def __init__(self, encoders: Mapping[str, ImageNetEncoder], data: MultimodalDataset,
                 prep: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]], rows: np.ndarray,
                 device: torch.device | str, chunk: int = 64):
        self.encoders = dict(encoders)
        rows = np.asarray(rows)
        self.at = torch.full((len(data),), -1, dtype=torch.long)
        self.at[torch.as_tensor(rows)] = torch.arange(len(rows))
        parts: dict[str, list[torch.Tensor]] = {m: [] for m in self.encoders}
        for e in self.encoders.values():
            e.eval()
        with torch.inference_mode():
            for part in np.array_split(rows, max(1, len(rows) // chunk)):
                x = prep({m: data.modalities[m][torch.as_tensor(part)].to(device) for m in self.encoders})
                for m, e in self.encoders.items():
                    parts[m].append(e.prefix(x[m]))
        self.cache = {m: torch.cat(v).clone() for m, v in parts.items()}  # clone: usable outside inference mode

    def inputs(self, index: torch.Tensor, x: dict[str, torch.Tensor] | None = None,
               flips: bool = False) -> dict[str, torch.Tensor]:
        """``x`` with each cached modality replaced by its cached output for the batch's data rows
        ``index``, randomly flipped when ``flips`` (training)."""
        out = dict(x or {})
        for m, c in self.cache.items():
            out[m] = c[self.at[index.cpu()].to(c.device)]
        return random_flips(out, list(self.cache), torch.default_generator) if flips else out

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Meanwhile the encoders take the cached outputs instead of images."""
        with contextlib.ExitStack() as stack:
            for e in self.encoders.values():
                stack.enter_context(e.from_prefix())
            yield
