"""The compiled per-event loops (beam_jobs/_fastloops.c) equal their Python twins.

`EventParser.parse_batch` and `UserExampleBuilder.build` each run a C loop
when the extension is built and a Python loop otherwise (or with
FEEDREC_PURE_PYTHON=1). Every case here runs both on the same input and
compares everything they return or append: parsed events and rejects with
their reasons, serialized examples byte for byte, summary counts,
vocabulary counts, item statistics and session starts; then the whole job
on a synthetic log with bad rows, whose output trees must be identical.

The extension is built by `pip install -e .` (make install) whenever a C
compiler is present; these tests fail, not skip, if one is present and the
module is missing, so a broken build cannot pass unnoticed.
"""

import collections
import dataclasses
import json
import math
import os
import random
import shutil

import pytest

from feature_contract import feature_config as fc
from beam_jobs import compiled, sessionize, synthetic
from beam_jobs.event_parsing import EventParser, SideRowInfo, sort_and_dedupe
from beam_jobs.example_builder import UserExampleBuilder
from beam_jobs.example_encoding import bytes_entry, float_entry
from tests.beam_jobs.test_sessionize_equivalence import tree

HAVE_COMPILER = any(shutil.which(cc) for cc in ("cc", "gcc", "clang"))
if not compiled.available():
    if HAVE_COMPILER:
        pytest.fail("a C compiler is present but beam_jobs._fastloops is not built: "
                    "run `pip install -e .` (make install)", pytrace=False)
    pytest.skip("no C compiler on this machine: only the Python loops exist",
                allow_module_level=True)

T0 = 1_700_000_000
SYNTHETIC = fc.load(fc.builtin_config_path("synthetic"))
IDS = dataclasses.replace(SYNTHETIC, impression_id_column="request_id")
HOUR = {"name": "hour", "field": "context", "type": "categorical", "source": "derived",
        "derive": "hour_of_day", "vocab_size": 24}
IDS_FEATURES = [{"name": "user_id", "field": "user", "type": "categorical", "source": "users",
                 "vocab_size": 10},
                {"name": "item_id", "field": "item", "type": "categorical", "source": "items",
                 "vocab_size": 10}]
# No history, no item age, no raw event context: the smallest config.
BARE = fc.from_dict({"name": "bare", "session_gap_seconds": 600,
                     "features": [*IDS_FEATURES, HOUR]})
# Numeric and tags event features go through their normalizers, not the str fast path.
MIXED = fc.from_dict({"name": "mixed", "features": [
    *IDS_FEATURES,
    {"name": "network", "field": "context", "type": "categorical", "source": "events",
     "vocab_size": 8, "default": "none"},
    {"name": "score", "field": "context", "type": "numeric", "source": "events",
     "boundaries": [0.0, 1.0]},
    {"name": "labels", "field": "context", "type": "tags", "source": "events",
     "vocab_size": 8, "max_len": 2}, HOUR]})

# Several features on one raw column (and the impression id on a context
# column): every one of them gets the column's value.
SHARED = fc.from_dict({"name": "shared", "impression_id_column": "network", "features": [
    *IDS_FEATURES,
    {"name": "network", "field": "context", "type": "categorical", "source": "events",
     "vocab_size": 8, "default": "none"},
    {"name": "network_again", "field": "context", "type": "categorical", "source": "events",
     "vocab_size": 8, "default": "none", "column": "network"},
    {"name": "event_kind", "field": "context", "type": "categorical", "source": "events",
     "vocab_size": 8, "default": "none", "column": "event"}, HOUR]})
PARSE_CONFIGS = [SYNTHETIC, IDS, BARE, MIXED, SHARED]


def test_the_environment_switch_and_an_explicit_request(monkeypatch):
    monkeypatch.delenv(compiled.ENV_PURE_PYTHON, raising=False)
    assert compiled.wanted(None) is True
    assert compiled.wanted(False) is False
    assert compiled.wanted(True) is True


def test_pure_python_env_turns_the_compiled_loops_off(monkeypatch):
    monkeypatch.setenv(compiled.ENV_PURE_PYTHON, "1")
    assert compiled.wanted(None) is False
    assert EventParser(SYNTHETIC)._compiled is False
    assert UserExampleBuilder(SYNTHETIC)._compiled is False
    monkeypatch.setenv(compiled.ENV_PURE_PYTHON, "0")
    assert UserExampleBuilder(SYNTHETIC)._compiled is True


def test_asking_for_the_compiled_loops_without_the_module_is_an_import_error(monkeypatch):
    monkeypatch.setattr(compiled, "_MODULE", None)
    assert compiled.wanted(None) is False
    with pytest.raises(ImportError, match="not built"):
        EventParser(SYNTHETIC, compiled=True)


def test_a_build_older_than_its_c_source_is_not_used(tmp_path, monkeypatch):
    source = tmp_path / "_fastloops.c"
    source.write_text("/* edited after the build */")
    built = os.path.getmtime(compiled.module().__file__)
    monkeypatch.setattr(compiled, "_SOURCE", str(source))
    os.utime(source, (built + 60, built + 60))
    assert compiled._load() is None
    os.utime(source, (built - 60, built - 60))
    assert compiled._load() is compiled.module()


# ---- parse_batch ---------------------------------------------------------------------
def _records(config):
    base = {"user_id": "u1", "item_id": "i1", "event": "click", "timestamp": T0,
            "network": "wifi", "os": "ios", "tab": "home", "request_id": "r1",
            "score": 0.5, "labels": ["a", "b"]}
    variants = [{}]
    for column in ("user_id", "item_id"):
        variants += [{column: v} for v in (
            " u2 ", "\u3000u2", "u2\x1c", "\u200bu2", "", "  ", 123, 1.0, None, ["u"], True)]
        variants.append({column: "DROP"})
    variants += [{"event": v} for v in ("impression", "follow", " click", "CLICK", "", 1, None)]
    variants += [{"timestamp": v} for v in (
        T0 + 1, float(T0), str(T0), 100, -5, 4102444800, 4102444799, 2 ** 63, 10 ** 30,
        None, True, "2023-11-14T22:13:20")]
    variants += [{col: v} for col in ("network", "os", "score", "labels", "request_id")
                 for v in (None, 3, 2.5, "", "  ", " x ", ["p", "q", "r"], "a|b", True, "DROP")]
    records = []
    for variant in variants:
        row = {**base, **variant}
        row = {k: v for k, v in row.items() if v != "DROP"}
        records.append(json.dumps(row).encode())
    records += [b"{", b"[1, 2]", b"null", b'"text"', b"\xff\xfe", b"", b"{}",
                json.dumps(base), base, json.dumps(base).encode() + b" ",
                b'{"user_id": "u1", "item_id": "i1", "event": "click", "timestamp": '
                + str(10 ** 30).encode() + b"}"]
    return records


def _parse_both(config, records):
    """parse_batch compiled and in Python; asserts equal events and rejects."""
    got = EventParser(config, compiled=True).parse_batch(records)
    want = EventParser(config, compiled=False).parse_batch(records)
    assert got[0] == want[0]
    assert [(r.reason, str(r), rec) for r, rec in got[1]] == [
        (r.reason, str(r), rec) for r, rec in want[1]]
    return got, want


@pytest.mark.parametrize("config", PARSE_CONFIGS, ids=lambda c: c.name)
def test_parse_batch_compiled_equals_python(config):
    records = _records(config) * 2  # again: the second pass meets interned contexts
    got, want = _parse_both(config, records)
    assert len(got[0]) > 20 and len(got[1]) > 10
    # The same contexts are shared (one object per distinct fast-path context,
    # which marshal then writes once per user) in both.
    def sharing(parsed):
        first = {}
        return [first.setdefault(id(event[3]), i) for i, (_, event) in enumerate(parsed)]

    assert sharing(got[0]) == sharing(want[0])
    assert len(set(sharing(got[0]))) < len(got[0])


def _mutants(rng, lines, n):
    """Random byte edits of valid lines, biased to the bytes JSON gives meaning."""
    alphabet = [bytes([c]) for c in b'{}[]",:\\ \t\n-+.0123456789eEtrufalsn'] + [
        b"\x00", b"\x1f", b"\x7f", b"\xc3\xa9", b"\xff", b"1.5", b"null", b'"x"', b"1e3",
        b"99999999999999999999", b'"timestamp":1', b'"user_id":"u9"', b"\\u0041", b"[1]"]
    out = []
    for _ in range(n):
        line = bytearray(rng.choice(lines))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(line) + 1)
            op = rng.randrange(3)
            if op == 0 and at < len(line):
                del line[at]
            elif op == 1:
                line[at:at] = rng.choice(alphabet)
            elif at < len(line):
                line[at:at + 1] = rng.choice(alphabet)
        out.append(bytes(line))
    return out


@pytest.mark.parametrize("config", [SYNTHETIC, IDS, MIXED, SHARED], ids=lambda c: c.name)
def test_the_flat_line_scanner_agrees_with_orjson_on_mutated_lines(config):
    # The compiled parser reads flat ASCII lines itself and leaves every other
    # line to orjson; on any input both must give what the Python loop gives.
    rng = random.Random(len(config.name))
    lines = [json.dumps(dict(row), separators=sep).encode()
             for row in ({"timestamp": T0 + i, "user_id": f"u{i % 7}", "item_id": f"i{i}",
                          "event": ("impression", "click", "follow")[i % 3], "network": "wifi",
                          "os": " ios", "tab": "", "request_id": f"r{i}", "score": i,
                          "labels": "a|b", "extra": None, "flag": True}
                         for i in range(20))
             for sep in ((",", ":"), (", ", ": "))]
    lines += [b'{"timestamp": 1700000000, "user_id": "u1", "user_id": "u2", "item_id": "i",'
              b' "event": "click"}',
              b'{"extra": 1, "extra": [1, 2], "timestamp": 1700000000, "user_id": "u1",'
              b' "item_id": "i", "event": "click", "network": -0}',
              b' \t{"timestamp":1700000000,"user_id":"u1","item_id":"i","event":"click"}\r\n',
              b'{}', b'{"timestamp":1700000000,"user_id":"u1","item_id":"i","event":"click",'
              b'"network":"caf\xc3\xa9"}']
    records = lines + _mutants(rng, lines, 4000)
    got, want = _parse_both(config, records)
    # Both outcomes are well represented: the mutants are not all rejects.
    assert len(got[0]) > 400 and len(got[1]) > 1000


@pytest.mark.parametrize("config", [SYNTHETIC, IDS, MIXED, SHARED], ids=lambda c: c.name)
def test_parse_into_groups_parse_batch_by_user(config):
    records = _records(config)
    pairs, rejected = EventParser(config, compiled=False).parse_batch(records)
    want = {}
    for user, event in pairs:
        want.setdefault(user, []).append(event)
    for use in (True, False):
        pending = collections.defaultdict(list, {"u0": [("earlier",)]})
        got_rejected = EventParser(config, compiled=use).parse_into(records, pending)
        assert pending.pop("u0") == [("earlier",)]
        assert list(pending) == list(want)  # users in first-seen order
        assert dict(pending) == want
        assert [(r.reason, rec) for r, rec in got_rejected] == [
            (r.reason, rec) for r, rec in rejected]


def test_flat_lines_are_read_by_the_scanner_and_the_rest_by_orjson():
    flat = b'{"timestamp":1700000000,"user_id":"u1","item_id":"i1","event":"click","network":"w"}'
    others = [flat.replace(b'"w"', b'"\\u0077"'),  # an escape
              flat.replace(b'1700000000', b'1700000000.0'),  # a float
              flat.replace(b'"w"', b'"caf\xc3\xa9"'),  # non-ASCII
              flat.replace(b'"w"', b'["w"]'),  # nesting
              flat[:-1]]  # malformed
    for config in (SYNTHETIC, SHARED):
        parser = EventParser(config, compiled=True)
        parser.parse_batch([flat, flat.replace(b"u1", b"u2")] + others)
        assert parser.scanned_lines == 2
    parsed, _ = EventParser(SHARED, compiled=True).parse_batch([flat])
    # network, network_again and event_kind: each read from its raw column, and the id too.
    assert parsed[0][1][3:] == (("w", "w", "click"), "w")


# ---- build ---------------------------------------------------------------------------
def _random_user_events(rng, config, n_items=30):
    events = []
    t = T0 + rng.randrange(0, 5000)
    for _ in range(rng.randrange(1, 150)):
        t += rng.choice((0, 0, 1, 5, 60, 700, 2000, 40000))
        code = rng.choices((0, 1, 2), weights=(6, 3, 1))[0]
        item = f"i{rng.randrange(n_items)}"
        context = tuple(rng.choice(("a", "b", "")) if s.type == fc.CATEGORICAL
                        else rng.choice((0.0, 1.5)) if s.type == fc.NUMERIC
                        else tuple(rng.sample("xyz", rng.randrange(3)))
                        for s in config.by_source(fc.SOURCE_EVENTS))
        event = (float(t), code, item, context)
        if config.impression_id_column:
            event += (rng.choice(("", "r1", "r2", "r3")),)
        events.append(event)
    return sort_and_dedupe(events, config.impression_id_column is not None)[0]


def _items(rng, n_items=30):
    items = {}
    for i in range(n_items):
        created = rng.choice((None, float(T0 - 7200), float(T0 + 3000), float(T0 + 10 ** 6)))
        items[f"i{i}"] = SideRowInfo(bytes_entry(b"item_id", [f"i{i}".encode()])
                                     + float_entry(b"w", [i / 7]), (("item_id", (f"i{i}",)),),
                                     created)
    return items


def _run_builder(builder, users, items, split_ts):
    outputs = collections.defaultdict(list)
    counts = collections.Counter()
    vocab = collections.defaultdict(collections.Counter)
    item_stats = {}
    starts = []
    for user, info, events in users:
        builder.build(user, info, events, split_ts, items, outputs, counts, vocab, item_stats)
        starts.append(list(builder.train_session_starts))
        builder.train_session_starts.clear()
    return dict(outputs), counts, {k: dict(v) for k, v in vocab.items()}, item_stats, starts


@pytest.mark.parametrize("config", [SYNTHETIC, IDS, BARE, MIXED], ids=lambda c: c.name)
@pytest.mark.parametrize("split", [None, 30_000, 0])
def test_build_compiled_equals_python(config, split, monkeypatch):
    rng = random.Random(hash((config.name, split)) % 1000)
    items = _items(rng)
    users = [(f"u{u}", SideRowInfo(bytes_entry(b"user_id", [f"u{u}".encode()]),
                                   (("user_id", (f"u{u}",)),)),
              _random_user_events(rng, config)) for u in range(60)]
    split_ts = None if split is None else T0 + split
    want = _run_builder(UserExampleBuilder(config, compiled=False), users, items, split_ts)
    fast = UserExampleBuilder(config, compiled=True)

    def python_loop(*args, **kwargs):
        raise AssertionError("the compiled loop handed back an input it covers")

    monkeypatch.setattr(fast, "_event_loop", python_loop)
    got = _run_builder(fast, users, items, split_ts)
    assert got == want
    outputs = want[0]
    assert sum(len(v) for v in outputs.values()) > 1000
    if split == 30_000:
        assert outputs[f"{fc.RANKING}_{fc.EVAL}"] and outputs[f"{fc.RANKING}_{fc.TRAIN}"]


def test_a_categorical_item_age_takes_the_python_loop_with_the_same_result():
    config = fc.from_dict({"name": "age", "item_created_column": "created_ts", "features": [
        *IDS_FEATURES,
        {"name": "age_bucket", "field": "item", "type": "categorical", "source": "derived",
         "derive": "item_age_hours", "vocab_size": 100}, HOUR]})
    rng = random.Random(5)
    items = _items(rng)
    users = [(f"u{u}", SideRowInfo(b"", ()), _random_user_events(rng, config))
             for u in range(20)]
    got = _run_builder(UserExampleBuilder(config, compiled=True), users, items, T0 + 20_000)
    want = _run_builder(UserExampleBuilder(config, compiled=False), users, items, T0 + 20_000)
    assert got == want
    assert want[2]["age_bucket"]  # the categorical age reached the vocabulary


# ---- the whole job -------------------------------------------------------------------
def test_the_job_writes_the_same_files_with_and_without_the_compiled_loops(
        tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    synthetic.generate(str(raw), 3000, seed=4, bad_fraction=0.02)
    config_path = tmp_path / "synthetic.yaml"
    config_path.write_text(dataclasses.replace(
        SYNTHETIC, max_dead_letter_fraction=0.05).to_yaml())
    trees = {}
    python_loop = UserExampleBuilder._event_loop

    def no_python_loop(*args, **kwargs):
        raise AssertionError("the compiled job ran the Python event loop")

    for mode in ("1", "0"):
        monkeypatch.setenv(compiled.ENV_PURE_PYTHON, mode)
        # In the compiled run the Python loop must not run (it is the pure run's).
        monkeypatch.setattr(UserExampleBuilder, "_event_loop",
                            python_loop if mode == "1" else no_python_loop)
        out = tmp_path / f"pure_{mode}"
        sessionize.run(["--config", str(config_path),
                        "--events", str(raw / "events.jsonl.gz"),
                        "--users", str(raw / "users.jsonl.gz"),
                        "--items", str(raw / "items.jsonl.gz"),
                        "--output_dir", str(out), "--batch_size", "700"])
        trees[mode] = tree(out)
    assert sorted(trees["0"]) == sorted(trees["1"])
    for path, data in trees["1"].items():
        assert trees["0"][path] == data, path
    summary = json.loads(trees["1"]["summary.json"])
    assert summary["examples"][fc.ITEM2VEC]["train"] > 0
    assert sum(summary["events"]["dead_letter"].values()) > 0


# ---- per-user time summaries ---------------------------------------------------------
def test_known_times_compiled_equals_python():
    from beam_jobs.event_parsing import known_times
    rng = random.Random(3)
    events = [(float(T0 + rng.randrange(-50, 50)), 0, f"i{rng.randrange(6)}", ())
              for _ in range(200)]
    fast = compiled.module().known_times
    for items in (None, {"i1": 1, "i2": 2}, {"i9": 0}, {}):
        for keep in (True, False):
            assert fast(events, items, keep) == known_times(events, items, keep)
    assert fast([], None, True) is None
    lo, hi, times, n_known = fast(events, {"i1": 1}, True)
    assert (lo, hi) == (min(times), max(times)) and len(times) < len(events)
    assert n_known == sum(e[2] == "i1" for e in events) == len(times)
    assert fast(events, None, False)[3] == len(events)


def test_train_times_compiled_equals_the_python_lists_on_random_users():
    import array
    rng = random.Random(8)
    for split in (math.inf, T0 + 20_000.0):
        for _ in range(30):
            events = _random_user_events(rng, BARE)
            packed = compiled.module().train_times(events, split)
            assert packed == (
                array.array("q", [int(e[0]) for e in events if e[1] == 0 and e[0] < split]
                            ).tobytes(),
                array.array("q", [int(e[0]) for e in events if e[1] == 1 and e[0] < split]
                            ).tobytes())


def test_train_times_are_the_int64_times_of_the_train_impressions_and_clicks():
    import array
    events = [(T0 + 0.0, 0, "a", ()), (T0 + 1.9, 1, "a", ()), (T0 + 2.0, 2, "a", ()),
              (T0 + 5.0, 0, "b", ()), (T0 + 9.0, 1, "b", ())]
    impressions, clicks = (array.array("q"), array.array("q"))
    packed = compiled.module().train_times(events, T0 + 9.0)
    impressions.frombytes(packed[0])
    clicks.frombytes(packed[1])
    assert list(impressions) == [T0, T0 + 5] and list(clicks) == [T0 + 1]
    assert compiled.module().train_times(events, float("inf"))[1] == array.array(
        "q", [T0 + 1, T0 + 9]).tobytes()
    # A timestamp outside [0, 2**53) is left to the Python path.
    assert compiled.module().train_times([(-1.0, 0, "a", ())], 0.0) is None


# ---- TFRecord framing ----------------------------------------------------------------
def test_tfrecord_frames_compiled_equals_python():
    from beam_jobs import raw_io
    rng = random.Random(9)
    records = [b"", b"x"] + [rng.randbytes(rng.choice((1, 7, 8, 9, 100, 611, 70_000)))
                             for _ in range(300)]
    framed = compiled.module().tfrecord_frames(records)
    assert framed == raw_io._tfrecord_frames_py(records)
    assert len(framed) == sum(16 + len(r) for r in records)
    assert compiled.module().tfrecord_frames([]) == b""
    with pytest.raises(TypeError):
        compiled.module().tfrecord_frames([b"a", "not bytes"])


def test_both_crc32c_paths_equal_google_crc32c():
    import google_crc32c
    rng = random.Random(2)
    for data in [b"", b"a", b"123456789"] + [rng.randbytes(n) for n in range(1, 40)] + [
            rng.randbytes(5000)]:
        want = google_crc32c.value(data)
        assert compiled.module().crc32c(data) == want
        assert compiled.module().crc32c(data, False) == want
    assert compiled.module().crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


# ---- attribution and labels ----------------------------------------------------------
@pytest.mark.parametrize("split", [math.inf, T0 + 20_000, T0])
@pytest.mark.parametrize("window", [0.0, 300.0, 1800.0])
def test_attribution_and_labels_compiled_equal_python(split, window):
    from beam_jobs.example_builder import attribute_by_time, impression_labels
    rng = random.Random(int(window) + (split == math.inf))
    labels = UserExampleBuilder(SYNTHETIC)._labels
    attributed = 0
    for _ in range(40):
        events = _random_user_events(rng, BARE, n_items=5)
        target = compiled.module().attribute_by_time(events, split, window)
        assert target == attribute_by_time(events, split, window)
        got = compiled.module().impression_labels(events, target, split, labels)
        assert got == impression_labels(events, target, split, labels)
        attributed += sum(t >= 0 for t in target)
    assert attributed > 20
    # Shapes the twins do not handle are handed back (None), not guessed at.
    assert compiled.module().attribute_by_time([(1.0, "click", "a", ())], 0.0, 1.0) is None
    assert compiled.module().impression_labels(events, target[:-1], split, labels) is None
