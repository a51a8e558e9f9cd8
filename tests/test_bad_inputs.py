"""Hostile and malformed inputs: each one ends in the project's error (:class:`MMXError`) naming the
file and the problem, through the library (``read_external`` on the file, ``read_upload`` on its
bytes), the CLI (``train.py --evaluate`` / ``--predict``) and the dashboard (an AppTest upload,
after which a valid upload is answered normally). Every input is made here, in ``tmp_path``, from
real files of the shared data (nothing is copied into the repository). Inputs the readers
legitimately accept (16-bit, palette, CMYK...) are checked for a correct conversion instead.

``INPUTS`` and ``CHECKPOINTS`` list every malformed input by id (``len`` of each is the count).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import tifffile
import tomllib
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import limits
from core.data.external import read_external
from core.data.readers import read_h5ad, read_image
from core.data.tasks.cells import CITE, PBC, PROT_FILE, RNA_FILE
from core.errors import MMXError
from core.explain.sample import read_upload
from core.shipped import load

ROOT = Path(__file__).resolve().parent.parent
MODEL = "cells/mm_dynamics"  # reads an image, RNA and protein: every kind of upload goes to it
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


# ------------------------------------------------------------------ real bases
@dataclass
class Base:
    """Real inputs the malformed ones are made from."""

    jpeg: bytes  # a PBC blood-cell photo
    rgb: np.ndarray  # its pixels
    frame: pd.DataFrame  # three CITE-seq cells: raw RNA + protein counts and lineage, index cell_id
    rna: ad.AnnData  # the same cells' RNA counts, obs: lineage
    prot: ad.AnnData
    scratch: Path  # where builders write files they need bytes of

    @property
    def png(self) -> bytes:
        return _encode(Image.fromarray(self.rgb), "PNG")

    @property
    def csv(self) -> bytes:
        return self.frame.to_csv().encode()

    @property
    def features(self) -> list[str]:
        return [c for c in self.frame.columns if c != "lineage"]


@pytest.fixture(scope="module")
def base(data_dir, tmp_path_factory) -> Base:
    jpeg = sorted((data_dir / PBC / "lymphocyte").glob("*.jpg"))[0].read_bytes()
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    rows = [0, 200, 400]
    rna, prot = (read_h5ad(data_dir / CITE / f, layer="counts", cells=rows) for f in (RNA_FILE, PROT_FILE))
    lineage = pd.read_csv(data_dir / CITE / "labels.csv").set_index("cell_id").loc[rna.ids, "lineage"].to_numpy()
    r = pd.DataFrame(rna.X, index=rna.ids, columns=rna.features)
    p = pd.DataFrame(prot.X, index=prot.ids, columns=prot.features)
    frame = pd.concat([r, p[[c for c in p.columns if c not in r.columns]]], axis=1).rename_axis("cell_id")
    frame["lineage"] = lineage
    obs = pd.DataFrame({"lineage": lineage}, index=list(rna.ids))
    return Base(jpeg, rgb, frame,
                ad.AnnData(rna.X, obs=obs.copy(), var=pd.DataFrame(index=list(rna.features))),
                ad.AnnData(prot.X, obs=obs.copy(), var=pd.DataFrame(index=list(prot.features))),
                tmp_path_factory.mktemp("scratch"))


@pytest.fixture(scope="module")
def model(data_dir):
    return load(*MODEL.split("/"))


# ------------------------------------------------------------------ builders
def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def _png_header(w: int, h: int) -> bytes:
    """A PNG that claims ``w x h`` pixels with almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b""))


def _jpeg_claiming(b: Base, w: int, h: int) -> bytes:
    data = bytearray(b.jpeg)
    sof = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _tiff(arr: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, arr, **options)
    return out.getvalue()


def _tiff_claiming(b: Base, w: int, h: int) -> bytes:
    """A real image's first rows as TIFF whose header claims ``w x h`` pixels."""
    data = bytearray(_tiff(b.rgb[:8, :8, 0], description=None, metadata=None))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tf:
        offsets = {t.code: t.valueoffset for t in tf.pages[0].tags.values()}
    data[offsets[256]:offsets[256] + 4] = struct.pack("<I", w)
    data[offsets[257]:offsets[257] + 4] = struct.pack("<I", h)
    return bytes(data)


def _frames(b: Base, fmt: str) -> bytes:
    first = Image.fromarray(b.rgb)
    return _encode(first, fmt, save_all=True, append_images=[first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])


def _damaged_png(b: Base) -> bytes:
    data = bytearray(b.png)
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)
    return bytes(data)


def _csv(frame: pd.DataFrame, **options) -> bytes:
    return frame.to_csv(**options).encode()


def _edit(b: Base, change: Callable[[pd.DataFrame], pd.DataFrame | None]) -> bytes:
    f = b.frame.copy()
    out = change(f)
    return _csv(f if out is None else out)


def _set_cell(f: pd.DataFrame, row: int, column: str, value) -> None:
    f[column] = f[column].astype(object)
    f.iloc[row, f.columns.get_loc(column)] = value


def _ragged(line: int) -> Callable[[Base], bytes]:
    def make(b: Base) -> bytes:
        lines = b.csv.decode().splitlines()
        lines[line] += ",1,2,3"
        return ("\n".join(lines) + "\n").encode()
    return make


def _h5ad(b: Base, a: ad.AnnData, patch: Callable[[h5py.File], None] | None = None) -> bytes:
    path = b.scratch / "a.h5ad"
    a.write_h5ad(path)
    if patch is not None:
        with h5py.File(path, "r+") as f:
            patch(f)
    return path.read_bytes()


def _h5mu(b: Base, mods: dict[str, ad.AnnData], labels: bool = True) -> bytes:
    path = b.scratch / "m.h5mu"
    mu = md.MuData({m: a.copy() for m, a in mods.items()})
    if labels:
        mu.obs["lineage"] = b.rna.obs["lineage"].reindex(mu.obs_names).to_numpy()
    mu.write(path)
    return path.read_bytes()


def _nan_at(a: ad.AnnData, row: int, column: int) -> ad.AnnData:
    a = a.copy()
    a.X = a.X.astype(np.float32)
    a.X[row, column] = np.nan
    return a


def _replace_x(data) -> Callable[[h5py.File], None]:
    def patch(f: h5py.File) -> None:
        attrs = dict(f["X"].attrs)
        del f["X"]
        d = f.create_dataset("X", data=data)
        d.attrs.update({k: v for k, v in attrs.items() if k.startswith("encoding")})
    return patch


def _external_link(f: h5py.File) -> None:
    del f["X"]
    f["X"] = h5py.ExternalLink("/etc/hostname", "/X")


def _external_storage(f: h5py.File) -> None:
    shape = f["X"].shape
    del f["X"]
    f.create_dataset("X", shape=shape, dtype=np.float32, external=[("/etc/hostname", 0, 4 * int(np.prod(shape)))])


def _bad_indices(f: h5py.File) -> None:
    ind = f["X/indices"][()]
    ind[len(ind) // 2] = 10 ** 6
    f["X/indices"][...] = ind


def _sparse_rna(b: Base) -> ad.AnnData:
    return ad.AnnData(sp.csr_matrix(b.rna.X), obs=b.rna.obs.copy(), var=b.rna.var.copy())


def _sparse_bomb(b: Base) -> ad.AnnData:
    """100,000 empty cells x the model's genes: 2 MB on disk (the cell names), 400 MB once dense."""
    n = 100_000
    return ad.AnnData(sp.csr_matrix((n, b.rna.n_vars), dtype=np.float32),
                      obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]), var=b.rna.var.copy())


def _renamed(a: ad.AnnData, names: list[str], axis: str) -> ad.AnnData:
    a = a.copy()
    index = getattr(a, f"{axis}_names").tolist()
    index[:len(names)] = names
    setattr(a, f"{axis}_names", index)
    return a


# ------------------------------------------------------------------ the malformed inputs
@dataclass(frozen=True)
class Bad:
    """One malformed input: an image or table upload (``pair``: both, ``name`` the bad one), what
    the error must say, and the environment it is read under."""

    id: str
    slot: str  # "image" | "table" | "pair"
    name: str
    make: Callable[[Base], bytes | dict[str, tuple[str, bytes]]]
    message: str  # regex
    env: dict[str, str] = field(default_factory=dict)
    labelled: bool = False  # a problem only when labels are read (library and CLI; the dashboard reads none)

    def files(self, b: Base) -> dict[str, tuple[str, bytes]]:
        made = self.make(b)
        return made if isinstance(made, dict) else {self.slot: (self.name, made)}


def _pair(image: tuple[str, Callable], table: tuple[str, Callable]) -> Callable[[Base], dict]:
    return lambda b: {"image": (image[0], image[1](b)), "table": (table[0], table[1](b))}


INPUTS = [
    # images (the cell image)
    Bad("truncated_jpeg", "image", "cell.jpg", lambda b: b.jpeg[:len(b.jpeg) // 3], "damaged or truncated"),
    Bad("zero_byte_png", "image", "cell.png", lambda b: b"", "empty"),
    Bad("jpeg_named_bmp", "image", "cell.bmp", lambda b: b.jpeg, r"unsupported input '\.bmp'"),
    Bad("jpeg_named_gif", "image", "cell.gif", lambda b: b.jpeg, r"unsupported input '\.gif'"),
    Bad("text_named_jpg", "image", "cell.jpg", lambda b: b"a cell, honestly\n", "not a readable image"),
    Bad("csv_named_png", "image", "cell.png", lambda b: b.csv, "not a readable image"),
    Bad("gif_named_png", "image", "cell.png", lambda b: _frames(b, "GIF"), "holds GIF data"),
    Bad("bmp_named_jpg", "image", "cell.jpg", lambda b: _encode(Image.fromarray(b.rgb), "BMP"), "holds BMP data"),
    Bad("webp_named_png", "image", "cell.png", lambda b: _encode(Image.fromarray(b.rgb), "WEBP"),
        "holds WebP data"),
    Bad("eps_named_png", "image", "cell.png",  # PIL's EPS plugin would run Ghostscript on it
        lambda b: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto showpage\n", "holds PostScript data"),
    Bad("svg_named_jpg", "image", "cell.jpg", lambda b: b'<svg xmlns="http://www.w3.org/2000/svg"/>',
        "holds SVG data"),
    Bad("pdf_named_png", "image", "cell.png", lambda b: b"%PDF-1.4\n%\xe2\xe3\n", "holds PDF data"),
    Bad("png_bomb_10g_pixels", "image", "cell.png", lambda b: _png_header(100_000, 100_000),
        "10,000,000,000 pixels, over the limit of 40,000,000"),
    Bad("png_bomb_49m_pixels", "image", "cell.png", lambda b: _png_header(7_000, 7_000),
        "7000 x 7000 = 49,000,000 pixels, over the limit"),
    Bad("jpeg_bomb", "image", "cell.jpg", lambda b: _jpeg_claiming(b, 60_000, 60_000),
        "3,600,000,000 pixels, over the limit"),
    Bad("tiff_bomb", "image", "cell.tif", lambda b: _tiff_claiming(b, 100_000, 100_000), "pixels, over the limit"),
    Bad("png_zero_width", "image", "cell.png", lambda b: _png_header(0, 64), "not a readable image"),
    Bad("one_pixel", "image", "cell.png", lambda b: _encode(Image.fromarray(b.rgb[:1, :1]), "PNG"),
        r"1 x 1 pixels: too small"),
    Bad("huge_aspect_ratio", "image", "cell.png",
        lambda b: _encode(Image.fromarray(b.rgb).resize((2000, 20)), "PNG"), "longer than 20:1"),
    Bad("animated_png", "image", "cell.png", lambda b: _frames(b, "PNG"), "animated image with 2 frames"),
    Bad("damaged_png", "image", "cell.png", _damaged_png, "damaged or truncated"),
    Bad("truncated_png", "image", "cell.png", lambda b: b.png[:len(b.png) // 2], "damaged or truncated"),
    Bad("tiff_stack", "image", "cell.tif", lambda b: _tiff(np.stack([b.rgb[..., 0]] * 5)), "several pages"),
    Bad("tiff_nan", "image", "cell.tif", lambda b: _tiff(np.where(b.rgb[..., 0] > 128, np.nan, 1.0)),
        "NaN or infinite"),
    Bad("tiff_5_channels", "image", "cell.tif",
        lambda b: _tiff(np.dstack([b.rgb, b.rgb[..., :2]]), planarconfig="contig", photometric="minisblack"),
        "unsupported image layout"),
    Bad("tiff_complex", "image", "cell.tif", lambda b: _tiff(b.rgb[..., 0].astype(np.complex64)),
        "unsupported pixel type complex64"),
    Bad("image_over_size_limit", "image", "cell.png", lambda b: b.png, r"over the limit of 0\.01 MB",
        env={"MMX_MAX_UPLOAD_MB": "0.01"}),
    # CSV (expression)
    Bad("semicolon_delimiter", "table", "cells.csv", lambda b: _csv(b.frame, sep=";"), "separated by ';'"),
    Bad("tab_delimiter", "table", "cells.csv", lambda b: _csv(b.frame, sep="\t"), r"separated by '\\t'"),
    Bad("utf16_with_bom", "table", "cells.csv", lambda b: b.frame.to_csv().encode("utf-16"), "not UTF-8"),
    Bad("latin1", "table", "cells.csv",
        lambda b: b.frame.rename(columns={b.features[0]: "g\xe9ne"}).to_csv().encode("latin-1"), "not UTF-8"),
    Bad("duplicate_columns", "table", "cells.csv",
        lambda b: _csv(b.frame.set_axis([b.features[0], *b.frame.columns[1:]], axis=1)
                       .rename(columns={b.features[1]: b.features[0]})), "duplicate column names"),
    Bad("all_nan", "table", "cells.csv", lambda b: _edit(b, lambda f: f.assign(**{c: np.nan for c in b.features})),
        "missing or infinite values"),
    Bad("text_in_numbers", "table", "cells.csv", lambda b: _edit(b, lambda f: _set_cell(f, 1, b.features[4], "high")),
        "has text 'high'"),
    Bad("no_model_features", "table", "cells.csv",
        lambda b: _edit(b, lambda f: f.set_axis([f"X{i}" for i in range(len(b.features))] + ["lineage"], axis=1)),
        "no modality of the model found by feature name"),
    Bad("empty_id", "table", "cells.csv",
        lambda b: _edit(b, lambda f: f.set_axis(["", *f.index[1:]], axis=0).rename_axis("cell_id")),
        "empty sample ids"),
    Bad("duplicate_ids", "table", "cells.csv",
        lambda b: _edit(b, lambda f: f.set_axis([f.index[0]] * 2 + [f.index[2]], axis=0).rename_axis("cell_id")),
        "duplicate sample ids"),
    Bad("header_only", "table", "cells.csv", lambda b: _csv(b.frame.iloc[:0]), "CSV has no rows"),
    Bad("zero_byte_csv", "table", "cells.csv", lambda b: b"", "not a readable CSV"),
    Bad("first_row_longer_than_header", "table", "cells.csv", _ragged(1), "more fields than the header"),
    Bad("later_row_longer_than_header", "table", "cells.csv", _ragged(2),
        "line 3 has 1136 fields, more than the header's 1133"),
    Bad("infinite_values", "table", "cells.csv", lambda b: _edit(b, lambda f: _set_cell(f, 0, b.features[2], np.inf)),
        "missing or infinite values"),
    Bad("float32_overflow", "table", "cells.csv", lambda b: _edit(b, lambda f: _set_cell(f, 2, b.features[3], 1e39)),
        "missing or infinite values"),
    Bad("binary_named_csv", "table", "cells.csv", lambda b: bytes(range(256)) * 16, "not a readable CSV"),
    Bad("only_id_and_label", "table", "cells.csv", lambda b: _csv(b.frame[["lineage"]]), "table is empty"),
    Bad("csv_named_txt", "table", "cells.txt", lambda b: b.csv, r"unsupported input '\.txt'"),
    Bad("table_over_size_limit", "table", "cells.csv", lambda b: b.csv, r"over the limit of 0\.001 MB",
        env={"MMX_MAX_UPLOAD_MB": "0.001"}),
    Bad("empty_label_cell", "table", "cells.csv", lambda b: _edit(b, lambda f: _set_cell(f, 1, "lineage", None)),
        "label column 'lineage' has empty cells", labelled=True),
    Bad("label_not_a_class", "table", "cells.csv", lambda b: _edit(b, lambda f: f.assign(lineage="Alien")),
        r"labels \['Alien'\] are not classes of the model", labelled=True),
    # AnnData
    Bad("h5ad_without_x", "table", "cells.h5ad",
        lambda b: _h5ad(b, ad.AnnData(obs=b.rna.obs.copy(), var=b.rna.var.copy())), "has no X matrix"),
    Bad("h5mu_named_h5ad", "table", "cells.h5ad", lambda b: _h5mu(b, {"rna": b.rna, "prot": b.prot}),
        r"has no X matrix .*name it \.h5mu"),
    Bad("non_unique_var_names", "table", "cells.h5ad",
        lambda b: _h5ad(b, _renamed(b.rna, [b.rna.var_names[1]], "var")), "duplicate feature names"),
    Bad("non_unique_obs_names", "table", "cells.h5ad",
        lambda b: _h5ad(b, _renamed(b.rna, [b.rna.obs_names[1]], "obs")), "duplicate sample ids"),
    Bad("empty_obs_name", "table", "cells.h5ad", lambda b: _h5ad(b, _renamed(b.rna, [""], "obs")),
        "empty sample ids"),
    Bad("nan_in_x", "table", "cells.h5ad", lambda b: _h5ad(b, _nan_at(b.rna, 1, 7)),
        r"missing or infinite values, first at row .*, column 'MFN2'"),
    Bad("text_x", "table", "cells.h5ad",
        lambda b: _h5ad(b, b.rna, _replace_x(np.full(b.rna.shape, b"1", dtype="S1"))), "not numbers"),
    Bad("x_shape_not_obs_by_var", "table", "cells.h5ad",
        lambda b: _h5ad(b, b.rna, _replace_x(np.ones((2, b.rna.n_vars), np.float32))), "but obs x var is 3 x 1000"),
    Bad("sparse_bad_indices", "table", "cells.h5ad", lambda b: _h5ad(b, _sparse_rna(b), _bad_indices),
        "damaged sparse matrix"),
    Bad("sparse_bomb", "table", "cells.h5ad", lambda b: _h5ad(b, _sparse_bomb(b)),
        "100,000 x 1,000 = 100,000,000 values, over the limit"),
    Bad("external_link", "table", "cells.h5ad", lambda b: _h5ad(b, b.rna, _external_link),
        "ExternalLink .*refused"),
    Bad("external_storage", "table", "cells.h5ad", lambda b: _h5ad(b, b.rna, _external_storage),
        "stores its values in other files"),
    Bad("truncated_h5ad", "table", "cells.h5ad", lambda b: _h5ad(b, b.rna)[:2000], "not a readable AnnData file"),
    Bad("text_named_h5ad", "table", "cells.h5ad", lambda b: b.csv, "not a readable AnnData file"),
    Bad("h5ad_no_model_features", "table", "cells.h5ad",
        lambda b: _h5ad(b, _renamed(b.rna, [f"X{i}" for i in range(b.rna.n_vars)], "var")),
        "no modality of the model found by feature name"),
    Bad("obs_without_label", "table", "cells.h5ad",
        lambda b: _h5ad(b, ad.AnnData(b.rna.X, obs=b.rna.obs.drop(columns="lineage"), var=b.rna.var)),
        "no label column", labelled=True),
    # MuData
    Bad("wrong_modality_names", "table", "cells.h5mu", lambda b: _h5mu(b, {"foo": b.rna, "bar": b.prot}),
        "has no modality the model uses"),
    Bad("h5ad_named_h5mu", "table", "cells.h5mu", lambda b: _h5ad(b, b.rna), r"has no modalities .*name it \.h5ad"),
    Bad("mismatched_cell_ids", "table", "cells.h5mu",
        lambda b: _h5mu(b, {"rna": b.rna, "prot": _renamed(b.prot, ["x0", "x1"], "obs")}, labels=False),
        "sample ids of modality 'prot' do not match 'rna'"),
    Bad("cells_in_another_order", "table", "cells.h5mu", lambda b: _h5mu(b, {"rna": b.rna, "prot": b.prot[::-1]}),
        "same ids in a different order"),
    Bad("two_modalities_for_rna", "table", "cells.h5mu", lambda b: _h5mu(b, {"rna": b.rna, "gex": b.rna}),
        "several modalities of the file map to the model's 'rna'"),
    Bad("nan_in_a_modality", "table", "cells.h5mu",
        lambda b: _h5mu(b, {"rna": b.rna, "prot": _nan_at(b.prot, 2, 0)}),
        "missing or infinite values"),
    # paired uploads: one good file, one bad; the error names the bad one
    Bad("paired_image_damaged", "pair", "cell.jpg",
        _pair(("cell.jpg", lambda b: b.jpeg[:len(b.jpeg) // 3]), ("cells.csv", lambda b: b.csv)),
        "damaged or truncated"),
    Bad("paired_table_mismatched_ids", "pair", "cells.h5mu",
        _pair(("cell.jpg", lambda b: b.jpeg),
              ("cells.h5mu",
               lambda b: _h5mu(b, {"rna": b.rna, "prot": _renamed(b.prot, ["x0"], "obs")}, labels=False))),
        "do not match"),
]
IDS = [c.id for c in INPUTS]
assert len(set(IDS)) == len(IDS)


def _check(e: MMXError, case: Bad) -> None:
    text = str(e)
    assert case.name in text, f"{case.id}: the error does not name the file: {text}"
    assert re.search(case.message, text), f"{case.id}: {text}"


def _write(tmp: Path, files: dict[str, tuple[str, bytes]]) -> dict[str, Path]:
    out = {}
    for slot, (name, data) in files.items():
        (tmp / slot).mkdir()
        out[slot] = tmp / slot / name
        out[slot].write_bytes(data)
    return out


@pytest.mark.parametrize("case", INPUTS, ids=IDS)
def test_library_refuses(case, base, model, tmp_path, monkeypatch):
    """The file on disk (``read_external``) and its bytes (``read_upload``, the dashboard's reader)."""
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    files = case.files(base)
    paths = _write(tmp_path, files)
    if case.slot != "pair":
        with pytest.raises(MMXError) as e:
            read_external(paths[case.slot], model.specs, model.classes, labelled=case.labelled,
                          modality="image" if case.slot == "image" else None)
        _check(e.value, case)
    if not case.labelled:
        with pytest.raises(MMXError) as e:
            read_upload(model, images={"image": files["image"]} if "image" in files else None, table=files.get("table"))
        _check(e.value, case)


@pytest.fixture(scope="module")
def cli(data_dir):
    import train

    def run(args: list[str], capsys) -> tuple[int, str]:
        rc = train.main(args)
        return rc, capsys.readouterr().err

    return run


SINGLE = [c for c in INPUTS if c.slot != "pair"]


@pytest.mark.parametrize("case", SINGLE, ids=[c.id for c in SINGLE])
def test_cli_refuses(case, base, cli, tmp_path, monkeypatch, capsys):
    """``train.py --evaluate`` on a table (labelled), ``--predict`` on one image: exit 2, the message."""
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    path = _write(tmp_path, case.files(base))[case.slot]
    action = ["--evaluate"] if case.slot == "table" else ["--predict"]
    rc, err = cli([*action, str(ROOT / "checkpoints" / MODEL), "--data-dir", str(path), "--out",
                   str(tmp_path / "out"), *(["--modality", "image"] if case.slot == "image" else [])], capsys)
    assert rc == 2 and err.startswith("error: ")
    assert case.name in err and re.search(case.message, err), err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the dashboard
def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _uploads(at: AppTest, model: str, files: dict[str, tuple[str, bytes]]) -> AppTest:
    for slot in ("image", "table"):
        name, data = files.get(slot, (None, None))
        at.file_uploader(key=f"upload:{model}:{slot}").set_value(
            None if name is None else (name, data, "application/octet-stream"))
    return at.run()


def _answers_normally(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert "Predicted class" in _metrics(at)


@pytest.fixture(scope="module")
def app(data_dir, base) -> AppTest:
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=300).run()
    at.selectbox(key="model").set_value(MODEL).run()
    at.switch_page("views/predict.py").run()
    at.radio(key="source").set_value("Upload").run()
    _uploads(at, MODEL, {"table": ("valid.csv", base.csv)})
    _answers_normally(at)
    return at


DASHBOARD = [c for c in INPUTS if not c.labelled]


UPLOADER_TYPES = {"image": {".png", ".jpg", ".jpeg", ".tif", ".tiff"}, "table": {".csv", ".h5ad", ".h5mu"}}


def _uploader_refuses(case: Bad) -> bool:
    """A suffix the uploader does not offer: the browser never sends it, and Streamlit refuses it
    before the page runs (its own message, no project code involved)."""
    return case.slot != "pair" and Path(case.name).suffix not in UPLOADER_TYPES[case.slot]


@pytest.mark.parametrize("case", DASHBOARD, ids=[c.id for c in DASHBOARD])
def test_dashboard_refuses_and_goes_on(case, base, app, monkeypatch):
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    _uploads(app, MODEL, case.files(base))
    if _uploader_refuses(case):
        assert "Invalid file extension: `" + Path(case.name).suffix in str(app.exception[0].value)
        app.run()  # the next run (any click, a reload) drops the refused file
        assert not app.exception and not app.error
        _uploads(app, MODEL, {"table": ("valid.csv", base.csv)})
        return _answers_normally(app)
    assert not app.exception, app.exception
    errors = [e.value for e in app.error]
    assert errors and not any(e.startswith("Unexpected error") for e in errors), errors
    text = " | ".join(errors)
    assert case.name in text and re.search(case.message, text), text
    monkeypatch.undo()
    _uploads(app, MODEL, {"table": ("valid.csv", base.csv)})
    _answers_normally(app)


# ------------------------------------------------------------------ inputs that are converted, not refused
def _pil(b: Base, mode: str) -> Image.Image:
    return Image.fromarray(b.rgb).convert(mode)


ACCEPTED = {
    # id: (file name, bytes, the pixels read_image must return)
    "png_16bit_gray": lambda b: ("g16.png", _encode(Image.fromarray(b.rgb[..., 0].astype(np.uint16) * 257), "PNG"),
                                 np.repeat(b.rgb[..., :1], 3, -1)),
    "tiff_16bit_rgb": lambda b: ("rgb16.tif", _tiff(b.rgb.astype(np.uint16) * 257, photometric="rgb"), b.rgb),
    "png_palette": lambda b: ("p.png", _encode(_pil(b, "P"), "PNG"), np.asarray(_pil(b, "P").convert("RGB"))),
    "png_gray": lambda b: ("g.png", _encode(_pil(b, "L"), "PNG"),
                           np.repeat(np.asarray(_pil(b, "L"))[..., None], 3, -1)),
    "png_one_bit": lambda b: ("bw.png", _encode(_pil(b, "1"), "PNG"), np.asarray(_pil(b, "1").convert("RGB"))),
    "jpeg_cmyk": lambda b: ("cmyk.jpg", _encode(_pil(b, "CMYK"), "JPEG", quality=100),
                            np.asarray(Image.open(io.BytesIO(_encode(_pil(b, "CMYK"), "JPEG", quality=100)))
                                       .convert("RGB"))),
    "png_rgba_opaque": lambda b: ("rgba.png", _encode(_pil(b, "RGBA"), "PNG"), b.rgb),
    "png_transparent_on_white": lambda b: ("clear.png", _encode(Image.new("RGBA", (32, 32), (9, 9, 9, 0)), "PNG"),
                                           np.full((32, 32, 3), 255, np.uint8)),
    "jpeg_named_png": lambda b: ("photo.png", b.jpeg, b.rgb),
    "tiff_float_scaled": lambda b: ("f.tif", _tiff(b.rgb[..., 0].astype(np.float32) * 1e30),
                                    np.repeat(((b.rgb[..., :1].astype(np.float64) - b.rgb[..., 0].min())
                                               / np.ptp(b.rgb[..., 0]) * 255).round().astype(np.uint8), 3, -1)),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_converted_correctly(case, base, tmp_path):
    name, data, want = ACCEPTED[case](base)
    (tmp_path / name).write_bytes(data)
    got = read_image(tmp_path / name)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, case


def test_csv_with_utf8_bom_and_sparse_h5ad_are_read(base, model, tmp_path):
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + base.csv)
    (tmp_path / "sparse.h5ad").write_bytes(_h5ad(base, _sparse_rna(base)))
    for name in ("bom.csv", "sparse.h5ad"):
        out = read_external(tmp_path / name, model.specs, model.classes)
        assert list(out.dataset.ids) == list(base.frame.index), name
        assert [model.classes[int(k)] for k in out.dataset.y] == list(base.frame["lineage"])
        assert out.dataset.present["rna"].all() and np.isfinite(out.dataset.modalities["rna"].numpy()).all()


def test_h5ad_reads_only_the_cells_asked_for(data_dir):
    path = data_dir / CITE / RNA_FILE
    full = read_h5ad(path, layer="counts")
    part = read_h5ad(path, layer="counts", cells=[400, 3, 200])
    assert list(part.ids) == list(full.ids[[400, 3, 200]]) and np.array_equal(part.X, full.X[[400, 3, 200]])
    with pytest.raises(MMXError, match=r"output_rna\.h5ad: cannot select cells"):
        read_h5ad(path, cells=[10_000])


def test_pil_decompression_bomb_warning_and_error_become_the_project_error(tmp_path):
    """PIL warns over ~89 M pixels and raises over ~179 M; either way (and with its warning made an
    error, as ``-W error`` does) the user gets the project's error with the pixel count."""
    import warnings

    (tmp_path / "warned.png").write_bytes(_png_header(12_000, 12_000))  # PIL: a warning
    (tmp_path / "raised.png").write_bytes(_png_header(20_000, 20_000))  # PIL: an error
    for strict in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("error" if strict else "ignore", Image.DecompressionBombWarning)
            with pytest.raises(MMXError, match=r"warned\.png: image is (12000 x 12000 = )?144,000,000 pixels, over"):
                read_image(tmp_path / "warned.png")
            with pytest.raises(MMXError, match=r"raised\.png: image is 400,000,000 pixels, over the limit"):
                read_image(tmp_path / "raised.png")


def test_upload_names_are_staged_safely(base, model):
    """A browser may send any name: ``..``, a path, 300 characters, a NUL. The file is staged under a
    safe name with its suffix; the error names it as sent."""
    for name in ("../../etc/cells.csv", "x" * 300 + ".csv", "a\x00b.csv", "cell s (1).csv"):
        with pytest.raises(MMXError) as e:
            read_upload(model, table=(name, b"cell_id;CD3\nc1;1\n"))
        assert str(e.value).startswith(Path(name).name + ": fields are separated by ';'"), str(e.value)
    with pytest.raises(MMXError, match=r"^\.\.: unsupported input ''"):
        read_upload(model, table=("..", base.csv))


# ------------------------------------------------------------------ size limits in one place
def test_streamlit_upload_limit_is_the_library_limit(monkeypatch):
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    monkeypatch.delenv("MMX_MAX_UPLOAD_MB", raising=False)
    assert config["server"]["maxUploadSize"] == limits.DEFAULT_MAX_UPLOAD_MB == limits.max_upload_mb()
    monkeypatch.setenv("MMX_MAX_UPLOAD_MB", "12.5")
    assert limits.max_upload_mb() == 12.5
    monkeypatch.setenv("MMX_MAX_UPLOAD_MB", "lots")
    with pytest.raises(MMXError, match="MMX_MAX_UPLOAD_MB='lots' is not a number"):
        limits.max_upload_mb()


# ------------------------------------------------------------------ checkpoints
def _rehash(folder: Path, name: str = "model.safetensors") -> None:
    card = json.loads((folder / "card.json").read_text())
    card["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "card.json").write_text(json.dumps(card))


def _card(**changes) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        card = json.loads((folder / "card.json").read_text())
        card.update(changes)
        (folder / "card.json").write_text(json.dumps(card))
    return edit


def _weights(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        w = folder / "model.safetensors"
        w.write_bytes(edit(w.read_bytes()))
    return change


def _rehashed(change: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda folder: (change(folder), _rehash(folder))


def _other_shapes(data: bytes) -> bytes:
    from safetensors.torch import load as load_tensors
    from safetensors.torch import save as save_tensors

    state = load_tensors(data)
    first = next(k for k, v in state.items() if v.numel() > 3)  # torch loads a 1-element tensor into a 0-d one
    state[first] = state[first].flatten()[:3].clone()
    return save_tensors(state)


def _nan_weights(data: bytes) -> bytes:
    from safetensors.torch import load as load_tensors
    from safetensors.torch import save as save_tensors

    state = load_tensors(data)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    return save_tensors(state)


def _flip(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


@dataclass(frozen=True)
class BadCheckpoint:
    id: str
    damage: Callable[[Path], None]
    file: str  # what the error must name
    message: str
    card_level: bool = False  # the card itself is unreadable: listed with its problem, never offered


CHECKPOINTS = [
    BadCheckpoint("tampered_weights", _weights(_flip), "model.safetensors", "sha256 does not match"),
    BadCheckpoint("missing_weights", lambda f: (f / "model.safetensors").unlink(), "model.safetensors",
                  "file listed in the card not found"),
    BadCheckpoint("pickle_renamed_safetensors", _rehashed(_weights(lambda d: __import__("pickle").dumps({"w": 1}))),
                  "model.safetensors", "not a readable safetensors file"),
    BadCheckpoint("truncated_safetensors", _rehashed(_weights(lambda d: d[:len(d) // 2])), "model.safetensors",
                  "not a readable safetensors file"),
    BadCheckpoint("weights_of_other_shapes", _rehashed(_weights(_other_shapes)), "model.safetensors",
                  "weights do not fit the card's model"),
    BadCheckpoint("card_for_another_method", _card(method="mm_dynamics"), "card.json",
                  "unknown to method 'mm_dynamics'"),
    BadCheckpoint("card_for_an_unknown_method", _card(method="resnet9000"), "", "unknown method 'resnet9000'"),
    BadCheckpoint("card_with_other_classes", _card(classes=["a", "b"]), "model.safetensors",
                  "weights do not fit the card's model"),
    BadCheckpoint("card_with_unknown_setting", _card(config={"bogus": 1}), "card.json",
                  r"settings \['bogus'\] unknown"),
    BadCheckpoint("card_classes_null", _card(classes=None), "card.json", "not shaped like a checkpoint card",
                  card_level=True),
    BadCheckpoint("card_modalities_malformed", _card(modalities=[{"name": "image"}]), "card.json",
                  "not shaped like a checkpoint card", card_level=True),
    BadCheckpoint("nan_weights", _rehashed(_weights(_nan_weights)), "model.safetensors",
                  "weights hold NaN or infinite values"),
    BadCheckpoint("card_not_json", lambda f: (f / "card.json").write_text("{'method': 'cnn'"), "card.json",
                  "card is not valid JSON", card_level=True),
    BadCheckpoint("card_lacks_fields", lambda f: (f / "card.json").write_text('{"format": "mmx-checkpoint/2"}'),
                  "card.json", "card lacks", card_level=True),
    BadCheckpoint("card_lists_a_path_outside", _card(files={"model.safetensors": "0" * 64, "../../x.skops": "0" * 64}),
                  "card.json", "card lists a file '../../x.skops'", card_level=True),
    BadCheckpoint("card_of_unknown_format", _card(format="pickle/1"), "card.json", "unknown checkpoint format",
                  card_level=True),
]
CK_IDS = [c.id for c in CHECKPOINTS]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """A checkpoint root holding the shipped pbc/cnn and one damaged copy of it per case."""
    root = tmp_path_factory.mktemp("checkpoints")
    shutil.copytree(ROOT / "checkpoints" / "pbc" / "cnn", root / "pbc" / "cnn")
    for case in CHECKPOINTS:
        shutil.copytree(root / "pbc" / "cnn", root / "pbc" / case.id)
        case.damage(root / "pbc" / case.id)
    return root


@pytest.mark.parametrize("case", CHECKPOINTS, ids=CK_IDS)
def test_checkpoint_refused_by_library_and_cli(case, checkpoints, cli, data_dir, tmp_path, capsys):
    with pytest.raises(MMXError) as e:
        load("pbc", case.id, root=checkpoints)
    for text in (str(e.value), cli(["--evaluate", str(checkpoints / "pbc" / case.id), "--task", "pbc", "--out",
                                    str(tmp_path)], capsys)[1]):
        assert str(checkpoints / "pbc" / case.id / case.file) in text and re.search(case.message, text), text
    assert load("pbc", "cnn", root=checkpoints).is_fitted


def test_checkpoint_folder_without_a_card(checkpoints, cli, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, err = cli(["--evaluate", str(tmp_path / "empty"), "--task", "pbc", "--out", str(tmp_path)], capsys)
    assert rc == 2 and f"{tmp_path / 'empty' / 'card.json'}: checkpoint card not found" in err
    with pytest.raises(MMXError, match=r"no shipped model pbc/nothing; available: \['pbc/"):
        load("pbc", "nothing", root=checkpoints)


def test_damaged_checkpoints_in_the_dashboard(checkpoints, monkeypatch):
    """Each damaged model is listed with its problem (an unreadable card) or says what is wrong when
    picked; the shipped one answers right after."""
    monkeypatch.setenv("MMX_CHECKPOINTS", str(checkpoints))
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=300).run()
    assert not at.exception
    listed = next(d.value for d in at.dataframe if "problem" in d.value.columns).set_index("model")["problem"]
    for case in CHECKPOINTS:
        if case.card_level:
            assert re.search(case.message, listed[case.id]) and case.file in listed[case.id], (case.id, listed[case.id])
    at.switch_page("views/predict.py").run()
    offered = {o.split(" · ")[1] for o in at.selectbox(key="model").options}
    for case in CHECKPOINTS:
        assert (case.id in offered) != case.card_level, case.id
        if case.card_level:
            continue
        at.selectbox(key="model").set_value(f"pbc/{case.id}").run()
        assert not at.exception, at.exception
        errors = " | ".join(e.value for e in at.error)
        assert case.file in errors and re.search(case.message, errors), (case.id, errors)
        at.selectbox(key="model").set_value("pbc/cnn").run()
        _answers_normally(at)
