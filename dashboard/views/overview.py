"""Home: what the tool does, the shipped models and which tasks (data sets) this machine has.

The text comes first and the libraries (torch and the rest, ~4 s on a small CPU) load after it,
so a fresh start shows the page at once and fills in the tables."""
from __future__ import annotations

import streamlit as st

st.title("Explainable multimodal classification")
st.write(
    "Train and compare multimodal classifiers on cells (RNA + protein + microscopy) and paired "
    "medical images, and see *why* a model decided: informative patches, genes and proteins, "
    "modality weights, masked or missing modalities, and guidance from an expensive modality."
)
st.markdown("Pick a model and a sample in the sidebar (from the model's test split, or upload your own), then "
            "open **Predict** to mask modalities and patches live, **Informativeness** for the patch map and the "
            "informative genes and proteins, and **Modality weights** for how much each modality counted.")
with st.spinner("Loading the libraries (once per server start)…"):
    import pandas as pd
    from common import available_tasks, data_banner, figure, list_tasks, shipped_models, show_error, task_summary
    from picker import sidebar

    from core.data.examples import has_examples
    from core.viz.overview import class_counts_figure

sidebar(samples=False)
data_banner()

rows = []
available = set(available_tasks())
for info in list_tasks():
    row = {"task": info.name, "description": info.description, "available": info.name in available,
           "samples to explain": "generated (synthetic)" if not info.requires else "data folder"
           if info.name in available else
           "bundled examples (examples/)" if has_examples(info.name) else "uploads only"}
    if row["available"]:
        try:
            s = task_summary(info.name)
            row.update(samples=s["samples"], classes=len(s["classes"]),
                       modalities="; ".join(f"{m}: {d}" for m, d in s["modalities"].items()),
                       groups=s["groups"], synthetic=s["synthetic"])
        except Exception as e:  # a broken data folder must not take the page down
            show_error(e)
            row["available"] = False
    rows.append(row)

def _calibration(m, *path: str) -> float | None:
    v = (m.card or {}).get("calibration")
    for k in path:
        v = (v or {}).get(k)
    return None if v is None else round(100 * v, 1)


st.subheader("Shipped models")
models = shipped_models()
if not models:
    st.info("No trained models in `checkpoints/` yet: `python train.py --release` trains them (about 20 min on a "
            "2-core CPU).")
else:
    shipped = pd.DataFrame([{
        "task": m.task, "model": m.name, "modalities": " + ".join(m.modalities),
        "accuracy %": round(100 * m.metrics["accuracy"], 1) if "accuracy" in m.metrics else None,
        "balanced accuracy %": round(100 * m.metrics["balanced_accuracy"], 1) if m.metrics else None,
        "F1 weighted %": round(100 * m.metrics["f1_weighted"], 1) if m.metrics else None,
        "test samples": (m.card or {}).get("sizes", {}).get("scored"),
        "ECE %": _calibration(m, "ece"), "90% set coverage %": _calibration(m, "conformal", "coverage"),
        "size MB": round(m.size_bytes / 1e6, 2), "research only": m.research_only,
        "method": (m.card or {}).get("method", ""), "title": (m.card or {}).get("title", ""),
        "synthetic": bool((m.card or {}).get("synthetic")), "problem": m.error or "",
    } for m in models])
    st.dataframe(shipped, hide_index=True, width="stretch", height=38 + 35 * len(shipped),
                 column_config={"title": st.column_config.TextColumn(width="large")})
    st.download_button("Download table (CSV)", shipped.to_csv(index=False), "shipped_models.csv", "text/csv",
                       key="shipped-csv")
    st.caption("Metrics are on each model's held-out test split (its card says which). ECE (15 bins) and the coverage "
               "of the 90% conformal prediction sets are measured on test samples the calibration did not see "
               "(results/<task>/calibration.md). Models trained on Derm7pt are for research use only, as the Derm7pt "
               "images are.")
    weak = shipped[shipped["balanced accuracy %"] < 50]
    if len(weak):
        st.caption("Weak (balanced accuracy below 50 %): " + ", ".join(f"{r.task}/{r.model}" for r in weak.itertuples())
                   + ". Their explanations show what a weak model relies on, not what decides the class.")
    for m in models:
        if m.error:
            st.error(f"{m.task}/{m.name}: {m.error}")

st.subheader("Tasks found")
table = pd.DataFrame(rows)
st.dataframe(table, hide_index=True, width="stretch", height=38 + 35 * len(table),
             column_config={"description": st.column_config.TextColumn(width="large")})
st.download_button("Download table (CSV)", table.to_csv(index=False), "tasks.csv", "text/csv", key="tasks-csv")
if "demo" in available:
    st.caption("`demo` is **synthetic** data generated for tests and for machines without data.")

choice = st.selectbox("Class counts of", [r["task"] for r in rows if r["available"]])
if choice:
    figure(class_counts_figure(task_summary(choice)), f"{choice}_class_counts")
