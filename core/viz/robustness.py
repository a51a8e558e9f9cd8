"""Robustness curves: a metric against the fraction of missing modalities, one line per method."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

Curve = list[tuple[float, float, float]]  # (missing rate, mean, std)


def robustness_figure(curves: dict[str, dict[str, Curve]], title: str, x_title: str = "missing rate per modality",
                      highlight: str | None = None) -> go.Figure:
    """One panel per metric (``curves``: metric label -> method -> points); mean with ± std
    error bars. The ``highlight`` method is drawn thicker; every method keeps one colour
    across panels."""
    metrics = list(curves)
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=metrics, horizontal_spacing=0.12)
    methods = list(dict.fromkeys(m for panel in curves.values() for m in panel))
    palette = qualitative.Plotly + qualitative.D3
    colours = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    for col, metric in enumerate(metrics, start=1):
        for method, points in curves[metric].items():
            points = sorted(points)
            wide = method == highlight
            fig.add_trace(go.Scatter(
                x=[100 * p[0] for p in points], y=[100 * p[1] for p in points],
                error_y=dict(type="data", array=[100 * p[2] for p in points], thickness=1),
                mode="lines+markers", name=method, legendgroup=method, showlegend=col == 1,
                line=dict(color=colours[method], width=4 if wide else 1.5), marker=dict(size=9 if wide else 6),
                hovertemplate=f"{method}<br>%{{x:.0f}} % missing: %{{y:.1f}} ± %{{error_y.array:.1f}}<extra></extra>",
            ), row=1, col=col)
        fig.update_xaxes(title_text=f"{x_title} (%)", row=1, col=col)
        fig.update_yaxes(title_text=f"{metric} (%)", row=1, col=col)
    fig.update_layout(title=title, template="plotly_white",
                      legend=dict(orientation="h", y=-0.18, x=0, font=dict(size=11)),
                      margin=dict(t=80, l=60, r=20, b=40))
    return fig
