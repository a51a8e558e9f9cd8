"""read_external: a user's image folder, CSV, AnnData or MuData comes out exactly as the task's own
rows (same tensors, normalisation and labels), with missing / unknown features and absent
modalities reported; bad input ends in an MMXError naming the file."""
from __future__ import annotations

import shutil

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core.data.dataset import ModalitySpec
from core.data.external import read_external
from core.data.readers import read_h5ad
from core.data.tasks import get_task
from core.data.tasks.cells import CITE, PBC, PROT_FILE, RNA_FILE
from core.errors import MMXError


@pytest.fixture(scope="module")
def pbc(data_dir):
    return get_task("pbc").dataset


@pytest.fixture(scope="module")
def cite(data_dir, cells):
    """Eight real cells: raw counts as AnnData (obs: lineage) and their rows in the ``cells`` task."""
    ds = cells.dataset
    pick = np.arange(0, 600, 75)
    rna, prot = (read_h5ad(data_dir / CITE / f, layer="counts") for f in (RNA_FILE, PROT_FILE))
    obs = pd.DataFrame({"lineage": [ds.classes[int(i)] for i in ds.y[pick]]}, index=rna.ids[pick])
    assert np.array_equal(rna.ids, ds.ids) and np.array_equal(prot.ids, ds.ids)
    return {"rna": ad.AnnData(rna.X[pick], obs=obs.copy(), var=pd.DataFrame(index=list(rna.features))),
            "protein": ad.AnnData(prot.X[pick], obs=obs.copy(), var=pd.DataFrame(index=list(prot.features))),
            "pick": pick}


def _copy(data_dir, tmp_path, ids, flat=False):
    for i in ids:
        dst = tmp_path / (i.split("/")[-1] if flat else i)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_dir / PBC / i, dst)


def _counts_csv(cite, path, protein_prefix=None):
    """Raw counts of both modalities in one CSV; proteins in ``protein_prefix`` get a ``prot:`` prefix."""
    rna, prot = cite["rna"].to_df(), cite["protein"].to_df()
    prot.columns = [f"prot:{c}" if c in (protein_prefix or ()) else c for c in prot.columns]
    keep = [c for c in prot.columns if c not in rna.columns]
    pd.concat([rna, prot[keep], cite["rna"].obs], axis=1).rename_axis("cell_id").to_csv(path)
    return path


# ------------------------------------------------------------------ images
def test_image_folder_gives_the_task_tensors(pbc, data_dir, tmp_path, monkeypatch):
    ids = sorted(i for c in ("lymphocyte", "ig", "platelet") for i in [x for x in pbc.ids if x.startswith(c + "/")][:2])
    _copy(data_dir, tmp_path / "up", ids)
    monkeypatch.setenv("MMX_CACHE_DIR", str(tmp_path / "cache"))
    out = read_external(tmp_path / "up", pbc.specs, pbc.classes)
    idx = [list(pbc.ids).index(i) for i in ids]
    assert out.labelled and list(out.dataset.ids) == ids and out.dataset.classes == pbc.classes
    assert torch.equal(out.dataset.modalities["image"], pbc.modalities["image"][idx])
    assert torch.equal(out.dataset.y, pbc.y[idx]) and out.dataset.present["image"].all()
    assert "classes present: lymphocyte 2, ig 2, platelet 2 (3 of the model's 8)" in out.notes
    assert not (tmp_path / "cache").exists()  # user files never land in the image cache


def test_unlabelled_images_flat_folder_or_one_file(pbc, data_dir, tmp_path):
    ids = list(pbc.ids[[0, 500, 1000]])
    _copy(data_dir, tmp_path, ids, flat=True)
    out = read_external(tmp_path, pbc.specs, pbc.classes, labelled=False)
    order = np.argsort([i.split("/")[-1] for i in ids])
    assert not out.labelled and (out.dataset.y == 0).all()
    assert torch.equal(out.dataset.modalities["image"], pbc.modalities["image"][[[0, 500, 1000][i] for i in order]])
    one = tmp_path / ids[0].split("/")[-1]
    assert torch.equal(read_external(one, pbc.specs, pbc.classes, labelled=False).dataset.modalities["image"][0],
                       pbc.modalities["image"][0])
    with pytest.raises(MMXError, match="single image carries no label"):
        read_external(one, pbc.specs, pbc.classes)
    with pytest.raises(MMXError, match="no class sub-folders"):
        read_external(tmp_path, pbc.specs, pbc.classes)


def test_unknown_class_folder(pbc, data_dir, tmp_path):
    _copy(data_dir, tmp_path, [pbc.ids[0]])
    (tmp_path / "mystery").mkdir()
    shutil.copy(data_dir / PBC / pbc.ids[0], tmp_path / "mystery" / "x.jpg")
    with pytest.raises(MMXError, match=r"class folders \['mystery'\] are not classes of the model; "
                                       r"its classes are \['lymphocyte', 'neutrophil'") as e:
        read_external(tmp_path, pbc.specs, pbc.classes)
    assert str(tmp_path) in str(e.value)


def test_image_modality_named_when_several(tmp_path):
    (tmp_path / "NEV").mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(tmp_path / "NEV" / "a.png")
    specs = {m: ModalitySpec(m, "image", image_shape=(3, 16, 16)) for m in ("clinic", "derm")}
    with pytest.raises(MMXError, match=r"several image modalities \['clinic', 'derm'\]"):
        read_external(tmp_path, specs, ("NEV", "MEL"))
    out = read_external(tmp_path, specs, ("NEV", "MEL"), modality="derm")
    assert out.dataset.present["derm"].all() and not out.dataset.present["clinic"].any()
    assert out.dataset.modalities["derm"].shape == (1, 3, 16, 16) and (out.dataset.modalities["derm"] == 90).all()
    assert "clinic: not in the upload: absent for every sample" in out.notes
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(MMXError, match=r"x\.csv: the model takes only images"):
        read_external(tmp_path / "x.csv", specs, ("NEV",))


# ------------------------------------------------------------------ AnnData / MuData
def test_h5ad_of_raw_counts_gives_the_task_rows(cells, cite, tmp_path):
    ds = cells.dataset
    cite["rna"].write_h5ad(tmp_path / "rna.h5ad")
    out = read_external(tmp_path / "rna.h5ad", ds.specs, ds.classes)
    got = out.dataset
    assert np.array_equal(got.ids, ds.ids[cite["pick"]]) and torch.equal(got.y, ds.y[cite["pick"]])
    np.testing.assert_allclose(got.modalities["rna"], ds.modalities["rna"][cite["pick"]], atol=1e-5)
    assert got.present["rna"].all() and not got.present["protein"].any() and not got.present["image"].any()
    assert out.matches["rna"].matched == 1000 and not out.matches["rna"].missing and "protein" not in out.matches
    assert "rna: raw counts: scanpy normalize_total(target_sum=10000.0) + log1p" in out.notes
    assert "protein: not in the upload: absent for every sample" in out.notes


def test_original_h5ad_is_normalised_from_its_counts_layer(cells, data_dir):
    ds = cells.dataset
    out = read_external(data_dir / CITE / PROT_FILE, ds.specs, ds.classes, labelled=False)
    np.testing.assert_allclose(out.dataset.modalities["protein"], ds.modalities["protein"], atol=1e-5)
    assert any("layers['counts']" in n for n in out.notes) and not out.labelled


def test_h5mu_modality_aliases_and_global_labels(cells, cite, tmp_path):
    ds = cells.dataset
    rna, prot = (ad.AnnData(cite[m].X, obs=pd.DataFrame(index=cite[m].obs_names), var=cite[m].var)
                 for m in ("rna", "protein"))
    atac = ad.AnnData(np.ones((len(cite["pick"]), 2), np.float32), obs=pd.DataFrame(index=cite["rna"].obs_names))
    mu = md.MuData({"gex": rna, "adt": prot, "atac": atac})
    mu.obs["label"] = cite["rna"].obs["lineage"].to_numpy()
    mu.write(tmp_path / "cells.h5mu")
    out = read_external(tmp_path / "cells.h5mu", ds.specs, ds.classes)
    for m in ("rna", "protein"):
        np.testing.assert_allclose(out.dataset.modalities[m], ds.modalities[m][cite["pick"]], atol=1e-5)
        assert out.dataset.present[m].all()
    assert torch.equal(out.dataset.y, ds.y[cite["pick"]])
    assert "modality 'atac' of the file is not one the model uses: ignored" in out.notes


# ------------------------------------------------------------------ CSV
def test_csv_missing_columns_filled_unknown_ignored(cells, cite, tmp_path):
    ds = cells.dataset
    rows = ds.modalities["rna"][cite["pick"]].numpy()
    genes = list(ds.specs["rna"].feature_names)
    drop = genes[10:15]
    df = pd.DataFrame(rows, columns=genes, index=pd.Index(ds.ids[cite["pick"]], name="cell_id")).drop(columns=drop)
    df["NOT_A_GENE"] = 1.0
    df["lineage"] = cite["rna"].obs["lineage"].to_numpy()
    df.to_csv(tmp_path / "rna.csv")
    fill = {m: ds.modalities[m].mean(0).numpy() for m in ("rna", "protein")}
    out = read_external(tmp_path / "rna.csv", ds.specs, ds.classes, fill=fill)
    x = out.dataset.modalities["rna"].numpy()
    np.testing.assert_allclose(x[:, 10:15], np.repeat(fill["rna"][None, 10:15], len(rows), 0))
    np.testing.assert_allclose(np.delete(x, range(10, 15), 1), np.delete(rows, range(10, 15), 1), atol=1e-6)
    m = out.matches["rna"]
    assert m.missing == tuple(drop) and m.unknown == ("NOT_A_GENE",) and m.matched == 995
    assert (f"rna: 995 of 1000 features matched; 5 missing and filled (e.g. {', '.join(drop)}); 1 unknown and "
            "ignored (e.g. NOT_A_GENE); missing ones filled with the training mean") in out.notes
    assert "rna: already normalised (non-integer values): used as is" in out.notes
    assert not out.dataset.present["protein"].any() and torch.equal(out.dataset.y, ds.y[cite["pick"]])
    with pytest.raises(MMXError, match=r"rna\.csv: fill values for 'rna' have shape \(3,\)"):
        read_external(tmp_path / "rna.csv", ds.specs, ds.classes, fill={"rna": np.zeros(3)})


def test_csv_prefix_gives_a_shared_name_to_one_modality(cells, cite, tmp_path):
    ds = cells.dataset
    shared = {"CD36", "CD69", "HLA-E"}
    out = read_external(_counts_csv(cite, tmp_path / "both.csv", shared), ds.specs, ds.classes)
    for m in ("rna", "protein"):
        np.testing.assert_allclose(out.dataset.modalities[m], ds.modalities[m][cite["pick"]], atol=1e-5)
        assert not out.matches[m].missing and not out.matches[m].unknown
    assert not any("used for each" in n for n in out.notes)
    plain = read_external(_counts_csv(cite, tmp_path / "plain.csv"), ds.specs, ds.classes)  # CD36 only once
    assert plain.matches["protein"].missing == ()
    assert "columns ['HLA-E', 'CD36', 'CD69'] are features of ['rna', 'protein']: used for each (write e.g. " \
           "'rna:HLA-E' to give a column to one modality)" in plain.notes
    cd36 = ds.specs["protein"].feature_names.index("CD36")
    assert not np.allclose(plain.dataset.modalities["protein"][:, cd36], ds.modalities["protein"][cite["pick"], cd36])


def test_csv_without_model_features(cells, tmp_path):
    (tmp_path / "x.csv").write_text("cell_id,foo,bar,lineage\nc1,1,2,T\nc2,3,4,B\n")
    with pytest.raises(MMXError, match=r"x\.csv: no modality of the model found by feature name: only 0 of 1000 rna"):
        read_external(tmp_path / "x.csv", cells.dataset.specs, cells.dataset.classes)


def test_label_problems(cells, cite, tmp_path):
    ds = cells.dataset
    path = _counts_csv(cite, tmp_path / "c.csv", {"CD36", "CD69", "HLA-E"})
    df = pd.read_csv(path)
    df.assign(lineage="Alien").to_csv(tmp_path / "alien.csv", index=False)
    with pytest.raises(MMXError, match=r"alien\.csv: labels \['Alien'\] are not classes of the model; its classes"):
        read_external(tmp_path / "alien.csv", ds.specs, ds.classes)
    df.drop(columns="lineage").to_csv(tmp_path / "nolabel.csv", index=False)
    with pytest.raises(MMXError, match=r"nolabel\.csv: no label column \(tried label, labels, class"):
        read_external(tmp_path / "nolabel.csv", ds.specs, ds.classes)
    assert not read_external(tmp_path / "nolabel.csv", ds.specs, ds.classes, labelled=False).labelled
    with pytest.raises(MMXError, match=r"c\.csv: label column 'kind' not found"):
        read_external(path, ds.specs, ds.classes, label_column="kind")


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", "", "not a readable CSV"),
    ("header.csv", "cell_id,CD5\n", "CSV has no rows"),
    ("broken.h5ad", "nope", "not a readable AnnData file"),
    ("broken.h5mu", "nope", "not a readable MuData file"),
    ("notes.txt", "hi", "unsupported input '.txt'"),
    ("broken.png", "nope", "not a readable image"),
])
def test_bad_files_name_the_file(cells, tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(MMXError, match=message) as e:
        read_external(tmp_path / name, cells.dataset.specs, cells.dataset.classes, labelled=False)
    assert e.value.source == str(tmp_path / name)
    with pytest.raises(MMXError, match="not found"):
        read_external(tmp_path / "missing.csv", cells.dataset.specs, cells.dataset.classes)
