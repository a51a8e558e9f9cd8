"""Missing modalities, simulated: drop each modality of each sample at a given rate.

A dropped modality becomes a fact of the data (``present`` False and a zeroed slot), exactly
like a modality a sample never had, so every method sees the same absences. A sample always
keeps at least one of the modalities it had. The same draw serves experiments
(:func:`simulate_missing`, seeded) and modality-dropout training (:func:`draw_presence`).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from core.data.dataset import MultimodalDataset
from core.errors import MMXError


def draw_presence(present: torch.Tensor, rates: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop each True entry of ``present`` (bool ``N x M``) with its column's rate (``M``); a
    row left empty keeps one of its own modalities, drawn uniformly. Draws on the CPU, so a
    seeded ``generator`` gives the same result on any device."""
    n, k = present.shape
    drop = torch.rand(n, k, generator=generator) < rates.cpu().float()
    choice = torch.rand(n, k, generator=generator)
    had = present.cpu()
    keep = had & ~drop
    empty = ~keep.any(1) & had.any(1)
    rescue = torch.where(had, choice, torch.full_like(choice, -1.0)).argmax(1)
    keep[empty, rescue[empty]] = True
    return keep.to(present.device)


def simulate_missing(data: MultimodalDataset, rates: dict[str, float], seed: int) -> MultimodalDataset:
    """A copy of ``data`` in which modality ``m`` is missing for about ``rates[m]`` of the
    samples (modalities not named keep their presence); reproducible by ``seed``."""
    unknown = [m for m in rates if m not in data.specs]
    if unknown:
        raise MMXError(f"dataset {data.name!r} has no modality {unknown}; it has {list(data.specs)}")
    bad = {m: r for m, r in rates.items() if not 0.0 <= float(r) <= 1.0}
    if bad:
        raise MMXError(f"missing rates must lie in [0, 1], got {bad}")
    mods = list(data.specs)
    present = torch.stack([data.present[m] for m in mods], 1)
    r = torch.tensor([float(rates.get(m, 0.0)) for m in mods])
    keep = draw_presence(present, r, torch.Generator().manual_seed(seed))
    modalities, new_present = {}, {}
    for j, m in enumerate(mods):
        x = data.modalities[m]
        dropped = present[:, j] & ~keep[:, j]
        if dropped.any():
            x = x.clone()
            x[dropped] = 0
        modalities[m], new_present[m] = x, keep[:, j].clone()
    return replace(data, modalities=modalities, present=new_present, _hash=None)


def missing_fractions(data: MultimodalDataset, idx=None) -> dict[str, float]:
    """The fraction of samples (of ``idx``, default all) lacking each modality."""
    sel = slice(None) if idx is None else torch.as_tensor(idx, dtype=torch.long)
    return {m: float((~p[sel]).float().mean()) for m, p in data.present.items()}
