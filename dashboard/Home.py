"""Entry point: ``streamlit run dashboard/Home.py``. Declares the pages and runs the chosen one;
each page draws the shared sample picker in the sidebar (its choice follows the user across
pages through ``st.session_state``)."""
from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="mmx: explainable multimodal classification", layout="wide")
pages = [
    st.Page("views/overview.py", title="Home", icon=":material/home:", default=True),
    st.Page("views/predict.py", title="Predict", icon=":material/online_prediction:"),
    st.Page("views/informativeness.py", title="Informativeness", icon=":material/grid_on:"),
    st.Page("views/modality_weights.py", title="Modality weights", icon=":material/balance:"),
    st.Page("views/explainers.py", title="Explainers", icon=":material/compare:"),
    st.Page("views/guidance.py", title="Guidance", icon=":material/alt_route:"),
    st.Page("views/missing.py", title="Missing modalities", icon=":material/extension_off:"),
    st.Page("views/benchmarks.py", title="Benchmarks", icon=":material/leaderboard:"),
]
page = st.navigation(pages)
page.run()
