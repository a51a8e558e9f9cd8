"""``python train.py --all``: every result table and shipped model in one resumable run.

Steps run in dependency order: the self-supervised image encoder (image rows fine-tune it), the
experiments that train their own models, the release, then the experiments that read the released
models (calibration, and faithfulness on a real task). After each finished step the manifest
``<out>/reproduce_all.json`` is rewritten atomically with the step's code hash, input hashes, files
and wall time, so a killed or crashed run continues where it stopped: a step is skipped when its
record matches and every file it wrote still exists.

A step's code hash covers the ``core`` modules it imports, followed transitively (imports inside
functions included; a package that imports all its modules, like the method registry, counts
whole), so editing one experiment reruns that experiment only. Its inputs are the content hash of
each task it reads, the encoder's weights and, for steps that read the release, the released
weights of their task.

``--quick`` is a smoke run of every step's code: cells and pbc experiments on the synthetic
``demo`` task, rosmap ones on their own data, every training stage capped at :data:`QUICK_EPOCHS`
epochs; the encoder pretrains one epoch on demo's images and the release is demo's with 2 epochs,
both into ``<out>/checkpoints``. Steps that read the real release, and those too large even so
(:data:`QUICK_LEAVES_OUT`), are listed as not run in quick mode, with the reason.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from core.errors import MMXError
from core.paths import REPO_ROOT, data_root
from core.train.results import write_json

FORMAT = "mmx-reproduce/1"
MANIFEST = "reproduce_all.json"
QUICK_EPOCHS = 1
QUICK_RELEASE_EPOCHS = 2  # as tests/test_release.py
RELEASED = ("cells", "rosmap", "derm7pt", "pbc")
_QUICK_TASK = {"cells": "demo", "pbc": "demo"}  # pbc is image-only: demo's image modality stands in
_READS_RELEASE = ("core.experiments.calibration",)
#: read the shipped model unless on demo (a quick fit stands in)
_EXPLAINS_RELEASE = ("core.experiments.faithfulness", "core.experiments.counterfactual", "core.experiments.sanity")
_PRETRAIN_TASKS = ("pbc", "cells", "derm7pt")
#: experiments too large for a smoke run even at one epoch (their drivers are tested on demo with
#: a reduced grid in tests/test_experiments.py)
QUICK_LEAVES_OUT = {
    "rosmap/baselines": "its early-fusion grid searches do not shrink with the epoch cap (over 180 s); the same "
                        "driver runs in cells/reproduction_rp on demo",
    "cells/hypermm": "every row at 4 missing rates on each fold: 347 s on demo at one epoch",
    "derm7pt/guidance": "no synthetic task has derm7pt's photos: on the real images it took about 30 s per run at "
                        "one epoch, over 10 runs",
    "derm7pt/image_dynamics": "no synthetic task has derm7pt's photos: several seeds x rows on the real images, at "
                              "about 30 s a run at one epoch (derm7pt/guidance's)",
    "derm7pt/image_only": "no synthetic task has derm7pt's photos: several seeds x rows on the real images, at "
                          "about 30 s a run at one epoch (derm7pt/guidance's)",
    "pbc/counterfactual": "on demo it is cells/counterfactual's run again (the same driver and data), which the "
                          "quick run does",
    "derm7pt/hypermm": "2 targets x every missing-data scenario x every row x each seed on the real images: more "
                       "fits than cells/hypermm, which took 347 s on demo at one epoch",
}
_ENCODER = Path("encoders") / "resnet_simclr"


@dataclass(frozen=True)
class Step:
    """One table or model set: ``pretrain``, an experiment name, or ``release/<task>``."""

    name: str
    module: str  # the core module whose import closure is the step's code
    task: str  # the task it runs on ("" for the pretraining, which reads _PRETRAIN_TASKS)
    run: Callable[..., list[Path]] | None = None  # experiments only
    reads_release: bool = False
    not_quick: str = ""  # why --quick leaves it out


@dataclass
class Outcome:
    step: Step
    status: str  # run | up to date | skipped | not run in quick mode | failed | interrupted
    seconds: float = 0.0
    note: str = ""
    files: list[str] = field(default_factory=list)


def plan(quick: bool = False) -> list[Step]:
    """Every step of ``--all`` (of ``--all --quick``) in the order it runs."""
    from core.experiments import list_experiments

    early, late = [], []
    for e in list_experiments():
        own = e.name.split("/")[0]
        module = e.run.__module__
        task = _QUICK_TASK.get(own, own) if quick else own
        reads = module in _READS_RELEASE or (module in _EXPLAINS_RELEASE and task != "demo")
        not_quick = ""
        if quick and reads and own != "cells":
            not_quick = (f"it reads the released {own} models; the quick release is demo's only, on which "
                         f"cells/{e.name.split('/')[1]} runs this same code")
            task = own
        if quick and e.name in QUICK_LEAVES_OUT:
            not_quick = QUICK_LEAVES_OUT[e.name]
        (late if reads else early).append(Step(e.name, module, task, e.run, reads, not_quick))
    releases = [Step(f"release/{t}", "core.release", t) for t in (("demo",) if quick else RELEASED)]
    return [Step("pretrain", "core.pretrain", "demo" if quick else ""), *early, *releases, *late]


# ----------------------------------------------------------------------------- hashes
def _module_file(name: str) -> Path | None:
    base = REPO_ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path) -> set[str]:
    """The ``core`` modules ``path`` names in any import statement (in functions too)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return {n for n in names if n.split(".")[0] == "core"}


def code_files(module: str) -> list[Path]:
    """The source files ``module`` runs: its import closure within ``core``, each package's
    ``__init__`` on the way, every module of a package that imports all of its own (except
    ``core.experiments``, whose experiments are steps of their own), and the tables beside them."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        path = _module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += _imports(path)
        if path.name == "__init__.py" and "iter_modules" in path.read_text() and name != "core.experiments":
            todo += [f"{name}.{p.stem}" for p in path.parent.glob("*.py")]
            todo += [f"{name}.{p.name}" for p in path.parent.iterdir() if (p / "__init__.py").is_file()]
    tables = {p for f in seen for p in f.parent.glob("*.*") if p.suffix in (".csv", ".json", ".tsv")}
    return sorted(seen | tables)


def code_hash(module: str) -> str:
    h = hashlib.sha256()
    for path in code_files(module):
        h.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def data_hash(task: str, data_dir: str | Path | None = None) -> str:
    """The content hash of ``task``'s data (:meth:`MultimodalDataset.data_hash`), cached on disk
    keyed by its files' sizes and times so a rerun does not load every task again. Raises
    :class:`MMXError` when the task's data is not there."""
    from core.data.cache import cached_json
    from core.data.tasks import get_task, list_tasks

    info = next((t for t in list_tasks() if t.name == task), None)
    root = data_root(data_dir)
    if info is None or not info.requires or not info.available(root):
        return get_task(task, data_dir).dataset.data_hash()  # demo, or get_task says what is missing
    files = sorted(p for r in info.requires for p in (root / r).rglob("*") if p.is_file())
    code = sorted(Path(inspect.getsourcefile(info.builder)).parent.glob("*.*"))
    return cached_json([*files, *code], f"data-hash-{task}",
                       lambda: {"sha256": get_task(task, data_dir).dataset.data_hash()})["sha256"]


def _weights(card: Path) -> dict | None:
    """The file hashes a card lists (its weights), or None when there is no card."""
    return json.loads(card.read_text()).get("files") if card.is_file() else None


def inputs(step: Step, checkpoints: Path, data_dir: str | Path | None, quick: bool) -> dict:
    """What a step's result depends on besides its code; raises :class:`MMXError` when a task's
    data is missing."""
    if step.name == "pretrain":
        tasks = ("demo",) if quick else _PRETRAIN_TASKS
    else:
        tasks = (step.task,)
    out = {"quick": quick, "task": step.task, "data": {t: data_hash(t, data_dir) for t in tasks}}
    if step.name != "pretrain":
        out["encoder"] = _weights(checkpoints / _ENCODER / "encoder.json")
    if step.reads_release:
        out["release"] = {c.parent.name: _weights(c) for c in sorted((checkpoints / step.task).glob("*/card.json"))}
    return out


# ----------------------------------------------------------------------------- running
@contextlib.contextmanager
def capped_epochs(n: int) -> Iterator[None]:
    """Every method built meanwhile trains at most ``n`` epochs in each training stage: wraps
    :func:`core.models.registry.make_config`, through which :func:`get_method` builds every config."""
    from core.models import registry

    real = registry.make_config

    def capped(config_cls, overrides=None):
        cfg = real(config_cls, overrides)
        stages = {s: getattr(cfg, s) for s in registry.training_stages(type(cfg))}
        return dataclasses.replace(cfg, **{s: dataclasses.replace(t, epochs=min(t.epochs, n))
                                           for s, t in stages.items()})

    registry.make_config = capped
    try:
        yield
    finally:
        registry.make_config = real


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _pretrain(checkpoints: Path, data_dir, quick: bool, command: str) -> list[Path]:
    from core.data.tasks import get_task
    from core.models.weights import CARD, WEIGHTS
    from core.pretrain import Pool, Recipe, pretrain

    out = checkpoints / _ENCODER
    if quick:
        ds = get_task("demo").dataset
        pool = Pool(ds.modalities["image"], [f"demo:{i}" for i in ds.ids])
        pretrain(out, Recipe(image_size=ds.specs["image"].image_shape[-1], epochs=1, batch_size=64), pool=pool,
                 progress=False, command=command)
    else:
        pretrain(out, data_dir=data_dir, progress=False, command=command)
    return [out / CARD, out / WEIGHTS]


def _release(task: str, checkpoints: Path, device: str, data_dir, quick: bool, command: str) -> tuple[list[Path], str]:
    from core.checkpoint import CARD
    from core.release import release

    outcomes = release(task, checkpoints, device=device, data_dir=data_dir,
                       epochs=QUICK_RELEASE_EPOCHS if quick else None, progress=False, command=command)
    kept = sum(o.status == "kept" for o in outcomes)
    return [o.folder / CARD for o in outcomes], f"{len(outcomes) - kept} trained, {kept} kept"


def _execute(step: Step, out: Path, checkpoints: Path, device: str, data_dir, quick: bool,
             command: str) -> tuple[list[Path], str]:
    if step.name == "pretrain":
        return _pretrain(checkpoints, data_dir, quick, command), ""
    if step.run is None:
        return _release(step.task, checkpoints, device, data_dir, quick, command)
    cap = capped_epochs(QUICK_EPOCHS) if quick else contextlib.nullcontext()
    with cap:
        return step.run(out_dir=out, device=device, data_dir=data_dir, progress=False, task=step.task), ""


def _fresh(record: dict | None, code: str, given: dict) -> bool:
    return bool(record) and record["code"] == code and record["inputs"] == given and all(
        Path(f).is_file() for f in record["files"])


def describes_release(step: Step, out: Path, checkpoints: Path) -> bool:
    """Whether the table of a step that reads the released models recorded the weights shipped now
    (:func:`core.shipped.stale_weights`); a table from before a retraining is rerun, manifest or not."""
    from core.shipped import stale_weights

    if not step.reads_release:
        return True
    table = out / step.task / f"{step.name.split('/', 1)[1]}.json"
    try:
        recorded = json.loads(table.read_text()).get("weights")
    except (OSError, ValueError):
        return False
    return bool(recorded) and not stale_weights(recorded, checkpoints)


def load_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if not path.is_file():
        return {"format": FORMAT, "steps": {}}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise MMXError(f"not valid JSON ({e}); delete it to start over", path) from None
    if manifest.get("format") != FORMAT:
        raise MMXError(f"not a {FORMAT} manifest; delete it to start over", path)
    return manifest


def reproduce_all(out: str | Path = "results", *, device: str = "auto", data_dir: str | Path | None = None,
                  checkpoints: str | Path | None = None, quick: bool = False, command: str = "",
                  progress: bool = True) -> list[Outcome]:
    """Run (or skip, when up to date) every step of :func:`plan`; one failing step is reported and
    the others still run. On one CPU thread when the device is the CPU, as the tables were made."""
    import torch
    from tqdm.auto import tqdm

    from core.paths import checkpoints_dir
    from core.train.device import resolve_device

    out = Path(out)
    checkpoints = Path(checkpoints) if checkpoints else (out / "checkpoints" if quick else checkpoints_dir())
    shipped = {(REPO_ROOT / "results").resolve(), (REPO_ROOT / "checkpoints").resolve()}
    if quick and {out.resolve(), checkpoints.resolve()} & shipped:
        raise MMXError("--quick writes smoke-run tables and models: give it an --out and --checkpoint-dir other "
                       "than the committed results/ and checkpoints/")
    manifest = load_manifest(out)
    steps, outcomes = plan(quick), []
    before = torch.get_num_threads()
    if resolve_device(device).type == "cpu":
        torch.set_num_threads(1)
    bar = tqdm(steps, desc="reproduce", unit="table", disable=not progress, file=sys.stdout)
    try:
        with _env("MMX_CHECKPOINTS", str(checkpoints.resolve())):
            for step in bar:
                bar.set_postfix_str(step.name)
                outcome = _one(step, manifest, out, checkpoints, device, data_dir, quick, command)
                outcomes.append(outcome)
                if outcome.status == "interrupted":
                    break
    finally:
        torch.set_num_threads(before)
    return outcomes


def _one(step: Step, manifest: dict, out: Path, checkpoints: Path, device: str, data_dir, quick: bool,
         command: str) -> Outcome:
    if quick and step.not_quick:
        return Outcome(step, "not run in quick mode", note=step.not_quick)
    try:
        code, given = code_hash(step.module), inputs(step, checkpoints, data_dir, quick)
    except MMXError as e:
        return Outcome(step, "skipped", note=str(e))
    record = manifest["steps"].get(step.name)
    if _fresh(record, code, given) and describes_release(step, out, checkpoints):
        return Outcome(step, "up to date", record["seconds"], files=record["files"])
    start = time.perf_counter()
    try:
        files, note = _execute(step, out, checkpoints, device, data_dir, quick, command)
    except KeyboardInterrupt:
        return Outcome(step, "interrupted", time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 -- one broken table must not stop the others; it is reported
        manifest["steps"].pop(step.name, None)
        write_json(out / MANIFEST, manifest)
        return Outcome(step, "failed", time.perf_counter() - start, f"{type(e).__name__}: {e}")
    seconds = round(time.perf_counter() - start, 1)
    files = [str(f) for f in files]
    # the inputs again: the release and the pretraining change what later steps read
    manifest["steps"][step.name] = {"code": code, "inputs": inputs(step, checkpoints, data_dir, quick),
                                    "files": files, "seconds": seconds, "device": device,
                                    "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(out / MANIFEST, manifest)
    return Outcome(step, "run", seconds, note, files)


def summary(outcomes: list[Outcome]) -> str:
    """The outcomes as a Markdown table with the total wall time."""
    lines = ["| step | task | status | wall s | note |", "| --- | --- | --- | ---: | --- |"]
    for o in outcomes:
        lines.append(f"| {o.step.name} | {o.step.task or ', '.join(_PRETRAIN_TASKS)} | {o.status} | "
                     f"{o.seconds:.1f} | {o.note.replace('|', '/')} |")
    ran = sum(o.seconds for o in outcomes if o.status != "up to date")
    counts = {s: sum(o.status == s for o in outcomes) for s in dict.fromkeys(o.status for o in outcomes)}
    return "\n".join(lines) + f"\n\n{', '.join(f'{n} {s}' for s, n in counts.items())}; {ran:.1f} s this run"


# ----------------------------------------------------------------------------- recorded times
def recorded_seconds(step: Step, results: Path, checkpoints: Path) -> float | None:
    """The wall time the committed output of ``step`` records (None when it records none): a
    table's ``wall_seconds``, the release cards' and the encoder card's ``training_seconds``."""
    if step.name == "pretrain":
        card = checkpoints / _ENCODER / "encoder.json"
        return json.loads(card.read_text())["training_seconds"] if card.is_file() else None
    if step.run is None:
        cards = sorted((checkpoints / step.task).glob("*/card.json"))
        return sum(json.loads(c.read_text())["training_seconds"] for c in cards) if cards else None
    table = results / f"{step.name}.json"
    return json.loads(table.read_text()).get("wall_seconds") if table.is_file() else None


def recorded_plan(results: str | Path = "results", checkpoints: str | Path | None = None) -> str:
    """The full plan with the wall time each committed table and model set recorded, as Markdown."""
    from core.paths import checkpoints_dir

    results, checkpoints = Path(results), Path(checkpoints) if checkpoints else checkpoints_dir()
    lines = ["# Reproducing everything: recorded wall times", "",
             "Written by `python train.py --all --dry-run`. Each figure is the wall time the committed output "
             "records for its own run (a table's `wall_seconds`; for a model set, the sum of its cards' "
             "`training_seconds`, training only; the encoder card's `training_seconds`): separate runs, each on "
             "one torch thread of the 2-core CPU the results were made on, not one uninterrupted `--all` run. "
             "Steps in the order `--all` runs them.", "",
             "| step | recorded wall s | min |", "| --- | ---: | ---: |"]
    total, missing = 0.0, []
    for step in plan():
        s = recorded_seconds(step, results, checkpoints)
        if s is None:
            missing.append(step.name)
            lines.append(f"| {step.name} | not recorded | |")
            continue
        total += s
        lines.append(f"| {step.name} | {s:.1f} | {s / 60:.1f} |")
    lines.append(f"| **total** | **{total:.1f}** | **{total / 60:.1f}** ({total / 3600:.2f} h) |")
    if missing:
        lines.append(f"\nNo recorded time for: {', '.join(missing)} (left out of the total).")
    return "\n".join(lines)
