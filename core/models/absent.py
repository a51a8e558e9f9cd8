"""How an absent modality reaches a network: the imputation and dummy-input strategies.

Any :class:`~core.models.base.TorchMethod` takes two settings (in :class:`DeepConfig`):

- ``missing``: ``native`` (the net gets the true presence masks and handles absence itself),
  ``zeros`` (absent slots hold zeros after scaling), ``mean`` (the training mean: omics
  vector or mean image) or ``gray`` (images uniform gray 0.5 as in the seed study's masking,
  omics zeros). With a fill the net is told every modality is present: it cannot tell a
  filled slot from an observed one, which is what these baselines do.
- ``modality_dropout``: while training, each observed modality of a sample is dropped with
  this probability (at least one kept), then treated like a real absence.

The fills reuse the test-time masks of :mod:`core.models.masking`, applied only to absent rows.
"""
from __future__ import annotations

from typing import Callable

import torch

from core.data.dataset import ModalitySpec
from core.data.missing import draw_presence
from core.errors import MMXError
from core.models.masking import MaskSpec, apply_mask

FILLS = ("native", "zeros", "mean", "gray")


def check_settings(missing: str, modality_dropout: float) -> None:
    if missing not in FILLS:
        raise MMXError(f"missing={missing!r} is not a strategy for absent modalities; use one of {FILLS}")
    if not 0.0 <= modality_dropout < 1.0:
        raise MMXError(f"modality_dropout must lie in [0, 1), got {modality_dropout}")


def drop_modalities(batch: dict, rate: float) -> dict:
    """A copy of ``batch`` in which observed modalities are dropped at ``rate`` (each sample
    keeps one): presence turns False and the slot is zeroed, like a real absence."""
    mods = list(batch["present"])
    present = torch.stack([batch["present"][m] for m in mods], 1)
    keep = draw_presence(present, torch.full((len(mods),), rate))
    x = {m: torch.where(keep[:, j].view(-1, *[1] * (batch["x"][m].ndim - 1)), batch["x"][m],
                        torch.zeros_like(batch["x"][m])) for j, m in enumerate(mods)}
    return {**batch, "x": x, "present": {m: keep[:, j] for j, m in enumerate(mods)}}


def fill_absent(x: dict[str, torch.Tensor], present: dict[str, torch.Tensor], missing: str,
                specs: dict[str, ModalitySpec], training_mean: Callable[[str], torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Prepared inputs and presence as the net sees them under strategy ``missing``."""
    if missing == "native":
        return x, present
    modes = {m: MaskSpec("zeros" if missing == "gray" and specs[m].kind == "omics" else missing) for m in x}
    filled = apply_mask(x, modes, training_mean)
    out = {m: torch.where(present[m].view(-1, *[1] * (v.ndim - 1)), v, filled[m]) for m, v in x.items()}
    return out, {m: torch.ones_like(p) for m, p in present.items()}
