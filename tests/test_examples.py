"""The real samples bundled in ``examples/``: made by a committed script from the data folder (and
equal to what it makes now), read exactly as the task reads its data, within budget, attributed,
never Derm7pt; and standing in, said so, wherever a task's data folder is missing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import train
from core.data.examples import EXAMPLES_DIR, EXTRACTS, read_examples, write_examples
from core.data.tasks import get_task
from core.errors import DataUnavailable
from core.explain.sample import heldout_cohort
from core.paths import REPO_ROOT
from core.shipped import available, load


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_committed_examples_are_what_the_script_makes_from_the_data_folder(data_dir, tmp_path, one_thread):
    write_examples(data_dir, tmp_path)
    made, committed = _files(tmp_path), _files(EXAMPLES_DIR)
    assert sorted(made) == sorted(committed)
    assert [f for f in made if made[f] != committed[f]] == []


@pytest.mark.parametrize("task", sorted(EXTRACTS))
def test_examples_read_as_the_task_reads_its_data(task, data_dir, one_thread):
    """The same values, classes and specs as the task's own rows of those samples, which are test
    samples of the split every shipped model of the task was scored on (up to ``per_class`` a class)."""
    ex = read_examples(task)
    td = get_task(task, data_dir)
    full = td.dataset
    rows = [{str(i): k for k, i in enumerate(full.ids)}[str(i)] for i in ex.ids]
    sub = full.subset(rows)
    assert ex.specs == sub.specs and ex.classes == sub.classes and torch.equal(ex.y, sub.y)
    for m in full.modalities:
        assert torch.equal(ex.modalities[m], sub.modalities[m]), m
    counts = np.bincount(ex.y.numpy(), minlength=len(ex.classes))
    assert counts.max() == EXTRACTS[task].per_class and counts.min() > 0
    for m in (m for m in available() if m.task == task):
        split = td.splits[m.card["split"]["scheme"]][m.card["split"]["index"]]
        assert set(rows) <= set(split.test.tolist()), m.name


def test_examples_are_small_attributed_and_never_derm7pt():
    files = [p for p in EXAMPLES_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 8 * 2**20
    assert not [p for p in files if "derm" in p.as_posix().lower()]
    for task in EXTRACTS:
        text = (EXAMPLES_DIR / task / "ATTRIBUTION.md").read_text()
        assert "License" in text or "Licence" in text, task
        assert "Citation" in text or "citation" in text, task
    assert {p.relative_to(EXAMPLES_DIR).parts[0] for p in files} == {*EXTRACTS, "README.md"}


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """A data root with no task's folder in it."""
    root = tmp_path / "empty"
    root.mkdir()
    monkeypatch.setenv("MMX_DATA_DIR", str(root))
    return root


@pytest.mark.parametrize("model", ["cells/mm_dynamics", "cells/hypermm", "pbc/cnn", "rosmap/mm_static"])
def test_without_a_data_folder_the_examples_stand_in_and_say_so(model, no_data, one_thread):
    task, name = model.split("/")
    m = load(task, name, root=REPO_ROOT / "checkpoints")
    cohort = heldout_cohort(m)
    n = len(read_examples(task))
    assert cohort.source == f"examples: {n} of the {m.card['sizes']['test']} test {EXTRACTS[task].unit}"
    assert f"No {task} data folder on this machine" in cohort.caveats[0] and f"--download {task}" in cohort.caveats[0]
    assert cohort.sample(0).source == cohort.source and len(cohort.idx) == n
    proba = m.predict(cohort.data, cohort.idx).proba
    assert np.allclose(proba.sum(1), 1, atol=1e-5)


def test_evaluate_a_task_without_its_data_uses_the_examples(no_data, tmp_path, capsys, one_thread):
    folder = str(REPO_ROOT / "checkpoints" / "rosmap" / "mm_dynamics")
    assert train.main(["--evaluate", folder, "--task", "rosmap", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "No rosmap data folder on this machine" in out and "on examples: 30 of the 106 test patients: 30" in out
    result = json.loads((tmp_path / "evaluate_rosmap_mm_dynamics.json").read_text())
    assert result["n"] == 30 and result["source"].startswith("examples")


def test_a_task_without_data_or_examples_says_how_to_get_it(no_data):
    m = load("derm7pt", "cnn", root=REPO_ROOT / "checkpoints")
    with pytest.raises(DataUnavailable, match=r"http://derm\.cs\.sfu\.ca.*--download derm7pt --from"):
        heldout_cohort(m)
