"""`onerec data download`: fetch over HTTP from a local server, verify, unpack safely, no-op reruns."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile

import pytest

from onerec.data import download as dl
from onerec.data.download import CATALOG, DownloadError, download


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):
        _Handler.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):   # keep test output quiet
        pass


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/srv on 127.0.0.1:<free port>; yields (srv folder, base url)."""
    srv = tmp_path / "srv"
    srv.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(srv)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.requests = []
    try:
        yield srv, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _zip(path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _targz(path, members: dict[str, bytes], symlink: tuple[str, str] | None = None) -> str:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type, info.linkname = tarfile.SYMTYPE, symlink[1]
            t.addfile(info)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(parent, dest_name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{dest_name}.")]


def test_zip_download_unpacks_and_records(server, tmp_path):
    srv, base = server
    sha = _zip(srv / "toy.zip", {"toy/a.txt": b"alpha", "toy/sub/b.txt": b"beta"})
    dest = tmp_path / "out" / "toy"
    got = download("toy", dest, url=f"{base}/toy.zip", sha256=sha, progress=False)
    assert got == dest.resolve()
    assert (dest / "a.txt").read_bytes() == b"alpha" and (dest / "sub" / "b.txt").read_bytes() == b"beta"
    record = json.loads((dest / "DOWNLOAD.json").read_text())
    assert record["name"] == "toy" and record["files"][0]["sha256"] == sha
    assert record["files"][0]["verified"] == "sha256"
    assert _leftovers(dest.parent, "toy") == []
    # A rerun with a matching DOWNLOAD.json fetches nothing.
    n = len(_Handler.requests)
    assert download("toy", dest, url=f"{base}/toy.zip", sha256=sha, progress=False) == dest.resolve()
    assert len(_Handler.requests) == n
    # force re-fetches and replaces.
    download("toy", dest, url=f"{base}/toy.zip", sha256=sha, force=True, progress=False)
    assert len(_Handler.requests) == n + 1 and (dest / "a.txt").read_bytes() == b"alpha"
    assert _leftovers(dest.parent, "toy") == []


def test_targz_download_without_checksum_records_sha(server, tmp_path):
    srv, base = server
    sha = _targz(srv / "pack.tar.gz", {"pack/data/x.csv": b"1,2\n", "pack/README": b"hi"})
    dest = tmp_path / "pack"
    download("pack", dest, url=f"{base}/pack.tar.gz", progress=False)
    assert (dest / "data" / "x.csv").read_bytes() == b"1,2\n"
    record = json.loads((dest / "DOWNLOAD.json").read_text())
    assert record["files"][0] == {"url": f"{base}/pack.tar.gz", "sha256": sha, "verified": "members"}


def test_wrong_sha256_leaves_nothing(server, tmp_path):
    srv, base = server
    _zip(srv / "toy.zip", {"a.txt": b"alpha"})
    dest = tmp_path / "toy"
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download("toy", dest, url=f"{base}/toy.zip", sha256="0" * 64, progress=False)
    assert not dest.exists() and _leftovers(tmp_path, "toy") == []
    with pytest.raises(DownloadError, match="64 hex"):
        download("toy", dest, url=f"{base}/toy.zip", sha256="abc", progress=False)


def test_existing_unverified_dest_needs_force(server, tmp_path):
    srv, base = server
    sha = _zip(srv / "toy.zip", {"a.txt": b"alpha"})
    dest = tmp_path / "toy"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")
    with pytest.raises(DownloadError, match="force"):
        download("toy", dest, url=f"{base}/toy.zip", sha256=sha, progress=False)
    assert (dest / "mine.txt").exists()


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt"])
def test_zip_traversal_rejected(server, tmp_path, member):
    srv, base = server
    sha = _zip(srv / "bad.zip", {"fine.txt": b"x", member: b"evil"})
    dest = tmp_path / "deep" / "bad"
    with pytest.raises(DownloadError, match="unsafe path"):
        download("bad", dest, url=f"{base}/bad.zip", sha256=sha, progress=False)
    assert not dest.exists() and not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_tar_traversal_and_links_rejected(server, tmp_path):
    srv, base = server
    _targz(srv / "bad.tar.gz", {"../evil.txt": b"evil"})
    with pytest.raises(DownloadError, match="unsafe path"):
        download("bad", tmp_path / "bad", url=f"{base}/bad.tar.gz", progress=False)
    _targz(srv / "link.tar.gz", {"a.txt": b"a"}, symlink=("pwn", "/etc/passwd"))
    with pytest.raises(DownloadError, match="link"):
        download("link", tmp_path / "link", url=f"{base}/link.tar.gz", progress=False)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "link").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_unknown_name_lists_catalog(tmp_path):
    with pytest.raises(DownloadError, match="unknown dataset 'nope'") as e:
        download("nope", tmp_path / "x", progress=False)
    for name in ("movielens-100k", "movielens-1m", "kuairand-pure", "amazon-beauty-s3rec"):
        assert name in str(e.value)
    assert not (tmp_path / "x").exists()


def test_catalog_entries_are_complete():
    for name, entry in CATALOG.items():
        assert entry["kind"] in ("zip", "tar.gz", "file") and entry["expected"] and entry["adapter"], name
        for f in entry["files"]:
            assert f["url"].startswith("https://") and (f["sha256"] is None or len(f["sha256"]) == 64), name
    with pytest.raises(DownloadError, match="single-file"):   # two files: use the mirror instead
        download("amazon-beauty-s3rec", "unused", url="http://127.0.0.1:9/x", progress=False)


def test_mirror_catalog_download_loads_with_adapter(server, tmp_path, monkeypatch):
    """ONEREC_DATA_MIRROR swaps the host of catalogue urls; the unpacked folder is adapter-ready."""
    srv, base = server
    (srv / "datasets" / "movielens").mkdir(parents=True)
    members = {"ml-100k/u.data": b"1\t1\t5\t874965758\n", "ml-100k/u.user": b"1|24|M|technician|85711\n",
               "ml-100k/u.item": b"1|Toy Story (1995)|01-Jan-1995||http://x|" + b"|".join([b"0"] * 19) + b"\n"}
    sha = _zip(srv / "datasets" / "movielens" / "ml-100k.zip", members)
    monkeypatch.setenv("ONEREC_DATA_MIRROR", base + "/")
    # The catalogue pins GroupLens' checksum: a different archive is refused...
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download("movielens-100k", tmp_path / "ml", progress=False)
    assert _Handler.requests[-1] == "/datasets/movielens/ml-100k.zip"
    # ...unless the caller vouches for it with its own sha256.
    dest = download("movielens-100k", tmp_path / "ml", sha256=sha, progress=False)
    assert json.loads((dest / "DOWNLOAD.json").read_text())["adapter"] == "movielens_dat"
    from onerec.data.movielens import load_dat
    ds = load_dat(dest)
    assert len(ds.impressions) == 1 and ds.items["text"].iloc[0] == "Toy Story (1995)"


def test_missing_expected_members_rejected(server, tmp_path, monkeypatch):
    srv, base = server
    (srv / "datasets" / "movielens").mkdir(parents=True)
    sha = _zip(srv / "datasets" / "movielens" / "ml-1m.zip", {"ml-1m/ratings.dat": b"1::1::5::1\n"})
    monkeypatch.setenv(dl.MIRROR_ENV, base)
    with pytest.raises(DownloadError, match="movies.dat"):
        download("movielens-1m", tmp_path / "ml1m", sha256=sha, progress=False)
    assert not (tmp_path / "ml1m").exists()


def test_http_errors(server, tmp_path):
    _, base = server
    with pytest.raises(DownloadError, match="404"):
        download("gone", tmp_path / "gone", url=f"{base}/gone.zip", progress=False)
    assert not (tmp_path / "gone").exists() and _leftovers(tmp_path, "gone") == []
