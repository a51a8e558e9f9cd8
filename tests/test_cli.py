"""The command line (train.py): --set (type-checked, STAGE.KEY), --epochs (every training stage),
--mask and --target reach the fitted methods and the written tables."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import train
from core import metrics
from core.errors import MMXError
from core.experiments import runner
from core.models.registry import get_method, make_config, method_entry, training_stages
from core.train.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _rows(out: Path, task: str) -> list[dict]:
    js = list((out / task).glob("*.json"))
    assert len(js) == 1 and js[0].with_suffix(".md").is_file()
    return json.loads(js[0].read_text())["rows"]


@pytest.fixture
def built(monkeypatch):
    """The methods the runner builds during a CLI run."""
    methods = []

    def spy(*args, **kwargs):
        methods.append(get_method(*args, **kwargs))
        return methods[-1]

    monkeypatch.setattr(runner, "get_method", spy)
    return methods


def test_set_reaches_fitted_config_and_json(tmp_path, one_thread, built):
    argv = ["--task", "demo", "--method", "late_mlp", "--epochs", "1", "--seeds", "0", "--out", str(tmp_path),
            "--set", "lr=0.005", "--set", "dropout=0.3", "--set", "patience=None", "--set", "augment=true"]
    assert train.main(argv) == 0
    assert built and all(m.config.train.lr == 0.005 and m.config.dropout == 0.3 for m in built)
    assert all(m.config.train.patience is None and m.config.train.augment is True for m in built)
    config = _rows(tmp_path, "demo")[0]["row"]["config"]
    assert config["train"]["lr"] == 0.005 and config["dropout"] == 0.3 and config["train"]["epochs"] == 1
    assert config["train"]["patience"] is None and config["train"]["augment"] is True


def test_set_refuses_a_value_of_the_wrong_type(tmp_path, capsys):
    assert train.main(["--task", "demo", "--method", "late_mlp", "--set", "patience=never",
                       "--out", str(tmp_path)]) == 2
    assert "setting 'patience' expects int or None, got 'never'" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()  # refused before anything ran
    cls = method_entry("late_mlp").config_cls
    with pytest.raises(MMXError, match="'augment' expects bool"):
        make_config(cls, {"augment": "yes"})
    with pytest.raises(MMXError, match="'lr' expects float"):
        make_config(cls, {"lr": "fast"})
    with pytest.raises(MMXError, match="'dropout' expects float"):
        make_config(cls, {"dropout": [0.1]})
    with pytest.raises(MMXError, match="'epochs' expects int"):
        make_config(cls, {"epochs": 2.5})
    with pytest.raises(MMXError, match="'train' expects a TrainConfig"):
        make_config(cls, {"train": 3})
    with pytest.raises(MMXError, match="'modality_weights' expects a dict of str to float"):
        make_config(method_entry("mm_static").config_cls, {"modality_weights": {"rna": "heavy"}})


def test_set_converts_text_and_python_values():
    cls = method_entry("late_mlp").config_cls
    cfg = make_config(cls, {"lr": 1, "epochs": "7", "patience": "none", "augment": "0", "dropout": "0.25"})
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
    assert cfg.train.epochs == 7 and cfg.train.patience is None and cfg.train.augment is False
    assert cfg.dropout == 0.25
    for text, value in (("true", True), ("True", True), ("1", True), ("false", False), ("False", False)):
        assert make_config(cls, {"class_weighted": text}).train.class_weighted is value
    assert make_config(method_entry("early_mlp").config_cls, {"hidden": "64,32"}).hidden == (64, 32)
    assert make_config(method_entry("guidance").config_cls, {"superior": ["image"]}).superior == ("image",)
    static = make_config(method_entry("mm_static").config_cls, {"modality_weights": "{'rna': 1, 'protein': 0.5}"})
    assert static.modality_weights == {"rna": 1.0, "protein": 0.5}
    assert make_config(method_entry("mcat").config_cls, {"guide": "None"}).guide is None
    stage = TrainConfig(epochs=3)
    assert make_config(cls, {"train": stage}).train is stage


def test_set_without_equals_is_a_clean_error(tmp_path, capsys):
    for option, item, message in (("--set", "C", "error: --set expects KEY=VALUE, got 'C'"),
                                  ("--set", "=3", "error: --set expects KEY=VALUE, got '=3'"),
                                  ("--mask", "image", "error: --mask expects MODALITY=MODE, got 'image'")):
        assert train.main(["--task", "demo", "--method", "late_mlp", option, item, "--out", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err
    done = subprocess.run([sys.executable, "train.py", "--task", "demo", "--method", "late_mlp", "--set", "C"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "error: --set expects KEY=VALUE, got 'C'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("method, stages", [("hypermm", ("train", "rho_train")),
                                            ("guidance", ("train", "guide_train", "decoder_train"))])
def test_epochs_reaches_every_training_stage(method, stages):
    assert training_stages(method_entry(method).config_cls) == stages
    default = train.method_config(method, [])
    assert len({getattr(default, s).epochs for s in stages} | {3}) > 1  # 3 is not already everywhere
    cfg = train.method_config(method, [], epochs=3)
    assert {s: getattr(cfg, s).epochs for s in stages} == {s: 3 for s in stages}
    # the other stage settings stay the method's own
    assert all(getattr(cfg, s).patience == getattr(default, s).patience for s in stages)
    # a library caller's plain epochs= still sets the first stage only (the experiments rely on it)
    plain = make_config(method_entry(method).config_cls, {"epochs": 3})
    assert plain.train.epochs == 3 and all(getattr(plain, s) == getattr(default, s) for s in stages[1:])


def test_epochs_refused_for_a_method_without_training_stages(capsys):
    assert train.main(["--task", "demo", "--method", "early_lr", "--epochs", "3"]) == 2
    assert "has no training stage" in capsys.readouterr().err


def test_dotted_keys_address_one_stage():
    cfg = train.method_config("hypermm", ["rho_train.epochs=5", "train.epochs=3", "rho_train.lr=0.01"])
    assert (cfg.train.epochs, cfg.rho_train.epochs, cfg.rho_train.lr) == (3, 5, 0.01)
    assert cfg.train.lr == train.method_config("hypermm", []).train.lr
    g = train.method_config("guidance", ["guide_train.lr=0.001", "lr=0.02"])
    assert g.guide_train.lr == 0.001 and g.train.lr == 0.02 and g.decoder_train.lr == 1e-3
    # a stage setting given with --epochs wins for that stage; a flat key sets train
    both = train.method_config("hypermm", ["rho_train.epochs=2"], epochs=4)
    assert (both.train.epochs, both.rho_train.epochs) == (4, 2)
    assert train.method_config("hypermm", ["epochs=9"], epochs=4).train.epochs == 9
    with pytest.raises(MMXError, match=r"no setting 'rho_trian\.epochs'.*training stages: train, rho_train"):
        train.method_config("hypermm", ["rho_trian.epochs=5"])
    with pytest.raises(MMXError, match=r"no setting 'rho_train\.epoch'.*backbone.*each with epochs"):
        train.method_config("hypermm", ["rho_train.epoch=5"])
    with pytest.raises(MMXError, match=r"'rho_train\.patience' expects int or None"):
        train.method_config("hypermm", ["rho_train.patience=never"])
    with pytest.raises(MMXError, match=r"no setting 'width\.epochs'"):  # not a training stage
        train.method_config("hypermm", ["width.epochs=5"])


def test_cli_hypermm_epochs_end_to_end(tmp_path, one_thread, built):
    argv = ["--task", "demo", "--method", "hypermm", "--epochs", "1", "--seeds", "0",
            "--set", "backbone=small_cnn", "--out", str(tmp_path)]
    assert train.main(argv) == 0
    config = _rows(tmp_path, "demo")[0]["row"]["config"]
    assert config["train"]["epochs"] == 1 and config["rho_train"]["epochs"] == 1
    assert built and all(m.config.train.epochs == 1 and m.config.rho_train.epochs == 1 for m in built)
    assert all(m.fit_result.epochs_run == 2 for m in built)  # one epoch in each of the two stages


def test_cli_mask_changes_the_predictions(tmp_path, one_thread, monkeypatch):
    probas = []
    compute = metrics.compute

    def spy(y, proba, **kw):
        probas.append(np.array(proba))
        return compute(y, proba, **kw)

    monkeypatch.setattr(metrics, "compute", spy)
    base = ["--task", "demo", "--method", "late_mlp", "--epochs", "2", "--seeds", "0"]
    assert train.main([*base, "--out", str(tmp_path / "plain")]) == 0
    plain, probas[:] = list(probas), []
    assert train.main([*base, "--mask", "image=gray", "--out", str(tmp_path / "masked")]) == 0
    masked = list(probas)
    assert plain and len(plain) == len(masked)
    assert all(p.shape == q.shape for p, q in zip(plain, masked))
    assert any(not np.allclose(p, q) for p, q in zip(plain, masked))
    rows = _rows(tmp_path / "masked", "demo")
    assert rows[0]["row"]["mask"] == {"image": "gray"} and _rows(tmp_path / "plain", "demo")[0]["row"]["mask"] is None


def test_cli_target_predicts_a_criterion(tmp_path, data_dir, derm7pt):
    argv = ["--task", "derm7pt", "--method", "early_lr", "--target", "BWV", "--seeds", "0", "--out", str(tmp_path)]
    assert train.main(argv) == 0
    row = _rows(tmp_path, "derm7pt")[0]
    classes = list(derm7pt.dataset.targets["BWV"].classes)
    assert row["row"]["target"] == "BWV" and row["classes"] == classes
    assert classes != list(derm7pt.dataset.classes) and len(classes) == 2
    assert row["runs"] and all(r["n_test"] > 0 for r in row["runs"])


# ------------------------------------------------------------------ a run leaves the repository alone
def _repository_state() -> tuple[str, dict[str, bytes]]:
    """``git status`` of the repository and the bytes of every tracked card and result, so a file that was
    already modified and is changed again also shows."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    tracked = subprocess.run(["git", "ls-files", "checkpoints", "results"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    return status, {f: (ROOT / f).read_bytes() for f in tracked if (ROOT / f).is_file()}


@pytest.fixture
def pbc_images(data_dir, tmp_path):
    """Six real PBC images in class folders (a user's own folder), outside the repository."""
    import shutil

    folder = tmp_path / "user" / "my_images"
    for cls in ("neutrophil", "erythroblast"):
        (folder / cls).mkdir(parents=True)
        for f in sorted((data_dir / "blood_cells" / "pbc_acevedo2020" / cls).glob("*.jpg"))[:3]:
            shutil.copy(f, folder / cls / f.name)
    return folder


@pytest.mark.parametrize("where", ["repository", "elsewhere"])
def test_an_evaluation_or_an_experiment_leaves_the_repository_untouched(where, pbc_images, tmp_path, monkeypatch,
                                                                        capsys, one_thread):
    cwd = ROOT if where == "repository" else pbc_images.parent
    monkeypatch.chdir(cwd)
    images = str(pbc_images if where == "repository" else "my_images/")
    model = str(ROOT / "checkpoints" / "pbc" / "cnn") if where == "elsewhere" else "checkpoints/pbc/cnn"
    before, files_before = _repository_state(), sorted(p.name for p in cwd.iterdir())
    assert train.main(["--evaluate", model, "--data-dir", images]) == 0
    out = capsys.readouterr().out
    assert f"on {pbc_images}: 6 samples" in out and "nothing written" in out
    assert train.main(["--predict", model, "--data-dir", images]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("id,predicted,p_")  # the CSV on stdout
    assert sorted(p.name for p in cwd.iterdir()) == files_before  # no file where it was run either
    assert train.main(["--evaluate", model, "--data-dir", images, "--out", "mine"]) == 0
    written = (Path.cwd() / "mine" / "evaluate_pbc_cnn.json").resolve()
    assert f"wrote {written}" in capsys.readouterr().out and written.is_file()  # the full path
    if where == "repository":
        import shutil

        shutil.rmtree(ROOT / "mine")  # the user asked for it there; only that was written
    assert train.main(["--experiment", "pbc/calibration", "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "pbc" / "calibration.md").is_file()
    assert _repository_state() == before
