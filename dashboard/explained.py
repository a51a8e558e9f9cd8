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
from core.viz.report import sample_report


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
