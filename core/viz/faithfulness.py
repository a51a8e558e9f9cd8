"""The cohort's deletion and insertion curves, one panel per curve and modality, one line per
explainer (mean over samples). Pure function: data in, ``go.Figure`` out."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

_COLOURS = ("#E45756", "#4C78A8", "#F58518", "#54A24B", "#B279A2", "#9D9D9D", "#72B7B2", "#FF9DA6")
_CURVES = ("deletion", "insertion")


def curves_figure(fractions: np.ndarray, means: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
                  names: Mapping[str, str] | None = None, title: str = "Deletion and insertion curves") -> go.Figure:
    """``means[modality][explainer][curve]``: the mean probability of the predicted class at each
    fraction of the modality's units removed (deletion) or put back (insertion). ``names``: legend
    labels of the explainers (default: their keys). Colours follow the first modality's explainer
    order, so one explainer has one colour in every panel."""
    names = dict(names or {})
    mods = list(means)
    order = list(dict.fromkeys(e for m in mods for e in means[m]))
    colour = {e: _COLOURS[i % len(_COLOURS)] for i, e in enumerate(order)}
    fig = make_subplots(rows=len(_CURVES), cols=max(len(mods), 1), shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=[f"{c}: {m}" for c in _CURVES for m in mods],
                        vertical_spacing=0.12, horizontal_spacing=0.05)
    shown = set()
    for r, c in enumerate(_CURVES, start=1):
        for col, m in enumerate(mods, start=1):
            for e, by_curve in means[m].items():
                if c not in by_curve:
                    continue
                fig.add_trace(go.Scatter(x=fractions, y=by_curve[c], mode="lines", name=names.get(e, e),
                                         legendgroup=e, showlegend=e not in shown,
                                         line=dict(color=colour[e], dash="dot" if e == "random" else "solid")),
                              row=r, col=col)
                shown.add(e)
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(title_text="P(predicted class)", col=1)
    fig.update_xaxes(tickformat=".0%")
    fig.update_xaxes(title_text="share of units removed / inserted (most important first)", row=len(_CURVES))
    fig.update_layout(title=title, height=620, margin=dict(l=60, r=20, t=80, b=60),
                      legend=dict(orientation="h", y=-0.15))
    return fig
