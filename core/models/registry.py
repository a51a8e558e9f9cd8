"""Methods register by name (like torchvision's ``get_model``): a config dataclass + a class.

The CLI, experiments, checkpoints and dashboard list and build methods only through here, so
adding a method is one new module that calls :func:`register_method`.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from core.errors import MMXError
from core.train.loop import TrainConfig


@dataclass(frozen=True)
class MethodEntry:
    name: str
    cls: type
    config_cls: type
    family: str
    description: str


_REGISTRY: dict[str, MethodEntry] = {}
C = TypeVar("C")


def register_method(name: str, config: type, family: str, description: str):
    """Class decorator: register a :class:`~core.models.base.Method` subclass as ``name``."""

    def deco(cls):
        cls.name = name
        cls.Config = config
        _REGISTRY[name] = MethodEntry(name, cls, config, family, description)
        return cls

    return deco


def list_methods() -> list[MethodEntry]:
    _import_builtin()
    return list(_REGISTRY.values())


def method_entry(name: str) -> MethodEntry:
    _import_builtin()
    if name not in _REGISTRY:
        raise MMXError(f"unknown method {name!r}; methods are {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def training_stages(config_cls: type) -> tuple[str, ...]:
    """The config's training stages: its fields typed :class:`~core.train.loop.TrainConfig`
    (``train``, plus e.g. HyperMM's ``rho_train``)."""
    hints = _hints(config_cls)
    return tuple(f.name for f in dataclasses.fields(config_cls) if hints.get(f.name) is TrainConfig)


def with_epochs(config_cls: type, overrides: dict[str, Any] | None, epochs: int) -> dict[str, Any]:
    """``overrides`` plus ``STAGE.epochs = epochs`` for EVERY training stage (the CLI's
    ``--epochs``); a setting already in ``overrides`` wins. A plain ``epochs`` override reaches
    ``train`` only."""
    stages = training_stages(config_cls)
    if not stages:
        raise MMXError(f"{config_cls.__name__} has no training stage, so epochs do not apply to it")
    return {**{f"{s}.epochs": epochs for s in stages}, **(overrides or {})}


def make_config(config_cls: type[C], overrides: dict[str, Any] | None = None) -> C:
    """Build a config from overrides, each checked against its field's type.

    Keys are the config's fields; keys of the nested ``train`` stage (epochs, lr, ...) may be
    given flat; one stage's setting is ``STAGE.KEY`` (``rho_train.epochs``). Values are Python
    values (a dict updates a stage) or text as typed on the command line, parsed by the field's
    type (``5``, ``1e-3``, ``true``, ``None``, ``rna,protein``, ``{'rna': 0.5}``). An int is
    accepted for a float; anything else that does not fit raises :class:`MMXError`.
    """
    cfg = config_cls()
    for key, value in (overrides or {}).items():
        cfg = _apply(cfg, str(key), value, str(key))
    return cfg


def _apply(cfg, key: str, value: Any, label: str):
    cls = type(cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    stages = training_stages(cls)
    stage, dot, sub = key.partition(".")
    if dot:
        if stage not in stages or sub not in {f.name for f in dataclasses.fields(TrainConfig)}:
            raise _unknown(cls, label)
        return dataclasses.replace(cfg, **{stage: _apply(getattr(cfg, stage), sub, value, label)})
    if key in names:
        hint = _hints(cls).get(key, Any)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            new = _nested(getattr(cfg, key), hint, value, label)
        else:
            try:
                new = _coerce(value, hint)
            except _Mismatch:
                raise MMXError(f"setting {label!r} expects {_describe(hint)}, got {value!r}") from None
        return dataclasses.replace(cfg, **{key: new})
    if "train" in stages and key in {f.name for f in dataclasses.fields(TrainConfig)}:
        return dataclasses.replace(cfg, train=_apply(cfg.train, key, value, label))
    raise _unknown(cls, label)


def _nested(current, hint: type, value: Any, label: str):
    """A dataclass-typed field (a training stage): an instance replaces it, a dict updates it."""
    if isinstance(value, str):
        value = _literal(value)
    if isinstance(value, hint):
        return value
    if not isinstance(value, dict):
        raise MMXError(f"setting {label!r} expects a {hint.__name__} or a dict of its settings, got {value!r}")
    for k, v in value.items():
        current = _apply(current, str(k), v, f"{label}.{k}")
    return current


def _unknown(cls: type, key: str) -> MMXError:
    settings = ", ".join(f.name for f in dataclasses.fields(cls))
    stages = training_stages(cls)
    if not stages:
        return MMXError(f"{cls.__name__} has no setting {key!r}; its settings: {settings}")
    keys = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
    return MMXError(f"{cls.__name__} has no setting {key!r}; its settings: {settings}; its training stages: "
                    f"{', '.join(stages)}, each with {keys} (set one stage as STAGE.KEY, e.g. "
                    f"{stages[-1]}.epochs" + ("; a flat stage key sets 'train')" if "train" in stages else ")"))


class _Mismatch(Exception):
    pass


_NONE_TEXT = {"None", "none"}
_BOOL_TEXT = {"true": True, "True": True, "1": True, "false": False, "False": False, "0": False}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Field types of a dataclass (``from __future__ import annotations`` leaves them as text)."""
    return typing.get_type_hints(cls)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _sequence(value: Any) -> Any:
    """Text for a tuple field: a Python literal, one item, or comma-separated items."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return ()
    parsed = _literal(value)
    if parsed is value:
        return tuple(part.strip() for part in value.split(","))
    return parsed if isinstance(parsed, (tuple, list)) else (parsed,)


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (text parsed), or :class:`_Mismatch`. Unknown hints pass."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value in _NONE_TEXT)):
            return None
        for a in args:
            if a is not type(None):
                try:
                    return _coerce(value, a)
                except _Mismatch:
                    pass
        raise _Mismatch
    if hint is type(None):
        if value is None or (isinstance(value, str) and value in _NONE_TEXT):
            return None
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip() in _BOOL_TEXT:
            return _BOOL_TEXT[value.strip()]
        raise _Mismatch
    if hint is int or hint is float:
        value = _literal(value) if isinstance(value, str) else value
        kind = numbers.Integral if hint is int else numbers.Real
        if isinstance(value, kind) and not isinstance(value, bool):
            return hint(value)
        raise _Mismatch
    if hint is tuple or origin is tuple:
        value = _sequence(value)
        if not isinstance(value, (tuple, list)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if args:
            if len(args) != len(value):
                raise _Mismatch
            return tuple(_coerce(v, a) for v, a in zip(value, args))
        return tuple(value)
    if hint is dict or origin is dict:
        value = _literal(value) if isinstance(value, str) else value
        if not isinstance(value, dict):
            raise _Mismatch
        if args:
            return {_coerce(k, args[0]): _coerce(v, args[1]) for k, v in value.items()}
        return dict(value)
    if isinstance(hint, type) and hint is not Any:
        if isinstance(value, hint):
            return value
        raise _Mismatch
    return value


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "None"
    if (hint is tuple or origin is tuple) and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {_describe(args[0])} (comma-separated)"
        return f"a tuple ({', '.join(_describe(a) for a in args)})"
    if (hint is dict or origin is dict) and args:
        return f"a dict of {_describe(args[0])} to {_describe(args[1])}"
    if hint is bool:
        return "bool (true or false)"
    return getattr(hint, "__name__", str(hint))


def get_method(name: str, specs: dict, classes: tuple[str, ...], **overrides):
    """Build method ``name`` for these modality specs and classes, with config overrides."""
    entry = method_entry(name)
    return entry.cls(specs, tuple(classes), make_config(entry.config_cls, overrides))


def _import_builtin() -> None:
    import core.models  # noqa: F401  (the package imports every built-in method module)
