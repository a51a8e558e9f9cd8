"""One sample with any subset of its modalities, predicted by the task's models that handle
absence, side by side: HyperMM (pools the modalities present), MM dynamics and MM static (each
with its own absence handling, :meth:`~core.models.base.Method.absence_handling`).

Each model has its own checkpoint and input size, so each gets the sample from its own data: the
same sample id in its own test split, or the same upload read for it::

    models = task_models(available(), "cells")
    methods = {name: load("cells", m.name) for name, m in models.items()}
    samples = matching_samples({n: heldout_cohort(m) for n, m in methods.items()}, "s1d1_AAACCC")
    result = subset_predict(methods, samples, keep=("rna", "image"))
    result.table  # model, class, probability, predicted
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.errors import MMXError
from core.explain.live import without
from core.explain.sample import Cohort, Sample
from core.models.base import Method
from core.shipped import ShippedModel

METHODS = ("hypermm", "mm_dynamics", "mm_static")  # the compared families, in display order
NAMES = {"hypermm": "HyperMM", "mm_dynamics": "MM dynamics", "mm_static": "MM static"}


def task_models(shipped: list[ShippedModel], task: str) -> dict[str, ShippedModel]:
    """The shipped models of ``task`` compared here, keyed by method: per method in
    :data:`METHODS`, the checkpoint named after it (the release's model of that family), else the
    first whose card names that method. Methods not shipped for the task are left out."""
    mine = [m for m in shipped if m.task == task and m.error is None]
    out = {}
    for method in METHODS:
        family = [m for m in mine if (m.card or {}).get("method") == method]
        chosen = next((m for m in family if m.name == method), family[0] if family else None)
        if chosen is not None:
            out[method] = chosen
    return out


def matching_samples(cohorts: dict[str, Cohort], sample_id: str) -> dict[str, Sample]:
    """Sample ``sample_id`` from each model's own cohort (its test split or the upload read for it),
    shaped for that model (its features, image size)."""
    out = {}
    for name, cohort in cohorts.items():
        ids = np.asarray(cohort.data.ids)[cohort.idx].astype(str)
        hit = np.flatnonzero(ids == str(sample_id))
        if not len(hit):
            raise MMXError(f"sample {sample_id!r} is not in {name}'s {cohort.source} ({len(ids)} samples)")
        out[name] = cohort.sample(int(hit[0]))
    return out


@dataclass
class SubsetPrediction:
    """Each model's answer from the kept modalities: ``table`` has one row per model and class
    (``probability``, and the model's ``predicted`` class on every row of it); ``read`` lists the
    modalities each model got; ``skipped`` says why a model could not predict."""

    table: pd.DataFrame
    read: dict[str, tuple[str, ...]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def proba(self, model: str) -> np.ndarray:
        return self.table.loc[self.table["model"] == model, "probability"].to_numpy()

    def top(self, model: str) -> tuple[str, float]:
        """The predicted class and its probability."""
        rows = self.table[self.table["model"] == model]
        best = rows.loc[rows["probability"].idxmax()]
        return str(best["class"]), float(best["probability"])


def subset_predict(methods: dict[str, Method], samples: dict[str, Sample], keep: tuple[str, ...] | list[str]
                   ) -> SubsetPrediction:
    """Predict each model's sample with only the modalities in ``keep``: the others are made
    absent (presence off, the model's own handling), not masked. A modality the sample lacks
    stays absent whatever ``keep`` says."""
    rows, read, skipped = [], {}, {}
    for name, method in methods.items():
        sample = samples[name]
        drop = [m for m in method.predicts_from() if m not in keep and m in sample.present]
        got = tuple(m for m in method.predicts_from() if m in sample.present and m not in drop)
        need = [m for m in method.required_modalities() if m not in got]
        if not got or need:
            skipped[name] = (f"it cannot predict without {', '.join(need)}" if need
                             else "none of the modalities it reads is kept")
            continue
        proba = method.predict(without(sample.data, drop)).proba[0]
        read[name] = got
        top = method.classes[int(proba.argmax())]
        rows += [{"model": name, "class": c, "probability": float(p), "predicted": top}
                 for c, p in zip(method.classes, proba)]
    table = pd.DataFrame(rows, columns=["model", "class", "probability", "predicted"])
    return SubsetPrediction(table, read, skipped)
