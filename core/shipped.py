"""The shipped models: ``checkpoints/<task>/<name>/``, listed and loaded by name.

One loader for everyone (the CLI, the dashboard, a notebook)::

    from core.shipped import available, load
    for m in available(): print(m.task, m.name, m.metrics["accuracy"])
    model = load("pbc", "cnn")
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.checkpoint import CARD, load_checkpoint, read_card
from core.errors import MMXError
from core.paths import checkpoints_dir


@dataclass(frozen=True)
class ShippedModel:
    """A checkpoint folder and its card (``card`` is None and ``error`` says why when the card
    cannot be read: a listing never hides a broken folder)."""

    task: str
    name: str
    folder: Path
    card: dict | None
    error: str | None = None

    @property
    def metrics(self) -> dict:
        return (self.card or {}).get("metrics", {})

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m["name"] for m in (self.card or {}).get("modalities", []))

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))

    @property
    def research_only(self) -> bool:
        return bool((self.card or {}).get("data", {}).get("research_only"))


def available(root: str | Path | None = None) -> list[ShippedModel]:
    """Every checkpoint folder under ``root`` (default :func:`core.paths.checkpoints_dir`), sorted."""
    root = Path(root) if root is not None else checkpoints_dir()
    out = []
    for card in sorted(root.glob(f"*/*/{CARD}")):
        folder = card.parent
        if folder.name.startswith(".") or folder.parent.name.startswith("."):
            continue  # a save in progress (or killed) stages its folder under a hidden name
        try:
            out.append(ShippedModel(folder.parent.name, folder.name, folder, read_card(folder)))
        except MMXError as e:
            out.append(ShippedModel(folder.parent.name, folder.name, folder, None, str(e)))
    return out


def weights_of(model) -> dict[str, dict[str, str]]:
    """``{"<task>/<name>": {file: sha256}}`` of a loaded shipped model (its card's ``files``): what a
    table that reads shipped models records, so a retrained model shows which tables describe the old one."""
    card = getattr(model, "card", None) or {}
    return {f"{card['task']}/{card['name']}": dict(card["files"])} if card.get("files") else {}


def stale_weights(recorded: dict[str, dict[str, str]], root: str | Path | None = None) -> list[str]:
    """The models of ``recorded`` (see :func:`weights_of`) whose shipped weights are not the ones
    recorded, each with why: retrained, or no longer shipped."""
    root = Path(root) if root is not None else checkpoints_dir()
    out = []
    for key, files in recorded.items():
        try:
            shipped = json.loads((root / key / CARD).read_text()).get("files")
        except (OSError, ValueError, AttributeError):
            shipped = None
        if shipped is None:
            out.append(f"{key}: no longer shipped (or its card cannot be read)")
        elif shipped != files:
            out.append(f"{key}: its weights changed since the table was written")
    return out


def load(task: str, name: str, device: str = "cpu", root: str | Path | None = None):
    """The fitted method of checkpoint ``<root>/<task>/<name>`` (hashes verified, nothing unpickled)."""
    root = Path(root) if root is not None else checkpoints_dir()
    folder = root / task / name
    if not (folder / CARD).is_file():
        names = [f"{m.task}/{m.name}" for m in available(root)]
        raise MMXError(f"no shipped model {task}/{name}; available: {names or 'none (run train.py --release)'}",
                       folder)
    return load_folder(folder, device)


def load_folder(folder: str | Path, device: str = "cpu"):
    """:func:`~core.checkpoint.load_checkpoint` with every failure an :class:`MMXError` naming the
    checkpoint: a registry error names no file, and a card that is JSON but not shaped like a card
    (e.g. ``"classes": null``) fails inside the loader as a KeyError or TypeError."""
    folder = Path(folder)
    try:
        return load_checkpoint(folder, device)
    except MMXError as e:
        raise (e if e.source else MMXError(str(e), folder)) from None
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        raise MMXError(f"card does not describe a model ({type(e).__name__}: {e})", folder / CARD) from None
