"""``derm7pt``: paired clinical photo + dermoscopic image of each skin lesion.

Labels: the 5-class diagnosis (``y``) and the seven-point criteria as extra targets. The 9
cases whose ``clinic`` path points at the dermoscopic file have no clinical photo: their
clinical slot is empty and ``present['clinic']`` is False. Splits are the official ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.data.cache import load_images
from core.data.dataset import ModalitySpec, MultimodalDataset, Target
from core.data.splits import fixed_split
from core.data.tasks import TaskData, register_task
from core.errors import MMXError

DIR = "derm7pt/release_v0"
DIAGNOSES = ("NEV", "MEL", "MISC", "SK", "BCC")


def _diagnosis(raw: str) -> str:
    if "nevus" in raw:
        return "NEV"
    if "melanoma" in raw:
        return "MEL"
    if raw == "seborrheic keratosis":
        return "SK"
    if raw == "basal cell carcinoma":
        return "BCC"
    return "MISC"  # lentigo, melanosis, vascular lesion, dermatofibroma, miscellaneous


# criterion: (meta.csv column, classes, raw value -> class)
CRITERIA = {
    "PN": ("pigment_network", ("ABS", "TYP", "ATP"), {"absent": "ABS", "typical": "TYP", "atypical": "ATP"}),
    "STR": ("streaks", ("ABS", "REG", "IR"), {"absent": "ABS", "regular": "REG", "irregular": "IR"}),
    "PIG": ("pigmentation", ("ABS", "REG", "IR"), {"absent": "ABS", "diffuse regular": "REG", "localized regular": "REG",
                                                  "diffuse irregular": "IR", "localized irregular": "IR"}),
    "RS": ("regression_structures", ("ABS", "PRS"), {"absent": "ABS", "blue areas": "PRS", "white areas": "PRS",
                                                     "combinations": "PRS"}),
    "DaG": ("dots_and_globules", ("ABS", "REG", "IR"), {"absent": "ABS", "regular": "REG", "irregular": "IR"}),
    "BWV": ("blue_whitish_veil", ("ABS", "PRS"), {"absent": "ABS", "present": "PRS"}),
    "VS": ("vascular_structures", ("ABS", "REG", "IR"), {"absent": "ABS", "arborizing": "REG", "comma": "REG",
                                                       "hairpin": "REG", "within regression": "REG", "wreath": "REG",
                                                       "dotted": "IR", "linear irregular": "IR"}),
}
# seven-point checklist: major criteria score 2, minor 1 (criterion, class that scores)
SEVEN_POINT_WEIGHTS = {("PN", "ATP"): 2, ("BWV", "PRS"): 2, ("VS", "IR"): 2,
                       ("PIG", "IR"): 1, ("STR", "IR"): 1, ("DaG", "IR"): 1, ("RS", "PRS"): 1}


def seven_point_score(criteria: dict[str, np.ndarray]) -> np.ndarray:
    """Seven-point score from criterion class indices (``{criterion: N ints}``)."""
    score = 0
    for (crit, cls), w in SEVEN_POINT_WEIGHTS.items():
        score = score + w * (np.asarray(criteria[crit]) == CRITERIA[crit][1].index(cls))
    return np.asarray(score)


def read_meta(root: Path) -> pd.DataFrame:
    path = root / DIR / "meta" / "meta.csv"
    if not path.is_file():
        raise MMXError("meta.csv not found", path)
    meta = pd.read_csv(path)
    need = {"case_num", "diagnosis", "clinic", "derm"} | {c for c, _, _ in CRITERIA.values()}
    missing = need - set(meta.columns)
    if missing:
        raise MMXError(f"missing columns {sorted(missing)}", path)
    for short, (col, _, mapping) in CRITERIA.items():
        bad = set(meta[col]) - set(mapping)
        if bad:
            raise MMXError(f"column {col!r} has unknown values {sorted(bad)}", path)
    return meta


def _indexes(root: Path, part: str, n: int) -> np.ndarray:
    path = root / DIR / "meta" / f"{part}_indexes.csv"
    if not path.is_file():
        raise MMXError("split index file not found", path)
    idx = pd.read_csv(path)["indexes"].to_numpy(np.int64)
    if idx.min() < 0 or idx.max() >= n:
        raise MMXError(f"indexes outside 0..{n - 1}", path)
    return idx


@register_task("derm7pt", requires=(DIR,),
               description="Derm7pt skin lesions: clinical photo + dermoscopic image; diagnosis (5) and 7-point criteria")
def build_derm7pt(root: Path, image_size: int = 128, seeds: tuple[int, ...] = (0, 1, 2)) -> TaskData:
    meta = read_meta(root)
    n = len(meta)
    images = root / DIR / "images"
    has_clinic = (meta["clinic"] != meta["derm"]).to_numpy()
    size = (image_size, image_size)
    derm = load_images([images / p for p in meta["derm"]], size)
    clinic = torch.zeros_like(derm)
    clinic[torch.from_numpy(has_clinic)] = load_images([images / p for p in meta.loc[has_clinic, "clinic"]], size)
    diag = meta["diagnosis"].map(_diagnosis)
    y = diag.map({c: i for i, c in enumerate(DIAGNOSES)}).to_numpy(np.int64)
    targets = {
        short: Target(torch.tensor(meta[col].map(mapping).map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)),
                      classes)
        for short, (col, classes, mapping) in CRITERIA.items()
    }
    targets["melanoma"] = Target(torch.from_numpy((diag == "MEL").to_numpy().astype(np.int64)), ("not melanoma", "melanoma"))
    prep = f"resized to {image_size}x{image_size} (aspect not kept)"
    specs = {"clinic": ModalitySpec("clinic", "image", image_shape=(3, *size), preprocessing=prep),
             "derm": ModalitySpec("derm", "image", image_shape=(3, *size), preprocessing=prep)}
    ds = MultimodalDataset(
        name="derm7pt",
        modalities={"clinic": clinic, "derm": derm},
        present={"clinic": torch.from_numpy(has_clinic), "derm": torch.ones(n, dtype=torch.bool)},
        y=torch.from_numpy(y), classes=DIAGNOSES,
        groups=meta["case_num"].astype(str).to_numpy(),
        ids=np.array([f"case_{c}" for c in meta["case_num"]]),
        specs=specs, targets=targets,
    )
    split = fixed_split("official", _indexes(root, "train", n), _indexes(root, "valid", n), _indexes(root, "test", n), seeds)
    return TaskData(ds, {"official": split}, "Derm7pt (release_v0) with the official train/valid/test split",
                    notes={"seven_point_score": meta["seven_point_score"].to_numpy()})
