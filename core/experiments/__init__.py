"""Named reproduction experiments: ``python train.py --experiment <name>`` runs one and
writes its tables under ``results/``. Each module here registers its experiments."""
from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.errors import MMXError


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    # run(out_dir=, device=, data_dir=, progress=, task=) -> written files; ``task`` defaults to the
    # experiment's own (the name's prefix) and may name another task with the same modalities, such
    # as the synthetic ``demo`` for the cells experiments
    run: Callable[..., list[Path]]


_REGISTRY: dict[str, Experiment] = {}


def register_experiment(name: str, description: str):
    def deco(fn):
        _REGISTRY[name] = Experiment(name, description, fn)
        return fn

    return deco


def register_per_task(name: str, tasks, describe, run, *, one_thread: bool = False) -> None:
    """Register ``<task>/<name>`` for each of ``tasks``, described by ``describe(task)``, running
    ``run(task, out_dir, device, data_dir)``: the experiments that read a task's shipped models.
    ``one_thread``: one torch intra-op thread on a CPU, as the timed tables (restored after)."""
    for task in tasks:
        def fn(out_dir="results", device="auto", data_dir=None, progress=False, task=task) -> list:
            import torch

            from core.train.device import resolve_device

            before = torch.get_num_threads()
            if one_thread and resolve_device(device).type == "cpu":
                torch.set_num_threads(1)
            try:
                return run(task, out_dir, device, data_dir)
            finally:
                torch.set_num_threads(before)

        fn.__module__ = run.__module__  # the step's code is the experiment's module (core.reproduce)
        register_experiment(f"{task}/{name}", describe(task))(fn)


def list_experiments() -> list[Experiment]:
    _import_all()
    return sorted(_REGISTRY.values(), key=lambda e: e.name)


def get_experiment(name: str) -> Experiment:
    _import_all()
    if name not in _REGISTRY:
        raise MMXError(f"unknown experiment {name!r}; experiments are {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def command(name: str, task: str | None = None) -> str:
    """The command line that reproduces experiment ``name`` (written into its results), run on
    ``task`` when that is not the experiment's own (e.g. the synthetic ``demo``)."""
    own = name.split("/")[0]
    threads = os.environ.get("OMP_NUM_THREADS")  # it can change the last bits of CPU arithmetic
    return ((f"OMP_NUM_THREADS={threads} " if threads else "") + f"python train.py --experiment {name}"
            + (f" --task {task}" if task and task != own else ""))


def _import_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
