"""``rosmap``: mRNA, methylation and miRNA (200 features each), AD vs normal (MOGONET files)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.data.dataset import ModalitySpec, MultimodalDataset
from core.data.splits import stratified_splits, with_inner_validation
from core.data.extract import copy_file, copy_lines
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


def _read_part(d: Path, part: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and the three views of MOGONET's ``tr`` or ``te`` files in folder ``d``."""
    lab = _matrix(d / f"labels_{part}.csv", 1)[:, 0]
    if not np.isin(lab, (0, 1)).all():
        raise MMXError("labels must be 0 or 1", d / f"labels_{part}.csv")
    mods = {}
    for m, v in VIEWS.items():
        feats = pd.read_csv(d / f"{v}_featname.csv", header=None)[0].astype(str)
        mods[m] = _matrix(d / f"{v}_{part}.csv", len(feats))
        if len(mods[m]) != len(lab):
            raise MMXError(f"{len(mods[m])} rows but {len(lab)} labels", d / f"{v}_{part}.csv")
    return lab.astype(np.int64), mods


def _dataset(d: Path, y: np.ndarray, mods: dict[str, np.ndarray], ids: np.ndarray,
             groups: np.ndarray) -> MultimodalDataset:
    n = len(y)
    specs = {m: ModalitySpec(m, "omics", tuple(pd.read_csv(d / f"{v}_featname.csv", header=None)[0].astype(str)),
                             preprocessing="MOGONET preprocessing (200 selected features, scaled to [0, 1])")
             for m, v in VIEWS.items()}
    return MultimodalDataset(
        name="rosmap", modalities={m: torch.from_numpy(x) for m, x in mods.items()},
        present={m: torch.ones(n, dtype=torch.bool) for m in VIEWS}, y=torch.from_numpy(y), classes=CLASSES,
        groups=groups, ids=np.asarray(ids), specs=specs)


def read_examples(folder: Path) -> MultimodalDataset:
    """The bundled extract: lines of the test files, with their test-row ids in ``ids.csv``."""
    y, mods = _read_part(folder, "te")
    ids = pd.read_csv(folder / "ids.csv")["id"].astype(str).to_numpy()
    if len(ids) != len(y):
        raise MMXError(f"{len(ids)} ids for {len(y)} rows", folder / "ids.csv")
    return _dataset(folder, y, mods, ids, np.array([f"patient_{i}" for i in ids]))


def write_examples(root: Path, ids: list[str], out: Path) -> list[Path]:
    """``ids`` (``te_<row>``) of the test files under ``root`` as line subsets in ``out``."""
    d = root / DIR
    rows = sorted(int(i.removeprefix("te_")) for i in ids)
    written = [copy_lines(d / f"labels_te.csv", out / "labels_te.csv", rows, header=False)]
    for v in VIEWS.values():
        written.append(copy_lines(d / f"{v}_te.csv", out / f"{v}_te.csv", rows, header=False))
        written.append(copy_file(d / f"{v}_featname.csv", out / f"{v}_featname.csv"))
    (out / "ids.csv").write_text("id\n" + "".join(f"te_{r}\n" for r in rows))
    return [*written, out / "ids.csv"]


@register_task("rosmap", requires=(DIR,), description="ROSMAP mRNA + methylation + miRNA (200 each), AD vs normal, "
               "351 patients", examples=read_examples)
def build_rosmap(root: Path, seeds: tuple[int, ...] = (0, 1, 2, 3, 4)) -> TaskData:
    d = root / DIR
    (y_tr, tr), (y_te, te) = _read_part(d, "tr"), _read_part(d, "te")
    y = np.concatenate([y_tr, y_te])
    n_tr = len(y_tr)
    n = len(y)
    ids = np.array([f"tr_{i}" for i in range(n_tr)] + [f"te_{i}" for i in range(n - n_tr)])
    ds = _dataset(d, y, {m: np.concatenate([tr[m], te[m]]) for m in VIEWS}, ids,
                  np.array([f"patient_{i}" for i in range(n)]))
    idx = np.arange(n)
    return TaskData(ds, {
        "mogonet": with_inner_validation("mogonet", idx[:n_tr], idx[n_tr:], y, seeds),
        "repeated_70_30": stratified_splits(y, seeds, test_fraction=0.3, prefix="repeated_70_30"),
    }, "ROSMAP (MOGONET release): AD vs normal from three omics")
