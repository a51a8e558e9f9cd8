"""Cold and warm load times of the image tasks.

Cold: an empty image cache (a fresh temporary MMX_CACHE_DIR) and a new process, so files are
decoded. Warm: the same cache, a new process. Each load runs in its own interpreter so the
in-process task cache does not hide anything.

    python bench/data_load.py [--tasks cells,derm7pt] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNIPPET = ("import time,sys; t=time.perf_counter(); from core.data.tasks import get_task; i=time.perf_counter(); "
           "get_task(sys.argv[1]); print(i-t, time.perf_counter()-i)")


def load_seconds(task: str, cache: str) -> tuple[float, float]:
    """(seconds to import the package incl. torch, seconds for ``get_task``) in a new process."""
    env = {**os.environ, "MMX_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", SNIPPET, task], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True)
    imp, load = out.stdout.strip().splitlines()[-1].split()
    return float(imp), float(load)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="cells,derm7pt")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"median of {args.repeats}, a new process each; 'load' is get_task() alone, 'import' the package + torch")
    print(f"{'task':<10} {'cold load s':>12} {'warm load s':>12} {'cold/warm':>10} {'import s':>9}")
    for task in args.tasks.split(","):
        colds, warms, imports = [], [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                i, c = load_seconds(task, cache)
                colds.append(c)
                imports.append(i)
                warms.append(load_seconds(task, cache)[1])
        med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
        cold, warm = med(colds), med(warms)
        print(f"{task:<10} {cold:12.2f} {warm:12.2f} {cold / warm:9.1f}x {med(imports):9.2f}")


if __name__ == "__main__":
    main()
