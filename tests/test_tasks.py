"""Tasks over the real data: shapes, class counts as in each SOURCE.md, presence, pairing."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from core.data.tasks import get_task
from core.data.tasks.cells import PAIRING_FILE, PBC, make_pairing, read_cells_tables


def test_cells_shapes_and_counts(cells):
    ds = cells.dataset
    assert len(ds) == 600
    assert ds.modalities["rna"].shape == (600, 1000) and ds.modalities["protein"].shape == (600, 134)
    assert ds.modalities["image"].shape == (600, 3, 64, 64) and ds.modalities["image"].dtype == torch.uint8
    # cite_bmmc/SOURCE.md lineage table
    assert ds.class_counts() == {"T": 218, "B": 103, "NK_ILC": 60, "Myeloid": 106, "Erythroid": 96, "Progenitor": 17}
    assert sorted(set(ds.groups)) == ["s1d1", "s1d2"] and (ds.groups == "s1d1").sum() == 311
    assert "raw counts" in ds.specs["rna"].preprocessing
    assert ds.specs["protein"].feature_names[:3] == ("CD86", "CD274", "CD270")


def test_cells_images_match_class_and_no_image_shared_between_folds(cells, data_dir):
    pairing = cells.notes["pairing"].set_index("cell_id").loc[cells.dataset.ids]
    images = pd.read_csv(data_dir / PBC / "labels.csv").set_index("path")
    want = {"T": "lymphocyte", "B": "lymphocyte", "NK_ILC": "lymphocyte", "Myeloid": "monocyte",
            "Erythroid": "erythroblast", "Progenitor": "ig"}
    lineage = np.array(cells.dataset.classes)[cells.dataset.y.numpy()]
    assert (images.loc[pairing["image"], "class"].to_numpy() == np.vectorize(want.get)(lineage)).all()
    assert pairing["image"].is_unique  # drawn without replacement
    for split in cells.splits["leave_one_donor_out"]:
        train_imgs = set(pairing["image"].iloc[np.r_[split.train, split.val]])
        assert not train_imgs & set(pairing["image"].iloc[split.test])


def test_cells_pairing_identical_across_runs(data_dir):
    _, labels = read_cells_tables(data_dir)
    images = pd.read_csv(data_dir / PBC / "labels.csv")
    a = make_pairing(labels[["cell_id", "batch", "lineage"]], images)
    b = make_pairing(labels[["cell_id", "batch", "lineage"]], images.sample(frac=1, random_state=3))
    stored = pd.read_csv(PAIRING_FILE)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, stored)


def test_cells_splits_leave_one_donor_out(cells):
    splits = cells.splits["leave_one_donor_out"]
    assert len(splits) == 6  # 2 donors x 3 seeds
    g = cells.dataset.groups
    for s in splits:
        assert len(set(g[s.test])) == 1 and not set(g[s.test]) & set(g[s.train]) and not set(g[s.test]) & set(g[s.val])
        assert len(s.train) + len(s.val) + len(s.test) == 600


def test_rosmap(rosmap):
    ds = rosmap.dataset
    assert {m: tuple(x.shape) for m, x in ds.modalities.items()} == {m: (351, 200) for m in ("mRNA", "methylation", "miRNA")}
    assert ds.class_counts() == {"normal": 169, "AD": 182}
    mog = rosmap.splits["mogonet"]
    assert len(mog) == 5
    for s in mog:
        assert len(s.test) == 106 and len(s.train) + len(s.val) == 245
        assert (ds.y[torch.as_tensor(s.test)].sum().item(), len(s.test)) == (55, 106)
    assert len(rosmap.splits["repeated_70_30"]) == 5
    assert ds.specs["methylation"].feature_names[0].startswith("cg")


def test_derm7pt(derm7pt):
    ds = derm7pt.dataset
    assert len(ds) == 1011
    assert ds.class_counts() == {"NEV": 575, "MEL": 252, "MISC": 97, "SK": 45, "BCC": 42}
    missing = ~ds.present["clinic"]
    assert int(missing.sum()) == 9 and ds.present["derm"].all()
    assert sorted(int(i.split("_")[1]) for i in ds.ids[missing.numpy()]) == [565, 800, 824, 827, 833, 834, 839, 844, 851]
    assert ds.modalities["clinic"][missing].eq(0).all()  # no stand-in image in a missing slot
    s = derm7pt.splits["official"][0]
    assert (len(s.train), len(s.val), len(s.test)) == (413, 203, 395)
    y = ds.y.numpy()
    assert np.bincount(y[s.test], minlength=5).tolist() == [219, 101, 40, 19, 16]
    assert set(ds.targets) >= {"PN", "BWV", "VS", "PIG", "STR", "DaG", "RS", "melanoma"}
    assert ds.with_target("BWV").class_counts() == {"ABS": 816, "PRS": 195}


def test_seven_point_score_matches_meta(derm7pt):
    from core.data.tasks.derm7pt import seven_point_score

    ds = derm7pt.dataset
    score = seven_point_score({k: t.y.numpy() for k, t in ds.targets.items()})
    assert (score == derm7pt.notes["seven_point_score"]).all()


def test_pbc(data_dir):
    ds = get_task("pbc").dataset
    assert len(ds) == 3100 and ds.modalities["image"].shape[1:] == (3, 64, 64)
    assert ds.class_counts() == {"lymphocyte": 700, "neutrophil": 600, "monocyte": 600, "erythroblast": 600,
                                 "eosinophil": 150, "basophil": 150, "ig": 150, "platelet": 150}


def test_demo_is_deterministic_and_synthetic():
    from core.data.tasks.demo import build_demo

    a, b = build_demo(seed=0), build_demo(seed=0)
    assert a.dataset.synthetic and a.dataset.data_hash() == b.dataset.data_hash()
    assert build_demo(seed=1).dataset.data_hash() != a.dataset.data_hash()
    default = int(os.environ.get("MMX_DEMO_SEED", 0))  # the suite may run on another synthetic draw
    assert build_demo().dataset.data_hash() == build_demo(seed=default).dataset.data_hash()


def test_subset_select_and_batch(demo):
    ds = demo.dataset
    sub = ds.subset([3, 1]).select(["rna"])
    assert list(sub.specs) == ["rna"] and sub.ids.tolist() == ds.ids[[3, 1]].tolist()
    b = ds.batch(np.array([0, 2]))
    assert set(b["x"]) == {"rna", "protein", "image"} and b["y"].tolist() == ds.y[[0, 2]].tolist()


def test_task_summary_is_cached_on_disk_and_loads_no_data_twice(rosmap, tmp_path, monkeypatch):
    import core.data.tasks as tasks

    monkeypatch.setenv("MMX_CACHE_DIR", str(tmp_path))
    first = tasks.task_summary("rosmap")
    assert first == json_round_trip(rosmap.dataset.summary()) and list(tmp_path.glob("json-*.json"))
    monkeypatch.setattr(tasks, "get_task", lambda *a, **k: (_ for _ in ()).throw(AssertionError("data loaded")))
    assert tasks.task_summary("rosmap") == first  # from the disk cache


def json_round_trip(d: dict) -> dict:
    import json

    return json.loads(json.dumps(d))
