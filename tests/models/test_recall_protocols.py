"""models.recall.protocols: leak-free leave-last-out, per-user time split, reachability."""

import numpy as np
import pytest

from feature_contract import feature_config as fc
from models.recall import protocols

CONFIG = fc.load(fc.builtin_config_path("synthetic"))
ITEM = CONFIG.item_id_feature.name
HIST = CONFIG.history_feature.name


def _arrays(rows):
    """Retrieval examples of (user, timestamp, item, is_new_user) rows, in the given order.

    Each row's history is the user's clicks strictly before it (oldest
    first), as sessionize writes it.
    """
    histories = [[x for u, t, x, _ in sorted(rows, key=lambda r: r[1]) if u == user and t < ts]
                 for user, ts, _, _ in rows]
    width = max(len(h) for h in histories) + 1
    return {fc.USER_KEY: np.array([r[0].encode() for r in rows], object),
            fc.TIMESTAMP_KEY: np.array([r[1] for r in rows], np.int64),
            ITEM: np.array([r[2].encode() for r in rows], object),
            fc.NEW_USER_KEY: np.array([r[3] for r in rows], np.int64),
            HIST: np.array([[x.encode() for x in h] + [b""] * (width - len(h))
                            for h in histories], object)}


# 15 clicks of 5 users, shuffled. With holdout_fraction 0.4 the cut-off is the
# sorted time at position floor(0.6 * 15) = 9: 1 2 3 10 20 30 40 50 60 [70] 70 75 ...
CLICKS = [
    ("b", 80, "i6", 0), ("d", 2, "i2", 0), ("a", 70, "i4", 1), ("e", 95, "i1", 0),
    ("c", 60, "i2", 0), ("a", 10, "i1", 0), ("d", 1, "i1", 0), ("e", 75, "i8", 0),
    ("b", 40, "i5", 0), ("c", 70, "i7", 0), ("a", 30, "i3", 0), ("d", 3, "i3", 0),
    ("e", 85, "i9", 0), ("b", 50, "i1", 0), ("a", 20, "i2", 0)]


def _triples(arrays):
    return sorted(zip([u.decode() for u in arrays[fc.USER_KEY]],
                      arrays[fc.TIMESTAMP_KEY].tolist(), [x.decode() for x in arrays[ITEM]]))


def test_cutoff_time_is_the_sorted_time_at_the_holdout_position():
    times = np.array([c[1] for c in CLICKS])
    assert protocols.cutoff_time(times, 0.4) == 70          # position 9
    assert protocols.cutoff_time(times, 0.2) == 80          # floor(0.8 * 15) = 12
    assert protocols.cutoff_time(times, 0.99) == 1          # floor(0.15) = 0
    with pytest.raises(ValueError, match=r"holdout_fraction must be in \(0, 1\), got 1.0"):
        protocols.cutoff_time(times, 1.0)
    with pytest.raises(ValueError, match="no retrieval examples to cut"):
        protocols.cutoff_time(np.zeros(0, np.int64), 0.2)


def test_leave_last_out_at_cutoff_trains_strictly_before_the_cutoff():
    split = protocols.leave_last_out_at_cutoff(_arrays(CLICKS), CONFIG, holdout_fraction=0.4)
    assert split.cutoff == 70
    # Every click before 70 trains, whoever clicked: d (no query), a and b
    # (queries), c (2 clicks: never a query). c's click AT 70 does not train.
    assert _triples(split.train) == [
        ("a", 10, "i1"), ("a", 20, "i2"), ("a", 30, "i3"), ("b", 40, "i5"), ("b", 50, "i1"),
        ("c", 60, "i2"), ("d", 1, "i1"), ("d", 2, "i2"), ("d", 3, "i3")]
    # The train rows keep every column of their example.
    assert split.train[HIST].shape == (9, 4)


def test_leave_last_out_at_cutoff_queries_are_last_clicks_at_or_after_the_cutoff():
    split = protocols.leave_last_out_at_cutoff(_arrays(CLICKS), CONFIG, holdout_fraction=0.4)
    q = split.queries
    # a: last click at 70 == T (at or after); b: 80; e: 95 (all its clicks after T).
    # c has 2 clicks (< 3); d's last click (3) is before T.
    assert q.features[fc.USER_KEY].tolist() == [b"a", b"b", b"e"]
    assert q.features[fc.TIMESTAMP_KEY].tolist() == [70, 80, 95]
    assert q.targets == [["i4"], ["i6"], ["i1"]]
    # The history is the row's own: clicks strictly before the held-out one,
    # including e's clicks in [T, 95) that nothing trains on.
    assert q.history == [["i1", "i2", "i3"], ["i5", "i1"], ["i8", "i9"]]
    # New = no training click (the input flags, relative to another split, are replaced).
    assert q.is_new.tolist() == [False, False, True]
    assert q.features[fc.NEW_USER_KEY].tolist() == [0, 0, 1]


def test_no_training_click_is_at_or_after_any_held_out_click():
    arrays = _arrays(CLICKS)
    for fraction in (0.1, 0.2, 0.4, 0.6, 0.9):
        split = protocols.leave_last_out_at_cutoff(arrays, CONFIG, holdout_fraction=fraction)
        held_out = split.queries.features[fc.TIMESTAMP_KEY]
        train_ts = split.train[fc.TIMESTAMP_KEY]
        assert train_ts.max(initial=-1) < split.cutoff
        if len(held_out):
            assert train_ts.max(initial=-1) < held_out.min() and held_out.min() >= split.cutoff
        # A held-out click is never a training row, nor inside its own history.
        trained = set(_triples(split.train))
        for user, ts, target, hist in zip(split.queries.features[fc.USER_KEY], held_out,
                                          split.queries.targets,
                                          split.queries.features[HIST]):
            assert (user.decode(), int(ts), target[0]) not in trained
            assert len([h for h in hist if h]) == sum(
                1 for u, t, _, _ in CLICKS if u == user.decode() and t < ts)


def test_leave_last_out_at_cutoff_min_clicks():
    split = protocols.leave_last_out_at_cutoff(_arrays(CLICKS), CONFIG, holdout_fraction=0.4,
                                               min_clicks=4)
    assert split.queries.features[fc.USER_KEY].tolist() == [b"a"]  # the only 4-click user
    assert len(split.train[fc.TIMESTAMP_KEY]) == 9                   # the train rule is unchanged


def test_unreachable_share_counts_target_pairs_outside_the_vocabulary():
    split = protocols.leave_last_out_at_cutoff(_arrays(CLICKS), CONFIG, holdout_fraction=0.4)
    # Targets i4, i6, i1: only i1 was clicked before the cut-off.
    assert protocols.unreachable_share(split.queries, ["i1", "i2", "i3", "i5"]) == \
        pytest.approx(2 / 3)
    per_user = protocols.time_split(_arrays([
        ("a", 1, "x", 0), ("a", 2, "y", 0), ("a", 3, "z", 0), ("b", 4, "x", 1)]), CONFIG,
        per_user=True)
    assert per_user.targets == [["x", "y", "z"], ["x"]]
    assert protocols.unreachable_share(per_user, ["x"]) == pytest.approx(2 / 4)
    assert protocols.unreachable_share(protocols.Queries({}, [[]], [[]], np.zeros(1, bool)),
                                       ["x"]) is None


def test_per_user_time_split_counts_and_new_returning_hit_rates():
    # Eval period: a returning (3 clicks), b new (1), c new (2).
    evals = _arrays([("c", 12, "i3", 1), ("a", 10, "i1", 0), ("b", 11, "i55", 1),
                     ("a", 13, "i2", 0), ("c", 14, "i1", 1), ("a", 15, "i4", 0)])
    per_click = protocols.time_split(evals, CONFIG)
    per_user = protocols.time_split(evals, CONFIG, per_user=True)
    assert len(per_click) == 6 and per_click.is_new.tolist() == [False] * 3 + [True] + [True] * 2
    assert len(per_user) == 3 and per_user.is_new.tolist() == [False, True, True]
    assert per_user.targets == [["i1", "i2", "i4"], ["i55"], ["i3", "i1"]]
    # 60 items, item k scored 60 - k for every query: the top 50 is i1..i50.
    ids = [f"i{k}" for k in range(1, 61)]
    items = np.array([[60.0 - k] for k in range(1, 61)], np.float32)
    out = protocols.evaluate_embeddings(per_user, np.ones((3, 1), np.float32), ids, items,
                                        ks=(1, 50))
    # a: i1 at rank 1; b: i55 at rank 55 (a miss); c: i1 at rank 1.
    assert out["hr@1"] == pytest.approx(2 / 3) and out["hr@50"] == pytest.approx(2 / 3)
    assert out["num_new_users"] == 2
    assert out["new_user_hr@50"] == pytest.approx(1 / 2)
    assert out["returning_user_hr@50"] == 1.0


def test_history_leaks_flags_a_history_holding_the_query_click():
    arrays = _arrays(CLICKS)
    split = protocols.leave_last_out_at_cutoff(arrays, CONFIG, holdout_fraction=0.4)
    assert protocols.history_leaks(arrays, split.queries) == 0
    assert protocols.history_leaks(arrays, protocols.time_split(arrays, CONFIG)) == 0
    # a's query at 70 made to carry its own click (4 items; a clicked 3 before 70),
    # and e's query at 95 one later click (3 items; e clicked 2 before 95).
    split.queries.history[0] = ["i1", "i2", "i3", "i4"]
    assert protocols.history_leaks(arrays, split.queries) == 1
    split.queries.history[2] = ["i8", "i9", "i1"]
    assert protocols.history_leaks(arrays, split.queries) == 2
    # Equal length to the earlier clicks is no leak (b: 2 before 80).
    split.queries.history[1] = ["x", "y"]
    assert protocols.history_leaks(arrays, split.queries) == 2
