"""`onerec data download NAME DEST`: fetch an official public release of a dataset, verified.

Steps, each chosen so that an interrupted or tampered download never looks like a good one:
  1. stream every file to a temp folder next to DEST (same filesystem, so the final rename is atomic),
     hashing as it goes, with a tqdm progress bar;
  2. verify: sha256 where the catalogue pins one (mismatch -> DownloadError, nothing left behind), else
     the publisher's md5, else only the expected member files; the computed sha256 is always recorded;
  3. unpack (zip / tar.gz) after rejecting absolute paths, `..` and links (path traversal); a single
     top-level folder in the archive is stripped, so DEST is the dataset folder an adapter reads;
  4. write DOWNLOAD.json (name, urls, sha256s, adapter) into it and rename it into place as DEST.
A rerun whose DEST/DOWNLOAD.json matches is a no-op; any other existing DEST needs force=True.

`url=` / `sha256=` override the catalogue (single-file datasets; any NAME is accepted with `url=`), and
ONEREC_DATA_MIRROR=<base url> replaces scheme+host of catalogue urls (air-gapped sites, tests).
Errors: DownloadError (a ValueError) for bad requests, HTTP errors and failed checks; ConnectionError
when the server cannot be reached at all (worth retrying).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from tqdm import tqdm

MIRROR_ENV = "ONEREC_DATA_MIRROR"
RECORD = "DOWNLOAD.json"
_S3REC = "https://raw.githubusercontent.com/aHuiWang/CIKM2020-S3Rec/49a890dcb516c9ed3126564495234ea74d5cd566/data"

# sha256/md5: None where no published value is known; such files are checked by their expected members.
CATALOG = {
    "movielens-100k": {
        "kind": "zip", "adapter": "movielens_dat",
        "files": [{"url": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                   "sha256": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
                   "md5": "0e33842e24a9c977be4e0107933c0723"}],   # md5: GroupLens' ml-100k.zip.md5
        "expected": ["u.data", "u.item", "u.user"],
    },
    "movielens-1m": {
        "kind": "zip", "adapter": "movielens_dat",
        "files": [{"url": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                   "sha256": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
                   "md5": "c4d9eecfca2ab87c1945afe126590906"}],
        "expected": ["ratings.dat", "movies.dat", "users.dat"],
    },
    "kuairand-pure": {   # KuaiRand README's Zenodo record; 45 MB compressed, 194 MB unpacked
        "kind": "tar.gz", "adapter": "kuairand",
        "files": [{"url": "https://zenodo.org/records/10439422/files/KuaiRand-Pure.tar.gz", "sha256": None}],
        "expected": ["log_standard_4_08_to_4_21_pure.csv", "log_standard_4_22_to_5_08_pure.csv",
                     "log_random_4_22_to_5_08_pure.csv", "user_features_pure.csv",
                     "video_features_basic_pure.csv", "video_features_statistic_pure.csv"],
    },
    "amazon-beauty-s3rec": {   # pinned commit; hashes of the files as committed there
        "kind": "file", "adapter": "amazon_s3rec",
        "files": [{"url": f"{_S3REC}/Beauty.txt",
                   "sha256": "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8"},
                  {"url": f"{_S3REC}/Beauty_item2attributes.json",
                   "sha256": "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4"}],
        "expected": ["Beauty.txt", "Beauty_item2attributes.json"],
    },
}


class DownloadError(ValueError):
    """Bad request (unknown name, bad override), failed verification or an unsafe archive."""


def download(name: str, dest, *, url: str | None = None, sha256: str | None = None, force: bool = False,
             progress: bool = True) -> Path:
    """Download dataset `name` into folder `dest` (created) and return its path."""
    entry = _entry(name, url, sha256)
    dest = Path(dest).resolve()
    if dest.exists():
        if not force and _matches(dest, name, entry):
            return dest   # verified earlier: nothing to do
        if not force:
            raise DownloadError(f"{dest} exists and is not a verified download of {name!r} (pass force=True)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        content = work / "content"
        content.mkdir()
        records = []
        for f in entry["files"]:
            part = work / "download.part"
            digest = _fetch(f["url"], part, progress)
            records.append({"url": f["url"], "sha256": digest["sha256"], "verified": _verify(f, digest)})
            if entry["kind"] == "zip":
                _unzip(part, content)
            elif entry["kind"] == "tar.gz":
                _untar(part, content)
            else:
                os.replace(part, content / _basename(f["url"]))
            part.unlink(missing_ok=True)
        root = _strip_single_folder(content) if entry["kind"] != "file" else content
        missing = [e for e in entry["expected"] if not (root / e).exists() and not any(root.rglob(e))]
        if missing:
            raise DownloadError(f"{name}: download lacks expected file(s) {missing}")
        (root / RECORD).write_text(json.dumps({
            "name": name, "adapter": entry["adapter"], "kind": entry["kind"], "files": records,
            "downloaded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }, indent=2) + "\n")
        if dest.exists():   # force: swap the old copy out only once the new one is complete
            old = work / "old"
            os.replace(dest, old)
        os.replace(root, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def _entry(name: str, url: str | None, sha256: str | None) -> dict:
    if name in CATALOG:
        entry = json.loads(json.dumps(CATALOG[name]))   # deep copy: overrides must not leak into CATALOG
        mirror = os.environ.get(MIRROR_ENV)
        if mirror:
            for f in entry["files"]:
                f["url"] = _mirrored(f["url"], mirror)
    elif url is not None:   # ad-hoc dataset: the archive kind follows the file name
        entry = {"kind": _kind(url), "adapter": None, "files": [{"url": url, "sha256": None}], "expected": []}
    else:
        raise DownloadError(f"unknown dataset {name!r}; known: {', '.join(sorted(CATALOG))}")
    if url is not None or sha256 is not None:
        if len(entry["files"]) != 1:
            raise DownloadError(f"{name}: url=/sha256= overrides need a single-file dataset; "
                                f"use {MIRROR_ENV} to point all of its files elsewhere")
        f = entry["files"][0]
        if url is not None:
            f["url"] = url   # the catalogue's checksums still apply: it must be the same release
        if sha256 is not None:
            if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
                raise DownloadError(f"sha256 must be 64 hex digits, got {sha256!r}")
            f["sha256"], f["md5"] = sha256.lower(), None
    return entry


def _mirrored(url: str, mirror: str) -> str:
    parts = urlsplit(url)
    return mirror.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def _kind(url: str) -> str:
    path = urlsplit(url).path.lower()
    return "zip" if path.endswith(".zip") else "tar.gz" if path.endswith((".tar.gz", ".tgz")) else "file"


def _basename(url: str) -> str:
    name = PurePosixPath(urlsplit(url).path).name
    if not name or name in (".", ".."):
        raise DownloadError(f"cannot name a file after url {url!r}")
    return name


def _matches(dest: Path, name: str, entry: dict) -> bool:
    try:
        record = json.loads((dest / RECORD).read_text())
    except (OSError, ValueError):
        return False
    got = record.get("files", [])
    return (record.get("name") == name and len(got) == len(entry["files"])
            and all(f.get("sha256") in (None, g.get("sha256")) for f, g in zip(entry["files"], got)))


def _fetch(url: str, out: Path, progress: bool) -> dict:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    request = urllib.request.Request(url, headers={"User-Agent": "onerec-data-download"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r, open(out, "wb") as f, \
                tqdm(total=int(r.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                     desc=_basename(url), disable=not progress) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                sha.update(chunk)
                md5.update(chunk)
                bar.update(len(chunk))
    except urllib.error.HTTPError as e:   # the server answered: wrong url, a request problem
        raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:    # no answer: network trouble, retrying may help
        raise ConnectionError(f"cannot reach {url}: {e.reason}") from None
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def _verify(f: dict, digest: dict) -> str:
    for algo in ("sha256", "md5"):
        if f.get(algo):
            if digest[algo] != f[algo].lower():
                raise DownloadError(f"{algo} mismatch for {f['url']}: expected {f[algo]}, got {digest[algo]}")
            return algo
    return "members"


def _check_member(name: str) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in p.parts:
        raise DownloadError(f"unsafe path in archive: {name!r}")


def _unzip(archive: Path, out: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():   # check everything before writing anything
                _check_member(member)
            z.extractall(out)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"not a valid zip archive: {e}") from None


def _untar(archive: Path, out: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as t:
            members = t.getmembers()
            for m in members:
                _check_member(m.name)
                if not (m.isfile() or m.isdir()):   # links and devices could point outside `out`
                    raise DownloadError(f"unsupported archive member (link or special file): {m.name!r}")
            t.extractall(out, members=members, filter="data")
    except tarfile.TarError as e:
        raise DownloadError(f"not a valid tar archive: {e}") from None


def _strip_single_folder(content: Path) -> Path:
    entries = [p for p in content.iterdir() if p.name != "__MACOSX"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else content
