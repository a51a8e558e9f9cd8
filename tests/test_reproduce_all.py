"""``train.py --all``: the quick run covers every step and writes its summary; a rerun skips what
is up to date, reruns what changed, and one failing or interrupted step leaves the others' records."""
from __future__ import annotations

import dataclasses
import json

import pytest

import train
from core import reproduce
from core.errors import MMXError
from core.models.registry import get_method
from core.paths import REPO_ROOT
from core.reproduce import MANIFEST, capped_epochs, plan, recorded_plan
from core.shipped import available, stale_weights


def _run(out, capsys) -> tuple[int, dict[str, str]]:
    """Exit status and each step's status from the printed summary."""
    code = train.main(["--all", "--quick", "--device", "cpu", "--out", str(out)])
    text = capsys.readouterr().out
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and " | " in line]
    return code, {r[0][2:]: r[2] for r in rows[2:]}


@pytest.fixture(scope="module")
def quick(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("quick")
    code = train.main(["--all", "--quick", "--device", "cpu", "--out", str(out)])
    return out, code


def test_quick_run_covers_every_step(quick):
    out, code = quick
    assert code == 0
    manifest = json.loads((out / MANIFEST).read_text())
    for step in plan(quick=True):
        record = manifest["steps"].get(step.name)
        if step.not_quick:
            assert record is None
            continue
        if step.task not in ("demo", "") and step.task not in {t for r in manifest["steps"].values()
                                                              for t in r["inputs"]["data"]}:
            continue  # that task's data is not on this machine: reported as skipped
        assert record is not None, step.name
        assert record["files"] and all((REPO_ROOT / f).is_file() or (out / f).is_file() or
                                       __import__("pathlib").Path(f).is_file() for f in record["files"])
        assert record["inputs"]["quick"] is True
    assert (out / "checkpoints" / "demo").is_dir() and (out / "checkpoints" / "encoders" / "resnet_simclr").is_dir()
    assert "SYNTHETIC" in (out / "demo" / "ablation_fi_mi.md").read_text()


def test_a_rerun_skips_everything_up_to_date(quick, capsys):
    out, _ = quick
    code, status = _run(out, capsys)
    assert code == 0
    assert set(status) == {s.name for s in plan(quick=True)}
    assert set(status.values()) <= {"up to date", "skipped", "not run in quick mode"}
    assert status["cells/ablation_fi_mi"] == status["release/demo"] == status["pretrain"] == "up to date"


def test_a_changed_code_hash_reruns_that_step_only(quick, capsys):
    out, _ = quick
    path = out / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["steps"]["cells/masked_image"]["code"] = "0" * 64
    path.write_text(json.dumps(manifest))
    code, status = _run(out, capsys)
    assert code == 0 and status["cells/masked_image"] == "run"
    assert [s for s, v in status.items() if v == "run"] == ["cells/masked_image"]
    assert json.loads(path.read_text())["steps"]["cells/masked_image"]["code"] == reproduce.code_hash(
        "core.experiments.mmdynamics")


def test_a_table_of_models_retrained_since_is_rerun(quick, capsys):
    out, _ = quick
    table = out / "demo" / "calibration.json"
    payload = json.loads(table.read_text())
    key = next(iter(payload["weights"]))
    payload["weights"][key] = {"model.safetensors": "0" * 64}  # as if written before the model was retrained
    table.write_text(json.dumps(payload))
    code, status = _run(out, capsys)
    assert code == 0 and [s for s, v in status.items() if v == "run"] == ["cells/calibration"]
    assert not stale_weights(json.loads(table.read_text())["weights"], out / "checkpoints")


def test_every_committed_table_of_a_shipped_model_describes_the_shipped_weights():
    """A table that read a shipped model records its weights' sha256; retraining the model without
    rerunning the table fails here (rerun it: ``python train.py --all`` picks exactly those)."""
    readers = [s for s in plan() if s.reads_release]
    assert {s.name for s in readers} >= {f"{t}/calibration" for t in reproduce.RELEASED}
    for step in readers:
        path = REPO_ROOT / "results" / f"{step.name}.json"
        recorded = json.loads(path.read_text()).get("weights")
        assert recorded, f"{path} records no weights"
        stale = stale_weights(recorded)
        assert not stale, f"{path} is stale ({'; '.join(stale)}): rerun `python train.py --experiment {step.name}`"
        assert reproduce.describes_release(step, REPO_ROOT / "results", REPO_ROOT / "checkpoints")
        if step.name.endswith("/calibration"):  # the numbers too: the cards' calibration is the table's
            records = json.loads(path.read_text())["records"]
            for m in available():
                if m.task == step.task:
                    card, mine = m.card["calibration"], records[m.name]
                    assert mine["temperature"] == pytest.approx(card["temperature"], abs=2e-3), (path, m.name)
                    assert mine["conformal"]["mean_set_size"] == pytest.approx(card["conformal"]["mean_set_size"],
                                                                               abs=1e-9), (path, m.name)


def test_stale_weights_names_retrained_and_removed_models(tmp_path):
    folder = tmp_path / "pbc" / "cnn"
    folder.mkdir(parents=True)
    (folder / "card.json").write_text(json.dumps({"files": {"model.safetensors": "a" * 64}}))
    assert stale_weights({"pbc/cnn": {"model.safetensors": "a" * 64}}, tmp_path) == []
    assert stale_weights({"pbc/cnn": {"model.safetensors": "b" * 64}}, tmp_path) == [
        "pbc/cnn: its weights changed since the table was written"]
    assert "no longer shipped" in stale_weights({"pbc/gone": {"model.safetensors": "a" * 64}}, tmp_path)[0]


def _patched_plan(monkeypatch, broken: str, error: BaseException) -> None:
    real = reproduce.plan

    def run(**_):
        raise error

    monkeypatch.setattr(reproduce, "plan", lambda quick=False: [
        dataclasses.replace(s, run=run) if s.name == broken else s for s in real(quick)])


def test_a_failing_step_is_reported_and_the_others_still_run(quick, capsys, monkeypatch):
    out, _ = quick
    path = out / MANIFEST
    manifest = json.loads(path.read_text())
    for name in ("cells/ablation_fi_mi", "cells/masked_image"):
        del manifest["steps"][name]
    path.write_text(json.dumps(manifest))
    _patched_plan(monkeypatch, "cells/ablation_fi_mi", RuntimeError("boom"))
    code, status = _run(out, capsys)
    assert code == 1 and status["cells/ablation_fi_mi"] == "failed" and status["cells/masked_image"] == "run"
    steps = json.loads(path.read_text())["steps"]
    assert "cells/ablation_fi_mi" not in steps and "cells/masked_image" in steps


def test_an_interrupted_run_keeps_the_finished_records(quick, capsys, monkeypatch):
    out, _ = quick
    before = json.loads((out / MANIFEST).read_text())["steps"]
    _patched_plan(monkeypatch, "cells/ablation_fi_mi", KeyboardInterrupt())
    code, status = _run(out, capsys)
    assert code == 130 and status["cells/ablation_fi_mi"] == "interrupted" and "cells/masked_image" not in status
    assert json.loads((out / MANIFEST).read_text())["steps"] == before


def test_epoch_cap_reaches_every_training_stage_and_is_undone(demo):
    ds = demo.dataset
    with capped_epochs(1):
        m = get_method("hypermm", ds.specs, ds.classes)
        assert m.config.train.epochs == m.config.rho_train.epochs == 1
    assert get_method("hypermm", ds.specs, ds.classes).config.train.epochs > 1


def test_quick_mode_refuses_the_committed_folders(tmp_path):
    with pytest.raises(MMXError, match="other than the committed"):
        reproduce.reproduce_all(REPO_ROOT / "results", quick=True, progress=False)
    with pytest.raises(MMXError, match="other than the committed"):
        reproduce.reproduce_all(tmp_path, checkpoints=REPO_ROOT / "checkpoints", quick=True, progress=False)


def test_the_dry_run_totals_the_recorded_times():
    text = recorded_plan(REPO_ROOT / "results", REPO_ROOT / "checkpoints")
    for step in plan():
        assert f"| {step.name} |" in text
    assert "| **total** |" in text
