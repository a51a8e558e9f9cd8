"""Shared fixtures. Real-data tests read ../shared/data (or $MMX_DATA_DIR); in CI a missing
data folder fails those tests instead of skipping them."""
from __future__ import annotations

import os

import pytest
import torch

from core.paths import data_root

os.environ.setdefault("MMX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "mmx"))


@pytest.fixture(scope="session")
def data_dir():
    root = data_root()
    if root is None:
        msg = "real data not found (../shared/data or $MMX_DATA_DIR)"
        if os.environ.get("CI"):
            pytest.fail(msg + ": real-data tests must run in CI")
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def cells(data_dir):
    from core.data.tasks import get_task

    return get_task("cells")


@pytest.fixture(scope="session")
def rosmap(data_dir):
    from core.data.tasks import get_task

    return get_task("rosmap")


@pytest.fixture(scope="session")
def derm7pt(data_dir):
    from core.data.tasks import get_task

    return get_task("derm7pt")


@pytest.fixture(scope="session")
def demo():
    from core.data.tasks import get_task

    return get_task("demo")


@pytest.fixture(scope="module")
def one_thread():
    """Small nets on a shared 2-core CPU train faster on one intra-op thread (speed only). An
    explicit ``OMP_NUM_THREADS`` wins, so the whole suite can be run with any thread count."""
    before = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_table():
    """Build a result table (label -> RowResult) from target accuracies, for findings tests: every
    row is scored on the same runs and cases; a row is right on exactly ``round(acc * n)`` of each
    run's cases (drawn at random), so the means are exact and the bootstrap has real spread."""
    import numpy as np

    from core import metrics
    from core.experiments.runner import Row, RowResult, predictions

    def make(accuracies: dict[str, float], n_runs: int = 3, n: int = 300, n_classes: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        ys = [rng.integers(0, n_classes, n) for _ in range(n_runs)]
        table = {}
        for label, acc in accuracies.items():
            runs = []
            for i, y in enumerate(ys):
                right = rng.permutation(n) < round(acc * n)
                pred = np.where(right, y, (y + rng.integers(1, n_classes, n)) % n_classes)
                proba = 0.8 * np.eye(n_classes)[pred] + 0.2 * rng.dirichlet(np.ones(n_classes), n)
                runs.append({"split": f"run{i}", "seed": i, "metrics": metrics.compute(y, proba, with_auroc=True),
                             "fit_seconds": 1.0, "n_test": n, **predictions(y, proba)})
            table[label] = RowResult(Row(label, "synthetic"), runs)
        return table

    return make


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Streamlit's AppTest leaves the dashboard script installed as ``__main__``; a later test
    that starts spawned worker processes (the HyperMM experiments) would make each worker run
    that script. Put the real ``__main__`` back after every test."""
    import sys

    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main
