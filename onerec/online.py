"""Online validation: a champion/challenger A/B replay over HTTP, simulated feedback, a blessing.

The pieces `components/online_validate.py` puts together, each testable alone:
- `Service`: the recommendation service (`python -m onerec.serving`) as a child process on 127.0.0.1 and a free
  port, stopped on leaving the `with` block whatever happened inside it, and also when the parent dies
  (PR_SET_PDEATHSIG), so a killed stage never leaves a server behind;
- `requests_of_day` / `split`: the logged requests of a day and a deterministic user split between the arms;
- `replay`: every request sent over HTTP to its arm, wall-clock latency measured at the client;
- `PlayTimeMap`: the reward model's watch-time percentile q -> play time in ms, through the day's empirical
  play-time quantiles within the item's duration bucket (the same buckets as the features stage);
- `mean_ci` / `diff_ci`: normal-approximation confidence intervals of a per-request mean and of the difference of
  two arms' means (Welch: unequal variances, independent user groups);
- `bless`: the blessing with one reason per check.
"""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# guarded per-request metrics: name -> the direction that is better
GUARDS = {"stay_time_s": "higher", "like": "higher", "follow": "higher", "comment": "higher", "forward": "higher",
          "dislike": "lower"}


# ---------------------------------------------------------------------------------------------------------
# the service as a child process

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():   # runs in the child between fork and exec
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:   # not glibc / not Linux: the `with` block still stops the child
        pass


class Service:
    """`with Service(args) as url:` runs `python -m onerec.serving <args> --host 127.0.0.1 --port <free>`;
    `start()` + `wait()` + `stop()` do the same in steps (several services loading at once)."""

    def __init__(self, args: list[str], name: str, start_timeout_s: float = 120.0, env: dict | None = None):
        self.args, self.name, self.start_timeout_s = list(args), name, start_timeout_s
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"onerec-{name}-", suffix=".log", delete=False)
        self.url = ""

    def start(self) -> "Service":
        """Launch the process (returns at once: start every arm, then `wait` for each, so they load in parallel)."""
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "onerec.serving", *self.args, "--host", "127.0.0.1", "--port", str(port)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        return self

    def wait(self) -> str:
        """Block until GET /healthz answers 200; the URL. A process that exits or stays unready raises."""
        import httpx

        deadline = time.time() + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {self.name} service exited with {self.proc.returncode} before it was "
                                   f"ready: {self.tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2.0).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"the {self.name} service was not ready within {self.start_timeout_s:.0f} s: "
                                   f"{self.tail()}")
            time.sleep(0.2)

    def __enter__(self) -> str:
        try:
            return self.start().wait()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def tail(self, chars: int = 1500) -> str:
        self.log.flush()
        with open(self.log.name, "rb") as fh:
            return fh.read()[-chars:].decode(errors="replace").strip().replace("\n", " | ")


# ---------------------------------------------------------------------------------------------------------
# requests and the split

def _hash01(values, salt: str) -> np.ndarray:
    """A stable pseudo-uniform number in [0, 1) per value (independent of process, platform and order)."""
    return np.array([int.from_bytes(hashlib.sha256(f"{salt}:{v}".encode()).digest()[:8], "big") / 2**64
                     for v in values], dtype=np.float64)


def split(user_ids, salt: str, challenger_share: float) -> np.ndarray:
    """True where the user belongs to the challenger arm: a deterministic, salted hash of the user id."""
    return _hash01(np.asarray(user_ids).tolist(), salt) < challenger_share


@dataclass
class Requests:
    request_id: np.ndarray   # (R,) the logged request ids
    user_id: np.ndarray      # (R,)
    ts: np.ndarray           # (R,) ms of the request's first impression: the context is taken as of then
    logged: list[dict] = field(default_factory=list)   # per request: item_id -> the logged feedback row


FEEDBACK = ("play_time_ms", "duration_ms", "click", "like", "follow", "comment", "forward", "dislike")


def requests_of_day(impressions: pa.Table, max_requests: int, salt: str) -> Requests:
    """The day's logged requests (impressions not served by our own replay, source != 'model'), ordered by
    time; beyond `max_requests`, a stable hashed subset of them (the same requests on every rerun)."""
    logged = impressions.filter(pc.invert(pc.fill_null(pc.equal(impressions["source"], "model"), False)))
    df = logged.select(["request_id", "user_id", "item_id", "ts", *FEEDBACK]).to_pandas()
    first = df.sort_values(["ts", "request_id"], kind="stable").groupby("request_id", sort=False).head(1)
    if len(first) > max_requests:
        keep = np.argsort(_hash01(first["request_id"].tolist(), salt), kind="stable")[:max_requests]
        first = first.iloc[np.sort(keep)]
    first = first.sort_values(["ts", "request_id"], kind="stable")
    rows = {rid: g for rid, g in df[df["request_id"].isin(first["request_id"])].groupby("request_id")}
    logged_items = [{int(r.item_id): {k: getattr(r, k) for k in FEEDBACK} for r in rows[rid].itertuples()}
                    for rid in first["request_id"]]
    return Requests(first["request_id"].to_numpy(), first["user_id"].to_numpy(np.int64),
                    first["ts"].to_numpy(np.int64), logged_items)


# ---------------------------------------------------------------------------------------------------------
# replay

@dataclass
class Reply:
    """One replayed request's outcome."""
    index: int                       # into Requests
    arm: str
    status: int                      # HTTP status, 0 = no response (timeout, connection error)
    latency_ms: float
    items: list[dict] = field(default_factory=list)   # item_id, score, gen_prob, sid
    served_request_id: str = ""
    model_version: str = ""


def replay(reqs: Requests, arm_of: np.ndarray, urls: dict[str, str], *, n: int, beam_size: int,
           timeout_s: float = 30.0, warmup: int = 3, progress: bool = True) -> list[Reply]:
    """Send each request (in time order) to its arm's service; `warmup` uncounted requests per arm first
    (thread pools and allocator caches are cold in a fresh process)."""
    import httpx
    from tqdm import tqdm

    def body(i):
        return {"user_id": int(reqs.user_id[i]), "as_of_ms": int(reqs.ts[i]), "n": n, "beam_size": beam_size}

    out: list[Reply] = []
    with httpx.Client(timeout=timeout_s) as client:
        for arm, url in urls.items():
            mine = np.nonzero(arm_of == arm)[0][:warmup]
            for i in mine:
                try:
                    client.post(url + "/recommend", json=body(i))
                except httpx.HTTPError:
                    pass
        for i in tqdm(range(len(reqs.ts)), desc="replay", unit="req", disable=not progress, mininterval=2.0):
            arm = str(arm_of[i])
            if arm not in urls:
                continue
            t0 = time.perf_counter()
            try:
                r = client.post(urls[arm] + "/recommend", json=body(i))
                status, data = r.status_code, (r.json() if r.status_code == 200 else {})
            except (httpx.HTTPError, ValueError):
                status, data = 0, {}
            ms = (time.perf_counter() - t0) * 1000
            out.append(Reply(i, arm, status, ms, data.get("items") or [], data.get("request_id", ""),
                              data.get("model_version", "")))
    return out


# ---------------------------------------------------------------------------------------------------------
# simulated feedback

class PlayTimeMap:
    """q (the percentile of a play among the user's plays of the same duration bucket) -> play time, through the
    empirical quantiles of the day's plays in the item's bucket; buckets with fewer than `min_plays` plays use
    q * duration (the fraction watched)."""

    def __init__(self, play_ms, duration_ms, *, beta: float = 2.0, eps: float = 1e-6, unit_ms: float = 1000.0,
                 min_plays: int = 20):
        self.beta, self.eps, self.unit_ms, self.min_plays = beta, eps, unit_ms, min_plays
        play, dur = np.asarray(play_ms, np.float64), np.asarray(duration_ms, np.float64)
        b = self.bucket(dur)
        self.plays = {int(k): np.sort(play[b == k]) for k in np.unique(b)}

    def bucket(self, duration_ms) -> np.ndarray:
        from onerec.features.reward import duration_bucket

        return np.nan_to_num(duration_bucket(duration_ms, self.beta, self.eps, self.unit_ms), nan=-(2**31)).astype(np.int64)

    def __call__(self, q, duration_ms) -> np.ndarray:
        q, dur = np.clip(np.asarray(q, np.float64), 0, 1), np.asarray(duration_ms, np.float64)
        out = q * dur
        for i, b in enumerate(self.bucket(dur)):
            plays = self.plays.get(int(b))
            if plays is not None and len(plays) >= self.min_plays:
                out[i] = np.quantile(plays, q[i])
        return out


# ---------------------------------------------------------------------------------------------------------
# statistics and the blessing

def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def mean_ci(x, confidence: float = 0.95) -> dict:
    """Mean and its normal-approximation interval; a single value (or none) has no interval width to estimate."""
    x = np.asarray(x, np.float64)
    if not len(x):
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    m = float(x.mean())
    half = _z(confidence) * float(x.std(ddof=1)) / np.sqrt(len(x)) if len(x) > 1 else float("inf")
    return {"mean": m, "lo": m - half, "hi": m + half, "n": int(len(x))}


def diff_ci(a, b, confidence: float = 0.95) -> dict:
    """mean(a) - mean(b) with a Welch normal-approximation interval (independent groups)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan")}
    d = float(a.mean() - b.mean())
    half = _z(confidence) * float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))
    return {"diff": d, "lo": d - half, "hi": d + half}


def arm_summary(served: list[Reply], per_request: dict[str, np.ndarray], invalid: np.ndarray,
                confidence: float = 0.95) -> dict:
    """Latency, error and invalid rates, and each per-request metric with its interval, for one arm."""
    lat = np.array([s.latency_ms for s in served], np.float64)
    ok = np.array([s.status == 200 for s in served], bool)
    out = {"requests": len(served), "served": int(ok.sum()),
           "error_rate": float(1 - ok.mean()) if len(ok) else float("nan"),
           "invalid_rate": float(invalid.mean()) if len(invalid) else 0.0,
           "invalid_items": int(invalid.sum()),
           "latency_p50_ms": float(np.percentile(lat[ok], 50)) if ok.any() else None,
           "latency_p99_ms": float(np.percentile(lat[ok], 99)) if ok.any() else None,
           "metrics": {k: mean_ci(v, confidence) for k, v in per_request.items()}}
    return out


def bless(arms: dict, diffs: dict, section: dict) -> tuple[bool, list[str]]:
    """(blessed, reasons): the challenger must serve without errors or invalid items within the latency SLO, and
    no guarded metric may be significantly worse than the champion's by more than the relative tolerance (the
    whole confidence interval of challenger - champion beyond -tolerance x |champion|)."""
    reasons, ok = [], True
    ch = arms["challenger"]

    def check(good: bool, line: str):
        nonlocal ok
        ok &= bool(good)
        reasons.append(("ok: " if good else "FAIL: ") + line)

    check(ch["served"] > 0, f"challenger served {ch['served']} of {ch['requests']} requests")
    max_err = float(section.get("max_error_rate", 0.0))
    check(ch["error_rate"] <= max_err, f"challenger error_rate {ch['error_rate']:.4f} <= {max_err}")
    check(ch["invalid_rate"] <= 0.0, f"challenger invalid_rate {ch['invalid_rate']:.4f} == 0")
    slo = section.get("latency_p99_ms")
    if slo is not None:
        p99 = ch["latency_p99_ms"]
        check(p99 is not None and p99 <= float(slo), f"challenger latency p99 {p99 if p99 is None else round(p99, 1)} ms "
                                                     f"<= {slo} ms")
    if "champion" not in arms:
        reasons.append("no champion: absolute checks only")
        return ok, reasons
    tol = float(section.get("tolerance", 0.05))
    for metric, direction in (section.get("guards") or GUARDS).items():
        d, base = diffs.get(metric), arms["champion"]["metrics"].get(metric, {}).get("mean")
        if d is None or base is None or not np.isfinite(d["diff"]):
            reasons.append(f"{metric}: too few requests for an interval, not judged")
            continue
        margin = tol * abs(base)
        if direction == "lower":
            check(d["lo"] <= margin, f"{metric}: challenger - champion {d['diff']:+.4f} "
                                     f"[{d['lo']:+.4f}, {d['hi']:+.4f}], not above +{margin:.4f}")
        else:
            check(d["hi"] >= -margin, f"{metric}: challenger - champion {d['diff']:+.4f} "
                                      f"[{d['lo']:+.4f}, {d['hi']:+.4f}], not below -{margin:.4f}")
    return ok, reasons
