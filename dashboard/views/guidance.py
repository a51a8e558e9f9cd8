"""Guidance: what the superior modality, seen only in training, changes in a guidance model's
answer from the inferior one: this sample unguided (I) and guided (G(I)+I), the change per class
over the test split with McNemar's test, the committed multi-seed results, and where G maps the
inferior latents (UMAP)."""
from __future__ import annotations

import streamlit as st
from common import figure, prediction_set, shipped_models, table
from explained import guidance_cohort, guidance_results, latent_points
from picker import cohort_name, page

from core.calibration import Conformal
from core.explain.guidance import GUIDED, UNGUIDED, sample_comparison
from core.viz.guidance import class_delta_figure, latent_map_figure, sample_comparison_figure

cur = page("Guidance")
method = cur.method


def _n(k: int) -> str:
    return f"{k} sample" + ("" if k == 1 else "s")


def _switch(key: str) -> None:
    st.session_state["model"] = key


if (cur.shipped.card or {}).get("method") != "guidance":
    guided = [m for m in shipped_models() if m.error is None and (m.card or {}).get("method") == "guidance"]
    guided.sort(key=lambda m: m.task != cur.shipped.task)  # this task's first
    st.info(f"**{cur.model_key}** is not a guidance model. A guidance model predicts from one cheap (inferior) "
            "modality, steered in training by a costly (superior) one it never needs again. "
            + ("Shipped guidance models:" if guided else "No guidance model is shipped."))
    for m in guided:
        st.button(f"Switch to {m.task}/{m.name}: {(m.card or {}).get('title', '')}", key=f"to:{m.task}/{m.name}",
                  on_click=_switch, args=(f"{m.task}/{m.name}",), icon=":material/alt_route:")
    st.stop()

sup = " + ".join(method.superior)
st.caption(f"Inferior modality **{method.inferior}** (the only input at prediction time); superior **{sup}** "
           "(seen in training only). **I** = the inferior modality's own classifier (unguided); **G(I)+I** = the "
           f"decoder on [G(z_I), z_I], where G maps the {method.inferior} latent towards the {sup} latent (guided: "
           "the model's answer).")

# ------------------------------------------------------------------ this sample
st.subheader("This sample")
comp = sample_comparison(method, cur.sample.data, 0)
if cur.sample.label is None:  # an upload: no true class to mark
    comp["true"] = False
classes = list(comp["class"])
top_i, top_g = classes[int(comp[UNGUIDED].argmax())], classes[int(comp[GUIDED].argmax())]
p_i, p_g = float(comp[UNGUIDED].max()), float(comp[GUIDED].max())
guided_own = Conformal.from_card(getattr(method, "card", None)) is not None
c1, c2 = st.columns(2)
with c1:
    st.metric(f"Unguided ({UNGUIDED}): predicted class", top_i, help="C_I: the inferior modality's classifier alone")
    st.markdown(f"p({top_i}) = **{100 * p_i:.1f}%**")
    st.caption(prediction_set(method, comp[UNGUIDED].to_numpy())
               + (" — calibrated for the guided model's output (the card records sets for G(I)+I only), so its "
                  "coverage guarantee does not carry over to I" if guided_own else ""))
with c2:
    before = float(comp.loc[comp["class"] == top_g, UNGUIDED].iloc[0])
    st.metric(f"Guided ({GUIDED}): predicted class", top_g, delta=f"{100 * (p_g - before):+.1f} pp for {top_g}",
              delta_color="normal" if abs(p_g - before) >= 5e-4 else "off",
              help="D_c on [G(z_I), z_I]; the change is against the unguided probability of the same class")
    st.markdown(f"p({top_g}) = **{100 * p_g:.1f}%**")
    st.caption(prediction_set(method, comp[GUIDED].to_numpy()))
if top_i == top_g:
    moved = 100 * (p_g - p_i)
    st.markdown(f"Guidance keeps the top class **{top_i}**; its probability goes from {100 * p_i:.1f}% to "
                f"{100 * p_g:.1f}% ({moved:+.1f} pp).")
else:
    st.markdown(f"Guidance changes the top class from **{top_i}** ({100 * p_i:.1f}%) to **{top_g}** "
                f"({100 * p_g:.1f}%).")
left, right = st.columns([3, 2])
with left:
    figure(sample_comparison_figure(comp), "guidance_sample")
with right:
    shown = comp.assign(**{c: (100 * comp[c].astype(float)).round(1) for c in (UNGUIDED, GUIDED, "change")})
    table(shown.rename(columns={UNGUIDED: f"{UNGUIDED} %", GUIDED: f"{GUIDED} %", "change": "change (pp)"}),
          "guidance_sample")

# ------------------------------------------------------------------ the test split
deltas, test = guidance_cohort(cur)
st.subheader(f"Over {cohort_name(cur)} ({test['n']} samples)")
a, b, c = st.columns(3)
a.metric(f"Accuracy {UNGUIDED}", f"{100 * test['accuracy I']:.1f}%")
b.metric(f"Accuracy {GUIDED}", f"{100 * test['accuracy G(I)+I']:.1f}%",
         delta=f"{100 * (test['accuracy G(I)+I'] - test['accuracy I']):+.1f} pp")
c.metric("McNemar p (exact)", f"{test['p']:.3g}",
         help="two-sided exact McNemar test of G(I)+I against I on the same test samples")
verdict = "a difference at the 5% level" if test["p"] < 0.05 else "no difference at the 5% level"
st.caption(f"Only I right on {_n(test['only I right'])}, only G(I)+I right on {_n(test['only G(I)+I right'])}: "
           f"{verdict} (one split of one seed; the committed results below repeat it over seeds).")
metric = st.radio("Per-class metric", ("recall", "precision", "f1"), horizontal=True, key="guidance_metric")
left, right = st.columns([3, 2])
with left:
    figure(class_delta_figure(deltas, metric), "guidance_class_deltas")
with right:
    cols = ["class", "support", f"{metric} {UNGUIDED}", f"{metric} {GUIDED}", f"delta_{metric}"]
    shown = deltas[cols].copy()
    for col in cols[2:]:
        shown[col] = (100 * shown[col]).round(1)
    table(shown.rename(columns={f"delta_{metric}": "change (pp)"}), "guidance_class_deltas")

committed = guidance_results(cur)
if committed is not None:
    md, column, runs = committed
    st.markdown(f"**Committed results** (`results/{cur.shipped.task}/guidance.md`, column `{column}`, {runs} runs: "
                "the same recipe retrained per seed and split; percent, mean ± std). S and S+I read the superior "
                "modality and are references only.")
    st.markdown(md)

# ------------------------------------------------------------------ latent map
st.subheader("Where G maps the inferior latents")
points = latent_points(cur)
colour = st.radio("Colour", ("mapping error", "class"), horizontal=True, key="guidance_colour")
in_map = bool((points["id"] == cur.sample.id).any())
figure(latent_map_figure(points, highlight=cur.sample.id if in_map else None,
                         colour="mapping_error" if colour == "mapping error" else "label"), "guidance_umap")
st.caption(f"UMAP of {cohort_name(cur)} (seeded). Left: z_I from the inferior encoder, embedded on its own. "
           "Right: G(z_I) and z_S share one space and are embedded together; the mapping error is the mean squared distance between "
           "a sample's G(z_I) and z_S, what G was trained to make small. "
           + ("The stars are this sample; the dotted line joins its G(z_I) to its z_S." if in_map
              else "An uploaded sample is not part of the test split, so it is not in the map."))
