"""Benchmarks: every committed result (``results/**/*.md``) by task, each with the command that
produced it, its wall time, its tables (CSV), its figures (PNG, SVG) and its raw JSON.

One task is drawn at a time and a report's body only when its expander is open, so the page stays
light; parsing lives in :mod:`core.results_index` and is redone only when a file under ``results/``
changes (an experiment writing a new table shows up on the next rerun)."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

st.title("Benchmarks")
st.write("Every result table committed under `results/`, by task: what was run (the command), how long it took, "
         "the tables (CSV), the figures (PNG, SVG) and the raw per-run numbers (JSON). Calibration and "
         "faithfulness come first in their task.")
with st.spinner("Reading the results…"):
    from common import show_error, table
    from picker import sidebar

    from core.results_index import Figure, Group, Report, collect, fingerprint, results_dir, zip_results

sidebar(samples=False)
ICON = ":material/download:"


@st.cache_data(show_spinner="Parsing results/…", max_entries=4)
def _groups(root: Path, stamp: tuple) -> list[Group]:
    """``stamp`` (the files' names, sizes and times) makes a new or rewritten result a new cache entry."""
    return collect(root)


def _download(label: str, path: Path, mime: str, key: str) -> None:
    """A file offered for download, read only when clicked."""
    st.download_button(label, lambda: path.read_bytes(), path.name, mime, key=key, on_click="ignore", icon=ICON)


def _figure(fig: Figure, key: str) -> None:
    with st.container(width=900):  # the committed PNGs are 1800 px wide: half size, never wider than the page
        st.image(str(fig.png), caption=fig.png.name, width="stretch")
    with st.container(horizontal=True):
        _download("PNG", fig.png, "image/png", f"{key}-png")
        if fig.svg is not None:
            _download("SVG", fig.svg, "image/svg+xml", f"{key}-svg")


def _report(r: Report) -> None:
    if r.synthetic:
        st.warning("**SYNTHETIC** data: these numbers say nothing about real cells or patients.")
    st.caption("Produced by")
    if r.command:
        st.code(r.command, language="bash")
    else:
        st.markdown("command *not recorded*")
    st.markdown(f"Wall time: **{r.wall_time}** · file `results/{r.name}.md`")
    with st.container(horizontal=True):
        _download("Markdown", r.md, "text/markdown", f"{r.slug}-md")
        if r.json is not None:
            _download("JSON (raw results)", r.json, "application/json", f"{r.slug}-json")
    tables = figures = 0
    for block in r.blocks:
        if isinstance(block, str):
            st.markdown(block)
        elif isinstance(block, Figure):
            figures += 1
            _figure(block, f"{r.slug}-fig{figures}")
        else:
            tables += 1
            table(block, f"{r.slug}_table{tables}")
    for fig in r.figures:
        figures += 1
        _figure(fig, f"{r.slug}-fig{figures}")


root = results_dir()
try:
    groups = _groups(root, fingerprint(root))
except Exception as e:  # one unreadable file must not take the page down
    show_error(e)
    groups = []
if not groups:
    st.info("No results in `results/` yet: `python train.py --experiment <task>/<name>` writes them.")
else:
    by_name = {g.name: g for g in groups}
    n = sum(len(g.reports) for g in groups)
    with st.container(horizontal=True, vertical_alignment="center"):
        st.download_button("Download everything (results/ as zip)", lambda: zip_results(root), "results.zip",
                           "application/zip", key="results-zip", on_click="ignore", icon=ICON)
        st.caption(f"{n} reports in {len(groups)} groups.")
    name = st.segmented_control("Task", list(by_name), default=groups[0].name, required=True, key="bench_group",
                                format_func=lambda g: f"{g} ({len(by_name[g].reports)})")
    group = by_name[name]
    if group.reports:
        table(group.summary(), f"results_{name.split()[0]}_index",
              column_config={"report": st.column_config.TextColumn(width="large"),
                             "wall time": st.column_config.TextColumn(width=100),
                             "command": st.column_config.TextColumn(width="large")})
    for i, r in enumerate(group.reports):
        label = r.title + (" · **SYNTHETIC**" if r.synthetic else "")
        box = st.expander(label, expanded=r.prominent or i == 0, key=f"open:{r.slug}", on_change="rerun",
                          icon=":material/star:" if r.prominent else None)
        if box.open:
            with box:
                _report(r)
    if group.figures:
        st.subheader("Other figures")
        for j, fig in enumerate(group.figures):
            _figure(fig, f"{name.split()[0]}-other{j}")
