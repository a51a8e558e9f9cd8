"""Informativeness (MM dynamics family): which patches, genes and proteins the model's gates
found informative for this sample and its class, and what masking those patches does."""
from __future__ import annotations

import numpy as np
import streamlit as st
from common import figure, shipped_models, show_error, show_prediction_set, table
from explained import ablation_curve, cohort, unmasked
from picker import IMAGE_NAMES, Current, page

from core.explain.cohort import class_top_features
from core.explain.live import PATCH_ORDERS, Masking, live_predict, model_input, patch_grid, patch_order, patch_size
from core.viz.explain import PATCH_TRACE, patch_curve_figure, patch_map_figure, top_features_figure

cur = page("Feature informativeness")
info = unmasked(cur)
if not info.feature_scores and not info.patch_maps:
    learners = [f"{m.task}/{m.name}" for m in shipped_models() if (m.card or {}).get("method") == "mm_dynamics"]
    st.info(f"**{cur.model_key}** learns no feature informativeness: only MM dynamics models have gates. "
            f"Pick one of {', '.join(learners) or 'none shipped (run `python train.py --release`)'} in the sidebar.")
    st.stop()
predicted = info.classes[int(info.proba[0].argmax())]


def clicked(event: dict | None) -> tuple[int, ...]:
    """Patch indices of the points clicked or box-selected on the patch map."""
    points = ((event or {}).get("selection") or {}).get("points", [])
    return tuple(sorted({int(p["customdata"]) if "customdata" in p else int(p["point_index"])
                         for p in points if p.get("customdata") is not None or "point_index" in p}))


@st.fragment
def image_section(cur: Current, m: str) -> None:
    rows, cols = patch_grid(cur.method, m)
    n = rows * cols
    st.subheader(f"{IMAGE_NAMES.get(m, m)} ({m}): patch map")
    c1, c2, c3, c4 = st.columns([2, 2, 2, 1])
    opacity = c1.slider("map opacity", 0.0, 1.0, 0.35, 0.05, key=f"opacity:{m}")
    k = c2.slider("mask the k patches", 0, n, 0, max(1, n // 64), key=f"k:{m}",
                  help="masked in the order chosen beside, on top of any patches clicked on the map")
    order = c3.radio("in the order", PATCH_ORDERS, key=f"order:{m}", horizontal=True,
                     help="most / least informative first by the learned map, or a random order")
    grid_on = c4.toggle("grid", value=True, key=f"grid:{m}")
    stretch = c4.toggle("stretch", value=False, key=f"stretch:{m}",
                        help="colour this map's own range instead of the fixed 0–1 scale shared by every sample")
    left, right = st.columns([1.3, 1])
    with left:
        scale = "this sample's range" if stretch else "0–1"
        fig = patch_map_figure(cur.sample.image(m), info.patch_maps[m][0], patch_size(cur.method), opacity,
                               title=f"{m}: informativeness per patch ({scale})", show_grid=grid_on, stretch=stretch)
        fig.update_traces(selected=dict(marker=dict(color="rgba(0,229,255,0.55)")),
                          unselected=dict(marker=dict(opacity=0)), selector=dict(name=PATCH_TRACE))
        event = figure(fig, f"patch_map_{m}", key=f"map:{cur.key}:{m}", on_select="rerun",
                       selection_mode=("points", "box"))
        st.caption("Click a patch to mask it (shift-click adds more; the box-select tool in the chart's toolbar "
                   "takes an area); double-click clears.")
    picked = clicked(event)
    ranked = patch_order(cur.method, info, m, order)[:k].tolist()
    chosen = tuple(sorted(set(ranked) | set(picked)))
    masking = Masking(patches={m: chosen})
    try:
        live = live_predict(cur.method, cur.sample, masking, unmasked=info)
    except Exception as e:
        show_error(e)
        return
    with right:
        p0 = float(info.proba[0][info.classes.index(predicted)])
        p1 = float(live.masked.proba[0][info.classes.index(predicted)])
        a, b = st.columns(2)
        a.metric(f"p({predicted})", f"{100 * p0:.1f}%", help="nothing masked")
        b.metric(f"{len(chosen)} patch{'' if len(chosen) == 1 else 'es'} masked", f"{100 * p1:.1f}%",
                 delta=f"{100 * (p1 - p0):+.1f} pp", delta_color="normal" if abs(p1 - p0) >= 5e-4 else "off",
                 help=f"predicted class now: {live.top[1]}")
        with a:
            show_prediction_set(cur.method, info.proba[0])
        if chosen:
            with b:
                show_prediction_set(cur.method, live.masked.proba[0], altered=True)
        st.image(model_input(cur.method, cur.sample, m, masking), width=300,
                 caption=f"what the model sees: {len(ranked)} patches in {order} order + {len(picked)} clicked, "
                         f"masked gray; it now predicts {live.top[1]}")
    curve = ablation_curve(cur, m, order, "gray")
    figure(patch_curve_figure(curve, n, current=k, target=predicted), f"patch_ablation_{m}_{order}")
    lo, hi = curve["probability"].min(), curve["probability"].max()
    st.caption(f"Masking patches in {order} order moves p({predicted}) between {100 * lo:.1f}% and {100 * hi:.1f}%"
               + (": this image barely matters to the prediction." if hi - lo < 0.05 else ".")
               + " A faithful map makes the most-informative curve fall fastest.")


def omics_section(cur: Current, m: str) -> None:
    st.subheader(f"{m}: most informative features")
    k = st.slider(f"top-k {m} features", 5, 40, 15, key=f"topk:{m}")
    if np.isnan(info.feature_scores[m][0]).all():
        st.warning(f"{m} is absent in this sample: no gate values for it.")
        return
    label = cur.sample.label or predicted
    a, b = st.columns(2)
    with a:
        top = info.top_features(m, k, sample=0)
        figure(top_features_figure(top, f"{m}: this sample"), f"top_{m}_sample")
        with st.expander("as a table"):
            table(top.round(4), f"top_{m}_sample")
    with b:
        cinfo, labels = cohort(cur)
        ctop = class_top_features(cinfo, labels, label, m, k)
        figure(top_features_figure(ctop[["feature", "informativeness"]],
                                   f"{m}: class {label} (mean of {int(ctop['samples'].iloc[0])} test samples)"),
               f"top_{m}_class_{label}")
        with st.expander("as a table"):
            table(ctop.drop(columns="samples").round(4), f"top_{m}_class_{label}")
    st.caption(f"The class is the sample's {'true' if cur.sample.label else 'predicted'} class. Informativeness "
               "is the gate value the model multiplied into each feature (0–1).")


for m in cur.method.predicts_from():
    if m in info.patch_maps and m in cur.sample.present:
        image_section(cur, m)
for m in info.feature_scores:
    omics_section(cur, m)
