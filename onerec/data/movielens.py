"""MovieLens ratings -> the data contract.

`load_recbole`: RecBole atomic files `<name>.inter/.item/.user` (TSV, typed headers `field:type`; `name`
autodetected from the single *.inter in the folder). `load_dat`: GroupLens' own releases, ml-1m / ml-10m
(`ratings.dat`, `movies.dat`, `users.dat`, '::'-separated, latin-1) and, because the catalogue's
`movielens-100k` download is GroupLens' ml-100k.zip, its `u.data` / `u.item` / `u.user` layout too.

Mapping (the same for every layout):
* ts = rating timestamp (s) * 1000; request_id = f"{user_id}-{ts}" (one user's ratings in the same
  second are treated as one request).
* click=1 (a rating means the user watched it), like = rating >= 4, dislike = rating <= 2; follow,
  comment, forward 0; play/duration null; source "legacy". The rating itself is not kept
  (impressions are a closed schema): like/dislike carry its signal.
* items: text = f"{title} ({year}). Genres: {g1, g2}" (year / genres part left out when unknown),
  tags = genres, extras `title`, `year`. first_seen = first rating; never-rated movies: log start.
* users: extras age, gender, occupation, zip_code. ml-1m's occupation codes become the names of its
  README (ml-100k already uses names); ml-1m's age stays the bucket code of its README (1, 18, 25, ...).
* RecBole ids are tokens: numeric tokens are used as ids; otherwise tokens are numbered in sorted
  order (deterministic) and the token kept as extra column `token`.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from onerec.data import Dataset
from onerec.data._frames import (MissingFile, add_missing, canonical, find_file, first_seen, require_dir,
                                 sort_impressions)
from onerec.schemas import SchemaError, date_of

DAT_DIRS = ("", "ml-1m", "ml-10M100K", "ml-100k")
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
]
TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def load_recbole(path, *, date=None, name=None, **_ignored) -> Dataset:
    root = require_dir(path, "movielens_recbole")
    if name is None:
        found = sorted(root.glob("*.inter"))
        if len(found) != 1:
            what = "no *.inter" if not found else f"several *.inter ({', '.join(p.name for p in found)})"
            raise MissingFile(f"movielens_recbole: {what} in {root}; pass option name=")
        name = found[0].stem
    inter_path = find_file(root, f"{name}.inter", what="movielens_recbole interactions")
    files = {"interactions": str(inter_path)}
    ratings = _read_atomic(inter_path)
    _require(ratings, ["user_id", "item_id", "rating", "timestamp"], inter_path)

    movies = users = None
    if (root / f"{name}.item").is_file():
        files["items"] = str(root / f"{name}.item")
        raw = _read_atomic(root / f"{name}.item")
        genre_col = "class" if "class" in raw else "genre"
        _require(raw, ["item_id", "movie_title", genre_col], root / f"{name}.item")
        year = pd.to_numeric(raw.get("release_year"), errors="coerce") if "release_year" in raw else np.nan
        movies = pd.DataFrame({"item_id": raw["item_id"], "title": raw["movie_title"], "year": year,
                               "genres": raw[genre_col].fillna("").str.split()})
    if (root / f"{name}.user").is_file():
        files["users"] = str(root / f"{name}.user")
        users = _read_atomic(root / f"{name}.user")
        _require(users, ["user_id"], root / f"{name}.user")
        if "age" in users:
            users["age"] = pd.to_numeric(users["age"], errors="coerce").astype("Int64")

    # Token ids -> int64, numerically when every token is a number, else by sorted token.
    extra_tokens = {}
    for col, side in (("user_id", users), ("item_id", movies)):
        tokens = pd.concat([ratings[col], side[col] if side is not None else pd.Series(dtype=str)])
        as_int = pd.to_numeric(tokens, errors="coerce")
        if as_int.notna().all():
            mapping = dict(zip(tokens, as_int.astype("int64")))
        else:
            mapping = {t: i for i, t in enumerate(sorted(tokens.unique()))}
            extra_tokens[col] = {v: k for k, v in mapping.items()}
        ratings[col] = ratings[col].map(mapping)
        if side is not None:
            side[col] = side[col].map(mapping)
    ratings["rating"] = pd.to_numeric(ratings["rating"])
    ratings["timestamp"] = pd.to_numeric(ratings["timestamp"])
    return _build(ratings, movies, users, files, "movielens_recbole", extra_tokens)


def load_dat(path, *, date=None, encoding="latin-1", **_ignored) -> Dataset:
    root = require_dir(path, "movielens_dat")
    try:
        ratings_path = find_file(root, "ratings.dat", DAT_DIRS, "movielens ratings")
    except MissingFile:
        try:
            return _load_100k(find_file(root, "u.data", DAT_DIRS).parent, encoding)
        except MissingFile:
            raise MissingFile(f"movielens ratings file not found: ratings.dat (or ml-100k's u.data) "
                              f"under {root}") from None
    folder = ratings_path.parent
    files = {"ratings": str(ratings_path)}
    # '::' separators: reading with ':' keeps pandas' fast C parser; fields land on even columns.
    ratings = pd.read_csv(ratings_path, sep=":", header=None, usecols=[0, 2, 4, 6], encoding=encoding,
                          names=["user_id", "_1", "item_id", "_3", "rating", "_5", "timestamp"],
                          dtype={"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"})
    movies = users = None
    if (folder / "movies.dat").is_file():
        files["movies"] = str(folder / "movies.dat")
        rows = [line.rstrip("\r\n").split("::") for line in _lines(folder / "movies.dat", encoding)]
        movies = _movies([int(r[0]) for r in rows], [r[1] for r in rows], [r[2].split("|") for r in rows])
    if (folder / "users.dat").is_file():
        files["users"] = str(folder / "users.dat")
        rows = [line.rstrip("\r\n").split("::") for line in _lines(folder / "users.dat", encoding)]
        users = pd.DataFrame({
            "user_id": [int(r[0]) for r in rows], "age": [int(r[2]) for r in rows], "gender": [r[1] for r in rows],
            "occupation": [_occupation(r[3]) for r in rows], "zip_code": [r[4] for r in rows]})
    return _build(ratings, movies, users, files, "movielens_dat")


def _load_100k(folder: Path, encoding: str) -> Dataset:
    files = {"ratings": str(folder / "u.data")}
    ratings = pd.read_csv(folder / "u.data", sep="\t", header=None,
                          names=["user_id", "item_id", "rating", "timestamp"], dtype="int64")
    movies = users = None
    if (folder / "u.item").is_file():
        files["movies"] = str(folder / "u.item")
        genre_names = [line.split("|")[0] for line in _lines(folder / "u.genre", encoding)] \
            if (folder / "u.genre").is_file() else [f"genre{i}" for i in range(19)]
        rows = [line.rstrip("\r\n").split("|") for line in _lines(folder / "u.item", encoding)]
        # u.item: id | title (year) | release date | video release date | IMDb URL | 19 genre flags
        genres = [[g for g, flag in zip(genre_names, r[-len(genre_names):]) if flag == "1"] for r in rows]
        movies = _movies([int(r[0]) for r in rows], [r[1] for r in rows], genres)
    if (folder / "u.user").is_file():
        files["users"] = str(folder / "u.user")
        users = pd.read_csv(folder / "u.user", sep="|", header=None, encoding=encoding,
                            names=["user_id", "age", "gender", "occupation", "zip_code"],
                            dtype={"user_id": "int64", "age": "int64", "zip_code": str})
    return _build(ratings, movies, users, files, "movielens_dat (ml-100k u.*)")


def _movies(ids, titles, genres) -> pd.DataFrame:
    """Split 'Title (1995)' into title and year (GroupLens keeps the year inside the title)."""
    parsed = [TITLE_YEAR.match(t) for t in titles]
    return pd.DataFrame({
        "item_id": ids,
        "title": [m.group(1) if m else t for m, t in zip(parsed, titles)],
        "year": [int(m.group(2)) if m else np.nan for m in parsed],
        "genres": [[g for g in gs if g and g != "(no genres listed)"] for gs in genres],
    })


def _build(ratings, movies, users, files, adapter, extra_tokens=None) -> Dataset:
    ts = (ratings["timestamp"].astype("float64") * 1000).round().astype("int64")
    imp = pd.DataFrame({
        "user_id": ratings["user_id"].astype("int64"), "item_id": ratings["item_id"].astype("int64"), "ts": ts,
        "request_id": ratings["user_id"].astype(str) + "-" + ts.astype(str),
        "play_time_ms": None, "duration_ms": None,
        "click": np.int8(1), "like": (ratings["rating"] >= 4).astype("int8"),
        "follow": np.int8(0), "comment": np.int8(0), "forward": np.int8(0),
        "dislike": (ratings["rating"] <= 2).astype("int8"),
        "source": "legacy", "gen_prob": float("nan"),
    })
    imp = sort_impressions(imp)

    if movies is None:
        movies = pd.DataFrame({"item_id": np.sort(imp["item_id"].unique()), "title": None, "year": np.nan,
                               "genres": [[] for _ in range(imp["item_id"].nunique())]})
    movies = add_missing(movies, "item_id", imp["item_id"])
    movies["genres"] = movies["genres"].map(lambda g: g if isinstance(g, list) else [])
    items = pd.DataFrame({
        "item_id": movies["item_id"].astype("int64"),
        "first_seen": first_seen(movies["item_id"], imp),
        "duration_ms": None, "author_id": None,
        "tags": movies["genres"],
        "text": [_text(t, y, g) for t, y, g in zip(movies["title"], movies["year"], movies["genres"])],
        "image_vector": None,
        "title": movies["title"], "year": movies["year"].astype("Int64"),
    }).sort_values("item_id").reset_index(drop=True)

    users = pd.DataFrame({"user_id": np.sort(imp["user_id"].unique())}) if users is None else users
    users = add_missing(users, "user_id", imp["user_id"]).sort_values("user_id").reset_index(drop=True)
    for col, side in (("item_id", items), ("user_id", users)):
        if extra_tokens and col in extra_tokens:
            side["token"] = side[col].map(extra_tokens[col])

    dates = date_of(imp["ts"]).unique()
    info = {
        "adapter": adapter, "files": files,
        "timestamps": "rating timestamp (s) * 1000, UTC",
        "request_id": "f'{user_id}-{ts}'",
        "flags": "click=1, like=rating>=4, dislike=rating<=2",
        "first_seen": "first rating; never-rated movies: log start",
        "counts": {"impressions": len(imp), "users": len(users), "items": len(items),
                   "users_in_log": int(imp["user_id"].nunique()), "items_in_log": int(imp["item_id"].nunique())},
        "utc_dates": [str(dates.min()), str(dates.max())], "n_utc_dates": len(dates),
    }
    return Dataset(canonical(imp, "impressions"), canonical(items, "items"), canonical(users, "users"), info)


def _text(title, year, genres) -> str | None:
    if not isinstance(title, str) or not title:
        return None
    text = f"{title} ({int(year)})" if pd.notna(year) else title
    return f"{text}. Genres: {', '.join(genres)}" if genres else text


def _occupation(code: str):
    return ML1M_OCCUPATIONS[int(code)] if code.isdigit() and int(code) < len(ML1M_OCCUPATIONS) else code


def _read_atomic(path: Path) -> pd.DataFrame:
    """RecBole atomic file: TSV whose header names are `field:type`; values kept as strings."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""], quoting=3)
    return df.rename(columns=lambda c: c.split(":")[0])


def _require(df: pd.DataFrame, cols, path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {missing}")


def _lines(path: Path, encoding: str) -> list[str]:
    with open(path, encoding=encoding) as f:
        return [line for line in f if line.strip()]
