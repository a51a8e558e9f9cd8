"""Confusion-matrix figure: the row-normalised matrix (recall per true class) as a heatmap,
raw counts and percentages written in the cells (the counts come from :func:`core.metrics.confusion`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go


def confusion_figure(counts: np.ndarray, classes: Sequence[str], title: str = "Confusion matrix") -> go.Figure:
    """``counts``: C x C, true class on rows, predicted on columns. Colour = share of the true
    class (a row with no cases stays at 0), so rare classes read as well as common ones; the counts
    are kept in ``customdata`` for hover and checks."""
    counts = np.asarray(counts)
    totals = counts.sum(1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    text = [[f"{n}<br>{100 * p:.0f}%" if n else "0" for n, p in zip(cr, pr)] for cr, pr in zip(counts, share)]
    names = [str(c) for c in classes]
    fig = go.Figure(go.Heatmap(
        z=share, x=names, y=names, zmin=0, zmax=1, colorscale="Blues", customdata=counts,
        text=text, texttemplate="%{text}", textfont=dict(size=11),
        colorbar=dict(title="share of<br>true class", tickformat=".0%"),
        hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata} cases (%{z:.1%} of the true class)<extra></extra>",
    ))
    fig.update_layout(title=title, template="plotly_white", margin=dict(t=60, b=40, l=50, r=20),
                      xaxis=dict(title="predicted class", side="bottom", constrain="domain"),
                      yaxis=dict(title="true class", autorange="reversed", scaleanchor="x"))
    return fig
