"""Label attribution of beam_jobs.example_builder on hand-built event lists.

One click labels at most one impression: the latest of its item at or before
it within the attribution window, or, with `impression_id_column`, the
impression row with its id. Each case runs `UserExampleBuilder.build` (pure
Python, no pipeline) on one user's events and checks the click / follow
label of every ranking example and the summary counts it adds.
"""

import collections
import json
import math

import pytest
import tensorflow as tf

from feature_contract import feature_config as fc
from beam_jobs.event_parsing import EventParser, SideRowInfo, sort_and_dedupe
from beam_jobs.example_builder import (
    UserExampleBuilder, attribute_by_id, attribute_by_time)
from beam_jobs.example_encoding import bytes_entry

T0 = 1_700_000_000
CODE = {"impression": 0, "click": 1, "follow": 2}
FEATURES = [
    {"name": "user_id", "field": "user", "type": "categorical", "source": "users",
     "vocab_size": 10},
    {"name": "item_id", "field": "item", "type": "categorical", "source": "items",
     "vocab_size": 10},
    {"name": "hour", "field": "context", "type": "categorical", "source": "derived",
     "derive": "hour_of_day", "vocab_size": 24},
]


def config(**overrides):
    return fc.from_dict({"name": "labels", "session_gap_seconds": 1800,
                         "features": FEATURES, **overrides})


TIME = config()  # attribution window = session gap = 1800 s
WINDOW_300 = config(attribution_window_seconds=300)
IDS = config(impression_id_column="request_id")


def ev(t, event, item="A", rid=None):
    """An event tuple as EventParser makes it (t: seconds after T0)."""
    event = (float(T0 + t), CODE[event], item, ())
    return event if rid is None else event + (rid,)


def build(events, cfg=TIME, split_ts=None):
    """Runs the builder on one user's events.

    Returns ([(split, t, item, click, follow)] per ranking example in time
    order, {count name: value} of the label counts).
    """
    events, _ = sort_and_dedupe(list(events), cfg.impression_id_column is not None)
    items = {e[2]: SideRowInfo(bytes_entry(b"item_id", [e[2].encode()]), ())
             for e in events}
    outputs = collections.defaultdict(list)
    counts = collections.Counter()
    UserExampleBuilder(cfg).build(
        "u1", SideRowInfo(b"", ()), events, None if split_ts is None else T0 + split_ts,
        items, outputs, counts, collections.defaultdict(collections.Counter), {})
    rows = []
    for split in fc.SPLITS:
        for serialized in outputs[f"{fc.RANKING}_{split}"]:
            feature = tf.train.Example.FromString(serialized).features.feature
            rows.append((split, feature["timestamp"].int64_list.value[0] - T0,
                         feature["item_id"].bytes_list.value[0].decode(),
                         feature["click"].int64_list.value[0],
                         feature["follow"].int64_list.value[0]))
    label_counts = {k: v for k, v in counts.items() if k.startswith("labels.")}
    return sorted(rows, key=lambda r: (r[1], r[2])), label_counts


def clicks(split="train", attributed=0, without=0, labelled=0, kind="click"):
    """The label counts of one split and kind (zeros are not stored)."""
    out = {f"labels.{split}.{kind}.attributed": attributed,
           f"labels.{split}.{kind}.without_impression": without,
           f"labels.{split}.{kind}.impressions_labelled": labelled}
    return {k: v for k, v in out.items() if v}


REPEATED = [ev(0, "impression"), ev(100, "impression"), ev(200, "impression")]


# ---- attribution by time --------------------------------------------------------------
@pytest.mark.parametrize("click_t, labelled_t", [
    (250, 200),  # the latest of three impressions, not all three
    (150, 100),  # the impression at 200 comes after the click
    (200, 200),  # same second: impression < click, they pair up
    (99, 0),
])
def test_a_click_labels_only_the_latest_impression_at_or_before_it(click_t, labelled_t):
    rows, counts = build(REPEATED + [ev(click_t, "click")])
    assert rows == [("train", t, "A", int(t == labelled_t), 0) for t in (0, 100, 200)]
    assert counts == clicks(attributed=1, labelled=1)


@pytest.mark.parametrize("click_t, labelled", [(300, 1), (301, 0)])
def test_the_window_is_inclusive_and_a_late_click_counts_as_without_impression(
        click_t, labelled):
    rows, counts = build([ev(0, "impression"), ev(click_t, "click")], cfg=WINDOW_300)
    assert rows == [("train", 0, "A", labelled, 0)]
    assert counts == clicks(attributed=labelled, without=1 - labelled, labelled=labelled)


def test_an_older_impression_is_never_reached_past_the_latest():
    # The latest impression (t=100) is 301 s before the click: no label,
    # and the even older t=0 one is not a fallback.
    rows, counts = build([ev(0, "impression"), ev(100, "impression"), ev(401, "click")],
                         cfg=WINDOW_300)
    assert rows == [("train", 0, "A", 0, 0), ("train", 100, "A", 0, 0)]
    assert counts == clicks(without=1)


def test_the_window_defaults_to_the_session_gap():
    cfg = config(session_gap_seconds=600)
    assert build([ev(0, "impression"), ev(600, "click")], cfg=cfg)[0] == [
        ("train", 0, "A", 1, 0)]
    assert build([ev(0, "impression"), ev(601, "click")], cfg=cfg)[0] == [
        ("train", 0, "A", 0, 0)]


def test_two_clicks_after_one_impression_label_it_once():
    rows, counts = build([ev(0, "impression"), ev(10, "click"), ev(20, "click")])
    assert rows == [("train", 0, "A", 1, 0)]
    assert counts == clicks(attributed=2, labelled=1)


def test_a_click_labels_only_an_impression_of_its_own_item():
    rows, counts = build([ev(0, "impression", "A"), ev(5, "impression", "B"),
                          ev(10, "click", "A"), ev(20, "click", "C")])
    assert rows == [("train", 0, "A", 1, 0), ("train", 5, "B", 0, 0)]
    assert counts == clicks(attributed=1, without=1, labelled=1)


def test_clicks_between_repeated_impressions_each_label_their_own():
    rows, counts = build([ev(0, "impression"), ev(10, "click"), ev(100, "impression"),
                          ev(200, "impression"), ev(210, "click")])
    assert rows == [("train", 0, "A", 1, 0), ("train", 100, "A", 0, 0),
                    ("train", 200, "A", 1, 0)]
    assert counts == clicks(attributed=2, labelled=2)


def test_a_follow_goes_to_the_impression_its_click_labelled():
    # A newer impression of A (t=160) sits between the click and the follow:
    # the follow still belongs to the impression the click was on (t=100).
    rows, counts = build(REPEATED[:2] + [ev(150, "click"), ev(160, "impression"),
                                         ev(170, "follow")])
    assert rows == [("train", 0, "A", 0, 0), ("train", 100, "A", 1, 1),
                    ("train", 160, "A", 0, 0)]
    assert counts == {**clicks(attributed=1, labelled=1),
                      **clicks(attributed=1, labelled=1, kind="follow")}


def test_a_follow_reaches_its_clicks_impression_beyond_the_window():
    # Impression -> click 200 s, click -> follow 250 s: 450 s from the
    # impression, over the 300 s window, but within it from its click.
    rows, counts = build([ev(0, "impression"), ev(200, "click"), ev(450, "follow")],
                         cfg=WINDOW_300)
    assert rows == [("train", 0, "A", 1, 1)]
    assert counts == {**clicks(attributed=1, labelled=1),
                      **clicks(attributed=1, labelled=1, kind="follow")}


def test_a_follow_without_a_click_is_attributed_like_a_click():
    rows, counts = build([ev(0, "impression"), ev(100, "impression"), ev(110, "follow"),
                          ev(5000, "follow")])
    assert rows == [("train", 0, "A", 0, 0), ("train", 100, "A", 0, 1)]
    assert counts == clicks(attributed=1, without=1, labelled=1, kind="follow")


def test_a_follow_whose_click_labelled_nothing_falls_back_to_the_latest_impression():
    rows, counts = build([ev(0, "impression"), ev(400, "click"), ev(450, "impression"),
                          ev(500, "follow")], cfg=WINDOW_300)
    assert rows == [("train", 0, "A", 0, 0), ("train", 450, "A", 0, 1)]
    assert counts == {**clicks(without=1),
                      **clicks(attributed=1, labelled=1, kind="follow")}


def test_impression_click_and_follow_in_one_second_pair_up():
    # Listed out of order: the sort puts impression < click < follow.
    rows, counts = build([ev(0, "follow"), ev(0, "click"), ev(0, "impression")])
    assert rows == [("train", 0, "A", 1, 1)]
    assert counts == {**clicks(attributed=1, labelled=1),
                      **clicks(attributed=1, labelled=1, kind="follow")}


def test_attribution_never_crosses_the_split_time():
    # Split at t=50: the click at 60 is eval, the impression at 0 train.
    rows, counts = build([ev(0, "impression"), ev(60, "click"), ev(70, "impression"),
                          ev(80, "click")], split_ts=50)
    assert rows == [("train", 0, "A", 0, 0), ("eval", 70, "A", 1, 0)]
    assert counts == clicks("eval", attributed=1, without=1, labelled=1)


def test_attribute_by_time_returns_each_events_impression_index():
    events = [ev(0, "impression"), ev(100, "impression"), ev(150, "click"),
              ev(200, "impression"), ev(250, "click"), ev(260, "follow"), ev(900, "click")]
    assert [e[0] - T0 for e in events] == [0, 100, 150, 200, 250, 260, 900]
    assert attribute_by_time(events, math.inf, 300.0) == [-1, -1, 1, -1, 3, 3, -1]
    assert attribute_by_time(events, T0 + 200.0, 300.0) == [-1, -1, 1, -1, 3, 3, -1]
    assert attribute_by_time(events, T0 + 201.0, 300.0) == [-1, -1, 1, -1, -1, -1, -1]


# ---- attribution by impression id ---------------------------------------------------
ID_IMPRESSIONS = [ev(0, "impression", rid="r1"), ev(100, "impression", rid="r2"),
                  ev(200, "impression", rid="r3"), ev(10, "impression", "B", rid="rb")]


def test_an_id_labels_exactly_its_impression_not_the_latest():
    rows, counts = build(ID_IMPRESSIONS + [ev(250, "click", rid="r1"),
                                           ev(260, "follow", rid="r2")], cfg=IDS)
    assert rows == [("train", 0, "A", 1, 0), ("train", 10, "B", 0, 0),
                    ("train", 100, "A", 0, 1), ("train", 200, "A", 0, 0)]
    assert counts == {**clicks(attributed=1, labelled=1),
                      **clicks(attributed=1, labelled=1, kind="follow")}


@pytest.mark.parametrize("click", [
    ev(250, "click", rid="r9"),  # no impression has this id
    ev(250, "click", rid="rb"),  # the id of an impression of another item
    ev(250, "click", rid=""),  # no id
    ev(250, "click", "B", rid="r1"),  # the id of an impression of A, clicked on B
])
def test_an_id_that_names_no_impression_of_the_item_labels_nothing(click):
    rows, counts = build(ID_IMPRESSIONS + [click], cfg=IDS)
    assert [r[3] for r in rows] == [0, 0, 0, 0]
    assert counts == clicks(without=1)


def test_the_id_join_ignores_the_window_and_the_order_but_not_the_split():
    # A click logged 5 s before its impression (clock skew) and one an hour
    # after it still join; one across the split (t=5000) does not.
    rows, counts = build([ev(10, "click", rid="r1"), ev(15, "impression", rid="r1"),
                          ev(20, "impression", rid="r2"), ev(3620, "click", rid="r2"),
                          ev(5000, "click", rid="r1")], cfg=IDS, split_ts=4000)
    assert rows == [("train", 15, "A", 1, 0), ("train", 20, "A", 1, 0)]
    assert counts == {**clicks(attributed=2, labelled=2), **clicks("eval", without=1)}


def test_impressions_sharing_an_id_the_latest_at_or_before_the_click_wins():
    events = [ev(0, "impression", rid="r1"), ev(100, "impression", rid="r1"),
              ev(50, "click", rid="r1"), ev(150, "click", rid="r1")]
    events, _ = sort_and_dedupe(events, with_ids=True)
    assert [e[0] - T0 for e in events] == [0, 50, 100, 150]
    assert attribute_by_id(events, [e[4] for e in events], math.inf) == [-1, 0, -1, 2]
    # None at or before the click: the earliest after it.
    early = [ev(10, "click", rid="r1"), ev(20, "impression", rid="r1"),
             ev(30, "impression", rid="r1")]
    early, _ = sort_and_dedupe(early, with_ids=True)
    assert attribute_by_id(early, [e[4] for e in early], math.inf) == [1, -1, -1]


def test_two_clicks_in_one_second_with_two_ids_are_two_clicks():
    # Without ids they would be duplicates (same second, item and event).
    events = [ev(0, "impression", rid="r1"), ev(0, "impression", rid="r2"),
              ev(5, "click", rid="r1"), ev(5, "click", rid="r2"),
              ev(5, "click", rid="r2")]  # an exact repeat: dropped
    unique, duplicates = sort_and_dedupe(list(events), with_ids=True)
    assert (len(unique), duplicates) == (4, 1)
    rows, counts = build(events, cfg=IDS)
    assert rows == [("train", 0, "A", 1, 0), ("train", 0, "A", 1, 0)]
    assert counts == clicks(attributed=2, labelled=2)
    no_ids = [e[:4] for e in events]
    assert sort_and_dedupe(no_ids, with_ids=False)[1] == 3


# ---- the id through parsing ---------------------------------------------------------
def row(**extra):
    return {"timestamp": T0, "user_id": "u1", "item_id": "A", "event": "click", **extra}


@pytest.mark.parametrize("raw_id, parsed_id", [("r1", "r1"), (" r1 ", "r1"), (17, "17"),
                                               (None, "")])
def test_the_impression_id_is_the_fifth_field_of_a_parsed_event(raw_id, parsed_id):
    parser = EventParser(IDS)
    record = row(request_id=raw_id)
    want = ("u1", (float(T0), 1, "A", (), parsed_id))
    assert parser.parse(record) == want
    assert parser.parse_batch([json.dumps(record).encode()]) == ([want], [])
    assert parser.event_record(*want) == {"user_id": "u1", "item_id": "A", "event": "click",
                                          "timestamp": float(T0), "request_id": parsed_id}


def test_without_the_id_column_events_keep_four_fields():
    parser = EventParser(TIME)
    record = row(request_id="r1")
    want = ("u1", (float(T0), 1, "A", ()))
    assert parser.parse(record) == want
    assert parser.parse_batch([json.dumps(record).encode()]) == ([want], [])
    assert "request_id" not in parser.event_record(*want)


def test_vocabulary_and_item_counts_are_exposures_so_a_click_never_decides_membership():
    # A shown once and clicked, B shown once and not: counting events, A had
    # 2 (min_count 2 lets it in) and B 1, so in-vocabulary meant clicked
    # (the heavy-tail leak). Exposures: A 1, B 1; C's click had no impression
    # (its own exposure: 1); the follow of A adds nothing; eval adds nothing.
    events = [ev(0, "impression", "A"), ev(5, "click", "A"), ev(6, "follow", "A"),
              ev(10, "impression", "B"), ev(20, "click", "C"),
              ev(5000, "impression", "D"), ev(5010, "click", "D")]
    items = {i: SideRowInfo(bytes_entry(b"item_id", [i.encode()]), (("item_id", (i,)),))
             for i in "ABCD"}
    vocab = collections.defaultdict(collections.Counter)
    item_stats = {}
    UserExampleBuilder(TIME).build(
        "u1", SideRowInfo(b"", (("user_id", ("u1",)),)), sort_and_dedupe(events, False)[0],
        T0 + 4000, items, collections.defaultdict(list), collections.Counter(), vocab,
        item_stats)
    # [train impressions, train clicks, train events, all events, train exposures]
    assert item_stats == {"A": [1, 1, 3, 3, 1], "B": [1, 0, 1, 1, 1], "C": [0, 1, 1, 1, 1],
                          "D": [0, 0, 0, 2, 0]}
    assert vocab["user_id"] == {"u1": 3}  # A's impression, B's impression, C's click
    assert vocab["hour"] == {"22": 3}
