"""One sample to explain, in the layout a model was trained on: picked from the model's own test
split or read from a user's files (images and/or an expression table), with a plain report of
what was read, matched, filled and left absent.

The dashboard's sample picker and a notebook use the same calls::

    cohort = heldout_cohort(model)            # the card's test split, only samples it can predict
    s = cohort.sample(0)
    up = read_upload(model, images={"image": ("cell.png", png_bytes)}, table=("cell.csv", csv_bytes))
    s = up.sample(0)
"""
from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.data.dataset import MultimodalDataset
from core.data.external import read_external
from core.data.tasks.cells import IMAGE_CAVEAT, UPLOAD_IMAGE_CAVEAT
from core.errors import MMXError
from core.evaluate import open_source, predictable
from core.limits import check_size
from core.models.base import Method


@dataclass(frozen=True)
class Sample:
    """A one-row dataset shaped for the model, its true class when known, and where it came from."""

    data: MultimodalDataset
    label: str | None
    source: str
    notes: tuple[str, ...] = ()  # what reading found
    digests: dict[str, str] = field(default_factory=dict)  # input file -> sha256
    caveats: tuple[str, ...] = ()  # what to know before reading an explanation of it

    @property
    def id(self) -> str:
        return str(self.data.ids[0])

    @property
    def present(self) -> tuple[str, ...]:
        return tuple(m for m, p in self.data.present.items() if bool(p[0]))

    def image(self, modality: str) -> np.ndarray:
        """The image as the model sees it (resized), ``H x W x 3`` uint8."""
        return self.data.modalities[modality][0].permute(1, 2, 0).numpy()


@dataclass
class Cohort:
    """Samples of one data set a model can predict (``idx`` rows of ``data``), with a listing."""

    data: MultimodalDataset
    idx: np.ndarray
    source: str
    notes: list[str]
    labels: np.ndarray | None  # true class names per ``idx`` row, when known
    caveats: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """One row per sample: its position in this cohort, id and true class."""
        out = pd.DataFrame({"position": np.arange(len(self.idx)), "id": np.asarray(self.data.ids)[self.idx]})
        if self.labels is not None:
            out["label"] = self.labels
        return out

    def sample(self, position: int) -> Sample:
        if not 0 <= position < len(self.idx):
            raise MMXError(f"sample {position} is out of range: {self.source} has {len(self.idx)} samples")
        row = int(self.idx[position])
        return Sample(self.data.subset([row]), None if self.labels is None else str(self.labels[position]),
                      self.source, tuple(self.notes), caveats=tuple(self.caveats))


def heldout_cohort(method: Method, data_dir: str | Path | None = None) -> Cohort:
    """The test part of the split named on the model's card (what its metrics were measured on); with
    no data folder for the task, its bundled examples, and a caveat saying so."""
    card = getattr(method, "card", None) or {}
    if "task" not in card:
        raise MMXError(f"model {method.name!r} has no card naming its task: load it from a checkpoint")
    scored = open_source(method, task=card["task"], data_dir=data_dir)
    idx, _ = predictable(method, scored.data, scored.idx)
    labels = np.asarray(method.classes)[scored.data.y[torch.as_tensor(idx)].numpy()]
    return Cohort(scored.data, idx, scored.source, scored.notes, labels,
                  [*([scored.stand_in] if scored.stand_in else []), *caveats(method, upload=False)])


def read_upload(method: Method, images: dict[str, tuple[str, bytes]] | None = None,
                table: tuple[str, bytes] | None = None) -> Cohort:
    """A user's files as samples for ``method``: at most one image per image modality
    (``{modality: (file name, bytes)}``) and at most one expression table (CSV row(s), ``.h5ad``
    or ``.h5mu``). With a table every cell is a sample, each paired with the uploaded images;
    modalities without a file are absent. Readers' errors name the file."""
    images = {m: f for m, f in (images or {}).items() if f is not None}
    if not images and table is None:
        raise MMXError("nothing uploaded: give an image and/or an expression table")
    unknown = [m for m in images if m not in method.specs or method.specs[m].kind != "image"]
    if unknown:
        raise MMXError(f"model {method.name!r} has no image modality {unknown}; its modalities are "
                       f"{list(method.specs)}")
    for name, data in [*images.values(), *([table] if table is not None else [])]:
        check_size(len(data), Path(name).name or "upload")  # before anything is written or read
    tables_feed = [m for m in method.predicts_from() if method.specs[m].kind == "omics"] if table is not None else []
    need = [m for m in method.required_modalities() if m not in images and m not in tables_feed]
    if need:
        raise MMXError(f"model {method.name!r} predicts from {need}: upload it (it has no other way to predict)")
    notes: list[str] = []
    digests: dict[str, str] = {}
    parts: dict[str, MultimodalDataset] = {}
    labels = None
    fill = {m: method.prep.raw_training_mean(m).cpu().numpy() for m, s in method.specs.items() if s.kind == "omics"}
    with tempfile.TemporaryDirectory(prefix="mmx-upload-") as tmp:
        for m, (name, data) in images.items():
            path = _stage(tmp, f"{m}", name, data, digests)
            ext = _read(path, name, method, labelled=False, modality=m)
            parts[m] = ext.dataset
            notes += [n.replace(str(path), name) for n in ext.notes if n.startswith(f"{m}:")]
        if table is not None:
            path = _stage(tmp, "table", *table, digests)
            ext = _read(path, table[0], method, fill=fill, labelled=False)
            omics = [m for m, s in method.specs.items() if s.kind == "omics" and bool(ext.dataset.present[m].any())]
            parts.update({m: ext.dataset for m in omics})
            notes += [n.replace(str(path), table[0]) for n in ext.notes if not n.startswith("unlabelled")
                      and not n.endswith("absent for every sample")]
            labels = ext.found_labels
            ids = np.asarray(ext.dataset.ids).astype(str)
    n = len(ids) if table is not None else 1
    if table is None:
        ids = np.array([" + ".join(name for name, _ in images.values())])
    modalities, present = {}, {}
    for m, s in method.specs.items():
        if m in parts:
            x = parts[m].modalities[m]
            modalities[m] = x.expand(n, *x.shape[1:]).clone() if len(x) == 1 else x
            present[m] = torch.ones(n, dtype=torch.bool)
        else:
            shape, dtype = ((s.n_features,), torch.float32) if s.kind == "omics" else (s.image_shape, torch.uint8)
            modalities[m] = torch.zeros((n, *shape), dtype=dtype)
            present[m] = torch.zeros(n, dtype=torch.bool)
            notes.append(f"{m}: not uploaded: absent, {method.absence_handling()}")
    need = [m for m in method.required_modalities() if m not in parts]
    if need:
        raise MMXError(f"model {method.name!r} predicts from {need}, which the upload does not hold")
    data = MultimodalDataset(name="upload", modalities=modalities, present=present,
                             y=torch.zeros(n, dtype=torch.int64), classes=method.classes, groups=ids.copy(),
                             ids=ids, specs=dict(method.specs))
    return _UploadCohort(data, np.arange(n), "upload", notes, labels, caveats(method, upload=True), digests)


@dataclass
class _UploadCohort(Cohort):
    digests: dict[str, str] = field(default_factory=dict)

    def sample(self, position: int) -> Sample:
        s = super().sample(position)
        return Sample(s.data, s.label, f"upload of {', '.join(self.digests)}", s.notes, dict(self.digests), s.caveats)


def _read(path: Path, name: str, method: Method, **options):
    """Read a staged upload; errors and notes name the file as the user called it."""
    try:
        return read_external(path, method.specs, method.classes, **options)
    except MMXError as e:
        raise MMXError(str(e).replace(str(path), Path(name).name)) from None


def _stage(tmp: str, slot: str, name: str, data: bytes, digests: dict[str, str]) -> Path:
    """Write an uploaded file under a safe version of its name (readers choose by suffix: it is
    kept; a name may be anything a browser sends, e.g. ``..``, 300 characters or a NUL) and
    record its hash under the name as given."""
    given = Path(name).name or "upload"
    stem, suffix = Path(given).stem, Path(given).suffix
    suffix = suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""
    stem = re.sub(r"[^\w.+-]", "_", stem).strip(".")[:100] or "upload"
    folder = Path(tmp) / slot
    folder.mkdir()
    path = folder / (stem + suffix)
    path.write_bytes(data)
    digests[given] = hashlib.sha256(data).hexdigest()
    return path


def caveats(method: Method, upload: bool) -> list[str]:
    """What a user must know before reading an explanation of this model's predictions."""
    card = getattr(method, "card", None) or {}
    out = []
    if card.get("task") in ("cells", "demo") and "image" in method.specs:
        out.append(UPLOAD_IMAGE_CAVEAT if upload else IMAGE_CAVEAT)
    if card.get("synthetic"):
        out.append("SYNTHETIC data: these numbers say nothing about real cells")
    return out
