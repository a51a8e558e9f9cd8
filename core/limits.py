"""Every size limit on input, in one place (hostile or mistaken files must fail fast and clearly).

The file limit is also the dashboard's upload limit: ``server.maxUploadSize`` in
``.streamlit/config.toml`` must equal :data:`DEFAULT_MAX_UPLOAD_MB` (a test checks it). Set
``MMX_MAX_UPLOAD_MB`` to raise or lower it for the library and the CLI; start Streamlit with
``--server.maxUploadSize`` of the same value so the browser agrees.
"""
from __future__ import annotations

import os

from core.errors import MMXError

DEFAULT_MAX_UPLOAD_MB = 200  # per file: an upload, or a file a reader opens
DEFAULT_MAX_VALUES = 50_000_000  # cells x features of one table once dense (200 MB of float32)
MAX_PIXELS = 40_000_000  # per image: refuse larger ones (decompression bombs, wrong files)
MIN_IMAGE_SIDE = 4  # pixels: smaller images hold nothing a model could read
MAX_ASPECT = 20  # long side / short side: a model's square input would squash anything longer


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise MMXError(f"environment variable {name}={text!r} is not a number") from None
    if not value > 0:
        raise MMXError(f"environment variable {name}={text!r} must be positive")
    return value


def max_upload_mb() -> float:
    """The per-file size limit in MB (``$MMX_MAX_UPLOAD_MB``, else :data:`DEFAULT_MAX_UPLOAD_MB`)."""
    return _env_number("MMX_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB)


def max_values() -> int:
    """The most values one table may hold once dense (``$MMX_MAX_VALUES``, else :data:`DEFAULT_MAX_VALUES`)."""
    return int(_env_number("MMX_MAX_VALUES", DEFAULT_MAX_VALUES))


def check_size(n_bytes: int, source) -> None:
    """Refuse a file or upload of ``n_bytes`` over :func:`max_upload_mb` (read nothing of it first)."""
    limit = max_upload_mb()
    if n_bytes > limit * 1024 * 1024:
        raise MMXError(f"file is {n_bytes / 1024 ** 2:,.1f} MB, over the limit of {limit:g} MB "
                       "(set MMX_MAX_UPLOAD_MB to change it)", source)


def check_values(n_rows: int, n_cols: int, source, what: str = "table") -> None:
    """Refuse a table of ``n_rows x n_cols`` values over :func:`max_values` before it is made dense."""
    limit = max_values()
    if n_rows * n_cols > limit:
        raise MMXError(f"{what} is {n_rows:,} x {n_cols:,} = {n_rows * n_cols:,} values, over the limit of "
                       f"{limit:,} (keep the model's features or fewer cells, or set MMX_MAX_VALUES)", source)
