"""What every page shares: cached loading (models and cohorts once per process, shared by all
sessions: never mutate them), the data-root banner, figure and table export, error display.

Pages stay thin: they read inputs, call ``core`` and show figures from ``core.viz``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `streamlit run dashboard/Home.py` from anywhere

from core.data.tasks import list_tasks  # noqa: E402
from core.data.tasks import task_summary as summary_of  # noqa: E402
from core.errors import MMXError  # noqa: E402
from core.paths import data_root  # noqa: E402
from core.shipped import ShippedModel, available, load  # noqa: E402


@st.cache_data(show_spinner="Reading the data sets…")
def task_summary(name: str) -> dict:
    """Sizes and class counts of a task (from the disk cache once seen: no data loaded)."""
    return summary_of(name)


@st.cache_resource(show_spinner="Loading model…")
def load_model(task: str, name: str):
    """A shipped model, loaded once per process and shared by every session: never mutate it."""
    return load(task, name)


@st.cache_resource(show_spinner="Loading the model's test split…")
def load_cohort(task: str, name: str):
    """The test split the model's card was scored on (shared: never mutate)."""
    from core.explain.sample import heldout_cohort

    return heldout_cohort(load_model(task, name))


def shipped_models() -> list[ShippedModel]:
    return available()


def available_tasks() -> list[str]:
    root = data_root()
    return [t.name for t in list_tasks() if t.available(root)]


def data_banner() -> None:
    """Say where the data comes from, and what stands in for the tasks this machine has no data for."""
    from core.data.download import how_to_get
    from core.data.examples import has_examples

    root = data_root()
    missing = [t.name for t in list_tasks() if t.requires and not t.available(root)]
    st.caption(f"Data root: `{root}`" if root else "No data folder (`--data-dir`, `$MMX_DATA_DIR`, `./data` or "
               "`../shared/data`).")
    if not missing:
        return
    bundled = [t for t in missing if has_examples(t)]
    lines = []
    if bundled:
        lines.append(f"No data here for {', '.join(bundled)}: their models explain the **real test samples bundled "
                     "in `examples/`** instead, and every page says so. `python train.py --download "
                     f"{' '.join(bundled)}` fetches the full data from the public sources.")
    lines += [f"No data here for **{t}**: {how_to_get(t)} Its models still explain uploaded files." for t in missing
              if t not in bundled]
    st.info("\n\n".join(lines), icon=":material/info:")


def figure(fig, name: str, key: str | None = None, **chart) -> dict | None:
    """Show a plotly figure with PNG, SVG and interactive-HTML downloads (rendered on click).
    ``chart`` goes to ``st.plotly_chart`` (e.g. ``on_select``); its selection event is returned."""
    from core.viz.export import figure_bytes, static_export_available

    event = st.plotly_chart(fig, width="stretch", key=key, **chart)
    row = st.container(horizontal=True)
    formats = [("HTML", "html", "text/html")]
    if static_export_available():
        formats += [("PNG", "png", "image/png"), ("SVG", "svg", "image/svg+xml")]
    for label, fmt, mime in formats:
        row.download_button(label, lambda fmt=fmt: figure_bytes(fig, fmt), f"{name}.{fmt}", mime,
                            key=f"{name}-{fmt}", on_click="ignore", icon=":material/download:")
    if len(formats) == 1:
        row.caption("PNG/SVG export needs Chromium on this machine (`bash setup.sh --test` installs it); "
                    "the chart toolbar's camera button saves a PNG.")
    return event if chart.get("on_select") else None


def table(frame: pd.DataFrame, name: str, **options) -> None:
    """Show a table with a CSV download."""
    st.dataframe(frame, hide_index=True, width="stretch", **options)
    st.download_button("CSV", frame.to_csv(index=False), f"{name}.csv", "text/csv", key=f"{name}-csv",
                       on_click="ignore", icon=":material/download:")


def show_error(e: Exception) -> None:
    """Show a bad-input error in the page and keep the app running."""
    st.error(str(e) if isinstance(e, MMXError) else f"Unexpected error: {type(e).__name__}: {e}")


def prediction_set(method, proba, altered: bool = False) -> str:
    """One sample's conformal prediction set, as shown beside every prediction (the card's
    calibration; see :mod:`core.calibration`). ``altered``: the input was masked or lacks a
    modality, which the calibration samples did not."""
    from core.calibration import Conformal

    conformal = Conformal.from_card(getattr(method, "card", None))
    if conformal is None:
        return "no prediction set: this model's card records no calibration"
    members = conformal.sets(proba)[0]
    level = f"{100 * conformal.confidence:.0f}% prediction set"
    text = f"{level}: {{{', '.join(members)}}}" if members else f"{level}: empty (no class is plausible enough)"
    return text + (" (calibrated on complete inputs; the guarantee does not cover this one)" if altered else "")


def show_prediction_set(method, proba, altered: bool = False) -> None:
    """The prediction set as a caption, with what it means on hover."""
    st.caption(prediction_set(method, proba, altered), help=SET_HELP)


SET_HELP = ("Split-conformal prediction set: every class the model cannot rule out at this level. Over samples like "
            "the model's calibration samples, the set holds the true class at least this often. An empty set says "
            "no class is likely enough; a large set says the model is unsure. Calibration and coverage: the model "
            "card and results/<task>/calibration.md.")
