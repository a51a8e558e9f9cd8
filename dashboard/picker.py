"""The sample picker every page shares (in the sidebar): a shipped model, then a sample from its
test split or from the user's own files. The choice lives in ``st.session_state`` and follows
the user across pages; reading and predicting happen in ``core``. The model and a test-split sample
are also written into the address (``?model=…&sample=…``), so a reload or a shared link opens the same
model and sample (an uploaded sample cannot travel in a link: the model does)."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st
from common import load_cohort, load_model, shipped_models, show_error

from core.data.readers import IMAGE_SUFFIXES
from core.errors import DataUnavailable
from core.explain.sample import Cohort, Sample, read_upload
from core.shipped import ShippedModel

TEST, UPLOAD = "Test split", "Upload"
IMAGE_NAMES = {"clinic": "clinical photo", "derm": "dermoscopic photo", "image": "cell image"}


@dataclass
class Current:
    """The chosen model and sample; ``key`` identifies the sample for caches."""

    shipped: ShippedModel
    method: object
    sample: Sample
    key: str

    @property
    def model_key(self) -> str:
        return f"{self.shipped.task}/{self.shipped.name}"


def _label(m: ShippedModel) -> str:
    acc = m.metrics.get("balanced_accuracy")
    return f"{m.task} · {m.name}" + (f" · {100 * acc:.0f}%" if acc is not None else "")


def _keep(*keys: str) -> None:
    """Keep widget values while a page does not draw them (Streamlit drops a widget's state
    when a run does not render it)."""
    for k in keys:
        if k in st.session_state:
            st.session_state[k] = st.session_state[k]


@st.cache_data(max_entries=32, show_spinner="Reading the upload…")
def _read(model_key: str, images: tuple[tuple[str, str, bytes], ...], table: tuple[str, bytes] | None) -> Cohort:
    task, name = model_key.split("/")
    return read_upload(load_model(task, name), {m: (n, b) for m, n, b in images}, table)


def keep_choice() -> None:
    """Keep the model and sample through a run that draws no sidebar (e.g. one that switches page)."""
    _keep("model", "source", "class_filter", *[k for k in st.session_state if str(k).startswith("sample:")])


def _from_link(models: dict) -> None:
    """A new session (a reload, a shared link) starts from the model and sample in its address."""
    if "_linked" in st.session_state:
        return
    st.session_state["_linked"] = True
    model = st.query_params.get("model")
    if model in models:
        st.session_state["model"] = model
        if st.query_params.get("sample"):
            st.session_state["_linked_sample"] = (model, st.query_params["sample"])


def _to_link(model: str, sample_id: str | None) -> None:
    """Write the choice into the address (only what changed: each write is a browser history entry)."""
    want = {"model": model, **({"sample": sample_id} if sample_id is not None else {})}
    if st.query_params.to_dict() != want:
        st.query_params.from_dict(want)


def sidebar(samples: bool = True) -> Current | None:
    """Draw the picker; the chosen model and sample, or None (and a message) when there is none.
    ``samples=False`` (the Home page) shows the model choice only and loads nothing."""
    models = {f"{m.task}/{m.name}": m for m in shipped_models() if m.error is None}
    keep_choice()
    _from_link(models)
    with st.sidebar:
        st.header("Model and sample")
        if not models:
            st.info("No trained models in `checkpoints/`: `python train.py --release` trains them "
                    "(about 20 min on a 2-core CPU).")
            return None
        keys = list(models)
        first = next((i for i, k in enumerate(keys) if (models[k].card or {}).get("method") == "mm_dynamics"), 0)
        if st.session_state.get("model") not in models:
            st.session_state["model"] = keys[first]
        key = st.selectbox("Model", keys, format_func=lambda k: _label(models[k]), key="model")
        shipped = models[key]
        if not samples:  # keep the sample in the address: the next sample page opens it
            pending = st.session_state.get("_linked_sample")
            _to_link(key, st.session_state.get(f"sample_id:{key}") or (pending[1] if pending and pending[0] == key
                                                                       else None))
            st.caption("Open a page to pick a sample for this model.")
            return None
        try:
            method = load_model(shipped.task, shipped.name)
        except Exception as e:  # a damaged checkpoint: say why, keep the app and the other models running
            show_error(e)
            return None
        st.caption(f"{(shipped.card or {}).get('title', '')}. Trained on {shipped.task}; the % is its balanced "
                   "accuracy on its test split.")
        if shipped.research_only:
            st.caption("Research use only (Derm7pt terms).")
        source = st.radio("Sample from", (TEST, UPLOAD), horizontal=True, key="source")
        try:
            cur = _from_test(shipped, method, key) if source == TEST else _from_upload(shipped, method, key)
            _to_link(key, cur.sample.id if cur is not None and source == TEST else None)
            return cur
        except DataUnavailable as e:  # no data folder and no bundled examples (derm7pt): say how to get them
            _to_link(key, None)
            st.info(f"No {shipped.task} data on this machine: choose **Upload** above to explain your own "
                    "files, or get the data (the page says how).", icon=":material/info:")
            st.session_state["_no_data"] = str(e).split(". ", 1)[-1]
            return None
        except Exception as e:  # a bad file or folder: say why, keep the app running
            show_error(e)
            return None


def _from_test(shipped: ShippedModel, method, key: str) -> Current:
    cohort = load_cohort(shipped.task, shipped.name)
    frame = cohort.table()
    pick_key = f"sample:{key}"
    linked = st.session_state.pop("_linked_sample", None)
    hit = frame[frame["id"].astype(str) == linked[1]] if linked and linked[0] == key else frame.iloc[:0]
    if len(hit):  # the sample named in the address, whatever class the filter had
        st.session_state[pick_key] = int(hit["position"].iloc[0])
        st.session_state["class_filter"] = "all"
    classes = ["all"] + sorted(set(frame["label"]), key=list(method.classes).index)
    if st.session_state.get("class_filter") not in classes:
        st.session_state["class_filter"] = "all"
    cls = st.selectbox("Class", classes, key="class_filter")
    shown = frame if cls == "all" else frame[frame["label"] == cls]
    if st.session_state.get(pick_key) not in set(shown["position"]):
        st.session_state[pick_key] = int(shown["position"].iloc[0])
    labels = dict(zip(frame["position"], frame["label"] + " — " + frame["id"].astype(str)))
    pos = st.selectbox(f"Sample ({len(shown)} of {len(frame)})", shown["position"].tolist(),
                       format_func=labels.get, key=pick_key)
    st.session_state[f"sample_id:{key}"] = str(frame.loc[frame["position"] == pos, "id"].iloc[0])
    return Current(shipped, method, cohort.sample(int(pos)), f"{key}|test|{pos}")


def _from_upload(shipped: ShippedModel, method, key: str) -> Current | None:
    images = []
    for m in method.predicts_from():
        if method.specs[m].kind == "image":
            f = st.file_uploader(f"{IMAGE_NAMES.get(m, m)} ({m})", type=sorted(s[1:] for s in IMAGE_SUFFIXES),
                                 key=f"upload:{key}:{m}")
            if f is not None:
                images.append((m, f.name, f.getvalue()))
    omics = [m for m in method.predicts_from() if method.specs[m].kind == "omics"]
    table = None
    if omics:
        f = st.file_uploader(f"expression ({' + '.join(omics)}): CSV, .h5ad or .h5mu", type=["csv", "h5ad", "h5mu"],
                             key=f"upload:{key}:table")
        if f is not None:
            table = (f.name, f.getvalue())
    if not images and table is None:
        wanted = [IMAGE_NAMES.get(m, m) for m in method.predicts_from() if method.specs[m].kind == "image"]
        wanted += ["an expression table"] if omics else []
        st.info(f"Upload {' and/or '.join(wanted)}. Any modality may be left out.")
        return None
    cohort = _read(key, tuple(images), table)
    pos = 0
    if len(cohort.idx) > 1:
        frame = cohort.table()
        names = dict(zip(frame["position"], (frame["label"] + " — " if "label" in frame else "")
                         + frame["id"].astype(str)))
        pos = st.selectbox(f"Cell ({len(frame)} in the file)", frame["position"].tolist(), format_func=names.get,
                           key=f"cell:{key}")
    sample = cohort.sample(int(pos))
    return Current(shipped, method, sample, f"{key}|upload|{','.join(sample.digests.values())}|{pos}")


def sample_header(cur: Current) -> None:
    """What is being explained: the sample, its true class, and what the reading found."""
    s = cur.sample
    st.markdown(f"**{cur.model_key}** on sample **{s.id}**"
                + (f", true class **{s.label}**" if s.label else ", true class unknown") + f" · {s.source}")
    for note in s.caveats:
        st.info(note, icon=":material/info:")
    absent = [m for m in cur.method.predicts_from() if m not in s.present]
    for m in absent:
        st.warning(f"**{m}** is absent in this sample: {cur.method.absence_handling()}.")
    if s.notes:
        with st.expander("What was read"):
            st.dataframe(pd.DataFrame({"report": s.notes}), hide_index=True, width="stretch")


def browse(cur: Current, per_page: int = 24) -> None:
    """The test split to pick from: a thumbnail gallery for image models, a table otherwise
    (filtered by the sidebar's class)."""
    if not cur.key.split("|")[1] == "test":
        return
    cohort = load_cohort(cur.shipped.task, cur.shipped.name)
    frame = cohort.table()
    cls = st.session_state.get("class_filter", "all")
    shown = frame if cls == "all" else frame[frame["label"] == cls]
    pick_key = f"sample:{cur.model_key}"
    images = [m for m in cur.method.predicts_from() if cur.method.specs[m].kind == "image"]
    omics = [m for m in cur.method.predicts_from() if cur.method.specs[m].kind == "omics"]
    what = "the bundled examples" if cohort.source.startswith("examples") else "the test split"
    with st.expander(f"Browse {what} ({len(shown)} samples{'' if cls == 'all' else ' of class ' + cls})"):
        if omics or not images:
            st.dataframe(shown, hide_index=True, width="stretch", height=240)
            st.caption("Pick a sample by id in the sidebar.")
            return
        pages = max(1, -(-len(shown) // per_page))
        page = st.number_input("page", 1, pages, 1, key=f"gallery_page:{cur.model_key}:{cls}") if pages > 1 else 1
        chunk = shown.iloc[(page - 1) * per_page: page * per_page]
        cols = st.columns(8)
        for i, (_, row) in enumerate(chunk.iterrows()):
            with cols[i % 8]:
                s = cohort.sample(int(row["position"]))
                st.image(s.image(images[0]), caption=f"{row['label']}", width="stretch")
                st.button("Use", key=f"use:{cur.model_key}:{row['position']}", on_click=_use,
                          args=(pick_key, int(row["position"])),
                          type="primary" if s.id == cur.sample.id else "secondary")


def cohort_name(cur: Current) -> str:
    """What the page's cohort figures are over: the model's test split, or the examples standing in for it."""
    source = load_cohort(cur.shipped.task, cur.shipped.name).source
    return f"the bundled {source}" if source.startswith("examples") else "the test split"


def _use(key: str, position: int) -> None:
    st.session_state[key] = position


def page(title: str) -> Current:
    """Start a sample page: its title, the picker, and what is being explained (stops the page
    with a hint when no sample is chosen yet)."""
    st.title(title)
    st.session_state.pop("_no_data", None)
    cur = sidebar()
    if cur is None:
        how = st.session_state.get("_no_data")
        st.info(f"This model's data is not on this machine, so its test split cannot be shown. {how}\n\n"
                "Meanwhile **Upload** (in the sidebar) explains your own files with it." if how else
                "Choose a model and a sample in the sidebar.", icon=":material/info:")
        st.stop()
    sample_header(cur)
    return cur
