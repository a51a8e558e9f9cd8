"""Figures of explainer sanity checks: pure functions, data in, ``go.Figure`` out."""
from __future__ import annotations

from typing import Mapping

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def sanity_figure(summary: pd.DataFrame, names: Mapping[str, str] | None = None,
                  title: str = "Similarity to the trained model's explanations") -> go.Figure:
    """``summary``: :meth:`core.explain.sanity.Sanity.summary` rows (explainer, modality, measure, depth,
    mean): mean Spearman (solid) and SSIM (dotted) against the number of layers randomised, one panel
    per modality; the permuted-label models' mean as a marker at the right, bars from the lowest
    retraining's to the highest (``lowest``, ``highest`` when given)."""
    names = names or {}
    mods = list(dict.fromkeys(summary["modality"]))
    fig = make_subplots(rows=1, cols=max(len(mods), 1), subplot_titles=mods, shared_yaxes=True)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    colours = {e: palette[i % len(palette)] for i, e in enumerate(dict.fromkeys(summary["explainer"]))}
    shown: set = set()  # one legend entry per explainer and measure, wherever it first appears
    for j, m in enumerate(mods, 1):
        for (e, s), g in summary[summary.modality == m].groupby(["explainer", "measure"], sort=False):
            cascade = g[g.depth.astype(str) != "permuted"]
            dash = "solid" if s == "spearman" else "dot"
            fig.add_trace(go.Scatter(x=cascade.depth.astype(int), y=cascade["mean"], mode="lines+markers",
                                     line=dict(color=colours[e], dash=dash), name=f"{names.get(e, e)} ({s})",
                                     legendgroup=f"{e}{s}", showlegend=(e, s) not in shown), 1, j)
            shown.add((e, s))
            perm = g[g.depth.astype(str) == "permuted"]
            if len(perm):
                spread = ({"error_y": dict(type="data", array=perm["highest"] - perm["mean"],
                                           arrayminus=perm["mean"] - perm["lowest"], color=colours[e], width=4)}
                          if "lowest" in perm else {})
                offset = 0.04 * list(colours).index(e) * (int(cascade.depth.max()) + 1)  # bars side by side
                fig.add_trace(go.Scatter(x=[int(cascade.depth.max()) + 1 + offset], y=perm["mean"], mode="markers",
                                         marker=dict(color=colours[e], symbol="x", size=10), **spread,
                                         name=f"{names.get(e, e)} ({s}), permuted labels", legendgroup=f"{e}{s}",
                                         showlegend=False), 1, j)
    fig.add_annotation(text="layers randomised, output side first<br>×: permuted labels (bar: lowest to highest "
                            "retraining)", xref="paper", yref="paper", x=0.5, y=-0.2, showarrow=False)
    low = min(-0.3, float(summary[["mean", *(["lowest"] if "lowest" in summary else [])]].min().min()) - 0.05)
    fig.update_yaxes(title_text="mean similarity", range=[low, 1.05], row=1, col=1)
    fig.update_layout(title=title, height=460, margin=dict(l=10, r=10, t=70, b=90))
    return fig
