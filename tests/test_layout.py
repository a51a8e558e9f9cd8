"""Core is layered in one direction: data -> train loop -> models -> explain / checkpoint / viz
-> experiments. A module may import only its own layer or those below it, and every module
imports on its own in a fresh interpreter (an import cycle hides behind the tests' import order)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (
    ("core", "core.errors", "core.paths", "core.metrics", "core.stats"),
    ("core.data",),
    ("core.train",),
    ("core.models", "core.pretrain"),
    ("core.explain", "core.checkpoint", "core.viz", "core.shipped", "core.evaluate", "core.calibration"),
    ("core.experiments", "core.release", "core.reproduce", "core.report"),
)


def _modules() -> list[str]:
    out = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def layer(module: str) -> int:
    """Index of the most specific layer prefix that ``module`` falls under."""
    best, depth = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and p.count(".") > depth:
                best, depth = i, p.count(".")
    assert best is not None, f"{module} is in no layer"
    return best


def imported_core_modules(path: Path) -> set[str]:
    """Every ``core.*`` module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "core"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "core":
            found.add(node.module)
    return found


def test_layer_lookup():
    assert layer("core.errors") == 0 and layer("core.data.tasks.cells") == 1
    assert layer("core.train.output") == 2 and layer("core.models.mcat") == 3
    assert layer("core.checkpoint") == 4 and layer("core.experiments.runner") == 5


def test_imports_point_down_the_layers():
    upward = []
    for module in _modules():
        rel = Path(*module.split("."))
        path = ROOT / (rel.with_suffix(".py") if (ROOT / rel.with_suffix(".py")).exists() else rel / "__init__.py")
        for target in imported_core_modules(path):
            if layer(target) > layer(module):
                upward.append(f"{module} imports {target}")
    assert not upward, upward


def test_imported_module_finder_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom core.data import dataset\n\ndef g():\n    from core.models.base import Method\n")
    assert imported_core_modules(f) == {"core.data", "core.models.base"}


FORK_IMPORTER = """
import importlib, os, sys, traceback
import numpy, pandas, scipy, sklearn, torch, torchvision, plotly  # third-party only: no core module is loaded
failed = []
for m in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(m)
        except BaseException:
            traceback.print_exc(limit=-1)
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1]:
        failed.append(m)
print("FAILED " + " ".join(failed) if failed else "OK")
"""


def test_every_core_module_imports_alone():
    """Each module of core imported first, in a process where no other core module is loaded: a
    fresh interpreter imports the third-party libraries once, then forks one child per module."""
    r = subprocess.run([sys.executable, "-c", FORK_IMPORTER, *_modules()], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stdout + r.stderr[-3000:]


def test_fork_importer_catches_a_cycle(tmp_path):
    """The importer reports a module that fails on its own (two modules importing each other's names)."""
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyc.b import B\nA = 1\n")
    (pkg / "b.py").write_text("from cyc.a import A\nB = 2\n")
    r = subprocess.run([sys.executable, "-c", FORK_IMPORTER, "cyc.a"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=600)
    assert r.stdout.strip() == "FAILED cyc.a", r.stdout + r.stderr
