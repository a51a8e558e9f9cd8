"""Methods register by name (like torchvision's ``get_model``): a config dataclass + a class.

The CLI, experiments, checkpoints and dashboard list and build methods only through here, so
adding a method is one new module that calls :func:`register_method`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from core.errors import MMXError


@dataclass(frozen=True)
class MethodEntry:
    name: str
    cls: type
    config_cls: type
    family: str
    description: str


_REGISTRY: dict[str, MethodEntry] = {}


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


def make_config(config_cls: type, overrides: dict[str, Any] | None = None):
    """Build a config from flat ``key=value`` overrides; keys of the nested ``train`` config
    (epochs, lr, ...) may be given flat too."""
    cfg = config_cls()
    for k, v in (overrides or {}).items():
        if k in {f.name for f in dataclasses.fields(cfg)}:
            if dataclasses.is_dataclass(getattr(cfg, k)) and isinstance(v, dict):
                v = dataclasses.replace(getattr(cfg, k), **v)
            cfg = dataclasses.replace(cfg, **{k: v})
        elif hasattr(cfg, "train") and k in {f.name for f in dataclasses.fields(cfg.train)}:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **{k: v}))
        else:
            raise MMXError(f"{config_cls.__name__} has no setting {k!r}")
    return cfg


def get_method(name: str, specs: dict, classes: tuple[str, ...], **overrides):
    """Build method ``name`` for these modality specs and classes, with config overrides."""
    entry = method_entry(name)
    return entry.cls(specs, tuple(classes), make_config(entry.config_cls, overrides))


def _import_builtin() -> None:
    import core.models  # noqa: F401  (the package imports every built-in method module)
