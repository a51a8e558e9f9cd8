"""Uploaded features are matched to a model's feature list by name, with a report."""
from __future__ import annotations

import numpy as np
import pytest

from core.data.align import match_features
from core.data.dataset import ModalitySpec
from core.data.readers import Table, normalize_expression, read_csv_table
from core.errors import MMXError

SPEC = ModalitySpec("protein", "omics", ("CD3", "CD4", "CD8", "CD19"))


def _table(features, X):
    return Table(ids=np.array([f"c{i}" for i in range(len(X))]), features=tuple(features),
                 X=np.asarray(X, np.float32), source="upload.csv")


def test_reorders_fills_and_reports():
    t = _table(["cd4", "CD3", "CD19", "CD999"], [[1, 2, 3, 9], [4, 5, 6, 9]])
    X, rep = match_features(t, SPEC, fill_values=np.array([0, 0, 7, 0]))
    assert X.tolist() == [[2, 1, 7, 3], [5, 4, 7, 6]]
    assert rep.matched == 3 and rep.missing == ("CD8",) and rep.unknown == ("CD999",)
    assert "3 of 4 features matched" in rep.summary() and "CD8" in rep.summary()


def test_too_few_matches_is_an_error():
    with pytest.raises(MMXError, match=r"upload\.csv: only 1 of 4 protein features found by name"):
        match_features(_table(["CD3", "A", "B"], [[1, 2, 3]]), SPEC)


def test_real_counts_upload_matches_cells_features(cells, data_dir):
    """An upload of raw counts in CSV is normalised the way the task was and lines up exactly."""
    spec = cells.dataset.specs["protein"]
    t = normalize_expression(read_csv_table(data_dir / "cite_bmmc" / "protein_counts.csv"), 1e4)
    X, rep = match_features(t, spec)
    assert rep.matched == 134 and not rep.missing and not rep.unknown
    assert np.allclose(X, cells.dataset.modalities["protein"].numpy(), atol=1e-4)
