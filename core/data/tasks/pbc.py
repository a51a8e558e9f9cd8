"""``pbc``: single-cell peripheral-blood microscopy images, 8 classes (Acevedo et al. 2020)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.data.cache import load_images
from core.data.dataset import ModalitySpec, MultimodalDataset
from core.data.extract import copy_file, copy_lines
from core.data.splits import stratified_splits
from core.data.tasks import TaskData, register_task
from core.errors import MMXError

DIR = "blood_cells/pbc_acevedo2020"
CLASSES = ("lymphocyte", "neutrophil", "monocyte", "erythroblast", "eosinophil", "basophil", "ig", "platelet")


def _labels(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise MMXError("labels.csv not found", path)
    lab = pd.read_csv(path)
    bad = set(lab["class"]) - set(CLASSES)
    if bad:
        raise MMXError(f"unknown classes {sorted(bad)}", path)
    return lab.sort_values("path").reset_index(drop=True)


def _dataset(d: Path, lab: pd.DataFrame, image_size: int) -> MultimodalDataset:
    img = load_images([d / p for p in lab["path"]], (image_size, image_size))
    y = lab["class"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(np.int64)
    return MultimodalDataset(
        name="pbc",
        modalities={"image": img},
        present={"image": torch.ones(len(y), dtype=torch.bool)},
        y=torch.from_numpy(y), classes=CLASSES,
        groups=lab["path"].to_numpy(), ids=lab["path"].to_numpy(),
        specs={"image": ModalitySpec("image", "image", image_shape=(3, image_size, image_size),
                                     preprocessing=f"resized to {image_size}x{image_size}")},
    )


def read_examples(folder: Path, image_size: int = 64) -> MultimodalDataset:
    """The bundled extract: lines of ``labels.csv`` and the images they list, in the data's layout."""
    return _dataset(folder, _labels(folder / "labels.csv"), image_size)


def write_examples(root: Path, ids: list[str], out: Path) -> list[Path]:
    """The images ``ids`` (their paths) and their ``labels.csv`` lines, into ``out``."""
    wanted = set(ids)
    written = [copy_lines(root / DIR / "labels.csv", out / "labels.csv", lambda path: path in wanted)]
    return written + [copy_file(root / DIR / p, out / p) for p in sorted(wanted)]


@register_task("pbc", requires=(DIR,), description="PBC blood-cell microscopy, 3,100 images, 8 classes",
               examples=read_examples)
def build_pbc(root: Path, image_size: int = 64, seeds: tuple[int, ...] = (0, 1, 2)) -> TaskData:
    ds = _dataset(root / DIR, _labels(root / DIR / "labels.csv"), image_size)
    return TaskData(ds, {"stratified": stratified_splits(ds.y.numpy(), seeds, test_fraction=0.2,
                                                         prefix="stratified")},
                    "PBC peripheral-blood cell images (stratified 60/20/20 splits)")
