"""Tests of beam_jobs.sessionize on tiny hand-written logs.

Three kinds of tests:
  * TestPipeline + assert_that on the `Sessionize` composite for the
    semantics (sessions, history cutoff, labels, time split);
  * one end-to-end run of `build_pipeline` over files (JSON Lines .gz + CSV,
    every bad-row reason) whose outputs are read back (tf.data, vocab files,
    summary.json) and checked field by field against hand-computed values;
  * one run over a small synthetic log whose labels, sessions and histories
    are checked against a naive re-derivation from the raw events.
(The label attribution rules themselves: tests/beam_jobs/test_example_builder.py.)
"""

import collections
import dataclasses
import gzip
import json
import os
import types

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from feature_contract import feature_config as fc
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


def label_block(train_click=(0, 0, 0), eval_click=(0, 0, 0), train_follow=(0, 0, 0),
                eval_follow=(0, 0, 0)):
    """summary["labels"] from (attributed, without_impression, impressions_labelled)."""
    def counts(triple):
        return dict(zip(("attributed", "without_impression", "impressions_labelled"), triple))

    return {"train": {"click": counts(train_click), "follow": counts(train_follow)},
            "eval": {"click": counts(eval_click), "follow": counts(eval_follow)}}


def test_repeated_impressions_one_click_one_positive_through_the_pipeline():
    # i1 shown three times, clicked once: one positive (the latest impression),
    # where the old rule labelled all three. i2: two clicks on one impression.
    events = [ev("u1", "i1", "impression", T0), ev("u1", "i1", "impression", T0 + 20),
              ev("u1", "i1", "impression", T0 + 40), ev("u1", "i1", "click", T0 + 50),
              ev("u1", "i1", "follow", T0 + 60),
              ev("u1", "i2", "impression", T0 + 70), ev("u1", "i2", "click", T0 + 80),
              ev("u1", "i2", "click", T0 + 90),
              ev("u1", "i3", "click", T0 + 95)]  # never shown: without impression

    def key(example):
        return (example["timestamp"][0] - T0, example["item_id"][0], example["click"][0],
                example["follow"][0])

    run_sessionize(events, {
        (fc.RANKING, fc.TRAIN): (key, [(0, "i1", 0, 0), (20, "i1", 0, 0), (40, "i1", 1, 1),
                                       (70, "i2", 1, 0)]),
        ("summary", "labels"): (lambda s: (s["labels"], s["checks"]["labels_reconcile"],
                                           s["checks"]["click_positives_at_most_clicks"],
                                           s["attribution_window_seconds"],
                                           s["impression_id_column"]),
                                [(label_block(train_click=(3, 1, 2), train_follow=(1, 0, 1)),
                                  True, True, GAP, None)]),
    }, split_timestamp=T0 + 10**6)


ID_CONFIG = fc.from_dict({**CONFIG_DICT, "impression_id_column": "request_id"})


def test_impression_id_join_labels_the_impression_with_the_clicks_id():
    events = [
        ev("u1", "i1", "impression", T0, request_id="r1"),
        ev("u1", "i1", "impression", T0 + 10, request_id="r2"),
        ev("u1", "i1", "click", T0 + 20, request_id="r1"),  # the older impression
        # Differs from the click above only in time: a second click, same id.
        ev("u1", "i1", "click", T0 + 21, request_id="r1"),
        ev("u1", "i1", "follow", T0 + 30, request_id="r2"),
        ev("u1", "i2", "impression", T0 + 40, request_id="r3"),
        # Same second, item and event, two ids: two clicks (not duplicates);
        # r4 names no impression, and the repeated r3 click is a duplicate.
        ev("u1", "i2", "click", T0 + 50, request_id="r3"),
        ev("u1", "i2", "click", T0 + 50, request_id="r4"),
        ev("u1", "i2", "click", T0 + 50, request_id="r3"),
        ev("u2", "i1", "click", T0 + 60, request_id="r1"),  # another user's id
    ]

    def key(example):
        return (example["user_key"][0], example["timestamp"][0] - T0,
                example["click"][0], example["follow"][0])

    run_sessionize(events, {
        (fc.RANKING, fc.TRAIN): (key, [("u1", 0, 1, 0), ("u1", 10, 0, 1), ("u1", 40, 1, 0)]),
        (fc.RETRIEVAL, fc.TRAIN): (lambda e: e["timestamp"][0] - T0, [20, 21, 50, 50, 60]),
        ("summary", "labels"): (lambda s: (s["labels"], s["events"]["filtered"],
                                           s["impression_id_column"], all(s["checks"].values())),
                                [(label_block(train_click=(3, 2, 2), train_follow=(1, 0, 1)),
                                  {"duplicate": 1}, "request_id", True)]),
    }, split_timestamp=T0 + 10**6, config=ID_CONFIG)


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
@pytest.mark.parametrize("value, unit, seconds", [
    (T0, "s", T0), ("1700000000", "s", T0), (T0 * 1000 + 500, "ms", T0 + 0.5),
    ("2023-11-14T22:13:20Z", "iso8601", T0), ("2023-11-14T22:13:20", "iso8601", T0),
    # A log's own time text with a strptime format (MIND's shape; no offset: UTC).
    (" 11/14/2023 10:13:20 PM", "%m/%d/%Y %I:%M:%S %p", T0),
    ("14.11.2023 23:13:20 +0100", "%d.%m.%Y %H:%M:%S %z", T0),
])
def test_parse_timestamp_units(value, unit, seconds):
    assert sessionize.parse_timestamp(value, unit) == seconds


@pytest.mark.parametrize("value, unit", [("soon", "s"), (float("nan"), "s"), (None, "s"),
                                         (T0, "iso8601"), (True, "s"),
                                         ("2023-11-14T22:13:20", "%m/%d/%Y %I:%M:%S %p"),
                                         (T0, "%m/%d/%Y %I:%M:%S %p")])
def test_parse_timestamp_rejects(value, unit):
    with pytest.raises((ValueError, TypeError)):
        sessionize.parse_timestamp(value, unit)


def test_subsecond_times_are_whole_seconds_so_same_second_rules_hold():
    # A click logged 800 ms before its impression, in the same second: on
    # float times the click came first, so the impression kept click=0 and
    # held its own click in its history, both stamped with that second.
    config = fc.from_dict({**CONFIG_DICT, "timestamp_unit": "ms"})
    ms = T0 * 1000
    events = [ev("u1", "i2", "impression", ms + 50), ev("u1", "i1", "click", ms + 100),
              ev("u1", "i1", "impression", ms + 900), ev("u1", "i3", "impression", ms + 1500)]

    def row(example):
        return (example["item_id"][0], example[fc.CLICK_LABEL][0],
                tuple(example["clicked_item_list"]), example["timestamp"][0])

    run_sessionize(events, {(fc.RANKING, fc.TRAIN): (row, [
        ("i2", 0, (), T0), ("i1", 1, (), T0), ("i3", 0, ("i1",), T0 + 1)])},
                   split_timestamp=T0 + 10**6, config=config)


def test_event_names_are_stripped_like_ids():
    # A CSV writer's "ts, user, item, click" gave " click": unknown_event before.
    events = [ev(" u1", "i1", " impression ", T0), ev("u1", "i1", "click\t", T0 + 1)]

    def label(example):
        return example[fc.CLICK_LABEL][0]

    run_sessionize(events, {(fc.RANKING, fc.TRAIN): (label, [1])}, split_timestamp=T0 + 10**6)


@pytest.mark.parametrize("raw, expected", [
    ('["a", "b"]', ("a", "b")),  # a JSON list in a CSV cell (README: tags may be a JSON list)
    ('[ "a" , 7, null ]', ("a", "7")),
    ('["a", "b", "c"]', ("a", "b")),  # max_len 2
    ("a|b", ("a", "b")),
    ("[draft|news", ("[draft", "news")),  # not a JSON list: the separator splits it
    ('[{"x": 1}]', ('[{"x": 1}]',)),  # a list of objects is no tag list
    (["a", " b "], ("a", "b")),
])
def test_tags_from_a_json_list_or_a_joined_string(raw, expected):
    assert sessionize.normalize_value(CONFIG.feature("interest_tags"), raw) == expected


@pytest.mark.parametrize("value", ["tomorrow", "nan", "inf"])
def test_bad_split_timestamp_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        sessionize.parse_args(["--config", "c.yaml", "--events", "e.jsonl", "--output_dir", "o",
                               "--split_timestamp", value])
    assert exit_.value.code == 2
    assert f"split timestamp {value!r} is neither unix seconds nor an ISO-8601 time" in (
        capsys.readouterr().err)


def test_split_timestamp_flag_accepts_seconds_and_iso():
    for value in ("1700000000", "2023-11-14T22:13:20Z"):
        args, _ = sessionize.parse_args(["--config", "c", "--events", "e", "--output_dir", "o",
                                         "--split_timestamp", value])
        assert args.split_timestamp == T0


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
    # The fixture is mostly bad rows on purpose: no dead-letter stop rule.
    config_path.write_text(dataclasses.replace(CONFIG, max_dead_letter_fraction=1.0).to_yaml())
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

    # Train exposures (an impression, or a click with none attributed; u3's
    # events are in eval): u1 x3 (impressions of i1 and i2, the click of i3;
    # its clicks of i1 and i2 are attributed to those impressions), u2 x1.
    # Counting events instead (u1 x5), the clicked items and their contexts
    # got counts the unclicked ones could not: a label leak.
    assert vocab("user_id") == ["u1", "u2"]
    assert vocab("interest_tags") == ["b", "a"]  # b: 3 + 1, a: 3
    assert vocab("item_id") == ["i1", "i2"]  # i1: 2, i2: 1, i3: 1 (tie by value); capped at 2
    assert vocab("item_city") == ["paris", "rome"]  # paris: 2 + 1, rome: 1
    assert vocab("network") == ["4g", "5g", "unk", "wifi"]  # 1 each (ties by value)
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


# ---- every output value of the bad-row fixture --------------------------------------
U1 = {"user_id": ["u1"], "age": [25.0], "interest_tags": ["a", "b"], "user_key": ["u1"]}
U2 = {"user_id": ["u2"], "age": [35.0], "interest_tags": ["b"], "user_key": ["u2"]}
U3 = {"user_id": ["u3"], "age": [0.0], "interest_tags": [], "user_key": ["u3"]}
I1 = {"item_id": ["i1"], "item_city": ["paris"]}  # created T0 - 2 h
I2 = {"item_id": ["i2"], "item_city": ["rome"]}  # created after every event: age 0
I3 = {"item_id": ["i3"], "item_city": ["paris"]}  # no creation time: age 0
I4 = {"item_id": ["i4"], "item_city": [""]}  # the smaller of two rows: no city


def expected_example(user, item, t, history, network, age_hours, new_user, labels=None):
    """A ranking (with labels) or retrieval example as decode() returns it."""
    out = {**user, **item, "clicked_item_list": history, "network": [network], "hour": ["22"],
           "item_age_hours": [age_hours], "timestamp": [T0 + t], "is_new_user": [new_user]}
    if labels is not None:
        out["click"], out["follow"] = [labels[0]], [labels[1]]
    return out


def read_split(out, kind, split):
    """Decoded examples of one kind and split, item ages rounded (float32 on
    the wire), sorted by (user, timestamp, item)."""
    files = tf.io.gfile.glob(str(out / kind / f"Split-{split}" / "data-*"))
    examples = [decode(r.numpy())
                for r in tf.data.TFRecordDataset(files, compression_type="GZIP")] if files else []
    for example in examples:
        if "item_age_hours" in example:
            example["item_age_hours"] = [round(v, 4) for v in example["item_age_hours"]]
    return sorted(examples, key=lambda e: (e["user_key"], e["timestamp"],
                                           e.get("item_id", e.get("session_items"))))


def test_every_example_of_the_bad_row_fixture_field_by_field(job):
    # Split at T0 + 300. Labels: u1's clicks on i1 (T0+30) and i2 (T0+50)
    # label their impressions, i3 (T0+60) has none; u3's click labels its
    # impression in eval; u2 never clicks.
    assert read_split(job.out, fc.RANKING, fc.TRAIN) == [
        expected_example(U1, I1, 0, [], "wifi", 2.0, 0, (1, 0)),
        expected_example(U1, I2, 40, ["i1"], "4g", 0.0, 0, (1, 0)),
        expected_example(U2, I1, 100, [], "5g", round(7300 / 3600, 4), 0, (0, 0))]
    assert read_split(job.out, fc.RANKING, fc.EVAL) == [
        expected_example(U2, I4, 400, [], "wifi", 0.0, 0, (0, 0)),
        expected_example(U3, I2, 310, [], "4g", 0.0, 1, (1, 0))]
    assert read_split(job.out, fc.RETRIEVAL, fc.TRAIN) == [
        expected_example(U1, I1, 30, [], "wifi", round(7230 / 3600, 4), 0),
        expected_example(U1, I2, 50, ["i1"], "4g", 0.0, 0),
        expected_example(U1, I3, 60, ["i1", "i2"], "unk", 0.0, 0)]
    assert read_split(job.out, fc.RETRIEVAL, fc.EVAL) == [
        expected_example(U3, I2, 320, [], "4g", 0.0, 1)]
    assert read_split(job.out, fc.ITEM2VEC, fc.TRAIN) == [
        {"session_items": ["i1", "i2", "i3"], "timestamp": [T0], "user_key": ["u1"],
         "is_new_user": [0]}]
    assert read_split(job.out, fc.ITEM2VEC, fc.EVAL) == []  # u3's one click < min_session_len
    assert job.summary["sessions"] == {"train": 1, "eval": 1}
    assert job.summary["labels"] == label_block(train_click=(2, 1, 2), eval_click=(1, 0, 1))
    assert (job.summary["attribution_window_seconds"], job.summary["impression_id_column"]) == (
        GAP, None)


# ---- a synthetic log against a naive re-derivation ---------------------------------------
_CODE = {"impression": 0, "click": 1, "follow": 2}


def naive_outputs(raw, config, split_ts):
    """Labels, sessions and histories re-derived by brute force from the raw
    events: no dicts of latest events, no resets, quadratic scans.

    Returns {(kind, split): sorted rows} with ranking rows (user, ts, item,
    click, follow, history), retrieval rows (user, ts, item, history) and
    item2vec rows (user, start, items).
    """
    def keys(name, column):
        with gzip.open(raw / name, "rt") as f:
            return {json.loads(line)[column] for line in f if line.strip()}

    users, items = keys("users.jsonl.gz", "user_id"), keys("items.jsonl.gz", "item_id")
    by_user = collections.defaultdict(set)  # a set drops exact duplicates
    with gzip.open(raw / "events.jsonl.gz", "rt") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            user, item, ts = row.get("user_id"), row.get("item_id"), row.get("timestamp")
            if (user in users and item in items and row.get("event") in _CODE
                    and type(ts) is int and config.min_timestamp <= ts < config.max_timestamp):
                by_user[user].add((ts, _CODE[row["event"]], item))
    window, gap = config.attribution_window, config.session_gap_seconds
    history_len = min(config.history_feature.max_len, config.history_max_len)
    out = collections.defaultdict(list)

    def split_of(ts):
        return fc.EVAL if ts >= split_ts else fc.TRAIN

    for user, events in by_user.items():
        events = sorted(events)

        def latest(k, code):
            """The last event of `code` on k's item before k in k's split, if in the window."""
            ts, _, item = events[k]
            found = [j for j in range(k) if events[j][1] == code and events[j][2] == item
                     and split_of(events[j][0]) == split_of(ts)]
            return found[-1] if found and ts - events[found[-1]][0] <= window else None

        def impression_of(k):
            if events[k][1] == 2:
                click = latest(k, 1)
                if click is not None and impression_of(click) is not None:
                    return impression_of(click)
            return latest(k, 0)

        labelled = collections.defaultdict(set)  # impression index -> codes
        for k, (_, code, _) in enumerate(events):
            if code and impression_of(k) is not None:
                labelled[impression_of(k)].add(code)
        session, start, prev = [], events[0][0], events[0][0]
        for k, (ts, code, item) in enumerate(events):
            history = tuple([i for t, c, i in events if c == 1 and t < ts][-history_len:])
            split = split_of(ts)
            if code == 0:
                out[(fc.RANKING, split)].append(
                    (user, ts, item, int(1 in labelled[k]), int(2 in labelled[k]), history))
            elif code == 1:
                out[(fc.RETRIEVAL, split)].append((user, ts, item, history))
            if ts - prev > gap or split != split_of(prev):
                if len(session) >= config.min_session_len:
                    out[(fc.ITEM2VEC, split_of(prev))].append((user, start, tuple(session)))
                session, start = [], ts
            if code == 1:
                session.append(item)
            prev = ts
        if len(session) >= config.min_session_len:
            out[(fc.ITEM2VEC, split_of(prev))].append((user, start, tuple(session)))
    return {key: sorted(rows) for key, rows in out.items()}


def test_synthetic_labels_sessions_and_histories_match_a_naive_derivation(tmp_path, capsys):
    from beam_jobs import synthetic

    raw = tmp_path / "raw"
    synthetic.generate(str(raw), 3000, seed=7, bad_fraction=0.02)
    # 2% bad rows on purpose: above the default 1% stop rule.
    config_path = tmp_path / "synthetic.yaml"
    config_path.write_text(dataclasses.replace(
        fc.load(fc.builtin_config_path("synthetic")), max_dead_letter_fraction=0.05).to_yaml())
    sessionize.run(["--config", str(config_path),
                    "--events", str(raw / "events.jsonl.gz"),
                    "--users", str(raw / "users.jsonl.gz"),
                    "--items", str(raw / "items.jsonl.gz"),
                    "--output_dir", str(tmp_path / "out"), "--batch_size", "500"])
    with open(tmp_path / "out" / "summary.json") as f:
        summary = json.load(f)
    assert summary["events"]["read"] > 3000 and all(summary["checks"].values())
    # The CLI ends by printing the key counts of summary.json.
    printed = capsys.readouterr().out
    events = summary["events"]
    assert (f"events: read {events['read']}, accepted {events['accepted']}, dead-lettered "
            f"{sum(events['dead_letter'].values())} (") in printed
    sizes = summary["split"]["sizes"]["ranking"]
    assert (f"  ranking: train {sizes['train']}, validation {sizes['validation']}, "
            f"eval {sizes['eval']}") in printed
    assert printed.rstrip().endswith("consistency checks: all pass")
    config = fc.load(fc.builtin_config_path("synthetic"))
    want = naive_outputs(raw, config, summary["split_timestamp"])
    got = {}
    for split in fc.SPLITS:
        got[(fc.RANKING, split)] = sorted(
            (e["user_key"][0], e["timestamp"][0], e["item_id"][0], e["click"][0],
             e["follow"][0], tuple(e["clicked_item_list"]))
            for e in read_split(tmp_path / "out", fc.RANKING, split))
        got[(fc.RETRIEVAL, split)] = sorted(
            (e["user_key"][0], e["timestamp"][0], e["item_id"][0],
             tuple(e["clicked_item_list"]))
            for e in read_split(tmp_path / "out", fc.RETRIEVAL, split))
        got[(fc.ITEM2VEC, split)] = sorted(
            (e["user_key"][0], e["timestamp"][0], tuple(e["session_items"]))
            for e in read_split(tmp_path / "out", fc.ITEM2VEC, split))
    for key, rows in got.items():
        assert rows == want.get(key, []), key
    by_split = summary["events"]["accepted_by_split"]
    for split in fc.SPLITS:
        ranking = got[(fc.RANKING, split)]
        positives = {name: sum(r[3 + i] for r in ranking)
                     for i, name in enumerate((fc.CLICK, fc.FOLLOW))}
        for name in (fc.CLICK, fc.FOLLOW):
            # The property: one click (follow) labels at most one impression.
            assert positives[name] <= by_split[split][name], (split, name)
            assert summary["labels"][split][name]["impressions_labelled"] == positives[name]
            assert (summary["labels"][split][name]["attributed"]
                    + summary["labels"][split][name]["without_impression"]
                    == by_split[split][name])
    # The log does repeat impressions of an item within the window (else
    # this test could not tell the rules apart): the old rule, every
    # impression with a click of its item in [t, t + window], labels more.
    old_rule = sum(
        1 for (kind, _), rows in want.items() if kind == fc.RANKING for r in rows
        if any(c[0] == r[0] and c[2] == r[2] and 0 <= c[1] - r[1] <= config.attribution_window
               for split in fc.SPLITS for c in want.get((fc.RETRIEVAL, split), [])))
    assert old_rule > sum(summary["labels"][s][fc.CLICK]["impressions_labelled"]
                          for s in fc.SPLITS)


def test_side_rows_cross_the_shuffle_as_one_pickled_value_and_keep_the_smallest():
    # _ParseSideTableFn -> (key, bytes) -> _pick_row: the parser's row comes
    # back whole, and of duplicates the smallest entries win (ties: the
    # smaller JSON text of the raw record); the others are dead-lettered
    # with their record as read (a JSON line decoded to text, a dict as is).
    fn = sessionize._ParseSideTableFn(CONFIG, "users")
    fn.setup()
    fn.start_bundle()
    lines = [b'{"user_id": "u1", "age": 30}', b'{"user_id": "u1", "age": 20}',
             {"user_id": "u1", "age": 20.0, "x": [1]}, b'{"user_id": "u2", "age": 20}',
             b'{"user_id": "u1"']
    out = list(fn.process(lines))
    rows = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    assert [key for key, _ in rows] == ["u1", "u1", "u1", "u2"]
    assert all(isinstance(blob, bytes) for _, blob in rows)
    assert fn._counts == {"users.read": 5, "users.dead_letter.malformed": 1}

    parser = sessionize.SideTableParser(CONFIG, "users")
    counts = collections.Counter()
    info, dead = sessionize._pick_row("users", "u2", [rows[3][1]], counts)
    assert info == parser.parse(lines[3])[1] and dead == []
    # age 20 (float 20.0 either way) sorts before age 30; the two age-20
    # rows tie on their entries, and the JSON text of the line (a quoted
    # string, '"') sorts before that of the dict ('{'): the line is kept.
    info, dead = sessionize._pick_row("users", "u1", [b for _, b in reversed(rows[:3])],
                                      counts)
    assert info == parser.parse(lines[1])[1] == parser.parse(lines[2])[1]
    assert info != parser.parse(lines[0])[1]
    assert dead == [
        {"reason": "duplicate_key", "source": "users", "record": lines[2]},
        {"reason": "duplicate_key", "source": "users", "record": '{"user_id": "u1", "age": 30}'}]
    assert counts == {"users.accepted": 2, "users.dead_letter.duplicate_key": 2}
    assert sessionize._pick_row("users", "u3", [], counts) == (None, [])
