"""Overview figures of a dataset."""
from __future__ import annotations

import plotly.graph_objects as go

from core.data.dataset import MultimodalDataset


def class_counts_figure(ds: MultimodalDataset) -> go.Figure:
    """Samples per class (in the task's class order), split by group (donor/patient) when
    there are only a few groups."""
    counts = ds.class_counts()
    groups = sorted(set(ds.groups.tolist()))
    fig = go.Figure()
    if 1 < len(groups) <= 6:
        for g in groups:
            sel = ds.y[ds.groups == g]
            n = [int((sel == k).sum()) for k in range(ds.n_classes)]
            fig.add_bar(x=list(ds.classes), y=n, name=str(g))
        fig.update_layout(barmode="stack", legend_title_text="group (donor or patient)")
    else:
        fig.add_bar(x=list(counts), y=list(counts.values()), name="samples")
    title = f"{ds.name}: samples per class" + (" (SYNTHETIC data)" if ds.synthetic else "")
    fig.update_layout(title=title, xaxis_title="class", yaxis_title="samples", template="plotly_white",
                      margin=dict(t=60, b=40, l=50, r=20))
    return fig
