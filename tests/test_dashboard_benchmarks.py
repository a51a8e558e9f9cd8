"""The Benchmarks page: the results parser (core.results_index) on the committed ``results/`` files
and on small made-up ones, and the page under AppTest (no data set needed: it only reads results/)."""
from __future__ import annotations

import json
import re
import zipfile
from io import BytesIO
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.results_index import BENCH_GROUP, Figure, collect, parse_markdown, read_report, results_dir, zip_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
MDS = sorted(RESULTS.rglob("*.md"))
TASKS = ("cells", "derm7pt", "pbc", "rosmap")


# ------------------------------------------------------------------ the committed results
def test_results_are_committed():
    assert results_dir() == RESULTS and len(MDS) >= 10
    assert {md.parent.name for md in MDS} >= {*TASKS, "bench"}


@pytest.mark.parametrize("md", MDS, ids=lambda p: p.relative_to(RESULTS).as_posix())
def test_every_result_parses(md):
    text = md.read_text()
    r = read_report(md, RESULTS)
    assert r.title and not r.title.startswith("#")
    produced = re.search(r"Produced by: `([^`]+)`", text)
    if produced:  # a reproduction: its command, its wall time and at least one table
        assert r.command == produced.group(1)
        assert r.wall_seconds is not None and r.wall_time != "not recorded"
        assert r.tables
    raw = json.loads(md.with_suffix(".json").read_text()) if md.with_suffix(".json").is_file() else {}
    if "wall_seconds" in raw:
        assert r.wall_seconds == pytest.approx(raw["wall_seconds"])
    for t in r.tables:
        assert len(t) and t.shape[1] >= 2 and t.columns.is_unique and all(t.columns)
        assert not any("**" in str(v) for v in t.to_numpy().ravel())  # bold marks dropped for the CSV
    prose = "\n".join(b for b in r.blocks if isinstance(b, str))
    assert "Produced by" not in prose and not re.search(r"^# ", prose, re.MULTILINE)  # shown above the body
    assert "SYNTHETIC" not in text and not r.synthetic  # the committed results are on real data


def test_a_table_is_parsed_cell_by_cell():
    r = read_report(RESULTS / "cells" / "reproduction_rp.md", RESULTS)
    t = r.tables[0]
    assert list(t.columns)[:2] == ["Method", "F1 (weighted)"] and t.shape[1] == 7
    assert t.set_index("Method").loc["RF (early)", "F1 (weighted)"] == "94.8 ± 2.4"  # bold removed
    recall = next(t for t in read_report(RESULTS / "pbc" / "cnn.md", RESULTS).tables
                  if "Test cases (all runs)" in t.columns)
    assert pd.api.types.is_numeric_dtype(recall["Test cases (all runs)"])


def test_results_are_grouped_by_task_with_every_figure_shown_once():
    groups = collect()
    names = [g.name for g in groups]
    assert set(TASKS) <= set(names) and names[-1] == BENCH_GROUP
    assert sorted(r.md for g in groups for r in g.reports) == MDS
    for g in groups:
        assert all(r.group == g.name for r in g.reports)
        first = [r.md.stem for r in g.reports[:2]]
        for stem in ("calibration", "faithfulness"):  # wherever they exist, they open the group
            if (RESULTS / g.name / f"{stem}.md").is_file():
                assert stem in first
    shown = [f for g in groups for f in g.figures] + [f for g in groups for r in g.reports for f in r.all_figures]
    assert sorted(f.png for f in shown) == sorted(RESULTS.rglob("*.png"))
    assert all(f.svg == f.png.with_suffix(".svg") for f in shown if f.png.with_suffix(".svg").is_file())
    pbc = next(r for r in next(g for g in groups if g.name == "pbc").reports if r.md.stem == "cnn")
    assert any(isinstance(b, Figure) and b.png.name == "cnn_confusion.png" for b in pbc.blocks)  # where it is embedded
    hypermm = next(r for r in groups[names.index("cells")].reports if r.md.stem == "hypermm")
    assert [f.png.name for f in hypermm.figures] == ["hypermm_robustness.png"]  # named in its text


def test_bench_report_has_its_command_and_no_wall_time():
    r = read_report(RESULTS / "bench" / "dashboard.md", RESULTS)
    assert r.group == BENCH_GROUP and r.command == "python bench/dashboard_latency.py"
    assert r.wall_time == "not recorded" and r.json is None


def test_zip_holds_every_result_file():
    names = zipfile.ZipFile(BytesIO(zip_results())).namelist()
    assert sorted(names) == sorted(f"results/{p.relative_to(RESULTS).as_posix()}" for p in RESULTS.rglob("*")
                                   if p.is_file())


# ------------------------------------------------------------------ the parser on made-up files
def test_parser_keeps_fenced_pipes_as_prose_and_tidies_tables():
    text = ("## Part\n\n```\n| a | b |\n| --- | --- |\n```\n\n"
            "| name | n | n | |\n|:---|---:|---|---|\n| **x \\| y** | 1 | `2` |\n| z | −3 | 4 | w |\nafter\n\nmore")
    blocks = parse_markdown(text)
    assert isinstance(blocks[0], str) and "| a | b |" in blocks[0] and blocks[0].startswith("### Part")
    t = blocks[1]
    assert list(t.columns) == ["name", "n", "n (2)", "column 4"]
    assert t["name"].tolist() == ["x | y", "z"] and t["n"].tolist() == [1, -3] and t["column 4"].tolist() == ["", "w"]
    assert blocks[2] == "after\n\nmore"  # a line without a pipe ends the table


def _write(folder: Path, name: str, text: str, payload: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / f"{name}.md"
    md.write_text(text)
    if payload is not None:
        (folder / f"{name}.json").write_text(json.dumps(payload))
    return md


def test_command_and_wall_time_come_from_json_else_text_else_not_recorded(tmp_path):
    table = "| a | b |\n| --- | --- |\n| 1 | 2 |\n"
    text = f"# T\n\nProduced by: `python train.py --experiment demo/x`\n\n{table}\nWall time 2.5 min on `cpu`.\n"
    assert read_report(_write(tmp_path / "demo", "x", text), tmp_path).wall_seconds == 150
    exact = read_report(_write(tmp_path / "demo", "y", text, {"command": "exact", "wall_seconds": 149.2}), tmp_path)
    assert (exact.command, exact.wall_seconds, exact.wall_time) == ("exact", 149.2, "2.5 min")
    (tmp_path / "demo" / "z.json").write_text("{broken")
    broken = read_report(_write(tmp_path / "demo", "z", text), tmp_path)
    assert broken.command == "python train.py --experiment demo/x" and broken.json is not None
    bare = read_report(_write(tmp_path / "demo", "w", table), tmp_path)
    assert bare.title == "w" and bare.command is None and bare.wall_time == "not recorded"
    synthetic = read_report(_write(tmp_path / "demo", "s", "# S\n\n**SYNTHETIC DATA**\n\n" + table), tmp_path)
    assert synthetic.synthetic and not bare.synthetic


# ------------------------------------------------------------------ the page
def _page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=120)
    at.switch_page("views/benchmarks.py").run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def test_page_shows_every_task_with_tables_and_downloads():
    at = _page()
    assert at.title[0].value == "Benchmarks"
    control = at.segmented_control(key="bench_group")
    assert set(TASKS) | {BENCH_GROUP} <= {o.rsplit(" (", 1)[0] for o in control.options}  # "cells (7)"
    labels = {b.label for b in at.download_button}
    assert {"Download everything (results/ as zip)", "Markdown", "JSON (raw results)", "CSV", "PNG", "SVG"} <= labels
    for task in TASKS:
        control.set_value(task).run()
        assert not at.exception, at.exception
        index = next(d.value for d in at.dataframe if "wall time" in d.value.columns)
        assert len(index) == len(list((RESULTS / task).glob("*.md"))) and "not recorded" not in set(index["wall time"])
        assert len(at.dataframe) >= 2  # the index and the open report's tables
        assert any(c.value.startswith(("python", "OMP_NUM_THREADS")) for c in at.code)
        assert sum(b.label == "CSV" for b in at.download_button) == len(at.dataframe)
    control.set_value(BENCH_GROUP).run()
    assert any(re.match(r"(OMP_NUM_THREADS=\d+ )?python bench/\w+\.py", c.value) for c in at.code)
    assert any("not recorded" in m.value for m in at.markdown)


def test_page_puts_calibration_first_and_labels_synthetic_results(tmp_path, monkeypatch):
    table = "| model | ECE % |\n| --- | --- |\n| a | 1.5 |\n"
    _write(tmp_path / "results" / "demo", "accuracy", "# Accuracy on demo\n\n**SYNTHETIC DATA**\n\n" + table)
    _write(tmp_path / "results" / "demo", "faithfulness", "# Faithfulness on demo\n\n" + table)
    _write(tmp_path / "results" / "demo", "calibration", "# Calibration on demo\n\nProduced by: `python c.py`\n\n"
           + table, {"command": "python c.py", "wall_seconds": 3.0})
    monkeypatch.setattr("core.paths.REPO_ROOT", tmp_path)
    at = _page()
    assert [e.label for e in at.expander][:3] == ["Calibration on demo", "Faithfulness on demo",
                                                 "Accuracy on demo · **SYNTHETIC**"]
    index = next(d.value for d in at.dataframe if "wall time" in d.value.columns)
    assert index["synthetic"].tolist() == [False, False, True]
    assert index["wall time"].tolist()[:2] == ["3.0 s", "not recorded"]
    assert [c.value for c in at.code] == ["python c.py"] and not at.warning  # the synthetic report is still closed
    at.session_state["open:demo_accuracy"] = True
    at.run()
    assert any("SYNTHETIC" in w.value for w in at.warning)


def test_page_without_results_says_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setattr("core.paths.REPO_ROOT", tmp_path)
    at = _page()
    assert any("train.py --experiment" in i.value for i in at.info)
