"""Safe readers for every input format a user can hand us.

Each reader validates what it reads and raises :class:`~core.errors.MMXError` naming the
file and the problem. Images come back as uint8 ``H x W x 3`` arrays whatever the source
(8/16-bit, gray/RGB/RGBA/palette); tables as a :class:`Table` of float32 features.
"""
from __future__ import annotations

import csv
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from core.errors import MMXError
from core.limits import MAX_ASPECT, MAX_PIXELS, MIN_IMAGE_SIDE, check_size, check_values, max_values

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
ID_COLUMNS = ("cell_id", "sample_id", "id", "case_id", "obs_names", "Unnamed: 0", "")


# ---------------------------------------------------------------- images
# Content decides the decoder, never the suffix alone; PIL may only use these plugins (its others
# include EPS, which runs Ghostscript, and formats the models were never meant to read).
PIL_FORMATS = ("PNG", "JPEG")  # a multi-picture JPEG (MPO) opens through PIL's JPEG plugin
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
          (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"), (b"GIF8", "GIF"), (b"BM", "BMP"), (b"%!PS", "PostScript"),
          (b"\xc5\xd0\xd3\xc6", "EPS"), (b"%PDF", "PDF"), (b"RIFF", "WebP"), (b"\x00\x00\x00\x0cjP", "JPEG 2000"),
          (b"PK\x03\x04", "ZIP"), (b"\x89HDF", "HDF5"), (b"<svg", "SVG"), (b"<?xml", "XML"))


def _sniff(head: bytes) -> str | None:
    """The format the first bytes of a file announce (None: none we know)."""
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


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
    elif arr.dtype != np.bool_ and (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        x = arr.astype(np.float64)  # float64 and halved below: the range of float32 data cannot overflow
        if not np.isfinite(x).all():
            raise MMXError("image contains NaN or infinite values", source)
        lo, hi = float(x.min()) / 2, float(x.max()) / 2
        x = ((x / 2 - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(x)).astype(np.float32)
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
    """Decode one PNG/JPEG/TIFF into uint8 ``H x W x 3``; resize to ``size`` (H, W) if given.

    The bytes choose the decoder (a JPEG named ``.png`` is read as the JPEG it is); anything that
    is not PNG, JPEG or TIFF data is refused before a decoder sees it."""
    path = Path(path)
    if not path.is_file():
        raise MMXError("image file not found", path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise MMXError(f"unsupported image type {path.suffix!r} (use PNG, JPEG or TIFF)", path)
    n_bytes = path.stat().st_size
    if n_bytes == 0:
        raise MMXError("image file is empty", path)
    check_size(n_bytes, path)
    with open(path, "rb") as f:
        kind = _sniff(f.read(16))
    if kind == "TIFF":
        arr = _read_tiff(path)
    elif kind in PIL_FORMATS:
        arr = _read_pil(path, size)
    elif kind is None:
        raise MMXError("not a readable image: its bytes are not PNG, JPEG or TIFF data", path)
    else:
        raise MMXError(f"not a readable image: it holds {kind} data, not PNG, JPEG or TIFF (convert it to PNG)", path)
    rgb = _to_rgb8(arr, path)
    if size is not None and rgb.shape[:2] != tuple(size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=2.0))
    return rgb


def _check_pixels(w: int, h: int, path: Path) -> None:
    """Refuse an image by its header alone: empty, over :data:`MAX_PIXELS`, too small or too long."""
    if w == 0 or h == 0:
        raise MMXError("image has zero width or height", path)
    if w * h > MAX_PIXELS:
        raise MMXError(f"image is {w} x {h} = {w * h:,} pixels, over the limit of {MAX_PIXELS:,}", path)
    if min(w, h) < MIN_IMAGE_SIDE:
        raise MMXError(f"image is {w} x {h} pixels: too small to classify (at least {MIN_IMAGE_SIDE} px a side)", path)
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise MMXError(f"image is {w} x {h} pixels: longer than {MAX_ASPECT}:1, which the model's input would "
                       "squash beyond use (crop it to the object)", path)


def _read_pil(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    try:
        with Image.open(path, formats=PIL_FORMATS) as img:
            _check_pixels(*img.size, path)
            frames = getattr(img, "n_frames", 1)
            if frames > 1 and img.format != "MPO":  # MPO: a camera JPEG with a preview; its first frame is the photo
                raise MMXError(f"animated image with {frames} frames: give a single still image", path)
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
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels = f"{int(found[1]):,} pixels" if found else "too many pixels"
        raise MMXError(f"image is {pixels}, over the limit of {MAX_PIXELS:,} (a decompression bomb?)", path) from None
    except UnidentifiedImageError as e:
        raise MMXError(f"not a readable image ({e})", path) from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, EOFError...) for bad files
        raise MMXError(f"image is damaged or truncated ({type(e).__name__}: {e})", path) from None


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages.first
            try:
                tf.pages[1]
            except IndexError:
                pass
            else:
                raise MMXError("TIFF holds several pages (a stack or an animation): give one image per file", path)
            shape = page.shape
            if len(shape) == 2:
                h, w = shape
            elif len(shape) == 3 and shape[-1] in (1, 2, 3, 4):
                h, w = shape[:2]
            elif len(shape) == 3 and shape[0] in (1, 3, 4):
                h, w = shape[1:]
            else:
                raise MMXError(f"unsupported image layout {shape} (need H x W with 1, 3 or 4 channels)", path)
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
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise MMXError(f"table is empty ({X.shape[0]} rows x {X.shape[1] if X.ndim > 1 else 0} feature columns)",
                       source)
    if X.shape != (len(ids), len(features)):
        raise MMXError(f"values are {X.shape[0]} x {X.shape[1]} but there are {len(ids)} sample ids and "
                       f"{len(features)} feature names", source)
    bad = ~np.isfinite(X)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise MMXError(
            f"{int(bad.sum())} missing or infinite values, first at row {ids[r]!r}, column {features[c]!r}", source
        )
    empty = [i for i, v in enumerate(ids) if not str(v).strip()]
    if empty:
        raise MMXError(f"{len(empty)} empty sample ids (first in row {empty[0] + 1}): every sample needs an id", source)
    dup = pd.Index(ids)[pd.Index(ids).duplicated()]
    if len(dup):
        raise MMXError(f"duplicate sample ids: {list(dup[:5])}", source)
    if any(not str(f).strip() for f in features):
        raise MMXError("a feature column has an empty name", source)
    dupf = pd.Index(features)[pd.Index(features).duplicated()]
    if len(dupf):
        raise MMXError(f"duplicate feature names: {list(dupf[:5])}", source)


def _read_csv(path: Path, **options) -> pd.DataFrame:
    """``pd.read_csv`` whose every failure is an :class:`MMXError` naming the file."""
    try:
        return pd.read_csv(path, **options)
    except UnicodeDecodeError as e:
        raise MMXError(f"not a readable CSV: not UTF-8 text (byte {e.start}); save it as UTF-8", path) from None
    except (ValueError, OSError, csv.Error, OverflowError) as e:  # pandas' parser errors are ValueErrors
        ragged = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if ragged:
            raise MMXError(f"line {ragged[2]} has {ragged[3]} fields, more than the header's {ragged[1]}: check the "
                           "separator and quoting", path) from None
        raise MMXError(f"not a readable CSV ({type(e).__name__}: {str(e).strip()})", path) from None


def read_csv_header(path: str | Path) -> list[str]:
    """The column names of a CSV as written (pandas would rename duplicates), checked: comma-separated,
    no duplicate names. The size limit is checked first."""
    path = Path(path)
    if not path.is_file():
        raise MMXError("CSV file not found", path)
    check_size(path.stat().st_size, path)
    head = _read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    names = [str(c) for c in head.iloc[0]] if len(head) else []
    if len(names) == 1:
        sep = next((s for s in (";", "\t", "|") if s in names[0]), None)
        if sep is not None:
            raise MMXError(f"fields are separated by {sep!r}, not commas: save it as a comma-separated CSV", path)
    dup = sorted({c for c in names if c and names.count(c) > 1})
    if dup:
        raise MMXError(f"duplicate column names {dup[:5]}: each feature may appear once", path)
    return names


def read_csv_table(path: str | Path, label_column: str | None = None, id_column: str | None = None) -> Table:
    """Read a CSV with rows = samples and columns = features (+ optional id and label columns).

    The id column is ``id_column`` if given, else the first of :data:`ID_COLUMNS` present, else
    a non-numeric first column, else row numbers.
    """
    path = Path(path)
    read_csv_header(path)
    df = _read_csv(path)
    if df.empty:
        raise MMXError("CSV has no rows", path)
    if not isinstance(df.index, pd.RangeIndex):  # pandas turns the extra leading fields into an index
        raise MMXError("some rows have more fields than the header: check the separator and quoting", path)
    labels = None
    if label_column is not None:
        if label_column not in df.columns:
            raise MMXError(f"label column {label_column!r} not found; columns are {list(df.columns[:8])}...", path)
        if df[label_column].isna().any():
            raise MMXError(f"label column {label_column!r} has empty cells", path)
        labels = df.pop(label_column).astype(str).to_numpy()
    if id_column is None:
        id_column = next((c for c in ID_COLUMNS if c in df.columns), None)
        if id_column is None and len(df.columns) and not pd.api.types.is_numeric_dtype(df.iloc[:, 0]):
            id_column = df.columns[0]
    elif id_column not in df.columns:
        raise MMXError(f"id column {id_column!r} not found", path)
    if id_column is not None:
        raw = df.pop(id_column)
        empty = (raw.isna() | (raw.astype(str).str.strip() == "")).to_numpy()
        if empty.any():
            raise MMXError(f"{int(empty.sum())} empty sample ids in column {id_column!r} (first in row "
                           f"{int(np.argmax(empty)) + 1}): every row needs an id", path)
        ids = raw.astype(str).to_numpy()
    else:
        ids = np.arange(len(df)).astype(str)
    for c in df.columns:
        if not pd.api.types.is_numeric_dtype(df[c]):
            col = pd.to_numeric(df[c], errors="coerce")
            bad = (col.isna() & df[c].notna()).to_numpy()
            if bad.any():
                row = int(np.argmax(bad))
                raise MMXError(f"column {c!r} has text {df[c].iloc[row]!r} at row {ids[row]!r}; features must be "
                               "numbers", path)
            df[c] = col
    features = [str(c) for c in df.columns]
    X = df.to_numpy(dtype=np.float32)
    _validate_matrix(X, ids, features, path)
    return Table(ids=ids, features=tuple(features), X=X, source=str(path), labels=labels)


# ---------------------------------------------------------------- AnnData / MuData
# AnnData and MuData files are read with h5py and anndata's element readers (no pickle, no code):
# only obs, var and the one matrix asked for, only the cells asked for, after checking that
# nothing points outside the file and no compression filter needs a plugin.
_SAFE_FILTERS = {1, 2, 3, 4, 5, 6, 32000}  # deflate, shuffle, fletcher32, szip, nbit, scaleoffset, lzf
Cells = slice | np.ndarray | list | None


@contextmanager
def _open_h5(path: Path, kind: str):
    import h5py

    if not path.is_file():
        raise MMXError(f"{'h5ad' if kind == 'AnnData' else 'h5mu'} file not found", path)
    check_size(path.stat().st_size, path)
    try:
        f = h5py.File(path, "r")
    except Exception as e:  # not HDF5, truncated, locked...
        raise MMXError(f"not a readable {kind} file ({type(e).__name__}: {e})", path) from None
    try:
        yield f
    except MMXError:
        raise
    except Exception as e:  # a damaged or hostile structure: anndata / h5py raise many types
        raise MMXError(f"not a readable {kind} file ({type(e).__name__}: {e})", path) from None
    finally:
        f.close()


def _child(group, name: str, path: Path, max_size: int | None, check: bool = True):
    """``group[name]`` after checking it is a plain member of this file and (``check``) everything
    under it (see :func:`_check_h5`)."""
    import h5py

    link = group.get(name, getlink=True)
    if link is None:
        raise MMXError(f"has no {group.name.rstrip('/')}/{name}", path)
    if not isinstance(link, h5py.HardLink):
        raise MMXError(f"{group.name.rstrip('/')}/{name} is a {type(link).__name__} (it points elsewhere): refused",
                       path)
    obj = group[name]
    if check:
        _check_h5(obj, path, max_size)
    return obj


def _has(group, name: str) -> bool:
    """Whether ``group`` has a member ``name`` (without following a link to find out)."""
    return group.get(name, getlink=True) is not None


def _check_h5(obj, path: Path, max_size: int | None) -> None:
    """Refuse what reaches outside the file or runs code: links (to other files or elsewhere),
    external or virtual datasets, compression filters HDF5 would load a plugin for; and datasets
    over ``max_size`` values (a compressed bomb in obs or var)."""
    import h5py

    if isinstance(obj, h5py.Group):
        for name in obj:
            _child(obj, name, path, max_size)
        return
    if obj.external or obj.is_virtual:
        raise MMXError(f"{obj.name} stores its values in other files: refused", path)
    plist = obj.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in _SAFE_FILTERS:
            raise MMXError(f"{obj.name} is compressed with HDF5 filter {code}, which needs a plugin: refused", path)
    if max_size is not None and obj.size > max_size:
        raise MMXError(f"{obj.name} holds {obj.size:,} values, over the limit of {max_size:,}", path)


def _frame(group, key: str, path: Path, where: str) -> pd.DataFrame:
    from anndata.io import read_elem

    if not _has(group, key):
        raise MMXError(f"{where}has no {key} table (the {'cell' if key == 'obs' else 'feature'} names)", path)
    frame = read_elem(_child(group, key, path, max_values()))
    if not isinstance(frame, pd.DataFrame):
        raise MMXError(f"{where}{key} is not a table", path)
    return frame


def _rows(cells: Cells, n: int, path: Path) -> np.ndarray | None:
    """Row indices of ``cells`` (None: every row)."""
    if cells is None:
        return None
    try:
        rows = np.arange(n)[cells]
    except (IndexError, TypeError, ValueError) as e:
        raise MMXError(f"cannot select cells {cells!r} of {n} ({e})", path) from None
    return np.atleast_1d(rows)


def _matrix(elem, shape: tuple[int, int], rows: np.ndarray | None, path: Path, what: str) -> np.ndarray:
    """A dense or sparse (CSR / CSC) matrix element as dense float32, only ``rows`` of it, its shape
    and size checked before anything is read and a sparse one's structure before it is used."""
    import h5py
    import scipy.sparse as sp

    n = shape[0] if rows is None else len(rows)
    enc = str(elem.attrs.get("encoding-type", ""))
    if isinstance(elem, h5py.Dataset):
        if elem.ndim != 2 or tuple(elem.shape) != shape:
            raise MMXError(f"{what} is {' x '.join(map(str, elem.shape))} but obs x var is {shape[0]} x {shape[1]}",
                           path)
        if elem.dtype.kind not in "biuf":
            raise MMXError(f"{what} holds {elem.dtype} values, not numbers", path)
        check_values(n, shape[1], path, what)
        if rows is None:
            return np.asarray(elem[()], dtype=np.float32)
        uniq, back = np.unique(rows, return_inverse=True)
        return np.asarray(elem[uniq], dtype=np.float32)[back]
    if not (isinstance(elem, h5py.Group) and enc in ("csr_matrix", "csc_matrix")):
        raise MMXError(f"{what} is a {enc or type(elem).__name__} element, not a dense or sparse matrix", path)
    stored = tuple(int(v) for v in elem.attrs.get("shape", ()))
    if stored != shape:
        raise MMXError(f"{what} is {' x '.join(map(str, stored))} but obs x var is {shape[0]} x {shape[1]}", path)
    for part in ("data", "indices", "indptr"):
        if part not in elem or not isinstance(elem[part], h5py.Dataset) or elem[part].ndim != 1:
            raise MMXError(f"{what} is a damaged sparse matrix (no 1-D {part!r})", path)
    data, indices, indptr = elem["data"], elem["indices"], elem["indptr"]
    if data.dtype.kind not in "biuf" or indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        raise MMXError(f"{what} is a damaged sparse matrix (types {data.dtype}, {indices.dtype}, {indptr.dtype})",
                       path)
    check_values(n, shape[1], path, what)
    if data.shape[0] > shape[0] * shape[1] or data.shape != indices.shape:
        raise MMXError(f"{what} is a damaged sparse matrix ({data.shape[0]:,} stored values)", path)
    csr = enc == "csr_matrix"
    ptr = np.asarray(indptr[()], dtype=np.int64)
    if len(ptr) != shape[0 if csr else 1] + 1 or ptr[0] != 0 or ptr[-1] != data.shape[0] or (np.diff(ptr) < 0).any():
        raise MMXError(f"{what} is a damaged sparse matrix (bad indptr)", path)
    if csr and rows is not None and len(rows):  # read only the span of rows asked for
        lo, hi = int(rows.min()), int(rows.max()) + 1
        start, stop = int(ptr[lo]), int(ptr[hi])
        M = sp.csr_matrix((data[start:stop], indices[start:stop], ptr[lo:hi + 1] - start), shape=(hi - lo, shape[1]))
        rows = rows - lo
    else:
        M = (sp.csr_matrix if csr else sp.csc_matrix)((data[()], indices[()], ptr), shape=shape)
    try:
        M.check_format(full_check=True)  # indices in range before any use (else scipy reads out of bounds)
    except ValueError as e:
        raise MMXError(f"{what} is a damaged sparse matrix ({e})", path) from None
    if rows is not None:
        M = M.tocsr()[rows]
    return np.asarray(M.toarray(), dtype=np.float32)


def _read_group(group, path: Path, layer: str | None, label_column: str | None, cells: Cells,
                where: str = "") -> Table:
    """One AnnData group (a file's root or a MuData modality) as a :class:`Table`."""
    obs, var = _frame(group, "obs", path, where), _frame(group, "var", path, where)
    import h5py

    holder = _child(group, "layers", path, None, check=False) if _has(group, "layers") else None
    layers = [str(k) for k in holder] if isinstance(holder, h5py.Group) else []
    if layer is None:
        if not _has(group, "X"):
            hint = " (a MuData file? name it .h5mu)" if _has(group, "mod") else ""
            raise MMXError(f"{where}has no X matrix (the values to score){hint}; layers are {layers}", path)
        elem, what = _child(group, "X", path, None), f"{where}X"
    else:
        if layer not in layers:
            raise MMXError(f"{where}has no layer {layer!r}; layers are {layers}", path)
        elem, what = _child(holder, layer, path, None), f"{where}layers[{layer!r}]"
    rows = _rows(cells, len(obs), path)
    X = _matrix(elem, (len(obs), len(var)), rows, path, what)
    if rows is not None:
        obs = obs.iloc[rows]
    ids = np.asarray(obs.index).astype(str)
    features = [str(v) for v in var.index]
    _validate_matrix(X, ids, features, path)
    labels = None
    if label_column is not None:
        if label_column not in obs.columns:
            raise MMXError(f"{where}obs has no column {label_column!r}; columns are {list(obs.columns)}", path)
        labels = _labels(obs[label_column], label_column, path)
    return Table(ids=ids, features=tuple(features), X=X, source=str(path), labels=labels, obs=obs.copy(),
                 meta={"layers": tuple(layers)})


def _labels(column: pd.Series, name: str, path: Path) -> np.ndarray:
    empty = int(column.isna().sum())
    if empty:
        raise MMXError(f"label column {name!r} has {empty} empty cells", path)
    return column.astype(str).to_numpy()


def read_h5ad(path: str | Path, layer: str | None = None, label_column: str | None = None,
              cells: Cells = None) -> Table:
    """Read an AnnData file; ``layer`` picks ``layers[layer]`` instead of ``X``; ``cells`` (a slice
    or indices) reads only those rows of the matrix."""
    path = Path(path)
    with _open_h5(path, "AnnData") as f:
        return _read_group(f, path, layer, label_column, cells)


def h5mu_modalities(path: str | Path) -> list[str]:
    """The modality names of a MuData file (in its own order), nothing else read."""
    path = Path(path)
    with _open_h5(path, "MuData") as f:
        return _modality_names(f, path)


def _modality_names(f, path: Path) -> list[str]:
    import h5py

    link = f.get("mod", getlink=True)
    if not isinstance(link, h5py.HardLink) or not isinstance(f["mod"], h5py.Group):
        hint = " (an AnnData file? name it .h5ad)" if _has(f, "X") else ""
        raise MMXError(f"has no modalities (no 'mod' group){hint}", path)
    order = [str(m) for m in np.atleast_1d(f["mod"].attrs.get("mod-order", []))]
    return [m for m in order if m in f["mod"]] + [m for m in f["mod"] if m not in order]


def read_h5mu(path: str | Path, modalities: tuple[str, ...] | None = ("rna", "prot"), layer: str | None = None,
              label_column: str | None = None, cells: Cells = None) -> dict[str, Table]:
    """Read a MuData file; returns one :class:`Table` per requested modality (``None``: every one),
    ids aligned; only the requested modalities are read. Each table's ``obs`` also holds the MuData
    obs columns, and the other modalities' as ``modality:column`` (labels often live there)."""
    path = Path(path)
    with _open_h5(path, "MuData") as f:
        names = _modality_names(f, path)
        modalities = tuple(names) if modalities is None else tuple(modalities)
        if not modalities:
            raise MMXError("has no modalities", path)
        missing = [m for m in modalities if m not in names]
        if missing:
            raise MMXError(f"has no modality {missing}; modalities are {names}", path)
        tables = {m: _read_group(_child(f["mod"], m, path, None, check=False), path, layer, None, cells,
                                 f"modality {m!r}: ") for m in modalities}
        shared = _frame(f, "obs", path, "") if _has(f, "obs") else pd.DataFrame()
    shared = shared[~shared.index.duplicated()]
    for m, t in tables.items():
        shared = shared.join(t.obs.add_prefix(f"{m}:"), how="outer") if len(t.obs.columns) else shared
    for m, t in tables.items():
        t.obs = t.obs.join(shared[[c for c in shared.columns if c not in t.obs.columns]])
        if label_column is not None:
            if label_column not in t.obs.columns:
                raise MMXError(f"no obs column {label_column!r} in modality {m!r} or the MuData obs", path)
            t.labels = _labels(t.obs[label_column], label_column, path)
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

    for dtype in (np.float32, np.float64):  # float64 only when huge counts overflow float32's sums into NaN
        a = ad.AnnData(table.X.astype(dtype))
        sc.pp.normalize_total(a, target_sum=target_sum)
        sc.pp.log1p(a)
        X = np.asarray(a.X, dtype=np.float32)
        if np.isfinite(X).all():
            break
    else:
        raise MMXError("raw counts too large to normalise (they overflow): are these counts?", table.source)
    table.X = X
    table.normalization = f"raw counts: scanpy normalize_total(target_sum={target_sum}) + log1p"
    return table
