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
