"""The dashboard under Streamlit's AppTest: every page on the real data, live masking, uploads (the
real-browser walk is tests/test_browser.py)."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
LABELS = {"learned": "Learned FI", "integrated_gradients": "Integrated Gradients", "occlusion": "Occlusion",
          "gradient_shap": "GradientSHAP"}


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


def test_home_without_data_says_what_stands_in_and_how_to_get_it(tmp_path, monkeypatch):
    (tmp_path / "nothing").mkdir()  # a data root with no task's folder
    monkeypatch.setenv("MMX_DATA_DIR", str(tmp_path / "nothing"))
    monkeypatch.chdir(tmp_path)
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=120).run()
    assert not at.exception and not at.error
    banner = " ".join(i.value for i in at.info)
    assert "No data here for cells, pbc, rosmap" in banner and "bundled in `examples/`" in banner
    assert "--download cells pbc rosmap" in banner and "http://derm.cs.sfu.ca" in banner
    assert any("synthetic" in c.value for c in at.caption)


# ------------------------------------------------------------------ pages on the real data
PAGES = ("views/predict.py", "views/informativeness.py", "views/modality_weights.py", "views/explainers.py")


def _app(model: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=300).run()
    assert not at.exception
    if model:
        at.selectbox(key="model").set_value(model).run()
    return at


def _page(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _x(trace: dict) -> np.ndarray:
    """A bar trace's values (plotly writes arrays as base64 typed arrays)."""
    x = trace["x"]
    return np.frombuffer(base64.b64decode(x["bdata"]), x["dtype"]) if isinstance(x, dict) else np.asarray(x)


@pytest.mark.parametrize("model", ["cells/mm_dynamics", "derm7pt/mm_dynamics", "pbc/cnn",
                                   "cells/guidance_rna_by_protein", "rosmap/mm_static", "cells/hypermm"])
def test_every_page_renders_for_a_shipped_model(data_dir, model):
    at = _app(model)
    for page in PAGES:
        _page(at, page)
        assert not at.error, [e.value for e in at.error]
    _page(at, "views/predict.py")
    assert _charts(at) and "Predicted class" in _metrics(at)
    sets = [c.value for c in at.caption if "90% prediction set: {" in c.value]
    predicted = _metrics(at)["Predicted class"]
    assert sets and (predicted in sets[0] or "empty" in sets[0]), "every prediction carries its prediction set"
    _page(at, "views/informativeness.py")
    if model.endswith("mm_dynamics"):
        assert len(_charts(at)) >= 2  # a patch map or top features, and more
    else:
        assert any("learns no feature informativeness" in i.value for i in at.info)
    _page(at, "views/modality_weights.py")
    effects = _table_with(at, "accuracy drop (pp)")
    assert effects["switched off"].iloc[0] == "none" and effects["accuracy drop (pp)"].iloc[0] == 0


def test_explainers_page_shows_every_map_and_its_curves(data_dir):
    at = _page(_app("derm7pt/mm_dynamics"), "views/explainers.py")
    assert not at.error, [e.value for e in at.error]
    names = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    for title in ("Learned FI", "Integrated Gradients", "Occlusion", "GradientSHAP"):
        assert names.count(title) == 2, (title, names)  # one map per photo (clinic, derm)
    assert any(n.startswith("Deletion and insertion") for n in names)
    auc = _table_with(at, "deletion AUC")
    assert set(auc["explainer"]) == {"Learned FI", "Integrated Gradients", "Occlusion", "GradientSHAP", "Random"}
    assert auc["deletion AUC"].between(0, 1).all() and auc["insertion AUC"].between(0, 1).all()
    assert any("Learned FI" in set(d.value.get("Explainer", [])) for d in at.dataframe
               if "Explainer" in d.value.columns)  # the committed cohort table
    sanity = json.loads((ROOT / "results" / "derm7pt" / "sanity.json").read_text())
    warned = [w.value for w in at.warning if w.value.startswith("Sanity check")]
    assert len(warned) == len(sanity["flagged"]) and all(  # results/derm7pt/sanity.md's flags, in words
        any(LABELS[e] in w for w in warned) for e in sanity["flagged"])
    metrics = _table_with(at, "infidelity (median)")
    assert {"Random", "Integrated Gradients"} <= set(metrics["explainer"]) and set(metrics["modality"]) == {"clinic",
                                                                                                        "derm"}
    ratio = metrics.set_index("explainer")["infidelity to random (median ratio)"]
    assert (ratio["Integrated Gradients"] > 0).all() and ratio["Random"].isna().all()  # the reference has no ratio
    at.get("button_group")[0].set_value(["integrated_gradients"]).run()
    names = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert "Occlusion" not in names and names.count("Integrated Gradients") == 2


def test_explainers_rank_genes_on_an_omics_model(data_dir):
    at = _page(_app("cells/guidance_rna_by_protein"), "views/explainers.py")
    assert not at.error, [e.value for e in at.error]
    top = _table_with(at, "Integrated Gradients")
    assert len(top) == 10 and "Learned FI" not in top.columns  # guidance learns no map; captum explains its RNA


def test_cells_image_is_said_to_be_class_matched(data_dir):
    at = _page(_app("cells/mm_dynamics"), "views/predict.py")
    assert any("not a picture of this cell" in i.value for i in at.info)


def test_toggling_a_modality_moves_the_probabilities(data_dir):
    at = _page(_app("cells/mm_dynamics"), "views/predict.py")
    before = _charts(at)[0]["data"]
    assert len(before) == 1 and _metrics(at)["Masked"] == "nothing masked"
    at.toggle(key="on:rna").set_value(False).run()
    after = _charts(at)[0]["data"]
    assert len(after) == 2 and not np.allclose(_x(after[0]), _x(after[1]))  # masked beside unmasked, different
    assert "Masked: predicted class" in _metrics(at)
    assert sum("prediction set" in c.value for c in at.caption) == 2  # unmasked and masked
    assert any("guarantee does not cover" in c.value for c in at.caption)
    at.selectbox(key="how:rna").set_value("zeros").run()
    zeros = _x(_charts(at)[0]["data"][1])
    assert not np.allclose(zeros, _x(after[1]))  # another way of switching off, another answer
    at.run()  # a full rerun keeps the toggles (they live in the session)
    assert len(_charts(at)[0]["data"]) == 2


def test_patch_slider_and_clicked_patches_change_the_image_prediction(data_dir):
    at = _page(_app("derm7pt/mm_dynamics"), "views/informativeness.py")
    start = _metrics(at)
    label = next(k for k in start if k.endswith("patches masked"))
    assert label.startswith("0 ")
    at.slider(key="k:clinic").set_value(128).run()
    moved = _metrics(at)
    assert "128 patches masked" in moved and moved["128 patches masked"] != start[label]
    at.run()
    at.session_state["map:derm7pt/mm_dynamics|test|0:clinic"] = {
        "selection": {"points": [{"customdata": 5, "point_index": 5, "curve_number": 2}], "point_indices": [5],
                      "box": [], "lasso": []}}
    at.slider(key="k:clinic").set_value(0).run()
    assert "1 patch masked" in _metrics(at)


def _upload(at: AppTest, key: str, name: str, data: bytes, mime: str) -> AppTest:
    at.file_uploader(key=key).set_value((name, data, mime)).run()
    return at


def test_uploaded_pbc_image_is_predicted(data_dir):
    at = _page(_app("pbc/cnn"), "views/predict.py")
    at.radio(key="source").set_value("Upload").run()
    image = sorted((data_dir / "blood_cells/pbc_acevedo2020").rglob("*.jpg"))[0]
    _upload(at, "upload:pbc/cnn:image", image.name, image.read_bytes(), "image/jpeg")
    _page(at, "views/predict.py")
    assert not at.error and _metrics(at)["Predicted class"] in json.loads(
        (ROOT / "checkpoints/pbc/cnn/card.json").read_text())["classes"]


@pytest.fixture(scope="module")
def cite_upload(data_dir, tmp_path_factory):
    """Three real cells' raw counts (RNA and protein) as one CSV and as an RNA-only .h5ad."""
    import anndata as ad
    import pandas as pd

    from core.data.readers import read_h5ad
    from core.data.tasks.cells import CITE, PROT_FILE, RNA_FILE

    rna, prot = (read_h5ad(data_dir / CITE / f, layer="counts") for f in (RNA_FILE, PROT_FILE))
    rows = [0, 200, 400]
    r = pd.DataFrame(rna.X[rows], index=rna.ids[rows], columns=rna.features)
    p = pd.DataFrame(prot.X[rows], index=prot.ids[rows], columns=prot.features)
    folder = tmp_path_factory.mktemp("upload")
    pd.concat([r, p[[c for c in p.columns if c not in r.columns]]], axis=1).rename_axis("cell_id").to_csv(
        folder / "cells.csv")
    ad.AnnData(r.to_numpy(), obs=pd.DataFrame(index=r.index), var=pd.DataFrame(index=r.columns)).write_h5ad(
        folder / "cells.h5ad")
    return folder


@pytest.mark.parametrize("name", ["cells.csv", "cells.h5ad"])
def test_uploaded_expression_is_predicted_and_the_cell_picked(data_dir, cite_upload, name):
    at = _page(_app("cells/mm_dynamics"), "views/predict.py")
    at.radio(key="source").set_value("Upload").run()
    _upload(at, "upload:cells/mm_dynamics:table", name, (cite_upload / name).read_bytes(), "application/octet-stream")
    assert not at.error, [e.value for e in at.error]
    at.selectbox(key="cell:cells/mm_dynamics").set_value(2).run()
    _page(at, "views/predict.py")
    assert "Predicted class" in _metrics(at)
    warned = " ".join(w.value for w in at.warning)
    assert "image** is absent" in warned and ("protein** is absent" in warned) == name.endswith(".h5ad")


def test_corrupt_upload_shows_the_error_and_the_app_goes_on(data_dir):
    at = _page(_app("pbc/cnn"), "views/predict.py")
    at.radio(key="source").set_value("Upload").run()
    _upload(at, "upload:pbc/cnn:image", "broken.png", b"not an image at all", "image/png")
    assert not at.exception and any("broken.png" in e.value for e in at.error)
    at.radio(key="source").set_value("Test split").run()
    _page(at, "views/predict.py")
    assert not at.error and "Predicted class" in _metrics(at)


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


def test_what_would_change_it_draws_each_explainers_set_and_applies_it_on_predict(data_dir):
    at = _page(_app("derm7pt/mm_dynamics"), "views/explainers.py")
    assert not at.error, [e.value for e in at.error]
    sets = _table_with(at, "becomes")
    assert set(sets["kind"]) == {"flip"} and {"Random", "Integrated Gradients"} <= set(sets["explainer"])
    assert set(sets["modality"]) >= {"clinic", "derm", "modalities"}
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any(t.startswith("Integrated Gradients: ") for t in titles), titles
    found = sets[(sets["found"]) & (sets["modality"] == "derm") & (sets["explainer"] != "Random")]
    assert len(found), sets
    row = found.iloc[0]
    key = {v: k for k, v in LABELS.items()}[row["explainer"]]
    at.button(key=f"cf_apply:derm:{key}").click().run()
    assert not at.exception, at.exception
    patches = at.text_input(key="patches:derm").value
    assert patches and len(patches.split(",")) == row["size"]
    labels = _metrics(at)
    assert "Masked: predicted class" in labels  # Predict shows the set applied to its live masks
    assert labels["Masked: predicted class"] == row["becomes"]


def test_what_would_change_it_says_in_one_line_when_no_order_changes_an_image(data_dir):
    at = _page(_app("cells/mm_dynamics"), "views/explainers.py")
    assert not at.error, [e.value for e in at.error]
    sets = _table_with(at, "becomes")
    image = sets[sets["modality"] == "image"]
    assert len(image) == 5 and not image["found"].any()  # the cell image alone never changes this answer
    assert any(md.value.startswith("**image**: no set of at most 50% of its patches changes") for md in at.markdown)
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert not any("none within" in t for t in titles), titles


def test_what_would_change_it_lets_a_feature_set_be_edited(data_dir):
    at = _page(_app("cells/mm_dynamics_protein+rna"), "views/explainers.py")
    assert not at.error, [e.value for e in at.error]
    at.radio(key="cf_kind").set_value("keep").run()
    sets = _table_with(at, "becomes")
    kept = sets[sets["found"]]
    assert set(sets["kind"]) == {"keep"} and len(kept) and (kept["becomes"] == kept["predicted"]).all()
    edits = [m for m in at.multiselect if str(m.key).startswith("cf_edit:")]
    assert edits
    edits[0].set_value([]).run()  # keep nothing of that modality: the page says what the model answers then
    assert any("With these 0 features alone" in md.value for md in at.markdown)
