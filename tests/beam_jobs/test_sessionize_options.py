"""Sessionize options of issue #12: split modes, validation sizes, vocabularies
without vocab_size, optional side tables, and the stop rules (empty table, too
many dead letters), each against hand-computed values or exact messages."""

import json
import logging
import os
import re
import sys
import types

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from feature_contract import feature_config as fc
from beam_jobs import raw_io, run_report, sessionize, splits
from tests.beam_jobs.test_sessionize import CONFIG_DICT, ITEMS, T0, USERS, decode, ev


def config(**overrides):
    raw = json.loads(json.dumps(CONFIG_DICT))
    raw.update(overrides)
    return fc.from_dict(raw)


# Only id features read the side tables: both are optional.
ID_ONLY = {
    "name": "ids",
    "split": {"mode": "random_users", "eval_fraction": 0.5, "seed": 0},
    "features": [
        {"name": "user_id", "field": "user", "type": "categorical", "source": "users"},
        {"name": "item_id", "field": "item", "type": "categorical", "source": "items"},
        {"name": "hour", "field": "context", "type": "categorical", "source": "derived",
         "derive": "hour_of_day", "vocab_size": 24},
    ],
}


def run(events, cfg, checks, users=USERS, items=ITEMS):
    """Sessionize on inline rows; checks: name -> (PCollection getter, fn, expected)."""
    with test_pipeline.TestPipeline() as p:
        inputs = {"events": p | "Events" >> beam.Create([events])}
        if users is not None:
            inputs["users"] = p | "Users" >> beam.Create(users)
        if items is not None:
            inputs["items"] = p | "Items" >> beam.Create(items)
        out = inputs | sessionize.Sessionize(cfg)
        for name, (get, fn, expected) in checks.items():
            got = get(out) | f"Map{name}" >> beam.Map(fn)
            assert_that(got, equal_to(expected), label=f"Assert{name}")


def summary(fn):
    return lambda out: out.summary, fn


def examples(kind, split, fn):
    return (lambda out: out.examples[(kind, split)] | f"Flat{kind}{split}" >> beam.FlatMap(
        lambda batch: batch), lambda b: fn(decode(b)))


def user_ts(example):
    return example["user_key"][0], example["timestamp"][0]


# ---- split modes -------------------------------------------------------------------
def test_event_fraction_split_is_the_time_of_the_event_at_floor_position():
    # 8 events, eval_fraction 0.25: position floor(0.75 * 8) = 6 -> T0+60
    # (time_span would cut at T0 + 0.75 * 400 = T0+300).
    times = [0, 10, 20, 30, 40, 50, 60, 400]
    events = [ev("u1", f"i{n % 9 + 1}", "impression", T0 + t) for n, t in enumerate(times)]
    cfg = config(eval_fraction=None, split={"mode": "event_fraction", "eval_fraction": 0.25})
    run(events, cfg, {
        "split_ts": summary(lambda s: s["split_timestamp"]) + ([T0 + 60.0],),
        "by_split": summary(lambda s: {k: v["impression"] for k, v in
                                       s["events"]["accepted_by_split"].items()})
        + ([{"train": 6, "eval": 2}],),
    })


def test_event_fraction_rule_by_hand():
    assert splits.event_fraction_split_time([5, 1, 3, 2], 0.5) == 3  # sorted[2]
    assert splits.event_fraction_split_time([7], 0.2) == 7
    assert splits.event_fraction_split_time([], 0.2) is None


def test_split_timestamp_in_the_config_accepts_a_date():
    cfg = config(eval_fraction=None, split={"mode": "timestamp",
                                            "timestamp": "2023-11-14T22:15:00"})
    # 2023-11-14T22:15:00Z = T0 + 100
    events = [ev("u1", "i1", "impression", T0 + 99), ev("u1", "i2", "impression", T0 + 100)]
    run(events, cfg, {
        "train": examples(fc.RANKING, fc.TRAIN, user_ts) + ([("u1", T0 + 99)],),
        "eval": examples(fc.RANKING, fc.EVAL, user_ts) + ([("u1", T0 + 100)],),
        "split_ts": summary(lambda s: s["split_timestamp"]) + ([T0 + 100.0],),
    })


def test_random_users_puts_whole_users_in_eval_without_side_tables():
    # Seed 0, eval_fraction 0.5: of u1..u4 only u4 hashes into eval.
    assert [u for u in ("u1", "u2", "u3", "u4")
            if splits.is_random_eval_user(u, 0.5, 0)] == ["u4"]
    events = [ev(u, "i1", "click", T0 + 10 * n) for n, u in enumerate(["u1", "u2", "u3", "u4"])]
    events += [ev("u4", "i2", "impression", T0 - 5)]  # earliest event, still eval
    cfg = fc.from_dict(ID_ONLY)
    run(events, cfg, {
        "train": examples(fc.RETRIEVAL, fc.TRAIN, lambda e: (e["user_id"][0], e["item_id"][0]))
        + ([("u1", "i1"), ("u2", "i1"), ("u3", "i1")],),
        "eval": examples(fc.RETRIEVAL, fc.EVAL, lambda e: (e["user_id"][0],
                                                           e["is_new_user"][0]))
        + ([("u4", 1)],),
        "ranking_eval": examples(fc.RANKING, fc.EVAL, user_ts) + ([("u4", T0 - 5)],),
        "summary": summary(lambda s: (s["split_timestamp"], s["split"]["mode"],
                                      s["split"]["seed"], s["users"]["table"],
                                      s["items"]["table"], s["examples"]["items"],
                                      s["users"]["new_in_eval"]))
        + ([(None, "random_users", 0, False, False, 2, 1)],),
    }, users=None, items=None)


def test_split_timestamp_flag_overrides_the_config_split():
    cfg = config(eval_fraction=None, split={"mode": "random_users", "eval_fraction": 0.5})
    stage = sessionize.Sessionize(cfg, split_timestamp=T0 + 5)
    assert stage._config.split.mode == fc.SPLIT_TIMESTAMP
    assert stage._config.split.timestamp == T0 + 5.0


# ---- validation sizes ----------------------------------------------------------------
def test_summary_shows_train_validation_eval_sizes_by_the_trainers_rule():
    # Split at T0+100; validation_fraction 0.5 of each kind's train span:
    #   ranking train impressions T0, T0+10, T0+20, T0+40: cutoff T0+40 - 0.5*40
    #     = T0+20 -> validation 2 (T0+20, T0+40), fit 2; eval impression T0+200.
    #   retrieval train clicks T0+5, T0+45: cutoff T0+25 -> validation 1, fit 1.
    #   item2vec: one train session (T0+5, T0+45 clicks, starts T0 ... the first
    #     event): a single timestamp, no span -> no cutoff, validation 0.
    cfg = config(eval_fraction=None, split={"mode": "timestamp", "timestamp": T0 + 100,
                                            "validation_fraction": 0.5})
    events = [ev("u1", "i1", "impression", T0), ev("u1", "i2", "click", T0 + 5),
              ev("u1", "i3", "impression", T0 + 10), ev("u1", "i4", "impression", T0 + 20),
              ev("u1", "i5", "impression", T0 + 40), ev("u1", "i6", "click", T0 + 45),
              ev("u1", "i7", "impression", T0 + 200)]
    run(events, cfg, {"split": summary(lambda s: s["split"]) + ([{
        "mode": "timestamp", "eval_fraction": None, "seed": None, "validation_fraction": 0.5,
        "sizes": {"ranking": {"train": 2, "validation": 2, "eval": 1},
                  "retrieval": {"train": 1, "validation": 1, "eval": 0},
                  "item2vec": {"train": 1, "validation": 0, "eval": 0}},
        "validation_cutoff": {"ranking": T0 + 20.0, "retrieval": T0 + 25.0,
                              "item2vec": None}}],)})


# ---- vocabularies without vocab_size -------------------------------------------------
@pytest.mark.parametrize("overrides, want", [
    ({}, ["wifi", "5g"]),  # default vocab_min_count 2: 4g (seen once) is dropped
    ({"vocab_max_size": 1}, ["wifi"]),
    ({"vocab_min_count": 1}, ["wifi", "5g", "4g"]),
])
def test_vocabulary_without_vocab_size_keeps_values_seen_min_count_times(overrides, want):
    raw = json.loads(json.dumps(CONFIG_DICT))
    raw["features"][7].pop("vocab_size")  # network
    raw.update(overrides)
    cfg = fc.from_dict(raw)
    events = [ev("u1", "i1", "impression", T0 + t, network=n) for t, n in
              [(0, "wifi"), (1, "wifi"), (2, "wifi"), (3, "5g"), (4, "5g"), (5, "4g")]]
    events.append(ev("u1", "i1", "impression", T0 + 1000, network="4g"))  # eval: not counted
    min_count = overrides.get("vocab_min_count", 2)
    max_size = overrides.get("vocab_max_size", 100_000)
    run(events, cfg, {
        "vocab": (lambda out: out.vocab | beam.Filter(lambda fv: fv[0] == "network"),
                  lambda fv: fv[1], [want]),
        "summary": summary(lambda s: s["vocabularies"]["network"]) + ([
            {"size": len(want), "min_count": min_count, "max_size": max_size,
             "vocab_size_given": False}],),
    })


# ---- side tables -----------------------------------------------------------------------
def test_a_needed_side_table_that_is_not_given_is_an_error():
    with pytest.raises(sessionize.SessionizeError) as err:
        sessionize.check_side_tables(config(), ["items"])
    assert str(err.value) == ("config 'tiny' reads users columns ['age', 'interest_tags']: "
                              "give the users table (--users), or drop those features")
    with pytest.raises(sessionize.SessionizeError, match=r"reads items columns \['city', "
                                                         r"'created_ts'\]"):
        sessionize.check_side_tables(config(), ["users"])
    assert sessionize.check_side_tables(fc.from_dict(ID_ONLY), []) == ()


# ---- stop rules --------------------------------------------------------------------------
def _summary_block(read, **dead):
    return {"read": read, "accepted": read - sum(dead.values()), "dead_letter": dead}


def test_dead_letter_limit_message_lists_reasons_most_frequent_first():
    s = {"max_dead_letter_fraction": 0.01,
         "events": _summary_block(1000, out_of_range=100, malformed=18, missing_id=0),
         "users": _summary_block(10, malformed=1), "items": _summary_block(50)}
    with pytest.raises(run_report.DataQualityError) as err:
        run_report.check_summary(s, {"events": "e/*.csv"}, "out/dead_letter/")
    assert str(err.value) == (
        "11.8% of the events rows were dead-lettered (118 of 1000), more than "
        "max_dead_letter_fraction 0.01: out_of_range 100, malformed 18; "
        "10.0% of the users rows were dead-lettered (1 of 10), more than "
        "max_dead_letter_fraction 0.01: malformed 1. The records and reasons are in "
        "out/dead_letter/; fix the data or the feature config (column names, timestamp_unit: "
        "s, ms, iso8601 or a strptime format such as '%m/%d/%Y %I:%M:%S %p', min_timestamp / "
        "max_timestamp), or raise max_dead_letter_fraction")
    s["events"] = _summary_block(1000, out_of_range=10)  # exactly 1%: allowed
    s["users"] = _summary_block(10)
    run_report.check_summary(s, {})


def test_no_impression_under_a_config_that_maps_some_names_the_fixes():
    by_split = {"train": {"impression": 0, "click": 7, "follow": 1},
                "eval": {"impression": 0, "click": 2, "follow": 0}}
    s = {"events": {**_summary_block(10), "accepted_by_split": by_split}}
    with pytest.raises(run_report.DataQualityError) as err:
        run_report.check_impressions(s, {"view": "impression", "show": "impression",
                                         "click": "click", "like": "follow"}, "out/dl/")
    assert str(err.value) == (
        "none of the 10 accepted events is an impression (click 9, follow 1), though "
        "event_values maps ['show', 'view'] to impression: the ranking stage would have no "
        "example. For a log without impressions (views or clicks only), map no value to "
        "impression in event_values: the run then trains the recall stage alone")
    s["events"]["dead_letter"] = {"unknown_event": 4, "malformed": 1}
    with pytest.raises(run_report.DataQualityError, match=r"example\. 4 events were "
                       r"dead-lettered as unknown_event \(their raw values are in out/dl/\): "
                       r"map the log's impression value in event_values\. For a log"):
        run_report.check_impressions(s, {"view": "impression"}, "out/dl/")
    # No rule without a mapped impression (the recall stage alone), with one impression, or
    # with no accepted event (check_summary's empty-table rule speaks first).
    run_report.check_impressions(s, {"view": "click"})
    by_split["eval"]["impression"] = 1
    run_report.check_impressions(s, {"view": "impression"})
    run_report.check_impressions({"events": {**_summary_block(0), "accepted_by_split": {}}},
                                 {"view": "impression"})


def _files_job(tmp_path, events_csv, cfg):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "events.csv").write_text(events_csv)
    (raw / "users.csv").write_text("user_id,age,interest_tags\nu1,25,a\n")
    (raw / "items.jsonl").write_text(json.dumps({"item_id": "i1", "city": "paris"}) + "\n")
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    return types.SimpleNamespace(
        config=str(path), events=str(raw / "events*.csv"), users=str(raw / "users.csv"),
        items=str(raw / "items.jsonl"), output_dir=str(tmp_path / "out"))


def test_too_many_dead_letters_stop_the_run_after_writing_summary_and_records(tmp_path):
    rows = "\n".join([f"{T0},u1,i1,click,wifi", "100,u1,i1,click,wifi"])
    args = _files_job(tmp_path, "timestamp,user_id,item_id,event,network\n" + rows + "\n",
                      config())
    with pytest.raises(Exception, match=r"50\.0% of the events rows were dead-lettered "
                                        r"\(1 of 2\), more than max_dead_letter_fraction "
                                        r"0\.01: out_of_range 1\."):
        with test_pipeline.TestPipeline() as p:
            sessionize.build_pipeline(p, args)
    out = tmp_path / "out"
    with open(out / "summary.json") as f:
        assert json.load(f)["events"]["dead_letter"]["out_of_range"] == 1
    dead = [json.loads(line) for name in os.listdir(out / "dead_letter")
            for line in open(out / "dead_letter" / name)]
    assert [d["reason"] for d in dead] == ["out_of_range"]


def test_an_empty_events_table_is_an_error_naming_it(tmp_path):
    args = _files_job(tmp_path, "timestamp,user_id,item_id,event,network\n", config())
    with pytest.raises(Exception, match=re.escape(f"events table '{args.events}' has no rows")):
        with test_pipeline.TestPipeline() as p:
            sessionize.build_pipeline(p, args)


def test_a_side_table_matching_nothing_is_an_error_naming_it(tmp_path):
    args = _files_job(tmp_path, "timestamp,user_id,item_id,event,network\n", config())
    args.items = str(tmp_path / "raw" / "item*.csv")
    with pytest.raises(raw_io.RawTableError) as err:
        with test_pipeline.TestPipeline() as p:
            sessionize.build_pipeline(p, args)
    assert str(err.value) == f"items table: no file matches {args.items!r}"


def test_cli_exits_1_with_the_message_as_its_last_line(tmp_path, monkeypatch):
    args = _files_job(tmp_path, "timestamp,user_id,item_id,event,network\n", config())
    missing = str(tmp_path / "nope" / "*.csv")
    monkeypatch.setattr("sys.argv", ["sessionize", "--config", args.config, "--events", missing,
                                     "--users", args.users, "--items", args.items,
                                     "--output_dir", args.output_dir])
    with pytest.raises(SystemExit) as exit_:
        sessionize.main()
    assert exit_.value.code == f"sessionize: events table: no file matches {missing!r}"


def test_a_stop_rule_failure_is_one_message_without_beams_traceback(tmp_path, monkeypatch,
                                                                      caplog):
    rows = "\n".join([f"{T0},u1,i1,click,wifi", "100,u1,i1,click,wifi"])
    args = _files_job(tmp_path, "timestamp,user_id,item_id,event,network\n" + rows + "\n",
                      config())
    monkeypatch.setattr("sys.argv", ["sessionize", "--config", args.config, "--events",
                                     args.events, "--users", args.users, "--items", args.items,
                                     "--output_dir", args.output_dir])
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        sessionize.main()
    assert str(exit_.value.code).startswith(
        "sessionize: 50.0% of the events rows were dead-lettered (1 of 2)")
    # The whole message ends with the stop rule's advice, not Beam's step name.
    assert str(exit_.value.code).endswith("or raise max_dead_letter_fraction")
    assert sessionize.strip_beam_step("x. [while running 'WriteOutputs/WriteSummary']") == "x."
    # Beam logs a DoFn's exception before re-raising it: not the job's own.
    assert [r for r in caplog.records if r.name.startswith("apache_beam")] == []
    assert "Traceback" not in caplog.text
    # The filter on its own: another exception is still logged, a user error
    # is dropped whether it is the message or the exc_info.
    quiet = sessionize._DropUserErrorTracebacks()

    def record(exc, msg=None):
        try:
            raise exc
        except type(exc):
            return logging.LogRecord("apache_beam.runners.common", logging.ERROR, "", 0,
                                     msg if msg is not None else exc, None, sys.exc_info())
    assert quiet.filter(record(KeyError("x")))
    assert not quiet.filter(record(sessionize.SessionizeError("bad")))
    assert not quiet.filter(record(run_report.DataQualityError("bad"), msg=RuntimeError("x")))
    assert quiet.filter(logging.makeLogRecord({"msg": "plain", "exc_info": True}))
