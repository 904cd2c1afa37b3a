"""The bad-input catalogue: every kind of corrupted input the KuaiRand adapter or the landed-parquet source
can receive is stopped with exit 2 and one clear first line naming the problem; nothing that looks finished
is written for the day, and the day before stays byte-for-byte untouched. A clean control day is accepted.

The inputs are a small cut of the real KuaiRand-Pure log (../shared/data): every 40th user on UTC days
2022-04-26 (ingested and validated once, as "yesterday") and 2022-04-27 (the day each corruption hits).
docs/bad_input_catalogue.md lists the same kinds with the stage that stops each; a test keeps both in step.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.cli import main
from onerec.schemas import conform, date_of
from support import REPO, copy_home, shared

PREV, D = "2022-04-26", "2022-04-27"
LOG = "log_sample_pure.csv"
YEAR_2100_MS = 4_102_444_800_000


# ------------------------------------------------------------------ the clean inputs, built once

@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """(log DataFrame, side tables) of the cut: real rows, no repeated events."""
    src = shared("kuairand_pure_partial")
    log = pd.read_csv(src / "derived" / "log_standard_4_25_to_5_08_pure.csv")
    log = log[(log["user_id"] % 40 == 0) & date_of(log["time_ms"]).isin([PREV, D]).to_numpy()]
    log = log.drop_duplicates(["user_id", "video_id", "time_ms"]).reset_index(drop=True)
    videos = pd.read_csv(src / "raw" / "video_features_basic_pure.csv")
    stats = pd.read_csv(src / "derived" / "video_features_statistic_pure.csv")
    users = pd.read_csv(src / "raw" / "user_features_pure.csv")
    side = {"video_features_basic_pure.csv": videos[videos["video_id"].isin(log["video_id"])],
            "video_features_statistic_pure.csv": stats[stats["video_id"].isin(log["video_id"])],
            "user_features_pure.csv": users[users["user_id"].isin(log["user_id"])]}
    return log, side


def write_bundle(folder: Path, log_bytes: bytes, side: dict, side_edit=None) -> Path:
    folder.mkdir(parents=True)
    (folder / LOG).write_bytes(log_bytes)
    for name, df in side.items():
        (side_edit(name, df) if side_edit else df).to_csv(folder / name, index=False)
    return folder


def csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def on_day(log: pd.DataFrame, date: str = D) -> pd.Series:
    return pd.Series(date_of(log["time_ms"]).to_numpy() == date, index=log.index)


def edit_rows(col, value, share=None, n=3):
    """A log edit: `value` into `col` of n rows (or a share of the rows) of day D."""
    def f(log):
        log = log.copy()
        rows = log.index[on_day(log)]
        rows = rows[:max(1, int(len(rows) * share))] if share else rows[:n]
        log[col] = log[col].astype(object)
        log.loc[rows, col] = value
        return csv(log)
    return f


def text_edit(fn):
    """A log edit on the CSV text."""
    return lambda log: fn(csv(log).decode()).encode()


def _truncate(text: str) -> str:
    cut = text.rindex("\n", 0, len(text) - 1)
    return text[:cut + 1] + text[cut + 1:cut + 12]        # the last line is cut 11 characters in


def _repeat_header(text: str) -> str:
    lines = text.splitlines(keepends=True)
    mid = len(lines) // 2
    return "".join(lines[:mid] + lines[:1] + lines[mid:])  # two files concatenated


def _collapse(log: pd.DataFrame) -> bytes:
    day = on_day(log)
    return csv(pd.concat([log[~day], log[day].iloc[:5]]))   # 5 rows left of ~360: a broken export


def _no_date_columns_future(log: pd.DataFrame) -> bytes:
    log = log.drop(columns=["date", "hourmin"]).copy()
    rows = log.index[on_day(log)][:7]
    log.loc[rows, "time_ms"] = YEAR_2100_MS
    return csv(log)


# kind -> (log edit, side-table edit, stage that stops it, words the error's first line must contain)
KUAIRAND = {
    "empty file": (lambda log: b"", None, "ingest", "empty file"),
    "header only": (lambda log: csv(log.iloc[:0]), None, "ingest", "a header but no rows"),
    "missing column": (lambda log: csv(log.drop(columns=["play_time_ms"])), None, "ingest",
                       "missing column(s) ['play_time_ms']"),
    "semicolon delimiter": (lambda log: log.to_csv(index=False, sep=";").encode(), None, "ingest",
                            "not comma-separated"),
    "utf-16 encoding": (lambda log: log.to_csv(index=False).encode("utf-16"), None, "ingest", "not UTF-8"),
    "gzip bytes named .csv": (lambda log: gzip.compress(csv(log)), None, "ingest", "not UTF-8"),
    "truncated file": (text_edit(_truncate), None, "ingest", "truncated"),
    "repeated header": (text_edit(_repeat_header), None, "ingest", "repeats the header"),
    "text in an id column": (edit_rows("video_id", "abc"), None, "ingest", "column video_id: 3 non-integer"),
    "float timestamp": (edit_rows("time_ms", "1650990000000.5"), None, "ingest", "column time_ms: 3 non-integer"),
    "null user id": (edit_rows("user_id", ""), None, "ingest", "column user_id: 3 empty value(s)"),
    "flag out of range": (edit_rows("is_like", 2), None, "ingest", "column is_like: 3 value(s) not 0/1"),
    "is_rand out of range": (edit_rows("is_rand", 7), None, "ingest", "column is_rand: 3 value(s) not 0/1"),
    "2% of rows in the year 2100": (edit_rows("time_ms", YEAR_2100_MS, share=0.02), None, "ingest",
                                    "time_ms disagrees with date/hourmin"),
    "impossible date 20221345": (edit_rows("date", 20221345), None, "ingest", "impossible date/hourmin"),
    "date disagrees with time_ms": (edit_rows("date", 20220430), None, "ingest",
                                    "time_ms disagrees with date/hourmin"),
    "future ts, no date column": (_no_date_columns_future, None, "ingest", "have a ts in the future"),
    "video table lacks video_duration": (
        csv, lambda name, df: df.drop(columns=["video_duration"]) if name.startswith("video_features_basic") else df,
        "ingest", "missing column(s) ['video_duration']"),
    "video table repeats a video": (
        csv, lambda name, df: pd.concat([df, df.iloc[:2]]) if name.startswith("video_features_basic") else df,
        "ingest", "2 repeated video_id"),
    "repeated events": (lambda log: csv(pd.concat([log, log[on_day(log)].iloc[:4]])), None, "validate",
                        "expect_compound_columns_to_be_unique"),
    "negative play time": (edit_rows("play_time_ms", -40), None, "validate",
                           "impressions.play_time_ms expect_column_values_to_be_between"),
    "absurd play time (10 days)": (edit_rows("play_time_ms", 864_000_000), None, "validate",
                                   "impressions.play_time_ms expect_column_values_to_be_between"),
    "negative duration": (edit_rows("duration_ms", -5000), None, "validate",
                          "impressions.duration_ms expect_column_values_to_be_between"),
    "all-zero play time": (edit_rows("play_time_ms", 0, share=1.0), None, "validate",
                           "impressions.play_time_ms expect_column_max_to_be_between"),
    "row-count collapse": (_collapse, None, "validate", "expect_table_row_count_to_be_between"),
}


# ------------------------------------------------------------------ landed parquet

@pytest.fixture(scope="module")
def landed(yesterday):
    """Day D of the cut in the contract's schemas, through the real adapter (what a production log holds)."""
    from onerec.data.kuairand import load

    ds = load(yesterday[1])
    imps = ds.impressions[date_of(ds.impressions["ts"]).to_numpy() == D].reset_index(drop=True)
    return conform(imps, "impressions"), conform(ds.items, "items"), conform(ds.users, "users")


def _loose(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False)


def _set_rows(col, value, n=3):
    def f(imps: pa.Table) -> pa.Table:
        df = imps.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
        df.loc[df.index[:n], col] = value
        return _loose(df)
    return f


def _part_files_disagree(imps: pa.Table):
    half = imps.num_rows // 2
    second = imps.slice(half).to_pandas()
    second["user_id"] = second["user_id"].astype(str)
    return [imps.slice(0, half), _loose(second)]


def _truncated_bytes(imps: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(imps, buf)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


# kind -> (impressions edit -> Table | [Table, ...] | bytes | None, stage, words of the first line)
LANDED = {
    "parquet: truncated file": (_truncated_bytes, "ingest", "not a readable parquet file"),
    "parquet: CSV bytes named .parquet": (lambda t: t.to_pandas().to_csv(index=False).encode(), "ingest",
                                          "not a readable parquet file"),
    "parquet: part files disagree on types": (_part_files_disagree, "ingest", "part files disagree on the schema"),
    "parquet: no items snapshot": ("no items", "ingest", "no items for 2022-04-27"),
    "parquet: item_id as text": (lambda t: t.set_column(t.schema.get_field_index("item_id"), "item_id",
                                                        pa.array([str(x) for x in t["item_id"].to_pylist()])),
                                 "validate", "impressions.item_id expect_column_values_to_be_of_type"),
    "parquet: unknown column": (lambda t: t.append_column("debug_flag", pa.array([1] * t.num_rows)), "validate",
                                "expect_table_columns_to_match_set"),
    "parquet: null user ids": (_set_rows("user_id", pd.NA), "validate",
                               "impressions.user_id expect_column_values_to_not_be_null"),
    "parquet: unknown item ids": (_set_rows("item_id", 10**9), "validate",
                                  "impressions.item_id expect_column_values_to_be_in_set"),
    "parquet: event from another day": (_set_rows("ts", 1_650_000_000_000), "validate",
                                        "impressions.ts expect_column_values_to_be_between"),
    "parquet: unknown source label": (_set_rows("source", "bandit"), "validate",
                                      "impressions.source expect_column_values_to_be_in_set"),
    "parquet: gen_prob above 1": (_set_rows("gen_prob", 1.5), "validate",
                                  "impressions.gen_prob expect_column_values_to_be_between"),
    "parquet: empty day": (lambda t: None, "validate", "expect_table_row_count_to_be_between"),
}

CATALOGUE = {**{k: v[2:] for k, v in KUAIRAND.items()}, **{k: v[1:] for k, v in LANDED.items()}}


def land(root: Path, imps, items: pa.Table, users: pa.Table) -> Path:
    part = root / "impressions" / f"date={D}"
    part.mkdir(parents=True)
    if isinstance(imps, (bytes, bytearray)):
        (part / "part-0.parquet").write_bytes(imps)
    elif isinstance(imps, list):
        for i, t in enumerate(imps):
            pq.write_table(t, part / f"part-{i}.parquet")
    elif imps is not None:
        pq.write_table(imps, part / "part-0.parquet")
    if items is not None:
        pq.write_table(items, root / "items.parquet")
    pq.write_table(users, root / "users.parquet")
    return root


# ------------------------------------------------------------------ running the stages

def cli(capsys, stage, date, source, path) -> tuple[int, str]:
    code = main(["run", stage, "--date", date, "--set", f"data.source={source}", "--set", f"data.path={path}"])
    return code, capsys.readouterr().err


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def yesterday(clean, tmp_path_factory):
    """An ONEREC_HOME where PREV was ingested and validated from the clean cut (copied by each test)."""
    home = tmp_path_factory.mktemp("yesterday") / "onerec_home"
    bundle = write_bundle(tmp_path_factory.mktemp("clean") / "bundle", csv(clean[0]), clean[1])
    mp = pytest.MonkeyPatch()
    mp.setenv("ONEREC_HOME", str(home))
    mp.delenv("ONEREC_FAULT", raising=False)
    try:
        for stage in ("ingest", "validate"):
            assert main(["run", stage, "--date", PREV, "--set", "data.source=kuairand",
                         "--set", f"data.path={bundle}"]) == 0
    finally:
        mp.undo()
    return home, bundle


@pytest.fixture
def home(yesterday, onerec_home):
    return copy_home(yesterday[0], onerec_home)


def run_day(capsys, home: Path, source: str, path: Path) -> tuple[int, str, str | None]:
    """ingest, then validate, of day D; returns (exit code, first stderr line, stage that stopped it)."""
    for stage in ("ingest", "validate"):
        code, err = cli(capsys, stage, D, source, path)
        if code != 0:
            return code, err, stage
    return 0, "", None


def check_stopped(home: Path, before: dict, code: int, err: str, stopped: str, stage: str, words: str):
    assert code == 2, err
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith("error: ") and words in first, first
    assert stopped == stage, (stopped, first)
    day = home / "artifacts" / "daily" / D
    assert not (day / stopped / "_SUCCESS").exists() and not (day / stopped / "manifest.json").exists()
    assert not (day / "validate" / "_SUCCESS").exists()
    assert tree_digest(home / "artifacts" / "daily" / PREV) == before     # yesterday untouched


# ------------------------------------------------------------------ the tests

def test_the_catalogue_has_at_least_20_kinds_and_the_doc_lists_each():
    assert len(CATALOGUE) >= 20
    doc = (REPO / "docs" / "bad_input_catalogue.md").read_text()
    rows = {m.group(1).strip(): (m.group(2).strip(), m.group(3).strip())
            for m in re.finditer(r"^\| ([^|]+) \| `(\w+)` \| (.+) \|$", doc, re.M)}
    assert set(rows) == set(CATALOGUE)
    for kind, (stage, words) in CATALOGUE.items():
        assert rows[kind][0] == stage, kind


def test_clean_control_day_is_accepted(home, yesterday, capsys):
    code, err, _ = run_day(capsys, home, "kuairand", yesterday[1])
    assert code == 0, err
    assert (home / "artifacts" / "daily" / D / "validate" / "_SUCCESS").is_file()


def test_clean_control_day_is_accepted_from_landed_parquet(home, landed, tmp_path, capsys):
    root = land(tmp_path / "landed", *landed)
    code, err, _ = run_day(capsys, home, "parquet", root)
    assert code == 0, err


@pytest.mark.parametrize("kind", list(KUAIRAND))
def test_corrupted_kuairand_input_exits_2(kind, home, clean, tmp_path, capsys):
    edit, side_edit, stage, words = KUAIRAND[kind]
    log, side = clean
    bundle = write_bundle(tmp_path / "bundle", edit(log), side, side_edit)
    before = tree_digest(home / "artifacts" / "daily" / PREV)
    check_stopped(home, before, *run_day(capsys, home, "kuairand", bundle), stage, words)


@pytest.mark.parametrize("kind", list(LANDED))
def test_corrupted_landed_parquet_exits_2(kind, home, landed, tmp_path, capsys):
    edit, stage, words = LANDED[kind]
    imps, items, users = landed
    if edit == "no items":
        root = land(tmp_path / "landed", imps, None, users)
    else:
        root = land(tmp_path / "landed", edit(imps), items, users)
    before = tree_digest(home / "artifacts" / "daily" / PREV)
    check_stopped(home, before, *run_day(capsys, home, "parquet", root), stage, words)


# ------------------------------------------------------------------ the on-call path: fix the input, rerun

def _ingest_runs(home: Path) -> list:
    """MLflow runs of ingest for D, oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("onerec")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`onerec.run_key` = 'daily/{D}' and "
                                                                 "tags.`onerec.stage` = 'ingest'")
    return sorted(runs, key=lambda r: r.info.start_time)


def test_on_call_fixes_the_input_and_reruns(home, clean, tmp_path, capsys):
    """Bad landed file -> exit 2; the same step rerun on a fixed file exits 0 with a NEW MLflow run (it used
    to die on MLflow's 'Changing param values is not allowed' and exit 1, which Airflow would retry forever),
    for a fixed file at a new path and for new content at the same path; every attempt stays in MLflow."""
    log, side = clean
    bad = KUAIRAND["2% of rows in the year 2100"][0](log)
    bad_path = write_bundle(tmp_path / "bad", bad, side)
    assert cli(capsys, "ingest", D, "kuairand", bad_path)[0] == 2

    fixed_path = write_bundle(tmp_path / "fixed", csv(log), side)       # 1. the fixed file at a new path
    code, err = cli(capsys, "ingest", D, "kuairand", fixed_path)
    assert code == 0, err
    ingest = home / "artifacts" / "daily" / D / "ingest"
    first_ok = json.loads((ingest / "manifest.json").read_text())

    (bad_path / LOG).write_bytes(bad)                                    # 2. same path: bad, then fixed content
    assert cli(capsys, "ingest", D, "kuairand", bad_path)[0] == 2
    assert not (ingest / "_SUCCESS").exists()
    (bad_path / LOG).write_bytes(csv(log))
    code, err = cli(capsys, "ingest", D, "kuairand", bad_path)
    assert code == 0, err
    second_ok = json.loads((ingest / "manifest.json").read_text())
    assert cli(capsys, "validate", D, "kuairand", bad_path)[0] == 0

    runs = _ingest_runs(home)
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED", "FAILED", "FINISHED"]
    assert len({r.info.run_id for r in runs}) == 4
    for failed in (runs[0], runs[2]):
        assert failed.data.tags["onerec.exit_code"] == "2"
        assert "time_ms disagrees with date/hourmin" in failed.data.tags["onerec.error"]
    assert [r.data.params["data.path"] for r in runs] == [str(bad_path), str(fixed_path), str(bad_path),
                                                          str(bad_path)]
    assert runs[1].info.run_id == first_ok["mlflow_run_id"] and runs[3].info.run_id == second_ok["mlflow_run_id"]
    # lineage: validate consumed exactly what the last ingest run committed
    validate = json.loads((home / "artifacts" / "daily" / D / "validate" / "manifest.json").read_text())
    assert runs[3].data.tags["onerec.output_digest"] == validate["input_digests"]["ingest"]


def test_an_orchestrator_retry_of_bad_data_fails_fast(home, clean, tmp_path, capsys, monkeypatch):
    """Kubeflow retries every failure (its RetryPolicy cannot look at the exit code): a retry of exit 2 under
    the same run id and the same inputs exits 2 at once, without a new MLflow run; a fixed input runs."""
    log, side = clean
    bundle = write_bundle(tmp_path / "bundle", KUAIRAND["negative play time"][0](log), side)
    monkeypatch.setenv("ONEREC_RUN_ID", "kfp:job-1")
    assert cli(capsys, "ingest", D, "kuairand", bundle)[0] == 0
    assert cli(capsys, "validate", D, "kuairand", bundle)[0] == 2
    n_runs = len(_validate_runs(home))
    code, err = cli(capsys, "validate", D, "kuairand", bundle)                # the retry
    assert code == 2 and "not retried" in err.splitlines()[0] and "play_time_ms" in err.splitlines()[0], err
    assert len(_validate_runs(home)) == n_runs
    monkeypatch.setenv("ONEREC_RUN_ID", "kfp:job-2")                          # another run recomputes
    code, err = cli(capsys, "validate", D, "kuairand", bundle)
    assert code == 2 and "not retried" not in err and "validation failed" in err, err
    (bundle / LOG).write_bytes(csv(log))                                      # fixed: the same run goes on
    assert cli(capsys, "ingest", D, "kuairand", bundle)[0] == 0
    code, err = cli(capsys, "validate", D, "kuairand", bundle)
    assert code == 0, err


def _validate_runs(home: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("onerec")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`onerec.run_key` = 'daily/{D}' and "
                                                                  "tags.`onerec.stage` = 'validate'")
