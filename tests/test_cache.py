"""Decoded images are cached on disk: a second load decodes nothing; a changed file is re-read."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from core.data import cache


def test_second_load_uses_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMX_CACHE_DIR", str(tmp_path / "cache"))
    files = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((10, 10, 3), 40 * i, np.uint8)).save(p)
        files.append(p)
    first = cache.load_images(files, (8, 8))
    assert first.shape == (3, 3, 8, 8)

    def boom(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache, "read_image", boom)
    assert (cache.load_images(files, (8, 8)) == first).all()
    # touching a file changes the key: it is decoded again
    os.utime(files[0], ns=(0, 123))
    with pytest.raises(AssertionError, match="decoded again"):
        cache.load_images(files, (8, 8))


def test_damaged_cache_file_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("MMX_CACHE_DIR", str(tmp_path / "cache"))
    p = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(p)
    cache.load_images([p], (4, 4))
    (cached,) = (tmp_path / "cache").glob("images-*.npy")
    cached.write_bytes(b"garbage")
    assert cache.load_images([p], (4, 4)).shape == (1, 3, 4, 4)
