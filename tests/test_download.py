"""``train.py --download``: the full data fetched from a server on 127.0.0.1 that serves the real data
folder's files at the addresses the manifest names (no test touches the internet). A clean download
equals the data folder byte for byte (the tables the project adds included) and the tasks read it; a
broken transfer resumes with a range request; a file with the wrong content is refused, named and
fetched again; a wrong manifest entry is named; derm7pt is laid out from the user's own copy."""
from __future__ import annotations

import http.server
import json
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

import train
from core.data import download as dl
from core.data.tasks import get_task
from core.errors import MMXError


class Server:
    """Serves ``files`` (URL path -> local file) with HTTP range support; ``cut`` (path -> byte count)
    breaks a transfer after that many bytes, once; ``corrupt`` (path -> bytes) serves other bytes."""

    def __init__(self, files: dict[str, Path]):
        self.files, self.cut, self.corrupt, self.ranges = files, {}, {}, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                local = outer.files.get(self.path)
                if local is None:
                    self.send_error(404)
                    return
                body = outer.corrupt.get(self.path) or local.read_bytes()
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    outer.ranges.append((self.path, start))
                    if start >= len(body):
                        self.send_error(416)
                        return
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                stop = outer.cut.pop(self.path, None)
                self.wfile.write(body[start:stop] if stop is not None else body[start:])
                if stop is not None:
                    self.wfile.flush()
                    self.connection.close()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def spec():
    return dl.manifest()


@pytest.fixture
def server(data_dir, spec):
    files = {f"/{info['repo']}/{info['commit']}/{info['remote']}{e['path']}": data_dir / name / e["path"]
             for name, info in spec["folders"].items() for e in info["files"]}
    s = Server(files)
    yield s
    s.close()


def _url(spec, folder: str, path: str) -> str:
    info = spec["folders"][folder]
    return f"/{info['repo']}/{info['commit']}/{info['remote']}{path}"


HUMAN_EXPORTS = {"rna_counts.csv", "rna_lognorm.csv", "rna_features.csv", "protein_clr.csv", "protein_counts.csv"}


def test_the_manifest_describes_the_data_folder(data_dir, spec):
    """Every file the manifest lists is the data folder's (size and sha256), and every file of a folder
    to download is listed (but SOURCE.md and the cells' CSV exports for people): the manifest and
    SOURCE.md describe the same data."""
    for name, info in spec["folders"].items():
        for e in [*info["files"], *info["made"], *info.get("checked", [])]:
            assert dl.mismatch(data_dir / name / e["path"], e) is None, (name, e["path"])
        if info["files"]:
            listed = {e["path"] for e in [*info["files"], *info["made"]]}
            present = {p.relative_to(data_dir / name).as_posix() for p in (data_dir / name).rglob("*") if p.is_file()}
            assert present - {"SOURCE.md"} - HUMAN_EXPORTS == listed, name
            source = (data_dir / name / "SOURCE.md").read_text()
            assert info["commit"] in source and info["repo"] in source, name


def test_a_clean_download_equals_the_data_folder_and_the_tasks_read_it(server, spec, data_dir, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setenv("MMX_DOWNLOAD_URL", server.url)  # the sources' address, here on 127.0.0.1
    assert train.main(["--download", "cells", "rosmap", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all("every file verified" in line for line in out), out
    for name in ("cite_bmmc", "blood_cells/pbc_acevedo2020", "rosmap"):
        info = spec["folders"][name]
        for e in [*info["files"], *info["made"]]:  # labels.csv of cells and of PBC: made here, byte for byte
            assert (tmp_path / name / e["path"]).read_bytes() == (data_dir / name / e["path"]).read_bytes(), e["path"]
    assert not (tmp_path / dl.STAGING).exists()
    for task in ("rosmap", "pbc"):
        assert get_task(task, tmp_path).dataset.data_hash() == get_task(task, data_dir).dataset.data_hash(), task
    cells = get_task("cells", tmp_path).dataset
    assert cells.class_counts() == get_task("cells", data_dir).dataset.class_counts()
    again = dl.download(["rosmap"], tmp_path, base_url=server.url, progress=False)
    assert again == ["rosmap: already there, every file verified (11 files)"]


def test_an_interrupted_download_resumes_with_a_range_request(server, spec, tmp_path):
    url = _url(spec, "rosmap", "2_tr.csv")
    server.cut[url] = 100_000
    with pytest.raises(MMXError, match=r"rosmap/2_tr.csv \(.*the transfer broke.*the next run resumes it"):
        dl.download(["rosmap"], tmp_path, base_url=server.url, progress=False, workers=1)
    assert not (tmp_path / "rosmap").exists()  # nothing partial is left as if complete
    part = tmp_path / dl.STAGING / "rosmap" / "2_tr.csv.part"
    kept = part.stat().st_size
    assert 0 < kept <= 100_000 and len(list((tmp_path / dl.STAGING / "rosmap").glob("*.csv"))) == 10
    out = dl.download(["rosmap"], tmp_path, base_url=server.url, progress=False)
    assert server.ranges == [(url, kept)] and "1 of 11 files fetched" in out[0]
    assert dl.check_folder(tmp_path / "rosmap", spec["folders"]["rosmap"]) == []


def test_a_corrupted_file_is_refused_named_and_fetched_again(server, spec, tmp_path):
    url = _url(spec, "rosmap", "labels_te.csv")
    real = server.files[url].read_bytes()
    server.corrupt[url] = real.replace(b"1", b"0", 1)  # same size, other content
    with pytest.raises(MMXError) as e:
        dl.download(["rosmap"], tmp_path, base_url=server.url, progress=False)
    assert f"rosmap/labels_te.csv ({server.url}{url}: sha256" in str(e.value) and "fetched again" in str(e.value)
    stage = tmp_path / dl.STAGING / "rosmap"
    assert not (stage / "labels_te.csv").exists() and not (stage / "labels_te.csv.part").exists()
    assert not (tmp_path / "rosmap").exists()
    del server.corrupt[url]
    out = dl.download(["rosmap"], tmp_path, base_url=server.url, progress=False)
    assert "1 of 11 files fetched" in out[0] and (tmp_path / "rosmap" / "labels_te.csv").read_bytes() == real


def test_a_wrong_manifest_entry_is_named(server, spec, tmp_path):
    bad = json.loads(json.dumps(spec))
    files = bad["folders"]["rosmap"]["files"]
    files[0]["bytes"] += 1  # a size the file does not have
    files[1]["path"] = "not_in_the_repository.csv"  # an address the source does not have
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(MMXError) as e:
        dl.download(["rosmap"], tmp_path / "data", base_url=server.url, progress=False, manifest_path=path)
    text = str(e.value)
    assert f"rosmap/{files[0]['path']} (" in text and f"the manifest says {files[0]['bytes']}" in text
    assert "rosmap/not_in_the_repository.csv (" in text and "HTTP 404" in text
    assert "2 files could not be fetched or verified" in text


def test_an_existing_folder_that_differs_is_named_and_left_alone(server, spec, data_dir, tmp_path):
    shutil.copytree(data_dir / "rosmap", tmp_path / "rosmap")
    (tmp_path / "rosmap" / "3_te.csv").write_text("0,1\n")
    with pytest.raises(MMXError, match=r"rosmap: exists but differs from the manifest in 1 files \(3_te.csv: "):
        dl.download(["rosmap"], tmp_path, base_url=server.url, progress=False)
    assert (tmp_path / "rosmap" / "3_te.csv").read_text() == "0,1\n"


def test_derm7pt_is_not_downloaded_but_a_users_copy_is_laid_out(data_dir, tmp_path, capsys):
    assert train.main(["--download", "derm7pt", "--data-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "http://derm.cs.sfu.ca" in text and "may not be redistributed" in text and "--from" in text
    assert not any(tmp_path.iterdir())
    zipped = tmp_path / "copy.zip"  # as a user might have it: the release inside a folder of the zip
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as z:
        for f in sorted((data_dir / "derm7pt" / "release_v0").rglob("*")):
            if f.is_file():
                z.write(f, f"download/release_v0/{f.relative_to(data_dir / 'derm7pt' / 'release_v0').as_posix()}")
    root = tmp_path / "data"
    assert train.main(["--download", "derm7pt", "--from", str(zipped), "--data-dir", str(root)]) == 0
    assert "1011 cases laid out" in capsys.readouterr().out
    td = get_task("derm7pt", root)
    assert td.dataset.data_hash() == get_task("derm7pt", data_dir).dataset.data_hash()
    assert train.main(["--download", "derm7pt", "--from", str(zipped), "--data-dir", str(root)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_bad_derm7pt_copy_is_refused(data_dir, tmp_path):
    copy = tmp_path / "mine" / "release_v0"
    shutil.copytree(data_dir / "derm7pt" / "release_v0" / "meta", copy / "meta")
    with pytest.raises(MMXError, match=r"2013 images meta.csv names are missing or unreadable"):
        dl.derm7pt_from(tmp_path / "mine", tmp_path / "data")
    (copy / "meta" / "test_indexes.csv").write_text("indexes\n0\n")
    with pytest.raises(MMXError, match=r"not Derm7pt's release_v0 as published: release_v0/meta/test_indexes.csv: "):
        dl.derm7pt_from(tmp_path / "mine", tmp_path / "data")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("release_v0/meta/meta.csv", "x")
        z.writestr("release_v0/../../outside.txt", "x")
    with pytest.raises(MMXError, match="would be written outside the folder: refused"):
        dl.derm7pt_from(evil, tmp_path / "data")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "data" / "derm7pt").exists()


def test_download_refuses_unknown_tasks_and_addresses(tmp_path):
    with pytest.raises(MMXError, match=r"no data to download for \['nope'\]"):
        dl.download(["nope"], tmp_path, progress=False)
    with pytest.raises(MMXError, match="must be http"):
        dl.download(["rosmap"], tmp_path, base_url="file:///etc", progress=False)
