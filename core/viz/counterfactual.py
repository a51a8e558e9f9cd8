"""Figures of counterfactual masks: pure functions, data in, ``go.Figure`` out."""
from __future__ import annotations

from typing import Mapping

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def flip_sizes_figure(frame: pd.DataFrame, names: Mapping[str, str] | None = None,
                      title: str = "Minimal flip set size") -> go.Figure:
    """``frame``: one row per sample, modality and explainer with ``share`` (the flip set as a share of
    the modality's units; NaN when no flip was found): a box of the shares per explainer, one panel per
    modality, and how many samples flipped."""
    names = names or {}
    mods = list(dict.fromkeys(frame["modality"]))
    fig = make_subplots(rows=1, cols=max(len(mods), 1), subplot_titles=mods, shared_yaxes=True)
    for j, m in enumerate(mods, 1):
        g = frame[frame.modality == m]
        for e, ge in g.groupby("explainer", sort=False):
            found = ge["share"].dropna()
            fig.add_trace(go.Box(y=100 * found, name=f"{names.get(e, e)} ({len(found)}/{len(ge)})", boxpoints="all",
                                 jitter=0.4, pointpos=0, marker_size=4, showlegend=False), 1, j)
    fig.update_yaxes(title_text="flip set, % of the modality's units", row=1, col=1)
    fig.update_layout(title=title, height=460, margin=dict(l=10, r=10, t=70, b=40))
    return fig


def mask_sets_figure(table: pd.DataFrame, title: str = "What would change it") -> go.Figure:
    """``table``: :meth:`core.explain.counterfactual.Counterfactuals.table` of one kind: each
    explainer's set size as a share of the units, with the class it leads to."""
    fig = go.Figure()
    for m, g in table.groupby("modality", sort=False):
        fig.add_trace(go.Bar(x=g["explainer"], y=g["share %"].where(g["found"]), name=m,
                             text=[f"→ {b}" if f else "none within budget" for b, f in zip(g["becomes"], g["found"])],
                             textposition="outside"))
    fig.update_layout(title=title, barmode="group", yaxis_title="% of the modality's units", height=380,
                      margin=dict(l=10, r=10, t=50, b=40))
    return fig
