"""Figures of guided versus unguided predictions (tables from :mod:`core.explain.guidance`)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

_LAYOUT = dict(template="plotly_white", margin=dict(t=60, b=40, l=50, r=20))


def sample_comparison_figure(table: pd.DataFrame, title: str = "Unguided (I) vs guided (G(I)+I)") -> go.Figure:
    """Class probabilities side by side; the true class is marked in the axis label."""
    names = [f"{c} (true)" if t else str(c) for c, t in zip(table["class"], table["true"])]
    fig = go.Figure()
    fig.add_bar(x=names, y=table["I"], name="I (unguided)")
    fig.add_bar(x=names, y=table["G(I)+I"], name="G(I)+I (guided)")
    fig.update_layout(title=title, barmode="group", xaxis_title="class", yaxis_title="probability",
                      yaxis_range=[0, 1], **_LAYOUT)
    return fig


def class_delta_figure(table: pd.DataFrame, metric: str = "recall") -> go.Figure:
    """Per-class change (guided - unguided) of ``metric`` (precision, recall or f1)."""
    delta = table[f"delta_{metric}"]
    fig = go.Figure(go.Bar(x=table["class"], y=delta, marker_color=["#2a9d8f" if d >= 0 else "#e76f51" for d in delta],
                           customdata=table["support"], hovertemplate="%{x}: %{y:+.3f} (n=%{customdata})<extra></extra>"))
    fig.update_layout(title=f"Change in {metric} with guidance, per class", xaxis_title="class",
                      yaxis_title=f"{metric}: G(I)+I - I", **_LAYOUT)
    return fig


def latent_map_figure(points: pd.DataFrame) -> go.Figure:
    """The two UMAP panels of :func:`core.explain.guidance.latent_map`: z_I on the left; G(z_I)
    and z_S (one shared space) on the right, colour = class, symbol = kind."""
    fig = make_subplots(1, 2, subplot_titles=("inferior space: z_I", "superior space: G(z_I) and z_S"))
    symbols = {"z_I": "circle", "G(z_I)": "x", "z_S": "circle-open"}
    labels = sorted(points["label"].unique())
    palette = ["#264653", "#2a9d8f", "#e9c46a", "#f4a261", "#e76f51", "#8ab17d", "#6d597a", "#b56576"]
    for kind, col in (("z_I", 1), ("G(z_I)", 2), ("z_S", 2)):
        for i, lab in enumerate(labels):
            sel = points[(points["kind"] == kind) & (points["label"] == lab)]
            fig.add_scatter(x=sel["x"], y=sel["y"], mode="markers", name=f"{kind} · {lab}",
                            legendgroup=str(lab), row=1, col=col,
                            marker=dict(symbol=symbols[kind], size=7, color=palette[i % len(palette)]),
                            customdata=sel[["id", "mapping_error"]],
                            hovertemplate="%{customdata[0]}<br>mapping error %{customdata[1]:.4f}<extra></extra>")
    fig.update_layout(title="UMAP of the latents (mapping error on hover)", **_LAYOUT)
    return fig
