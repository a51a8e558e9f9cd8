"""What every benchmark report shares: peak-memory probes, the machine header and Markdown tables.

Peak resident memory is read from the kernel's high-water mark, reset before each measured step
(``/proc/self/clear_refs``) so one process can time several methods; where the reset is refused
the mark only grows and the report says so.
"""
from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20


def current_rss() -> int:
    """Bytes resident now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """Bytes resident at the high-water mark (since the process began or the last reset)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak(device: torch.device | str = "cpu") -> bool:
    """Free what can be freed, then restart the high-water marks; False when the kernel refuses the
    RSS reset (the peak then covers everything before too)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so it is not reused uncounted
    except (OSError, AttributeError):
        pass
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cuda_peak(device: torch.device | str) -> int | None:
    """Bytes of CUDA memory allocated at the peak since the last reset (None off CUDA)."""
    return torch.cuda.max_memory_allocated() if torch.device(device).type == "cuda" else None


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else platform.processor() or "unknown"


def command_line(script: str) -> str:
    """The command as it was run (with the thread variable when set), for the report to repeat."""
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    return f"{env}python bench/{script} {shlex.join(sys.argv[1:])}".rstrip()


def machine_lines() -> list[str]:
    """Machine, software, threads and the load average: timings on a shared machine are upper bounds."""
    load = os.getloadavg()
    busy = ("above the CPU count: other processes competed for the CPUs, the times are upper bounds"
            if load[0] > (os.cpu_count() or 1) else "at or below the CPU count")
    return [f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}",
            f"torch {torch.__version__} with {torch.get_num_threads()} intra-op threads "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), Python {platform.python_version()}",
            f"load average (1, 5, 15 min) at start: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} ({busy})"]


def load_now() -> str:
    """The load average now, for a report to show how busy the machine was while it measured."""
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def md_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown pipe table (it also reads as plain text on a terminal)."""
    cells = [[str(c) for c in r] for r in rows]
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
                     + ["| " + " | ".join(r) + " |" for r in cells])


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def write_report(script: str, out: str, title: str, started: str, header: list[str], body: str) -> Path:
    """``results/bench/<out>.md``: ``title``, when and by which command of ``bench/<script>`` it was
    measured, the machine (``header``, read at the start), ``body``, and the load average at the end."""
    from core.train.results import atomic_write_text

    path = ROOT / "results" / "bench" / f"{out}.md"
    atomic_write_text(path, f"# {title}\n\nMeasured {started} by `bench/{script}`:\n\n    {command_line(script)}"
                      "\n\n```\n" + "\n".join(header) + "\n```\n\n" + body
                      + f"\n\nLoad average at the end: {load_now()}.\n")
    return path
