"""The release and the shipped models: ``train.py --release`` trains, resumes and writes whole
cards; every shipped checkpoint loads, verifies, predicts real samples and gives back its card's
test metrics; ``--evaluate`` / ``--predict`` score a user's own files."""
from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load as load_tensors

import train
from core import metrics
from core.calibration import calibration_record
from core.checkpoint import load_checkpoint, read_card
from core.data.tasks import get_task
from core.errors import MMXError
from core.evaluate import evaluate
from core.experiments.calibration import run_calibration
from core.metrics import SIX
from core.paths import REPO_ROOT
from core.release import RELEASE, release_one, release_set
from core.shipped import available, load, stale_weights

SHIPPED = {(m.task, m.name): m for m in available(REPO_ROOT / "checkpoints")}
CARD_FIELDS = {"task", "method", "config", "classes", "modalities", "sizes", "metrics", "data_hash", "training_seconds",
               "device", "versions", "files", "command", "data", "split", "release", "calibration"}


# ------------------------------------------------------------------ the release on the synthetic demo
@pytest.fixture(scope="module")
def demo_release(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("checkpoints")
    assert train.main(["--release", "--task", "demo", "--epochs", "2", "--checkpoint-dir", str(out)]) == 0
    return out


def test_release_writes_a_whole_card_per_model(demo_release, demo):
    folders = sorted(p.parent for p in demo_release.glob("demo/*/card.json"))
    assert [f.name for f in folders] == sorted(r.name for r in release_set("demo"))
    for folder in folders:
        card = read_card(folder)
        assert CARD_FIELDS <= set(card), folder
        assert set(SIX) <= set(card["metrics"]) and card["synthetic"] and card["data_hash"] == demo.dataset.data_hash()
        assert card["sizes"]["test"] == len(demo.splits["logo"][0].test)
        assert card["command"].startswith("python train.py --release --task demo")
        stored = load_tensors((folder / "model.safetensors").read_bytes())  # float32 weights stored in half
        assert card["weights_dtype"] == "float16" and torch.float32 not in {v.dtype for v in stored.values()}
        m = load_checkpoint(folder)
        assert all(v.dtype != torch.float16 for v in m.weights().values())  # widened back when loaded
        result = evaluate(m, task="demo")
        assert result["metrics"] == pytest.approx(card["metrics"], abs=1e-6)  # the card scored the rounded model


def test_calibration_experiment_matches_the_cards_and_leaves_them_alone(demo_release, tmp_path, monkeypatch,
                                                                        one_thread):
    monkeypatch.setenv("MMX_CHECKPOINTS", str(demo_release))
    before = {f.parent.name: f.read_bytes() for f in demo_release.glob("demo/*/card.json")}
    written = run_calibration("demo", tmp_path)
    md = (tmp_path / "demo" / "calibration.md").read_text()
    table = json.loads((tmp_path / "demo" / "calibration.json").read_text())
    assert "SYNTHETIC" in md and "python train.py --experiment cells/calibration --task demo" in md
    assert {p.name for p in written} >= {"calibration.md", "calibration.json"}
    assert not stale_weights(table["weights"], demo_release)
    for name, old in before.items():
        assert (demo_release / "demo" / name / "card.json").read_bytes() == old  # the release's card, untouched
        card = read_card(demo_release / "demo" / name)
        assert f"| {name} |" in md and table["weights"][f"demo/{name}"] == card["files"]
        rec, mine = card["calibration"], table["records"][name]  # the release calibrated the same way
        assert mine["temperature"] == pytest.approx(rec["temperature"], abs=1e-3)
        assert mine["conformal"]["coverage"] == pytest.approx(rec["conformal"]["coverage"], abs=1e-9)


def test_release_keeps_fresh_folders_and_redoes_broken_ones(demo_release, one_thread):
    entry = next(r for r in release_set("demo") if r.name == "early_lr")
    assert release_one(entry, demo_release, epochs=2).status == "kept"
    (demo_release / "demo" / "early_lr" / "model.safetensors").write_bytes(b"half a file")
    assert release_one(entry, demo_release, epochs=2).status == "trained"  # a killed write is redone
    assert release_one(entry, demo_release, epochs=3).status == "kept"  # early_lr has no epochs to change
    mm = next(r for r in release_set("demo") if r.name == "mm_dynamics_protein+rna")
    assert release_one(mm, demo_release, epochs=3).status == "trained"  # another recipe: retrained


def test_release_set_names_its_tasks():
    assert len(RELEASE) >= 14 and {r.task for r in RELEASE} == {"cells", "rosmap", "derm7pt", "pbc"}
    with pytest.raises(MMXError, match="no release for task 'nope'"):
        release_set("nope")


# ------------------------------------------------------------------ the shipped checkpoints
def test_every_release_entry_is_shipped_within_the_size_budget():
    missing = [f"{r.task}/{r.name}" for r in RELEASE if (r.task, r.name) not in SHIPPED]
    assert not missing, f"run python train.py --release: {missing}"
    assert all(m.error is None for m in SHIPPED.values())
    total = sum(m.size_bytes for m in SHIPPED.values())
    assert len(SHIPPED) >= 14 and total <= 80e6, total


def _task_of(card: dict):
    return get_task(card["task"], **card.get("task_options", {}))


@pytest.mark.parametrize("key", sorted(SHIPPED), ids="/".join)
def test_shipped_model_loads_predicts_and_gives_back_its_card_metrics(key, data_dir, one_thread):
    task, name = key
    model = load(task, name, root=REPO_ROOT / "checkpoints")
    card = model.card
    assert CARD_FIELDS <= set(card) and not card["synthetic"]
    assert card["data"]["sources"] and card["data"]["research_only"] == (task == "derm7pt")
    assert all(s["title"] and s["licence"] != "SOURCE.md not found" for s in card["data"]["sources"])
    td = _task_of(card)
    # the same samples and labels; the bitwise data hash is not compared: normalised expression
    # (log1p in SIMD code) can differ in the last bit on another CPU, which the metrics below tolerate
    assert td.dataset.class_counts() == card["class_counts"], "the data changed since this model was trained"
    split = td.splits[card["split"]["scheme"]][card["split"]["index"]]
    assert split.name == card["split"]["name"] and len(split.test) == card["sizes"]["test"]
    pred = model.predict(td.dataset, split.test[:3])  # real samples of its task
    assert pred.proba.shape == (3, len(card["classes"])) and np.allclose(pred.proba.sum(1), 1, atol=1e-5)
    result = evaluate(model, task=task)
    for k, v in card["metrics"].items():  # float kernels differ in the last bits between CPUs (AVX2, AVX-512)
        assert result["metrics"][k] == pytest.approx(v, abs=1e-4), k
    again = calibration_record(model, model.check_data(td.dataset), split)  # the card's calibration holds here
    rec = card["calibration"]
    assert again["ece"] == pytest.approx(rec["ece"], abs=1e-4)
    for k in ("coverage", "mean_set_size"):
        assert again["conformal"][k] == pytest.approx(rec["conformal"][k], abs=1e-2), k
    assert rec["conformal"]["coverage"] >= 0.8, "the 90 % sets miss badly on the test part"


def test_unknown_shipped_model_names_the_available_ones():
    with pytest.raises(MMXError, match="no shipped model pbc/nope; available: .*pbc/cnn"):
        load("pbc", "nope", root=REPO_ROOT / "checkpoints")


def test_a_broken_card_is_listed_with_its_problem(tmp_path):
    shutil.copytree(REPO_ROOT / "checkpoints" / "pbc" / "cnn", tmp_path / "pbc" / "cnn")
    (tmp_path / "pbc" / "cnn" / "card.json").write_text("{")
    [m] = available(tmp_path)
    assert m.card is None and "card is not valid JSON" in m.error


# ------------------------------------------------------------------ evaluate / predict on your own data
def _expected(model, data, rows: np.ndarray) -> dict:
    y = data.y[torch.as_tensor(rows)].numpy()
    proba = model.predict(data, rows).proba
    return metrics.compute(y, proba, with_auroc=True, labels=np.unique(y).tolist())


def test_evaluate_an_image_folder(data_dir, tmp_path, one_thread):
    """A few real test images of three classes in class folders: the CLI's numbers are the
    model's on those same images of the pbc task."""
    model = load("pbc", "cnn", root=REPO_ROOT / "checkpoints")
    td = _task_of(model.card)
    ds = td.dataset
    test = td.splits[model.card["split"]["scheme"]][0].test
    rows = np.concatenate([test[ds.y[torch.as_tensor(test)].numpy() == k][:4] for k in (0, 3, 7)])
    pbc_dir = data_dir / "blood_cells" / "pbc_acevedo2020"
    for i in rows:
        target = tmp_path / "images" / ds.classes[int(ds.y[i])] / f"{i}_{ds.ids[i].split('/')[-1]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pbc_dir / ds.ids[i], target)
    code = train.main(["--evaluate", str(REPO_ROOT / "checkpoints" / "pbc" / "cnn"), "--data-dir",
                       str(tmp_path / "images"), "--out", str(tmp_path / "out")])
    assert code == 0
    result = json.loads((tmp_path / "out" / "evaluate_pbc_cnn.json").read_text())
    assert result["n"] == 12 and sorted(result["classes_present"]) == sorted(ds.classes[k] for k in (0, 3, 7))
    order = np.argsort([f"{ds.classes[int(ds.y[i])]}/{i}_" for i in rows])  # the reader's order: class, then file
    assert result["metrics"] == pytest.approx(_expected(model, ds, rows[order]), abs=1e-6)


def test_evaluate_and_predict_an_h5ad(data_dir, tmp_path, one_thread):
    """Raw counts of real test cells in an .h5ad (RNA genes and ``protein:`` columns): the CLI
    normalises them as in training and scores exactly what the model scores on the task's rows."""
    model = load("cells", "mm_dynamics_protein+rna", root=REPO_ROOT / "checkpoints")
    td = _task_of(model.card)
    ds = td.dataset
    rows = np.asarray(td.splits[model.card["split"]["scheme"]][0].test[:40])
    ids = ds.ids[rows]
    cite = data_dir / "cite_bmmc"
    rna = ad.read_h5ad(cite / "openproblems_bmmc_cite_starter.output_rna.h5ad")
    prot = ad.read_h5ad(cite / "openproblems_bmmc_cite_starter.output_mod2.h5ad")
    counts = np.hstack([rna[ids].layers["counts"].toarray(), prot[ids].layers["counts"].toarray()])
    var = list(rna.var_names) + [f"protein:{v}" for v in prot.var_names]
    labels = [ds.classes[int(k)] for k in ds.y[torch.as_tensor(rows)]]
    a = ad.AnnData(counts.astype(np.float32), obs=pd.DataFrame({"lineage": labels}, index=ids),
                   var=pd.DataFrame(index=var))
    a.write_h5ad(tmp_path / "cells.h5ad")
    folder = str(REPO_ROOT / "checkpoints" / "cells" / "mm_dynamics_protein+rna")
    assert train.main(["--evaluate", folder, "--data-dir", str(tmp_path / "cells.h5ad"), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "evaluate_cells_mm_dynamics_protein+rna.json").read_text())
    assert result["n"] == 40 and any("raw counts" in n for n in result["notes"])
    assert result["metrics"] == pytest.approx(_expected(model, ds, rows), abs=1e-6)
    assert train.main(["--predict", folder, "--data-dir", str(tmp_path / "cells.h5ad"), "--out", str(tmp_path)]) == 0
    frame = pd.read_csv(tmp_path / "predict_cells_mm_dynamics_protein+rna.csv")
    assert list(frame["id"]) == list(ids)
    np.testing.assert_allclose(frame[[f"p_{c}" for c in ds.classes]].to_numpy(), model.predict(ds, rows).proba,
                               atol=2e-6)


def test_evaluate_refuses_what_it_cannot_score(tmp_path, capsys, monkeypatch):
    folder = str(REPO_ROOT / "checkpoints" / "pbc" / "cnn")
    assert train.main(["--evaluate", folder, "--data-dir", str(tmp_path / "nothing")]) == 2
    assert f"{tmp_path / 'nothing'}: no such file or folder" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # a task's name is not a path: it says how to give the task
    assert train.main(["--evaluate", folder, "--data-dir", "pbc"]) == 2
    assert "to score the test split of task 'pbc', give it as a task (train.py: --task pbc)" in capsys.readouterr().err
    assert train.main(["--evaluate", folder]) == 2
    assert "give the data to score: --data-dir PATH" in capsys.readouterr().err
