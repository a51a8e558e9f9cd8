"""Score a trained model on data: its own task's test split, or a user's files.

``train.py --evaluate CHECKPOINT --data-dir PATH`` (a user's files) or ``--task TASK`` (the test split
the model's card names) and ``--predict`` call :func:`evaluate` and :func:`predict`; the release computes every card's held-out metrics with :func:`score`, so
evaluating a shipped model on its own test split gives back its card's numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core import metrics
from core.data.dataset import MultimodalDataset
from core.data.download import how_to_get
from core.data.examples import EXTRACTS, has_examples, read_examples
from core.data.external import read_external
from core.data.tasks import get_task, list_tasks
from core.errors import DataUnavailable, MMXError
from core.paths import data_root


def predictable(method, data: MultimodalDataset, idx: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The samples of ``idx`` (all when None) that have every modality the method requires
    (e.g. guidance's inferior one), and how many were left out."""
    idx = np.arange(len(data)) if idx is None else np.asarray(idx)
    keep = np.ones(len(idx), dtype=bool)
    for m in method.required_modalities():
        keep &= data.present[m][torch.as_tensor(idx)].numpy()
    return idx[keep], int((~keep).sum())


def score(method, data: MultimodalDataset, idx: np.ndarray | None = None) -> dict:
    """The six metrics (+ F1 micro, AUROC, and F1 of the positive class when binary) of
    ``method`` on samples ``idx`` (those it can predict: see :func:`predictable`), per-class
    averages over the classes present in the truth, and each present class's recall and support."""
    idx, left_out = predictable(method, data, idx)
    proba = method.predict(data, idx).proba
    y = data.y[torch.as_tensor(idx)].numpy()
    present = np.unique(y)
    pred = proba.argmax(1)
    return {"n": len(idx), "left_out": left_out, "classes_present": [method.classes[k] for k in present],
            "metrics": metrics.compute(y, proba, with_auroc=True, labels=present.tolist()),
            "per_class": {method.classes[k]: {"support": int((y == k).sum()),
                                              "recall": float((pred[y == k] == k).mean())} for k in present}}


@dataclass
class Scored:
    """What a model was run on: the data, which of its samples, whether it has labels, and
    what reading it found (features matched, filled or ignored; modalities absent)."""

    data: MultimodalDataset
    idx: np.ndarray
    labelled: bool
    source: str
    notes: list[str] = field(default_factory=list)
    stand_in: str | None = None  # why the bundled examples stand in for the task's test split, when they do


def open_source(method, source: str | Path | None = None, *, task: str | None = None, labelled: bool = True,
                label_column: str | None = None, modality: str | None = None,
                data_dir: str | Path | None = None) -> Scored:
    """Data for ``method``: ``source``, a path read by :func:`core.data.external.read_external` (an image
    folder, a CSV, ``.h5ad`` or ``.h5mu``), or ``task``, a task's test part of the split the model's card
    names (else of the task's default split; its data under ``data_dir``). A path and a task are two
    spellings, never guessed from one another: a path that does not exist is an error even when a task
    has that name."""
    if (source is None) == (task is None):
        raise MMXError("give the data to score as a path or as a task, one of the two")
    if task is not None:
        return _task_source(method, task, data_dir)
    path = Path(source)
    if not path.exists():
        tasks = sorted(t.name for t in list_tasks())
        hint = (f"; to score the test split of task {source!r}, give it as a task (train.py: --task {source})"
                if str(source) in tasks else "")
        raise MMXError("no such file or folder" + hint, path)
    fill = {m: method.prep.raw_training_mean(m).cpu().numpy() for m, s in method.specs.items() if s.kind == "omics"}
    ext = read_external(path, method.specs, method.classes, fill=fill, labelled=labelled,
                        label_column=label_column, modality=modality)
    return Scored(ext.dataset, np.arange(len(ext.dataset)), ext.labelled, str(path.resolve()), list(ext.notes))


def card_split(method, task: str, data_dir=None):
    """The data of ``task`` checked for ``method`` and the split its card names when the card is
    of that task (else the task's default scheme's first split)."""
    card = getattr(method, "card", {}) or {}
    own = card.get("task") == task
    td = get_task(task, data_dir, **(card.get("task_options", {}) if own else {}))
    split_info = card.get("split", {}) if own else {}
    scheme = split_info.get("scheme", td.default_split)
    if scheme not in td.splits:
        raise MMXError(f"task {task!r} has no split scheme {scheme!r} (the card's); it has {list(td.splits)}")
    split = td.splits[scheme][int(split_info.get("index", 0))]
    if own and split_info.get("name") not in (None, split.name):
        raise MMXError(f"the card's split {split_info['name']!r} is not the task's {split.name!r} any more")
    return method.check_data(td.dataset), split


def _task_source(method, task: str, data_dir) -> Scored:
    """The test part of the card's split of ``task``; with no data folder for it, the bundled examples
    (real test samples, said in ``source`` and the notes); with neither, :class:`DataUnavailable`."""
    info = next((t for t in list_tasks() if t.name == task), None)
    if info is not None and not info.available(data_root(data_dir)):
        if has_examples(task):
            return _examples_source(method, task)
        raise DataUnavailable(f"no data for task {task!r} on this machine. {how_to_get(task)}")
    data, split = card_split(method, task, data_dir)
    note = f"task {task!r}, test part of split {split.name!r} ({len(split.test)} samples)"
    if data.synthetic:
        note += "; SYNTHETIC data"
    return Scored(data, np.asarray(split.test), True, f"test split of {task}", [note])


def _examples_source(method, task: str) -> Scored:
    card = getattr(method, "card", None) or {}
    options = card.get("task_options", {}) if card.get("task") == task else {}
    data = method.check_data(read_examples(task, **options))
    unit = EXTRACTS[task].unit
    of = f" of the {card['sizes']['test']}" if card.get("task") == task and "sizes" in card else ""
    source = f"examples: {len(data)}{of} test {unit}"
    note = (f"No {task} data folder on this machine, so the examples bundled in examples/{task} stand in: "
            f"{source.removeprefix('examples: ')}, real samples. The model card's metrics are the full test split's; "
            f"figures over the cohort are over these examples. {how_to_get(task)}")
    return Scored(data, np.arange(len(data)), True, source, [note], stand_in=note)


def evaluate(method, source: str | Path | None = None, **options) -> dict:
    """Metrics of ``method`` on ``source`` or ``task=`` (see :func:`open_source`), with the reading report."""
    s = open_source(method, source, labelled=True, **options)
    result = score(method, s.data, s.idx)
    notes = s.notes + _left_out_note(method, result["left_out"])
    return {"model": _model_name(method), "source": s.source, "notes": notes, **result}


def predict(method, source: str | Path | None = None, **options) -> tuple[pd.DataFrame, list[str]]:
    """Class probabilities of every sample of ``source`` (labels not needed): one row per sample
    with its id, the predicted class and one column per class; plus the reading report."""
    s = open_source(method, source, labelled=False, **options)
    s.idx, left_out = predictable(method, s.data, s.idx)
    s.notes += _left_out_note(method, left_out)
    proba = method.predict(s.data, s.idx).proba
    frame = pd.DataFrame(proba, columns=[f"p_{c}" for c in method.classes])
    frame.insert(0, "predicted", [method.classes[k] for k in proba.argmax(1)])
    frame.insert(0, "id", np.asarray(s.data.ids)[s.idx])
    if s.labelled:
        frame.insert(2, "label", [method.classes[k] for k in s.data.y[torch.as_tensor(s.idx)].numpy()])
    return frame, s.notes


def _left_out_note(method, n: int) -> list[str]:
    return [f"{n} samples left out: they lack {list(method.required_modalities())}, which the model needs"] if n else []


def _model_name(method) -> str:
    card = getattr(method, "card", None) or {}
    return f"{card.get('task', '?')}/{card.get('name', method.name)}"
