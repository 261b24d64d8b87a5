"""Recall metrics and protocols against hand-computed examples."""

import math

import numpy as np
import pytest

from feature_contract import feature_config as fc
from models.recall import metrics, protocols


def test_evaluate_matches_hand_computed_example():
    # 3 users, catalogue of 10, K = 2 and 4.
    topk = np.array([[3, 1, 7, 2],    # targets {1, 2}: hits at positions 2 and 4
                     [5, 6, 8, 9],    # target {0}: no hit
                     [4, -1, -1, -1]])  # target {4}: hit at 1
    targets = [np.array([1, 2]), np.array([0]), np.array([4, 4])]
    out = metrics.evaluate(topk, targets, num_items=10, ks=(2, 4),
                           is_new=np.array([False, True, True]), slice_k=2)
    assert out["num_users"] == 3
    assert out["hr@2"] == pytest.approx(2 / 3)
    assert out["recall@2"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert out["recall@4"] == pytest.approx((1 + 0 + 1) / 3)
    d = lambda p: 1 / math.log2(p + 1)  # noqa: E731  (1-based position p)
    ndcg2_u0 = d(2) / (d(1) + d(2))
    assert out["ndcg@2"] == pytest.approx((ndcg2_u0 + 0 + 1) / 3)
    ndcg4_u0 = (d(2) + d(4)) / (d(1) + d(2))
    assert out["ndcg@4"] == pytest.approx((ndcg4_u0 + 0 + 1) / 3)
    assert out["coverage@2"] == pytest.approx(len({3, 1, 5, 6, 4}) / 10)
    assert out["coverage@4"] == pytest.approx(len({3, 1, 7, 2, 5, 6, 8, 9, 4}) / 10)
    assert out["avg_position"] == pytest.approx((2 + 1) / 2)
    assert out["new_user_hr@2"] == pytest.approx(0.5)
    assert out["returning_user_hr@2"] == pytest.approx(1.0)


def test_evaluate_skips_users_without_targets_and_checks_width():
    out = metrics.evaluate(np.array([[0, 1], [1, 0]]), [np.array([1]), np.array([], np.int64)],
                           num_items=2, ks=(2,))
    assert out["num_users"] == 1 and out["skipped_users"] == 1 and out["hr@2"] == 1.0
    with pytest.raises(ValueError, match="columns"):
        metrics.evaluate(np.array([[0]]), [np.array([0])], num_items=2, ks=(2,))


def test_top_k_excludes_history_and_pads():
    users = np.array([[1.0, 0.0], [0.0, 1.0]])
    items = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    top = metrics.top_k(users, items, k=4, exclude=[np.array([0]), np.array([])])
    np.testing.assert_array_equal(top, [[1, 2, -1, -1], [2, 1, 0, -1]])


def test_top_k_breaks_ties_by_lowest_row_at_the_boundary():
    # 300 items, scores 1.0 for every third row and 0.5 elsewhere: 100 tie at
    # the top and 200 at 0.5. K = 120 takes all 100 of 1.0 and the 20 lowest
    # rows of 0.5; each tie in row order. np.argpartition alone picks among
    # ties by a CPU-dependent path.
    scores = np.where(np.arange(300) % 3 == 0, 1.0, 0.5).astype(np.float32)
    top = metrics.top_k_from_scores(lambda a, b: np.tile(scores, (b - a, 1)), 2, 300, 120,
                                    exclude=[np.array([0, 1]), np.array([], np.int64)])
    ones = [r for r in range(300) if r % 3 == 0]
    halves = [r for r in range(300) if r % 3]
    np.testing.assert_array_equal(top[0], ones[1:] + [r for r in halves if r != 1][:21])
    np.testing.assert_array_equal(top[1], ones + halves[:20])
    # Fewer finite scores than K: the rest is -1, the excluded rows never appear.
    top = metrics.top_k_from_scores(lambda a, b: np.tile(scores[:4], (b - a, 1)), 1, 4, 6,
                                    exclude=[np.array([3])])
    np.testing.assert_array_equal(top, [[0, 1, 2, -1, -1, -1]])
    # NaN ranks as an excluded item (a diverged model's vectors score badly,
    # they do not stop the run).
    nan = np.array([[0.5, np.nan, 0.9, 0.5]], np.float32)
    np.testing.assert_array_equal(metrics.top_k_from_scores(lambda a, b: nan, 1, 4, 4),
                                  [[2, 0, 3, -1]])


def _arrays(rows):
    config = fc.load(fc.builtin_config_path("synthetic"))
    hist = config.history_feature
    out = {fc.USER_KEY: np.array([r[0].encode() for r in rows], object),
           fc.TIMESTAMP_KEY: np.array([r[1] for r in rows]),
           config.item_id_feature.name: np.array([r[2].encode() for r in rows], object),
           fc.NEW_USER_KEY: np.array([r[4] for r in rows]),
           hist.name: np.array([[h.encode() for h in r[3]] + [b""] * (3 - len(r[3]))
                                for r in rows], object)}
    return config, out


def test_time_split_per_example_queries():
    config, arrays = _arrays([
        ("a", 20, "i2", ["i0", "i1"], 0), ("a", 10, "i1", ["i0"], 0),
        ("a", 30, "i0", ["i0", "i1"], 0), ("b", 5, "i3", [], 1)])
    q = protocols.time_split(arrays, config)
    assert q.targets == [["i1"], ["i2"], [], ["i3"]]  # a re-click of i0 can't be a target
    assert q.history[1] == ["i0", "i1"] and q.is_new.tolist() == [False, False, False, True]
    users = np.tile([[1.0, 0.9]], (4, 1)).astype(np.float32)
    out = protocols.evaluate_embeddings(q, users, ["i1", "i2", "i3"],
                                        np.array([[1, 0], [0, 1], [0, 0.5]], np.float32), ks=(1,))
    assert out["num_users"] == 3 and out["skipped_users"] == 1
    assert out["hr@1"] == pytest.approx(2 / 3)  # a: i1 (top), a: i2 (i1 excluded), b: misses


def test_time_split_per_user_first_eval_example_is_query_and_history_targets_drop():
    config, arrays = _arrays([
        ("a", 20, "i2", ["i0"], 0), ("a", 10, "i1", ["i0"], 0), ("a", 30, "i0", ["i0", "i1"], 0),
        ("b", 5, "i3", [], 1)])
    q = protocols.time_split(arrays, config, per_user=True)
    assert len(q) == 2
    # user a: query = ts 10 (history [i0]); targets i1, i2 (i0 is in history: dropped)
    assert q.history[0] == ["i0"] and q.targets[0] == ["i1", "i2"]
    assert q.history[1] == [] and q.targets[1] == ["i3"] and q.is_new.tolist() == [False, True]


def test_leave_last_out_holds_out_last_click_of_users_with_three_clicks():
    config, arrays = _arrays([
        ("a", 1, "i1", [], 0), ("a", 2, "i2", ["i1"], 0), ("a", 3, "i3", ["i1", "i2"], 0),
        ("b", 1, "i1", [], 0), ("b", 2, "i4", ["i1"], 0)])
    train, q = protocols.leave_last_out(arrays, config)
    assert len(q) == 1 and q.targets == [["i3"]] and q.history == [["i1", "i2"]]
    assert sorted(train[fc.TIMESTAMP_KEY].tolist()) == [1, 1, 2, 2]
    item_ids = ["i1", "i2", "i3", "i4"]
    vectors = np.eye(4, dtype=np.float32)
    user = np.array([[0.9, 0.8, 0.1, 0.5]], np.float32)  # i1, i2 excluded -> i4, i3
    out = protocols.evaluate_embeddings(q, user, item_ids, vectors, ks=(1, 2))
    assert out["hr@1"] == 0.0 and out["hr@2"] == 1.0 and out["avg_position"] == 2.0
