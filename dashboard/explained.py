"""Cached ``core`` explain calls: per sample (the unmasked explanation, ablation curves) and per
model (its test split explained, the masking table). Keys are strings; the model and sample
objects pass unhashed (leading underscore), so a cache hit costs nothing."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from common import load_cohort
from picker import Current

from core.explain.cohort import cohort_explain, masking_effects, modality_weights
from core.explain.informativeness import Informativeness, explain
from core.explain.live import Masking, patch_ablation
from core.report import sample_report


@st.cache_data(max_entries=128, show_spinner=False)
def _unmasked(key: str, _method, _sample) -> Informativeness:
    return explain(_method, _sample.data)


def unmasked(cur: Current) -> Informativeness:
    return _unmasked(cur.key, cur.method, cur.sample)


@st.cache_data(max_entries=64, show_spinner="Masking patches one step at a time…")
def _curve(key: str, modality: str, order: str, fill: str, _method, _sample, _info) -> pd.DataFrame:
    return patch_ablation(_method, _sample, modality, order, fill=fill, unmasked=_info)


def ablation_curve(cur: Current, modality: str, order: str, fill: str) -> pd.DataFrame:
    return _curve(cur.key, modality, order, fill, cur.method, cur.sample, unmasked(cur))


@st.cache_data(max_entries=16, show_spinner="Explaining every test sample (once per model)…")
def _cohort(model_key: str, _method) -> tuple[Informativeness, np.ndarray]:
    cohort = load_cohort(*model_key.split("/"))
    return cohort_explain(_method, cohort), cohort.labels


def cohort(cur: Current) -> tuple[Informativeness, np.ndarray]:
    """The test split explained, and its true classes."""
    return _cohort(cur.model_key, cur.method)


def cohort_weights(cur: Current) -> pd.DataFrame:
    info, labels = cohort(cur)
    return modality_weights(info, labels)


@st.cache_data(max_entries=16, show_spinner="Switching each modality off over the test split (once per model)…")
def _effects(model_key: str, _method) -> pd.DataFrame:
    return masking_effects(_method, load_cohort(*model_key.split("/")))


def effects(cur: Current) -> pd.DataFrame:
    return _effects(cur.model_key, cur.method)


def report(cur: Current, masking: Masking) -> bytes:
    """The sample's report zip (built when the download is clicked)."""
    return sample_report(cur.method, cur.sample, masking)


# ------------------------------------------------------------ guidance and missing modalities
def _model_files(model_key: str, code_file: str) -> list:
    """What a per-model disk cache depends on: the checkpoint's files and the computing module."""
    from pathlib import Path

    from core.paths import checkpoints_dir

    folder = checkpoints_dir() / model_key
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) + [Path(code_file)]


@st.cache_data(max_entries=8, show_spinner="Comparing the unguided and guided heads over the test split (once per "
                                            "model)…")
def _guidance_cohort(model_key: str, _method) -> tuple[pd.DataFrame, dict]:
    from core.data.cache import cached_json
    from core.explain import guidance

    cohort = load_cohort(*model_key.split("/"))
    data, idx = cohort.data, cohort.idx

    def build() -> dict:
        return {"deltas": guidance.class_deltas(_method, data, idx).to_dict("list"),
                "mcnemar": guidance.head_test(_method, data, idx)}

    out = cached_json(_model_files(model_key, guidance.__file__),
                      f"guidance-cohort|{model_key}|{data.data_hash()}|{len(idx)}", build)
    return pd.DataFrame(out["deltas"]), out["mcnemar"]


def guidance_cohort(cur: Current) -> tuple[pd.DataFrame, dict]:
    """Per-class precision / recall / F1 of I and G(I)+I over the test split, and McNemar's test of
    the two heads there (disk-cached per checkpoint and data)."""
    return _guidance_cohort(cur.model_key, cur.method)


@st.cache_data(max_entries=8, show_spinner="Embedding z_I, G(z_I) and z_S with UMAP (once per model, then read "
                                            "from the disk cache)…")
def _latent_points(model_key: str, _method) -> pd.DataFrame:
    from core.data.cache import cached_json
    from core.explain import guidance

    cohort = load_cohort(*model_key.split("/"))

    def build() -> dict:
        points = guidance.latent_map(_method, cohort.data, cohort.idx)
        return {"points": points.astype({c: float for c in ("mapping_error", "x", "y")}).astype({"id": str}).to_dict(
            "list")}

    out = cached_json(_model_files(model_key, guidance.__file__),
                      f"guidance-umap|{model_key}|{cohort.data.data_hash()}|{len(cohort.idx)}", build)
    return pd.DataFrame(out["points"])


def latent_points(cur: Current) -> pd.DataFrame:
    """The UMAP of z_I, G(z_I) and z_S over the test split (seeded; disk-cached, so a restart does
    not embed again)."""
    return _latent_points(cur.model_key, cur.method)


@st.cache_data(max_entries=16, show_spinner=False)
def results_payload(task: str, experiment: str) -> dict | None:
    """A committed experiment's JSON (``results/<task>/<experiment>.json``), None when absent."""
    import json

    from core.paths import REPO_ROOT

    path = REPO_ROOT / "results" / task / f"{experiment}.json"
    return json.loads(path.read_text()) if path.is_file() else None


@st.cache_data(max_entries=16, show_spinner=False)
def _guidance_results(task: str, inferior: str, superior: tuple[str, ...],
                      encoder: str) -> tuple[str, str, int] | None:
    from core.experiments.guidance import rows_table

    payload = results_payload(task, "guidance")
    if payload is None:
        return None
    # a table that ran once per image encoder: only the runs with this model's encoder
    runs = [r for r in payload["runs"] if r.get("encoder", encoder) == encoder]
    # a column is named for its modalities, then (cells) ", <encoder>" where the setting changes the encoder
    columns = {r["column"].split(", ")[0]: r["column"] for r in runs}
    column = next((columns[c] for c in (f"{inferior}<-{'+'.join(superior)}", "diagnosis") if c in columns), None)
    if column is None:
        return None
    table = rows_table(runs, [(column, "balanced_accuracy", "Balanced accuracy"), (column, "f1_micro", "F1 micro")])
    return table, column, sum(r["column"] == column for r in runs)


def guidance_results(cur: Current) -> tuple[str, str, int] | None:
    """The committed experiment's rows for this model's modalities and image encoder (Markdown
    table, its column, the number of runs), or None when ``results/<task>/guidance.json`` has none."""
    m = cur.method
    return _guidance_results(cur.shipped.task, m.inferior, tuple(m.superior), m.config.encoder)


def missing_samples(cur: Current, names: dict[str, str]) -> dict[str, object]:
    """The current sample for each compared model (``names``: method -> checkpoint name), shaped
    for it: by id from its own test split, or the same upload read for it."""
    from picker import _read

    from core.explain.missing import matching_samples

    task = cur.shipped.task
    if cur.key.split("|")[1] == "test":
        cohorts = {n: load_cohort(task, ck) for n, ck in names.items()}
    else:
        images, table = [], None
        for m, spec in cur.method.specs.items():
            f = st.session_state.get(f"upload:{cur.model_key}:{m}") if spec.kind == "image" else None
            if f is not None:
                images.append((m, f.name, f.getvalue()))
        f = st.session_state.get(f"upload:{cur.model_key}:table")
        if f is not None:
            table = (f.name, f.getvalue())
        cohorts = {n: _read(f"{task}/{ck}", tuple(images), table) for n, ck in names.items()}
    return matching_samples(cohorts, cur.sample.id)


# ------------------------------------------------------------ explainers and their faithfulness
@st.cache_data(max_entries=32, show_spinner="Explaining this sample with each explainer (captum)…")
def _explainers(key: str, names: tuple[str, ...], _method, _sample) -> tuple[dict, dict]:
    from core.explain.faithfulness import explanations

    return explanations(_method, _sample.data, None, names)


def sample_explanations(cur: Current, names: tuple[str, ...]) -> tuple[dict[str, Informativeness], dict]:
    """The sample explained by each of ``names`` (``learned`` and captum's), and the seconds each took."""
    return _explainers(cur.key, names, cur.method, cur.sample)


@st.cache_data(max_entries=32, show_spinner="Tracing deletion and insertion curves…")
def _curves(key: str, names: tuple[str, ...], _method, _sample, _explained):
    from core.explain.faithfulness import curves

    return curves(_method, _sample.data, None, _explained)


def sample_curves(cur: Current, names: tuple[str, ...]):
    """The sample's deletion and insertion curves for each explainer and a seeded random order."""
    return _curves(cur.key, names, cur.method, cur.sample, sample_explanations(cur, names)[0])


@st.cache_data(max_entries=32, show_spinner="Searching the smallest masks that change the answer…")
def _counterfactuals(key: str, names: tuple[str, ...], kind: str, fill: str, budget: float, _method, _sample,
                     _explained):
    from core.explain.counterfactual import counterfactuals

    return counterfactuals(_method, _sample.data, 0, _explained, fill=fill, budget=budget, kinds=(kind,))


def sample_counterfactuals(cur: Current, names: tuple[str, ...], kind: str, fill: str, budget: float):
    """The sample's minimal ``kind`` sets (flip or keep: the question the page asks) in the order of
    each of ``names``, a random order, and over whole modalities (:mod:`core.explain.counterfactual`)."""
    explained = sample_explanations(cur, names)[0]
    return _counterfactuals(cur.key, names, kind, fill, budget, cur.method, cur.sample, explained)
