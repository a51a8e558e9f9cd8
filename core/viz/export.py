"""Figure export: interactive HTML always; PNG/SVG through kaleido when a Chrome/Chromium is
on the machine (kaleido needs one). :func:`static_export_available` tells which."""
from __future__ import annotations

import atexit
import functools
import shutil
import warnings
from pathlib import Path

import plotly.graph_objects as go

from core.train.results import atomic_write_bytes


@functools.lru_cache(maxsize=1)
def static_export_available() -> bool:
    """True when kaleido can render PNG/SVG here: it needs Chrome or Chromium. Checked by looking
    for the browser, not by a trial render, which takes seconds (a page would wait for it)."""
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome")):
        return False
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _one_browser() -> None:
    """Keep one Chromium for every PNG/SVG of this process: without it kaleido starts a fresh one
    per figure (~3 s each instead of ~0.3 s)."""
    import kaleido

    kaleido.start_sync_server(silence_warnings=True)
    atexit.register(kaleido.stop_sync_server, silence_warnings=True)


def figure_bytes(fig: go.Figure, fmt: str, width: int = 900, height: int = 550, shared_js: bool = False) -> bytes:
    """The figure as ``html``, ``png`` or ``svg`` bytes (PNG/SVG need :func:`static_export_available`).
    HTML holds plotly.js (opens offline) unless ``shared_js``: then it loads ``plotly.min.js``
    from its own folder (many figures in one zip share one copy)."""
    if fmt == "html":
        return fig.to_html(include_plotlyjs="directory" if shared_js else True, full_html=True).encode()
    if fmt in ("png", "svg"):
        if not static_export_available():
            raise RuntimeError("static export needs Chrome/Chromium on this machine (install chromium); "
                               "HTML export works without it")
        _one_browser()
        with warnings.catch_warnings():  # plotly's options for a fresh browser do not apply to the kept one
            warnings.filterwarnings("ignore", message="The kopts argument is ignored")
            return fig.to_image(format=fmt, width=width, height=height, scale=2 if fmt == "png" else 1)
    raise ValueError(f"unknown figure format {fmt!r}")


def result_formats() -> tuple[str, ...]:
    """Formats of a figure committed beside a result table: PNG and SVG where this machine can
    render them (small, open anywhere), else the self-contained HTML (plotly.js inside, ~5 MB)."""
    return ("png", "svg") if static_export_available() else ("html",)


def save_figure(fig: go.Figure, stem: str | Path, formats: tuple[str, ...] = ("html", "png")) -> list[Path]:
    """Write ``stem.<fmt>`` for each format (atomically, each through its own temporary file: two
    processes writing the same figure never mix their bytes); formats that cannot be made here are
    skipped and not returned."""
    stem = Path(stem)
    written = []
    for fmt in formats:
        if fmt in ("png", "svg") and not static_export_available():
            continue
        path = stem.with_name(f"{stem.name}.{fmt}")  # not with_suffix: a stem may hold a dot
        atomic_write_bytes(path, figure_bytes(fig, fmt))
        written.append(path)
    return written
