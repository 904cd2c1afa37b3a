"""Adapters from public formats into the data contract: counts on the real files (skipped when the
shared data folder is absent), field mappings and error handling on tiny crafted folders."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from onerec.data import load_dataset
from onerec.data._frames import MissingFile
from onerec.data.timestamps import order_to_ts
from onerec.schemas import DAY_MS, IMPRESSIONS, ITEMS, USERS, SchemaError, conform, date_of, day_start_ms


def check_contract(ds):
    """Every adapter's output: canonical columns first, casts again unchanged, sorted, int64 ids."""
    for df, table, schema in ((ds.impressions, "impressions", IMPRESSIONS), (ds.items, "items", ITEMS),
                              (ds.users, "users", USERS)):
        assert list(df.columns[: len(schema)]) == schema.names, table
        again = conform(df, table)   # round-trips: list columns as arrays, nullable ints as Int64
        for f in schema:
            assert again.schema.field(f.name).type == f.type
    assert list(ds.impressions.columns) == IMPRESSIONS.names   # closed table
    imp = ds.impressions
    key = imp[["ts", "user_id", "item_id"]].to_numpy()
    assert (np.lexsort(key.T[::-1]) == np.arange(len(imp))).all(), "impressions not sorted by (ts, user, item)"
    assert imp["user_id"].dtype == np.int64 and imp["item_id"].dtype == np.int64
    assert ds.items["item_id"].is_unique and ds.users["user_id"].is_unique
    assert set(imp["item_id"]) <= set(ds.items["item_id"]) and set(imp["user_id"]) <= set(ds.users["user_id"])
    first = imp.groupby("item_id")["ts"].min()
    assert (ds.items.set_index("item_id")["first_seen"].reindex(first.index) <= first).all()
    assert set(imp["source"]) <= {"legacy", "random"}


# ---------------------------------------------------------------- synthetic timestamps

def test_order_to_ts_invariants():
    rng = np.random.default_rng(0)
    lengths = [0, 1, 2, 3, 29, 30, 31, 75] + list(rng.integers(1, 60, size=200))
    ts = order_to_ts(lengths, start_date="2024-01-01", n_days=30)
    assert ts.dtype == np.int64 and len(ts) == sum(lengths)
    start, pos = day_start_ms("2024-01-01"), 0
    for n in lengths:
        user = ts[pos: pos + n]
        pos += n
        if n == 0:
            continue
        assert (np.diff(user) > 0).all(), "order within a user must be preserved"
        days = (user - start) // DAY_MS
        assert days.min() >= 0 and days[-1] == 29, "last (test) item on the last day"
        if n >= 2:
            assert days[-2] == 28, "second-to-last (validation) item on the day before"
    dates = date_of(ts)
    assert dates.min() == "2024-01-01" and dates.max() == "2024-01-30"


def test_order_to_ts_accepts_sequences_and_checks_args():
    assert (order_to_ts([[5, 6, 7], [8]], n_days=10) == order_to_ts([3, 1], n_days=10)).all()
    assert order_to_ts([1], start_date="2020-03-01", n_days=2)[0] == day_start_ms("2020-03-01") + DAY_MS + 1000
    with pytest.raises(ValueError):
        order_to_ts([3], n_days=1)


# ---------------------------------------------------------------- KuaiRand (real files)

def test_kuairand_counts_and_mapping(kuairand):
    check_contract(kuairand)
    imp, items, users = kuairand.impressions, kuairand.items, kuairand.users
    assert len(imp) == 228_329
    assert imp["user_id"].nunique() == 25_156 and imp["item_id"].nunique() == 6_361
    assert len(items) == 7_583 and len(users) == 27_285
    assert imp["dislike"].sum() == 190 and imp["like"].sum() == 3_915
    assert imp["follow"].sum() == 304 and imp["comment"].sum() == 579 and imp["forward"].sum() == 195
    assert (imp["source"] == "legacy").all() and imp["gen_prob"].isna().all()   # this slice has no is_rand rows
    # 14 Beijing days 2022-04-25..05-08 are 15 UTC dates: Beijing 00:00-08:00 is the previous UTC day.
    dates = date_of(imp["ts"])
    assert dates.nunique() == 15 and dates.min() == "2022-04-24" and dates.max() == "2022-05-08"
    assert kuairand.info["n_utc_dates"] == 15
    row = imp.iloc[0]
    assert row["request_id"] == f"{row['user_id']}-{row['ts']}"
    assert imp["play_time_ms"].dtype == np.int64 and imp["duration_ms"].notna().all()


def test_kuairand_items_and_users(kuairand):
    items = kuairand.items.set_index("item_id")
    stats = [c for c in items.columns if c.startswith("stat_")]
    assert len(stats) == 51
    assert {"video_type", "upload_type", "music_type", "upload_dt"} <= set(items.columns)
    # upload_dt (all 2022-04-09..11 here) precedes the log, so first_seen is the upload day, 00:00 UTC.
    assert items.loc[0, "first_seen"] == day_start_ms("2022-04-10")
    assert (items["first_seen"] % DAY_MS == 0).all()
    assert list(items.loc[5, "tags"]) == ["20", "43"]
    empty = items["tags"].map(len) == 0
    assert empty.sum() == 96   # the 96 videos with no tag get an empty list, not null
    assert items["duration_ms"].isna().sum() == 239 and isinstance(items["duration_ms"].dtype, pd.Int64Dtype)
    assert items["text"].isna().all() and items["image_vector"].isna().all()
    assert "user_active_degree" in kuairand.users.columns and kuairand.users.shape[1] == 31


def _write_kuairand(folder, log_rows, *, log_name="log_standard_4_22_to_5_08_pure.csv"):
    data = folder / "KuaiRand-Pure" / "data"
    data.mkdir(parents=True)
    cols = ["user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
            "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time",
            "comment_stay_time", "is_profile_enter", "is_rand", "tab"]
    pd.DataFrame(log_rows, columns=cols).to_csv(data / log_name, index=False)
    pd.DataFrame({"video_id": [1, 2, 3], "author_id": [10, 20, 30], "video_type": "NORMAL",
                  "upload_dt": ["2022-04-30", None, None], "upload_type": "Web", "visible_status": 0.0,
                  "video_duration": [5000.0, None, 7000.0], "server_width": 720.0, "server_height": 1280.0,
                  "music_id": 1, "music_type": 9.0, "tag": ["1,2", None, "3"]}).to_csv(
        data / "video_features_basic_pure.csv", index=False)
    pd.DataFrame({"user_id": [7, 8], "user_active_degree": ["full_active", "high_active"]}).to_csv(
        data / "user_features_pure.csv", index=False)
    pd.DataFrame({"video_id": [1, 2, 3], "counts": [1, 2, 3], "follow_user_num1": [0.5, 0.1, 0.0]}).to_csv(
        data / "video_features_statistic_pure.csv", index=False)
    return data


def test_kuairand_official_layout(tmp_path):
    from onerec.data.kuairand import load
    t0 = day_start_ms("2022-05-01") + 3_600_000
    row = lambda u, v, t, rand, hate=0: [u, v, 20220501, 900, t, 1, 0, 0, 0, 0, hate, 0, 1200, 5000, 0, 0, 0, rand, 1]
    data = _write_kuairand(tmp_path, [row(7, 1, t0 + 5, 0), row(8, 2, t0, 1, hate=1)])
    ds = load(tmp_path)
    check_contract(ds)
    imp = ds.impressions
    assert list(imp["user_id"]) == [8, 7]   # sorted by ts
    assert list(imp["source"]) == ["random", "legacy"] and list(imp["dislike"]) == [1, 0]
    items = ds.items.set_index("item_id")
    assert items.loc[1, "first_seen"] == day_start_ms("2022-04-30")   # upload day precedes first impression
    assert items.loc[2, "first_seen"] == t0                            # no upload_dt: first impression
    assert items.loc[3, "first_seen"] == t0                            # neither: the log start
    assert list(items.loc[1, "tags"]) == ["1", "2"] and list(items.loc[2, "tags"]) == []
    assert "stat_follow_user_num" in items.columns   # official header's follow_user_num1, normalised
    assert pd.isna(items.loc[2, "duration_ms"])
    # log_files picks files explicitly; a missing one is named in a one-line error.
    assert len(load(tmp_path, log_files=[str(data / "log_standard_4_22_to_5_08_pure.csv")]).impressions) == 2
    with pytest.raises(MissingFile, match="nope.csv"):
        load(tmp_path, log_files=["KuaiRand-Pure/data/nope.csv"])
    (data / "user_features_pure.csv").unlink()
    with pytest.raises(FileNotFoundError, match="user_features_pure.csv") as e:
        load(tmp_path)
    assert isinstance(e.value, SchemaError) and "\n" not in str(e.value)


def test_kuairand_missing_log_and_bad_values(tmp_path):
    from onerec.data.kuairand import load
    with pytest.raises(MissingFile, match=r"log_\*_pure.csv"):
        load(tmp_path)
    with pytest.raises(MissingFile):
        load(tmp_path / "absent")
    row = [7, 1, 20220501, 900, "not-a-time", 1, 0, 0, 0, 0, 0, 0, 1200, 5000, 0, 0, 0, 0, 1]
    _write_kuairand(tmp_path, [row])
    with pytest.raises(SchemaError, match="log_standard"):
        load(tmp_path)


# ---------------------------------------------------------------- Amazon (real files)

def test_beauty_s3rec(beauty_s3rec):
    ds = beauty_s3rec
    check_contract(ds)
    imp, items = ds.impressions, ds.items
    assert len(imp) == 198_502 and len(ds.users) == 22_363 and len(items) == 12_101
    assert (imp["click"] == 1).all() and (imp[["like", "follow", "comment", "forward", "dislike"]] == 0).all().all()
    assert imp["play_time_ms"].isna().all() and imp["duration_ms"].isna().all()
    first = items.set_index("item_id").loc[1]
    assert first["asin"] == "B004756YJA" and first["text"] == "OPI | Makeup | Nails | Nail Polish"
    assert all(isinstance(t, str) for t in first["tags"]) and len(first["tags"]) > 0
    # user 1's sequence is "1 2 3 4 5": order kept, test item on the last day, validation the day before.
    u1 = imp[imp["user_id"] == 1].sort_values("ts")
    assert list(u1["item_id"]) == [1, 2, 3, 4, 5] and list(u1["request_id"]) == [f"1-{i}" for i in range(5)]
    days = date_of(u1["ts"]).tolist()
    assert days[-1] == "2024-01-30" and days[-2] == "2024-01-29"
    last = imp.groupby("user_id")["ts"].max()
    assert (date_of(last) == "2024-01-30").all()


def test_beauty_letter_matches_s3rec(beauty_s3rec, beauty_letter):
    check_contract(beauty_letter)
    assert len(beauty_letter.impressions) == len(beauty_s3rec.impressions)
    assert beauty_letter.items["text"].isna().all()   # no Beauty.item.json in letter_format/
    # LETTER ids are S3-Rec ids - 1 for users and items; the synthetic times coincide.
    a = beauty_s3rec.impressions[["user_id", "item_id", "ts"]].to_numpy()
    b = beauty_letter.impressions[["user_id", "item_id", "ts"]].to_numpy() + [1, 1, 0]
    assert (a[np.lexsort(a.T[::-1])] == b[np.lexsort(b.T[::-1])]).all()


def test_scientific_letter(scientific):
    ds = scientific
    check_contract(ds)
    assert len(ds.impressions) == 58_492 and len(ds.users) == 8_317 and len(ds.items) == 4_344
    item = ds.items.set_index("item_id").loc[0]
    assert item["text"].startswith("SUPCO SPP6 Relay/Capacitor Hard Start Kit with 500% Increase Starting Torque. "
                                   "Sealed Unit Parts Co., Inc. Industrial & Scientific, Industrial Electrical")
    assert "Relay/CAPACITOR hard start kit" in item["text"]
    assert list(item["tags"])[:2] == ["Industrial & Scientific", "Industrial Electrical"]
    assert ds.items["text"].notna().all() and item["brand"] == "Sealed Unit Parts Co., Inc."


def test_amazon_options_and_errors(tmp_path):
    from onerec.data.amazon import load_letter, load_s3rec
    (tmp_path / "Toy.txt").write_text("1 3 1 2\n2 2\n")
    ds = load_s3rec(tmp_path, name="Toy", start_date="2023-05-01", n_days=5)
    check_contract(ds)
    assert date_of(ds.impressions["ts"]).max() == "2023-05-05"
    assert ds.items["text"].isna().all() and "asin" not in ds.items.columns   # no attribute files
    assert ds.impressions[ds.impressions["user_id"] == 1].sort_values("ts")["item_id"].tolist() == [3, 1, 2]
    with pytest.raises(MissingFile, match="Beauty.txt"):
        load_s3rec(tmp_path)
    (tmp_path / "Bad.txt").write_text("1 a b\n")
    with pytest.raises(SchemaError, match="Bad.txt:1"):
        load_s3rec(tmp_path, name="Bad")
    with pytest.raises(MissingFile, match="inter.json"):
        load_letter(tmp_path)
    (tmp_path / "A.inter.json").write_text('{"0": [0, 1]}')
    (tmp_path / "B.inter.json").write_text('{"0": [1]}')
    with pytest.raises(MissingFile, match="several"):
        load_letter(tmp_path)
    (tmp_path / "A.item.json").write_text('{"1": {"title": "T.", "categories": "X,Y"}, "5": {"title": "Lone"}}')
    ds = load_letter(tmp_path, name="A")
    items = ds.items.set_index("item_id")
    assert items.loc[1, "text"] == "T. X, Y" and items.loc[0, "text"] is None and len(items) == 3
    assert items.loc[5, "first_seen"] == ds.impressions["ts"].min()   # never reviewed: log start


# ---------------------------------------------------------------- MovieLens

def test_movielens_100k_recbole(ml100k):
    ds = ml100k
    check_contract(ds)
    assert len(ds.impressions) == 100_000 and len(ds.users) == 943 and len(ds.items) == 1_682
    raw = pd.read_csv(ml100k.info["files"]["interactions"], sep="\t")
    assert ds.impressions["like"].sum() == (raw["rating:float"] >= 4).sum()
    assert ds.impressions["dislike"].sum() == (raw["rating:float"] <= 2).sum()
    assert ds.impressions["ts"].min() == raw["timestamp:float"].min() * 1000
    toy = ds.items.set_index("item_id").loc[1]
    assert toy["text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert list(toy["tags"]) == ["Animation", "Children's", "Comedy"]
    user = ds.users.set_index("user_id").loc[1]
    assert (user["age"], user["gender"], user["occupation"], user["zip_code"]) == (24, "M", "technician", "85711")
    assert ds.info["utc_dates"] == ["1997-09-20", "1998-04-22"]


def test_registry_names_the_adapters(tmp_path):
    (tmp_path / "Toy.txt").write_text("1 1 2\n")
    assert len(load_dataset("amazon_s3rec", str(tmp_path), name="Toy").impressions) == 2
    with pytest.raises(MissingFile):
        load_dataset("movielens_recbole", str(tmp_path))


def _write_ml1m(folder):
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::10::5::978300760\n1::20::2::978300760\n2::10::3::978302109\n")
    (folder / "movies.dat").write_bytes(
        "10::Cité des enfants perdus, La (1995)::Adventure|Sci-Fi\n20::Star Wars: Episode IV (1977)::Action\n"
        "30::Never Rated::Drama\n".encode("latin-1"))
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")


def test_movielens_1m_dat(tmp_path):
    from onerec.data.movielens import load_dat
    _write_ml1m(tmp_path / "ml-1m")
    ds = load_dat(tmp_path)   # finds the ml-1m/ subfolder
    check_contract(ds)
    imp = ds.impressions
    assert len(imp) == 3 and imp["ts"].iloc[0] == 978300760000
    assert imp["request_id"].iloc[0] == "1-978300760000"
    by = imp.set_index(["user_id", "item_id"])
    assert by.loc[(1, 10), "like"] == 1 and by.loc[(1, 20), "dislike"] == 1
    assert by.loc[(2, 10), ["like", "dislike"]].tolist() == [0, 0]
    items = ds.items.set_index("item_id")
    assert items.loc[10, "text"] == "Cité des enfants perdus, La (1995). Genres: Adventure, Sci-Fi"
    assert items.loc[20, "title"] == "Star Wars: Episode IV" and items.loc[20, "year"] == 1977
    assert items.loc[30, "text"] == "Never Rated. Genres: Drama"
    assert items.loc[30, "first_seen"] == imp["ts"].min()
    users = ds.users.set_index("user_id")
    assert users.loc[1, "occupation"] == "K-12 student" and users.loc[2, "occupation"] == "self-employed"
    assert users.loc[2, "age"] == 56 and users.loc[1, "zip_code"] == "48067"


def test_movielens_100k_grouplens_layout(tmp_path):
    from onerec.data.movielens import load_dat
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "u.data").write_text("1\t1\t4\t874965758\n2\t1\t1\t876893171\n")
    flags = ["0"] * 19
    flags[3] = flags[5] = "1"
    (d / "u.item").write_bytes(("1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n").encode("latin-1"))
    (d / "u.genre").write_text("\n".join(f"{g}|{i}" for i, g in enumerate(
        ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy"] + [f"g{i}" for i in range(6, 19)])))
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|01002\n")
    ds = load_dat(tmp_path)
    check_contract(ds)
    assert ds.items["text"].iloc[0] == "Toy Story (1995). Genres: Animation, Comedy"
    assert ds.users.set_index("user_id").loc[2, "zip_code"] == "01002"
    assert ds.impressions["like"].tolist() == [1, 0] and ds.impressions["dislike"].tolist() == [0, 1]


def test_movielens_missing_files(tmp_path):
    from onerec.data.movielens import load_dat, load_recbole
    with pytest.raises(MissingFile, match="ratings.dat") as e:
        load_dat(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(MissingFile, match=r"\*.inter"):
        load_recbole(tmp_path)
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    with pytest.raises(SchemaError, match="rating"):
        load_recbole(tmp_path)


def test_recbole_string_tokens(tmp_path):
    from onerec.data.movielens import load_recbole
    (tmp_path / "s.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                      "u2\tB0\t5\t10\nu1\tA9\t1\t20\n")
    ds = load_recbole(tmp_path)
    check_contract(ds)
    assert ds.items.set_index("token").loc["A9", "item_id"] == 0 and ds.users["token"].tolist() == ["u1", "u2"]
    assert isinstance(ds.users, pd.DataFrame) and pa.types.is_int64(conform(ds.users, "users").schema[0].type)
