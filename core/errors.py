"""The one error type the project raises for bad input.

Every reader and loader raises :class:`MMXError` with a message that names the file (or
object) and what is wrong with it, so the CLI and the dashboard can show it as is.
"""
from __future__ import annotations

from pathlib import Path


class MMXError(ValueError):
    """Bad input: a file, table, upload, checkpoint or configuration that cannot be used."""

    def __init__(self, message: str, source: str | Path | None = None):
        self.source = str(source) if source is not None else None
        super().__init__(f"{self.source}: {message}" if self.source else message)


class DataUnavailable(MMXError):
    """A task's data is not on this machine (no data folder, no bundled examples): not a fault of the
    input, so the dashboard shows it as guidance on getting the data, not as an error."""
