"""Decode each image file once: decoded, resized stacks are cached on disk.

The key is a hash of the file list (path, byte size, modification time) and the target
size, so editing or replacing a file invalidates the cache. Files are written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Callable

import numpy as np
import torch

from core.data.readers import read_image
from core.paths import cache_dir


def _key(paths: list[Path], tag: str) -> str:
    h = hashlib.sha256(f"v1|{tag}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, then rename: a reader never
    sees a half-written cache file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_images(paths: list[str | Path], size: tuple[int, int], use_cache: bool = True) -> torch.Tensor:
    """Decode ``paths`` to a uint8 ``N x 3 x H x W`` tensor, from the disk cache when possible."""
    paths = [Path(p) for p in paths]
    if not paths:
        return torch.zeros((0, 3, *size), dtype=torch.uint8)
    for p in paths:
        if not p.is_file():
            from core.errors import MMXError

            raise MMXError("image file not found", p)
    target = cache_dir() / f"images-{_key(paths, f'{size[0]}x{size[1]}')}.npy" if use_cache else None
    if target is not None and target.exists():
        try:
            arr = np.load(target)
            if arr.shape == (len(paths), 3, *size) and arr.dtype == np.uint8:
                return torch.from_numpy(arr)
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt below
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as ex:
        decoded = list(ex.map(lambda p: read_image(p, size), paths))
    arr = np.ascontiguousarray(np.stack(decoded).transpose(0, 3, 1, 2))
    if target is not None:
        atomic_write(target, lambda f: np.save(f, arr))
    return torch.from_numpy(arr)


def cached_json(sources: list[Path], tag: str, build: Callable[[], dict]) -> dict:
    """``build()``'s JSON-able dict, cached on disk keyed like :func:`cached_arrays`."""
    target = cache_dir() / f"json-{_key(sources, tag)}.json"
    try:
        return json.loads(target.read_text())
    except (OSError, ValueError):
        pass  # absent or damaged: built below
    out = build()
    atomic_write(target, lambda f: f.write(json.dumps(out).encode()))
    return out


def cached_arrays(sources: list[Path], tag: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``build()``'s arrays, cached on disk as ``.npz`` keyed by the ``sources`` files and ``tag``
    (so parsing and normalising a table happens once). Arrays must not hold Python objects."""
    target = cache_dir() / f"arrays-{_key(sources, tag)}.npz"
    if target.exists():
        try:
            with np.load(target, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):
            pass  # damaged: rebuilt below
    arrays = build()
    atomic_write(target, lambda f: np.savez(f, **arrays))
    return arrays
