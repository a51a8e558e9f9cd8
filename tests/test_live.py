"""Live what-if predictions, cohort explanations, uploads and the sample report: the core calls
behind the dashboard's pages, on the shipped models and the real data."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import MMXError
from core.explain.cohort import class_top_features, cohort_explain, masking_effects, modality_weights
from core.explain.informativeness import explain
from core.explain.live import (
    Masking,
    explain_variants,
    live_predict,
    model_input,
    off_modes,
    parse_patches,
    patch_ablation,
    patch_grid,
    patch_order,
    stacked,
    variant_row,
)
from core.explain.sample import Sample, heldout_cohort, read_upload
from core.models.masking import MaskSpec, RowMaskMismatch, RowMasks, apply_mask
from core.models.registry import get_method, list_methods, method_entry, training_stages, with_epochs
from core.shipped import load
from core.report import sample_report

# demo fits for the batched-variants check: one epoch per stage; modalities and settings where the defaults do not fit
DEMO_FITS = {"mcat": (("rna", "protein"), {}), "cnn": (("image",), {}), "hypermm": (None, {"backbone": "small_cnn"}),
             "unimodal": (None, {"modality": "image", "base": "mm_dynamics", "base_config": {"epochs": 1}})}


@pytest.fixture(scope="module")
def cells_model(data_dir):
    return load("cells", "mm_dynamics")


@pytest.fixture(scope="module")
def cells_cohort(cells_model):
    return heldout_cohort(cells_model)


def test_patch_masks_keep_fill_and_mean_image():
    x = {"img": torch.rand(2, 3, 8, 8)}
    mean = torch.full((3, 8, 8), 0.25)
    keep = apply_mask(x, {"img": MaskSpec("patches", patches=(0,), patch_size=4, keep=True, fill="zeros")},
                      lambda m: mean)["img"]
    assert torch.equal(keep[:, :, :4, :4], x["img"][:, :, :4, :4]) and keep[:, :, 4:, :].abs().sum() == 0
    masked = apply_mask(x, {"img": MaskSpec("patches", patches=(3,), patch_size=4, fill="mean")}, lambda m: mean)
    assert torch.all(masked["img"][:, :, 4:, 4:] == 0.25) and torch.equal(masked["img"][:, :, :4], x["img"][:, :, :4])
    assert torch.all(apply_mask(x, {"img": MaskSpec("mean")}, lambda m: mean)["img"] == 0.25)


def test_patch_text_is_parsed_and_checked():
    assert parse_patches("0-3, 7, 7", 16) == (0, 1, 2, 3, 7) and parse_patches("", 16) == ()
    for bad in ("3-1", "16", "a"):
        with pytest.raises(MMXError, match="patches"):
            parse_patches(bad, 16)


def _variants(method) -> list[Masking]:
    """Every way the live page switches a modality off, patch masks (kept or filled) and a mix."""
    out = [Masking()] + [Masking(off={m: mode}) for m in method.predicts_from() for mode in off_modes(method, m)]
    for m in method.predicts_from():
        if method.specs[m].kind == "image":
            out += [Masking(patches={m: (0, 3, 9)}), Masking(patches={m: (1, 2)}, keep=True, fill="blur"),
                    Masking(off={o: "zeros" for o in method.predicts_from() if o != m}, patches={m: (5,)})]
    return out


def _assert_same_as_one_by_one(method, sample: Sample, maskings: list[Masking]) -> float:
    """explain_variants equals one explain per masking (maps and weights too) for the maskings the
    model can answer (MCAT refuses an absent omics); returns the largest probability difference."""
    refs = {}
    for i, masking in enumerate(maskings):
        try:
            refs[i] = explain(method, variant_row(method, sample.data, masking), mask=masking.mask_specs(method))
        except MMXError:
            continue
    assert len(refs) > len(maskings) // 2
    worst = 0.0
    for ref, got in zip(refs.values(), explain_variants(method, sample, [maskings[i] for i in refs]), strict=True):
        worst = max(worst, float(np.abs(got.proba - ref.proba).max()))
        assert np.array_equal(got.ids, ref.ids)
        for part in ("feature_scores", "patch_maps", "modality_weights", "modality_proba"):
            a, b = getattr(got, part), getattr(ref, part)
            assert a.keys() == b.keys()
            for m in a:
                np.testing.assert_allclose(a[m], b[m], atol=1e-5, err_msg=f"{part}[{m}]")
    return worst


@pytest.mark.parametrize("name", sorted(e.name for e in list_methods()))
def test_variants_in_one_batch_match_one_pass_each(demo, one_thread, name):
    mods, cfg = DEMO_FITS.get(name, (None, {}))
    data = demo.dataset.select(list(mods)) if mods else demo.dataset
    config_cls = method_entry(name).config_cls
    if name.startswith("early_"):
        cfg = {"search": False}
    elif name != "unimodal" and training_stages(config_cls):
        cfg = with_epochs(config_cls, cfg, 1)
    method = get_method(name, data.specs, data.classes, **cfg)
    method.fit(data, demo.splits[demo.default_split][0], seed=0, device="cpu")
    sample = Sample(data.subset([3]), None, "demo")
    assert _assert_same_as_one_by_one(method, sample, _variants(method)) <= 1e-6


def test_row_masks_mask_each_row_its_own_way(demo, one_thread):
    data = demo.dataset
    method = get_method("mm_dynamics", data.specs, data.classes, **with_epochs(method_entry("mm_dynamics").config_cls,
                                                                              {}, 1))
    method.fit(data, demo.splits[demo.default_split][0], seed=0, device="cpu")
    specs = (None, MaskSpec("topk", k=5), MaskSpec("patches", patches=(0, 7)), MaskSpec("blur"))
    rows = stacked([data.subset([3])] * len(specs))
    rna = RowMasks((None, None, MaskSpec("mean"), None))
    batched = method.predict(rows, mask={"image": RowMasks(specs), "rna": rna})
    for i, spec in enumerate(specs):
        mask = {"image": spec} if spec else {}
        one = method.predict(data.subset([3]), mask={**mask, **({"rna": "mean"} if i == 2 else {})})
        assert np.abs(batched.proba[i] - one.proba[0]).max() <= 1e-6
    with pytest.raises(RowMaskMismatch, match="per-row masks for 4 rows"):
        method.predict(rows, mask={"image": RowMasks(specs[:2])})


def test_switching_off_moves_the_prediction(cells_model, cells_cohort):
    s = cells_cohort.sample(0)
    same = live_predict(cells_model, s)
    assert same.masked is same.unmasked
    absent = live_predict(cells_model, s, Masking(off={"rna": "absent"}), unmasked=same.unmasked)
    assert not np.allclose(absent.masked.proba, same.unmasked.proba)
    assert np.isnan(absent.masked.modality_weights["rna"][0])  # an absent modality gets no confidence
    masked = live_predict(cells_model, s, Masking(off={"rna": "mean"}))
    assert not np.allclose(masked.masked.proba, absent.masked.proba)  # masking is not missingness
    t = absent.table()
    assert np.allclose(t["change (pp)"], 100 * (absent.masked.proba[0] - same.unmasked.proba[0]))
    with pytest.raises(MMXError, match="at least one"):
        live_predict(cells_model, s, Masking(off={m: "absent" for m in cells_model.specs}))


def test_patch_ablation_starts_at_the_prediction_and_ends_all_gray(cells_model, cells_cohort):
    s = cells_cohort.sample(1)
    info = live_predict(cells_model, s).unmasked
    rows, cols = patch_grid(cells_model, "image")
    order = patch_order(cells_model, info, "image", "most")
    grid = info.patch_maps["image"][0].ravel()
    assert sorted(order.tolist()) == list(range(rows * cols)) and np.all(np.diff(grid[order]) <= 0)
    curve = patch_ablation(cells_model, s, "image", "most", ks=[0, 5, rows * cols], unmasked=info)
    target = int(info.proba[0].argmax())
    assert curve["probability"].iloc[0] == pytest.approx(float(info.proba[0][target]))
    gray = cells_model.predict(s.data, mask={"image": "gray"}).proba[0][target]
    assert curve["probability"].iloc[-1] == pytest.approx(float(gray), abs=1e-5)
    full = patch_ablation(cells_model, s, "image", "most", unmasked=info)  # the 16 masked steps in one pass
    for k, p in zip(full["k"], full["probability"]):
        one = cells_model.predict(s.data, mask=Masking(patches={"image": tuple(order[:k].tolist())}).mask_specs(
            cells_model)).proba[0][target] if k else info.proba[0][target]
        assert abs(p - one) <= 1e-6
    assert _assert_same_as_one_by_one(cells_model, s, _variants(cells_model)) <= 1e-6
    both = live_predict(cells_model, s, Masking(off={"rna": "absent"}, patches={"image": (4, 5)}))
    assert np.abs(both.unmasked.proba - info.proba).max() <= 1e-6 and np.isnan(both.masked.modality_weights["rna"][0])
    shown = model_input(cells_model, s, "image", Masking(patches={"image": tuple(order[:5].tolist())}))
    assert shown.shape == (64, 64, 3) and (shown == 128).all(-1).sum() == 5 * 16


def test_cohort_weights_effects_and_class_features(cells_model, cells_cohort):
    info = cohort_explain(cells_model, cells_cohort)
    w = modality_weights(info, cells_cohort.labels)
    assert set(w["modality"]) == {"rna", "protein", "image"} and len(w) == 3 * len(cells_cohort.idx)
    fx = masking_effects(cells_model, cells_cohort)
    card = cells_model.card["metrics"]["accuracy"]
    assert fx["accuracy"].iloc[0] == pytest.approx(card) and fx["accuracy drop (pp)"].iloc[0] == 0
    rna = fx[fx["switched off"] == "rna"].set_index("how")
    assert rna.loc["mean", "accuracy drop (pp)"] > 10  # the cells model leans on RNA
    top = class_top_features(info, cells_cohort.labels, "B", "protein", 5)
    b = info.feature_scores["protein"][cells_cohort.labels == "B"].mean(0)
    assert top["informativeness"].iloc[0] == pytest.approx(b.max()) and top["samples"].iloc[0] == (
        cells_cohort.labels == "B").sum()


def test_guidance_is_masked_only_where_it_reads(data_dir):
    model = load("cells", "guidance_rna_by_protein")
    fx = masking_effects(model, heldout_cohort(model))
    assert set(fx["switched off"]) == {"none", "rna"}
    with pytest.raises(MMXError, match="predicts from"):
        Masking(off={"protein": "zeros"}).mask_specs(model)


def test_upload_pairs_an_image_with_every_cell_of_a_table(cells_model, cells_cohort, data_dir, tmp_path):
    import pandas as pd

    rna = cells_model.specs["rna"].feature_names
    frame = pd.DataFrame(cells_cohort.data.modalities["rna"][cells_cohort.idx[:3]].numpy(), columns=list(rna))
    frame.insert(0, "cell_id", ["a", "b", "c"])
    frame = frame.drop(columns=list(rna[:10])).assign(unknown_gene=1.0)
    image = sorted((data_dir / "blood_cells/pbc_acevedo2020").rglob("*.jpg"))[0]
    up = read_upload(cells_model, images={"image": (image.name, image.read_bytes())},
                     table=("mine.csv", frame.to_csv(index=False).encode()))
    assert len(up.idx) == 3 and list(up.data.ids) == ["a", "b", "c"]
    assert bool(up.data.present["image"].all()) and bool(up.data.present["rna"].all())
    assert not bool(up.data.present["protein"].any())
    report = " ".join(up.notes)
    assert "10 missing and filled" in report and "1 unknown and ignored (e.g. unknown_gene)" in report
    assert f"read from {image.name}" in report and "/tmp" not in report
    assert any("protein: not uploaded" in n for n in up.notes)
    one = up.sample(2)
    assert one.id == "c" and set(one.digests) == {image.name, "mine.csv"}
    filled = one.data.modalities["rna"][0, :10]
    assert torch.allclose(filled, cells_model.prep.raw_training_mean("rna")[:10])
    with pytest.raises(MMXError, match="broken.png"):
        read_upload(cells_model, images={"image": ("broken.png", b"nope")})
    with pytest.raises(MMXError, match="upload"):
        read_upload(cells_model)


def test_guidance_upload_needs_its_inferior_modality(data_dir):
    model = load("cells", "guidance_image_by_rna+protein")
    with pytest.raises(MMXError, match="upload it"):
        read_upload(model, table=("x.csv", b"cell_id,CD3\na,1\n"))


def test_report_zip_traces_the_figures_back(cells_model, cells_cohort):
    s = cells_cohort.sample(0)
    masking = Masking(off={"protein": "absent"}, patches={"image": (1, 2)})
    z = zipfile.ZipFile(io.BytesIO(sample_report(cells_model, s, masking)))
    names = set(z.namelist())
    assert {"report.json", "probabilities.html", "probabilities_table.csv", "patch_map_image.html",
            "top_rna_table.csv", "modality_weights.html", "plotly.min.js", "what_would_change_it.html",
            "what_would_change_it_table.csv"} <= names
    sets = pd.read_csv(io.BytesIO(z.read("what_would_change_it_table.csv")))
    assert {"Learned FI", "Integrated Gradients", "Random"} <= set(sets["explainer"]) and set(sets["kind"]) == {
        "flip", "keep"}
    meta = json.loads(z.read("report.json"))
    assert meta["masking"]["off"] == {"protein": "absent"} and meta["masking"]["patches"] == {"image": [1, 2]}
    assert meta["model"]["name"] == "mm_dynamics" and meta["sample"]["id"] == s.id
    assert meta["sample"]["input_sha256"]["data"] == s.data.data_hash()

