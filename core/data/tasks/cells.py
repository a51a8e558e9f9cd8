"""``cells``: bone-marrow CITE-seq RNA + protein, with a class-matched blood-cell image.

RNA and protein are the same cell. The image is *not* the same cell but a microscopy image
of the matching cell kind, drawn without replacement per image class with a fixed seed and
stored in ``cells_pairing.csv`` so every method sees the same pairs. Each donor draws from a
disjoint image pool, so with leave-one-donor-out no image is shared between train and test.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.data.cache import atomic_write, cached_arrays, load_images
from core.data.dataset import ModalitySpec, MultimodalDataset
from core.data.readers import align_tables, normalize_expression, read_h5ad
from core.data.splits import leave_one_group_out
from core.data.tasks import TaskData, register_task
from core.errors import MMXError

CITE = "cite_bmmc"
PBC = "blood_cells/pbc_acevedo2020"
CLASSES = ("T", "B", "NK_ILC", "Myeloid", "Erythroid", "Progenitor")
IMAGE_CAVEAT = ("The image is a blood-cell picture of the same class (from the PBC collection), not a picture of "
                "this cell: RNA and protein were measured on cells that were never imaged. An image-based "
                "explanation is about the class, not about this cell.")
UPLOAD_IMAGE_CAVEAT = ("The image branch of this model learnt from blood-cell pictures paired with expression only by "
                       "class (never the same cell), so it knows what each class looks like, not how a cell's "
                       "picture relates to its RNA and protein: an image-based explanation is about the class.")
IMAGE_CLASS = {"T": "lymphocyte", "B": "lymphocyte", "NK_ILC": "lymphocyte", "Myeloid": "monocyte",
               "Erythroid": "erythroblast", "Progenitor": "ig"}
PAIRING_SEED = 20261122
PAIRING_FILE = Path(__file__).with_name("cells_pairing.csv")
TARGET_SUM = 1e4


def make_pairing(cells: pd.DataFrame, images: pd.DataFrame, seed: int = PAIRING_SEED) -> pd.DataFrame:
    """Assign each cell an image of its lineage's image class, without replacement.

    ``cells`` has columns ``cell_id, batch, lineage``; ``images`` has ``path, class``. Per image
    class the files are shuffled once; donors (sorted) take consecutive disjoint chunks, and
    within a donor the cells (sorted by id, then shuffled) take that chunk in order.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for img_class in sorted(set(IMAGE_CLASS.values())):
        pool = np.array(sorted(images.loc[images["class"] == img_class, "path"]))
        rng.shuffle(pool)
        lineages = [k for k, v in IMAGE_CLASS.items() if v == img_class]
        want = cells[cells["lineage"].isin(lineages)]
        if len(want) > len(pool):
            raise MMXError(f"{len(want)} cells need a {img_class!r} image but only {len(pool)} exist", PBC)
        start = 0
        for donor in sorted(want["batch"].unique()):
            ids = np.array(sorted(want.loc[want["batch"] == donor, "cell_id"]))
            rng.shuffle(ids)
            chunk = pool[start:start + len(ids)]
            start += len(ids)
            rows += [{"cell_id": c, "donor": donor, "image": p} for c, p in zip(ids, chunk)]
    return pd.DataFrame(rows).sort_values("cell_id").reset_index(drop=True)


RNA_FILE = "openproblems_bmmc_cite_starter.output_rna.h5ad"
PROT_FILE = "openproblems_bmmc_cite_starter.output_mod2.h5ad"


def _normalised_counts(d: Path) -> dict[str, np.ndarray]:
    rna = normalize_expression(read_h5ad(d / RNA_FILE, layer="counts"), TARGET_SUM)
    prot = normalize_expression(read_h5ad(d / PROT_FILE, layer="counts"), TARGET_SUM)
    ids = align_tables({"rna": rna, "protein": prot})
    return {"ids": ids.astype(str), "rna": rna.X, "rna_features": np.array(rna.features, dtype=str),
            "rna_norm": np.array(rna.normalization), "protein": prot.X,
            "protein_features": np.array(prot.features, dtype=str), "protein_norm": np.array(prot.normalization)}


def read_cells_tables(root: Path) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Normalised RNA and protein counts (parsed once, then from the disk cache) and the label
    table, ids checked to match."""
    d = root / CITE
    arrays = cached_arrays([d / RNA_FILE, d / PROT_FILE], f"cells-counts-{TARGET_SUM}", lambda: _normalised_counts(d))
    labels = pd.read_csv(d / "labels.csv")
    if not np.array_equal(labels["cell_id"].astype(str).to_numpy(), arrays["ids"]):
        raise MMXError("cell ids differ from the h5ad files", d / "labels.csv")
    unknown = set(labels["lineage"]) - set(CLASSES)
    if unknown:
        raise MMXError(f"unknown lineage values {sorted(unknown)}", d / "labels.csv")
    return arrays, labels


def stored_pairing(labels: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """The committed pairing when it fits these cells and images; else a fresh seeded draw."""
    if PAIRING_FILE.exists():
        p = pd.read_csv(PAIRING_FILE)
        if set(p["cell_id"]) == set(labels["cell_id"]) and set(p["image"]) <= set(images["path"]):
            return p
    return make_pairing(labels[["cell_id", "batch", "lineage"]], images)


@register_task("cells", requires=(CITE, PBC),
               description="bone-marrow CITE-seq RNA (1000 genes) + protein (134) + class-matched cell image; 6 lineages, 2 donors")
def build_cells(root: Path, image_size: int = 64, seeds: tuple[int, ...] = (0, 1, 2)) -> TaskData:
    arrays, labels = read_cells_tables(root)
    images = pd.read_csv(root / PBC / "labels.csv")
    pairing = stored_pairing(labels, images).set_index("cell_id").loc[labels["cell_id"]]
    img = load_images([root / PBC / p for p in pairing["image"]], (image_size, image_size))
    y = labels["lineage"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(np.int64)
    groups = labels["batch"].astype(str).to_numpy()
    n = len(y)
    specs = {
        m: ModalitySpec(m, "omics", tuple(arrays[f"{m}_features"].tolist()), preprocessing=str(arrays[f"{m}_norm"]))
        for m in ("rna", "protein")
    } | {
        "image": ModalitySpec("image", "image", image_shape=(3, image_size, image_size),
                              preprocessing=f"PBC image of the matching class, resized to {image_size}x{image_size}"),
    }
    ds = MultimodalDataset(
        name="cells",
        modalities={"rna": torch.from_numpy(arrays["rna"]), "protein": torch.from_numpy(arrays["protein"]), "image": img},
        present={m: torch.ones(n, dtype=torch.bool) for m in specs},
        y=torch.from_numpy(y), classes=CLASSES, groups=groups, ids=labels["cell_id"].astype(str).to_numpy(),
        specs=specs,
    )
    return TaskData(
        ds, {"leave_one_donor_out": leave_one_group_out(groups, y, seeds=seeds)},
        "bone-marrow CITE-seq (Open Problems BMMC, 2 donors) with class-matched PBC microscopy images",
        notes={"pairing": pairing.reset_index(), "fine_cell_type": labels["cell_type"].to_numpy()},
    )


if __name__ == "__main__":  # python -m core.data.tasks.cells : rewrite the stored pairing
    from core.paths import data_root

    r = data_root()
    if r is None:
        raise SystemExit("no data root found")
    _, lab = read_cells_tables(r)
    pairing = make_pairing(lab[["cell_id", "batch", "lineage"]], pd.read_csv(r / PBC / "labels.csv"))
    atomic_write(PAIRING_FILE, lambda f: f.write(pairing.to_csv(index=False).encode()))  # never a torn table
    print(f"wrote {PAIRING_FILE}")
