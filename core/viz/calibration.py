"""Reliability diagrams: accuracy against confidence per bin, one panel per model."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def reliability_figure(bins: dict[str, pd.DataFrame], title: str = "Reliability diagram") -> go.Figure:
    """``bins``: model -> :func:`core.calibration.reliability` table. Bars are each bin's accuracy
    (width = the bin), the diagonal is perfect calibration, markers sized by how many samples
    the bin holds; hover gives the numbers."""
    cols = min(4, len(bins))
    rows = -(-len(bins) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(bins), horizontal_spacing=0.05,
                        vertical_spacing=0.24)
    for i, (name, b) in enumerate(bins.items()):
        row, col = divmod(i, cols)
        row, col = row + 1, col + 1
        first = i == 0
        full = b[b["count"] > 0]
        mid = (full["lower"] + full["upper"]) / 2
        fig.add_bar(x=mid, y=full["accuracy"], width=full["upper"] - full["lower"], marker_color="#4C78A8",
                    marker_line=dict(color="white", width=1), name="accuracy", showlegend=first,
                    customdata=full[["count", "confidence"]].to_numpy(), row=row, col=col,
                    hovertemplate="confidence %{customdata[1]:.2f}<br>accuracy %{y:.2f}<br>%{customdata[0]} "
                                  "samples<extra></extra>")
        fig.add_scatter(x=full["confidence"], y=full["accuracy"], mode="markers",
                        name="bin mean confidence (size: samples)",
                        marker=dict(color="#F58518", size=(4 + 16 * (full["count"] / full["count"].max()))),
                        showlegend=first, hoverinfo="skip", row=row, col=col)
        fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="gray", dash="dash"),
                        name="perfect calibration", showlegend=first, hoverinfo="skip", row=row, col=col)
        fig.update_xaxes(title_text="confidence", range=[0, 1], row=row, col=col)
        fig.update_yaxes(title_text="accuracy" if col == 1 else None, range=[0, 1.02], row=row, col=col)
    fig.update_annotations(font_size=12)
    fig.update_layout(title=title, template="plotly_white", height=120 + 300 * rows, bargap=0,
                      legend=dict(orientation="h", y=-0.25), margin=dict(t=80, l=60, r=20, b=40))
    return fig
