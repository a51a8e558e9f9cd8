"""Checkpoints: a folder with ``card.json``, ``model.safetensors`` and, for scikit-learn models
that are not linear, ``estimator.skops``; written atomically, loaded without unpickling anything.

The card carries what a user needs to trust and reuse the weights (like torchvision's weight
metadata): method and config, classes, modality specs with feature names and preprocessing,
held-out metrics, data hash, training time and device, library versions and the sha256 of every
file. Loading reads only the files the card lists, each checked against its hash first.

A loaded model is whole: it answers every call the fitted one does. The card keeps the fit's
numbers (``best_epoch``, ``best_score``, ``epochs_run``, ``training_seconds``), restored as
``method.fit_result`` (without the per-epoch history), and under ``method_state`` whatever the
method's :meth:`~core.models.base.Method.card_state` returns; tensors come from
:meth:`~core.models.base.Method.weights` and other files from
:meth:`~core.models.base.Method.artefacts`. Adding a method needs no change here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from core.data.dataset import ModalitySpec
from core.errors import MMXError
from core.models.encoders import starting_weights
from core.models.registry import get_method, method_entry
from core.train.loop import FitResult
from core.train.results import atomic_folder, atomic_write_text

FORMAT = "mmx-checkpoint/2"
WEIGHTS = "model.safetensors"
CARD = "card.json"
#: file kinds a card may list besides the weights (each loaded by a reader that executes nothing)
ARTEFACT_SUFFIXES = (".skops",)
LIBRARIES = ("torch", "numpy", "scikit-learn", "safetensors", "skops")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions() -> dict[str, str]:
    """Python and the libraries whose versions decide what a checkpoint computes."""
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = "not installed"
    return out


def half_precision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every float32 tensor stored as float16 (half the bytes; loading widens it
    back). Other dtypes (float64 estimator arrays, integer counters) are kept as they are."""
    return {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}


def round_to_half(method) -> None:
    """Round a fitted method's float32 weights to what float16 storage keeps, so that the model
    scored before saving is exactly the one a half-precision checkpoint loads."""
    method.load_weights({k: v.float() if v.dtype == torch.float16 else v
                         for k, v in half_precision(method.weights()).items()})


def save_checkpoint(method, out_dir: str | Path, *, task: str = "", metrics: dict | None = None,
                    data_hash: str = "", extra: dict | None = None, half: bool = False) -> Path:
    """Write the method's files and its card into ``out_dir``, a folder of its own, replaced whole
    (:func:`~core.train.results.atomic_folder`): a killed save leaves the previous checkpoint or the
    new one, never a card beside another's weights. ``half``
    stores float32 weights as float16 (call :func:`round_to_half` before scoring the model)."""
    if not method.is_fitted:
        raise MMXError(f"method {method.name!r} is not fitted; fit it before saving a checkpoint")
    state_json = method.card_state()
    try:
        json.dumps(state_json, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise MMXError(f"method {method.name!r}: card_state() is not plain JSON ({e})") from None
    # copies: a module reachable by two names (e.g. a retargeted guidance model's task head, also its
    # head) gives tensors that share memory, which safetensors refuses; loading fills both names
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in method.weights().items()}
    state = half_precision(state) if half else state
    files = {WEIGHTS: save_tensors(state)} | method.artefacts()
    for name in files:
        _check_name(name, Path(out_dir) / CARD)
    out = Path(out_dir)
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
        "starting_weights": starting_weights(method.module()),
        "weights_dtype": "float16" if half else "float32",
        "device": str(method.device),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        **(extra or {}),
        "files": {name: sha256_bytes(data) for name, data in files.items()},
    }
    with atomic_folder(out, owns=_owned) as stage:
        for name, data in files.items():
            (stage / name).write_bytes(data)
        (stage / CARD).write_text(json.dumps(card, indent=1) + "\n")
    return out


def _owned(name: str) -> bool:
    """A file a checkpoint folder may hold (an older save's, replaced with the folder)."""
    return name in (CARD, WEIGHTS) or name.endswith(ARTEFACT_SUFFIXES)


def _check_name(name: str, card_path: Path) -> None:
    """A listed file is a plain name in the checkpoint folder, of a kind the loader reads safely."""
    if Path(name).name != name or name.startswith(".") or not (name == WEIGHTS or name.endswith(ARTEFACT_SUFFIXES)):
        raise MMXError(f"card lists a file {name!r} that is not {WEIGHTS} or a {'/'.join(ARTEFACT_SUFFIXES)} "
                       "file in the checkpoint folder", card_path)


def read_card(folder: str | Path) -> dict:
    """The checkpoint card, validated."""
    path = Path(folder) / CARD
    if not path.is_file():
        raise MMXError("checkpoint card not found", path)
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MMXError(f"card is not valid JSON ({e})", path) from None
    if not isinstance(card, dict):
        raise MMXError("card is not a JSON object", path)
    missing = {"format", "method", "config", "classes", "modalities", "files"} - set(card)
    if missing:
        raise MMXError(f"card lacks {sorted(missing)}", path)
    if card["format"] != FORMAT:
        raise MMXError(f"unknown checkpoint format {card['format']!r} (expected {FORMAT})", path)
    shapes = {"method": str, "config": dict, "classes": list, "modalities": list, "files": dict}
    wrong = [k for k, kind in shapes.items() if not isinstance(card[k], kind)]
    if wrong or not all(isinstance(c, str) for c in card["classes"]) or not all(
            isinstance(m, dict) and {"name", "kind"} <= set(m) for m in card["modalities"]):
        raise MMXError(f"card is not shaped like a checkpoint card ({', '.join(wrong) or 'classes or modalities'}: "
                       "method a string, config and files objects, classes a list of names, modalities a list of "
                       "objects with a name and a kind)", path)
    files = card["files"]
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise MMXError(f"card 'files' must map file names to sha256 and list {WEIGHTS}", path)
    for name in files:
        _check_name(name, path)
    return card


def verified_files(folder: str | Path, card: dict) -> dict[str, bytes]:
    """The contents of every file the card lists, each checked against its sha256."""
    out = {}
    for name, digest in card["files"].items():
        path = Path(folder) / name
        if not path.is_file():
            raise MMXError("file listed in the card not found", path)
        data = path.read_bytes()
        if sha256_bytes(data) != digest:
            raise MMXError("sha256 does not match the card (file changed or damaged)", path)
        out[name] = data
    return out


def load_checkpoint(folder: str | Path, device: str = "cpu"):
    """Rebuild the method from its card and load its files (every sha256 checked first).

    The result is fitted (``is_fitted``): ``fit_result`` comes from the card's numbers, with an
    empty ``history`` (checkpoints do not keep the per-epoch record), and the method restores its
    ``method_state`` before its weights and files are loaded into it."""
    folder = Path(folder)
    card = read_card(folder)
    files = verified_files(folder, card)
    card_path = folder / CARD
    entry = method_entry(card["method"])
    specs = {d["name"]: ModalitySpec.from_dict(d) for d in card["modalities"]}
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = set(card["config"]) - fields
    if unknown:
        raise MMXError(f"card config has settings {sorted(unknown)} unknown to method {card['method']!r}", card_path)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in card["config"].items()}  # JSON lists were tuples
    method = get_method(card["method"], specs, tuple(card["classes"]), **config)
    state_json = card.get("method_state") or {}
    if not isinstance(state_json, dict):
        raise MMXError("card method_state is not a JSON object", card_path)
    try:
        method.restore_card_state(state_json)
    except (KeyError, TypeError, ValueError) as e:
        raise MMXError(f"card method_state does not fit method {card['method']!r} ({e!r})", card_path) from None
    try:
        state = load_tensors(files.pop(WEIGHTS))
    except SafetensorError as e:
        raise MMXError(f"not a readable safetensors file ({e})", folder / WEIGHTS) from None
    state = {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}  # stored in half
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise MMXError(f"weights hold NaN or infinite values ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})",
                       folder / WEIGHTS)
    try:
        method.load_artefacts(files)
        method.load_weights(state)
    except MMXError as e:
        raise (e if e.source else MMXError(str(e), folder)) from None
    except RuntimeError as e:
        raise MMXError(f"weights do not fit the card's model ({str(e).splitlines()[0]})", folder / WEIGHTS) from None
    method.place(device)
    method.fit_result = FitResult.from_summary({"best_epoch": card.get("best_epoch"),
                                                "best_score": card.get("best_score"),
                                                "epochs_run": card.get("epochs_run"),
                                                "seconds": card.get("training_seconds")})
    method.card = card
    return method
