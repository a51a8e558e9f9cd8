"""Explainers: the learned informativeness map beside captum's attributions (Integrated Gradients,
Occlusion, GradientSHAP, Feature Ablation) for the current sample, on one colour scale; how
faithful each is for this sample (deletion / insertion curves); what would change it (the smallest
masks that flip or keep the answer, per explainer); the sanity checks' flags; and over the test
split (the committed faithfulness table)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from common import figure, show_error, show_prediction_set, table
from explained import results_payload, sample_counterfactuals, sample_curves, sample_explanations, unmasked
from picker import IMAGE_NAMES, keep_choice, page

from core.errors import MMXError
from core.explain.attributions import EXPLAINERS, differentiable
from core.explain.faithfulness import CURVES, LEARNED, NAMES, RANDOM
from core.explain.counterfactual import MODALITIES, try_set
from core.explain.live import patch_grid, patch_size
from core.shipped import stale_weights
from core.paths import REPO_ROOT
from core.results_index import Figure, read_report
from core.viz.explain import patch_map_figure
from core.viz.faithfulness import curves_figure


def what_would_change_it(cur, names: tuple[str, ...], explained: dict) -> None:
    """The smallest masks that change (or keep) the answer, grown in each explainer's order, drawn and
    listed; image and modality sets can be applied to the live masks of Predict, feature sets edited here."""
    st.subheader("What would change it")
    c1, c2, c3 = st.columns(3)
    kind = c1.radio("question", ("flip", "keep"), horizontal=True, key="cf_kind",
                    format_func={"flip": "least to take away to change it", "keep": "least that alone keeps it"}.get)
    fill = c2.selectbox("masked with", ("mean", "zeros", "absent"), key="cf_fill",
                        help="units: the training mean or zeros (after scaling); whole modalities may also be absent "
                             "(the model's own handling; units then take the mean)")
    budget = c3.slider("at most this share of a modality's units", 0.1, 1.0, 0.5, 0.1, key="cf_budget")
    try:
        cf = sample_counterfactuals(cur, names, kind, fill, budget)
    except Exception as e:
        show_error(e)
        return
    method, sample = cur.method, cur.sample
    feature_names = {m: s.feature_names for m, s in method.specs.items() if s.kind == "omics"}
    cols = {m: patch_grid(method, m)[1] for m, s in method.specs.items() if s.kind == "image"}
    frame = cf.table(feature_names, cols)
    frame = frame[frame["kind"] == kind]
    top = cur.method.classes[next(iter(cf.sets.values())).original]
    st.caption(f"Each set grows in an explainer's order until masking it (or keeping only it) "
               f"{'changes' if kind == 'flip' else 'keeps'} the predicted class **{top}**, then loses every unit it "
               "can spare, and is checked by a forward pass. Smaller means the explainer found what the model relies "
               f"on; Random is a seeded random order. Searched in {cf.seconds:.2f} s.")
    for m in [m for m in method.predicts_from() if m in sample.present and m in cols]:
        sets = {e: s for (mm, e, k), s in cf.sets.items() if mm == m and k == kind}
        if not any(s.found for s in sets.values()):  # one line, not a row of identical unmarked images
            st.markdown(f"**{m}**: no set of at most {100 * budget:.0f}% of its patches "
                        f"{'changes' if kind == 'flip' else 'keeps'} the answer, in any explainer's order or a random "
                        "one.")
            continue
        grid_cols = st.columns(min(len(sets), 3) or 1)
        for i, (e, s) in enumerate(sets.items()):
            head = (f"{NAMES.get(e, e)}: {s.size} patches ({100 * s.share:.0f}%) → {method.classes[s.result]}"
                    if s.found else f"{NAMES.get(e, e)}: none within {100 * budget:.0f}%")
            with grid_cols[i % len(grid_cols)]:
                figure(patch_map_figure(sample.image(m), None, patch_size(method), selected=s.units, title=head,
                                        show_grid=False), f"what_would_change_it_{m}_{e}_{kind}", key=f"cf:{m}:{e}")
                if s.found:
                    st.button("Apply on Predict", key=f"cf_apply:{m}:{e}", on_click=_apply_patches,
                              args=(m, s.units, kind, fill), icon=":material/edit:")
    for m in [m for m in method.predicts_from() if m in sample.present and m in feature_names]:
        sets = {e: s for (mm, e, k), s in cf.sets.items() if mm == m and k == kind and s.found}
        if sets:
            with st.expander(f"{m}: try or edit a set"):
                e = st.selectbox("start from", list(sets), key=f"cf_from:{m}", format_func=lambda v: NAMES.get(v, v))
                chosen = st.multiselect(f"{m} features {'masked' if kind == 'flip' else 'kept'}",
                                        list(range(len(feature_names[m]))), default=list(sets[e].units),
                                        format_func=lambda i: feature_names[m][i], key=f"cf_edit:{m}:{e}:{kind}")
                proba = try_set(method, sample.data, 0, m, chosen, kind, fill)
                st.markdown(f"With these {len(chosen)} features {'masked' if kind == 'flip' else 'alone'}: "
                            f"**{method.classes[int(proba.argmax())]}** (p = {100 * float(proba.max()):.1f}%), "
                            f"p({top}) = {100 * float(proba[method.classes.index(top)]):.1f}%.")
    mods = cf.sets.get((MODALITIES, "exact", kind))
    if mods is not None:
        st.markdown(("Whole modalities: " + (f"{' + '.join(mods.units)} {'masked' if kind == 'flip' else 'alone'} → "
                                             f"**{method.classes[mods.result]}**" if mods.found else
                                             "no set of modalities does it")) + f" ({fill}).")
        if mods.found and kind == "flip":
            st.button("Apply on Predict", key="cf_apply_modalities", on_click=_apply_modalities,
                      args=(mods.units, fill), icon=":material/edit:")
    table(frame, f"what_would_change_it_{kind}")


def _apply_patches(m: str, units: tuple, kind: str, fill: str) -> None:
    """Put a patch set into Predict's live masks and go there."""
    st.session_state[f"on:{m}"] = True
    st.session_state["patch_modality"] = m
    st.session_state[f"patches:{m}"] = ", ".join(map(str, sorted(units)))
    st.session_state["patch_keep"] = "mask these" if kind == "flip" else "keep only these"
    st.session_state["patch_fill"] = "zeros" if fill == "zeros" else "mean"
    st.session_state["_goto"] = "views/predict.py"


def _apply_modalities(mods: tuple, fill: str) -> None:
    for m in mods:
        st.session_state[f"on:{m}"] = False
        st.session_state[f"how:{m}"] = "absent" if fill == "absent" else fill
    st.session_state["_goto"] = "views/predict.py"


if st.session_state.pop("_goto", None):
    keep_choice()
    st.switch_page("views/predict.py")

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

    what_would_change_it(cur, names, explained)

sanity = results_payload(cur.shipped.task, "sanity")
if sanity and (cur.model_key in sanity.get("weights", {})) and not stale_weights(sanity["weights"]):
    for e, why in sanity.get("flagged", {}).items():
        st.warning(f"Sanity check: **{NAMES.get(e, e)}** stays similar when the model is randomised or trained on "
                   f"permuted labels ({why}); its picture of this model says little about what it learned. "
                   f"See `results/{cur.shipped.task}/sanity.md`.", icon=":material/report:")
    if not sanity.get("flagged"):
        st.caption(f"Sanity checks (`results/{cur.shipped.task}/sanity.md`): every explainer's maps change when the "
                   "model's layers are randomised and with permuted labels, as they should.")
    if sanity.get("metrics"):
        metrics = pd.DataFrame(sanity["metrics"]).pivot_table(
            index=["explainer", "modality"], columns="metric", values="median", sort=False).reset_index()
        inf = {(r["explainer"], r["modality"]): r for r in sanity["metrics"] if r["metric"] == "infidelity"}
        keys = list(zip(metrics["explainer"], metrics["modality"]))
        for col, key in (("infidelity to random (median ratio)", "to random"),
                         ("infidelity below random, % of samples", "below random %")):
            metrics[col] = [inf.get(k, {}).get(key) for k in keys]
        metrics["explainer"] = metrics["explainer"].map(lambda e: NAMES.get(e, e))
        for col in ("infidelity", "sensitivity", "infidelity to random (median ratio)"):  # 3 significant digits:
            if col in metrics:  # infidelities are as small as 1e-7
                metrics[col] = metrics[col].map(lambda v: float(f"{v:.3g}") if v is not None and np.isfinite(v) else v)
        metrics["infidelity below random, % of samples"] = metrics["infidelity below random, % of samples"].round()
        table(metrics.rename(columns={"infidelity": "infidelity (median)", "sensitivity": "max-sensitivity (median)"}),
              f"explainers_captum_metrics_{cur.shipped.task}")
        n = {r["metric"]: r["n"] for r in sanity["metrics"]}
        st.caption(f"captum.metrics (`results/{cur.shipped.task}/sanity.md`): infidelity over {n.get('infidelity')} "
                   "test samples (lower: the scores predict what masking random units does; Random is the "
                   "reference, and a ratio to it below 1 beats it), max-sensitivity "
                   f"over {n.get('sensitivity', 0)} (lower: the explanation moves less under small "
                   "input noise).")

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
