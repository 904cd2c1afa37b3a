"""Artifact store: a local directory or `s3://bucket/prefix`, behind one small interface.

Layout: `<root>/<pipeline>/<date>/<stage>/...`. The commit protocol that makes crashes safe:
outputs first, then `manifest.json`, then `_SUCCESS`. Readers trust a stage directory only when
`_SUCCESS` exists; a redo deletes `_SUCCESS` before anything else, so an interrupted redo can never
leave an old marker next to half-new outputs.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from onerec.errors import BadInput

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"


class LocalStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def write_bytes(self, key: str, data: bytes) -> None:
        # Write to a temp file in the same directory and rename: a reader never sees half a file.
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read_bytes(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"no artifact at {self.uri(key)}") from None

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.root / prefix, ignore_errors=True)


class S3Store:
    """S3 (or any S3 API: MinIO, moto) via boto3. The endpoint comes from AWS_ENDPOINT_URL /
    MLFLOW_S3_ENDPOINT_URL / ONEREC_S3_ENDPOINT_URL so the same code talks to AWS or a local server."""

    def __init__(self, uri: str):
        import boto3

        rest = uri[len("s3://"):]
        self.bucket, _, prefix = rest.partition("/")
        if not self.bucket:
            raise BadInput(f"bad S3 URI {uri!r}: expected s3://bucket/prefix")
        self.prefix = prefix.strip("/")
        endpoint = (os.environ.get("ONEREC_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
                    or os.environ.get("MLFLOW_S3_ENDPOINT_URL"))
        from botocore.config import Config

        # 5xx, throttling and dropped connections are retried by botocore (standard mode, with backoff); what
        # is still failing after that escapes as an exception: exit 1, retryable, nothing committed.
        self.attempts = int(os.environ.get("ONEREC_S3_MAX_ATTEMPTS", 5))
        self.client = boto3.client("s3", endpoint_url=endpoint, config=Config(
            retries={"mode": "standard", "max_attempts": self.attempts}, connect_timeout=10, read_timeout=60))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)  # S3 PUT is atomic per object

    def read_bytes(self, key: str) -> bytes:
        """The whole object. botocore retries the request, not the body's download: a connection dropped
        mid-body (IncompleteReadError, ResponseStreamingError) is retried here, and a short body never
        passes for the object."""
        from botocore.exceptions import ConnectionClosedError, IncompleteReadError, ResponseStreamingError

        for attempt in range(self.attempts):
            try:
                obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
                data = obj["Body"].read()
            except self.client.exceptions.NoSuchKey:
                raise FileNotFoundError(f"no artifact at {self.uri(key)}") from None
            except (IncompleteReadError, ResponseStreamingError, ConnectionClosedError):
                if attempt + 1 == self.attempts:
                    raise
                continue
            if obj.get("ContentLength") in (None, len(data)):
                return data
            if attempt + 1 == self.attempts:
                raise OSError(f"{self.uri(key)}: read {len(data)} of {obj['ContentLength']} bytes")
        raise AssertionError("unreachable")

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix).rstrip("/") + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            keys += [o["Key"][strip:] for o in page.get("Contents", [])]
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self._key(k)} for k in keys[i:i + 1000]], "Quiet": True})


Store = LocalStore | S3Store


def open_store(root: str) -> Store:
    return S3Store(root) if str(root).startswith("s3://") else LocalStore(root)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def table_to_parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


class StageDir:
    """One stage's output directory for one date: `<pipeline>/<date>/<stage>/`."""

    def __init__(self, store: Store, pipeline: str, date: str, stage: str):
        self.store, self.pipeline, self.date, self.stage = store, pipeline, date, stage
        self.prefix = f"{pipeline}/{date}/{stage}"
        self.outputs: dict[str, dict] = {}  # name -> {sha256, bytes}, filled as outputs are written

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def uri(self, name: str = "") -> str:
        return self.store.uri(self.key(name) if name else self.prefix)

    # -- state -------------------------------------------------------------------------------
    def is_done(self) -> bool:
        return self.store.exists(self.key(SUCCESS))

    def manifest(self) -> dict:
        return json.loads(self.store.read_bytes(self.key(MANIFEST)))

    def reset(self) -> None:
        """Forget everything; `_SUCCESS` goes first so a crash mid-reset leaves nothing trusted."""
        self.store.delete(self.key(SUCCESS))
        self.store.delete(self.key(MANIFEST))
        self.store.delete_prefix(self.prefix)
        self.outputs = {}

    def commit(self, manifest: dict) -> None:
        manifest = {**manifest, "outputs": self.outputs}
        self.store.write_bytes(self.key(MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode())
        self.store.write_bytes(self.key(SUCCESS), b"")

    # -- outputs -----------------------------------------------------------------------------
    def write_bytes(self, name: str, data: bytes) -> str:
        self.store.write_bytes(self.key(name), data)
        self.outputs[name] = {"sha256": sha256(data), "bytes": len(data)}
        return self.uri(name)

    def write_table(self, name: str, table: pa.Table) -> str:
        return self.write_bytes(f"{name}.parquet", table_to_parquet(table))

    def write_json(self, name: str, obj) -> str:
        return self.write_bytes(name, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    # -- inputs ------------------------------------------------------------------------------
    def read_bytes(self, name: str) -> bytes:
        return self.store.read_bytes(self.key(name))

    def read_table(self, name: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(f"{name}.parquet")))

    def digest(self) -> str:
        """Content digest of a finished stage: the hash of its outputs' hashes."""
        outputs = self.manifest()["outputs"]
        return sha256(json.dumps(outputs, sort_keys=True).encode())
