"""Task registry: a task builder turns files under the data root into a
:class:`~core.data.dataset.MultimodalDataset` plus its default splits.

Register with :func:`register_task`; build with :func:`get_task` (cached per process: treat
the returned data as read-only).
"""
from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core.data.cache import cached_json
from core.data.dataset import MultimodalDataset
from core.data.splits import Split
from core.errors import MMXError
from core.paths import data_root


@dataclass
class TaskData:
    """A dataset and its named split schemes (the first listed is the default)."""

    dataset: MultimodalDataset
    splits: dict[str, list[Split]]
    description: str
    notes: dict = field(default_factory=dict)

    @property
    def default_split(self) -> str:
        return next(iter(self.splits))


@dataclass(frozen=True)
class TaskInfo:
    name: str
    builder: Callable[..., TaskData]
    requires: tuple[str, ...]  # sub-folders of the data root the task reads
    description: str
    examples: Callable[..., MultimodalDataset] | None = None  # reads the bundled extract (core.data.examples)

    def available(self, root: Path | None) -> bool:
        return not self.requires or (root is not None and all((root / r).exists() for r in self.requires))


_REGISTRY: dict[str, TaskInfo] = {}
_CACHE: dict[tuple, TaskData] = {}
_LOCK = threading.Lock()


def register_task(name: str, requires: tuple[str, ...], description: str,
                  examples: Callable[..., MultimodalDataset] | None = None):
    """Decorator: ``builder(root: Path | None, **options) -> TaskData`` becomes task ``name``;
    ``examples(folder, **options)`` reads its bundled extract of real test samples, if it has one."""

    def deco(fn: Callable[..., TaskData]) -> Callable[..., TaskData]:
        _REGISTRY[name] = TaskInfo(name, fn, requires, description, examples)
        return fn

    return deco


def list_tasks() -> list[TaskInfo]:
    _import_builtin()
    return list(_REGISTRY.values())


def get_task(name: str, data_dir: str | Path | None = None, **options) -> TaskData:
    """Build (or fetch from the in-process cache) task ``name`` with builder ``options``."""
    _import_builtin()
    if name not in _REGISTRY:
        raise MMXError(f"unknown task {name!r}; tasks are {sorted(_REGISTRY)}")
    info = _REGISTRY[name]
    root = data_root(data_dir)
    if not info.available(root):
        raise MMXError(
            f"task {name!r} needs {list(info.requires)} under the data root "
            f"({root or 'none found'}); set --data-dir or MMX_DATA_DIR, or use the synthetic 'demo' task"
        )
    key = (name, str(root), tuple(sorted(options.items())))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = info.builder(root, **options)
        return _CACHE[key]


def task_summary(name: str, data_dir: str | Path | None = None) -> dict:
    """:meth:`MultimodalDataset.summary` of task ``name`` (default options), cached on disk keyed by
    the task's files (paths, sizes, times) and its builder's source: a listing loads no data twice."""
    _import_builtin()
    info = _REGISTRY.get(name)
    root = data_root(data_dir)
    if info is None or not info.requires or not info.available(root):
        return get_task(name, data_dir).dataset.summary()  # unknown / unavailable: get_task says why
    files = sorted(p for r in info.requires for p in (root / r).rglob("*") if p.is_file())
    code = sorted(Path(inspect.getsourcefile(info.builder)).parent.glob("*.*"))  # the task modules and tables
    return cached_json([*files, *code], f"summary-{name}", lambda: get_task(name, data_dir).dataset.summary())


def _import_builtin() -> None:
    from core.data.tasks import cells, demo, derm7pt, pbc, rosmap  # noqa: F401  (registers them)
