"""Safe readers for every input format a user can hand us.

Each reader validates what it reads and raises :class:`~core.errors.MMXError` naming the
file and the problem. Images come back as uint8 ``H x W x 3`` arrays whatever the source
(8/16-bit, gray/RGB/RGBA/palette); tables as a :class:`Table` of float32 features.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from core.errors import MMXError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
MAX_PIXELS = 40_000_000  # refuse larger images (decompression bombs, wrong files)
ID_COLUMNS = ("cell_id", "sample_id", "id", "case_id", "obs_names", "Unnamed: 0", "")


# ---------------------------------------------------------------- images
def _to_rgb8(arr: np.ndarray, source: Path) -> np.ndarray:
    """Any numeric H x W (x C) array -> uint8 H x W x 3 (alpha composited on white)."""
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channel-first TIFF
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise MMXError(f"unsupported image layout {arr.shape} (need H x W with 1, 3 or 4 channels)", source)
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32)
    elif arr.dtype == np.uint16:
        x = arr.astype(np.float32) / 257.0
    elif np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float32)
        if not np.isfinite(x).all():
            raise MMXError("image contains NaN or infinite values", source)
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(x)
    else:
        raise MMXError(f"unsupported pixel type {arr.dtype}", source)
    c = x.shape[-1]
    if c in (2, 4):  # gray+alpha or RGBA: composite on a white background
        alpha = x[..., -1:] / 255.0
        x = x[..., :-1] * alpha + 255.0 * (1.0 - alpha)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one PNG/JPEG/TIFF into uint8 ``H x W x 3``; resize to ``size`` (H, W) if given."""
    path = Path(path)
    if not path.is_file():
        raise MMXError("image file not found", path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise MMXError(f"unsupported image type {path.suffix!r} (use PNG, JPEG or TIFF)", path)
    if path.stat().st_size == 0:
        raise MMXError("image file is empty", path)
    if path.suffix.lower() in (".tif", ".tiff"):
        arr = _read_tiff(path)
    else:
        arr = _read_pil(path, size)
    rgb = _to_rgb8(arr, path)
    if size is not None and rgb.shape[:2] != tuple(size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=2.0))
    return rgb


def _check_pixels(w: int, h: int, path: Path) -> None:
    if w * h > MAX_PIXELS:
        raise MMXError(f"image is {w} x {h} = {w * h:,} pixels, over the limit of {MAX_PIXELS:,}", path)
    if w == 0 or h == 0:
        raise MMXError("image has zero width or height", path)


def _read_pil(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_pixels(*img.size, path)
                if size is not None and img.format == "JPEG":
                    img.draft("RGB", (size[1] * 2, size[0] * 2))  # decode at reduced scale: faster
                img.load()
                if img.mode in ("I;16", "I;16B", "I;16L"):
                    return np.asarray(img, dtype=np.uint16)
                if img.mode in ("I", "F"):
                    return np.asarray(img)
                if img.mode not in ("L", "LA", "RGB", "RGBA"):
                    img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
                return np.asarray(img)
    except MMXError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MMXError(f"not a readable image ({type(e).__name__}: {e})", path) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise MMXError(f"image is damaged or truncated ({e})", path) from None


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            shape = page.shape
            h, w = (shape[-3], shape[-2]) if len(shape) == 3 and shape[-1] in (1, 2, 3, 4) else shape[-2:]
            _check_pixels(int(w), int(h), path)
            return page.asarray()
    except MMXError:
        raise
    except Exception as e:  # tifffile raises many types for bad files
        raise MMXError(f"not a readable TIFF ({type(e).__name__}: {e})", path) from None


def list_image_folder(root: str | Path) -> tuple[list[Path], list[str], tuple[str, ...]]:
    """Files and labels of a ``root/<class>/<file>`` folder, classes in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise MMXError("image folder not found", root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise MMXError("no class sub-folders (expected root/<class>/<image>)", root)
    files, labels = [], []
    for c in classes:
        found = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise MMXError(f"class folder {c!r} holds no PNG/JPEG/TIFF image", root / c)
        files += found
        labels += [c] * len(found)
    return files, labels, tuple(classes)


# ---------------------------------------------------------------- tables
@dataclass
class Table:
    """Samples x features of one modality, as read from one file."""

    ids: np.ndarray
    features: tuple[str, ...]
    X: np.ndarray  # float32 N x F
    source: str
    labels: np.ndarray | None = None
    obs: pd.DataFrame | None = None
    normalization: str = ""
    meta: dict = field(default_factory=dict)


def _validate_matrix(X: np.ndarray, ids: np.ndarray, features: list[str], source: Path) -> None:
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise MMXError(f"table is empty ({X.shape[0]} rows x {X.shape[1]} feature columns)", source)
    bad = ~np.isfinite(X)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise MMXError(
            f"{int(bad.sum())} missing or infinite values, first at row {ids[r]!r}, column {features[c]!r}", source
        )
    dup = pd.Index(ids)[pd.Index(ids).duplicated()]
    if len(dup):
        raise MMXError(f"duplicate sample ids: {list(dup[:5])}", source)
    dupf = pd.Index(features)[pd.Index(features).duplicated()]
    if len(dupf):
        raise MMXError(f"duplicate feature names: {list(dupf[:5])}", source)


def read_csv_table(path: str | Path, label_column: str | None = None, id_column: str | None = None) -> Table:
    """Read a CSV with rows = samples and columns = features (+ optional id and label columns).

    The id column is ``id_column`` if given, else the first of :data:`ID_COLUMNS` present, else
    a non-numeric first column, else row numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise MMXError("CSV file not found", path)
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise MMXError(f"not a readable CSV ({e})", path) from None
    if df.empty:
        raise MMXError("CSV has no rows", path)
    labels = None
    if label_column is not None:
        if label_column not in df.columns:
            raise MMXError(f"label column {label_column!r} not found; columns are {list(df.columns[:8])}...", path)
        if df[label_column].isna().any():
            raise MMXError(f"label column {label_column!r} has empty cells", path)
        labels = df.pop(label_column).astype(str).to_numpy()
    if id_column is None:
        id_column = next((c for c in ID_COLUMNS if c in df.columns), None)
        if id_column is None and not pd.api.types.is_numeric_dtype(df.iloc[:, 0]):
            id_column = df.columns[0]
    elif id_column not in df.columns:
        raise MMXError(f"id column {id_column!r} not found", path)
    ids = df.pop(id_column).astype(str).to_numpy() if id_column is not None else np.arange(len(df)).astype(str)
    for c in df.columns:
        if not pd.api.types.is_numeric_dtype(df[c]):
            col = pd.to_numeric(df[c], errors="coerce")
            bad = col.isna() & df[c].notna()
            if bad.any():
                row = int(np.argmax(bad.to_numpy()))
                raise MMXError(f"column {c!r} has text {df[c].iloc[row]!r} at row {ids[row]!r}; features must be numbers", path)
            df[c] = col
    features = [str(c) for c in df.columns]
    X = df.to_numpy(dtype=np.float32)
    _validate_matrix(X, ids, features, path)
    return Table(ids=ids, features=tuple(features), X=X, source=str(path), labels=labels)


def read_h5ad(path: str | Path, layer: str | None = None, label_column: str | None = None) -> Table:
    """Read an AnnData file; ``layer`` picks ``layers[layer]`` instead of ``X``."""
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise MMXError("h5ad file not found", path)
    try:
        a = ad.read_h5ad(path)
    except Exception as e:  # h5py/anndata raise many types for broken files
        raise MMXError(f"not a readable AnnData file ({type(e).__name__}: {e})", path) from None
    return _table_from_anndata(a, path, layer, label_column)


def _table_from_anndata(a, path: Path, layer: str | None, label_column: str | None) -> Table:
    if layer is not None and layer not in a.layers:
        raise MMXError(f"has no layer {layer!r}; layers are {list(a.layers.keys())}", path)
    M = a.layers[layer] if layer is not None else a.X
    X = np.asarray(M.toarray() if hasattr(M, "toarray") else M, dtype=np.float32)
    labels = None
    if label_column is not None:
        if label_column not in a.obs.columns:
            raise MMXError(f"obs has no column {label_column!r}; columns are {list(a.obs.columns)}", path)
        labels = a.obs[label_column].astype(str).to_numpy()
    ids = np.asarray(a.obs_names).astype(str)
    features = [str(v) for v in a.var_names]
    _validate_matrix(X, ids, features, path)
    return Table(ids=ids, features=tuple(features), X=X, source=str(path), labels=labels, obs=a.obs.copy(),
                 meta={"layers": tuple(a.layers.keys())})


def read_h5mu(path: str | Path, modalities: tuple[str, ...] | None = ("rna", "prot"), layer: str | None = None,
              label_column: str | None = None) -> dict[str, Table]:
    """Read a MuData file; returns one :class:`Table` per requested modality (``None``: every one),
    ids aligned. Each table's ``obs`` also holds the MuData-level obs columns (labels often live there)."""
    import mudata as md

    path = Path(path)
    if not path.is_file():
        raise MMXError("h5mu file not found", path)
    try:
        mdata = md.read_h5mu(path)
    except Exception as e:
        raise MMXError(f"not a readable MuData file ({type(e).__name__}: {e})", path) from None
    modalities = tuple(mdata.mod) if modalities is None else modalities
    if not modalities:
        raise MMXError("has no modalities", path)
    missing = [m for m in modalities if m not in mdata.mod]
    if missing:
        raise MMXError(f"has no modality {missing}; modalities are {list(mdata.mod)}", path)
    tables = {}
    for m in modalities:
        t = _table_from_anndata(mdata.mod[m], path, layer, None)
        t.obs = t.obs.join(mdata.obs[[c for c in mdata.obs.columns if c not in t.obs.columns]])
        if label_column is not None:
            if label_column not in t.obs.columns:
                raise MMXError(f"no obs column {label_column!r} in modality {m!r} or the MuData obs", path)
            t.labels = t.obs[label_column].astype(str).to_numpy()
        tables[m] = t
    align_tables(tables)
    return tables


def align_tables(tables: dict[str, Table]) -> np.ndarray:
    """Check that every modality lists the same samples in the same order; return the ids."""
    names = list(tables)
    ref = tables[names[0]]
    for m in names[1:]:
        t = tables[m]
        if len(t.ids) != len(ref.ids) or not np.array_equal(t.ids, ref.ids):
            only_a = sorted(set(ref.ids) - set(t.ids))[:3]
            only_b = sorted(set(t.ids) - set(ref.ids))[:3]
            detail = (f"ids only in {names[0]}: {only_a}; only in {m}: {only_b}" if (only_a or only_b)
                      else "same ids in a different order")
            raise MMXError(f"sample ids of modality {m!r} do not match {names[0]!r} ({detail})", t.source)
    return ref.ids


# ---------------------------------------------------------------- normalisation
def looks_like_counts(X: np.ndarray) -> bool:
    """Raw counts: non-negative integers with a large range (log-normalised data is not)."""
    return bool((X >= 0).all() and np.allclose(X, np.rint(X)) and X.max() > 20)


def normalize_expression(table: Table, target_sum: float | None = None) -> Table:
    """Apply scanpy ``normalize_total`` + ``log1p`` to raw counts; leave normalised data alone.

    Records what it saw and did in ``table.normalization`` so callers can report it.
    """
    if not looks_like_counts(table.X):
        table.normalization = "already normalised (non-integer values): used as is"
        return table
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(table.X.astype(np.float32))
    sc.pp.normalize_total(a, target_sum=target_sum)
    sc.pp.log1p(a)
    table.X = np.asarray(a.X, dtype=np.float32)
    table.normalization = f"raw counts: scanpy normalize_total(target_sum={target_sum}) + log1p"
    return table
