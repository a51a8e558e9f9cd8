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
from core.data.extract import copy_file, copy_lines
from core.data.readers import Table, align_tables, normalize_expression, read_csv_table, read_h5ad
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
#: the 6 lineages this project groups the 41 expert cell types of the data into (``labels.csv`` column ``lineage``)
LINEAGE = {
    **dict.fromkeys(("CD4+ T CD314+ CD45RA+", "CD4+ T activated", "CD4+ T activated integrinB7+", "CD4+ T naive",
                     "CD8+ T CD49f+", "CD8+ T CD57+ CD45RA+", "CD8+ T CD57+ CD45RO+", "CD8+ T CD69+ CD45RA+",
                     "CD8+ T CD69+ CD45RO+", "CD8+ T TIGIT+ CD45RA+", "CD8+ T TIGIT+ CD45RO+", "CD8+ T naive",
                     "CD8+ T naive CD127+ CD26- CD101-", "MAIT", "T reg", "gdT CD158b+", "gdT TCRVD2+"), "T"),
    **dict.fromkeys(("B1 B IGKC+", "B1 B IGKC-", "Naive CD20+ B IGKC+", "Naive CD20+ B IGKC-", "Plasma cell IGKC+",
                     "Plasmablast IGKC+", "Plasmablast IGKC-", "Transitional B"), "B"),
    **dict.fromkeys(("ILC", "ILC1", "NK", "NK CD158e1+"), "NK_ILC"),
    **dict.fromkeys(("CD14+ Mono", "CD16+ Mono", "cDC2", "pDC"), "Myeloid"),
    **dict.fromkeys(("Erythroblast", "Normoblast", "Proerythroblast", "Reticulocyte"), "Erythroid"),
    **dict.fromkeys(("G/M prog", "HSC", "Lymph prog", "MK/E prog"), "Progenitor"),
}
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


def _normalised(rna: Table, prot: Table) -> dict[str, np.ndarray]:
    rna, prot = normalize_expression(rna, TARGET_SUM), normalize_expression(prot, TARGET_SUM)
    ids = align_tables({"rna": rna, "protein": prot})
    return {"ids": ids.astype(str), "rna": rna.X, "rna_features": np.array(rna.features, dtype=str),
            "rna_norm": np.array(rna.normalization), "protein": prot.X,
            "protein_features": np.array(prot.features, dtype=str), "protein_norm": np.array(prot.normalization)}


def _normalised_counts(d: Path) -> dict[str, np.ndarray]:
    return _normalised(read_h5ad(d / RNA_FILE, layer="counts"), read_h5ad(d / PROT_FILE, layer="counts"))


def _labels(d: Path, ids: np.ndarray) -> pd.DataFrame:
    labels = pd.read_csv(d / "labels.csv")
    if not np.array_equal(labels["cell_id"].astype(str).to_numpy(), ids):
        raise MMXError("cell ids differ from the expression files", d / "labels.csv")
    unknown = set(labels["lineage"]) - set(CLASSES)
    if unknown:
        raise MMXError(f"unknown lineage values {sorted(unknown)}", d / "labels.csv")
    return labels


def read_cells_tables(root: Path) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Normalised RNA and protein counts (parsed once, then from the disk cache) and the label
    table, ids checked to match."""
    d = root / CITE
    arrays = cached_arrays([d / RNA_FILE, d / PROT_FILE], f"cells-counts-{TARGET_SUM}", lambda: _normalised_counts(d))
    return arrays, _labels(d, arrays["ids"])


def stored_pairing(labels: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """The committed pairing of these cells when it covers them with these images; else a fresh seeded draw."""
    if PAIRING_FILE.exists():
        p = pd.read_csv(PAIRING_FILE)
        p = p[p["cell_id"].isin(set(labels["cell_id"]))]
        if set(p["cell_id"]) == set(labels["cell_id"]) and set(p["image"]) <= set(images["path"]):
            return p
    return make_pairing(labels[["cell_id", "batch", "lineage"]], images)


def _dataset(root: Path, arrays: dict[str, np.ndarray], labels: pd.DataFrame,
             image_size: int) -> tuple[MultimodalDataset, pd.DataFrame]:
    """The dataset of these cells with their paired images under ``root`` (PBC's layout)."""
    images = pd.read_csv(root / PBC / "labels.csv")
    pairing = stored_pairing(labels, images).set_index("cell_id").loc[labels["cell_id"]]
    img = load_images([root / PBC / p for p in pairing["image"]], (image_size, image_size))
    y = labels["lineage"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(np.int64)
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
        y=torch.from_numpy(y), classes=CLASSES, groups=labels["batch"].astype(str).to_numpy(),
        ids=labels["cell_id"].astype(str).to_numpy(), specs=specs,
    )
    return ds, pairing


COUNTS = {"rna": "rna_counts.csv", "protein": "protein_counts.csv"}  # the data folder's CSV exports of the counts


def read_examples(folder: Path, image_size: int = 64) -> MultimodalDataset:
    """The bundled extract: lines of the data folder's count tables and ``labels.csv``, and the
    cells' paired images in PBC's layout (the same numbers as the h5ad files give these cells)."""
    d = folder / CITE
    arrays = _normalised(*(read_csv_table(d / f, id_column="cell_id") for f in COUNTS.values()))
    return _dataset(folder, arrays, _labels(d, arrays["ids"]), image_size)[0]


def write_examples(root: Path, ids: list[str], out: Path) -> list[Path]:
    """Cells ``ids``: their lines of the count tables and ``labels.csv``, and their paired images with
    their lines of PBC's ``labels.csv``, into ``out`` in the data root's layout."""
    wanted = set(ids)
    written = [copy_lines(root / CITE / f, out / CITE / f, lambda c: c in wanted)
               for f in (*COUNTS.values(), "labels.csv")]
    labels = pd.read_csv(root / CITE / "labels.csv")
    pairing = stored_pairing(labels, pd.read_csv(root / PBC / "labels.csv"))
    images = set(pairing.loc[pairing["cell_id"].isin(wanted), "image"])
    written.append(copy_lines(root / PBC / "labels.csv", out / PBC / "labels.csv", lambda p: p in images))
    return written + [copy_file(root / PBC / p, out / PBC / p) for p in sorted(images)]


@register_task("cells", requires=(CITE, PBC),
               description="bone-marrow CITE-seq RNA (1000 genes) + protein (134) + class-matched cell image; 6 lineages, "
                           "2 donors", examples=read_examples)
def build_cells(root: Path, image_size: int = 64, seeds: tuple[int, ...] = (0, 1, 2)) -> TaskData:
    arrays, labels = read_cells_tables(root)
    ds, pairing = _dataset(root, arrays, labels, image_size)
    return TaskData(
        ds, {"leave_one_donor_out": leave_one_group_out(ds.groups, ds.y.numpy(), seeds=seeds)},
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
