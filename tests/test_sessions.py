"""Many users at once: eight dashboard sessions with different samples, uploads and masks, each
run twice, all sixteen at once in parallel threads on the same cached models
(``st.cache_resource``), get exactly the answer each gets alone (same text, tables and chart
numbers), and the cached models and test splits are left as they were.

Streamlit serves every session from one process: one ``Runtime``, one config, one cache of
compiled pages, a thread per script run. ``AppTest`` builds these per run and undoes them when
the run ends, which would pull them from under the other sessions' runs (and compile pages in
parallel, which CPython 3.11's ``ast.parse`` does not survive); the ``server`` fixture gives all
sessions one of each, as the server does."""
from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
CELLS, PBC = "cells/mm_dynamics", "pbc/cnn"


@dataclass(frozen=True)
class Session:
    """What one user does: a model, a test sample or an upload, then widgets set in order."""

    model: str
    sample: int = 0
    upload: tuple[str, str] | None = None  # (uploader key suffix, file name in the uploads folder)
    widgets: tuple[tuple[str, str, object], ...] = ()  # (widget kind, key, value)
    page: str = "views/predict.py"


SESSIONS = (
    Session(CELLS, 0),
    Session(CELLS, 0, widgets=(("toggle", "on:rna", False),)),
    Session(CELLS, 7, widgets=(("toggle", "on:protein", False), ("selectbox", "how:protein", "zeros"))),
    Session(CELLS, 7, widgets=(("text_input", "patches:image", "0-40"),)),
    Session(CELLS, upload=("table", "cells.csv"), widgets=(("selectbox", f"cell:{CELLS}", 2),)),
    Session(PBC, 3, widgets=(("text_input", "patches:image", "0-31"), ("radio", "patch_keep", "keep only these"))),
    Session(PBC, upload=("image", "cell.jpg")),
    Session(CELLS, 5, widgets=(("slider", "k:image", 32),), page="views/informativeness.py"),
)


@pytest.fixture
def server(monkeypatch):
    """One runtime and one config for every session, as ``streamlit run`` has."""
    from streamlit import config
    from streamlit.runtime import Runtime
    from streamlit.runtime.caching.storage.dummy_cache_storage import MemoryCacheStorageManager
    from streamlit.runtime.dataframe_source_manager import DataframeSourceManager
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner
    from streamlit.testing.v1.util import patch_config_options

    runtime = mock.MagicMock(spec=Runtime)
    runtime.media_file_mgr = MediaFileManager(MemoryMediaFileStorage("/mock/media"))
    runtime.dataframe_source_mgr = DataframeSourceManager()
    runtime.cache_storage_manager = MemoryCacheStorageManager()
    monkeypatch.setattr(Runtime, "instance", classmethod(lambda cls: runtime))
    monkeypatch.setattr(Runtime, "exists", classmethod(lambda cls: True))
    scripts = ScriptCache()
    monkeypatch.setattr(app_test, "ScriptCache", lambda: scripts)
    monkeypatch.setattr(local_script_runner, "ScriptCache", lambda: scripts)
    monkeypatch.setattr(config, "get_option", config.get_option)  # put back whatever happens below
    monkeypatch.setattr(app_test, "patch_config_options", lambda overrides: contextlib.nullcontext())
    with patch_config_options({"global.appTest": True}):
        yield


@pytest.fixture(scope="module")
def uploads(data_dir, tmp_path_factory) -> Path:
    """Three real cells' raw counts (RNA and protein) as a CSV, and a real blood-cell photo."""
    import pandas as pd

    from core.data.readers import read_h5ad
    from core.data.tasks.cells import CITE, PROT_FILE, RNA_FILE

    rna, prot = (read_h5ad(data_dir / CITE / f, layer="counts") for f in (RNA_FILE, PROT_FILE))
    rows = [1, 201, 401]
    r = pd.DataFrame(rna.X[rows], index=rna.ids[rows], columns=rna.features)
    p = pd.DataFrame(prot.X[rows], index=prot.ids[rows], columns=prot.features)
    folder = tmp_path_factory.mktemp("uploads")
    pd.concat([r, p[[c for c in p.columns if c not in r.columns]]], axis=1).rename_axis("cell_id").to_csv(
        folder / "cells.csv")
    image = sorted((data_dir / "blood_cells/pbc_acevedo2020").rglob("*.jpg"))[5]
    (folder / "cell.jpg").write_bytes(image.read_bytes())
    return folder


def _run(s: Session, uploads: Path) -> dict:
    """One session from the first page to its answer: what the page says and draws."""
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=300).run()
    at.selectbox(key="model").set_value(s.model).run()
    at.switch_page(s.page).run()
    if s.upload:
        slot, name = s.upload
        at.radio(key="source").set_value("Upload").run()
        at.file_uploader(key=f"upload:{s.model}:{slot}").set_value(
            (name, (uploads / name).read_bytes(), "application/octet-stream")).run()
        at.switch_page(s.page).run()
    else:
        at.selectbox(key=f"sample:{s.model}").set_value(s.sample).run()
    for kind, key, value in s.widgets:
        getattr(at, kind)(key=key).set_value(value).run()
    assert not at.exception and not at.error, (s, at.exception, [e.value for e in at.error])
    return {
        "said": [m.value for m in at.markdown if " on sample " in m.value] + [c.value for c in at.caption],
        "metrics": {m.label: m.value for m in at.metric},
        "charts": [_numbers(json.loads(c.proto.spec)["data"]) for c in at.get("plotly_chart")],
        "tables": [d.value.to_dict("list") for d in at.dataframe],
    }


def _numbers(traces: list[dict]) -> list:
    """Each trace's arrays as lists (plotly writes them as base64 typed arrays)."""
    import base64

    def plain(v):
        if isinstance(v, dict) and "bdata" in v:
            return np.frombuffer(base64.b64decode(v["bdata"]), v["dtype"]).tolist()
        return v

    return [{k: plain(v) for k, v in t.items() if k in ("x", "y", "z", "name", "customdata")} for t in traces]


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode() + tensors[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _cached(model: str):
    """The model and test split every session shares, from the cache (``sys.modules['common']`` is
    the pages' module; loading anew fails)."""
    common = sys.modules["common"]
    task, name = model.split("/")
    with mock.patch.object(common, "load", side_effect=AssertionError(f"{model} is not cached")):
        return common.load_model(task, name), common.load_cohort(task, name)


def _state(model: str) -> tuple:
    """Everything of a cached model and test split a session could change by mistake."""
    method, cohort = _cached(model)
    plain = json.dumps([method.card, method.card_state(), str(method.config)], sort_keys=True, default=str)
    return (_digest(method.weights()), [m.training for m in method.module().modules()], plain,
            _digest(cohort.data.modalities), _digest(cohort.data.present), cohort.idx.tolist())


def test_parallel_sessions_get_their_own_answers(data_dir, uploads, server):
    alone = [_run(s, uploads) for s in SESSIONS]
    assert len({json.dumps(a, sort_keys=True) for a in alone}) == len(SESSIONS)  # eight different answers
    models = {s.model for s in SESSIONS}
    cached = {m: _cached(m) for m in models}
    before = {m: _state(m) for m in models}
    with ThreadPoolExecutor(2 * len(SESSIONS)) as pool:  # each session twice: two users doing the same, too
        together = list(pool.map(lambda s: _run(s, uploads), SESSIONS * 2))
    for s, a, b in zip(SESSIONS * 2, alone * 2, together):
        assert a == b, s
    for m in models:
        assert all(x is y for x, y in zip(_cached(m), cached[m]))  # still the one cached object
        assert _state(m) == before[m], m  # never mutated
