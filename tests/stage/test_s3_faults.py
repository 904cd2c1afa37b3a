"""A flaky S3 mid-stage: moto's server behind a fault-injecting proxy on 127.0.0.1.

The proxy forwards every request to moto, except those a test's plan picks: it drops the connection without
answering, answers 500 / 503 (S3's InternalError / SlowDown), or sends half a GET body and closes. Whatever
happens, a stage either completes with every output intact, or fails retryably (exit 1) leaving no `_SUCCESS`
(and no manifest) over partial outputs; the rerun after the fault completes.
"""
from __future__ import annotations

import http.client
import http.server
import json
import socket
import socketserver
import threading

import pytest

from components.cli import main
from support import DEBUG_CONFIG

D = "2026-01-02"


class FaultProxy:
    """`plan(method, key, n) -> None | "drop" | "500" | "503" | "truncate"`; n counts requests per method."""

    def __init__(self, upstream: str):
        self.upstream = upstream.removeprefix("http://")
        self.plan = lambda method, key, n: None
        self.counts: dict[str, int] = {}
        self.injected: list[tuple[str, str, str]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass
                            return out
                        out += chunk
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                body = self._body()
                key = self.path.split("?")[0]
                n = proxy.counts[self.command] = proxy.counts.get(self.command, 0) + 1
                fault = proxy.plan(self.command, key, n)
                if fault:
                    proxy.injected.append((self.command, key, fault))
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault in ("500", "503"):
                    code = "InternalError" if fault == "500" else "SlowDown"
                    payload = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
                    self.send_response(int(fault))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding",)}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    if fault == "truncate" and len(data) > 1:
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _handle

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(s3_env, s3_server, onerec_home, monkeypatch):
    """(proxy, bucket, a boto3 client straight to moto): the stages talk to S3 through the proxy."""
    import boto3

    with FaultProxy(s3_server) as proxy:
        monkeypatch.setenv("ONEREC_S3_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("ONEREC_S3_MAX_ATTEMPTS", "3")
        yield proxy, s3_env, boto3.client("s3", endpoint_url=s3_server)


def stage(name: str, bucket: str, *extra) -> int:
    """The CLI in-process; an uncaught exception is what the `onerec` process turns into exit 1."""
    try:
        return main(["run", name, "--date", D, "--config", str(DEBUG_CONFIG),
                     "--set", f"store.root=s3://{bucket}/artifacts", *extra])
    except Exception as e:   # noqa: BLE001 - exactly the interpreter's behaviour for `onerec`: traceback, exit 1
        print(f"uncaught: {type(e).__name__}: {e}")
        return 1


def keys(s3, bucket: str, stage_name: str) -> set[str]:
    prefix = f"artifacts/daily/{D}/{stage_name}/"
    return {o["Key"][len(prefix):] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}


def assert_intact(s3, bucket: str, stage_name: str) -> dict:
    """_SUCCESS present and every output the manifest names is in S3 with the manifest's sha256."""
    import hashlib

    prefix = f"artifacts/daily/{D}/{stage_name}/"
    assert "_SUCCESS" in keys(s3, bucket, stage_name)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read())
    for name, meta in manifest["outputs"].items():
        data = s3.get_object(Bucket=bucket, Key=prefix + name)["Body"].read()
        assert hashlib.sha256(data).hexdigest() == meta["sha256"] and len(data) == meta["bytes"], name
    return manifest


def test_transient_faults_are_ridden_out(flaky, capsys):
    """Every 3rd PUT dropped, every 4th GET a 500, every 5th HEAD a 503, every 2nd body read cut in half:
    ingest and validate complete with intact outputs, and a rerun is a no-op."""
    proxy, bucket, s3 = flaky
    faults = {"PUT": (3, "drop"), "GET": (4, "500"), "HEAD": (5, "503")}

    def plan(method, key, n):
        every, fault = faults.get(method, (0, None))
        if method == "GET" and "list-type" not in key and n % 2 == 0 and key.endswith(".parquet"):
            return "truncate"
        return fault if every and n % every == 0 else None

    proxy.plan = plan
    assert stage("ingest", bucket) == 0
    assert stage("validate", bucket) == 0
    kinds = {f for _, _, f in proxy.injected}
    assert {"drop", "500", "503", "truncate"} <= kinds, proxy.injected
    ingest = assert_intact(s3, bucket, "ingest")
    assert assert_intact(s3, bucket, "validate")["input_digests"]["ingest"]
    assert stage("ingest", bucket) == 0 and "up to date" in capsys.readouterr().out
    assert json.loads(s3.get_object(Bucket=bucket, Key=f"artifacts/daily/{D}/ingest/manifest.json")["Body"].read()
                      )["mlflow_run_id"] == ingest["mlflow_run_id"]


@pytest.mark.parametrize("target, fault", [("impressions.parquet", "503"), ("manifest.json", "drop"),
                                           ("_SUCCESS", "500")])
def test_an_outage_mid_stage_fails_retryably_and_the_rerun_completes(flaky, target, fault):
    """S3 refuses every PUT of one object (an output, the manifest, the _SUCCESS marker itself) for longer
    than the client retries: exit 1, no _SUCCESS over the partial outputs; healed, the rerun completes."""
    proxy, bucket, s3 = flaky
    proxy.plan = lambda method, key, n: fault if method == "PUT" and key.endswith("/ingest/" + target) else None
    assert stage("ingest", bucket) == 1
    left = keys(s3, bucket, "ingest")
    assert "_SUCCESS" not in left
    if target != "_SUCCESS":
        assert "manifest.json" not in left
    assert stage("validate", bucket) == 2          # downstream refuses the unfinished day: "run it first"
    proxy.plan = lambda method, key, n: None
    assert stage("ingest", bucket) == 0
    assert_intact(s3, bucket, "ingest")


def test_reads_failing_for_good_are_retryable_not_bad_data(flaky):
    """validate cannot read ingest's impressions (every GET of it 503, or cut short): exit 1 (retry), not exit 2
    (which would tell the orchestrator the data is bad), no validate _SUCCESS; healed, it completes."""
    proxy, bucket, s3 = flaky
    assert stage("ingest", bucket) == 0
    for fault in ("503", "truncate"):
        proxy.plan = lambda method, key, n: fault if method == "GET" and key.endswith("ingest/impressions.parquet") \
            else None
        assert stage("validate", bucket) == 1, fault
        assert "_SUCCESS" not in keys(s3, bucket, "validate")
    proxy.plan = lambda method, key, n: None
    assert stage("validate", bucket) == 0
    assert_intact(s3, bucket, "validate")
