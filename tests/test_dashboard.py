"""The dashboard runs: Streamlit's AppTest for each page, and one real-browser check."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent


def _table_with(at, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_home_lists_tasks_and_shipped_models(data_dir):
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=120).run()
    assert not at.exception
    table = _table_with(at, "available")
    assert set(table["task"]) >= {"cells", "rosmap", "derm7pt", "pbc", "demo"}
    cells = table.set_index("task").loc["cells"]
    assert cells["available"] and cells["samples"] == 600
    shipped = _table_with(at, "balanced accuracy %").set_index(["task", "model"])
    card = json.loads((ROOT / "checkpoints" / "pbc" / "cnn" / "card.json").read_text())
    assert shipped.loc[("pbc", "cnn"), "accuracy %"] == round(100 * card["metrics"]["accuracy"], 1)
    assert shipped.loc[("derm7pt", "cnn"), "research only"] and not shipped.loc[("pbc", "cnn"), "research only"]


def test_home_without_models_says_how_to_train_them(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MMX_CHECKPOINTS", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=120).run()
    assert not at.exception and any("train.py --release" in i.value for i in at.info)


def test_home_without_data_says_synthetic(tmp_path, monkeypatch):
    monkeypatch.setenv("MMX_DATA_DIR", str(tmp_path / "nothing"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("core.paths.REPO_ROOT", tmp_path)
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=120).run()
    assert not at.exception
    assert any("synthetic" in w.value for w in at.warning)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(data_dir):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "Home.py"), "--server.headless", "true",
         "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def browser_required():
    if shutil.which("chromium") is None and not os.path.exists("/usr/bin/chromium"):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: CI must install it (setup.sh --test)")
        pytest.skip("chromium not installed")


def test_home_in_real_browser(server, tmp_path):
    browser_required()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server)
            page.get_by_text("Shipped models", exact=True).wait_for(timeout=60_000)
            page.get_by_text("Tasks found", exact=True).wait_for(timeout=60_000)
            page.get_by_text("Class counts of").wait_for(timeout=60_000)
            page.wait_for_selector("[data-testid='stDataFrame']", timeout=60_000)
            page.wait_for_selector(".js-plotly-plot", timeout=60_000)
            for label, magic in (("PNG", b"\x89PNG"), ("SVG", b"<svg"), ("HTML", b"<html")):
                with page.expect_download(timeout=60_000) as dl:
                    page.get_by_role("button", name=label, exact=True).click()
                assert magic in open(dl.value.path(), "rb").read(200), label
            assert page.locator("[data-testid='stException']").count() == 0
            page.screenshot(path=str(tmp_path / "home.png"), full_page=True)
        finally:
            browser.close()


def test_exported_html_opens_offline(tmp_path):
    """The HTML export embeds plotly.js instead of fetching it from a CDN."""
    import plotly.graph_objects as go

    from core.viz.export import figure_bytes, save_figure

    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    html = figure_bytes(fig, "html").decode()
    assert not re.search(r"<script[^>]*\bsrc=", html)  # no script fetched from anywhere
    assert len(html) > 1_000_000 and "Plotly.newPlot" in html  # the library itself is inside
    (path,) = save_figure(fig, tmp_path / "fig", formats=("html",))
    saved = path.read_text()  # the same export (only plotly's random div id differs)
    assert len(saved) > 1_000_000 and not re.search(r"<script[^>]*\bsrc=", saved)


def test_browser_check_fails_in_ci_without_chromium(monkeypatch):
    """In CI a missing browser is a failure, never a skip."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed"):
        browser_required()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        browser_required()
