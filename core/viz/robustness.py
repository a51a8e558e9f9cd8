"""Robustness curves: a metric against the fraction of missing modalities, one line per method;
drawn from a run's numbers or from a committed HyperMM experiment (``results/<task>/hypermm.json``).
Also one sample's class probabilities from several models at once (the Missing modalities page)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

Curve = list[tuple[float, float, float]]  # (missing rate, mean, std)


def robustness_figure(curves: dict[str, dict[str, Curve]], title: str, x_title: str = "missing rate per modality",
                      highlight: str | None = None, y_title: str | None = None) -> go.Figure:
    """One panel per metric (``curves``: metric label -> method -> points); mean with ± std
    error bars. The ``highlight`` method is drawn thicker; every method keeps one colour
    across panels. ``y_title``: one y axis title for every panel (when panels are not metrics)."""
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
        fig.update_yaxes(title_text=f"{y_title or metric} (%)", row=1, col=col)
    fig.update_layout(title=title, template="plotly_white",
                      legend=dict(orientation="h", y=-0.18, x=0, font=dict(size=11)),
                      margin=dict(t=80, l=60, r=20, b=40))
    return fig


def result_sections(payload: dict) -> list[str]:
    """The section headings of a committed HyperMM experiment (e.g. one per prediction target)."""
    return [s["heading"] for s in payload.get("sections", [])]


def result_metrics(payload: dict, section: str) -> list[str]:
    """Metrics every row of ``section`` reports (keys of :data:`core.metrics.LABELS`, its order)."""
    from core.metrics import LABELS

    rows = [r for sc in _section(payload, section)["scenarios"] for r in sc["rows"]]
    return [m for m in LABELS if rows and all(m in r["summary"] for r in rows)]


def result_curves(payload: dict, section: str, metric: str) -> dict[str, dict[str, Curve]]:
    """``section`` of a committed HyperMM experiment as :func:`robustness_figure` panels: one per
    set of modalities the scenarios remove (all of them at once on cells; clinical or dermoscopic
    on derm7pt), x = the nominal missing rate, the complete scenario at 0 in every panel."""
    scenarios = _section(payload, section)["scenarios"]

    def dropped(sc: dict) -> tuple[str, ...]:
        return tuple(m for m, r in sc["rates"].items() if r > 0)

    groups = list(dict.fromkeys(dropped(sc) for sc in scenarios if dropped(sc))) or [()]
    panels: dict[str, dict[str, Curve]] = {}
    for group in groups:
        panel = panels.setdefault(" + ".join(group) + " missing" if group else "complete data", {})
        for sc in scenarios:
            if dropped(sc) in ((), group):
                rate = max(sc["rates"].values(), default=0.0)
                for r in sc["rows"]:
                    mean, std = r["summary"][metric]
                    panel.setdefault(r["label"], []).append((float(rate), float(mean), float(std)))
    return panels


def result_robustness_figure(payload: dict, section: str, metric: str = "accuracy") -> go.Figure:
    """The robustness curves of a committed HyperMM experiment, interactive (hover for mean ± std);
    HyperMM's row (``method`` ``hypermm``) is drawn thicker."""
    from core.metrics import LABELS

    rows = [r for sc in _section(payload, section)["scenarios"] for r in sc["rows"]]
    hyper = next((r["label"] for r in rows if r.get("row", {}).get("method") == "hypermm"), None)
    runs = max((len(r.get("runs", [])) for r in rows), default=0)
    return robustness_figure(result_curves(payload, section, metric),
                             f"{payload.get('task', '')}: {section} (mean ± std over {runs} runs)",
                             x_title="missing rate", highlight=hyper, y_title=LABELS.get(metric, metric))


def _section(payload: dict, section: str) -> dict:
    for s in payload.get("sections", []):
        if s["heading"] == section:
            return s
    from core.errors import MMXError

    raise MMXError(f"no section {section!r} in the results; sections are {result_sections(payload)}")


def models_probability_figure(table: pd.DataFrame, title: str = "Class probabilities per model") -> go.Figure:
    """One sample's class probabilities from several models (``table``: ``model``, ``class``,
    ``probability``, as :func:`core.explain.missing.subset_predict` gives), grouped by class."""
    fig = go.Figure()
    palette = qualitative.Plotly
    for i, (model, rows) in enumerate(table.groupby("model", sort=False)):
        fig.add_bar(x=rows["probability"], y=rows["class"], orientation="h", name=str(model),
                    marker_color=palette[i % len(palette)], text=[f"{100 * p:.1f}%" for p in rows["probability"]],
                    textposition="auto")
    n = table["model"].nunique() * table["class"].nunique()
    fig.update_layout(title=title, barmode="group", template="plotly_white", height=120 + 22 * n,
                      xaxis=dict(title="probability", range=[0, 1], tickformat=".0%"), yaxis=dict(autorange="reversed"),
                      legend=dict(orientation="h", y=-0.25), margin=dict(l=10, r=10, t=50, b=40))
    return fig
