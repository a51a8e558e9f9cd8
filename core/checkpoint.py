"""Checkpoints: ``model.safetensors`` + ``card.json``, written atomically, loaded without
unpickling anything (safetensors tensors and a JSON card), the weights' sha256 verified.

The card carries what a user needs to trust and reuse the weights (like torchvision's weight
metadata): method and config, classes, modality specs with feature names, held-out metrics,
data hash, training time and device.

A loaded model is whole: it answers every call the fitted one does. The card keeps the fit's
numbers (``best_epoch``, ``best_score``, ``epochs_run``, ``training_seconds``), restored as
``method.fit_result`` (without the per-epoch history), and under ``method_state`` whatever the
method's :meth:`~core.models.base.Method.card_state` returns (e.g. guidance's per-stage fits);
a method's own tensors travel in its ``module()``. Adding a method needs no change here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.data.dataset import ModalitySpec
from core.errors import MMXError
from core.models.registry import get_method, method_entry
from core.train.loop import FitResult
from core.train.results import atomic_write_text

FORMAT = "mmx-checkpoint/1"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(method, out_dir: str | Path, *, task: str = "", metrics: dict | None = None,
                    data_hash: str = "", extra: dict | None = None) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/card.json``; returns the folder."""
    if not hasattr(method, "module"):
        raise MMXError(f"method {method.name!r} has no tensor weights to save as a checkpoint")
    if not method.is_fitted:
        raise MMXError(f"method {method.name!r} is not fitted; fit it before saving a checkpoint")
    state_json = method.card_state()
    try:
        json.dumps(state_json, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise MMXError(f"method {method.name!r}: card_state() is not plain JSON ({e})") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # copies: a module reachable by two names (e.g. a retargeted guidance model's task head, also its
    # head) gives tensors that share memory, which safetensors refuses; loading fills both names
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in method.module().state_dict().items()}
    tmp = out / ".model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(out / "model.safetensors")
    fit = method.fit_result.summary()
    card = {
        "format": FORMAT,
        "method": method.name,
        "config": dataclasses.asdict(method.config),
        "classes": list(method.classes),
        "modalities": [s.to_dict() for s in method.specs.values()],
        "task": task,
        "metrics": metrics or {},
        "data_hash": data_hash,
        "training_seconds": fit["seconds"],
        "best_epoch": fit["best_epoch"],
        "best_score": fit["best_score"],
        "epochs_run": fit["epochs_run"],
        "method_state": state_json,
        "device": str(method.device),
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "sha256": _sha256(out / "model.safetensors"),
        **(extra or {}),
    }
    atomic_write_text(out / "card.json", json.dumps(card, indent=1) + "\n")
    return out


def read_card(folder: str | Path) -> dict:
    """The checkpoint card, validated."""
    path = Path(folder) / "card.json"
    if not path.is_file():
        raise MMXError("checkpoint card not found", path)
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MMXError(f"card is not valid JSON ({e})", path) from None
    missing = {"format", "method", "config", "classes", "modalities", "sha256"} - set(card)
    if missing:
        raise MMXError(f"card lacks {sorted(missing)}", path)
    if card["format"] != FORMAT:
        raise MMXError(f"unknown checkpoint format {card['format']!r} (expected {FORMAT})", path)
    return card


def load_checkpoint(folder: str | Path, device: str = "cpu"):
    """Rebuild the method from its card and load its weights (sha256 checked first).

    The result is fitted (``is_fitted``): ``fit_result`` comes from the card's numbers, with an
    empty ``history`` (checkpoints do not keep the per-epoch record), and the method restores its
    ``method_state`` before the weights are loaded into it."""
    folder = Path(folder)
    card = read_card(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise MMXError("weights file not found", weights)
    if _sha256(weights) != card["sha256"]:
        raise MMXError("sha256 of the weights does not match the card (file changed or damaged)", weights)
    entry = method_entry(card["method"])
    specs = {d["name"]: ModalitySpec.from_dict(d) for d in card["modalities"]}
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = set(card["config"]) - fields
    if unknown:
        raise MMXError(f"card config has settings {sorted(unknown)} unknown to method {card['method']!r}",
                       folder / "card.json")
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in card["config"].items()}  # JSON lists were tuples
    method = get_method(card["method"], specs, tuple(card["classes"]), **config)
    state_json = card.get("method_state") or {}
    if not isinstance(state_json, dict):
        raise MMXError("card method_state is not a JSON object", folder / "card.json")
    try:
        method.restore_card_state(state_json)
    except (KeyError, TypeError, ValueError) as e:
        raise MMXError(f"card method_state does not fit method {card['method']!r} ({e!r})",
                       folder / "card.json") from None
    try:
        state = load_file(str(weights))
    except SafetensorError as e:
        raise MMXError(f"not a readable safetensors file ({e})", weights) from None
    try:
        method.module().load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise MMXError(f"weights do not fit the card's model ({str(e).splitlines()[0]})", weights) from None
    method.device = torch.device(device)
    method.module().to(method.device).eval()
    method.fit_result = FitResult.from_summary({"best_epoch": card.get("best_epoch"),
                                                "best_score": card.get("best_score"),
                                                "epochs_run": card.get("epochs_run"),
                                                "seconds": card.get("training_seconds")})
    method.card = card
    return method
