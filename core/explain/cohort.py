"""Explanations over a cohort (a model's test split): modality weights per class, the effect of
switching each modality off on accuracy, and the most informative features of a class."""
from __future__ import annotations

import numpy as np
import pandas as pd

from core import metrics
from core.explain.informativeness import Informativeness, explain
from core.explain.live import ABSENT, Masking, off_modes, without
from core.explain.sample import Cohort
from core.models.base import Method


def cohort_explain(method: Method, cohort: Cohort) -> Informativeness:
    """Every explain output of the cohort's samples, unmasked."""
    return explain(method, cohort.data, cohort.idx)


def modality_weights(info: Informativeness, labels: np.ndarray) -> pd.DataFrame:
    """Long table, one row per sample and modality with its weight (TCP confidence, or the fixed
    weight); absent modalities (NaN) are left out."""
    frame = pd.DataFrame({"id": info.ids, "label": labels, **info.modality_weights})
    long = frame.melt(id_vars=["id", "label"], var_name="modality", value_name="weight")
    return long.dropna(subset=["weight"]).reset_index(drop=True)


def masking_effects(method: Method, cohort: Cohort) -> pd.DataFrame:
    """Accuracy over the cohort with nothing off, then with each modality masked (default mask)
    and absent: the drop in points and the share of predictions that change."""
    y = cohort.data.y[cohort.idx].numpy()
    base = method.predict(cohort.data, cohort.idx).proba
    rows = [_effect_row("none", "—", y, base, base)]
    needed = set(method.required_modalities())
    for m in method.predicts_from():
        mode = off_modes(method, m)[0]  # gray image, mean omics: what the page switches off first
        rows.append(_effect_row(m, mode, y, base,
                                method.predict(cohort.data, cohort.idx,
                                               mask=Masking(off={m: mode}).mask_specs(method)).proba))
        others_present = any(bool(cohort.data.present[o].all()) for o in method.predicts_from() if o != m)
        if m not in needed and others_present:
            data = without(cohort.data, [m])
            rows.append(_effect_row(m, ABSENT, y, base, method.predict(data, cohort.idx).proba))
    out = pd.DataFrame(rows)
    out["accuracy drop (pp)"] = 100 * (out["accuracy"].iloc[0] - out["accuracy"])
    return out


def _effect_row(modality: str, how: str, y: np.ndarray, base: np.ndarray, proba: np.ndarray) -> dict:
    m = metrics.compute(y, proba, labels=np.unique(y).tolist())
    return {"switched off": modality, "how": how, "accuracy": m["accuracy"],
            "balanced accuracy": m["balanced_accuracy"],
            "predictions changed %": 100 * float((proba.argmax(1) != base.argmax(1)).mean())}


def class_top_features(info: Informativeness, labels: np.ndarray, label: str, modality: str,
                       k: int = 10) -> pd.DataFrame:
    """The ``k`` features of ``modality`` with the highest mean informativeness over the samples
    of class ``label`` (samples lacking the modality left out)."""
    scores = info.feature_scores[modality][np.asarray(labels) == label]
    v = np.nanmean(scores, 0) if len(scores) else np.zeros(scores.shape[1])
    order = np.argsort(-v, kind="stable")[:k]
    return pd.DataFrame({"feature": np.asarray(info.feature_names[modality])[order], "informativeness": v[order],
                         "samples": len(scores)})
