"""online_validate through the real CLI on the shared debug pipeline: real services over HTTP, the blessing, the
served impressions, and no server left behind when the stage fails or is killed."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from support import DEBUG_CONFIG, run_cli

DAY = "2026-01-02"


def _servers_under(marker: str) -> list[int]:
    """pids of live onerec.serving processes whose command line names `marker` (the stage's temp dir)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (p / "stat").read_text().split()[2]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if "onerec.serving" in cmd and marker in cmd and state != "Z":
            pids.append(int(p.name))
    return pids


def _gone(marker: str, wait_s: float = 15.0) -> bool:
    deadline = time.time() + wait_s
    while _servers_under(marker) and time.time() < deadline:
        time.sleep(0.2)
    return not _servers_under(marker)


def test_online_validate_serves_blesses_writes_back_and_never_leaves_a_server(pipeline_home, tmp_path):
    from onerec import online
    from onerec.config import load_config, resolved
    from onerec.samples import SidTable
    from onerec.schemas import DAY_MS, day_start_ms
    from onerec.store import StageDir, open_store

    env = {"ONEREC_HOME": str(pipeline_home)}
    for stage in ("reward_model", "evaluate"):
        run_cli("run", stage, "--date", DAY, "--config", DEBUG_CONFIG, env=env, check=True)

    # a failure while both services are up, then a kill -9 of the stage itself: no server survives either
    for action, code in (("raise", 1), ("kill", -9)):
        tmp = tmp_path / action
        tmp.mkdir()
        proc = run_cli("run", "online_validate", "--date", DAY, "--config", DEBUG_CONFIG,
                       env={**env, "TMPDIR": str(tmp), "ONEREC_FAULT": f"online_validate:replay:{action}"})
        assert proc.returncode == code, proc.stderr[-2000:]
        assert _gone(str(tmp)), f"{action}: services still running: {_servers_under(str(tmp))}"
    cfg = resolved(load_config(str(DEBUG_CONFIG), []))
    store = open_store(str(pipeline_home / "artifacts"))
    out = StageDir(store, "daily", DAY, "online_validate")
    assert not out.is_done()

    tmp = tmp_path / "ok"
    tmp.mkdir()
    proc = run_cli("run", "online_validate", "--date", DAY, "--config", DEBUG_CONFIG, env={**env, "TMPDIR": str(tmp)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _gone(str(tmp), wait_s=0.5)
    assert out.is_done()
    blessing = json.loads(out.read_bytes("blessing.json"))
    evaluation = json.loads(StageDir(store, "daily", DAY, "evaluate").read_bytes("metrics.json"))
    assert blessing["challenger_model"] == evaluation["evaluated_model"] == "daily/2026-01-01/pretrain"
    assert blessing["champion_version"] is None and set(blessing["arms"]) == {"challenger"}   # no champion yet
    ch = blessing["arms"]["challenger"]
    assert blessing["blessed"] is True and ch["error_rate"] == 0 and ch["invalid_rate"] == 0
    assert 0 < ch["served"] == ch["requests"] < blessing["requests"] <= cfg["online_validate"]["max_requests"] == 100
    assert 0 < ch["latency_p50_ms"] <= ch["latency_p99_ms"]
    for m in ("stay_time_s", "like", "dislike", "logged_hits"):
        s = ch["metrics"][m]
        assert s["lo"] <= s["mean"] <= s["hi"] and s["n"] == ch["served"]
    assert "no champion: absolute checks only" in blessing["reasons"]
    assert out.read_bytes("ab.png")[:4] == b"\x89PNG" and "| latency_p99_ms |" in out.read_bytes("ab.md").decode()
    # the synthetic source has a ground truth: the world itself scored the pages, and ab.md says so
    assert blessing["simulator"] == "world" and "Simulator: **world**" in out.read_bytes("ab.md").decode()

    # the challenger's pages as impressions of D+1: source model, gen_prob set, only challenger-arm users
    served = out.read_table("served_impressions")
    assert 0 < served.num_rows <= ch["served"] * cfg["online_validate"]["slate"]
    assert set(served["source"].to_pylist()) == {"model"}
    gen = served["gen_prob"].to_numpy()
    assert np.all((gen > 0) & (gen <= 1))
    ts = served["ts"].to_numpy()
    start = day_start_ms(DAY) + DAY_MS
    assert ts.min() >= start and ts.max() < start + DAY_MS
    users = served["user_id"].to_numpy()
    assert online.split(users, cfg["online_validate"]["salt"], cfg["online_validate"]["challenger_share"]).all()
    sids = SidTable.from_table(StageDir(store, "daily", "2026-01-01", "tokenize").read_table("sids"))
    assert (sids.lookup(served["item_id"].to_numpy())[:, 0] >= 0).all()     # only the challenger's own catalog
    assert pc.max(pc.value_counts(served["request_id"]).field("counts")).as_py() <= cfg["online_validate"]["slate"]

    again = run_cli("run", "online_validate", "--date", DAY, "--config", DEBUG_CONFIG, env=env, check=True)
    assert "up to date" in again.stdout + again.stderr


    # the loop closes: D+1's ingest carries exactly those impressions next to the logged ones (that features
    # keeps their source and gen_prob is tested in tests/data/test_features_reference.py)
    nxt = "2026-01-03"
    run_cli("run", "ingest", "--date", nxt, "--config", DEBUG_CONFIG, env=env, check=True)
    key = ["user_id", "item_id", "ts", "request_id", "gen_prob"]
    imps = StageDir(store, "daily", nxt, "ingest").read_table("impressions")
    from_model = imps.filter(pc.equal(imps["source"], "model"))
    assert sorted(zip(*(from_model[k].to_pylist() for k in key))) == sorted(zip(*(served[k].to_pylist() for k in key)))
    assert imps.num_rows > from_model.num_rows

    # the reward model as simulator (what logged real data gets), asked for explicitly: a new result, labelled
    run_cli("run", "online_validate", "--date", DAY, "--config", DEBUG_CONFIG, "--set",
            "online_validate.simulator=reward_model", env=env, check=True)
    rm = json.loads(out.read_bytes("blessing.json"))
    assert rm["simulator"] == "reward_model" and "Simulator: **reward model**" in out.read_bytes("ab.md").decode()
    assert rm["arms"]["challenger"]["metrics"]["stay_time_s"] != ch["metrics"]["stay_time_s"]
    bad = run_cli("run", "online_validate", "--date", DAY, "--config", DEBUG_CONFIG, "--set",
                  "online_validate.simulator=oracle", env=env)
    assert bad.returncode == 2 and "online_validate.simulator" in bad.stderr
