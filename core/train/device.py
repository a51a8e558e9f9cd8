"""Device choice and deterministic seeding."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from core.errors import MMXError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise MMXError(f"device {device!r} requested but CUDA is not available on this machine")
    return d


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run with the same seed gives the same numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
