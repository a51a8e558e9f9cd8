"""Modality weights: how much each modality counted for this sample (TCP confidence for MM
dynamics, fixed weights for MM static), how the weights spread over the test split, and what
switching each modality off costs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from common import figure, table
from explained import cohort_weights, effects, unmasked
from picker import page

from core.viz.explain import cohort_weights_figure, modality_weights_figure

cur = page("Modality weights")
info = unmasked(cur)

if info.modality_weights:
    st.subheader("This sample")
    w = {m: float(v[0]) for m, v in info.modality_weights.items()}
    a, b = st.columns(2)
    with a:
        figure(modality_weights_figure(w, {m: v[0] for m, v in info.modality_proba.items()}, info.classes,
                                       "Weight of each modality (label: its own classifier's top class)"),
               "modality_weights")
    with b:
        rows = pd.DataFrame({m: v[0] for m, v in info.modality_proba.items()}, index=list(info.classes)).T
        rows.insert(0, "weight", [w.get(m, np.nan) for m in rows.index])
        rows = rows.reset_index(names="modality")
        st.markdown("Each modality's own classifier (probabilities per class) and its weight in the fusion:")
        table(rows.round(4), "modality_probabilities")
        kind = (cur.shipped.card or {}).get("method")
        st.caption("MM dynamics weighs a modality by its confidence (the probability its own classifier gives the "
                   "class it predicts, trained to match the true class probability); absent modalities get none."
                   if kind == "mm_dynamics" else "These weights are fixed: the same for every sample.")
    st.subheader("Over the test split")
    figure(cohort_weights_figure(cohort_weights(cur)), "modality_weights_cohort")
else:
    st.info(f"**{cur.model_key}** has no per-modality weights (MM dynamics, MM static and HyperMM do); "
            "the masking table below still shows how much each modality matters to it.")

st.subheader("Switching a modality off, over the test split")
fx = effects(cur)
table(fx.round(4), "masking_effects")
st.caption("Accuracy on the model's test split with nothing off, then with each modality masked (images: gray, "
           "omics: the training mean) or left absent (the model's own handling). The drop is in percentage points.")
