"""A user's own data (image folder, CSV, AnnData, MuData) as a dataset shaped for a trained model.

A checkpoint can only score tensors laid out exactly like its training data: the same
modalities, feature order, image size and preprocessing. :func:`read_external` builds that
layout from the model's specs, fills what is missing, ignores what the model does not know,
and says in plain report lines what it read, matched, filled, normalised and left out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.data.align import FeatureMatch, match_features
from core.data.cache import load_images
from core.data.dataset import ModalitySpec, MultimodalDataset
from core.data.readers import (
    IMAGE_SUFFIXES,
    Table,
    h5mu_modalities,
    list_image_folder,
    looks_like_counts,
    normalize_expression,
    read_csv_header,
    read_csv_table,
    read_h5ad,
    read_h5mu,
)
from core.errors import MMXError

LABEL_COLUMNS = ("label", "labels", "class", "y", "target", "diagnosis", "lineage", "cell_type", "celltype")
ALIASES = {"prot": "protein", "adt": "protein", "gex": "rna"}  # usual MuData / column-prefix names
_RECIPE = re.compile(r"normalize_total\(target_sum=([^)]*)\) \+ log1p")


@dataclass
class ExternalData:
    """The upload as the model's dataset, plus what matching found and a readable report."""

    dataset: MultimodalDataset  # the model's modalities, specs and classes
    labelled: bool  # y holds real labels (else zeros)
    matches: dict[str, FeatureMatch]  # per omics modality read from a table
    notes: list[str]  # report lines
    found_labels: np.ndarray | None = None  # a label column's raw values, read even when scoring unlabelled


def read_external(source: str | Path, specs: dict[str, ModalitySpec], classes: tuple[str, ...], *,
                  fill: dict[str, np.ndarray] | None = None, labelled: bool = True,
                  label_column: str | None = None, modality: str | None = None) -> ExternalData:
    """Read ``source`` for a model with these ``specs`` and ``classes``.

    ``source``: an image folder ``root/<class>/<image>`` (or, unlabelled, any folder of images, or
    one image), a ``.csv`` / ``.h5ad`` table or a ``.h5mu`` file. ``fill[m]``: values for model
    features the upload lacks (the training mean; zeros without it). ``modality``: which of
    several image modalities a folder feeds, or the one omics modality a single table feeds
    (default: matched by feature name). Modalities not provided are absent (zeros, not present).
    """
    path = Path(source)
    if not path.exists():
        raise MMXError("not found", path)
    notes: list[str] = []
    matches: dict[str, FeatureMatch] = {}
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        m = _image_modality(specs, modality, path)
        ids, labels, x = _read_images(path, specs[m], classes, labelled, notes)
        provided = {m: x}
    elif path.suffix.lower() in (".csv", ".h5ad", ".h5mu"):
        tables, labels = _read_tables(path, specs, label_column, labelled, modality, notes)
        ids = next(iter(tables.values())).ids
        provided = _match_tables(tables, specs, fill or {}, path, matches, notes)
    else:
        raise MMXError(f"unsupported input {path.suffix!r}: use an image folder, an image, .csv, .h5ad or .h5mu", path)
    n = len(ids)
    y = _encode_labels(labels if labelled else None, n, classes, path, notes)
    modalities, present = {}, {}
    for m, s in specs.items():
        present[m] = torch.full((n,), m in provided, dtype=torch.bool)
        if m in provided:
            modalities[m] = torch.as_tensor(provided[m])
        else:
            shape, dtype = ((s.n_features,), torch.float32) if s.kind == "omics" else (s.image_shape, torch.uint8)
            modalities[m] = torch.zeros((n, *shape), dtype=dtype)
            notes.append(f"{m}: not in the upload: absent for every sample")
    ds = MultimodalDataset(name=f"external:{path.name}", modalities=modalities, present=present, y=y,
                           classes=tuple(classes), groups=ids.copy(), ids=ids, specs=dict(specs))
    return ExternalData(ds, labelled, matches, notes, None if labels is None else np.asarray(labels).astype(str))


# ---------------------------------------------------------------- images
def _image_modality(specs: dict[str, ModalitySpec], modality: str | None, source: Path) -> str:
    images = [m for m, s in specs.items() if s.kind == "image"]
    if not images:
        raise MMXError(f"the model takes no images; its modalities are {list(specs)}", source)
    if modality is None and len(images) == 1:
        return images[0]
    if modality in images:
        return modality
    if modality is None:
        raise MMXError(f"the model has several image modalities {images}: say which one these images are", source)
    raise MMXError(f"{modality!r} is not an image modality of the model; its image modalities are {images}", source)


def _read_images(path: Path, spec: ModalitySpec, classes: tuple[str, ...], labelled: bool,
                 notes: list[str]) -> tuple[np.ndarray, np.ndarray | None, torch.Tensor]:
    """Decode and resize exactly as the task builders do; not cached (user files come and go)."""
    labels = None
    if path.is_file():
        if labelled:
            raise MMXError("a single image carries no label: score it unlabelled", path)
        files, root = [path], path.parent
    elif labelled:
        files, labels, found = list_image_folder(path)
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise MMXError(f"class folders {unknown} are not classes of the model; its classes are {list(classes)}",
                           path)
        loose = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            notes.append(f"{len(loose)} images directly in the folder ignored (not in a class folder)")
        labels, root = np.array(labels), path
        notes.append("labels from the class folder names")
    else:
        files, root = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                             and not any(part.startswith(".") for part in p.relative_to(path).parts)), path
        if not files:
            raise MMXError("no PNG/JPEG/TIFF image in this folder or its sub-folders", path)
    _, h, w = spec.image_shape
    x = load_images(files, (h, w), use_cache=False)
    notes.append(f"{spec.name}: {len(files)} images read from {path}, resized to {h}x{w} as in training")
    return np.array([p.relative_to(root).as_posix() for p in files]), labels, x


# ---------------------------------------------------------------- tables
def _model_name(name: str, omics: list[str]) -> str | None:
    """The model's omics modality a file modality or column prefix names (exactly or by alias)."""
    lower = {m.lower(): m for m in omics}
    name = name.lower()
    return lower.get(name) or lower.get(ALIASES.get(name, ""))


def _label_column(columns, explicit: str | None, labelled: bool, source: Path) -> str | None:
    if explicit is not None:
        if explicit not in columns:
            raise MMXError(f"label column {explicit!r} not found; columns are {list(columns)[:12]}", source)
        return explicit
    lower = {str(c).lower(): c for c in columns}
    found = next((lower[c] for c in LABEL_COLUMNS if c in lower), None)
    if found is None and labelled:
        raise MMXError(f"no label column (tried {', '.join(LABEL_COLUMNS)}): name it, or score unlabelled", source)
    return found


def _read_tables(path: Path, specs: dict[str, ModalitySpec], label_column: str | None, labelled: bool,
                 modality: str | None, notes: list[str]) -> tuple[dict[str | None, Table], np.ndarray | None]:
    """The upload's tables keyed by the model modality each feeds (``None``: matched by name), and
    the labels. Where the model normalises raw counts and an AnnData's ``X`` holds none but
    ``layers['counts']`` does, the counts are read so the model's own recipe can be applied."""
    omics = [m for m, s in specs.items() if s.kind == "omics"]
    if not omics:
        raise MMXError(f"the model takes only images ({list(specs)}): give an image folder", path)
    if modality is not None and modality not in omics:
        raise MMXError(f"{modality!r} is not an omics modality of the model; its omics modalities are {omics}", path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        col = _label_column(read_csv_header(path), label_column, labelled, path)
        tables = {modality: read_csv_table(path, label_column=col)}
    else:
        if suffix == ".h5ad":
            tables = {modality: read_h5ad(path)}

            def counts() -> dict[str | None, Table]:
                return {modality: read_h5ad(path, layer="counts")}
        else:
            use: dict[str, str] = {}
            found = h5mu_modalities(path)
            for n in found:
                m = _model_name(n, omics)
                if m is None:
                    notes.append(f"modality {n!r} of the file is not one the model uses: ignored")
                elif m in use.values():
                    raise MMXError(f"several modalities of the file map to the model's {m!r}: {found}", path)
                else:
                    use[n] = m
            if not use:
                raise MMXError(f"has no modality the model uses ({omics}; aliases {ALIASES}); its modalities are "
                               f"{found}", path)
            tables = {use[n]: t for n, t in read_h5mu(path, tuple(use)).items()}

            def counts() -> dict[str | None, Table]:
                return {use[n]: t for n, t in read_h5mu(path, tuple(use), layer="counts").items()}
        fed = [m for m in omics if m in tables or None in tables]
        if any(_RECIPE.search(specs[m].preprocessing) for m in fed) and all(
                "counts" in t.meta.get("layers", ()) and not looks_like_counts(t.X) for t in tables.values()):
            tables = counts()
            notes.append("X holds no raw counts but layers['counts'] does: used those, to apply the model's recipe")
        obs = pd.concat([t.obs for t in tables.values()], axis=1)
        obs = obs.loc[:, ~obs.columns.duplicated()]
        col = _label_column(obs.columns, label_column, labelled, path)
        if col is not None:
            if obs[col].isna().any():
                raise MMXError(f"label column {col!r} has {int(obs[col].isna().sum())} empty cells", path)
            next(iter(tables.values())).labels = obs[col].astype(str).to_numpy()
    first = next(iter(tables.values()))
    notes.append(f"read {path}: {len(first.ids)} samples, "
                 + ", ".join(f"{k + ' ' if k else ''}{len(t.features)} features" for k, t in tables.items())
                 + (f"; labels from column {col!r}" if labelled else ""))
    return tables, first.labels


def _route(t: Table, omics: list[str]) -> dict[str, dict[str, int]]:
    """Column index by feature name for each omics modality: ``modality:feature`` columns go to that
    modality only (and win over a plain column of the same name), plain ones to every modality."""
    routes: dict[str, dict[str, int]] = {m: {} for m in omics}
    plain = []
    for i, f in enumerate(t.features):
        prefix, sep, name = f.partition(":")
        m = _model_name(prefix, omics) if sep else None
        if m is None:
            plain.append(i)
        else:
            routes[m][name] = i
    for cols in routes.values():
        mine = {f.lower() for f in cols}
        cols.update({t.features[i]: i for i in plain if t.features[i].lower() not in mine})
    return routes


def _match_tables(tables: dict[str | None, Table], specs: dict[str, ModalitySpec], fill: dict[str, np.ndarray],
                  source: Path, matches: dict[str, FeatureMatch], notes: list[str]) -> dict[str, np.ndarray]:
    """Each provided omics modality as N x F in the model's feature order. A table meant for one
    modality must match it; a table matched by name provides the modalities it matches well enough."""
    omics = [m for m, s in specs.items() if s.kind == "omics"]
    provided, misses = {}, []
    for key, t in tables.items():
        routes = _route(t, omics) if key is None else {key: {f: i for i, f in enumerate(t.features)}}
        used: dict[str, set[int]] = {}
        for m, cols in routes.items():
            spec = specs[m]
            sub = Table(ids=t.ids, features=tuple(cols), X=t.X[:, list(cols.values())], source=t.source)
            values = _fill_values(fill, spec, source)
            try:
                provided[m], matches[m] = match_features(sub, spec, values)
            except MMXError as e:
                if key is not None:
                    raise
                misses.append(str(e).removeprefix(f"{e.source}: "))
                continue
            known = {f.lower() for f in spec.feature_names}
            used[m] = {i for f, i in cols.items() if f.lower() in known}
        unused = set(range(len(t.features))) - set().union(*used.values())
        for m in used:
            ignored = sorted(unused & set(routes[m].values()))
            matches[m] = replace(matches[m], unknown=tuple(t.features[i] for i in ignored))
            filler = "the training mean" if m in fill else "zeros (no training mean given)"
            notes.append(matches[m].summary() + (f"; missing ones filled with {filler}" if matches[m].missing else ""))
            notes.append(_normalise(provided[m], specs[m], matches[m], t))
        shared = sorted(set.intersection(*used.values())) if len(used) > 1 else []
        if shared:
            names = [t.features[i] for i in shared]
            notes.append(f"columns {names} are features of {list(used)}: used for each (write e.g. "
                         f"'{next(iter(used))}:{names[0]}' to give a column to one modality)")
    if not provided:
        raise MMXError("no modality of the model found by feature name: " + "; ".join(misses), source)
    return provided


def _fill_values(fill: dict[str, np.ndarray], spec: ModalitySpec, source: Path) -> np.ndarray | None:
    if spec.name not in fill:
        return None
    f = np.asarray(fill[spec.name], np.float32)
    if f.shape != (spec.n_features,):
        raise MMXError(f"fill values for {spec.name!r} have shape {f.shape}; the model has {spec.n_features} features",
                       source)
    return f


def _normalise(x: np.ndarray, spec: ModalitySpec, match: FeatureMatch, t: Table) -> str:
    """Apply the model's counts recipe (if it has one) to the matched columns of ``x`` in place;
    return what was seen and done."""
    missing = set(match.missing)
    found = np.array([f not in missing for f in spec.feature_names])
    recipe = _RECIPE.search(spec.preprocessing)
    if recipe is None:
        counts = looks_like_counts(x[:, found])
        warn = "; they look like raw counts, which the model was not trained on" if counts else ""
        return f"{spec.name}: values used as is (training preprocessing: {spec.preprocessing or 'not recorded'}){warn}"
    sub = normalize_expression(Table(ids=t.ids, features=(), X=x[:, found], source=t.source),
                               None if recipe[1] == "None" else float(recipe[1]))
    x[:, found] = sub.X
    return f"{spec.name}: {sub.normalization}"


def _encode_labels(labels: np.ndarray | None, n: int, classes: tuple[str, ...], source: Path,
                   notes: list[str]) -> torch.Tensor:
    if labels is None:
        notes.append("unlabelled: y is 0 for every sample")
        return torch.zeros(n, dtype=torch.int64)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels.tolist()) - set(index))
    if unknown:
        raise MMXError(f"labels {unknown[:10]} are not classes of the model; its classes are {list(classes)}", source)
    y = np.array([index[v] for v in labels], np.int64)
    counts = np.bincount(y, minlength=len(classes))
    notes.append("classes present: " + ", ".join(f"{c} {k}" for c, k in zip(classes, counts) if k)
                 + f" ({int((counts > 0).sum())} of the model's {len(classes)})")
    return torch.from_numpy(y)
