"""Ablation figure: one group of bars per variant (e.g. None / FI / MI / Both), one bar per
metric, mean ± std over runs as error bars."""
from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

from core.metrics import LABELS


def ablation_figure(summaries: dict[str, dict[str, tuple[float, float]]],
                    metrics: Sequence[str] = ("balanced_accuracy", "f1_macro", "f1_weighted", "accuracy"),
                    title: str = "Ablation") -> go.Figure:
    """``summaries``: variant label -> metric -> (mean, std) as fractions; plotted in percent."""
    fig = go.Figure()
    variants = list(summaries)
    for metric in metrics:
        means = [100 * summaries[v][metric][0] for v in variants]
        stds = [100 * summaries[v][metric][1] for v in variants]
        fig.add_bar(name=LABELS.get(metric, metric), x=variants, y=means,
                    error_y=dict(type="data", array=stds, visible=True),
                    text=[f"{m:.1f}" for m in means], textposition="outside")
    lows = [100 * (summaries[v][m][0] - summaries[v][m][1]) for v in variants for m in metrics]
    fig.update_layout(title=title, barmode="group", yaxis_title="percent (mean ± std over runs)",
                      xaxis_title="variant", yaxis_range=[max(0.0, min(lows) - 10), 102],
                      legend_title="metric", template="plotly_white")
    return fig
