"""One sample's explanation as a zip: every figure (HTML, plus PNG and SVG where this machine can
render them), every table as CSV, and ``report.json`` with the model card, the inputs' hashes and
the mask settings, so a figure can be traced back to exactly what produced it.

It sits above :mod:`core.explain` (which computes) and :mod:`core.viz` (which draws arrays): it asks
the one for the sample's explanations and the other for their figures."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from core.calibration import Conformal
from core.errors import MMXError
from core.explain.attributions import differentiable
from core.explain.counterfactual import counterfactuals
from core.explain.faithfulness import LEARNED, explanations
from core.explain.live import Masking, live_predict, patch_ablation, patch_grid, patch_size
from core.explain.sample import Sample
from core.models.base import Method
from core.viz.explain import (
    modality_weights_figure,
    patch_curve_figure,
    patch_map_figure,
    probability_figure,
    top_features_figure,
)
from core.viz.counterfactual import mask_sets_figure
from core.viz.export import figure_bytes, static_export_available


def _with_sets(method: Method, live) -> pd.DataFrame:
    """The probability table with each class's membership of the conformal prediction set (the
    card's calibration), unmasked and, when a mask is on, masked."""
    table = live.table()
    conformal = Conformal.from_card(getattr(method, "card", None))
    if conformal is not None:
        level = f"{100 * conformal.confidence:.0f}%"
        table[f"in {level} set"] = conformal.membership(live.unmasked.proba)[0]
        if live.masking.active:
            table[f"in {level} set, masked"] = conformal.membership(live.masked.proba)[0]
    return table


def sample_items(method: Method, sample: Sample, masking: Masking | None = None,
                 k: int = 10) -> dict[str, go.Figure | pd.DataFrame]:
    """The figures and tables that explain ``sample`` under ``masking``, by file stem."""
    live = live_predict(method, sample, masking)
    info = live.unmasked
    items: dict[str, go.Figure | pd.DataFrame] = {
        "probabilities": probability_figure(info.classes, info.proba[0],
                                            live.masked.proba[0] if live.masking.active else None),
        "probabilities_table": _with_sets(method, live),
    }
    for m in info.feature_scores:
        if not np.isnan(info.feature_scores[m][0]).all():
            top = info.top_features(m, k, sample=0)
            items[f"top_{m}"] = top_features_figure(top, f"Most informative {m} features")
            items[f"top_{m}_table"] = top
    for m, s in method.specs.items():
        if s.kind != "image" or m not in sample.present:
            continue
        grid = info.patch_maps[m][0] if m in info.patch_maps else None
        items[f"patch_map_{m}"] = patch_map_figure(sample.image(m), grid, patch_size(method),
                                                   selected=(masking.patches.get(m, ()) if masking else ()),
                                                   title=f"{m}: patch informativeness")
        if grid is not None:
            curve = patch_ablation(method, sample, m, unmasked=info)
            rows, cols = patch_grid(method, m)
            top = info.classes[int(info.proba[0].argmax())]
            items[f"patch_ablation_{m}"] = patch_curve_figure(curve, rows * cols, target=top)
            items[f"patch_ablation_{m}_table"] = curve
    items.update(counterfactual_items(method, sample, info))
    if info.modality_weights:
        w = {m: float(v[0]) for m, v in info.modality_weights.items()}
        items["modality_weights"] = modality_weights_figure(w, {m: v[0] for m, v in info.modality_proba.items()},
                                                            info.classes)
        items["modality_weights_table"] = pd.DataFrame({"modality": list(w), "weight": list(w.values())})
    return items


def counterfactual_items(method: Method, sample: Sample, info) -> dict[str, go.Figure | pd.DataFrame]:
    """What would change the answer: the minimal flip and keep sets grown in the learned map's order (when
    the model has one), integrated gradients' and a random order, and over whole modalities."""
    try:
        diff = differentiable(method)
    except MMXError:  # not a network (the scikit-learn baselines): no masks to search
        return {}
    orders = ((LEARNED,) if info.feature_scores or info.patch_maps else ()) + ("integrated_gradients",)
    explained, _ = explanations(method, sample.data, None, orders)
    cf = counterfactuals(method, sample.data, 0, explained)
    names = {m: s.feature_names for m, s in diff.method.specs.items() if s.kind == "omics"}
    cols = {m: patch_grid(method, m)[1] for m, s in method.specs.items() if s.kind == "image"}
    table = cf.table(names, cols)
    return {"what_would_change_it": mask_sets_figure(table[table["kind"] == "flip"],
                                                     "Smallest masks that change the answer"),
            "what_would_change_it_table": table}


def report_zip(items: dict[str, go.Figure | pd.DataFrame], meta: dict) -> bytes:
    """Zip the ``items`` (figures in every format this machine renders, tables as CSV) and ``meta``."""
    formats = ("html", "png") if static_export_available() else ("html",)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, item in items.items():
            if isinstance(item, pd.DataFrame):
                z.writestr(f"{name}.csv", item.to_csv(index=False))
            else:
                for fmt in formats:
                    z.writestr(f"{name}.{fmt}", figure_bytes(item, fmt, shared_js=True))
        z.writestr("plotly.min.js", get_plotlyjs())
        z.writestr("report.json", json.dumps({**meta, "files": sorted(z.namelist())}, indent=1, default=str))
    return buf.getvalue()


def sample_report(method: Method, sample: Sample, masking: Masking | None = None) -> bytes:
    """The zip of :func:`sample_items` with the card, the inputs and the mask settings."""
    card = getattr(method, "card", None) or {}
    meta = {"model": {k: card.get(k) for k in ("task", "name", "title", "method", "metrics", "split", "recipe",
                                               "data", "versions", "created", "files")},
            "sample": {"id": sample.id, "source": sample.source, "label": sample.label,
                       "present": list(sample.present), "notes": list(sample.notes), "caveats": list(sample.caveats),
                       "input_sha256": sample.digests or {"data": sample.data.data_hash()}},
            "masking": (masking or Masking()).as_dict()}
    return report_zip(sample_items(method, sample, masking), meta)
