"""Figures of one sample's explanation: class probabilities (masked beside unmasked), the patch
map over the image, top features, the patch-ablation curve and modality weights; and the
cohort's weight distributions. Pure functions: data in, ``go.Figure`` out."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

PATCH_TRACE = "patches"  # name of the transparent per-patch marker trace a selection comes from
_SCALE = "Inferno"


def probability_figure(classes: Sequence[str], proba: np.ndarray, masked: np.ndarray | None = None,
                       title: str = "Class probabilities") -> go.Figure:
    """Horizontal bars per class; the masked probabilities beside the unmasked ones when given."""
    fig = go.Figure(go.Bar(y=list(classes), x=proba, orientation="h", name="as given", marker_color="#4C78A8",
                           text=[f"{100 * p:.1f}%" for p in proba], textposition="auto"))
    if masked is not None:
        fig.add_bar(y=list(classes), x=masked, orientation="h", name="masked", marker_color="#F58518",
                    text=[f"{100 * p:.1f}%" for p in masked], textposition="auto")
    bars = len(classes) * (2 if masked is not None else 1)
    fig.update_layout(title=title, barmode="group", xaxis=dict(title="probability", range=[0, 1], tickformat=".0%"),
                      yaxis=dict(autorange="reversed"), height=110 + 34 * bars,
                      margin=dict(l=10, r=10, t=50, b=40), legend=dict(orientation="h", y=-0.25))
    return fig


def patch_map_figure(image: np.ndarray, grid: np.ndarray | None, patch: int, opacity: float = 0.5,
                     selected: Sequence[int] = (), title: str = "", show_grid: bool = True,
                     stretch: bool = False) -> go.Figure:
    """The image (``H x W x 3`` uint8) under its patch map (``rows x cols`` in [0, 1]; None: no
    map), on a fixed 0-1 colour scale so samples compare (``stretch``: this map's own range, to
    see its structure). One transparent marker per patch centre (trace :data:`PATCH_TRACE`,
    ``customdata`` = flat patch index) makes patches clickable and selectable; ``selected``
    patches are crossed out."""
    h, w = image.shape[:2]
    rows, cols = -(-h // patch), -(-w // patch)
    fig = go.Figure(go.Image(z=image, hoverinfo="skip"))
    if grid is not None:
        lo, hi = (float(np.nanmin(grid)), float(np.nanmax(grid))) if stretch else (0.0, 1.0)
        fig.add_heatmap(z=grid, x0=(patch - 1) / 2, dx=patch, y0=(patch - 1) / 2, dy=patch, zmin=lo,
                        zmax=hi if hi > lo else lo + 1e-6,
                        colorscale=_SCALE, opacity=opacity, hoverinfo="skip",
                        colorbar=dict(title="informativeness", thickness=12, len=0.8))
    r, c = np.divmod(np.arange(rows * cols), cols)
    xs, ys = c * patch + (patch - 1) / 2, r * patch + (patch - 1) / 2
    value = grid.ravel() if grid is not None else np.full(rows * cols, np.nan)
    fig.add_scatter(x=xs, y=ys, mode="markers", name=PATCH_TRACE, customdata=np.arange(rows * cols),
                    marker=dict(size=max(4, 360 // max(rows, cols)), color="rgba(0,0,0,0)", symbol="square"),
                    text=[f"patch {i} (row {ri}, col {ci})" + ("" if np.isnan(v) else f"<br>informativeness {v:.3f}")
                          for i, ri, ci, v in zip(range(rows * cols), r, c, value)],
                    hoverinfo="text", showlegend=False)
    sel = np.asarray(list(selected), dtype=int)
    if len(sel):
        fig.add_scatter(x=xs[sel], y=ys[sel], mode="markers", name="masked patches", hoverinfo="skip",
                        marker=dict(symbol="x-thin", size=max(4, 300 // max(rows, cols)),
                                    line=dict(width=2, color="#00E5FF")), showlegend=False)
    if show_grid:
        edges = [dict(type="line", x0=x - 0.5, x1=x - 0.5, y0=-0.5, y1=h - 0.5) for x in range(0, w + 1, patch)]
        edges += [dict(type="line", y0=y - 0.5, y1=y - 0.5, x0=-0.5, x1=w - 0.5) for y in range(0, h + 1, patch)]
        for e in edges:
            e["line"] = dict(color="rgba(255,255,255,0.25)", width=0.5)
        fig.update_layout(shapes=edges)
    fig.update_xaxes(visible=False, range=[-0.5, w - 0.5])
    fig.update_yaxes(visible=False, range=[h - 0.5, -0.5], scaleanchor="x")
    # pan (not select) as the drag mode: Streamlit then keeps plotly's click-to-select; the image stays put
    fig.update_xaxes(fixedrange=True)
    fig.update_yaxes(fixedrange=True)
    fig.update_layout(title=title, height=480, margin=dict(l=0, r=0, t=70, b=0))
    return fig


def top_features_figure(frame: pd.DataFrame, title: str) -> go.Figure:
    """Bars of ``frame['informativeness']`` by ``frame['feature']``, the strongest on top."""
    v = frame["informativeness"].to_numpy(dtype=float)
    lo = max(0.0, float(np.nanmin(v)) - 0.1 * (float(np.nanmax(v)) - float(np.nanmin(v)) + 1e-3)) if len(v) else 0.0
    fig = go.Figure(go.Bar(y=frame["feature"], x=v, orientation="h", marker_color="#54A24B",
                           text=[f"{x:.3f}" for x in v], textposition="inside"))
    fig.update_layout(title=title, xaxis=dict(title="informativeness (gate value; axis starts at "
                                                    f"{lo:.2f})", range=[lo, float(np.nanmax(v)) if len(v) else 1]),
                      yaxis=dict(autorange="reversed"),
                      height=120 + 24 * len(frame), margin=dict(l=10, r=10, t=50, b=40))
    return fig


def patch_curve_figure(curves: pd.DataFrame, n_patches: int, current: int | None = None,
                       target: str = "") -> go.Figure:
    """Probability of the predicted class as ``k`` patches are masked, one line per order."""
    fig = px.line(curves, x="k", y="probability", color="order", markers=True,
                  labels={"k": "patches masked (k)", "probability": f"p({target})" if target else "probability"})
    if current is not None:
        fig.add_vline(x=current, line_dash="dot", line_color="gray", annotation_text=f"k = {current}",
                      annotation_position="bottom right")
    fig.update_layout(showlegend=curves["order"].nunique() > 1, yaxis_tickformat=".0%")
    fig.update_layout(title=f"Patch ablation: probability of {target or 'the predicted class'}",
                      xaxis=dict(range=[0, n_patches]), yaxis=dict(range=[0, 1.02]), height=360,
                      margin=dict(l=10, r=10, t=50, b=40))
    return fig


def modality_weights_figure(weights: dict[str, float], proba: dict[str, np.ndarray], classes: Sequence[str],
                            title: str = "Modality weights") -> go.Figure:
    """Each modality's weight (TCP confidence or fixed weight) on its bar; its own classifier's top
    class in the hover."""
    mods = list(weights)
    hover = []
    for m in mods:
        p = proba.get(m)
        hover.append("absent" if np.isnan(weights[m]) or p is None else
                     f"own classifier: {classes[int(np.nanargmax(p))]} {100 * np.nanmax(p):.0f}%")
    fig = go.Figure(go.Bar(x=mods, y=[weights[m] for m in mods], hovertext=hover, marker_color="#72B7B2",
                           text=["absent" if np.isnan(weights[m]) else f"{weights[m]:.2f}" for m in mods],
                           textposition="outside"))
    fig.update_layout(title=title, yaxis=dict(title="weight", rangemode="tozero"), height=360,
                      margin=dict(l=10, r=10, t=50, b=40))
    return fig


def cohort_weights_figure(frame: pd.DataFrame, classes: Sequence[str] = (),
                          title: str = "Modality weights over the test split") -> go.Figure:
    """Box plots of the weight per modality, one colour per true class (in ``classes`` order)."""
    order = [c for c in classes if c in set(frame["label"])] or sorted(set(frame["label"]))
    fig = px.box(frame, x="modality", y="weight", color="label", points=False, category_orders={"label": order},
                 color_discrete_sequence=px.colors.qualitative.Bold, labels={"label": "true class", "weight": "weight"})
    fig.update_layout(title=title, height=420, margin=dict(l=10, r=10, t=50, b=40))
    return fig
