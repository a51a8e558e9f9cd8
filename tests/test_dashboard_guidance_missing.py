"""The Guidance and Missing modalities pages under AppTest on the real data, and the core calls
behind them (the UMAP is disk-cached under $MMX_CACHE_DIR, so only a first run embeds)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
GUIDANCE, MISSING = "views/guidance.py", "views/missing.py"


def _app(model: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=300).run()
    assert not at.exception
    at.selectbox(key="model").set_value(model).run()
    return at


def _page(at: AppTest, page: str) -> AppTest:
    at.switch_page(page).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def _table_with(at: AppTest, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


# the committed results of a guidance model: the column of its own modalities and image encoder
COLUMNS = {"cells/guidance_rna_by_protein": "column `rna<-protein`, 10 runs",
           "cells/guidance_image_by_rna+protein": "column `image<-rna+protein, EfficientNet-Lite0`, 10 runs",
           "derm7pt/guidance_clinic_by_derm": "column `diagnosis`, 3 runs"}


@pytest.mark.parametrize("model", ["cells/guidance_rna_by_protein", "cells/guidance_image_by_rna+protein",
                                   "derm7pt/guidance_clinic_by_derm", "cells/hypermm", "rosmap/mm_static", "pbc/cnn"])
def test_both_pages_render(data_dir, model):
    at = _app(model)
    _page(at, GUIDANCE)
    guided = "guidance" in model
    assert any("not a guidance model" in i.value for i in at.info) != guided
    if guided:
        assert len(at.get("plotly_chart")) == 3  # this sample, per-class change, UMAP
        assert "McNemar p (exact)" in _metrics(at)
    if guided:  # the committed tables ran once per image encoder: this model's runs only
        assert any(COLUMNS[model] in m.value for m in at.markdown), [m.value for m in at.markdown]
    _page(at, MISSING)
    if model.startswith("pbc"):
        assert any("single modality" in i.value for i in at.info)
    else:
        assert any(k.endswith(": predicted class") for k in _metrics(at))
        assert len(at.get("plotly_chart")) == (2 if model.startswith(("cells", "derm7pt")) else 1)


def test_guidance_page_shows_unguided_and_guided_probabilities(data_dir):
    from core.explain.guidance import sample_comparison
    from core.explain.sample import heldout_cohort
    from core.shipped import load

    at = _page(_app("cells/guidance_rna_by_protein"), GUIDANCE)
    shown = _table_with(at, "G(I)+I %").set_index("class")
    method = load("cells", "guidance_rna_by_protein")
    want = sample_comparison(method, heldout_cohort(method).sample(0).data, 0).set_index("class")
    assert np.allclose(shown["I %"], (100 * want["I"]).round(1))
    assert np.allclose(shown["G(I)+I %"], (100 * want["G(I)+I"]).round(1))
    metrics = _metrics(at)
    assert {"Unguided (I): predicted class", "Guided (G(I)+I): predicted class"} <= set(metrics)
    sets = [c.value for c in at.caption if "prediction set" in c.value]
    assert len(sets) == 2 and "guided model's output" in sets[0]  # the I set says whose calibration it is
    deltas = _table_with(at, "support")
    assert len(deltas) == 6 and "change (pp)" in deltas
    assert any("Balanced accuracy" in m.value and "McNemar" in m.value for m in at.markdown)  # committed table


def test_a_non_guidance_model_offers_the_guidance_ones(data_dir):
    at = _page(_app("cells/mm_dynamics"), GUIDANCE)
    keys = {b.key for b in at.button}
    assert {"to:cells/guidance_rna_by_protein", "to:cells/guidance_image_by_rna+protein",
            "to:derm7pt/guidance_clinic_by_derm"} <= keys
    at.button(key="to:cells/guidance_rna_by_protein").click().run()
    _page(at, GUIDANCE)
    assert at.selectbox(key="model").value == "cells/guidance_rna_by_protein"
    assert "Guided (G(I)+I): predicted class" in _metrics(at)


def _probabilities(at: AppTest) -> dict[str, np.ndarray]:
    t = _table_with(at, "HyperMM %")
    return {c: t[c].to_numpy() for c in t.columns if c.endswith("%")}


def test_changing_the_kept_modalities_changes_hypermm(data_dir):
    at = _page(_app("cells/hypermm"), MISSING)
    before = _probabilities(at)
    assert set(before) == {"HyperMM %", "MM dynamics %", "MM static %"}
    at.checkbox(key="keep:cells:rna").uncheck().run()
    at.checkbox(key="keep:cells:protein").uncheck().run()
    assert not at.exception
    after = _probabilities(at)
    assert not np.allclose(before["HyperMM %"], after["HyperMM %"])
    assert any("Left out: protein, rna" in c.value for c in at.caption)
    assert "Read: image" in " ".join(c.value for c in at.caption)
    at.checkbox(key="keep:cells:image").uncheck().run()
    assert any("at least one modality" in w.value for w in at.warning)


def test_subset_predict_matches_the_models_own_absence(data_dir):
    """The core call behind the page: each model gets the same sample at its own input size, and
    leaving a modality out equals the sample without it."""
    from core.explain.live import without
    from core.explain.missing import matching_samples, subset_predict, task_models
    from core.explain.sample import heldout_cohort
    from core.shipped import available, load

    models = task_models(available(), "derm7pt")
    assert list(models) == ["hypermm", "mm_dynamics"]  # no MM static shipped for derm7pt
    methods = {n: load("derm7pt", m.name) for n, m in models.items()}
    cohorts = {n: heldout_cohort(m) for n, m in methods.items()}
    sample_id = str(cohorts["hypermm"].table()["id"].iloc[3])
    samples = matching_samples(cohorts, sample_id)
    assert {s.id for s in samples.values()} == {sample_id}
    assert samples["hypermm"].data.specs["derm"].image_shape != samples["mm_dynamics"].data.specs["derm"].image_shape
    result = subset_predict(methods, samples, ["derm"])
    assert result.read == {"hypermm": ("derm",), "mm_dynamics": ("derm",)}
    want = methods["hypermm"].predict(without(samples["hypermm"].data, ["clinic"])).proba[0]
    assert np.allclose(result.proba("hypermm"), want)
    assert result.table.groupby("model")["probability"].sum().round(5).eq(1).all()


def test_robustness_curves_from_the_committed_results():
    from core.viz.robustness import result_curves, result_robustness_figure, result_sections

    cells = json.loads((ROOT / "results/cells/hypermm.json").read_text())
    (section,) = result_sections(cells)
    panels = result_curves(cells, section, "accuracy")
    assert list(panels) == ["rna + protein + image missing"]
    hyper = panels["rna + protein + image missing"]["HyperMM (mean over the observed set)"]
    assert [p[0] for p in hyper] == [0.0, 0.25, 0.5, 0.75] and hyper[0][1] > hyper[-1][1]
    derm = json.loads((ROOT / "results/derm7pt/hypermm.json").read_text())
    fig = result_robustness_figure(derm, result_sections(derm)[0], "balanced_accuracy")
    assert [a.text for a in fig.layout.annotations] == ["clinic missing", "derm missing"]
    assert max(t.line.width for t in fig.data) == 4  # HyperMM drawn thicker
