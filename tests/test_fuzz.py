"""Property-based fuzzing of the readers (CSV, image, AnnData), the feature matcher and the masking
function: whatever the input, only :class:`MMXError` escapes, nothing hangs (a deadline per
example), and what comes back holds no NaN. Deterministic: derandomized, no example database."""
from __future__ import annotations

import io
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import tifffile
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from core.data.align import match_features
from core.data.dataset import ModalitySpec
from core.data.external import read_external
from core.data.readers import Table, read_csv_table, read_h5ad, read_image
from core.errors import MMXError
from core.models.masking import MaskSpec, apply_mask, parse_mask

EXAMPLES = 300  # per property; the whole file runs in about a minute on 2 cores
FUZZ = settings(max_examples=EXAMPLES, deadline=10_000, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
pytestmark = pytest.mark.filterwarnings("ignore")


def _finite(x) -> bool:
    return bool(np.isfinite(np.asarray(x, dtype=np.float64)).all())


def _table_ok(t: Table) -> None:
    assert t.X.dtype == np.float32 and t.X.shape == (len(t.ids), len(t.features)) and t.X.size and _finite(t.X)
    assert len(set(t.ids)) == len(t.ids) and all(str(i).strip() for i in t.ids)
    assert len(set(t.features)) == len(t.features)


# ------------------------------------------------------------------ CSV
NAMES = st.sampled_from(["cell_id", "id", "label", "lineage", "g0", "g1", "G1", "g2", "CD3", "rna:g0", "prot:CD3",
                         "", " ", "Unnamed: 0", "é", "a;b", "a\tb", '"q"', "1", "nan"])
CELLS = st.one_of(st.integers(-10 ** 30, 10 ** 30).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.sampled_from(["", " ", "nan", "NA", "inf", "-inf", "1e39", "1e-400", "0x10", "1,5", "True",
                                   "high", '"', '""', "\x00", "c1", "c1", "T", "B", "é"]),
                  st.text(max_size=6))


@st.composite
def csv_bytes(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=400))
    sep = draw(st.sampled_from([",", ",", ",", ";", "\t"]))
    header = draw(st.lists(NAMES, min_size=1, max_size=6))
    rows = draw(st.lists(st.lists(CELLS, min_size=max(0, len(header) - 1), max_size=len(header) + 1), max_size=6))
    text = "\n".join(sep.join(r) for r in [header, *rows]) + draw(st.sampled_from(["", "\n", "\r\n"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    return text.encode(encoding, errors="replace")


SPECS = {"rna": ModalitySpec("rna", "omics", ("g0", "g1", "g2"), preprocessing="log1p"),
         "protein": ModalitySpec("protein", "omics", ("CD3", "CD4"), preprocessing="none")}


@FUZZ
@given(csv_bytes())
def test_csv_reader_and_external(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.csv"
        path.write_bytes(data)
        try:
            _table_ok(read_csv_table(path))
        except MMXError as e:
            assert str(path) in str(e)
        try:
            out = read_external(path, SPECS, ("T", "B"), labelled=False)
        except MMXError as e:
            assert str(path) in str(e)
        else:
            for m, x in out.dataset.modalities.items():
                assert x.shape == (len(out.dataset), SPECS[m].n_features) and _finite(x), m


# ------------------------------------------------------------------ images
IMAGE_ARRAYS = st.one_of(
    hnp.arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 2, 3, 4]))),
    hnp.arrays(np.uint16, st.tuples(st.integers(1, 40), st.integers(1, 40))),
    hnp.arrays(np.float32, st.tuples(st.integers(1, 30), st.integers(1, 30)),
               elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
    hnp.arrays(np.int32, st.tuples(st.integers(1, 30), st.integers(1, 30), st.sampled_from([1, 3, 5]))),
)


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    if fmt == "TIFF":
        out = io.BytesIO()
        tifffile.imwrite(out, arr)
        return out.getvalue()
    if arr.dtype != np.uint8 or fmt == "JPEG":
        arr = (arr.astype(np.float64) % 256).astype(np.uint8) if np.isfinite(arr).all() else np.zeros((8, 8), np.uint8)
    img = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] in (1, 2) else arr)
    out = io.BytesIO()
    img.convert("RGB" if fmt in ("JPEG", "BMP") else img.mode).save(out, fmt)
    return out.getvalue()


def _png_claiming(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@st.composite
def image_bytes(draw) -> tuple[str, bytes]:
    kind = draw(st.integers(0, 5))
    if kind == 0:  # a known header and then anything
        head = draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00", b"MM\x00*", b"GIF89a",
                                     b"BM", b"%!PS", b""]))
        data = head + draw(st.binary(max_size=300))
    elif kind == 1:  # a PNG header claiming any size
        data = _png_claiming(draw(st.integers(0, 2 ** 31 - 1)), draw(st.integers(0, 2 ** 31 - 1)))
    else:  # a real encoding, then maybe cut or damaged
        arr = draw(IMAGE_ARRAYS)
        try:
            data = _encode(arr, draw(st.sampled_from(["PNG", "JPEG", "TIFF", "BMP"])))
        except (OSError, ValueError, TypeError, KeyError):
            assume(False)
        cut = draw(st.sampled_from(["whole", "cut", "flip"]))
        if cut == "cut":
            data = data[:draw(st.integers(0, len(data)))]
        elif cut == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    return draw(st.sampled_from(["x.png", "x.jpg", "x.tif", "x.tiff", "x.jpeg"])), data


@FUZZ
@given(image_bytes(), st.sampled_from([None, (16, 16), (5, 9)]))
def test_image_reader(named, size):
    name, data = named
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            out = read_image(path, size)
        except MMXError as e:
            assert str(path) in str(e)
            return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[-1] == 3
    assert size is None or out.shape[:2] == size


# ------------------------------------------------------------------ AnnData
@st.composite
def anndata_file(draw, path: Path) -> None:
    n, f = draw(st.integers(0, 5)), draw(st.integers(0, 5))
    values = draw(hnp.arrays(np.float64, (n, f), elements=st.one_of(
        st.integers(-5, 5).map(float), st.sampled_from([0.5, 3e38, 1e300, np.nan, np.inf]))))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32]))
    values = np.nan_to_num(values, posinf=7, neginf=-7).clip(-9, 9).astype(dtype) if dtype == np.int32 \
        else values.astype(dtype)
    x = draw(st.sampled_from(["dense", "csr", "csc", "none"]))
    obs = draw(st.lists(st.sampled_from(["c1", "c2", "c3", "", "nan", " "]), min_size=n, max_size=n))
    var = draw(st.lists(st.sampled_from(["g0", "g1", "g2", "G0", "", "x"]), min_size=f, max_size=f))
    X = None if x == "none" else sp.csr_matrix(values) if x == "csr" else sp.csc_matrix(values) if x == "csc" \
        else values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ad.AnnData(X, obs=pd.DataFrame(index=pd.Index(obs, dtype=str)),
                       var=pd.DataFrame(index=pd.Index(var, dtype=str)))
        if n and draw(st.booleans()):
            a.obs["label"] = pd.Categorical(draw(st.lists(st.sampled_from(["T", "B", None]), min_size=n, max_size=n)))
        if draw(st.booleans()) and X is not None:
            a.layers["counts"] = X
        a.write_h5ad(path)
    damage = draw(st.sampled_from(["none", "none", "drop_obs", "drop_var", "cut", "flip", "indices"]))
    if damage in ("drop_obs", "drop_var"):
        with h5py.File(path, "r+") as h:
            del h[damage[5:]]
    elif damage == "indices" and x in ("csr", "csc"):
        with h5py.File(path, "r+") as h:
            if len(h["X/indices"]):
                h["X/indices"][0] = draw(st.integers(-(2 ** 31), 2 ** 31 - 1))
    elif damage in ("cut", "flip"):
        data = path.read_bytes()
        i = draw(st.integers(0, len(data) - 1))
        path.write_bytes(data[:i] if damage == "cut" else data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:])


@FUZZ
@given(st.data())
def test_anndata_reader(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.h5ad"
        data.draw(anndata_file(path))
        layer = data.draw(st.sampled_from([None, "counts"]))
        cells = data.draw(st.sampled_from([None, slice(0, 2), [1], [0, 0]]))
        try:
            t = read_h5ad(path, layer=layer, label_column=data.draw(st.sampled_from([None, "label"])), cells=cells)
        except MMXError as e:
            assert str(path) in str(e)
        else:
            _table_ok(t)
            assert t.labels is None or all(v in ("T", "B") for v in t.labels)


# ------------------------------------------------------------------ the feature matcher
FEATURES = st.sampled_from(["g0", "g1", "g2", "G1", "g3", "CD3", "cd3", "x", ""])


@FUZZ
@given(st.lists(FEATURES, max_size=6), st.lists(FEATURES, min_size=1, max_size=5, unique=True), st.integers(0, 4),
       st.data())
def test_feature_matcher(have, want, n, data):
    X = data.draw(hnp.arrays(np.float64, (n, len(have)),
                             elements=st.floats(allow_nan=True, allow_infinity=True, width=64)))
    fill = data.draw(st.one_of(st.none(), hnp.arrays(np.float32, st.sampled_from([(len(want),), (len(want) + 1,)]),
                                                     elements=st.floats(width=32, allow_nan=True))))
    table = Table(ids=np.array([f"c{i}" for i in range(n)]), features=tuple(have), X=X, source="fuzz.csv")
    spec = ModalitySpec("rna", "omics", tuple(want))
    try:
        out, match = match_features(table, spec, fill, min_fraction=data.draw(st.sampled_from([0.0, 0.5, 1.0])))
    except MMXError as e:
        assert "fuzz.csv" in str(e) or "modality" in str(e)
        return
    assert out.shape == (n, len(want)) and out.dtype == np.float32 and _finite(out)
    assert match.matched + len(match.missing) == len(want)


# ------------------------------------------------------------------ masking
MASK_TEXT = st.one_of(st.sampled_from(["gray", "zeros", "blur", "mean", "topk:3", "topk:0", "topk:x", "patches:0,1",
                                       "patches:", "patches:-1", "patches:99999999999999999999", "patches:1e3",
                                       "gray:1", "nope", ""]),
                      st.builds(lambda m, a: f"{m}:{a}", st.sampled_from(["topk", "patches", "gray"]),
                                st.text(max_size=8)))
MASK_SPECS = st.builds(MaskSpec, mode=st.sampled_from(["gray", "zeros", "blur", "mean", "patches", "topk", "other"]),
                       patches=st.lists(st.integers(-3, 10 ** 20), max_size=4).map(tuple),
                       fill=st.sampled_from(["gray", "zeros", "blur", "mean", "patches"]), keep=st.booleans(),
                       k=st.integers(-2, 50), patch_size=st.one_of(st.none(), st.integers(-1, 9)),
                       blur_sigma=st.floats(allow_nan=True, allow_infinity=True))
MASK_SPECS_MODEL = {"image": ModalitySpec("image", "image", image_shape=(3, 8, 8)),
                    "rna": ModalitySpec("rna", "omics", ("g0", "g1", "g2"))}


@FUZZ
@given(st.dictionaries(st.sampled_from(["image", "rna", "atac"]), st.one_of(MASK_TEXT, MASK_SPECS), max_size=2),
       st.sampled_from([None, 4]), st.integers(1, 3), st.integers(1, 12), st.integers(1, 12), st.booleans(), st.data())
def test_masking(mask, patch_size, n, h, w, with_mean, data):
    x = {"image": torch.from_numpy(data.draw(hnp.arrays(np.float32, (n, 3, h, w), elements=st.floats(0, 1, width=32)))),
         "rna": torch.from_numpy(data.draw(hnp.arrays(np.float32, (n, 3), elements=st.floats(-5, 5, width=32))))}
    maps = {"image": torch.rand(n, 1, h, w)} if data.draw(st.booleans()) else None

    def mean(m: str) -> torch.Tensor:
        return x[m].mean(0)

    try:
        out = apply_mask(x, parse_mask(mask, MASK_SPECS_MODEL, patch_size), mean if with_mean else None, maps)
    except MMXError:
        return
    for m, v in out.items():
        assert v.shape == x[m].shape and torch.isfinite(v).all(), m
