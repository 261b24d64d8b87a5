"""MovieLens-100k importer: RecBole atomic files -> the feedrec raw-log format.

The data is not in the repository (its licence forbids redistribution): at
build time `fetch` downloads the `recbole==1.2.1` wheel with pip, which ships
`recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}`, and extracts only
those files. `convert` writes the tables `configs/movielens.yaml` reads:

* events: each rating is an `impression`; rating >= 4 also a `click` and
  rating 5 also a `follow`, at the rating's timestamp (hour and weekday are
  derived from it by the sessionize job, so no context columns);
* users: `user_id`, `age` (number), `gender`, `occupation`, `zip_prefix`
  (first character of the zip code, standing in for a city);
* items: `item_id`, `title`, `genre` (first genre), `genres` (all), `year`
  (omitted when the release year is missing or unparseable).

Atomic files are tab-separated with a typed header (`user_id:token\t...`).
A row that does not parse is written with its reason to
`out_dir/import_dead_letter.jsonl` and counted in the summary, never dropped
silently.

CLI: `python -m beam_jobs.movielens --cache_dir D --out_dir O`.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson

from beam_jobs.synthetic import write_jsonl_gz

RECBOLE_REQUIREMENT = "recbole==1.2.1"
WHEEL_DIR = "recbole/dataset_example/ml-100k/"
DATASET = "ml-100k"
INTER_FILE, USER_FILE, ITEM_FILE = (f"{DATASET}.inter", f"{DATASET}.user", f"{DATASET}.item")
EVENTS_FILE, USERS_FILE, ITEMS_FILE = "events.jsonl.gz", "users.jsonl.gz", "items.jsonl.gz"
DEAD_LETTER_FILE = "import_dead_letter.jsonl"
CLICK_MIN_RATING, FOLLOW_MIN_RATING = 4.0, 5.0
_YEAR = re.compile(r"(1[89]\d\d|20\d\d)")

# Columns each atomic file must declare (name before the ":type" suffix).
REQUIRED_COLUMNS = {
    INTER_FILE: ("user_id", "item_id", "rating", "timestamp"),
    USER_FILE: ("user_id", "age", "gender", "occupation", "zip_code"),
    ITEM_FILE: ("item_id", "class"),
}


class MovieLensError(RuntimeError):
    """The MovieLens files cannot be fetched or are not RecBole atomic files."""


def _pip_download(dest_dir: str) -> str:
    """Downloads the recbole wheel with pip into dest_dir; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", RECBOLE_REQUIREMENT, "-d", dest_dir]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise MovieLensError(f"`{' '.join(cmd)}` could not run: {err}") from err
    if proc.returncode != 0:
        raise MovieLensError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}); MovieLens-100k is fetched "
            f"from the {RECBOLE_REQUIREMENT} wheel, so the package registry must be "
            f"reachable. pip said:\n{proc.stderr.strip()[-2000:]}")
    wheels = glob.glob(os.path.join(dest_dir, "recbole-*.whl"))
    if not wheels:
        raise MovieLensError(f"pip download left no recbole wheel in {dest_dir}")
    return wheels[0]


def fetch(cache_dir: str, download: Callable[[str], str] = _pip_download) -> str:
    """Makes the ml-100k atomic files available under cache_dir/ml-100k.

    Args:
      cache_dir: where the extracted files are kept; a second call reuses them.
      download: `download(dest_dir) -> wheel path` (pip by default; tests
        pass a fake).

    Returns:
      The directory holding ml-100k.inter, ml-100k.user and ml-100k.item.

    Raises:
      MovieLensError: the download failed or the wheel lacks the files.
    """
    src_dir = os.path.join(cache_dir, DATASET)
    names = (INTER_FILE, USER_FILE, ITEM_FILE)
    if all(os.path.exists(os.path.join(src_dir, n)) for n in names):
        return src_dir
    os.makedirs(src_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        wheel = download(tmp)
        try:
            with zipfile.ZipFile(wheel) as zf:
                members = set(zf.namelist())
                missing = [WHEEL_DIR + n for n in names if WHEEL_DIR + n not in members]
                if missing:
                    raise MovieLensError(f"{wheel} lacks {missing}")
                for name in names:
                    # Write under a temporary name, rename last: an interrupted
                    # fetch never leaves a truncated file that looks complete.
                    part = os.path.join(src_dir, name + ".part")
                    with zf.open(WHEEL_DIR + name) as src, open(part, "wb") as dst:
                        dst.write(src.read())
                    os.replace(part, os.path.join(src_dir, name))
        except zipfile.BadZipFile as err:
            raise MovieLensError(f"{wheel} is not a wheel (zip): {err}") from err
    return src_dir


def _read_atomic(path: str) -> tuple[list[str], Iterator[tuple[int, str, list[str]]]]:
    """Reads a RecBole atomic file: (column names, (line no, raw, fields) rows)."""
    if not os.path.exists(path):
        raise MovieLensError(f"missing atomic file {path}")
    f = open(path, encoding="utf-8", newline="")  # noqa: SIM115 - closed by rows()
    header = f.readline().rstrip("\r\n")
    names = [h.split(":", 1)[0] for h in header.split("\t")]
    want = REQUIRED_COLUMNS[os.path.basename(path)]
    missing = [c for c in want if c not in names]
    if missing:
        f.close()
        raise MovieLensError(f"{path}: header {header!r} lacks columns {missing}")

    def rows() -> Iterator[tuple[int, str, list[str]]]:
        with f:
            for number, line in enumerate(f, start=2):
                raw = line.rstrip("\r\n")
                if raw:
                    yield number, raw, raw.split("\t")

    return names, rows()


class _DeadLetter:
    """Collects rejected rows: {"reason", "source", "line", "record"}."""

    def __init__(self, path: str):
        self._out = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, source: str, line: int, record: str) -> None:
        self.counts[reason] += 1
        self._out.write(orjson.dumps(
            {"reason": reason, "source": source, "line": line, "record": record}) + b"\n")

    def close(self) -> None:
        self._out.close()


def _fields(names: list[str], values: list[str]) -> dict[str, str]:
    return dict(zip(names, values))


def _events(src_dir: str, dead: _DeadLetter, stats: Counter[str]) -> Iterator[dict[str, Any]]:
    names, rows = _read_atomic(os.path.join(src_dir, INTER_FILE))
    for line, raw, values in rows:
        if len(values) != len(names):
            dead.add("wrong_field_count", "inter", line, raw)
            continue
        row = _fields(names, values)
        user, item = row["user_id"].strip(), row["item_id"].strip()
        if not user or not item:
            dead.add("missing_id", "inter", line, raw)
            continue
        try:
            rating = float(row["rating"])
        except ValueError:
            rating = math.nan
        if not 1.0 <= rating <= 5.0:  # also rejects nan
            dead.add("bad_rating", "inter", line, raw)
            continue
        try:
            ts = float(row["timestamp"])
        except ValueError:
            ts = math.nan
        if not (math.isfinite(ts) and ts >= 0):
            dead.add("bad_timestamp", "inter", line, raw)
            continue
        base = {"timestamp": int(ts), "user_id": user, "item_id": item}
        stats["ratings"] += 1
        stats["impressions"] += 1
        yield {**base, "event": "impression"}
        if rating >= CLICK_MIN_RATING:
            stats["clicks"] += 1
            yield {**base, "event": "click"}
        if rating >= FOLLOW_MIN_RATING:
            stats["follows"] += 1
            yield {**base, "event": "follow"}


def _users(src_dir: str, dead: _DeadLetter, stats: Counter[str]) -> Iterator[dict[str, Any]]:
    names, rows = _read_atomic(os.path.join(src_dir, USER_FILE))
    for line, raw, values in rows:
        if len(values) != len(names):
            dead.add("wrong_field_count", "user", line, raw)
            continue
        row = _fields(names, values)
        if not row["user_id"].strip():
            dead.add("missing_id", "user", line, raw)
            continue
        try:
            age = int(row["age"])
        except ValueError:
            dead.add("bad_age", "user", line, raw)
            continue
        out: dict[str, Any] = {"user_id": row["user_id"].strip(), "age": age,
                               "gender": row["gender"].strip(),
                               "occupation": row["occupation"].strip()}
        zip_code = row["zip_code"].strip()
        if zip_code:
            out["zip_prefix"] = zip_code[0]
        stats["users"] += 1
        yield out


def _items(src_dir: str, dead: _DeadLetter, stats: Counter[str]) -> Iterator[dict[str, Any]]:
    names, rows = _read_atomic(os.path.join(src_dir, ITEM_FILE))
    year_column = next((c for c in ("release_year", "release_date") if c in names), None)
    for line, raw, values in rows:
        if len(values) != len(names):
            dead.add("wrong_field_count", "item", line, raw)
            continue
        row = _fields(names, values)
        if not row["item_id"].strip():
            dead.add("missing_id", "item", line, raw)
            continue
        genres = row["class"].split()
        out: dict[str, Any] = {"item_id": row["item_id"].strip()}
        if row.get("movie_title", "").strip():
            out["title"] = row["movie_title"].strip()
        if genres:
            out["genre"] = genres[0]
        out["genres"] = genres
        # A missing or unparseable year ("unkonwn" in ml-100k) is omitted, not
        # rejected: the item is still valid and the year feature has a default.
        match = _YEAR.search(row[year_column]) if year_column else None
        if match:
            out["year"] = int(match.group(1))
        else:
            stats["items_without_year"] += 1
        stats["items"] += 1
        yield out


def convert(src_dir: str, out_dir: str) -> dict[str, Any]:
    """Converts ml-100k atomic files in src_dir to raw-log tables in out_dir.

    Args:
      src_dir: directory with ml-100k.inter, ml-100k.user, ml-100k.item.
      out_dir: output directory (created): events.jsonl.gz, users.jsonl.gz,
        items.jsonl.gz and import_dead_letter.jsonl.

    Returns:
      Summary: ratings, impressions, clicks, follows, users, items,
      items_without_year, dead_letter (per reason) and dead_letter_total.

    Raises:
      MovieLensError: a file is missing or its header lacks a column.
    """
    os.makedirs(out_dir, exist_ok=True)
    stats: Counter[str] = Counter()
    dead = _DeadLetter(os.path.join(out_dir, DEAD_LETTER_FILE))
    try:
        events = write_jsonl_gz(os.path.join(out_dir, EVENTS_FILE), _events(src_dir, dead, stats))
        write_jsonl_gz(os.path.join(out_dir, USERS_FILE), _users(src_dir, dead, stats))
        write_jsonl_gz(os.path.join(out_dir, ITEMS_FILE), _items(src_dir, dead, stats))
    finally:
        dead.close()
    summary: dict[str, Any] = {k: int(stats[k]) for k in (
        "ratings", "impressions", "clicks", "follows", "users", "items", "items_without_year")}
    summary.update(events=events, dead_letter=dict(sorted(dead.counts.items())),
                   dead_letter_total=int(sum(dead.counts.values())), out_dir=out_dir)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache_dir", required=True, help="where the wheel's files are kept")
    parser.add_argument("--out_dir", required=True)
    args = parser.parse_args(argv)
    try:
        summary = convert(fetch(args.cache_dir), args.out_dir)
    except MovieLensError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    json.dump(summary, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
