"""Atomic writers for results, figures and checkpoints: a file or a folder appears whole or not at
all, whenever the writer is killed, and the temporary ones are hidden (``.<name>.<random>.tmp``)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from core.errors import MMXError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; results and cards are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path, owns: Callable[[str], bool]) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``path`` to fill; when the block ends without error the
    staging folder takes the place of ``path`` (the old one is moved aside, then deleted), so a
    reader or a kill finds the old folder or the new one, never a mix of the two. Between the two
    renames, microseconds apart, ``path`` is briefly absent. An existing ``path`` may hold only
    files for which ``owns(name)`` is true (and hidden ones): replacing it must not delete anything
    else."""
    path = Path(os.path.abspath(path))
    if path.exists():
        if not path.is_dir():
            raise MMXError("not a folder", path)
        strangers = sorted(p.name for p in path.iterdir() if not p.name.startswith(".") and not owns(p.name))
        if strangers:
            raise MMXError(f"the folder also holds {strangers[:5]}: it would be replaced whole; give it a folder of "
                           "its own", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield stage
        stage.chmod(0o755)  # mkdtemp makes the folder private
        if path.exists():
            old = stage.with_suffix(".old")
            os.rename(path, old)
            try:
                os.rename(stage, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(stage, path)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, payload: dict) -> None:
    """Indented JSON, with every list of plain numbers on one line (per-case predictions stay
    readable row by row instead of one number per line)."""
    text = json.dumps(payload, indent=1, default=_default)
    atomic_write_text(path, _NUMBER_LIST.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n")


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.eE+-]+|true|false|null)(?:,\s*(?:-?[\d.eE+-]+|true|false|null))*)\s*\]")


def _default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)
