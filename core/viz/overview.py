"""Overview figures of a dataset."""
from __future__ import annotations

import plotly.graph_objects as go


def class_counts_figure(summary: dict) -> go.Figure:
    """Samples per class (in the task's class order) from a dataset's ``summary()``, split by
    group (donor or patient) when there are only a few groups."""
    fig = go.Figure()
    by_group = summary.get("by_group") or {}
    if len(by_group) > 1:
        for g, counts in by_group.items():
            fig.add_bar(x=list(counts), y=list(counts.values()), name=str(g))
        fig.update_layout(barmode="stack", legend_title_text="group (donor or patient)")
    else:
        fig.add_bar(x=list(summary["classes"]), y=list(summary["classes"].values()), name="samples")
    title = f"{summary['task']}: samples per class" + (" (SYNTHETIC data)" if summary["synthetic"] else "")
    fig.update_layout(title=title, xaxis_title="class", yaxis_title="samples", template="plotly_white",
                      margin=dict(t=60, b=40, l=50, r=20))
    return fig
