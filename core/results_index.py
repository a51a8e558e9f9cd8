"""The committed results (``results/**/*.md`` with their ``.json`` and figures) as data a page can
show: each report's title, the command that produced it, its wall time, whether it is synthetic,
its prose and its Markdown pipe tables as DataFrames (so they download as CSV).

The Markdown is the source of truth a reader sees; the sibling JSON, when present and readable,
gives the exact command and wall seconds. Anything missing stays ``None`` ("not recorded"), never
an error: results are written by many experiments at different times.
"""
from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from core import paths

BENCH_GROUP = "benchmarks (timings)"
PROMINENT = ("calibration", "faithfulness")  # shown first in their task group

_FENCE = re.compile(r"^\s*(```|~~~)")
_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_BOLD = re.compile(r"\*\*(.*?)\*\*|__(.*?)__")
_PRODUCED = re.compile(r"Produced by:?\s*`([^`\n]+)`", re.IGNORECASE)
_COMMAND_LINE = re.compile(r"^ {4,}((?:[A-Z_][A-Z0-9_]*=\S+\s+)*(?:python3?|bash|streamlit|pytest)\b.*)$", re.MULTILINE)
_WALL = re.compile(r"wall[- ]time\b[^\n\d]{0,40}?(\d+(?:\.\d+)?)\s*(ms|s|sec|seconds?|min|minutes?|h|hours?)\b",
                   re.IGNORECASE)
_UNIT_SECONDS = {"ms": 1e-3, "s": 1, "sec": 1, "second": 1, "seconds": 1, "min": 60, "minute": 60, "minutes": 60,
                 "h": 3600, "hour": 3600, "hours": 3600}
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]*)[^)]*\)")
_LOCAL_LINK = re.compile(r"\[([^\]]+)\]\((?![a-z][a-z0-9+.-]*:|#)[^)]*\)", re.IGNORECASE)


def results_dir() -> Path:
    """``results/`` in the repository (read at call time, so tests can point the repository elsewhere)."""
    return paths.REPO_ROOT / "results"


@dataclass(frozen=True)
class Figure:
    png: Path
    svg: Path | None


@dataclass
class Report:
    """One ``.md`` result file, parsed. ``blocks`` keeps the file's order: prose (Markdown text, title
    and command line removed, headings one level down, local links unlinked), tables, and the figures
    the file embeds; ``figures`` are the other figures beside it that belong to it."""

    md: Path
    name: str  # path under results/ without the suffix: ``cells/hypermm``
    group: str
    title: str
    command: str | None
    wall_seconds: float | None
    synthetic: bool
    blocks: list[str | pd.DataFrame | Figure]
    json: Path | None = None
    figures: list[Figure] = field(default_factory=list)

    @property
    def tables(self) -> list[pd.DataFrame]:
        return [b for b in self.blocks if isinstance(b, pd.DataFrame)]

    @property
    def all_figures(self) -> list[Figure]:
        return [b for b in self.blocks if isinstance(b, Figure)] + self.figures

    @property
    def wall_time(self) -> str:
        return "not recorded" if self.wall_seconds is None else duration(self.wall_seconds)

    @property
    def prominent(self) -> bool:
        return self.md.stem in PROMINENT

    @property
    def slug(self) -> str:
        """A file-name stem unique within ``results/`` (``cells_hypermm``)."""
        return self.name.replace("/", "_")


@dataclass
class Group:
    """The reports of one task folder (``results/<task>/``), prominent ones first, and the figures
    no report claims."""

    name: str
    reports: list[Report]
    figures: list[Figure] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        """One row per report: what it is, how it was produced and how long that took."""
        return pd.DataFrame([{
            "report": r.title, "wall time": r.wall_time, "synthetic": r.synthetic, "tables": len(r.tables),
            "figures": len(r.all_figures), "command": r.command or "not recorded", "file": r.md.name,
        } for r in self.reports])


def duration(seconds: float) -> str:
    """The experiments' own way of writing a wall time (``core.experiments.runner.duration``)."""
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _cells(line: str) -> list[str]:
    parts = _CELL_SPLIT.split(line.strip())
    if parts and not parts[0].strip():
        parts = parts[1:]
    if parts and not parts[-1].strip():
        parts = parts[:-1]
    return [_BOLD.sub(lambda m: m.group(1) or m.group(2) or "", p.replace("\\|", "|")).replace("`", "").strip()
            for p in parts]


def pipe_table(lines: list[str]) -> pd.DataFrame:
    """A GitHub pipe table (header, separator, rows) as a DataFrame: bold and code marks dropped,
    short rows padded, blank or repeated headers made unique, all-numeric columns made numbers."""
    header = _cells(lines[0])
    columns: list[str] = []
    for i, name in enumerate(header):
        name = name or f"column {i + 1}"
        columns.append(name if name not in columns else f"{name} ({columns.count(name) + 1})")
    width = len(columns)
    rows = [(_cells(line) + [""] * width)[:width] for line in lines[2:]]
    frame = pd.DataFrame(rows, columns=columns)
    for c in frame.columns:
        values = frame[c].str.replace("−", "-", regex=False)
        numbers = pd.to_numeric(values, errors="coerce")
        if len(frame) and numbers.notna().all():
            frame[c] = numbers
    return frame


def _figure(target: str, folder: Path | None) -> Figure | None:
    """The committed figure an image embed points at (its PNG, with the SVG beside it when there is one)."""
    if folder is None or re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
        return None
    png = (folder / target).with_suffix(".png")
    svg = png.with_suffix(".svg")
    return Figure(png, svg if svg.is_file() else None) if png.is_file() else None


def parse_markdown(text: str, folder: Path | None = None) -> list[str | pd.DataFrame | Figure]:
    """Split Markdown into prose blocks, pipe tables (tables inside code fences stay prose) and, for
    image embeds of files in ``folder``, figures (other embeds are dropped: a page cannot show them)."""
    lines = text.splitlines()
    blocks: list[str | pd.DataFrame | Figure] = []
    prose: list[str] = []
    fenced = False
    i = 0

    def flush() -> None:
        chunk = re.sub(r"\n{3,}", "\n\n", "\n".join(prose)).strip()
        if chunk:
            blocks.append(chunk)
        prose.clear()

    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and "|" in line and i + 1 < len(lines) and _SEPARATOR.match(lines[i + 1]) \
                and "|" in lines[i + 1]:
            end = i + 2
            while end < len(lines) and "|" in lines[end] and lines[end].strip():
                end += 1
            flush()
            blocks.append(pipe_table(lines[i:end]))
            i = end
            continue
        elif not fenced:
            figures = [f for f in (_figure(t, folder) for t in _IMAGE.findall(line)) if f is not None]
            if figures:
                flush()
                blocks.extend(figures)
            line = re.sub(r"^(#{1,5}) ", r"#\1 ", line)  # the report's title is the page's heading
            line = _LOCAL_LINK.sub(r"\1", _IMAGE.sub("", line))
        prose.append(line)
        i += 1
    flush()
    return blocks


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _wall_seconds(text: str) -> float | None:
    m = _WALL.search(text)
    return None if m is None else float(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()]


def group_of(md: Path, root: Path) -> str:
    """``results/<task>/...`` belongs to ``<task>``; ``results/bench/`` to the timings group."""
    parts = md.relative_to(root).parts
    if len(parts) == 1:
        return "results"
    return BENCH_GROUP if parts[0] == "bench" else parts[0]


def read_report(md: Path, root: Path) -> Report:
    """Parse one result file; the sibling JSON (same stem) fills in the exact command and wall seconds."""
    text = md.read_text(errors="replace")
    sibling = md.with_suffix(".json")
    raw = _json(sibling) if sibling.is_file() else {}
    lines = text.splitlines()
    heading = next((i for i, ln in enumerate(lines) if ln.startswith("# ")), None)
    title = md.stem if heading is None else lines[heading][2:].strip()
    produced = _PRODUCED.search(text) or _COMMAND_LINE.search(text)
    command = raw.get("command") if isinstance(raw.get("command"), str) else None
    wall = raw.get("wall_seconds")
    body = "\n".join(ln for i, ln in enumerate(lines) if i != heading and not _PRODUCED.match(ln.strip()))
    return Report(
        md=md, name=md.relative_to(root).with_suffix("").as_posix(), group=group_of(md, root), title=title,
        command=command or (produced.group(1).strip() if produced else None),
        wall_seconds=float(wall) if isinstance(wall, (int, float)) else _wall_seconds(text),
        synthetic="SYNTHETIC" in text or raw.get("synthetic") is True,
        blocks=parse_markdown(body, md.parent), json=sibling if sibling.is_file() else None,
    )


def _owner(png: Path, reports: list[Report]) -> Report | None:
    """The report a figure belongs to: the one naming it, else the longest stem it starts with."""
    near = [r for r in reports if r.md.parent == png.parent]
    named = [r for r in near if png.name in r.md.read_text(errors="replace")]
    if named:
        return named[0]
    prefixed = [r for r in near if png.stem == r.md.stem or png.stem.startswith(r.md.stem + "_")]
    return max(prefixed, key=lambda r: len(r.md.stem), default=None)


def collect(root: Path | None = None) -> list[Group]:
    """Every report under ``root`` (default ``results/``), grouped by task: task folders in name
    order, the timings group and loose files last; calibration and faithfulness first in a group."""
    root = results_dir() if root is None else root
    if not root.is_dir():
        return []
    reports = [read_report(md, root) for md in sorted(root.rglob("*.md"))]
    groups: dict[str, Group] = {}
    for r in reports:
        groups.setdefault(r.group, Group(r.group, [])).reports.append(r)
    embedded = {f.png for r in reports for f in r.all_figures}
    for png in sorted(set(root.rglob("*.png")) - embedded):
        svg = png.with_suffix(".svg")
        fig = Figure(png, svg if svg.is_file() else None)
        owner = _owner(png, reports)
        if owner is not None:
            owner.figures.append(fig)
        else:
            name = group_of(png, root)
            groups.setdefault(name, Group(name, [])).figures.append(fig)
    for g in groups.values():
        g.reports.sort(key=lambda r: (PROMINENT.index(r.md.stem) if r.prominent else len(PROMINENT),
                                      r.md.relative_to(root).as_posix()))
    return sorted(groups.values(), key=lambda g: (g.name in (BENCH_GROUP, "results"), g.name == "results", g.name))


def fingerprint(root: Path | None = None) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of every file under ``root``: a cache key that changes
    when an experiment writes or rewrites a result."""
    root = results_dir() if root is None else root
    if not root.is_dir():
        return ()
    return tuple((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in _files(root))


def zip_results(root: Path | None = None) -> bytes:
    """All of ``results/`` as one zip (paths kept under ``results/``)."""
    root = results_dir() if root is None else root
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in _files(root):
            z.write(p, Path("results") / p.relative_to(root))
    return buf.getvalue()


def _files(root: Path) -> list[Path]:
    """The files under ``root`` but hidden ones: the temporary files of a write in progress are
    hidden, and vanish between listing and reading while an experiment runs."""
    return [p for p in sorted(root.rglob("*"))
            if not any(part.startswith(".") for part in p.relative_to(root).parts) and p.is_file()]
