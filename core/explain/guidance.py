"""What guidance changes: unguided (I) versus guided (G(I)+I) predictions of a fitted
``guidance`` model, per sample and per class, and where G puts the inferior latents.

Everything here works on a fitted (or loaded) :class:`~core.models.guidance.GuidanceMethod`. The sample
and class comparisons read only the inferior modality; :func:`latent_map` also reads the
superior one (to show z_S and the mapping error), which is analysis, not inference.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import precision_recall_fscore_support

from core.data.dataset import MultimodalDataset
from core.errors import MMXError

UNGUIDED, GUIDED = "I", "G(I)+I"


def _check(method) -> None:
    from core.models.guidance import GuidanceMethod

    if not isinstance(method, GuidanceMethod) or not method.is_fitted:  # fitted or loaded from a checkpoint
        raise MMXError(f"guidance comparisons need a fitted 'guidance' model, not {getattr(method, 'name', method)!r}")


def sample_comparison(method, data: MultimodalDataset, index: int) -> pd.DataFrame:
    """One row per class: the unguided (I) and guided (G(I)+I) probability of sample ``index``
    and the change; ``true`` marks the sample's label."""
    _check(method)
    if not 0 <= index < len(data):
        raise MMXError(f"sample index {index} is outside 0..{len(data) - 1} of {data.name!r}")
    idx = np.array([index])
    p_i = method.predict(data, idx, head=UNGUIDED).proba[0]
    p_g = method.predict(data, idx, head=GUIDED).proba[0]
    return pd.DataFrame({"class": list(method.classes), UNGUIDED: p_i, GUIDED: p_g, "change": p_g - p_i,
                         "true": np.arange(len(method.classes)) == int(data.y[index])})


def class_deltas(method, data: MultimodalDataset, idx: np.ndarray) -> pd.DataFrame:
    """Per class over the cohort ``idx``: support, precision, recall and F1 of I and of G(I)+I,
    and their differences (``delta_<metric>`` = guided - unguided)."""
    _check(method)
    idx = np.asarray(idx)
    y = data.y[torch.as_tensor(idx)].numpy()
    labels = np.arange(len(method.classes))
    table = pd.DataFrame({"class": list(method.classes), "support": np.bincount(y, minlength=len(labels))})
    for head in (UNGUIDED, GUIDED):
        pred = method.predict(data, idx, head=head).label
        p, r, f, _ = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
        table[f"precision {head}"], table[f"recall {head}"], table[f"f1 {head}"] = p, r, f
    for m in ("precision", "recall", "f1"):
        table[f"delta_{m}"] = table[f"{m} {GUIDED}"] - table[f"{m} {UNGUIDED}"]
    return table


def head_test(method, data: MultimodalDataset, idx: np.ndarray) -> dict:
    """Over the cohort ``idx``: each head's accuracy, the samples only one head gets right, and
    McNemar's exact two-sided p-value (the two heads judged on the same samples)."""
    from core.metrics import mcnemar

    _check(method)
    idx = np.asarray(idx)
    y = data.y[torch.as_tensor(idx)].numpy()
    pred = {h: method.predict(data, idx, head=h).label for h in (UNGUIDED, GUIDED)}
    right_i, right_g = pred[UNGUIDED] == y, pred[GUIDED] == y
    return {"n": int(len(y)), f"accuracy {UNGUIDED}": float(right_i.mean()),
            f"accuracy {GUIDED}": float(right_g.mean()),
            f"only {UNGUIDED} right": int((right_i & ~right_g).sum()),
            f"only {GUIDED} right": int((~right_i & right_g).sum()), "p": mcnemar(y, pred[UNGUIDED], pred[GUIDED])}


def latent_map(method, data: MultimodalDataset, idx: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> pd.DataFrame:
    """2-D UMAP of z_I, G(z_I) and z_S for the cohort ``idx``, with each sample's mapping error
    (mean squared error between G(z_I) and z_S, what G was trained to minimise).

    G(z_I) and z_S share one space and are embedded together; z_I comes from another encoder, so
    its coordinates are not comparable with theirs and it is embedded on its own
    (column ``space``: ``inferior`` or ``superior``). One row per sample and kind."""
    import umap

    _check(method)
    idx = np.asarray(idx)
    if len(idx) < 4:
        raise MMXError(f"a latent map needs at least 4 samples, got {len(idx)}")
    guided = method.predict(data, idx, head=GUIDED).output.latents
    z_i, g = guided["z_I"].numpy(), guided["G(z_I)"].numpy()
    z_s = method.reference_predict(data, idx, head="S").output.latents["z_S"].numpy()
    error = ((g - z_s) ** 2).mean(1)
    k = min(n_neighbors, len(idx) - 1)
    emb_i = umap.UMAP(n_neighbors=k, random_state=seed).fit_transform(z_i)
    emb_s = umap.UMAP(n_neighbors=k, random_state=seed).fit_transform(np.concatenate([g, z_s]))
    base = pd.DataFrame({"id": data.ids[idx], "label": np.asarray(method.classes)[data.y[torch.as_tensor(idx)].numpy()],
                         "mapping_error": error})
    parts = [base.assign(kind="z_I", space="inferior", x=emb_i[:, 0], y=emb_i[:, 1]),
             base.assign(kind="G(z_I)", space="superior", x=emb_s[:len(idx), 0], y=emb_s[:len(idx), 1]),
             base.assign(kind="z_S", space="superior", x=emb_s[len(idx):, 0], y=emb_s[len(idx):, 1])]
    return pd.concat(parts, ignore_index=True)
