"""Explainers: the learned informativeness map beside captum's attributions (Integrated Gradients,
Occlusion, GradientSHAP, Feature Ablation) for the current sample, on one colour scale; how
faithful each is for this sample (deletion / insertion curves); and over the test split (the
committed faithfulness table)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from common import figure, show_error, show_prediction_set, table
from explained import sample_curves, sample_explanations, unmasked
from picker import IMAGE_NAMES, page

from core.errors import MMXError
from core.explain.attributions import EXPLAINERS, differentiable
from core.explain.faithfulness import CURVES, LEARNED, NAMES, RANDOM
from core.explain.live import patch_size
from core.paths import REPO_ROOT
from core.results_index import Figure, read_report
from core.viz.explain import patch_map_figure
from core.viz.faithfulness import curves_figure

cur = page("Explainers")
info = unmasked(cur)
top = info.classes[int(info.proba[0].argmax())]
st.markdown(f"Explained class: **{top}** (predicted), p = **{100 * float(info.proba[0].max()):.1f}%**.")
show_prediction_set(cur.method, info.proba[0], altered=len(cur.sample.present) < len(cur.method.predicts_from()))

try:
    differentiable(cur.method)
    ok = True
except MMXError as e:
    st.info(f"**{cur.model_key}**: {e}. Captum's explainers need a network; pick another model in the sidebar.")
    ok = False

learned = bool(info.feature_scores or info.patch_maps)
offered = ((LEARNED,) if learned else ()) + EXPLAINERS
default = [e for e in offered if e != "feature_ablation"]
if ok:
    chosen = st.pills("Explainers", offered, default=default, selection_mode="multi", key="explainers",
                      format_func=NAMES.get)
    names = tuple(e for e in offered if e in (chosen or ()))
    if not learned:
        st.caption(f"**{cur.model_key}** has no learned map (only MM dynamics learns one): captum's explainers only.")
    if not names:
        st.warning("Choose at least one explainer.")
        ok = False
if ok:
    try:
        explained, seconds = sample_explanations(cur, names)
        faith = sample_curves(cur, names)
    except Exception as e:
        show_error(e)
        st.stop()
    st.caption("Captum's scores: each sample's scores of a modality divided by their largest magnitude; shown is "
               "their positive part (evidence for the explained class) on the learned gates' 0-1 scale, so every map "
               "reads alike. Baseline: the training mean. Time for this sample: "
               + ", ".join(f"{NAMES[e]} {seconds[e]:.1f} s" for e in names) + ".")
    mods = [m for m in cur.method.predicts_from() if m in cur.sample.present and m in faith.curves]
    for m in mods:
        if cur.method.specs[m].kind == "image":
            st.subheader(f"{IMAGE_NAMES.get(m, m)} ({m})")
            with st.container(horizontal=True):
                opacity = st.slider("map opacity", 0.0, 1.0, 0.5, 0.05, key=f"xopacity:{m}", width=300)
                stretch = st.toggle("stretch each map to its own range", key=f"xstretch:{m}")
            per_row = 2 if len(names) <= 2 else min(len(names), 3)
            cols = st.columns(per_row)
            for i, e in enumerate(n for n in names if m in explained[n].patch_maps):
                grid = np.clip(explained[e].patch_maps[m][0], 0, 1)
                with cols[i % per_row]:
                    figure(patch_map_figure(cur.sample.image(m), grid, patch_size(cur.method), opacity,
                                           title=NAMES[e], show_grid=False, stretch=stretch),
                           f"explainer_{m}_{e}", key=f"xmap:{m}:{e}")
        else:
            st.subheader(f"{m}: top features")
            k = st.slider("top k", 5, 30, 10, key=f"xk:{m}")
            ranks = {}
            for e in (n for n in names if m in explained[n].feature_scores):
                t = explained[e].top_features(m, k, sample=0)
                ranks[NAMES[e]] = [f"{f} ({v:.2f})" for f, v in zip(t["feature"], t["informativeness"])]
            table(pd.DataFrame(ranks).rename_axis("rank").reset_index().assign(rank=lambda d: d["rank"] + 1),
                  f"explainers_top_{m}")
            st.caption("Each column: the features ranked by that explainer, with the score (learned gate, or captum's "
                       "normalised attribution).")

    st.subheader("How faithful each explanation is, for this sample")
    means = {m: {e: {c: v[0] for c, v in by.items() if np.isfinite(v[0]).all()} for e, by in faith.curves[m].items()}
             for m in mods}
    figure(curves_figure(faith.fractions, means, NAMES, f"Deletion and insertion: p({top}) as units are removed or "
                         "put back"), "explainers_curves", key="xcurves")
    rows = [{"modality": m, "explainer": NAMES[e],
             **{f"{c} AUC": round(float(faith.auc(m, e, c)[0]), 3) for c in CURVES}}
            for m in mods for e in faith.curves[m]]
    table(pd.DataFrame(rows), "explainers_auc_sample")
    st.caption("Deletion replaces the top-ranked units (features, or patches of the model's grid) with the training "
               "mean, most important first; insertion starts from the mean and puts them back. A faithful ranking "
               "drops the probability fast on deletion (low AUC) and raises it fast on insertion (high AUC); "
               f"{NAMES[RANDOM]} is a seeded random order. One sample says little: the table below is over the test "
               "split.")

st.subheader("Over the test split")
md = REPO_ROOT / "results" / cur.shipped.task / "faithfulness.md"
if not md.is_file():
    st.info(f"No faithfulness table for {cur.shipped.task} yet (committed for cells and derm7pt): "
            f"`python train.py --experiment {cur.shipped.task}/faithfulness` would write one.")
else:
    report = read_report(md, REPO_ROOT / "results")
    st.caption(f"From `results/{report.name}.md` (`{report.command}`, wall time {report.wall_time}). It measures the "
               f"shipped `{cur.shipped.task}/mm_dynamics` model" + ("" if cur.shipped.name == "mm_dynamics" else
                                                                   f", not {cur.model_key}") + ".")
    tables = 0
    for i, block in enumerate(report.blocks):
        if isinstance(block, pd.DataFrame):
            tables += 1
            table(block, f"faithfulness_{cur.shipped.task}_{tables}")
        elif isinstance(block, Figure):
            st.image(str(block.png), width=900)
        elif i == 0:
            with st.expander("Protocol"):
                st.markdown(block)
        else:
            st.markdown(block)
