"""Readers accept every supported format and reject malformed input with a clear MMXError."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from core.data import readers
from core.data.readers import (
    align_tables,
    list_image_folder,
    normalize_expression,
    read_csv_table,
    read_h5ad,
    read_h5mu,
    read_image,
)
from core.errors import MMXError


def _png(path, arr, mode=None):
    Image.fromarray(arr, mode=mode).save(path)
    return path


# ------------------------------------------------------------------ accepted images
def test_rgb_jpeg_and_resize(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    p = tmp_path / "a.jpg"
    Image.fromarray(arr).save(p, quality=95)
    out = read_image(p)
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    assert read_image(p, (16, 16)).shape == (16, 16, 3)


def test_16bit_tiff_accepted_and_scaled(tmp_path):
    arr = np.linspace(0, 65535, 64 * 48, dtype=np.uint16).reshape(64, 48)
    p = tmp_path / "gray16.tif"
    tifffile.imwrite(p, arr)
    out = read_image(p)
    assert out.shape == (64, 48, 3) and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255


def test_16bit_rgb_tiff_accepted(tmp_path):
    arr = np.full((20, 20, 3), 65535, dtype=np.uint16)
    arr[..., 1] = 0
    p = tmp_path / "rgb16.tiff"
    tifffile.imwrite(p, arr, photometric="rgb")
    out = read_image(p)
    assert out[0, 0].tolist() == [255, 0, 255]


def test_16bit_png_accepted(tmp_path):
    arr = np.full((10, 12), 65535, dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(arr).save(p)
    assert read_image(p).max() == 255


def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((8, 8, 4), dtype=np.uint8)
    arr[..., 0] = 255
    arr[:4, :, 3] = 255  # top half opaque red, bottom half transparent
    out = read_image(_png(tmp_path / "rgba.png", arr))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[7, 0].tolist() == [255, 255, 255]


def test_gray_and_palette(tmp_path):
    g = read_image(_png(tmp_path / "g.png", np.full((5, 5), 100, np.uint8)))
    assert g.shape == (5, 5, 3) and (g == 100).all()
    Image.fromarray(np.full((5, 5, 3), 50, np.uint8)).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (5, 5, 3)


def test_real_breakhis_pngs_of_varying_size(data_dir):
    index = pd.read_csv(data_dir / "breakhis" / "index.csv")
    for rel, w, h in index[["relpath", "width", "height"]].head(4).itertuples(index=False):
        out = read_image(data_dir / "breakhis" / rel)
        assert out.shape == (h, w, 3)


# ------------------------------------------------------------------ rejected images
def test_truncated_jpeg(tmp_path):
    arr = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    p = tmp_path / "t.jpg"
    Image.fromarray(arr).save(p)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(MMXError, match=r"t\.jpg.*(damaged|truncated|readable)"):
        read_image(p)


def test_non_image_bytes_named_png(tmp_path):
    p = tmp_path / "fake.png"
    p.write_text("this is not an image")
    with pytest.raises(MMXError, match=r"fake\.png: not a readable image"):
        read_image(p)


def test_image_over_pixel_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_PIXELS", 100)
    with pytest.raises(MMXError, match=r"big\.png.*over the limit"):
        read_image(_png(tmp_path / "big.png", np.zeros((20, 20, 3), np.uint8)))


def test_missing_empty_and_wrong_suffix(tmp_path):
    with pytest.raises(MMXError, match="not found"):
        read_image(tmp_path / "none.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(MMXError, match="empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(MMXError, match="unsupported image type"):
        read_image(tmp_path / "x.bmp")


def test_corrupt_tiff(tmp_path):
    p = tmp_path / "bad.tif"
    p.write_bytes(b"II*\x00garbage")
    with pytest.raises(MMXError, match=r"bad\.tif: not a readable TIFF"):
        read_image(p)


def test_image_folder_layout(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        _png(tmp_path / c / "1.png", np.zeros((4, 4, 3), np.uint8))
    files, labels, classes = list_image_folder(tmp_path)
    assert classes == ("a", "b") and labels == ["a", "b"] and len(files) == 2


def test_empty_class_folder(tmp_path):
    (tmp_path / "a").mkdir()
    _png(tmp_path / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(MMXError, match=r"empty_class.*holds no PNG/JPEG/TIFF"):
        list_image_folder(tmp_path)


# ------------------------------------------------------------------ tables
def _csv(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_ok_with_labels(tmp_path):
    t = read_csv_table(_csv(tmp_path, "cell_id,g1,g2,label\nc1,1,2,T\nc2,3,4,B\n"), label_column="label")
    assert t.ids.tolist() == ["c1", "c2"] and t.features == ("g1", "g2") and t.labels.tolist() == ["T", "B"]
    assert t.X.dtype == np.float32 and t.X.shape == (2, 2)


def test_csv_nan(tmp_path):
    with pytest.raises(MMXError, match=r"t\.csv: 1 missing or infinite values, first at row 'c2', column 'g2'"):
        read_csv_table(_csv(tmp_path, "cell_id,g1,g2\nc1,1,2\nc2,3,\n"))


def test_csv_text_cell(tmp_path):
    with pytest.raises(MMXError, match=r"column 'g1' has text 'high' at row 'c2'"):
        read_csv_table(_csv(tmp_path, "cell_id,g1,g2\nc1,1,2\nc2,high,4\n"))


def test_csv_missing_label_column(tmp_path):
    with pytest.raises(MMXError, match=r"label column 'lineage' not found"):
        read_csv_table(_csv(tmp_path, "cell_id,g1\nc1,1\n"), label_column="lineage")


def test_csv_duplicate_ids(tmp_path):
    with pytest.raises(MMXError, match=r"duplicate sample ids: \['c1'\]"):
        read_csv_table(_csv(tmp_path, "cell_id,g1\nc1,1\nc1,2\n"))


def test_csv_not_a_csv(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"\xff\xfe\x00\x01\x02" * 50)
    with pytest.raises(MMXError, match=r"bin\.csv"):
        read_csv_table(p)


def test_real_csv_counts_normalised(data_dir):
    t = read_csv_table(data_dir / "cite_bmmc" / "protein_counts.csv")
    assert t.X.shape == (600, 134)
    t = normalize_expression(t, 1e4)
    assert "raw counts" in t.normalization and t.X.max() < 20
    t2 = normalize_expression(read_csv_table(data_dir / "cite_bmmc" / "protein_clr.csv"))
    assert t2.normalization.startswith("already normalised")


# ------------------------------------------------------------------ AnnData / MuData
def test_h5ad_layer_missing(data_dir):
    path = data_dir / "cite_bmmc" / "openproblems_bmmc_cite_starter.output_rna.h5ad"
    assert read_h5ad(path, layer="counts").X.shape == (600, 1000)
    with pytest.raises(MMXError, match=r"has no layer 'spliced'; layers are \['counts'\]"):
        read_h5ad(path, layer="spliced")


def test_h5ad_not_hdf5(tmp_path):
    p = tmp_path / "x.h5ad"
    p.write_text("nope")
    with pytest.raises(MMXError, match=r"x\.h5ad: not a readable AnnData file"):
        read_h5ad(p)


def test_h5mu_roundtrip_and_missing_modality(tmp_path):
    import anndata as ad
    import mudata as md

    obs = pd.DataFrame(index=["c1", "c2", "c3"])
    rna = ad.AnnData(np.arange(6, dtype=np.float32).reshape(3, 2), obs=obs.copy())
    prot = ad.AnnData(np.ones((3, 4), np.float32), obs=obs.copy())
    p = tmp_path / "m.h5mu"
    md.MuData({"rna": rna, "prot": prot}).write(p)
    tables = read_h5mu(p)
    assert tables["rna"].X.shape == (3, 2) and tables["prot"].X.shape == (3, 4)
    md.MuData({"rna": rna}).write(tmp_path / "only_rna.h5mu")
    with pytest.raises(MMXError, match=r"only_rna\.h5mu: has no modality \['prot'\]"):
        read_h5mu(tmp_path / "only_rna.h5mu")


def test_mismatched_ids_between_modalities(tmp_path):
    a = read_csv_table(_csv(tmp_path, "cell_id,g\nc1,1\nc2,2\n", "rna.csv"))
    b = read_csv_table(_csv(tmp_path, "cell_id,p\nc1,1\nc3,2\n", "prot.csv"))
    with pytest.raises(MMXError, match=r"prot\.csv: sample ids of modality 'protein' do not match 'rna'.*c3"):
        align_tables({"rna": a, "protein": b})
