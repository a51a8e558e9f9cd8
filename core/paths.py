"""Where the data and the on-disk caches live."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root(explicit: str | Path | None = None) -> Path | None:
    """Resolve the data root: ``explicit`` (must exist), else ``$MMX_DATA_DIR``, else ``./data``, else
    ``../shared/data`` (next to the repository). ``None`` when none of them exists."""
    if explicit:
        if not Path(explicit).is_dir():
            from core.errors import MMXError

            raise MMXError("data directory does not exist", explicit)
        return Path(explicit).resolve()
    candidates: list[Path] = []
    if os.environ.get("MMX_DATA_DIR"):
        candidates.append(Path(os.environ["MMX_DATA_DIR"]))
    candidates += [Path.cwd() / "data", REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def cache_dir() -> Path:
    """Directory for decoded-image caches (``$MMX_CACHE_DIR`` or ``~/.cache/mmx``)."""
    d = Path(os.environ.get("MMX_CACHE_DIR") or Path.home() / ".cache" / "mmx")
    d.mkdir(parents=True, exist_ok=True)
    return d


def checkpoints_dir() -> Path:
    """Where the shipped checkpoints live (``$MMX_CHECKPOINTS`` or ``checkpoints/`` in the repository)."""
    return Path(os.environ.get("MMX_CHECKPOINTS") or REPO_ROOT / "checkpoints")
