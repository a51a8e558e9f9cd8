"""Nothing lost or torn: ``train.py --release`` and an experiment, SIGKILLed at several points
(as a file or folder is about to appear, with its bytes cut in half, and from outside at a moment
the test does not choose), leave every finished file whole, nothing partial under a visible name,
and a rerun completes what was missing (keeping the finished checkpoints).

The precise kill points come from a driver that runs ``train.py`` with ``os.rename`` / ``os.replace``
wrapped: at the N-th rename into the output folder it truncates the temporary file (or the largest
file of a staged folder) to half and SIGKILLs its own process before the rename happens."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from core.checkpoint import CARD, load_checkpoint, read_card
from core.release import release_set
from core.results_index import collect, zip_results
from core.shipped import available

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = [r.name for r in release_set("demo")]
DRIVER = '''
import os, signal, sys, runpy
from pathlib import Path

out, kill_at = Path(sys.argv[1]).resolve(), int(sys.argv[2])
{setup}
renames = 0


def tear(src):
    """Cut the uncommitted bytes in half (a write stopped mid-way), never a visible file's."""
    if not src.name.startswith("."):
        return
    files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
    if files:
        big = max(files, key=lambda p: p.stat().st_size)
        os.truncate(big, big.stat().st_size // 2)


def hooked(real):
    def rename(src, dst, *args, **kwargs):
        global renames
        if Path(dst).resolve().is_relative_to(out):
            renames += 1
            print(f"rename {{renames}}: {{Path(src).name}} -> {{Path(dst).name}}", file=sys.stderr, flush=True)
            if renames == kill_at:
                tear(Path(src))
                os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *args, **kwargs)
    return rename


os.rename, os.replace = hooked(os.rename), hooked(os.replace)
sys.argv = ["train.py", *sys.argv[3:]]
runpy.run_path("train.py", run_name="__main__")
'''
QUICK_ABLATION = '''
import dataclasses
from core.experiments import mmdynamics as exp
exp.ABLATION_SEEDS = (0,)
exp.ABLATION_ROWS = [dataclasses.replace(r, config={**r.config, "epochs": 1}) for r in exp.ABLATION_ROWS]
'''


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _run(tmp_path: Path, out: Path, args: list[str], kill_at: int = 0, setup: str = "") -> subprocess.CompletedProcess:
    """``train.py args`` under the driver: SIGKILLed at the ``kill_at``-th rename into ``out`` (0: never)."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(setup=setup))
    return subprocess.run([sys.executable, str(driver), str(out), str(kill_at), *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)


def _killed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


def _visible(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in _visible(root)}


def _whole_checkpoints(root: Path) -> set[str]:
    """The checkpoint folders under ``root``, each checked whole: every visible file is in a folder
    whose card lists exactly its files, and the folder loads (every sha256 verified)."""
    folders = {p.parent for p in _visible(root)}
    for folder in folders:
        card = read_card(folder)
        assert {p.name for p in folder.iterdir() if not p.name.startswith(".")} == {CARD, *card["files"]}, folder
        load_checkpoint(folder)
    listed = available(root)
    assert all(m.error is None for m in listed) and {m.folder for m in listed} == folders
    return {f.name for f in folders}


def test_killed_release_keeps_finished_models_and_the_rerun_completes(tmp_path):
    out = tmp_path / "checkpoints"
    args = ["--release", "--task", "demo", "--epochs", "1", "--checkpoint-dir", str(out), "--device", "cpu"]
    demo = out / "demo"

    # 1. killed as the second model's folder is about to appear, its staged weights torn
    _killed(_run(tmp_path, out, args, kill_at=2))
    assert _whole_checkpoints(out) == {ENTRIES[0]}
    assert any(p.name.startswith(f".{ENTRIES[1]}.") for p in demo.iterdir())  # the torn stage, hidden

    # 2. train.py itself, killed from outside as soon as a fourth card is visible (wherever it then is)
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and len(list(demo.glob(f"[!.]*/{CARD}"))) < 4:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = _whole_checkpoints(out)
    assert finished >= set(ENTRIES[:4])
    before = _digests(out)

    # 3. the rerun trains what is missing and keeps what was finished, untouched
    done = _run(tmp_path, out, args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _whole_checkpoints(out) == set(ENTRIES)
    assert re.search(rf"{len(ENTRIES) - len(finished)} trained, {len(finished)} kept", done.stdout), done.stdout
    after = _digests(out)
    assert {k: after[k] for k in before} == before

    # 4. a release of another recipe over it (every model but early_lr is retrained), killed as the
    # second model's new folder is about to replace the old one, moved aside a moment before
    args[args.index("--epochs") + 1] = "2"
    _killed(_run(tmp_path, out, args, kill_at=4))
    assert _whole_checkpoints(out) == set(ENTRIES) - {ENTRIES[1]}
    now = _digests(out)
    new, old = {k for k in now if now[k] != after.get(k)}, {k for k in now if now[k] == after.get(k)}
    assert {k.split("/")[1] for k in new} == {ENTRIES[0]}  # finished in the new recipe
    assert {k.split("/")[1] for k in old} == set(ENTRIES) - set(ENTRIES[:2])  # the previous ones, intact
    (aside,) = [p for p in demo.iterdir() if p.name.startswith(f".{ENTRIES[1]}.") and p.suffix == ".old"]
    assert _digests(aside) == {k.split("/", 2)[2]: v for k, v in after.items() if k.split("/")[1] == ENTRIES[1]}

    # 5. the rerun completes the new recipe
    done = _run(tmp_path, out, args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _whole_checkpoints(out) == set(ENTRIES)
    assert re.search(rf"{len(ENTRIES) - 2} trained, 2 kept", done.stdout), done.stdout  # the new first one, early_lr
    assert {k.split("/")[1] for k, v in _digests(out).items() if after[k] != v} == set(ENTRIES) - {"early_lr"}


def _whole_result(path: Path) -> None:
    """A result file that is complete: JSON parses, Markdown ends its table, figures end their format."""
    data = path.read_bytes()
    if path.suffix == ".json":
        assert json.loads(data)["rows"], path
    elif path.suffix == ".md":
        assert data.endswith(b"\n") and b"Raw per-run numbers" in data, path
    elif path.suffix == ".png":
        assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82"), path
    else:
        assert data.rstrip().endswith({".svg": b"</svg>", ".html": b"</html>"}[path.suffix]), path


def test_killed_experiment_leaves_whole_files_and_the_rerun_completes(tmp_path):
    out = tmp_path / "results"
    args = ["--experiment", "cells/ablation_fi_mi", "--task", "demo", "--out", str(out), "--device", "cpu"]
    table = out / "demo"

    # 1. killed as the first figure is about to appear (after the JSON and the Markdown), its bytes torn
    _killed(_run(tmp_path, out, args, kill_at=3, setup=QUICK_ABLATION))
    assert [p.name for p in _visible(out)] == ["ablation_fi_mi.json", "ablation_fi_mi.md"]
    for p in _visible(out):
        _whole_result(p)
    first = _digests(out)

    # 2. a rerun killed as its Markdown is about to replace the first run's: the first run's stays whole
    _killed(_run(tmp_path, out, args, kill_at=2, setup=QUICK_ABLATION))
    for p in _visible(out):
        _whole_result(p)
    assert _digests(out)["demo/ablation_fi_mi.md"] == first["demo/ablation_fi_mi.md"]

    # 3. the rerun writes every file; the killed runs' temporary files are hidden and are no results
    done = _run(tmp_path, out, args, setup=QUICK_ABLATION)
    assert done.returncode == 0, done.stderr[-3000:]
    files = _visible(out)
    assert {p.suffix for p in files} >= {".json", ".md"} and len(files) >= 3
    for p in files:
        _whole_result(p)
    leftovers = [p for p in table.iterdir() if p.name.startswith(".")]
    assert leftovers and all(p.name.endswith(".tmp") for p in leftovers)
    assert sorted(zipfile.ZipFile(BytesIO(zip_results(out))).namelist()) == [
        f"results/{p.relative_to(out).as_posix()}" for p in files]
    (report,) = [r for g in collect(out) for r in g.reports]
    assert report.md == table / "ablation_fi_mi.md"


@pytest.mark.parametrize("owned", [True, False])
def test_a_checkpoint_folder_is_replaced_whole_or_refused(tmp_path, demo, owned):
    """Saving over a folder replaces it whole (stale files of an older save go with it), and a
    folder holding anything else is refused rather than deleted."""
    from core.checkpoint import save_checkpoint
    from core.errors import MMXError
    from core.models.registry import get_method

    ds, split = demo.dataset, demo.splits[demo.default_split][0]
    m = get_method("early_lr", {k: ds.specs[k] for k in ("rna", "protein")}, ds.classes)
    m.fit(ds, split, seed=0, device="cpu")
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / ("old.skops" if owned else "notes.txt")).write_bytes(b"x")
    if owned:
        save_checkpoint(m, folder)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no stage or old folder left
        assert sorted(p.name for p in folder.iterdir()) == [CARD, "model.safetensors"]
    else:
        with pytest.raises(MMXError, match="notes.txt"):
            save_checkpoint(m, folder)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"] and (folder / "notes.txt").read_bytes() == b"x"
