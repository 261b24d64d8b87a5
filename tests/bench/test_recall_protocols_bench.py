"""bench.recall_bench: a protocol's own vocabularies and counts, BPR fold-in, query views."""
import argparse
import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from bench import recall_bench as rb
from feature_contract import feature_config as fc
from models.recall import data, protocols

CONFIG = fc.load(fc.builtin_config_path("synthetic"))
ITEM = CONFIG.item_id_feature.name


def _with_rule(config: fc.FeatureConfig, name: str, **changes) -> fc.FeatureConfig:
    features = tuple(dataclasses.replace(f, **changes) if f.name == name else f
                     for f in config.features)
    return dataclasses.replace(config, features=features)


def _clicks(rows):
    """Retrieval examples of (user, timestamp, item, city, [item tags]) rows."""
    return {fc.USER_KEY: np.array([r[0].encode() for r in rows], object),
            fc.TIMESTAMP_KEY: np.array([r[1] for r in rows], np.int64),
            ITEM: np.array([r[2].encode() for r in rows], object),
            "city": np.array([r[3].encode() for r in rows], object),
            "item_tags": np.array([[t.encode() for t in r[4]] + [b""] * (2 - len(r[4]))
                                   for r in rows], object)}


# Training clicks: i1 x3, i2 x3, i3 x2, i5 x1; cities bj x3, sh x5, "" x1.
TRAIN = _clicks([
    ("a", 10, "i1", "sh", ["t1"]), ("a", 20, "i2", "sh", ["t1", "t2"]),
    ("a", 30, "i3", "sh", []), ("b", 40, "i5", "bj", ["t2"]), ("b", 50, "i1", "bj", ["t2"]),
    ("c", 60, "i2", "", ["t3"]), ("d", 1, "i1", "sh", []), ("d", 2, "i2", "sh", []),
    ("d", 3, "i3", "bj", ["t2"])])


# ---- the protocol's own vocabularies and catalogue --------------------------------

def test_vocabularies_from_examples_count_training_clicks_most_frequent_first():
    vocabs = rb.vocabularies_from_examples(TRAIN, CONFIG)
    assert sorted(vocabs) == sorted(f.name for f in CONFIG.vocab_features)
    assert vocabs[ITEM] == ["i1", "i2", "i3", "i5"]   # 3, 3 (tie: by value), 2, 1
    assert vocabs["city"] == ["sh", "bj"]             # the empty value is never an entry
    assert vocabs["item_tags"] == ["t2", "t1", "t3"]  # one count per tag: 4, 2, 1
    assert vocabs["author"] == []                     # not in the examples


def test_vocabularies_from_examples_apply_the_configs_cap_and_min_count():
    capped = rb.vocabularies_from_examples(TRAIN, _with_rule(CONFIG, ITEM, vocab_size=2))
    assert capped[ITEM] == ["i1", "i2"]
    counted = rb.vocabularies_from_examples(
        TRAIN, _with_rule(CONFIG, ITEM, vocab_size=None, min_count=None))
    assert counted[ITEM] == ["i1", "i2", "i3"]         # config vocab_min_count 2 drops i5
    assert rb.vocabularies_from_examples(
        TRAIN, _with_rule(CONFIG, ITEM, min_count=3))[ITEM] == ["i1", "i2"]


def test_leave_last_out_vocabulary_misses_items_first_clicked_after_the_cutoff():
    later = _clicks([("a", 70, "i4", "sh", []), ("b", 80, "i6", "bj", []),
                     ("e", 75, "i8", "sh", []), ("e", 85, "i9", "sh", []),
                     ("e", 95, "i1", "sh", []), ("c", 70, "i7", "sh", [])])
    both = rb.concat(TRAIN, later)
    both[CONFIG.history_feature.name] = np.full((15, 1), b"", object)
    split = protocols.leave_last_out_at_cutoff(both, CONFIG, holdout_fraction=0.4)
    assert split.cutoff == 70
    vocab = rb.vocabularies_from_examples(split.train, CONFIG)[ITEM]
    assert vocab == ["i1", "i2", "i3", "i5"]
    record = rb.query_record(split.queries, vocab)
    assert record == {"num_queries": 3, "num_new_users": 1, "new_user_share": pytest.approx(1 / 3),
                      "num_queries_with_target": 3, "num_targets": 3,
                      "unreachable_targets": pytest.approx(2 / 3)}


def test_catalogue_from_examples_counts_the_protocols_training_clicks():
    catalogue = data.Catalogue(["i5", "i1", "i9", "i2", "i3"],
                               {"category": np.array([b"x", b"y", b"z", b"w", b"v"], object)},
                               np.array([7, 7, 7, 7, 7]), np.array([9, 9, 9, 9, 9]))
    out = rb.catalogue_from_examples(catalogue, TRAIN, CONFIG)
    assert out.ids == catalogue.ids
    assert out.features["category"].tolist() == [b"x", b"y", b"z", b"w", b"v"]
    assert out.clicks.tolist() == [1, 3, 0, 3, 2] and out.clicks.dtype == np.int64
    assert out.impressions.tolist() == [0, 0, 0, 0, 0]
    assert catalogue.clicks.tolist() == [7] * 5  # the input is untouched


# ---- BPR fold-in -------------------------------------------------------------------

# Users 0-5 click items 0-4 (popular), users 6-8 items 5-9.
CLUSTERS = sp.csr_matrix((np.ones(45, np.float32),
                          ([u for u in range(6) for _ in range(5)] +
                           [u for u in range(6, 9) for _ in range(5)],
                           [i for _ in range(6) for i in range(5)] +
                           [i for _ in range(6, 9) for i in range(5, 10)])), shape=(9, 10))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bpr_folds_in_a_query_user_absent_from_training(seed):
    # Query 0 has a cluster-B history; query 1 cluster A; query 2 none.
    hist = sp.csr_matrix((np.ones(4, np.float32), ([0, 0, 1, 1], [5, 6, 0, 1])), shape=(3, 10))
    scores = np.array(rb.fit_bpr(CLUSTERS, seed)(hist)(0, 3))
    pop = rb.popularity(CLUSTERS)
    assert set(np.argsort(-pop)[:3]) <= {0, 1, 2, 3, 4}  # popularity would serve cluster A
    top = lambda row, seen: [i for i in np.argsort(-scores[row]) if i not in seen][:3]  # noqa: E731
    assert set(top(0, {5, 6})) == {7, 8, 9}
    assert set(top(1, {0, 1})) == {2, 3, 4}
    np.testing.assert_allclose(scores[2], 1e-6 * pop)  # no history: popularity only


def test_bpr_fold_in_takes_bpr_sgd_steps_on_the_user_factor_only():
    # Two items, factors (x, y, bias); history {0}: a negative draw is item 1
    # (one step) or item 0 (skipped, as implicit skips a seen negative).
    items = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 2.0]], np.float32)
    hist = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 0.0]], np.float32))
    # One step from u = (0, 0, 1): x = u . (v0 - v1) = 0.5 - 2 = -1.5, weight
    # sigmoid(1.5), u[:2] += 0.1 * weight * (1, -1) (regularization of 0 is 0).
    step = 0.1 / (1.0 + np.exp(-1.5))
    outcomes = set()
    for seed in range(10):
        users = rb.bpr_fold_in(items, hist, seed, epochs=1, learning_rate=0.1,
                               regularization=0.3)
        np.testing.assert_array_equal(users[1], [0.0, 0.0, 1.0])  # no history: bias only
        assert users[0, 2] == 1.0
        if users[0, 0] == 0.0:
            np.testing.assert_array_equal(users[0], [0.0, 0.0, 1.0])
            outcomes.add("skipped")
        else:
            np.testing.assert_allclose(users[0], [step, -step, 1.0], rtol=1e-6)
            outcomes.add("step")
    assert outcomes == {"skipped", "step"}
    again = rb.bpr_fold_in(items, hist, 3, epochs=5, learning_rate=0.1, regularization=0.3)
    np.testing.assert_array_equal(again, rb.bpr_fold_in(items, hist, 3, 5, 0.1, 0.3))


# ---- one fit, several query views --------------------------------------------------

def test_run_protocol_scores_every_view_with_new_and_returning_hit_rates():
    catalogue = data.Catalogue(["i1", "i2", "i3", "i5", "i9"], {}, np.zeros(5, np.int64),
                               np.zeros(5, np.int64))
    hist_name = CONFIG.history_feature.name
    evals = _clicks([("a", 100, "i5", "sh", []), ("z", 101, "i9", "bj", []),
                     ("a", 102, "i1", "sh", [])])
    evals[hist_name] = np.array([[b"i1", b"i2"], [b"", b""], [b"i5", b""]], object)
    evals[fc.NEW_USER_KEY] = np.array([0, 1, 0])
    views = {rb.TIME_SPLIT: protocols.time_split(evals, CONFIG),
             rb.TIME_SPLIT_PER_USER: protocols.time_split(evals, CONFIG, per_user=True)}
    out = rb.run_protocol(CONFIG, TRAIN, {}, views, catalogue,
                          {ITEM: ["i1", "i2", "i3", "i5"]}, [0, 1], ["most_popular", "bpr"],
                          None, None)
    assert sorted(out) == [rb.TIME_SPLIT, rb.TIME_SPLIT_PER_USER]
    per_click, per_user = out[rb.TIME_SPLIT], out[rb.TIME_SPLIT_PER_USER]
    assert per_click["_queries"] == {
        "num_queries": 3, "num_new_users": 1, "new_user_share": pytest.approx(1 / 3),
        "num_queries_with_target": 3, "num_targets": 3,
        "unreachable_targets": pytest.approx(1 / 3),
        "num_train_examples": 9, "num_sessions": 0, "item_vocabulary_size": 4}
    # Per user: a at 100 (history i1 i2) with targets i5 (i1 is in the history:
    # dropped), z with i9.
    assert per_user["_queries"]["num_queries"] == 2
    assert per_user["_queries"]["num_targets"] == 2
    assert per_click["most_popular"]["seeds"] == [0] and per_click["bpr"]["seeds"] == [0, 1]
    # 5 items, top 50 holds every item outside the history: z's i9 is a hit,
    # and so are a's i5 and i1. HR@50 = 1 for new and returning users alike.
    for view in (per_click, per_user):
        for name in ("most_popular", "bpr"):
            assert view[name]["new_user_hr@50"] == 1.0
            assert view[name]["returning_user_hr@50"] == 1.0
    assert "bpr_vs_most_popular" not in per_click["_comparisons"]  # peers only: none named


def test_protocol_record_states_every_rule_and_the_fold_in():
    record = rb.protocol_record(rb.parse_args(["--quick"]))
    assert sorted(record["protocols"]) == sorted(rb.PROTOCOLS + ("history_leaks",
                                                                 "unreachable_targets"))
    rule = record["protocols"][rb.LEAVE_LAST_OUT]
    assert "floor((1 - 0.2) * N)" in rule and "strictly before T" in rule
    assert ">= 3 clicks" in rule
    assert record["hparams"]["bpr_fold_in_epochs"] == rb.BPR_FOLD_IN_EPOCHS
    assert "recalculate_user" in record["fold_in"] and "bpr_fold_in" in record["fold_in"]
    assert isinstance(rb.parse_args([]), argparse.Namespace)


def test_query_record_counts_queries_left_without_a_target():
    # The second query's target was in its history: protocols dropped it.
    queries = protocols.Queries({}, [["x", "z"], []], [[], ["y"]], np.array([True, False]))
    assert rb.query_record(queries, ["x", "y"]) == {
        "num_queries": 2, "num_new_users": 1, "new_user_share": 0.5,
        "num_queries_with_target": 1, "num_targets": 2, "unreachable_targets": 0.5}
