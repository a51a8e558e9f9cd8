"""Figures of guided versus unguided predictions (tables from :mod:`core.explain.guidance`)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
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
                           customdata=table["support"],
                           hovertemplate="%{x}: %{y:+.3f} (n=%{customdata})<extra></extra>"))
    fig.update_layout(title=f"Change in {metric} with guidance, per class", xaxis_title="class",
                      yaxis_title=f"{metric}: G(I)+I - I", **_LAYOUT)
    return fig


def latent_map_figure(points: pd.DataFrame, highlight: str | None = None, colour: str = "label") -> go.Figure:
    """The two UMAP panels of :func:`core.explain.guidance.latent_map`: z_I on the left; G(z_I)
    and z_S (one shared space) on the right, symbol = kind. ``colour``: ``label`` (the class) or
    ``mapping_error`` (how far G(z_I) lands from z_S; one colour scale for both panels, capped at
    the 95th percentile so a few outliers do not flatten it).
    ``highlight``: a sample id drawn as large stars, its G(z_I) joined to its z_S."""
    fig = make_subplots(1, 2, subplot_titles=("inferior space: z_I", "superior space: G(z_I) and z_S"))
    symbols = {"z_I": "circle", "G(z_I)": "x", "z_S": "circle-open"}
    panels = (("z_I", 1), ("G(z_I)", 2), ("z_S", 2))
    hover = "%{customdata[0]} (%{customdata[2]})<br>mapping error %{customdata[1]:.4f}<extra>%{fullData.name}</extra>"
    if colour == "mapping_error":
        for kind, col in panels:
            sel = points[points["kind"] == kind]
            fig.add_scatter(x=sel["x"], y=sel["y"], mode="markers", name=kind, row=1, col=col,
                            marker=dict(symbol=symbols[kind], size=7, color=sel["mapping_error"],
                                        coloraxis="coloraxis"),
                            customdata=sel[["id", "mapping_error", "label"]], hovertemplate=hover)
        top = float(points["mapping_error"].quantile(0.95))  # a few large errors would wash out the rest
        fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=0, cmax=top,
                                         colorbar=dict(title="mapping<br>error", len=0.8)),
                          legend=dict(orientation="h", y=-0.12, x=0))
    else:
        labels = sorted(points["label"].unique())
        palette = qualitative.D3  # distinct hues: classes must not look alike
        for kind, col in panels:
            for i, lab in enumerate(labels):
                sel = points[(points["kind"] == kind) & (points["label"] == lab)]
                fig.add_scatter(x=sel["x"], y=sel["y"], mode="markers", name=f"{kind} · {lab}",
                                legendgroup=str(lab), row=1, col=col,
                                marker=dict(symbol=symbols[kind], size=7, color=palette[i % len(palette)]),
                                customdata=sel[["id", "mapping_error", "label"]], hovertemplate=hover)
    if highlight is not None:
        mine = points[points["id"].astype(str) == str(highlight)].set_index("kind")
        for kind, col in panels:
            if kind in mine.index:
                row = mine.loc[kind]
                fig.add_scatter(x=[row["x"]], y=[row["y"]], mode="markers+text", text=[kind], textposition="top center",
                                name=f"this sample: {kind}", showlegend=False, row=1, col=col,
                                marker=dict(symbol="star", size=18, color="#d62828",
                                            line=dict(color="white", width=1.5)),
                                hovertemplate=f"this sample ({highlight}): {kind}<extra></extra>")
        if {"G(z_I)", "z_S"} <= set(mine.index):
            fig.add_scatter(x=mine.loc[["G(z_I)", "z_S"], "x"], y=mine.loc[["G(z_I)", "z_S"], "y"], mode="lines",
                            line=dict(color="#d62828", dash="dot"), showlegend=False, hoverinfo="skip", row=1, col=2)
    fig.update_layout(title="UMAP of the latents" + (" (colour: mapping error)" if colour == "mapping_error" else ""),
                      **_LAYOUT)
    return fig
