"""Synthetic ``demo`` task: RNA, protein and an image with a known class signal.

For unit tests and for a machine with no data. Everything it shows is labelled synthetic.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from core.data.dataset import ModalitySpec, MultimodalDataset
from core.data.splits import leave_one_group_out
from core.data.tasks import TaskData, register_task

CLASSES = ("alpha", "beta", "gamma", "delta")


@register_task("demo", requires=(), description="SYNTHETIC: generated RNA + protein + image, 4 classes")
def build_demo(root=None, n: int = 240, image_size: int = 32, seed: int | None = None,
               seeds: tuple[int, ...] = (0,)) -> TaskData:
    """``seed`` (default ``$MMX_DEMO_SEED``, else 0) draws another synthetic data set of the same
    design (the test suite must pass with any of them); ``seeds`` are the splits' seeds."""
    seed = int(os.environ.get("MMX_DEMO_SEED", 0)) if seed is None else seed
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    y = np.arange(n) % k
    rng.shuffle(y)
    n_genes, n_prot = 60, 16
    rna = rng.gamma(2.0, 0.5, (n, n_genes)).astype(np.float32)
    prot = rng.normal(1.0, 0.6, (n, n_prot)).astype(np.float32)
    for c in range(k):  # each class raises its own few genes and one protein
        rna[y == c, c * 5:(c * 5) + 5] += 2.5
        prot[y == c, c] += 2.0
    img = rng.integers(150, 200, (n, 3, image_size, image_size)).astype(np.uint8)
    q = image_size // 2
    for i, c in enumerate(y):  # a dark blob in the class's quadrant
        r0, c0 = (c // 2) * q + q // 4, (c % 2) * q + q // 4
        img[i, :, r0:r0 + q // 2, c0:c0 + q // 2] = rng.integers(30, 80)
    groups = np.array(["donor_a", "donor_b"])[np.arange(n) % 2]
    specs = {
        "rna": ModalitySpec("rna", "omics", tuple(f"GENE{i}" for i in range(n_genes)), preprocessing="synthetic"),
        "protein": ModalitySpec("protein", "omics", tuple(f"PROT{i}" for i in range(n_prot)), preprocessing="synthetic"),
        "image": ModalitySpec("image", "image", image_shape=(3, image_size, image_size), preprocessing="synthetic"),
    }
    ds = MultimodalDataset(
        name="demo",
        modalities={"rna": torch.from_numpy(np.log1p(rna)), "protein": torch.from_numpy(prot), "image": torch.from_numpy(img)},
        present={m: torch.ones(n, dtype=torch.bool) for m in specs},
        y=torch.from_numpy(y.astype(np.int64)),
        classes=CLASSES,
        groups=groups,
        ids=np.array([f"synthetic_{i:04d}" for i in range(n)]),
        specs=specs,
        synthetic=True,
    )
    return TaskData(ds, {"logo": leave_one_group_out(groups, y, seeds=seeds)},
                    "SYNTHETIC demo data (not real cells): RNA, protein and image with planted class signal")
