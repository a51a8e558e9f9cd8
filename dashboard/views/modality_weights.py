"""Modality weights: how much each modality counted for this sample (TCP confidence for MM
dynamics, fixed weights for MM static), how the weights spread over the test split, and what
switching each modality off costs."""
from __future__ import annotations

import pandas as pd
import streamlit as st
from common import figure, table
from explained import cohort_weights, effects, unmasked
from picker import cohort_name, page

from core.viz.explain import cohort_weights_figure, modality_weights_figure

cur = page("Modality weights")
info = unmasked(cur)

KIND = {"mm_dynamics": "MM dynamics scales each modality's latent by a confidence: a linear head trained (MSE) to "
                       "predict the probability that modality's own classifier gives the true class. It is an "
                       "unbounded score (values above 1 occur); absent modalities get none.",
        "mm_static": "MM static's weights are fixed: the same for every sample.",
        "hypermm": "HyperMM's weight is each modality's share of the pooled set representation."}

if info.modality_weights:
    st.subheader("This sample")
    w = {m: float(v[0]) for m, v in info.modality_weights.items()}
    a, b = st.columns(2)
    with a:
        figure(modality_weights_figure(w, {m: v[0] for m, v in info.modality_proba.items()}, info.classes,
                                       "Weight of each modality in the fusion"), "modality_weights")
        st.caption(KIND.get((cur.shipped.card or {}).get("method"), ""))
    with b:
        rows = pd.DataFrame({m: 100 * v[0] for m, v in info.modality_proba.items()}, index=list(info.classes))
        rows = rows.round(1).reset_index(names="class")
        if len(rows.columns) > 1:
            st.markdown("Each modality's own classifier, probability per class (%):")
            table(rows, "modality_probabilities")
    st.subheader(f"Over {cohort_name(cur)}")
    figure(cohort_weights_figure(cohort_weights(cur), cur.method.classes, f"Modality weights over {cohort_name(cur)}"),
           "modality_weights_cohort")
else:
    st.info(f"**{cur.model_key}** has no per-modality weights (MM dynamics, MM static and HyperMM do); "
            "the masking table below still shows how much each modality matters to it.")

st.subheader(f"Switching a modality off, over {cohort_name(cur)}")
fx = effects(cur).copy()
for c in ("accuracy", "balanced accuracy"):
    fx[c] = (100 * fx[c]).round(1)
fx = fx.rename(columns={"accuracy": "accuracy %", "balanced accuracy": "balanced accuracy %"}).round(1)
table(fx, "masking_effects")
st.caption(f"Accuracy on {cohort_name(cur)} with nothing off, then with each modality masked (images: gray, "
           "omics: the training mean) or left absent (the model's own handling). The drop is in percentage points.")
