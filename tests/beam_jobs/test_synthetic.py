"""Tests of the synthetic log generator and of datasets.prepare (synthetic)."""

import collections
import gzip
import json
import os

import numpy as np
import pytest

from beam_jobs import datasets, synthetic
from feature_contract import feature_config

NUM_EVENTS = 100_000


def _read_lines(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def _read_jsonl(path):
    return [json.loads(line) for line in _read_lines(path)]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A mid-size log (100k events) and its parsed tables."""
    out = str(tmp_path_factory.mktemp("synthetic"))
    summary = synthetic.generate(out, NUM_EVENTS, seed=0)
    return {
        "summary": summary,
        "events": _read_jsonl(os.path.join(out, synthetic.EVENTS_FILE)),
        "users": {r["user_id"]: r for r in _read_jsonl(os.path.join(out, synthetic.USERS_FILE))},
        "items": {r["item_id"]: r for r in _read_jsonl(os.path.join(out, synthetic.ITEMS_FILE))},
    }


@pytest.fixture(scope="module")
def config():
    return feature_config.load(feature_config.builtin_config_path("synthetic"))


def _file_bytes(directory):
    names = (synthetic.EVENTS_FILE, synthetic.USERS_FILE, synthetic.ITEMS_FILE)
    return {n: open(os.path.join(directory, n), "rb").read() for n in names}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = (str(tmp_path / d) for d in "abc")
    synthetic.generate(a, 3000, seed=7, chunk_impressions=1000)
    synthetic.generate(b, 3000, seed=7, chunk_impressions=1000)
    synthetic.generate(c, 3000, seed=8, chunk_impressions=1000)
    assert _file_bytes(a) == _file_bytes(b)
    for name, data in _file_bytes(c).items():
        assert data != _file_bytes(a)[name], name


def test_exact_count_and_summary_reconciles(sample):
    events, summary = sample["events"], sample["summary"]
    kinds = collections.Counter(e["event"] for e in events)
    assert len(events) == summary["num_events"] == NUM_EVENTS
    assert kinds == {"impression": summary["impressions"], "click": summary["clicks"],
                     "follow": summary["follows"]}
    assert summary["bad_rows_total"] == 0


def test_stated_rates(sample):
    events = sample["events"]
    kinds = collections.Counter(e["event"] for e in events)
    ctr = kinds["click"] / kinds["impression"]
    assert 0.05 <= ctr <= 0.10
    # ~70 follows expected: 1% of clicks within a Poisson tolerance.
    assert 0.006 <= kinds["follow"] / kinds["click"] <= 0.015
    # New users among the users active in the last 20% of the span, computed
    # from the file (not the generator's own summary).
    ts = np.array([e["timestamp"] for e in events])
    split = ts.min() + 0.8 * (ts.max() - ts.min())
    first, last = {}, {}
    for e in events:
        u, t = e["user_id"], e["timestamp"]
        first[u], last[u] = min(first.get(u, t), t), max(last.get(u, t), t)
    active = [u for u in last if last[u] >= split]
    new = [u for u in active if first[u] >= split]
    assert 0.27 <= len(new) / len(active) <= 0.35
    assert len(new) / len(active) == pytest.approx(sample["summary"]["new_user_fraction"])


def _check_column(spec, row, where):
    value = row[spec.raw_column]
    if spec.type == feature_config.CATEGORICAL:
        assert isinstance(value, str) and value, where
    elif spec.type == feature_config.TAGS:
        assert isinstance(value, list) and all(isinstance(v, str) and v for v in value), where
        assert len(value) <= spec.max_len, where
    elif spec.type == feature_config.NUMERIC:
        assert isinstance(value, (int, float)), where


def test_rows_conform_to_config(sample, config):
    users, items, events = sample["users"], sample["items"], sample["events"]
    assert len(users) == sample["summary"]["num_users"]
    assert len(items) == sample["summary"]["num_items"]
    for row in users.values():
        assert isinstance(row[config.users_key], str)
        for spec in config.by_source(feature_config.SOURCE_USERS):
            _check_column(spec, row, (spec.name, row))
    for row in items.values():
        assert isinstance(row[config.items_key], str)
        assert isinstance(row[config.item_created_column], int)
        for spec in config.by_source(feature_config.SOURCE_ITEMS):
            _check_column(spec, row, (spec.name, row))
    # Cities and categories within the declared vocabularies (58.com-like).
    assert 20 <= len({r["city"] for r in users.values()}) <= config.feature("city").vocab_size
    categories = {r["category"] for r in items.values()}
    assert 10 <= len(categories) <= config.feature("category").vocab_size
    context = config.by_source(feature_config.SOURCE_EVENTS)
    for e in events[::50]:
        assert isinstance(e[config.timestamp_column], int)
        assert config.min_timestamp <= e[config.timestamp_column] < config.max_timestamp
        assert e[config.user_column] in users and e[config.item_column] in items
        assert e[config.event_column] in config.event_values
        for spec in context:
            _check_column(spec, e, (spec.name, e))
        assert items[e[config.item_column]][config.item_created_column] < e[config.timestamp_column]


def test_clicks_follow_impressions_and_sessions_are_gapped(sample, config):
    by_user = collections.defaultdict(list)
    order = {"impression": 0, "click": 1, "follow": 2}
    for e in sample["events"]:
        by_user[e["user_id"]].append((e["timestamp"], order[e["event"]], e["item_id"]))
    in_session_gaps, session_gaps = 0, 0
    for rows in by_user.values():
        rows.sort()
        seen = collections.defaultdict(list)  # (kind, item) -> timestamps
        for ts, kind, item in rows:
            if kind:  # a click needs its impression, a follow its click, seconds before
                assert any(0 < ts - t <= synthetic.MAX_DELAY
                           for t in seen[(kind - 1, item)]), (ts, kind, item)
            seen[(kind, item)].append(ts)
        gaps = np.diff([r[0] for r in rows])
        # Within a session events are seconds apart; sessions are > 30 min apart.
        assert not ((gaps > 2 * synthetic.MAX_STEP) & (gaps <= config.session_gap_seconds)).any()
        session_gaps += int((gaps > config.session_gap_seconds).sum())
        in_session_gaps += int((gaps <= 2 * synthetic.MAX_STEP).sum())
    assert session_gaps > 1000 and in_session_gaps > 50_000


def test_affinity_and_locality_are_learnable(sample):
    users, items = sample["users"], sample["items"]
    shown, clicked = collections.Counter(), collections.Counter()
    own_city = 0
    for e in sample["events"]:
        user, item = users[e["user_id"]], items[e["item_id"]]
        match = bool(set(user["interest_tags"]) & set(item["tags"]))
        if e["event"] == "impression":
            shown[match] += 1
            own_city += user["city"] == item["city"]
        elif e["event"] == "click":
            clicked[match] += 1
    ctr_match, ctr_other = clicked[True] / shown[True], clicked[False] / shown[False]
    assert shown[True] > 5000
    assert ctr_match > 2.0 * ctr_other, (ctr_match, ctr_other)
    assert own_city / sum(shown.values()) > 0.5  # users mostly browse their city


def test_context_effects_are_present(sample):
    items = sample["items"]
    shown, clicked = collections.Counter(), collections.Counter()
    for e in sample["events"]:
        if items[e["item_id"]]["media_type"] != "video":
            continue
        key = e["network"] == "wifi"
        if e["event"] == "impression":
            shown[key] += 1
        elif e["event"] == "click":
            clicked[key] += 1
    # item x context: video clicks better on wifi.
    assert clicked[True] / shown[True] > 1.5 * clicked[False] / shown[False]


def test_bad_rows_are_counted_exactly(tmp_path):
    clean, dirty = str(tmp_path / "clean"), str(tmp_path / "dirty")
    synthetic.generate(clean, 5000, seed=3)
    summary = synthetic.generate(dirty, 5000, seed=3, bad_fraction=0.05)
    good = _read_lines(os.path.join(clean, synthetic.EVENTS_FILE))
    lines = _read_lines(os.path.join(dirty, synthetic.EVENTS_FILE))
    # Bad rows come from their own random stream: the good rows are unchanged.
    extra = collections.Counter(lines) - collections.Counter(good)
    assert not collections.Counter(good) - collections.Counter(lines)
    assert len(lines) == 5000 + summary["bad_rows_total"]
    assert 150 <= summary["bad_rows_total"] <= 350
    good_set = set(good)
    found = collections.Counter()
    for line, n in extra.items():
        if line in good_set:
            found["duplicate"] += n
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            found["malformed_json"] += n
            continue
        if "user_id" not in row:
            found["missing_user_id"] += n
        elif not row["item_id"]:
            found["missing_item_id"] += n
        elif not isinstance(row["timestamp"], int) or row["timestamp"] >= 4102444800:
            found["bad_timestamp"] += n
        elif row["event"] not in synthetic.EVENT_NAMES:
            found["unknown_event"] += n
    assert dict(found) == {k: v for k, v in summary["bad_rows"].items() if v}
    assert all(summary["bad_rows"].values())  # every kind occurs at 5%


@pytest.mark.parametrize("kwargs", [
    {"num_events": 0}, {"num_events": 10, "bad_fraction": 1.5},
    {"num_events": 10, "target_ctr": 0.0}, {"num_events": 10, "new_user_fraction": 1.0}])
def test_bad_arguments_raise(tmp_path, kwargs):
    with pytest.raises(ValueError):
        synthetic.generate(str(tmp_path), **kwargs)


def test_cli_writes_tables(tmp_path, capsys):
    assert synthetic.main(["--out_dir", str(tmp_path), "--num_events", "500", "--seed", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["num_events"] == 500
    assert len(_read_lines(str(tmp_path / synthetic.EVENTS_FILE))) == 500


def test_prepare_synthetic_generates_once(tmp_path, monkeypatch):
    ds = datasets.prepare("synthetic", str(tmp_path), num_events=1000, seed=4)
    directory = tmp_path / "raw" / "synthetic-1000-4"
    assert ds == datasets.RawDataset(
        name="synthetic", config_path=feature_config.builtin_config_path("synthetic"),
        events=str(directory / "events.jsonl.gz"), users=str(directory / "users.jsonl.gz"),
        items=str(directory / "items.jsonl.gz"))
    assert len(_read_lines(ds.events)) == 1000
    assert json.loads((directory / "_SUCCESS").read_text())["num_events"] == 1000

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(synthetic, "generate", fail)
    assert datasets.prepare("synthetic", str(tmp_path), num_events=1000, seed=4) == ds
    # Without the marker (an interrupted run) the data is rebuilt.
    (directory / "_SUCCESS").unlink()
    with pytest.raises(AssertionError, match="regenerated"):
        datasets.prepare("synthetic", str(tmp_path), num_events=1000, seed=4)


def test_prepare_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'criteo'"):
        datasets.prepare("criteo", str(tmp_path))
