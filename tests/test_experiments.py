"""One experiment driver of each family run end to end on the synthetic demo task (it has the
cells task's modalities), with tiny training budgets: tables, JSON with per-case predictions,
findings with intervals, the synthetic banner and the command that reproduces the file."""
from __future__ import annotations

import dataclasses
import json

import pytest

from core.experiments import get_experiment
from core.models.early_fusion import EarlyLogReg
from core.train.loop import TrainConfig
from core.viz.export import result_formats


def _check(tmp_path, table: str, experiment: str) -> tuple[str, dict]:
    md = (tmp_path / "demo" / f"{table}.md").read_text()
    payload = json.loads((tmp_path / "demo" / f"{table}.json").read_text())
    assert f"python train.py --experiment {experiment} --task demo" in md
    assert "SYNTHETIC DATA" in md and "95% CI" in md
    return md, payload


def test_mmdynamics_family_driver_on_demo(tmp_path, monkeypatch, one_thread):
    from core.experiments import mmdynamics as exp

    monkeypatch.setattr(exp, "ABLATION_SEEDS", (0,))
    monkeypatch.setattr(exp, "ABLATION_ROWS", [dataclasses.replace(r, config={**r.config, "epochs": 2})
                                               for r in exp.ABLATION_ROWS])
    get_experiment("cells/ablation_fi_mi").run(out_dir=tmp_path, device="cpu", task="demo")
    md, payload = _check(tmp_path, "ablation_fi_mi", "cells/ablation_fi_mi")
    assert "| Both |" in md and (tmp_path / "demo" / f"ablation_fi_mi.{result_formats()[0]}").exists()
    run = payload["rows"][0]["runs"][0]
    assert len(run["y"]) == len(run["pred"]) == len(run["proba"]) == run["n_test"]
    assert "sample standard deviation (ddof 1)" in md


def test_baselines_family_driver_on_demo(tmp_path, monkeypatch, one_thread):
    from core.experiments import baselines as exp

    real = exp.reproduction_rows

    def quick(*a, **k):  # deep rows: 2 epochs; early rows: only LR searches its grid
        return [dataclasses.replace(r, config={**r.config, **({"epochs": 2} if not r.method.startswith("early") else
                                                              {} if r.method == "early_lr" else {"search": False})})
                for r in real(*a, **k)]

    monkeypatch.setattr(exp, "reproduction_rows", quick)
    get_experiment("cells/reproduction_rp").run(out_dir=tmp_path, device="cpu", task="demo")
    md, payload = _check(tmp_path, "reproduction_rp", "cells/reproduction_rp")
    rows = {r["label"]: r for r in payload["rows"]}
    assert len(rows) == 9
    chosen = rows["LR (early)"]["runs"][0]["chosen"]  # the searched C is recorded per run
    assert chosen["C"] in EarlyLogReg.grid["C"]
    assert "cv_f1_weighted" in chosen and "folds" not in chosen
    assert "The best deep model by F1 weighted" in md
    assert f"run by run: LR C {chosen['C']}" in md


def test_guidance_family_driver_on_demo(tmp_path, monkeypatch, one_thread):
    from core.experiments import guidance as exp

    tiny = TrainConfig(epochs=2, batch_size=32, patience=None)
    monkeypatch.setattr(exp, "CELL_SEEDS", (0,))
    monkeypatch.setattr(exp, "CELL_SETTINGS", {
        key: (title, {**cfg, "train": tiny, "guide_train": tiny, "decoder_train": tiny})
        for key, (title, cfg) in exp.CELL_SETTINGS.items()})
    get_experiment("cells/guidance").run(out_dir=tmp_path, device="cpu", task="demo")
    md, payload = _check(tmp_path, "guidance", "cells/guidance")
    assert "| 95% CI of Δ% |" in md and "| Δ% G(I)+I over I |" in md
    run = payload["runs"][0]
    assert set(run["pred"]) == {"S+I", "S", "I", "G(I)", "G(I)+I"} and len(run["y"]) == run["n_test"]


def test_hypermm_family_driver_on_demo(tmp_path, monkeypatch):
    from core.experiments import hypermm as exp

    monkeypatch.setattr(exp, "TRAIN", {**exp.TRAIN, "epochs": 2})
    monkeypatch.setattr(exp, "RHO_EPOCHS", 2)
    monkeypatch.setattr(exp, "CELLS_RATES", (0.0, 0.5))
    get_experiment("cells/hypermm").run(out_dir=tmp_path, device="cpu", task="demo")
    md, payload = _check(tmp_path, "hypermm", "cells/hypermm")
    assert "HyperMM's claimed robustness" in md and "HyperMM minus it" in md
    scenarios = payload["sections"][0]["scenarios"]
    assert len(scenarios) == 2 and scenarios[0]["rows"][0]["runs"][0]["proba"]


def test_unknown_task_for_an_experiment_is_a_clear_error(tmp_path):
    from core.errors import MMXError

    with pytest.raises(MMXError, match="unknown task"):
        get_experiment("cells/ablation_fi_mi").run(out_dir=tmp_path, device="cpu", task="nope")


def test_result_json_keeps_number_lists_on_one_line(tmp_path):
    from core.train.results import write_json

    payload = {"runs": [{"y": [0, 1, 2], "proba": [[0.25, 0.75], [1e-05, -0.5]], "ok": [True, None]}],
               "labels": ["a", "b"], "empty": [], "text": "[1, 2]"}
    write_json(tmp_path / "r.json", payload)
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text) == payload
    assert '"y": [0, 1, 2]' in text and "[0.25, 0.75]" in text and '"ok": [true, null]' in text
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644  # readable by others, like any result file


def test_confusion_counts_match_a_hand_computed_matrix():
    from core.metrics import confusion

    y, pred = [0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 0, 0]
    expected = [[1, 1, 0, 0], [1, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]  # class 3 absent: still a row and column
    assert confusion(y, pred, 4).tolist() == expected


def test_pbc_driver_on_demo(tmp_path, monkeypatch, one_thread):
    from core.experiments import pbc as exp

    # two epochs each, every row at demo's own image size
    monkeypatch.setattr(exp, "ROWS", [dataclasses.replace(r, config={**r.config, "epochs": 2}, image_size=None)
                                      for r in exp.ROWS])
    figures = []
    real_save = exp.save_figure
    monkeypatch.setattr(exp, "save_figure", lambda fig, *a, **k: figures.append(fig) or real_save(fig, *a, **k))
    get_experiment("pbc/cnn").run(out_dir=tmp_path, device="cpu", task="demo")
    md = (tmp_path / "demo" / "cnn.md").read_text()
    payload = json.loads((tmp_path / "demo" / "cnn.json").read_text())
    assert "python train.py --experiment pbc/cnn --task demo" in md and "SYNTHETIC DATA" in md
    assert "| CNN (image) |" in md and "## Per-class recall" in md and "Most frequent confusions" in md
    for cls in ("alpha", "beta", "gamma", "delta"):
        assert f"| {cls} |" in md
    fmt = result_formats()[0]
    assert (tmp_path / "demo" / f"cnn_confusion.{fmt}").exists() and f"cnn_confusion.{fmt}" in md
    n_test = sum(run["n_test"] for run in payload["rows"][0]["runs"])
    (fig,) = figures
    assert fig.data[0].customdata.sum() == n_test == sum(map(sum, payload["confusion"]))
