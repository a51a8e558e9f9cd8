"""``python train.py --download [TASK ...|all]``: the full data of the tasks, fetched from their public
sources at the commits pinned in each ``SOURCE.md``, into the layout the tasks read.

``download_manifest.json`` (beside this module) lists every file: where it lies under the data root
(fetched from the same path under the folder's ``remote`` prefix in a GitHub repository at a pinned
commit) and its size and sha256;
the tables this project adds to the sources (the cells' ``labels.csv`` with its lineage grouping,
PBC's file list) are made here from what was fetched and checked against their recorded sha256 too.

A folder is fetched into ``<data root>/.download/<folder>`` and moved into place only once every file
in it verifies, so a task never sees half a data set. Each file is written as ``<file>.part`` and
renamed when its size and sha256 match: a killed run resumes the ``.part`` (an HTTP range request)
and skips the files already there; a file whose checksum differs is deleted, named in the error, and
fetched again on the next run. Derm7pt may not be redistributed: ``--download derm7pt`` says where it
is obtained, and ``--download derm7pt --from FOLDER_OR_ZIP`` checks and lays out a copy the user got.
"""
from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.errors import MMXError
from core.paths import REPO_ROOT, data_root

MANIFEST = Path(__file__).with_name("download_manifest.json")
FORMAT = "mmx-data-manifest/1"
BASE_URL = "https://raw.githubusercontent.com"
STAGING = ".download"
CHUNK = 1 << 16
TASK_FOLDERS = {"cells": ("cite_bmmc", "blood_cells/pbc_acevedo2020"), "pbc": ("blood_cells/pbc_acevedo2020",),
                "rosmap": ("rosmap",), "derm7pt": ("derm7pt",)}
DERM7PT_TERMS = (
    "Derm7pt (Kawahara et al., IEEE JBHI 2019) is for academic research only and may not be redistributed, so "
    "this tool cannot fetch it. Obtain release_v0 from its official source, http://derm.cs.sfu.ca (terms in the "
    "release's README.txt; companion code: github.com/jeremykawahara/derm7pt), then lay it out with "
    "`python train.py --download derm7pt --from FOLDER_OR_ZIP [--data-dir D]` (the folder or zip that holds "
    "release_v0/meta/meta.csv). The shipped derm7pt models were trained on a copy "
    "resized to 384 px on the long side; full-resolution images are read the same way (resized to the model's "
    "input), so their numbers can differ slightly.")


def manifest(path: Path = MANIFEST) -> dict:
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MMXError(f"cannot read the data manifest ({e})", path) from None
    if m.get("format") != FORMAT:
        raise MMXError(f"not a {FORMAT} manifest", path)
    return m


def folders_of(tasks: list[str]) -> list[str]:
    """The data folders ``tasks`` read (``all``: every task's), each once."""
    names = list(TASK_FOLDERS) if not tasks or "all" in tasks else tasks
    unknown = [t for t in names if t not in TASK_FOLDERS]
    if unknown:
        raise MMXError(f"no data to download for {unknown}; tasks with data: {sorted(TASK_FOLDERS)} (or all)")
    return list(dict.fromkeys(f for t in names for f in TASK_FOLDERS[t]))


def how_to_get(task: str) -> str:
    """One paragraph on where ``task``'s data comes from and the command that fetches it."""
    if task == "derm7pt":
        return DERM7PT_TERMS
    folders = TASK_FOLDERS.get(task)
    if folders is None:
        return f"task {task!r} reads no data folder"
    m = manifest()["folders"]
    size = sum(f["bytes"] for d in folders for f in m[d]["files"]) / 1e6
    src = "; ".join(f"{m[d]['title']} ({m[d]['licence']}; github.com/{m[d]['repo']} at {m[d]['commit'][:10]})"
                    for d in folders)
    return (f"`python train.py --download {task}` fetches its {size:.0f} MB from the public sources ({src}) into "
            "the data root (--data-dir, else $MMX_DATA_DIR, else data/ in the repository).")


# ----------------------------------------------------------------------------- checking files
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def mismatch(path: Path, entry: dict) -> str | None:
    """Why ``path`` is not the file ``entry`` describes (None when it is)."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"{size} bytes, the manifest says {entry['bytes']}"
    digest = sha256(path)
    return None if digest == entry["sha256"] else f"sha256 {digest[:16]}…, the manifest says {entry['sha256'][:16]}…"


def check_folder(folder: Path, spec: dict) -> list[str]:
    """Every file of ``spec`` (fetched and made) that ``folder`` lacks or holds otherwise, with why."""
    problems = []
    for entry in [*spec["files"], *spec.get("made", [])]:
        why = mismatch(folder / entry["path"], entry)
        if why:
            problems.append(f"{entry['path']}: {why}")
    return problems


# ----------------------------------------------------------------------------- fetching
@dataclass
class Fetch:
    url: str
    target: Path
    entry: dict


def _fetch(job: Fetch, timeout: float, tick) -> str | None:
    """Fetch one file into ``target.part`` (resuming what is there) and rename it when it verifies.
    Returns None, or why it failed (the ``.part`` is kept when the transfer broke, dropped when the
    content is wrong)."""
    part = job.target.with_name(job.target.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    if have > job.entry["bytes"]:
        part.unlink()
        have = 0
    request = urllib.request.Request(job.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            mode = "ab" if have and r.status == 206 else "wb"  # a server that ignores the range sends it all
            tick(have if mode == "ab" else 0)
            announced, got = r.headers.get("Content-Length"), 0
            with open(part, mode) as out:
                for block in iter(lambda: r.read(CHUNK), b""):
                    out.write(block)
                    got += len(block)
                    tick(len(block))
            if announced is not None and got < int(announced):
                raise ConnectionError(f"{got} of {announced} bytes arrived")
    except urllib.error.HTTPError as e:
        if not (e.code == 416 and have == job.entry["bytes"]):  # 416 with a whole .part: nothing left to send
            return f"{job.url}: HTTP {e.code} {e.reason}"
    except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as e:
        return f"{job.url}: the transfer broke ({getattr(e, 'reason', e)}); the next run resumes it"
    why = mismatch(part, job.entry)
    if why:
        part.unlink(missing_ok=True)
        return f"{job.url}: {why}; deleted, fetched again on the next run"
    os.replace(part, job.target)
    return None


def download(tasks: list[str] | None = None, data_dir: str | Path | None = None, *, base_url: str | None = None,
             manifest_path: Path = MANIFEST, progress: bool = True, workers: int = 8,
             timeout: float = 60) -> list[str]:
    """Fetch the folders ``tasks`` read into the data root (``data_dir``, else the configured root, else
    ``data/`` in the repository, where the tools look); what was done, one line per folder. Raises :class:`MMXError` naming every file that
    could not be fetched or verified (the others stay fetched for the next run)."""
    from tqdm.auto import tqdm

    spec = manifest(manifest_path)
    root = Path(data_dir) if data_dir else (data_root() or REPO_ROOT / "data")
    base = (base_url or os.environ.get("MMX_DOWNLOAD_URL") or spec.get("base", BASE_URL)).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise MMXError(f"download address must be http(s)://, got {base!r}")
    done, failed = [], []
    for name in folders_of(list(tasks or [])):
        if name == "derm7pt":
            done.append(f"derm7pt: not downloaded. {DERM7PT_TERMS}")
            continue
        folder, info = root / name, spec["folders"][name]
        if folder.exists():
            problems = check_folder(folder, info)
            if problems:
                raise MMXError(f"exists but differs from the manifest in {len(problems)} files ({'; '.join(problems[:5])}"
                               f"{' …' if len(problems) > 5 else ''}); move it away to fetch it afresh", folder)
            done.append(f"{name}: already there, every file verified ({len(info['files'])} files)")
            continue
        stage = root / STAGING / name
        jobs = [Fetch(f"{base}/{info['repo']}/{info['commit']}/{info['remote']}{e['path']}", stage / e["path"], e)
                for e in info["files"] if mismatch(stage / e["path"], e)]
        total = sum(j.entry["bytes"] for j in jobs)
        errors: list[str] = []
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress) as bar:
            def tick(n: int) -> None:
                bar.update(n)

            with ThreadPoolExecutor(max(1, workers)) as pool:
                for job, why in zip(jobs, pool.map(lambda j: _fetch(j, timeout, tick), jobs)):
                    if why:
                        errors.append(f"{name}/{job.entry['path']} ({why})")
        if errors:
            failed += errors
            continue
        _make(name, stage)
        problems = check_folder(stage, info)
        if problems:
            failed += [f"{name}/{p} (made from the fetched files)" for p in problems]
            continue
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage, folder)
        done.append(f"{name}: {len(jobs)} of {len(info['files'])} files fetched ({total / 1e6:.1f} MB), every file "
                    f"verified, in {folder}")
    _tidy(root)
    if failed:
        raise MMXError(f"{len(failed)} files could not be fetched or verified: " + "; ".join(failed[:10])
                       + (" …" if len(failed) > 10 else "") + ". The files that verified are kept; run the same "
                       "command again to resume.", root / STAGING)
    return done


def _tidy(root: Path) -> None:
    """Remove the staging folder once nothing is left in it."""
    for d in sorted((root / STAGING).glob("**/"), key=lambda d: -len(d.parts)):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


# ----------------------------------------------------------------------------- tables the project adds
def _make(name: str, folder: Path) -> None:
    """The tables this project adds to a fetched folder (see the module doc)."""
    if name == "cite_bmmc":
        _cells_labels(folder)
    elif name == "blood_cells/pbc_acevedo2020":
        _pbc_labels(folder)


def _cells_labels(folder: Path) -> None:
    import anndata as ad

    from core.data.tasks.cells import LINEAGE, RNA_FILE

    obs = ad.read_h5ad(folder / RNA_FILE, backed="r").obs
    unknown = sorted(set(obs["cell_type"].astype(str)) - set(LINEAGE))
    if unknown:
        raise MMXError(f"cell types without a lineage: {unknown}", folder / RNA_FILE)
    rows = [[cid, str(o.batch), str(o.cell_type), LINEAGE[str(o.cell_type)], str(bool(o.is_train)), str(o.phase)]
            for cid, o in zip(obs.index, obs.itertuples())]
    _write_csv(folder / "labels.csv", ["cell_id", "batch", "cell_type", "lineage", "is_train", "phase"], rows, "\n")


def _pbc_labels(folder: Path) -> None:
    from PIL import Image

    rows = []
    for path in sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg")):
        with Image.open(folder / path) as im:
            w, h, mode, fmt = im.width, im.height, im.mode, im.format
        cls, file = path.split("/")
        rows.append([path, cls, cls, file.split("_")[0], w, h, mode, fmt, (folder / path).stat().st_size,
                     sha256(folder / path)])
    _write_csv(folder / "labels.csv", ["path", "class", "pbc_folder", "pbc_code", "width", "height", "mode", "format",
                                       "bytes", "sha256"], rows, "\r\n")


def _write_csv(path: Path, header: list[str], rows: list[list], newline: str) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=newline)
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode())


# ----------------------------------------------------------------------------- derm7pt from the user's copy
def derm7pt_from(source: str | Path, data_dir: str | Path | None = None, manifest_path: Path = MANIFEST) -> str:
    """Check a copy of Derm7pt's ``release_v0`` (a folder or a zip holding ``release_v0/meta/meta.csv``)
    and lay it out as ``<data root>/derm7pt/release_v0``: the metadata files must be the release's (their
    sha256), and every image ``meta.csv`` names must be there and open as an image."""
    source = Path(source)
    spec = manifest(manifest_path)["folders"]["derm7pt"]
    root = Path(data_dir) if data_dir else (data_root() or REPO_ROOT / "data")
    target = root / "derm7pt" / "release_v0"
    if target.exists():
        raise MMXError("already exists: move it away to lay out another copy", target)
    stage = root / STAGING / "derm7pt"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        cases = _check_release(source, stage / "release_v0", spec)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / "release_v0", target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        _tidy(root)
    return f"derm7pt: {cases} cases laid out in {target}, metadata verified, every image opens"


def _check_release(source: Path, release: Path, spec: dict) -> int:
    """Copy (or extract) the user's release into ``release`` and check it; the number of cases."""
    import pandas as pd
    from PIL import Image

    if zipfile.is_zipfile(source):
        _unzip_release(source, release)
    elif source.is_dir():
        found = next((p.parent.parent for p in sorted(source.rglob("meta/meta.csv"))), None)
        if found is None:
            raise MMXError("no release_v0/meta/meta.csv inside", source)
        shutil.copytree(found, release)
    else:
        raise MMXError("not a folder or a zip file", source)
    problems = [f"{e['path']}: {why}" for e in spec["checked"] if (why := mismatch(release.parent / e["path"], e))]
    if problems:
        raise MMXError("not Derm7pt's release_v0 as published: " + "; ".join(problems), source)
    meta = pd.read_csv(release / "meta" / "meta.csv")
    bad = []
    for rel in sorted(set(meta["clinic"]) | set(meta["derm"])):
        try:
            with Image.open(release / "images" / rel) as im:
                im.verify()
        except (OSError, SyntaxError) as e:
            bad.append(f"{rel} ({type(e).__name__})")
    if bad:
        raise MMXError(f"{len(bad)} images meta.csv names are missing or unreadable: {', '.join(bad[:5])}"
                       f"{' …' if len(bad) > 5 else ''}", source)
    return len(meta)


def _unzip_release(zip_path: Path, out: Path) -> None:
    """Extract the members under ``release_v0/`` (wherever it sits in the zip); a member whose path
    leaves the folder (absolute, ``..``) is refused."""
    with zipfile.ZipFile(zip_path) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        meta = next((n for n in names if n.endswith("release_v0/meta/meta.csv")), None)
        if meta is None:
            raise MMXError("no release_v0/meta/meta.csv inside", zip_path)
        prefix = meta[: -len("meta/meta.csv")]
        for n in names:
            if not n.startswith(prefix):
                continue
            rel = PurePosixPath(n[len(prefix):])
            if rel.is_absolute() or ".." in rel.parts:
                raise MMXError(f"member {n!r} would be written outside the folder: refused", zip_path)
            dest = out.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(n) as src, open(dest, "wb") as f:
                shutil.copyfileobj(src, f)


# ----------------------------------------------------------------------------- the manifest itself
SOURCES = {
    "cite_bmmc": dict(title="Open Problems BMMC CITE-seq starter subset", licence="MIT",
                      repo="openproblems-bio/neurips2021_multimodal_viash",
                      commit="75281c039ab98b459edbf52058a18597e710ed4d",
                      remote="resources_test/common/openproblems_bmmc_cite_starter/",
                      fetched=("openproblems_bmmc_cite_starter.output_rna.h5ad",
                               "openproblems_bmmc_cite_starter.output_mod2.h5ad"), made=("labels.csv",)),
    "blood_cells/pbc_acevedo2020": dict(title="PBC peripheral blood cell images (Acevedo et al. 2020), a subset",
                                        licence="CC BY 4.0", repo="AuralinACC/Blood-Cell-Classification",
                                        commit="d2e7b75e11e21df3fb39f4d1d30004381663d96a",
                                        remote="PBC_dataset_normal_DIB/", fetched="*.jpg", made=("labels.csv",)),
    "rosmap": dict(title="ROSMAP multi-omics (MOGONET release)", licence="MIT", repo="txWang/MOGONET",
                   commit="32d9066b7fe289b3f7cdb496a5668834079c274c", remote="ROSMAP/",
                   fetched=tuple(f"{v}_{p}.csv" for v in (1, 2, 3) for p in ("tr", "te", "featname"))
                   + ("labels_tr.csv", "labels_te.csv"), made=()),
    "derm7pt": dict(title="Derm7pt release_v0 (research use only; not downloadable)", licence="research use only",
                    repo="", commit="", remote="", fetched=(), made=(),
                    checked=("release_v0/meta/meta.csv", "release_v0/meta/train_indexes.csv",
                             "release_v0/meta/valid_indexes.csv", "release_v0/meta/test_indexes.csv")),
}


def build_manifest(data_dir: str | Path) -> dict:
    """The manifest of the data folder ``data_dir`` (how :data:`MANIFEST` was made:
    ``python -m core.data.download --manifest D``); the SOURCE.md of each folder names the same sources."""
    root = Path(data_dir)

    def entry(folder: Path, rel: str) -> dict:
        return {"path": rel, "bytes": (folder / rel).stat().st_size, "sha256": sha256(folder / rel)}

    folders = {}
    for name, s in SOURCES.items():
        folder = root / name
        names = (sorted(p.relative_to(folder).as_posix() for p in folder.rglob(s["fetched"]))
                 if isinstance(s["fetched"], str) else list(s["fetched"]))
        folders[name] = {k: s[k] for k in ("title", "licence", "repo", "commit", "remote")} | {
            "files": [entry(folder, n) for n in names],
            "made": [entry(folder, n) for n in s["made"]]} | (
            {"checked": [entry(folder, n) for n in s["checked"]]} if "checked" in s else {})
    return {"format": FORMAT, "base": BASE_URL, "folders": folders}


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Write the data manifest from a data folder.")
    p.add_argument("--manifest", required=True, metavar="DATA_DIR")
    a = p.parse_args()
    MANIFEST.write_text(json.dumps(build_manifest(a.manifest), indent=1) + "\n")
    print(f"wrote {MANIFEST}")
