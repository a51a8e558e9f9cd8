"""Data-parallel training under ``torchrun`` with the gloo backend and two CPU processes: the ranks
split every epoch's rows, hold identical weights, rank 0 alone writes, and the table matches one
process within tolerance."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from core.train import distributed

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_single_process_is_untouched():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.rank_batch_size(64) == 64 and distributed.rank_batch_size(None) is None


def test_ranks_share_each_epoch_and_keep_identical_weights(tmp_path):
    _torchrun(str(ROOT / "tests" / "ddp_probe.py"), str(tmp_path))
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in runs] == [2, 2]
    for a, b in zip(runs[0]["seen"], runs[1]["seen"]):  # one entry per epoch
        assert len(a) == len(b)  # equal shares: the same number of steps on both ranks
        assert len(set(a) & set(b)) <= 1  # disjoint but for DistributedSampler's padding row
    assert runs[0]["seen"][0] != runs[0]["seen"][1]  # reshuffled every epoch
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert w0.keys() == w1.keys() and all(np.array_equal(w0[k].numpy(), w1[k].numpy()) for k in w0)


def test_two_processes_match_one_on_rosmap_and_only_rank_0_writes(data_dir, tmp_path):
    """MM dynamics on ROSMAP's MOGONET split, full batch: two ranks each take half the patients and
    average their gradients, so the test metrics match one process up to rounding and dropout draws."""
    args = ["--task", "rosmap", "--method", "mm_dynamics", "--epochs", "300", "--set", "lr=0.0003",
            "--set", "lr_step=150", "--seeds", "0", "--device", "cpu", "--data-dir", str(data_dir), "--name", "t"]
    _torchrun("train.py", *args, "--out", str(tmp_path / "ddp"))
    one = subprocess.run([sys.executable, "train.py", *args, "--out", str(tmp_path / "one")], cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "ddp").rglob("*") if p.is_file()) == ["t.json", "t.md"]
    ddp, single = (json.loads((tmp_path / d / "rosmap" / "t.json").read_text()) for d in ("ddp", "one"))
    assert ddp["processes"] == 2 and single["processes"] == 1
    (a,), (b,) = ddp["rows"][0]["runs"], single["rows"][0]["runs"]
    assert b["metrics"]["accuracy"] > 0.7 and b["metrics"]["auroc"] > 0.8  # one process learned
    for key in ("accuracy", "auroc"):
        assert abs(a["metrics"][key] - b["metrics"][key]) <= 0.04, (key, a["metrics"], b["metrics"])
