"""``rosmap``: mRNA, methylation and miRNA (200 features each), AD vs normal (MOGONET files)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.data.dataset import ModalitySpec, MultimodalDataset
from core.data.splits import stratified_splits, with_inner_validation
from core.data.tasks import TaskData, register_task
from core.errors import MMXError

DIR = "rosmap"
VIEWS = {"mRNA": 1, "methylation": 2, "miRNA": 3}
CLASSES = ("normal", "AD")


def _matrix(path: Path, n_cols: int) -> np.ndarray:
    if not path.is_file():
        raise MMXError("file not found", path)
    x = pd.read_csv(path, header=None).to_numpy()
    if x.shape[1] != n_cols or not np.isfinite(x.astype(float)).all():
        raise MMXError(f"expected {n_cols} finite numeric columns, got shape {x.shape}", path)
    return x.astype(np.float32)


@register_task("rosmap", requires=(DIR,), description="ROSMAP mRNA + methylation + miRNA (200 each), AD vs normal, 351 patients")
def build_rosmap(root: Path, seeds: tuple[int, ...] = (0, 1, 2, 3, 4)) -> TaskData:
    d = root / DIR
    y_parts, mods = [], {m: [] for m in VIEWS}
    for part in ("tr", "te"):
        lab = _matrix(d / f"labels_{part}.csv", 1)[:, 0]
        if not np.isin(lab, (0, 1)).all():
            raise MMXError("labels must be 0 or 1", d / f"labels_{part}.csv")
        y_parts.append(lab.astype(np.int64))
        for m, v in VIEWS.items():
            feats = pd.read_csv(d / f"{v}_featname.csv", header=None)[0].astype(str)
            x = _matrix(d / f"{v}_{part}.csv", len(feats))
            if len(x) != len(lab):
                raise MMXError(f"{len(x)} rows but {len(lab)} labels", d / f"{v}_{part}.csv")
            mods[m].append(x)
    y = np.concatenate(y_parts)
    n_tr = len(y_parts[0])
    n = len(y)
    specs = {m: ModalitySpec(m, "omics", tuple(pd.read_csv(d / f"{v}_featname.csv", header=None)[0].astype(str)),
                             preprocessing="MOGONET preprocessing (200 selected features, scaled to [0, 1])")
             for m, v in VIEWS.items()}
    ds = MultimodalDataset(
        name="rosmap",
        modalities={m: torch.from_numpy(np.concatenate(v)) for m, v in mods.items()},
        present={m: torch.ones(n, dtype=torch.bool) for m in VIEWS},
        y=torch.from_numpy(y), classes=CLASSES,
        groups=np.array([f"patient_{i}" for i in range(n)]),
        ids=np.array([f"tr_{i}" for i in range(n_tr)] + [f"te_{i}" for i in range(n - n_tr)]),
        specs=specs,
    )
    idx = np.arange(n)
    return TaskData(ds, {
        "mogonet": with_inner_validation("mogonet", idx[:n_tr], idx[n_tr:], y, seeds),
        "repeated_70_30": stratified_splits(y, seeds, test_fraction=0.3, prefix="repeated_70_30"),
    }, "ROSMAP (MOGONET release): AD vs normal from three omics")
