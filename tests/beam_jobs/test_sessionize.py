"""Tests of beam_jobs.sessionize on tiny hand-written logs.

Two kinds of tests:
  * TestPipeline + assert_that on the `Sessionize` composite for the
    semantics (sessions, history cutoff, labels, time split);
  * one end-to-end run of `build_pipeline` over files (JSON Lines .gz + CSV,
    every bad-row reason) whose outputs are read back (tf.data, vocab files,
    summary.json) and checked against hand-computed numbers.
"""

import gzip
import hashlib
import json
import os
import struct
import types

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import feature_config as fc
from beam_jobs import raw_io, sessionize

T0 = 1_700_000_000  # 2023-11-14 22:13:20 UTC: hour 22
GAP = 100
CONFIG_DICT = {
    "name": "tiny",
    "item_created_column": "created_ts",
    "session_gap_seconds": GAP,
    "min_session_len": 2,
    "history_max_len": 3,
    "eval_fraction": 0.25,
    "features": [
        {"name": "user_id", "field": "user", "type": "categorical", "source": "users",
         "vocab_size": 10},
        {"name": "age", "field": "user", "type": "numeric", "source": "users",
         "boundaries": [20, 30]},
        {"name": "interest_tags", "field": "user", "type": "tags", "source": "users",
         "vocab_size": 10, "max_len": 2},
        {"name": "clicked_item_list", "field": "user", "type": "sequence",
         "source": "history", "of": "item_id", "max_len": 3},
        {"name": "item_id", "field": "item", "type": "categorical", "source": "items",
         "vocab_size": 2},
        {"name": "item_city", "field": "item", "type": "categorical", "source": "items",
         "column": "city", "vocab_size": 10},
        {"name": "item_age_hours", "field": "item", "type": "numeric", "source": "derived",
         "derive": "item_age_hours", "boundaries": [1, 10]},
        {"name": "network", "field": "context", "type": "categorical", "source": "events",
         "vocab_size": 5, "default": "unk"},
        {"name": "hour", "field": "context", "type": "categorical", "source": "derived",
         "derive": "hour_of_day", "vocab_size": 24},
    ],
}
CONFIG = fc.from_dict(CONFIG_DICT)
USERS = [{"user_id": "u1", "age": 25, "interest_tags": ["a", "b", "c"]},
         {"user_id": "u2", "age": "35", "interest_tags": "b"},
         {"user_id": "u3"}]
ITEMS = [{"item_id": f"i{n}", "city": "paris", "created_ts": T0 - 7200} for n in range(1, 10)]


def ev(user, item, event, t, **context):
    return json.dumps({"user_id": user, "item_id": item, "event": event, "timestamp": t,
                       **context})


def decode(serialized):
    """Serialized tf.Example -> {key: list of python values (bytes as str)}."""
    example = tf.train.Example.FromString(serialized)
    out = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        out[key] = [v.decode() if isinstance(v, bytes) else v for v in values]
    return out


def run_sessionize(events, checks, split_timestamp=None, config=CONFIG):
    """Runs Sessionize on inline rows; checks: {(kind, split): (fn, expected)}."""
    with test_pipeline.TestPipeline() as p:
        inputs = {"events": p | "Events" >> beam.Create([events]),
                  "users": p | "Users" >> beam.Create(USERS),
                  "items": p | "Items" >> beam.Create(ITEMS)}
        out = inputs | sessionize.Sessionize(config, split_timestamp)
        for (kind, split), (fn, expected) in checks.items():
            if kind == "summary":
                got = out.summary | f"Check{kind}{split}" >> beam.Map(fn)
            else:
                got = (out.examples[(kind, split)]
                       | f"Flat{kind}{split}" >> beam.FlatMap(lambda batch: batch)
                       | f"Decode{kind}{split}" >> beam.Map(lambda b, f=fn: f(decode(b))))
            assert_that(got, equal_to(expected), label=f"Assert{kind}{split}")


def session_items(example):
    return tuple(example["session_items"])


# ---- wire encoding --------------------------------------------------------------
def test_example_encoding_round_trips_through_tf_train_example():
    serialized = sessionize.example_bytes([
        sessionize.bytes_entry(b"s", [b"a", "\u00e9".encode(), b""]),
        sessionize.bytes_entry(b"empty", []),
        sessionize.float_entry(b"f", [1.5, -2.25]),
        sessionize.int64_entry(b"i", [0, 1, 300, -7, 2**40]),
        sessionize.int64_entry_maker(b"t")(T0),
    ])
    assert decode(serialized) == {"s": ["a", "\u00e9", ""], "empty": [], "f": [1.5, -2.25],
                                  "i": [0, 1, 300, -7, 2**40], "t": [T0]}


# ---- sessions -------------------------------------------------------------------
@pytest.mark.parametrize("idle, expected", [
    (GAP - 1, [("i1", "i2", "i3", "i4")]),
    (GAP, [("i1", "i2", "i3", "i4")]),  # == gap stays in the session (documented)
    (GAP + 1, [("i1", "i2"), ("i3", "i4")]),
])
def test_session_boundary_at_the_idle_gap(idle, expected):
    events = [ev("u1", "i1", "click", T0), ev("u1", "i2", "click", T0 + 10),
              ev("u1", "i3", "click", T0 + 10 + idle),
              ev("u1", "i4", "click", T0 + 20 + idle)]
    run_sessionize(events, {(fc.ITEM2VEC, fc.TRAIN): (session_items, expected)},
                   split_timestamp=T0 + 10**6)


def test_impressions_keep_a_session_alive_and_short_sessions_are_dropped():
    events = [ev("u1", "i1", "click", T0), ev("u1", "i9", "impression", T0 + 90),
              ev("u1", "i2", "click", T0 + 180),  # 90 s after the impression
              ev("u1", "i3", "click", T0 + 1000)]  # alone: shorter than min_session_len
    run_sessionize(events, {(fc.ITEM2VEC, fc.TRAIN): (session_items, [("i1", "i2")])},
                   split_timestamp=T0 + 10**6)


# ---- history -------------------------------------------------------------------
def test_history_holds_only_strictly_earlier_clicks_most_recent_last_capped():
    events = [ev("u1", f"i{n}", "click", T0 + 10 * n) for n in range(1, 6)]
    events += [ev("u1", "i9", "impression", T0 + 50),  # same second as the i5 click
               ev("u1", "i8", "impression", T0 + 51)]

    def key(example):
        return example["timestamp"][0], tuple(example["clicked_item_list"])

    run_sessionize(events, {
        (fc.RETRIEVAL, fc.TRAIN): (key, [
            (T0 + 10, ()), (T0 + 20, ("i1",)), (T0 + 30, ("i1", "i2")),
            (T0 + 40, ("i1", "i2", "i3")), (T0 + 50, ("i2", "i3", "i4"))]),
        (fc.RANKING, fc.TRAIN): (key, [
            (T0 + 50, ("i2", "i3", "i4")), (T0 + 51, ("i3", "i4", "i5"))]),
    }, split_timestamp=T0 + 10**6)


# ---- labels ---------------------------------------------------------------------
def test_click_and_follow_labels_use_the_inclusive_session_gap_window():
    events = [
        ev("u1", "i1", "impression", T0), ev("u1", "i1", "click", T0 + GAP),
        ev("u1", "i1", "follow", T0 + GAP),
        ev("u1", "i2", "impression", T0), ev("u1", "i2", "click", T0 + GAP + 1),
        ev("u1", "i3", "click", T0 + 1), ev("u1", "i3", "impression", T0 + 2),  # click before
        ev("u1", "i4", "impression", T0 + 3), ev("u1", "i4", "follow", T0 + 4),  # no click
    ]

    def key(example):
        return example["item_id"][0], example["click"][0], example["follow"][0]

    run_sessionize(events, {(fc.RANKING, fc.TRAIN): (key, [
        ("i1", 1, 1), ("i2", 0, 0), ("i3", 0, 0), ("i4", 0, 1)])},
        split_timestamp=T0 + 10**6)


# ---- time split -------------------------------------------------------------------
def test_time_split_from_eval_fraction_cuts_sessions_and_marks_new_users():
    # Span T0..T0+400, eval_fraction 0.25 -> split at T0+300 exactly.
    events = [ev("u1", "i1", "click", T0), ev("u1", "i2", "click", T0 + 290),
              ev("u1", "i3", "click", T0 + 295), ev("u1", "i4", "impression", T0 + 299),
              ev("u1", "i5", "click", T0 + 300), ev("u1", "i6", "click", T0 + 305),
              ev("u2", "i7", "impression", T0 + 350), ev("u2", "i8", "impression", T0 + 400)]

    def key(example):
        return example["user_key"][0], example["timestamp"][0], example["is_new_user"][0]

    run_sessionize(events, {
        (fc.ITEM2VEC, fc.TRAIN): (session_items, [("i2", "i3")]),
        (fc.ITEM2VEC, fc.EVAL): (session_items, [("i5", "i6")]),
        (fc.RANKING, fc.TRAIN): (key, [("u1", T0 + 299, 0)]),
        (fc.RANKING, fc.EVAL): (key, [("u2", T0 + 350, 1), ("u2", T0 + 400, 1)]),
        (fc.RETRIEVAL, fc.EVAL): (key, [("u1", T0 + 300, 0), ("u1", T0 + 305, 0)]),
        ("summary", "split"): (lambda s: s["split_timestamp"], [T0 + 300.0]),
    })


def test_explicit_split_timestamp_overrides_the_fraction():
    events = [ev("u1", "i1", "impression", T0), ev("u1", "i2", "impression", T0 + 100)]

    def ts(example):
        return example["timestamp"][0]

    run_sessionize(events, {(fc.RANKING, fc.TRAIN): (ts, [T0]),
                            (fc.RANKING, fc.EVAL): (ts, [T0 + 100])},
                   split_timestamp=T0 + 1)


# ---- raw reading -------------------------------------------------------------------
def test_iter_records_csv_rows_blank_lines_and_bad_column_counts():
    import io
    data = b"a,b\n1,2\n\n3\n\"x,y\",4\n"
    records = list(raw_io.iter_records(io.BytesIO(data), raw_io.CSV))
    assert records[0] == {"a": "1", "b": "2"}
    assert isinstance(records[1], raw_io.MalformedRecord) and records[1].text == "3"
    assert records[2] == {"a": "x,y", "b": "4"}
    assert len(records) == 3
    jsonl = list(raw_io.iter_records(io.BytesIO(b'{"a":1}\n\n  \n{"a":2}'), raw_io.JSONL))
    assert jsonl == [b'{"a":1}', b'{"a":2}']


@pytest.mark.parametrize("name, fmt", [("e.csv", "csv"), ("e.CSV.gz", "csv"),
                                       ("e.jsonl.gz", "jsonl"), ("e.json", "jsonl")])
def test_table_format_from_file_name(name, fmt):
    assert raw_io.table_format(name) == fmt


def test_table_format_rejects_unknown_extension():
    with pytest.raises(ValueError, match="e.parquet"):
        raw_io.table_format("e.parquet")


@pytest.mark.parametrize("value, unit, seconds", [
    (T0, "s", T0), ("1700000000", "s", T0), (T0 * 1000 + 500, "ms", T0 + 0.5),
    ("2023-11-14T22:13:20Z", "iso8601", T0), ("2023-11-14T22:13:20", "iso8601", T0),
])
def test_parse_timestamp_units(value, unit, seconds):
    assert sessionize.parse_timestamp(value, unit) == seconds


@pytest.mark.parametrize("value, unit", [("soon", "s"), (float("nan"), "s"), (None, "s"),
                                         (T0, "iso8601"), (True, "s")])
def test_parse_timestamp_rejects(value, unit):
    with pytest.raises((ValueError, TypeError)):
        sessionize.parse_timestamp(value, unit)


# ---- end to end over files -----------------------------------------------------------
_CSV_HEADER = "timestamp,user_id,item_id,event,network"
# (reason, source, record as written to dead_letter) for every bad row below.
BAD_EVENT_LINES = [
    ("malformed", "not json"),
    ("malformed", "[1, 2]"),
]
BAD_CSV_ROWS = [
    ("missing_id", f"{T0 + 10},,i1,click,wifi"),
    ("unknown_event", f"{T0 + 10},u1,i1,like,wifi"),
    ("bad_timestamp", "yesterday,u1,i1,click,wifi"),
    ("out_of_range", "100,u1,i1,click,wifi"),
    ("unknown_user", f"{T0 + 10},ghost,i1,click,wifi"),
    ("unknown_item", f"{T0 + 10},u1,i404,click,wifi"),
    ("malformed", f"{T0 + 10},u1,i1"),
]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Runs the whole job once over files; returns paths and the summary."""
    root = tmp_path_factory.mktemp("sessionize")
    raw = root / "raw"
    raw.mkdir()
    good_json = [
        ev("u1", "i1", "impression", T0, network="wifi"),
        ev("u1", "i1", "click", T0 + 30, network="wifi"),
        ev("u1", "i2", "impression", T0 + 40, network="4g"),
        ev("u1", "i2", "click", T0 + 50, network="4g"),
        ev("u1", "i3", "click", T0 + 60),  # network missing -> default "unk"
        ev("u1", "i3", "click", T0 + 60),  # exact duplicate -> filtered
        ev("u2", "i1", "impression", T0 + 100, network="5g"),
        ev("u2", "i4", "impression", T0 + 400, network="wifi"),
    ]
    with gzip.open(raw / "events-a.jsonl.gz", "wt") as f:
        f.write("\n".join(good_json + [line for _, line in BAD_EVENT_LINES]) + "\n")
    csv_rows = [f"{T0 + 310},u3,i2,impression,4g", f"{T0 + 320},u3,i2,click,4g"]
    (raw / "events-b.csv").write_text(
        "\n".join([_CSV_HEADER] + csv_rows + [row for _, row in BAD_CSV_ROWS]) + "\n")
    (raw / "users.csv").write_text(
        "user_id,age,interest_tags\nu1,25,a|b\nu2,35,b\nu3,,\nu1,26,c\n,40,a\nu4,1\n")
    items = [{"item_id": "i1", "city": "paris", "created_ts": T0 - 7200},
             {"item_id": "i2", "city": "rome", "created_ts": T0 + 100000},
             {"item_id": "i3", "city": "paris"}, {"item_id": "i4"}]
    (raw / "items.jsonl").write_text(
        "\n".join([json.dumps(r) for r in items]
                  + ["{oops", json.dumps({"city": "x"}),
                     json.dumps({"item_id": "i4", "city": "oslo"})]) + "\n")
    config_path = root / "tiny.yaml"
    config_path.write_text(CONFIG.to_yaml())
    out = root / "out"
    args = types.SimpleNamespace(
        config=str(config_path), events=str(raw / "events-*"), users=str(raw / "users.csv"),
        items=str(raw / "items.jsonl"), output_dir=str(out), split_timestamp=None,
        batch_size=3)
    with test_pipeline.TestPipeline() as p:
        sessionize.build_pipeline(p, args)
    with open(out / "summary.json") as f:
        summary = json.load(f)
    dead = []
    for name in os.listdir(out / "dead_letter"):
        with open(out / "dead_letter" / name) as f:
            dead += [json.loads(line) for line in f if line.strip()]
    return types.SimpleNamespace(out=out, summary=summary, dead=dead)


def read_examples(path_glob):
    files = tf.io.gfile.glob(path_glob)
    assert files, path_glob
    return [decode(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


@pytest.mark.parametrize("reason, record", BAD_EVENT_LINES + [
    (reason, row) for reason, row in BAD_CSV_ROWS if reason not in ("unknown_user",
                                                                     "unknown_item")])
def test_bad_event_rows_are_dead_lettered_with_their_reason(job, reason, record):
    raws = [d["record"] if isinstance(d["record"], str) else None
            for d in job.dead if d["reason"] == reason and d["source"] == "events"]
    if record.count(",") >= 4:  # a CSV row is dead-lettered as its column dict
        row = dict(zip(_CSV_HEADER.split(","), record.split(",")))
        assert row in [d["record"] for d in job.dead if d["reason"] == reason]
    else:
        assert record in raws


@pytest.mark.parametrize("reason, user, item", [("unknown_user", "ghost", "i1"),
                                                 ("unknown_item", "u1", "i404")])
def test_join_failures_are_dead_lettered_as_parsed_events(job, reason, user, item):
    records = [d["record"] for d in job.dead if d["reason"] == reason]
    assert records == [{"user_id": user, "item_id": item, "event": "click",
                        "timestamp": T0 + 10.0, "network": "wifi"}]


@pytest.mark.parametrize("source, reason, key", [
    ("users", "malformed", None), ("users", "missing_key", None),
    ("users", "duplicate_key", "u1"), ("items", "malformed", None),
    ("items", "missing_key", None), ("items", "duplicate_key", "i4")])
def test_bad_side_table_rows_are_dead_lettered(job, source, reason, key):
    found = [d for d in job.dead if d["source"] == source and d["reason"] == reason]
    assert len(found) == 1
    assert job.summary[source]["dead_letter"][reason] == 1
    if key:
        id_column = "user_id" if source == "users" else "item_id"
        record = found[0]["record"]  # a JSON line stays text, a CSV row is a dict
        record = json.loads(record) if isinstance(record, str) else record
        assert record[id_column] == key


def test_summary_reconciles_with_hand_counts(job):
    events = job.summary["events"]
    assert events["read"] == 19  # 10 JSON lines + 9 CSV rows
    assert events["accepted"] == 9
    assert events["dead_letter"] == {
        "malformed": 3, "missing_id": 1, "unknown_event": 1, "bad_timestamp": 1,
        "out_of_range": 1, "unknown_user": 1, "unknown_item": 1}
    assert events["filtered"] == {"duplicate": 1}
    assert events["read"] == (events["accepted"] + sum(events["dead_letter"].values())
                              + sum(events["filtered"].values()))
    assert events["accepted_by_split"] == {
        "train": {"impression": 3, "click": 3, "follow": 0},
        "eval": {"impression": 2, "click": 1, "follow": 0}}
    assert job.summary["split_timestamp"] == T0 + 300.0
    assert job.summary["examples"] == {
        "item2vec": {"train": 1, "eval": 0}, "retrieval": {"train": 3, "eval": 1},
        "ranking": {"train": 3, "eval": 2}, "items": 4}
    assert (job.summary["users"]["read"], job.summary["users"]["accepted"]) == (6, 3)
    assert (job.summary["items"]["read"], job.summary["items"]["accepted"]) == (7, 4)
    assert job.summary["users"]["new_in_eval"] == 1  # u3
    assert all(job.summary["checks"].values()), job.summary["checks"]
    assert len(job.dead) == 9 + 3 + 3


def test_ranking_examples_read_back_with_tf_data(job):
    pattern = str(job.out / "ranking" / "Split-train" / "data-*.tfrecord.gz")
    spec = {
        "user_id": tf.io.FixedLenFeature([], tf.string),
        "age": tf.io.FixedLenFeature([], tf.float32),
        "interest_tags": tf.io.VarLenFeature(tf.string),
        "clicked_item_list": tf.io.VarLenFeature(tf.string),
        "item_id": tf.io.FixedLenFeature([], tf.string),
        "item_city": tf.io.FixedLenFeature([], tf.string),
        "item_age_hours": tf.io.FixedLenFeature([], tf.float32),
        "network": tf.io.FixedLenFeature([], tf.string),
        "hour": tf.io.FixedLenFeature([], tf.string),
        "click": tf.io.FixedLenFeature([], tf.int64),
        "follow": tf.io.FixedLenFeature([], tf.int64),
        "timestamp": tf.io.FixedLenFeature([], tf.int64),
        "is_new_user": tf.io.FixedLenFeature([], tf.int64),
        "user_key": tf.io.FixedLenFeature([], tf.string),
    }
    dataset = tf.data.TFRecordDataset(tf.io.gfile.glob(pattern), compression_type="GZIP")
    rows = sorted((tf.io.parse_single_example(r, spec) for r in dataset),
                  key=lambda r: int(r["timestamp"]))
    assert [int(r["timestamp"]) for r in rows] == [T0, T0 + 40, T0 + 100]
    first, second, third = rows
    assert first["user_id"].numpy() == b"u1" and float(first["age"]) == 25.0
    assert tf.sparse.to_dense(first["interest_tags"]).numpy().tolist() == [b"a", b"b"]
    assert tf.sparse.to_dense(first["clicked_item_list"]).numpy().tolist() == []
    assert first["item_city"].numpy() == b"paris"
    assert float(first["item_age_hours"]) == pytest.approx(2.0)
    assert (first["network"].numpy(), first["hour"].numpy()) == (b"wifi", b"22")
    assert (int(first["click"]), int(first["follow"]), int(first["is_new_user"])) == (1, 0, 0)
    assert tf.sparse.to_dense(second["clicked_item_list"]).numpy().tolist() == [b"i1"]
    assert float(second["item_age_hours"]) == 0.0  # created after the event: clipped
    assert (third["user_key"].numpy(), int(third["click"])) == (b"u2", 0)
    evals = read_examples(str(job.out / "ranking" / "Split-eval" / "data-*.tfrecord.gz"))
    assert sorted((e["user_key"][0], e["is_new_user"][0], e["click"][0]) for e in evals) == [
        ("u2", 0, 0), ("u3", 1, 1)]


def test_item2vec_retrieval_and_item_catalogue(job):
    sessions = read_examples(str(job.out / "item2vec" / "Split-train" / "data-*"))
    assert [(s["session_items"], s["user_key"], s["timestamp"]) for s in sessions] == [
        (["i1", "i2", "i3"], ["u1"], [T0])]
    retrieval = read_examples(str(job.out / "retrieval" / "Split-train" / "data-*"))
    assert sorted((r["timestamp"][0], r["item_id"][0], r["clicked_item_list"])
                  for r in retrieval) == [
        (T0 + 30, "i1", []), (T0 + 50, "i2", ["i1"]), (T0 + 60, "i3", ["i1", "i2"])]
    assert all("click" not in r for r in retrieval)
    items = read_examples(str(job.out / "items" / "data-*"))
    assert sorted((i["item_id"][0], i["item_city"][0], i["item_impressions"][0],
                   i["item_clicks"][0]) for i in items) == [
        ("i1", "paris", 2, 1), ("i2", "rome", 1, 1), ("i3", "paris", 0, 1), ("i4", "", 0, 0)]


def test_vocabularies_most_frequent_first_ties_by_value_capped(job):
    def vocab(name):
        return (job.out / "vocab" / f"{name}.txt").read_text().splitlines()

    # Train events: u1 x5, u2 x1 (u3's events are in eval).
    assert vocab("user_id") == ["u1", "u2"]
    assert vocab("interest_tags") == ["b", "a"]  # b: 5 + 1, a: 5
    assert vocab("item_id") == ["i1", "i2"]  # i1: 3, i2: 2, i3: 1; capped at 2
    assert vocab("item_city") == ["paris", "rome"]  # paris: 3 + 1, rome: 2
    assert vocab("network") == ["4g", "wifi", "5g", "unk"]  # 2, 2 (tie), 1, 1 (tie)
    assert vocab("hour") == ["22"]
    assert sorted(os.listdir(job.out / "vocab")) == sorted(
        f"{s.name}.txt" for s in CONFIG.vocab_features)
    assert (job.out / "item_frequencies.tsv").read_text() == (
        "item_id\timpressions\tclicks\ni1\t2\t1\ni2\t1\t1\ni3\t0\t1\n")


def test_cli_flags_split_job_and_beam_arguments():
    args, beam_args = sessionize.parse_args([
        "--config", "c.yaml", "--events", "e*", "--users", "u", "--items", "i",
        "--output_dir", "o", "--split_timestamp", "2023-11-14T22:13:20Z",
        "--runner", "DirectRunner", "--direct_num_workers", "2"])
    assert beam_args == ["--runner", "DirectRunner", "--direct_num_workers", "2"]
    assert sessionize.parse_split_timestamp(args.split_timestamp) == T0
    assert sessionize.parse_split_timestamp("1700000000") == T0


# ---- pinned outputs ----------------------------------------------------------------
def output_digest(out_dir) -> str:
    """sha256 over every output: each TFRecord directory's records (sorted, so
    sharding and bundle order do not matter), dead letters (sorted lines) and
    the exact bytes of vocabularies, item_frequencies.tsv and summary.json."""
    digest = hashlib.sha256()
    for directory, _, names in sorted(os.walk(out_dir)):
        rel = os.path.relpath(directory, out_dir)
        records, lines = [], []
        for name in sorted(names):
            path = os.path.join(directory, name)
            if name.endswith(".tfrecord.gz"):
                with gzip.open(path, "rb") as f:
                    data = f.read()
                offset = 0
                while offset < len(data):
                    (size,) = struct.unpack("<Q", data[offset:offset + 8])
                    records.append(data[offset + 12:offset + 12 + size])
                    offset += 16 + size
            elif rel == "dead_letter":
                with open(path, "rb") as f:
                    lines += f.read().splitlines()
            else:
                with open(path, "rb") as f:
                    digest.update(f"{rel}/{name}\n".encode() + f.read())
        for blob in sorted(records) + sorted(lines):
            digest.update(f"{rel}:{len(blob)}\n".encode() + blob)
    return digest.hexdigest()


# Digests of the outputs written by the job before its 2026-11 speed-up
# (per-event dict shuffle, un-batched parsing): the faster encoding, parsing
# and shuffle paths must write the same bytes.
PINNED_JOB_DIGEST = "009031be008b109d15ec7ad0e38a6a5a04c64d75644d2a413a40978b2cf7520f"
PINNED_SYNTHETIC_DIGEST = "0c20fdb9f2e7f70be2cd6a71940335b0d84bda13848ac79fb387dc1b8047fb75"


def test_outputs_are_pinned_on_the_bad_row_fixture(job):
    assert output_digest(job.out) == PINNED_JOB_DIGEST


def test_outputs_are_pinned_on_a_small_synthetic_log(tmp_path):
    from beam_jobs import synthetic

    synthetic.generate(str(tmp_path / "raw"), 3000, seed=7, bad_fraction=0.02)
    raw = tmp_path / "raw"
    sessionize.run(["--config", fc.builtin_config_path("synthetic"),
                    "--events", str(raw / "events.jsonl.gz"),
                    "--users", str(raw / "users.jsonl.gz"),
                    "--items", str(raw / "items.jsonl.gz"),
                    "--output_dir", str(tmp_path / "out"), "--batch_size", "500"])
    with open(tmp_path / "out" / "summary.json") as f:
        summary = json.load(f)
    assert summary["events"]["read"] > 3000 and all(summary["checks"].values())
    assert output_digest(tmp_path / "out") == PINNED_SYNTHETIC_DIGEST
