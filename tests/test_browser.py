"""The dashboard in a real browser: Debian's chromium driven by Playwright against
``streamlit run dashboard/Home.py``. One walk through every page as a person would do it: open
each page from the sidebar, switch a modality off, upload a real PBC image, click a patch on the
patch map, download a figure as PNG, compare explainers, drop modalities, switch to a guidance
model, read the benchmarks. Full-page screenshots go to ``$MMX_SCREENSHOTS`` (default: the
test's tmp folder). In CI (``$CI`` set) a missing browser or data fails the test, never skips it.
"""
from __future__ import annotations

import contextlib
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

from core.data.tasks.cells import CLASSES
from core.paths import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 2200}  # tall: Streamlit's main area scrolls inside the page
FIRST_LOAD_MS = 180_000  # the first page loads the models and the test split (a 2-core CPU)
WAIT_MS = 120_000
TITLES = {"Home": "Explainable multimodal classification", "Predict": "Predict",
          "Informativeness": "Feature informativeness", "Modality weights": "Modality weights",
          "Explainers": "Explainers", "Missing modalities": "Missing modalities", "Guidance": "Guidance",
          "Benchmarks": "Benchmarks"}


def _need(what: str) -> None:
    msg = f"{what} is missing: `bash setup.sh --test` installs it"
    if os.environ.get("CI"):
        pytest.fail(msg + " (browser tests must run in CI)")
    pytest.skip(msg)


def _chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _need("the python package playwright")
    exe = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if exe is None:
        _need("chromium")
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(repo: Path, log: Path, env: dict[str, str]):
    """``streamlit run dashboard/Home.py`` of ``repo`` on a free localhost port; its log is in the
    failure message."""
    port = _free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard/Home.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=repo, stdout=out, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def app(data_dir, tmp_path):
    """The dashboard of this repository, with the data folder."""
    log = tmp_path / "streamlit.log"
    with serving(REPO_ROOT, log, dict(os.environ)) as url:
        yield url, log


def settle(page, timeout: int = WAIT_MS) -> None:
    """Wait until the script run is over: no running indicator, no stale (greyed) element. Call it
    after waiting for the new content itself (right after a click the rerun may not have started)."""
    page.wait_for_function(
        """() => !document.querySelector("[data-testid='stStatusWidgetRunningIcon']")
                 && !document.querySelector("[data-stale='true']")""", timeout=timeout)
    page.wait_for_timeout(300)  # let plotly finish drawing


def healthy(page, where: str) -> None:
    """No exception and no error box anywhere on the page."""
    for sel, what in (("[data-testid='stException']", "an exception"), ("[data-testid='stAlertContentError']",
                                                                       "an error")):
        boxes = page.locator(sel)
        assert boxes.count() == 0, f"{where} shows {what}: {boxes.first.inner_text()[:1000]}"


def open_page(page, title: str, timeout: int = WAIT_MS) -> None:
    """Open a page from the sidebar navigation and wait for its heading and first chart."""
    page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=title).click()
    page.get_by_role("heading", name=TITLES[title], exact=True).wait_for(timeout=timeout)
    page.locator("[data-testid='stMain'] .js-plotly-plot").first.wait_for(timeout=timeout)
    settle(page, timeout)
    healthy(page, title)


def screenshot(page, folder: Path, name: str) -> Path:
    """The whole page: grow the viewport to the main area's height (it scrolls inside the page, so a
    plain full-page shot would cut it), shoot, and restore the viewport."""
    height = page.evaluate("() => document.querySelector(\"[data-testid='stMain']\").scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(max(VIEWPORT["height"], height + 40), 12_000)})
    page.wait_for_timeout(500)
    settle(page)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEWPORT)
    page.wait_for_timeout(300)
    return path


#: every page's address (st.Page's url_path: the file name; Home is the default page at "/")
ADDRESSES = {"Home": "", "Predict": "predict", "Informativeness": "informativeness",
             "Modality weights": "modality_weights", "Explainers": "explainers", "Guidance": "guidance",
             "Missing modalities": "missing", "Benchmarks": "benchmarks"}
SAMPLE_PAGES = ("Predict", "Informativeness", "Modality weights", "Explainers", "Guidance", "Missing modalities")


def same_app(page, where: str) -> None:
    """What every page must show however it was reached: the eight titled pages in the sidebar (not
    Streamlit's file-name navigation) and the wide layout."""
    nav = page.locator("[data-testid='stSidebarNav'] [data-testid='stSidebarNavLink']")
    names = [t.strip().split("\n")[-1] for t in nav.all_inner_texts()]  # the icon's name comes first
    assert names == list(ADDRESSES), f"{where}: the sidebar lists {names}"
    width = page.locator("[data-testid='stMainBlockContainer']").bounding_box()["width"]
    assert width > 0.8 * VIEWPORT["width"] - 400, f"{where}: main area {width:.0f} px wide (the layout is not wide)"


def shots_dir(tmp_path: Path) -> Path:
    """Where screenshots go: ``$MMX_SCREENSHOTS``, else the test's tmp folder."""
    shots = Path(os.environ.get("MMX_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    return shots


@contextlib.contextmanager
def browsing(exe: str, log: Path, **page_options):
    """A page of Debian's chromium; on a failure the server's log is printed; JavaScript errors in the
    page fail the test."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT, **page_options)
            page.set_default_timeout(WAIT_MS)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page
        except Exception:
            print(f"--- streamlit log ---\n{log.read_text(errors='replace')[-4000:]}")
            raise
        finally:
            browser.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def metric_labels(page) -> list[str]:
    return [t.strip() for t in page.locator("[data-testid='stMetricLabel']").all_inner_texts()]


def test_every_page_in_a_real_browser(app, data_dir, tmp_path):
    exe = _chromium()
    pbc = data_dir / "blood_cells" / "pbc_acevedo2020"
    images = sorted((pbc / "erythroblast").glob("*.jpg")) or sorted(pbc.rglob("*.jpg"))
    if not images:
        _need(f"a PBC image (*.jpg under {pbc})")
    upload = images[0]
    shots = shots_dir(tmp_path)
    url, log = app
    with browsing(exe, log, accept_downloads=True) as page:
        started = time.monotonic()

        # Home: the tables and the class-count chart.
        page.goto(url)
        page.get_by_role("heading", name=TITLES["Home"], exact=True).wait_for(timeout=FIRST_LOAD_MS)
        page.locator("[data-testid='stMain'] .js-plotly-plot").first.wait_for(timeout=FIRST_LOAD_MS)
        page.locator("[data-testid='stMain'] [data-testid='stDataFrame']:visible").first.wait_for()
        settle(page, FIRST_LOAD_MS)
        healthy(page, "Home")
        model = page.locator("[data-testid='stSidebar']").get_by_role("combobox", name="Model")
        assert re.fullmatch(r"cells · mm_dynamics · \d+%", model.input_value()), model.input_value()
        for label, magic in (("SVG", b"<svg"), ("HTML", b"<html")):  # the class-count chart's exports
            with page.expect_download(timeout=WAIT_MS) as download:
                page.get_by_role("button", name=label, exact=True).first.click()
            assert magic in Path(download.value.path()).read_bytes()[:300], label
        screenshot(page, shots, "1_home")

        # Predict: the model's answer, then rna switched off.
        open_page(page, "Predict", FIRST_LOAD_MS)
        page.get_by_role("button", name="Download report (zip)").wait_for()
        assert "Predicted class" in metric_labels(page) and "Masked" in metric_labels(page)
        screenshot(page, shots, "2_predict")
        rna = page.get_by_role("switch", name="rna", exact=True)
        assert rna.is_checked()
        page.locator("[data-testid='stCheckbox']", has=rna).locator("label").first.click()  # the input is hidden
        page.get_by_text("Masked: predicted class", exact=True).wait_for()
        page.locator(".js-plotly-plot .legendtext").filter(has_text=re.compile(r"^masked$")).wait_for()
        settle(page)
        healthy(page, "Predict with rna off")
        assert not rna.is_checked()
        assert page.get_by_text("rna switched off as", exact=True).is_visible()

        # a figure as PNG (kaleido: slow the first time)
        with page.expect_download(timeout=WAIT_MS) as download:
            page.get_by_role("button", name="PNG", exact=True).first.click()
        png = Path(download.value.path())
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", download.value.suggested_filename
        assert download.value.suggested_filename == "probabilities.png"
        screenshot(page, shots, "3_predict_rna_off")

        # Predict on an uploaded PBC image (no expression table: protein and rna absent).
        sidebar = page.locator("[data-testid='stSidebar']")
        sidebar.locator("[data-testid='stRadio']").get_by_text("Upload", exact=True).click()
        uploader = sidebar.locator("[data-testid='stFileUploader']").filter(has_text="cell image (image)")
        uploader.wait_for()
        uploader.locator("input[type=file]").set_input_files(str(upload))
        page.locator("[data-testid='stMain'] strong", has_text=upload.name).first.wait_for()
        page.get_by_role("button", name="Download report (zip)").wait_for()
        page.locator("[data-testid='stMain'] .js-plotly-plot").first.wait_for()
        settle(page)
        healthy(page, "Predict on an upload")
        values = page.locator("[data-testid='stMetric']").filter(has_text="Predicted class")
        predicted = values.locator("[data-testid='stMetricValue']").inner_text().strip()
        assert predicted in CLASSES, predicted
        assert page.get_by_text("is absent in this sample").count() == 2  # protein and rna
        screenshot(page, shots, "4_predict_upload")
        sidebar.locator("[data-testid='stRadio']").get_by_text("Test split", exact=True).click()
        sidebar.get_by_text("Class", exact=True).wait_for()
        settle(page)

        # Informativeness: click one patch on the patch map; the page masks it.
        open_page(page, "Informativeness")
        page.get_by_text("map opacity", exact=True).wait_for()
        page.get_by_text("mask the k patches", exact=True).wait_for()
        assert "0 patches masked" in metric_labels(page)
        patch_map = page.locator("[data-testid='stMain'] .js-plotly-plot").first
        selected = """(g) => g.data.some(t => t.name === 'patches' && (t.selectedpoints || []).length > 0)"""
        for attempt in range(3):  # a click that lands while plotly redraws is lost: click again
            area = patch_map.locator(".nsewdrag").first.bounding_box()  # the plot area (the image)
            x, y = area["x"] + 0.3 * area["width"], area["y"] + 0.3 * area["height"]
            page.mouse.move(x - 40, y - 40)
            page.mouse.move(x, y, steps=5)  # plotly picks the clicked point from the hover
            patch_map.locator(".hoverlayer .hovertext").first.wait_for(state="attached", timeout=10_000)
            page.mouse.down()
            page.mouse.up()
            try:  # plotly selects the point before Streamlit reruns the page with it
                page.wait_for_function(selected, arg=patch_map.element_handle(), timeout=10_000)
                break
            except Exception:
                settle(page)
        else:
            mode = patch_map.evaluate("g => [g._fullLayout.dragmode, g._fullLayout.clickmode]")
            pytest.fail(f"three clicks on the patch map selected no patch (plotly dragmode, clickmode = {mode}; "
                        "Streamlit sets clickmode 'event', i.e. no click selection, when the figure's dragmode "
                        "is 'select' or 'lasso')")
        label = re.compile(r"^\s*[1-9]\d* patch(es)? masked")  # the metric counts the masked patches
        page.locator("[data-testid='stMetricLabel']").filter(has_text=label).first.wait_for()
        settle(page)
        healthy(page, "Informativeness after a click")
        assert page.get_by_text(re.compile(r"\+ [1-9]\d* clicked, masked gray")).count() == 1
        screenshot(page, shots, "5_informativeness_patch_clicked")

        # Modality weights: charts and the masking table.
        open_page(page, "Modality weights", FIRST_LOAD_MS)
        page.get_by_role("heading", name="Switching a modality off, over the test split").wait_for()
        page.get_by_text("The drop is in percentage points", exact=False).wait_for(timeout=FIRST_LOAD_MS)
        page.locator("[data-testid='stMain'] [data-testid='stDataFrame']:visible").first.wait_for()
        assert page.locator("[data-testid='stMain'] .js-plotly-plot").count() >= 2
        settle(page)
        healthy(page, "Modality weights")
        screenshot(page, shots, "6_modality_weights")

        # Explainers: the learned map beside captum's, their curves for this sample, the cohort table.
        open_page(page, "Explainers", FIRST_LOAD_MS)
        page.get_by_role("heading", name="How faithful each explanation is, for this sample").wait_for(
            timeout=FIRST_LOAD_MS)
        page.get_by_role("heading", name="Over the test split").wait_for(timeout=FIRST_LOAD_MS)
        settle(page, FIRST_LOAD_MS)
        healthy(page, "Explainers")
        titles = page.locator("[data-testid='stMain'] .js-plotly-plot .gtitle").all_text_contents()
        for title in ("Learned FI", "Integrated Gradients", "Occlusion", "GradientSHAP"):
            assert title in titles, titles
        screenshot(page, shots, "7_explainers")

        # What would change it: a minimal flip set (patches or whole modalities), applied to Predict's live masks.
        section = page.get_by_role("heading", name="What would change it")
        section.wait_for(timeout=FIRST_LOAD_MS)
        section.scroll_into_view_if_needed()
        apply = page.get_by_role("button", name=re.compile("Apply on Predict"))
        apply.first.wait_for(timeout=FIRST_LOAD_MS)
        settle(page)
        screenshot(page, shots, "7b_what_would_change_it")
        apply.first.click()
        page.get_by_role("heading", name=TITLES["Predict"], exact=True).wait_for(timeout=FIRST_LOAD_MS)
        page.get_by_text("Masked: predicted class", exact=True).wait_for(timeout=FIRST_LOAD_MS)
        settle(page)
        healthy(page, "Predict with a minimal flip set applied")
        same_app(page, "Predict after Apply")
        box = page.get_by_role("textbox", name=re.compile("^patches of"))
        patches = box.first.input_value().strip() if box.count() else ""
        assert patches or page.get_by_text(re.compile("switched off as")).count(), "Apply masked nothing"
        screenshot(page, shots, "7c_predict_flip_set_applied")

        # Missing modalities: keep the image only; every compared model answers again.
        open_page(page, "Missing modalities", FIRST_LOAD_MS)
        page.get_by_text("Left out: nothing.", exact=True).wait_for()
        answers = page.locator("[data-testid='stMain'] [data-testid='stMarkdownContainer']").filter(
            has_text=re.compile(r"^p\(.+\) = [\d.]+%$"))  # each model's top class and its probability
        before = answers.all_inner_texts()
        assert len(before) >= 2, before
        for m in ("rna", "protein"):
            page.locator("[data-testid='stCheckbox']").filter(has_text=re.compile(f"^{m}$")).locator(
                "label").first.click()
            settle(page)
        page.get_by_text("Left out: rna, protein.", exact=False).or_(
            page.get_by_text("Left out: protein, rna.", exact=False)).first.wait_for()
        settle(page)
        healthy(page, "Missing modalities, image only")
        assert answers.all_inner_texts() != before
        assert page.get_by_text("guarantee does not cover", exact=False).count() >= 1
        screenshot(page, shots, "8_missing_modalities")

        # Guidance: the page offers the guidance models; switch to one and see both heads.
        page.locator("[data-testid='stSidebarNav']").get_by_role("link", name="Guidance").click()
        page.get_by_role("heading", name=TITLES["Guidance"], exact=True).wait_for()
        page.get_by_role("button", name="Switch to cells/guidance_rna_by_protein").click()
        page.get_by_role("heading", name="This sample").wait_for(timeout=FIRST_LOAD_MS)
        page.get_by_role("heading", name="Where G maps the inferior latents").wait_for(timeout=FIRST_LOAD_MS)
        page.locator("[data-testid='stMain'] .js-plotly-plot").nth(2).wait_for(timeout=FIRST_LOAD_MS)
        settle(page, FIRST_LOAD_MS)
        healthy(page, "Guidance")
        labels = metric_labels(page)
        assert any(t.startswith("Unguided (I)") for t in labels) and any(t.startswith("Guided") for t in labels)
        screenshot(page, shots, "9_guidance")

        # Benchmarks: every committed result by task, with its command.
        page.locator("[data-testid='stSidebarNav']").get_by_role("link", name="Benchmarks").click()
        page.get_by_role("heading", name=TITLES["Benchmarks"], exact=True).wait_for()
        page.get_by_text("Produced by", exact=True).first.wait_for()
        assert "train.py --experiment" in page.locator("[data-testid='stCode']").first.inner_text()
        page.locator("[data-testid='stMain'] [data-testid='stDataFrame']:visible").first.wait_for()
        settle(page)
        healthy(page, "Benchmarks")
        screenshot(page, shots, "10_benchmarks")
        print(f"browser walk: {time.monotonic() - started:.0f} s; screenshots in {shots}")


def test_every_page_by_its_address_and_after_a_reload(app, data_dir, tmp_path):
    """A shared link or a reload opens the same app as clicking through from Home: the titled navigation,
    the wide layout, and the model and sample the address names (also after the reload)."""
    exe = _chromium()
    from core.explain.sample import heldout_cohort
    from core.shipped import load

    model_key = "rosmap/mm_dynamics"
    frame = heldout_cohort(load(*model_key.split("/"))).table()
    row = frame.iloc[7]  # not the first sample, which a page would show anyway
    sample_label = f"{row['label']} — {row['id']}"
    shots = shots_dir(tmp_path)
    url, log = app
    with browsing(exe, log) as page:
        sidebar = page.locator("[data-testid='stSidebar']")
        for title, path in ADDRESSES.items():
            page.goto(f"{url}/{path}?model={model_key}&sample={row['id']}")
            for visit in ("opened by its address", "reloaded"):
                where = f"{title}, {visit}"
                page.get_by_role("heading", name=TITLES[title], exact=True).wait_for(timeout=FIRST_LOAD_MS)
                sidebar.get_by_role("combobox", name="Model").wait_for(timeout=FIRST_LOAD_MS)
                if title in SAMPLE_PAGES:
                    sidebar.get_by_role("combobox", name=re.compile(r"^Sample \(")).wait_for(timeout=FIRST_LOAD_MS)
                if title not in ("Guidance", "Benchmarks"):  # rosmap has no guidance model; tables only
                    page.locator("[data-testid='stMain'] .js-plotly-plot").first.wait_for(timeout=FIRST_LOAD_MS)
                settle(page, FIRST_LOAD_MS)
                healthy(page, where)
                same_app(page, where)
                model = sidebar.get_by_role("combobox", name="Model").input_value()
                assert model.startswith("rosmap · mm_dynamics"), f"{where}: model {model}"
                if title in SAMPLE_PAGES:
                    chosen = sidebar.get_by_role("combobox", name=re.compile(r"^Sample \(")).input_value()
                    assert chosen == sample_label, f"{where}: sample {chosen!r}, the address names {sample_label!r}"
                assert f"model={model_key.replace('/', '%2F')}" in page.url or f"model={model_key}" in page.url, \
                    f"{where}: the address lost the model ({page.url})"
                if visit == "opened by its address":
                    screenshot(page, shots, f"address_{path or 'home'}")
                    page.reload()
        # the choice made on one page travels in the address to the next page and survives its reload
        page.locator("[data-testid='stSidebarNav']").get_by_role("link", name="Predict").click()
        page.get_by_role("heading", name="Predict", exact=True).wait_for()
        settle(page, FIRST_LOAD_MS)
        assert f"sample={row['id']}" in page.url, page.url
        page.reload()
        page.get_by_role("heading", name="Predict", exact=True).wait_for()
        settle(page, FIRST_LOAD_MS)
        chosen = sidebar.get_by_role("combobox", name=re.compile(r"^Sample \(")).input_value()
        assert chosen == sample_label, chosen


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must run in CI"):
        _need("chromium")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _need("chromium")


FRESH_MODELS = ("cells/mm_dynamics", "pbc/cnn", "rosmap/mm_dynamics")


def test_a_fresh_clone_without_data_explains_the_bundled_examples(tmp_path):
    """A copy of the repository with no data folder beside it and no ``MMX_DATA_DIR``: every sample page
    shows a real bundled example for a cells, a pbc and a rosmap model and says it is one; a derm7pt
    model says how to get its data; no error box, no red "none found"."""
    exe = _chromium()
    repo = tmp_path / "clone" / "mmx"  # nothing named data/ or shared/data next to it
    skip = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache")
    shutil.copytree(REPO_ROOT, repo, ignore=lambda d, names: [*skip(d, names), *(
        ["data"] if Path(d) == REPO_ROOT else [])])  # a data/ folder of the working copy, if any
    env = {k: v for k, v in os.environ.items() if k not in ("MMX_DATA_DIR", "MMX_CHECKPOINTS")}
    shots = shots_dir(tmp_path)
    log = tmp_path / "streamlit.log"
    with serving(repo, log, env) as url, browsing(exe, log) as page:
        page.goto(url)
        page.get_by_role("heading", name=TITLES["Home"], exact=True).wait_for(timeout=FIRST_LOAD_MS)
        page.get_by_text("real test samples bundled in examples/", exact=False).wait_for(timeout=FIRST_LOAD_MS)
        settle(page, FIRST_LOAD_MS)
        healthy(page, "Home, fresh clone")
        assert page.get_by_text("none found", exact=False).count() == 0
        screenshot(page, shots, "fresh_home")
        for model in FRESH_MODELS:
            task = model.split("/")[0]
            for title in SAMPLE_PAGES:
                where = f"{title} of {model}, fresh clone"
                page.goto(f"{url}/{ADDRESSES[title]}?model={model}")
                page.get_by_role("heading", name=TITLES[title], exact=True).wait_for(timeout=FIRST_LOAD_MS)
                page.get_by_text(re.compile(r"· examples: \d+ of the \d+ test ")).first.wait_for(
                    timeout=FIRST_LOAD_MS)  # the sample header: what is explained, and that it is an example
                settle(page, FIRST_LOAD_MS)
                healthy(page, where)
                assert page.get_by_text("none found", exact=False).count() == 0, where
                page.get_by_text(f"No {task} data folder on this machine", exact=False).first.wait_for()
                screenshot(page, shots, f"fresh_{task}_{ADDRESSES[title]}")
        page.goto(f"{url}/predict?model=derm7pt/mm_dynamics")
        page.get_by_role("heading", name="Predict", exact=True).wait_for(timeout=FIRST_LOAD_MS)
        page.get_by_text("http://derm.cs.sfu.ca", exact=False).first.wait_for(timeout=FIRST_LOAD_MS)
        settle(page)
        healthy(page, "Predict of derm7pt/mm_dynamics, fresh clone")
        assert page.get_by_text("--download derm7pt --from", exact=False).count() >= 1
        screenshot(page, shots, "fresh_derm7pt_predict")
