"""Predict: the model's answer for the chosen sample, and how it moves when modalities or image
patches are switched off (live: only this part reruns)."""
from __future__ import annotations

import streamlit as st
from common import figure, show_error, show_prediction_set, table
from explained import report, unmasked
from picker import IMAGE_NAMES, Current, browse, page

from core.explain.live import ABSENT, Masking, live_predict, model_input, off_modes, parse_patches, patch_grid
from core.models.masking import PATCH_FILLS
from core.viz.explain import probability_figure

cur = page("Predict")
browse(cur)


def controls(cur: Current) -> Masking:
    """One toggle per modality the model reads, how to switch it off, and an image patch mask."""
    method, sample = cur.method, cur.sample
    off, patches = {}, {}
    mods = [m for m in method.predicts_from() if m in sample.present]
    cols = st.columns(max(len(mods), 1))
    for col, m in zip(cols, mods):
        with col:
            st.session_state.setdefault(f"on:{m}", True)  # a default that Explainers' "Apply" may have replaced
            if not st.toggle(f"{m}", key=f"on:{m}", help="switch off to mask it or leave it absent"):
                modes = off_modes(method, m)
                off[m] = st.selectbox(f"{m} switched off as", modes, key=f"how:{m}",
                                      format_func=lambda v: "absent (as if missing)" if v == ABSENT else f"{v} mask")
    images = [m for m in mods if method.specs[m].kind == "image" and m not in off]
    keep, fill = False, "gray"
    if images:
        with st.expander("Mask image patches", expanded=False):
            m = images[0] if len(images) == 1 else st.selectbox("image", images, key="patch_modality")
            rows, cols_ = patch_grid(method, m)
            text = st.text_input(f"patches of {m} (0–{rows * cols_ - 1}, row-major on the {rows} x {cols_} grid)",
                                 key=f"patches:{m}", placeholder="e.g. 0-15, 40, 41")
            c1, c2 = st.columns(2)
            keep = c1.radio("patch mask", ("mask these", "keep only these"), key="patch_keep", horizontal=True,
                            label_visibility="collapsed") == "keep only these"
            fill = c2.selectbox("fill", PATCH_FILLS, key="patch_fill")
            try:
                chosen = parse_patches(text, rows * cols_)
            except Exception as e:
                show_error(e)
                chosen = ()
            if chosen or keep:
                patches[m] = chosen
    return Masking(off=off, patches=patches, keep=keep, fill=fill)


@st.fragment
def live(cur: Current) -> None:
    masking = controls(cur)
    try:
        result = live_predict(cur.method, cur.sample, masking, unmasked=unmasked(cur))
    except Exception as e:
        show_error(e)
        return
    classes = result.unmasked.classes
    (before, after), t = result.top, result.table()
    c1, c2, c3 = st.columns(3)
    c1.metric("Predicted class", before, help="with every modality as given")
    p_before = float(t.loc[t["class"] == before, "probability"].iloc[0])
    c2.metric(f"p({before})", f"{100 * p_before:.1f}%")
    if masking.active:
        p_after = float(t.loc[t["class"] == before, "masked"].iloc[0])
        c3.metric("Masked: predicted class", after, delta=f"{100 * (p_after - p_before):+.1f} pp for {before}",
                  delta_color="normal" if abs(p_after - p_before) >= 5e-4 else "off")
    else:
        c3.metric("Masked", "nothing masked", help="switch a modality off or mask patches to compare")
    with c1:
        show_prediction_set(cur.method, result.unmasked.proba[0],
                            altered=len(cur.sample.present) < len(cur.method.predicts_from()))
    if masking.active:
        with c3:
            show_prediction_set(cur.method, result.masked.proba[0], altered=True)
    unsure = min(0.5, 2 / len(classes))
    if p_before < unsure:
        st.warning(f"The model is unsure: its top class gets {100 * p_before:.0f}% (an even guess over "
                   f"{len(classes)} classes gives {100 / len(classes):.0f}%). "
                   + ("Modalities are absent here, which leaves it less to go on." if
                      len(cur.sample.present) < len(cur.method.predicts_from()) else ""))
    left, right = st.columns([3, 2])
    with left:
        figure(probability_figure(classes, result.unmasked.proba[0],
                                  result.masked.proba[0] if masking.active else None), "probabilities")
    with right:
        shown = [m for m in cur.method.predicts_from()
                 if cur.method.specs[m].kind == "image" and m in cur.sample.present]
        for m in shown:
            a, b = st.columns(2)
            a.image(cur.sample.image(m), caption=f"{IMAGE_NAMES.get(m, m)} as the model sees it", width=200)
            if masking.active and (m in masking.off or m in masking.patches) and masking.off.get(m) != ABSENT:
                b.image(model_input(cur.method, cur.sample, m, masking), caption="masked", width=200)
        shown_t = (t if masking.active else t[["class", "probability"]]).copy()
        for c in ("probability", "masked"):
            if c in shown_t:
                shown_t[c] = (100 * shown_t[c]).round(1)
        if "change (pp)" in shown_t:
            shown_t["change (pp)"] = shown_t["change (pp)"].round(1)
        table(shown_t.rename(columns={"probability": "probability %", "masked": "masked %"}), "probabilities")
    st.download_button("Download report (zip)", lambda: report(cur, masking), f"report_{cur.sample.id}.zip",
                       "application/zip", key="report", on_click="ignore", icon=":material/folder_zip:",
                       help="every figure (HTML, PNG), every table (CSV) and report.json: model card, input hashes, "
                            "mask settings")


live(cur)
