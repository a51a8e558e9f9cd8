"""The release: the models ``checkpoints/`` ships, trained by ``python train.py --release``.

Each model is trained with the recipe of its reproduction table (the same constants) on the
first split of its task's default scheme: the training part to learn, the validation part for
early stopping and selection, the test part only for the card's metrics (through
:func:`core.evaluate.score`, so ``--evaluate`` on that test split gives the card's numbers back).

A folder is kept, not retrained, when its card records the same recipe, code and data (hashes)
and every file it lists verifies: a killed release resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from core.calibration import calibration_record
from core.checkpoint import CARD, read_card, round_to_half, save_checkpoint, verified_files
from core.data.tasks import get_task, list_tasks
from core.errors import MMXError
from core.evaluate import score
from core.experiments.guidance import (
    CELL_LATENTS,
    CELL_LITE0,
    CELL_SCALING,
    CELL_SETTING_OPTIONS,
    CELL_SETTINGS,
    DERM_CONFIG,
    DERM_LITE0,
)
from core.experiments.hypermm import CELLS_IMAGE_SIZE, hypermm_config
from core.experiments.hypermm import DERM_IMAGE_SIZE as HYPERMM_DERM_SIZE
from core.experiments.mmdynamics import (
    CELLS_TRAIN,
    DERM_IMAGE_SIZE,
    DERM_TRAIN,
    IMAGENET_LAST_STAGE,
    IMAGENET_LAST_STAGES,
    ROSMAP_TRAIN,
    static_config,
)
from core.experiments.pbc import PBC_CNN
from core.models.registry import get_method, make_config, method_entry, training_stages
from core.paths import REPO_ROOT, data_root
from core.train import loop
from core.train.device import resolve_device


@dataclass(frozen=True)
class Release:
    """One shipped model: ``checkpoints/<task>/<name>``."""

    task: str
    name: str
    method: str
    modalities: tuple[str, ...] | None  # None: every modality of the task
    config: dict
    title: str
    image_size: int | None = None  # the task's image size (None: the task's default)
    recipe: str = ""  # the table whose recipe it follows

    def task_options(self) -> dict:
        return {"image_size": self.image_size} if self.image_size else {}


P_R_I = ("protein", "rna", "image")
_CELL_GUIDE = {k: {"latent_sizes": CELL_LATENTS, "scaling": CELL_SCALING, **cfg}
               for k, (_, cfg) in CELL_SETTINGS.items()}
# the small CNN backbone, named: "auto" would take VGG11 (35 MB of frozen weights per checkpoint) on a
# machine that has the ImageNet weights cached, so the release would depend on the machine
_HYPERMM = {**hypermm_config(), "backbone": "small_cnn"}
# the dermoscopy CNN: EfficientNet-Lite0 from ImageNet, the recipe bench/finetune_regimes.py chose
_DERM_CNN = {k: v for k, v in IMAGENET_LAST_STAGES.items() if k != "image_size"}

RELEASE: tuple[Release, ...] = (
    Release("cells", "mm_dynamics", "mm_dynamics", P_R_I, CELLS_TRAIN, "MM dynamics: protein + RNA + image",
            recipe="results/cells/image_dynamics.md"),
    Release("cells", "mm_static", "mm_static", P_R_I, static_config(P_R_I, CELLS_TRAIN),
            "MM static: protein + RNA + image", recipe="results/cells/image_dynamics.md"),
    Release("cells", "mm_dynamics_protein+rna", "mm_dynamics", ("protein", "rna"), CELLS_TRAIN,
            "MM dynamics: protein + RNA", recipe="results/cells/masked_image.md"),
    Release("cells", "hypermm", "hypermm", P_R_I, _HYPERMM, "HyperMM: protein + RNA + image, any subset",
            CELLS_IMAGE_SIZE, recipe="results/cells/hypermm.md"),
    Release("cells", "guidance_rna_by_protein", "guidance", ("rna", "protein"), _CELL_GUIDE["rna<-protein"],
            "Guidance: RNA guided by protein (predicts from RNA)", recipe="results/cells/guidance.md"),
    # EfficientNet-Lite0 at 224 px: the best encoder of results/cells/guidance.md (G(I)+I 50.6, ResNet pretrained
    # 50.5, small CNN 44.0 balanced accuracy; F1 micro 54.6, 47.6, 45.6)
    Release("cells", "guidance_image_by_rna+protein", "guidance", P_R_I, _CELL_GUIDE[CELL_LITE0],
            "Guidance: image guided by RNA + protein (predicts from the image)",
            CELL_SETTING_OPTIONS[CELL_LITE0]["image_size"], "results/cells/guidance.md"),
    Release("cells", "early_lr", "early_lr", ("rna", "protein"), {}, "Early fusion, logistic regression: RNA + protein",
            recipe="results/cells/reproduction_rp.md"),
    Release("rosmap", "mm_dynamics", "mm_dynamics", None, ROSMAP_TRAIN, "MM dynamics: mRNA + methylation + miRNA",
            recipe="results/rosmap/mmdynamics.md"),
    Release("rosmap", "mm_static", "mm_static", None, ROSMAP_TRAIN, "MM static: mRNA + methylation + miRNA",
            recipe="results/rosmap/mmdynamics.md"),
    Release("derm7pt", "mm_dynamics", "mm_dynamics", ("clinic", "derm"), DERM_TRAIN,
            "Image MM dynamics: clinical + dermoscopic photo", DERM_IMAGE_SIZE, "results/derm7pt/image_dynamics.md"),
    Release("derm7pt", "hypermm", "hypermm", ("clinic", "derm"), _HYPERMM,
            "HyperMM: clinical and/or dermoscopic photo", HYPERMM_DERM_SIZE, "results/derm7pt/hypermm.md"),
    # C_I and C_S on EfficientNet-Lite0, the best encoder of derm7pt/guidance
    Release("derm7pt", "guidance_clinic_by_derm", "guidance", ("clinic", "derm"), {**DERM_CONFIG, **DERM_LITE0},
            "Guidance: clinical photo guided by dermoscopy (predicts from the clinical photo)",
            IMAGENET_LAST_STAGE["image_size"], "results/derm7pt/guidance.md"),
    Release("derm7pt", "cnn", "cnn", ("derm",), _DERM_CNN, "CNN (EfficientNet-Lite0 from ImageNet): dermoscopic photo",
            IMAGENET_LAST_STAGES["image_size"], "results/bench/finetune_regimes.md"),
    # the ResNet row of results/pbc/cnn.md, not its better EfficientNet-Lite0 row: at 224 px explaining an image
    # costs 34-77x more (results/bench/explain_cost.md), so the tables that explain the shipped pbc model
    # (pbc/sanity, pbc/counterfactual) take hours on the CPU; the switch waits for those reruns
    Release("pbc", "cnn", "cnn", ("image",), {**PBC_CNN, "encoder": "resnet"}, "CNN (ResNet): blood-cell image",
            recipe="results/pbc/cnn.md"),
)
#: data whose terms allow research use only: their models inherit the restriction
RESEARCH_ONLY = {"derm7pt": "Derm7pt images may be used for academic research only and may not be redistributed; "
                            "models trained on them are for research use only."}
#: code a trained model and its card's metrics depend on (the recipes are in each entry's key;
#: plots, explanations, loaders and reports do not change a model)
CODE = ("core/data/**/*.py", "core/models/**/*.py", "core/train/**/*.py", "core/metrics.py")


def release_set(task: str | None = None) -> list[Release]:
    """The release entries of ``task`` (all when None). ``demo`` (synthetic) gets the cells
    entries, which use the same modality names: a quick full run of the release's code path."""
    if task == "demo":
        return [dataclasses.replace(r, task="demo", image_size=None) for r in RELEASE if r.task == "cells"]
    known = {r.task for r in RELEASE}
    if task is not None and task not in known:
        raise MMXError(f"no release for task {task!r}; released tasks are {sorted(known)} (and the synthetic demo)")
    return [r for r in RELEASE if task is None or r.task == task]


def code_hash() -> str:
    h = hashlib.sha256()
    for path in sorted({p for pattern in CODE for p in REPO_ROOT.glob(pattern)}):
        h.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def overrides(entry: Release, epochs: int | None = None) -> dict:
    """Every config setting of the entry (its recipe over the defaults); ``epochs`` replaces the
    recipe's epochs in every training stage (a quick run of the same recipe)."""
    cls = method_entry(entry.method).config_cls
    config = make_config(cls, entry.config)
    if epochs is not None:
        config = dataclasses.replace(config, **{s: dataclasses.replace(getattr(config, s), epochs=epochs)
                                                for s in training_stages(cls)})
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _plain(o):
    return dataclasses.asdict(o) if dataclasses.is_dataclass(o) else list(o)


def data_terms(task: str, data_dir: str | Path | None = None) -> dict:
    """Source and licence of the data a task reads, from the SOURCE.md of each folder it reads
    (or of the nearest folder above it, e.g. derm7pt/ for derm7pt/release_v0)."""
    info = next(t for t in list_tasks() if t.name == task)
    root = data_root(data_dir)
    sources = []
    for folder in info.requires:
        candidates = [root / folder, *(root / up for up in Path(folder).parents if up != Path("."))] if root else []
        path = next((c / "SOURCE.md" for c in candidates if (c / "SOURCE.md").is_file()), None)
        if path is None:
            sources.append({"folder": folder, "title": "", "licence": "SOURCE.md not found"})
            continue
        text = path.read_text()
        title = text.splitlines()[0].lstrip("# ").strip()
        m = re.search(r"^##\s*Licen[cs]e[^\n]*\n(.*?)(?=^## |\Z)", text, re.S | re.M | re.I)
        licence = " ".join(m.group(1).split()) if m else ""
        if not licence:
            m = re.search(r"^-\s*Licen[cs]e:\s*(.*?)(?=^-|\n\n|\Z)", text, re.S | re.M)
            licence = " ".join(m.group(1).split()) if m else "not stated in SOURCE.md"
        sources.append({"folder": folder, "title": title, "licence": licence})
    return {"sources": sources, "research_only": task in RESEARCH_ONLY, "terms": RESEARCH_ONLY.get(task, "")}


def _fresh(folder: Path, key: str, code: str, data_hash: str) -> bool:
    """True when ``folder`` holds this recipe, trained by this code on this data, intact."""
    if not (folder / CARD).is_file():
        return False
    try:
        card = read_card(folder)
        verified_files(folder, card)
    except MMXError:
        return False
    rel = card.get("release", {})
    return rel.get("key") == key and rel.get("code") == code and card.get("data_hash") == data_hash


@dataclass
class Outcome:
    entry: Release
    status: str  # "trained" | "kept"
    card: dict
    folder: Path


def release_one(entry: Release, out_root: str | Path = "checkpoints", *, device: str = "auto",
                data_dir: str | Path | None = None, epochs: int | None = None, progress: bool = False,
                command: str = "", code: str | None = None) -> Outcome:
    """Train, score and save one release entry (or keep the folder when it is fresh)."""
    td = get_task(entry.task, data_dir, **entry.task_options())
    ds = td.dataset
    mods = entry.modalities or tuple(ds.specs)
    missing = [m for m in mods if m not in ds.specs]
    if missing:
        raise MMXError(f"task {entry.task!r} has no modalities {missing} (release entry {entry.name!r})")
    scheme = td.default_split
    split = td.splits[scheme][0]
    settings = overrides(entry, epochs)
    config = json.loads(json.dumps(settings, default=_plain))
    code = code or code_hash()
    key = hashlib.sha256(json.dumps({"method": entry.method, "modalities": mods, "config": config,
                                     "split": split.name, "task_options": entry.task_options()},
                                    sort_keys=True).encode()).hexdigest()
    folder = Path(out_root) / entry.task / entry.name
    data_hash = ds.data_hash()
    if _fresh(folder, key, code, data_hash):
        return Outcome(entry, "kept", read_card(folder), folder)
    method = get_method(entry.method, {m: ds.specs[m] for m in mods}, ds.classes, **settings)
    method.fit(ds, split, seed=split.seed, device=device, progress=progress)
    round_to_half(method)  # shipped weights are stored in float16: score what a user loads
    scored = score(method, ds, split.test)
    trained_on = len(loop.training_rows(split.train, split.val, getattr(method.config, "train", None)))
    extra = {
        "name": entry.name, "title": entry.title, "recipe": entry.recipe,
        "task_options": entry.task_options(),
        "split": {"scheme": scheme, "index": 0, "name": split.name, "seed": int(split.seed)},
        "sizes": {"train": len(split.train), "validation": len(split.val), "test": len(split.test),
                  "trained_on": trained_on, "scored": scored["n"]},
        "class_counts": ds.class_counts(),
        "test_per_class": scored["per_class"],
        "synthetic": bool(ds.synthetic),
        "data": data_terms(entry.task, data_dir) if not ds.synthetic else {"sources": [], "research_only": False,
                                                                 "terms": "SYNTHETIC demo data"},
        "command": command,
        "calibration": calibration_record(method, ds, split),
        "release": {"key": key, "code": code},
    }
    save_checkpoint(method, folder, task=entry.task, metrics=scored["metrics"], data_hash=data_hash, extra=extra,
                    half=True)
    return Outcome(entry, "trained", read_card(folder), folder)


def release(task: str | None = None, out_root: str | Path = "checkpoints", *, device: str = "auto",
            data_dir: str | Path | None = None, epochs: int | None = None, progress: bool = True,
            command: str | None = None) -> list[Outcome]:
    """Train (or keep) every entry of the release set of ``task`` (all when None), one after the
    other with a progress bar; on a CPU with one torch thread, as the tables were made."""
    from tqdm.auto import tqdm

    entries = release_set(task)
    command = command or f"release({task!r}, epochs={epochs})"
    code = code_hash()
    before = torch.get_num_threads()
    if resolve_device(device).type == "cpu":
        torch.set_num_threads(1)
    out = []
    try:
        bar = tqdm(entries, desc="release", unit="model", disable=not progress, file=sys.stdout)
        for entry in bar:
            bar.set_postfix_str(f"{entry.task}/{entry.name}")
            out.append(release_one(entry, out_root, device=device, data_dir=data_dir, epochs=epochs,
                                   progress=False, command=command, code=code))
    finally:
        torch.set_num_threads(before)
    return out


def table(outcomes: list[Outcome]) -> str:
    """The release as a Markdown table: model, modalities, test metrics, size, training time."""
    lines = ["| task | model | method | modalities | test acc. | test bal. acc. | test F1 (w) | size | train s | |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for o in outcomes:
        c, m = o.card, o.card["metrics"]
        size = sum((o.folder / f).stat().st_size for f in c["files"]) + (o.folder / CARD).stat().st_size
        lines.append(f"| {o.entry.task} | {o.entry.name} | {c['method']} | "
                     f"{'+'.join(d['name'] for d in c['modalities'])} | {100 * m['accuracy']:.1f} | "
                     f"{100 * m['balanced_accuracy']:.1f} | {100 * m['f1_weighted']:.1f} | {size / 1e6:.2f} MB | "
                     f"{c['training_seconds']:.0f} | {o.status} |")
    return "\n".join(lines)

