"""Nothing the project runs can execute code hidden in a file: every ``torch.load`` passes
``weights_only=True``, and no pickle-based loader (``pickle``, ``dill``, ``joblib``,
``cloudpickle``, ``shelve``, pandas' ``read_pickle``, ``np.load(..., allow_pickle=True)``) appears
in the code. Checked on the syntax tree, so comments and strings that name them do not count.

Scanned: ``core/``, ``dashboard/``, ``train.py`` and ``bench/``, everything that runs for a user.
``tests/`` is not: a test may build a pickle to show it is refused (tests/test_checkpoint.py
forges one), and test code never loads a user's file. SECURITY.md must name the limits as
``core.limits`` sets them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("core", "dashboard", "train.py", "bench")
#: modules whose loaders unpickle (importing them at all is refused)
PICKLERS = {"pickle", "_pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve"}
TORCH_LOADS = {"torch.load", "torch.serialization.load"}
NUMPY_LOADS = {"numpy.load"}
PICKLE_METHODS = {"read_pickle", "to_pickle"}  # pandas' (any object's) pickle round trip


def _sources() -> list[Path]:
    out = []
    for name in SCANNED:
        path = ROOT / name
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []
    return out


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted name it was imported as (``np`` -> ``numpy``, ``load`` -> ``torch.load``)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update({(a.asname or a.name.split(".")[0]): (a.name if a.asname else a.name.split(".")[0])
                        for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    return out


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` of a call's function, its first name resolved through the imports."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def violations(source: str, name: str = "<code>") -> list[str]:
    """Every unsafe load in ``source``, as ``name:line: what``."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            bad = sorted({m for m in modules if m.split(".")[0] in PICKLERS})
            if bad:
                found.append(f"{name}:{node.lineno}: imports {', '.join(bad)}")
        if not isinstance(node, ast.Call):
            continue
        func = _dotted(node.func, aliases)
        if isinstance(node.func, ast.Attribute) and node.func.attr in PICKLE_METHODS:
            found.append(f"{name}:{node.lineno}: calls {node.func.attr}")
        elif func in TORCH_LOADS and not _is_const(_keyword(node, "weights_only"), True):
            found.append(f"{name}:{node.lineno}: {func} without weights_only=True")
        elif func in NUMPY_LOADS and not (_keyword(node, "allow_pickle") is None
                                          or _is_const(_keyword(node, "allow_pickle"), False)):
            found.append(f"{name}:{node.lineno}: {func} with allow_pickle other than False")
    return found


def test_no_code_loads_a_pickle():
    files = _sources()
    assert len(files) > 50 and ROOT / "train.py" in files
    found = [v for path in files for v in violations(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("source", [
    "import torch\ntorch.load('x.pt')",
    "import torch\ntorch.load('x.pt', weights_only=False)",
    "import torch\nflag = True\ntorch.load('x.pt', weights_only=flag)",
    "import torch as th\nth.load(f, map_location='cpu')",
    "from torch import load\nload(f)",
    "import torch.serialization\ntorch.serialization.load(f)",
    "import pickle",
    "import pickle as p",
    "from pickle import loads",
    "import dill",
    "from joblib import load",
    "import joblib.numpy_pickle",
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
    "from numpy import load\nload('a.npy', allow_pickle=ok)",
    "import pandas as pd\npd.read_pickle('frame.pkl')",
    "frame.to_pickle('frame.pkl')",
])
def test_each_unsafe_load_is_found(source):
    assert len(violations(source)) == 1, source


@pytest.mark.parametrize("source", [
    "import torch\ntorch.load(path, map_location='cpu', weights_only=True)",
    "import numpy as np\nnp.load('a.npy')\nnp.load('a.npz', allow_pickle=False)",
    "# torch.load(path) and import pickle, in a comment\nx = 1",
    "'''import pickle; pickle.load(f); torch.load(f)'''",
    "text = 'np.load(f, allow_pickle=True)'",
    "import json\njson.load(f)",
    "from safetensors.torch import load\nload(data)",  # not torch.load: safetensors runs no code
])
def test_safe_code_and_mere_mentions_pass(source):
    assert violations(source) == []


def test_security_notes_state_the_limits_in_force():
    from core.limits import DEFAULT_MAX_UPLOAD_MB, DEFAULT_MAX_VALUES, MAX_ASPECT, MAX_PIXELS, MIN_IMAGE_SIDE

    text = (ROOT / "SECURITY.md").read_text()
    assert "SECURITY.md" in (ROOT / "README.md").read_text()
    for phrase in ("MMX_MAX_UPLOAD_MB", "server.maxUploadSize", f"{DEFAULT_MAX_UPLOAD_MB} MB", "MAX_PIXELS",
                   f"{MAX_PIXELS:,} pixels", "MMX_MAX_VALUES", f"{DEFAULT_MAX_VALUES:,} values", "weights_only=True",
                   f"{MIN_IMAGE_SIDE} px a side", f"{MAX_ASPECT}:1", "--server.address 127.0.0.1",
                   f"client_max_body_size {DEFAULT_MAX_UPLOAD_MB}m"):
        assert phrase in text, phrase
