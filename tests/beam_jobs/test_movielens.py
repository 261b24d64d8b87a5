"""Tests of the MovieLens-100k importer on a tiny hand-written fixture.

The fixture imitates RecBole's atomic files (tab-separated, typed header);
the real data is never used or committed (its licence forbids it).
"""

import gzip
import json
import os
import subprocess
import zipfile

import pytest

from beam_jobs import datasets, movielens
from feature_contract import feature_config

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "1\t10\t5\t881250949\n"  # line 2: impression + click + follow
    "1\t20\t3\t881250950\n"  # line 3: impression
    "2\t10\t4\t881250951\n"  # line 4: impression + click
    "2\t30\t1\t881250952\n"  # line 5: impression
    "3\t20\tfive\t881250953\n"  # line 6: bad_rating
    "3\t30\t4\n"  # line 7: wrong_field_count
    "\t30\t4\t881250954\n"  # line 8: missing_id
    "4\t20\t2\t-5\n"  # line 9: bad_timestamp
)
USER = (
    "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    "1\t24\tM\ttechnician\t85711\n"
    "2\t53\tF\tother\tT8H1N\n"  # Canadian zip: prefix "T"
    "3\tx\tM\twriter\t32067\n"  # line 4: bad_age
)
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "10\tToy Story\t1995\tAnimation Children's Comedy\n"
    "20\tunkonwn\tunkonwn\tunknown\n"  # no year: kept, year omitted
    "30\tHeat\t1995\tAction Crime Thriller\n"
)


def _write_fixture(directory, inter=INTER, user=USER, item=ITEM):
    os.makedirs(directory, exist_ok=True)
    for name, text in ((movielens.INTER_FILE, inter), (movielens.USER_FILE, user),
                       (movielens.ITEM_FILE, item)):
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text)
    return str(directory)


def _read_jsonl_gz(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_convert_hand_computed(tmp_path):
    src = _write_fixture(tmp_path / "src")
    out = str(tmp_path / "out")
    summary = movielens.convert(src, out)

    ev = lambda ts, u, i, e: {"timestamp": ts, "user_id": u, "item_id": i, "event": e}  # noqa: E731
    assert _read_jsonl_gz(os.path.join(out, movielens.EVENTS_FILE)) == [
        ev(881250949, "1", "10", "impression"), ev(881250949, "1", "10", "click"),
        ev(881250949, "1", "10", "follow"),
        ev(881250950, "1", "20", "impression"),
        ev(881250951, "2", "10", "impression"), ev(881250951, "2", "10", "click"),
        ev(881250952, "2", "30", "impression")]
    assert _read_jsonl_gz(os.path.join(out, movielens.USERS_FILE)) == [
        {"user_id": "1", "age": 24, "gender": "M", "occupation": "technician", "zip_prefix": "8"},
        {"user_id": "2", "age": 53, "gender": "F", "occupation": "other", "zip_prefix": "T"}]
    assert _read_jsonl_gz(os.path.join(out, movielens.ITEMS_FILE)) == [
        {"item_id": "10", "title": "Toy Story", "genre": "Animation",
         "genres": ["Animation", "Children's", "Comedy"], "year": 1995},
        {"item_id": "20", "title": "unkonwn", "genre": "unknown", "genres": ["unknown"]},
        {"item_id": "30", "title": "Heat", "genre": "Action",
         "genres": ["Action", "Crime", "Thriller"], "year": 1995}]
    assert summary == {
        "ratings": 4, "impressions": 4, "clicks": 2, "follows": 1, "users": 2, "items": 3,
        "items_without_year": 1, "events": 7, "out_dir": out, "dead_letter_total": 5,
        "dead_letter": {"bad_age": 1, "bad_rating": 1, "bad_timestamp": 1, "missing_id": 1,
                        "wrong_field_count": 1}}
    with open(os.path.join(out, movielens.DEAD_LETTER_FILE), encoding="utf-8") as f:
        dead = [json.loads(line) for line in f]
    assert dead == [
        {"reason": "bad_rating", "source": "inter", "line": 6, "record": "3\t20\tfive\t881250953"},
        {"reason": "wrong_field_count", "source": "inter", "line": 7, "record": "3\t30\t4"},
        {"reason": "missing_id", "source": "inter", "line": 8, "record": "\t30\t4\t881250954"},
        {"reason": "bad_timestamp", "source": "inter", "line": 9, "record": "4\t20\t2\t-5"},
        {"reason": "bad_age", "source": "user", "line": 4, "record": "3\tx\tM\twriter\t32067"}]


def test_converted_rows_match_movielens_config(tmp_path):
    config = feature_config.load(feature_config.builtin_config_path("movielens"))
    out = str(tmp_path / "out")
    movielens.convert(_write_fixture(tmp_path / "src"), out)
    tables = {feature_config.SOURCE_USERS: movielens.USERS_FILE,
              feature_config.SOURCE_ITEMS: movielens.ITEMS_FILE}
    for source, name in tables.items():
        rows = _read_jsonl_gz(os.path.join(out, name))
        for spec in config.by_source(source):
            values = [r[spec.raw_column] for r in rows if spec.raw_column in r]
            assert values, spec.name
            want = {feature_config.NUMERIC: int, feature_config.TAGS: list}.get(spec.type, str)
            assert all(isinstance(v, want) for v in values), (spec.name, values)
    for e in _read_jsonl_gz(os.path.join(out, movielens.EVENTS_FILE)):
        assert e[config.event_column] in config.event_values
        assert isinstance(e[config.timestamp_column], int)


def test_header_without_required_column_raises(tmp_path):
    src = _write_fixture(tmp_path / "src", inter="user_id:token\titem_id:token\n1\t2\n")
    with pytest.raises(movielens.MovieLensError, match=r"lacks columns \['rating', 'timestamp'\]"):
        movielens.convert(src, str(tmp_path / "out"))


def test_missing_file_raises(tmp_path):
    src = _write_fixture(tmp_path / "src")
    os.remove(os.path.join(src, movielens.ITEM_FILE))
    with pytest.raises(movielens.MovieLensError, match="missing atomic file"):
        movielens.convert(src, str(tmp_path / "out"))


def _fake_wheel(directory, names=(movielens.INTER_FILE, movielens.USER_FILE, movielens.ITEM_FILE)):
    path = os.path.join(directory, "recbole-1.2.1-py3-none-any.whl")
    texts = {movielens.INTER_FILE: INTER, movielens.USER_FILE: USER, movielens.ITEM_FILE: ITEM}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
        for name in names:
            zf.writestr(movielens.WHEEL_DIR + name, texts[name])
        zf.writestr(movielens.WHEEL_DIR + "ml-100k.kg", "not extracted")
    return path


def test_fetch_extracts_only_the_atomic_files_once(tmp_path):
    calls = []

    def download(dest):
        calls.append(dest)
        return _fake_wheel(dest)

    cache = str(tmp_path / "cache")
    os.makedirs(cache)
    src = movielens.fetch(cache, download=download)
    assert src == os.path.join(cache, "ml-100k")
    assert sorted(os.listdir(src)) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    with open(os.path.join(src, movielens.INTER_FILE), encoding="utf-8") as f:
        assert f.read() == INTER
    assert movielens.fetch(cache, download=download) == src
    assert len(calls) == 1  # cached: no second download
    assert sorted(os.listdir(cache)) == ["ml-100k"]  # the wheel is not kept


def test_fetch_wheel_without_data_raises(tmp_path):
    with pytest.raises(movielens.MovieLensError, match="lacks"):
        movielens.fetch(str(tmp_path), download=lambda d: _fake_wheel(d, names=()))


def test_pip_failure_is_a_clear_error(tmp_path, monkeypatch):
    def run(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        assert movielens.RECBOLE_REQUIREMENT in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(movielens.subprocess, "run", run)
    with pytest.raises(movielens.MovieLensError, match="No matching distribution"):
        movielens.fetch(str(tmp_path))
    assert movielens.main(["--cache_dir", str(tmp_path), "--out_dir", str(tmp_path / "o")]) == 1


def test_prepare_movielens_converts_once(tmp_path, monkeypatch):
    src = _write_fixture(tmp_path / "src")
    fetched = []
    monkeypatch.setattr(movielens, "fetch", lambda cache: fetched.append(cache) or src)
    work = str(tmp_path / "work")
    ds = datasets.prepare("movielens", work)
    raw = os.path.join(work, "raw", "movielens")
    assert ds == datasets.RawDataset(
        name="movielens", config_path=feature_config.builtin_config_path("movielens"),
        events=os.path.join(raw, "events.jsonl.gz"), users=os.path.join(raw, "users.jsonl.gz"),
        items=os.path.join(raw, "items.jsonl.gz"))
    assert len(_read_jsonl_gz(ds.events)) == 7
    assert fetched == [os.path.join(work, "cache", "recbole")]
    assert datasets.prepare("movielens", work) == ds
    assert len(fetched) == 1
