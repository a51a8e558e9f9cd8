"""Copies that keep the data's own bytes: whole files, and line subsets of text tables. The bundled
examples are made of these, so every value in them is a line of an original data file."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from core.errors import MMXError


def copy_file(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def copy_lines(src: Path, dst: Path, keep: list[int] | Callable[[str], bool], header: bool = True) -> Path:
    """Write ``src``'s header line (when ``header``) and the data lines ``keep`` selects, byte for byte and
    in the file's order: ``keep`` is a list of data-line numbers (0-based, after the header) or a test
    of a line's first comma-separated field. Raises :class:`MMXError` when a listed line is missing."""
    lines = src.read_bytes().splitlines(keepends=True)
    head, body = (lines[:1], lines[1:]) if header else ([], lines)
    if callable(keep):
        chosen = [ln for ln in body if keep(ln.split(b",", 1)[0].decode())]
    else:
        if keep and max(keep) >= len(body):
            raise MMXError(f"has {len(body)} data lines, line {max(keep)} was asked for", src)
        chosen = [body[i] for i in sorted(set(keep))]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(b"".join(head + chosen))
    return dst
