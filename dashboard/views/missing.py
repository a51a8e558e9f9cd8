"""Missing modalities: keep any subset of the sample's modalities and see how the task's models
that cope with absence answer side by side (HyperMM pools what is there; MM dynamics and MM static
each handle absence their own way), then how each method holds up over the test split as more is
missing (the committed experiments)."""
from __future__ import annotations

import pandas as pd
import streamlit as st
from common import figure, load_model, prediction_set, shipped_models, show_error, table
from explained import missing_samples, results_payload
from picker import page

from core.explain.missing import NAMES, subset_predict, task_models
from core.metrics import LABELS
from core.viz.robustness import models_probability_figure, result_metrics, result_robustness_figure, result_sections

cur = page("Missing modalities")
task = cur.shipped.task
models = task_models(shipped_models(), task)

if not models:
    st.info(f"No HyperMM, MM dynamics or MM static model is shipped for **{task}**"
            + (" (its samples have a single modality: nothing can go missing)." if len(cur.shipped.modalities) < 2
               else ".") + " Pick a model of cells, derm7pt or rosmap in the sidebar.")
    st.stop()

methods = {n: load_model(task, m.name) for n, m in models.items()}
try:
    samples = missing_samples(cur, {n: m.name for n, m in models.items()})
except Exception as e:
    show_error(e)
    st.stop()

st.subheader("Keep these modalities")
st.caption(f"Compared on {task}: " + ", ".join(f"{NAMES[n]} (`{task}/{m.name}`)" for n, m in models.items())
           + ". Each model gets this sample from its own test split (or the same upload), at its own input size. "
             "A modality left out is absent (not masked): each model handles that its own way.")
mods = list(dict.fromkeys(m for method in methods.values() for m in method.predicts_from()))
present = {m for s in samples.values() for m in s.present}
row = st.container(horizontal=True)
keep = []
for m in mods:
    if m in present:
        if row.checkbox(m, value=True, key=f"keep:{task}:{m}"):
            keep.append(m)
    else:
        row.checkbox(f"{m} (absent in this sample)", value=False, disabled=True, key=f"keep:{task}:{m}:absent")
if not keep:
    st.warning("Keep at least one modality.")
    st.stop()

result = subset_predict(methods, samples, keep)
dropped = [m for m in mods if m not in keep and m in present]
cols = st.columns(len(methods))
for col, name in zip(cols, methods):
    with col:
        st.markdown(f"**{NAMES[name]}** · `{task}/{models[name].name}`")
        if name in result.skipped:
            st.warning(f"Cannot predict: {result.skipped[name]}.")
            continue
        cls, p = result.top(name)
        st.metric(f"{NAMES[name]}: predicted class", cls, help=f"from {', '.join(result.read[name])}")
        st.markdown(f"p({cls}) = **{100 * p:.1f}%**")
        altered = len(result.read[name]) < len(methods[name].predicts_from())
        st.caption(prediction_set(methods[name], result.proba(name), altered=altered))
        st.caption(f"Read: {', '.join(result.read[name])}. An absent modality is {methods[name].absence_handling()}.")
if len(result.table):
    left, right = st.columns([3, 2])
    with left:
        figure(models_probability_figure(result.table.assign(model=result.table["model"].map(NAMES)),
                                         "Class probabilities from the kept modalities"), "missing_probabilities")
    with right:
        wide = result.table.pivot(index="class", columns="model", values="probability")
        wide = (100 * wide[list(result.read)].reindex(result.table["class"].drop_duplicates())).round(1)
        wide.columns = [f"{NAMES[n]} %" for n in wide.columns]
        table(wide.reset_index(), "missing_probabilities")
        st.caption(f"Left out: {', '.join(dropped) or 'nothing'}.")

# ------------------------------------------------------------------ committed robustness curves
st.subheader("Robustness over the test split (committed experiment)")
payload = results_payload(task, "hypermm")
if payload is None:
    st.info(f"No robustness experiment is committed for {task} (`results/{task}/hypermm.json`); "
            "cells and derm7pt have one.")
    st.stop()
sections = result_sections(payload)
a, b = st.columns(2)
section = a.selectbox("Table", sections, key=f"robust_section:{task}") if len(sections) > 1 else sections[0]
metrics = result_metrics(payload, section)
metric = (b if len(sections) > 1 else a).selectbox(
    "Metric", metrics, index=metrics.index("accuracy") if "accuracy" in metrics else 0,
    format_func=lambda k: LABELS.get(k, k), key=f"robust_metric:{task}")
figure(result_robustness_figure(payload, section, metric), f"robustness_{task}")
scenarios = pd.DataFrame([{"scenario": sc["label"], **{m: f"{100 * r:.0f} %" for m, r in sc["rates"].items()}}
                          for s in payload["sections"] if s["heading"] == section for sc in s["scenarios"]])
st.caption(f"From `results/{task}/hypermm.md` (`{payload.get('command', '')}`): every method retrained per "
           "scenario and seed with modalities removed from training, validation and test samples alike (not the "
           "shipped checkpoints). x = the nominal missing rate of the removed modalities; HyperMM's line is thicker.")
table(scenarios.fillna("0 %"), f"robustness_scenarios_{task}")
