"""Item2vec: pair generation, negative sampling, training, export."""

import os

import numpy as np
import pytest
import tensorflow as tf

from feature_contract import feature_config as fc
from models.item2vec import train as i2v_train
from models import inputs, validation
from models.item2vec.config import Item2VecConfig, Item2VecConfigError
from models.item2vec.model import MeanHistoryTower, NegativeSampler, skipgram_pairs
from models.recall import artifacts, data, training
from tests.models import recall_fixtures


def _pairs(centers, contexts):
    return sorted(zip(centers.tolist(), contexts.tolist()))


def test_skipgram_pairs_window_edges_and_min_length():
    sessions = [np.array([1, 2, 3, 4]), np.array([5, 6]), np.array([7, 8, 9])]
    centers, contexts, stats = skipgram_pairs(sessions, window=2, min_len=3)
    expected = sorted([(1, 2), (2, 1), (2, 3), (3, 2), (3, 4), (4, 3),  # d = 1
                       (1, 3), (3, 1), (2, 4), (4, 2),                  # d = 2, not (1, 4)
                       (7, 8), (8, 7), (8, 9), (9, 8), (7, 9), (9, 7)])
    assert _pairs(centers, contexts) == expected  # never across sessions 1 | 3
    assert stats == {"sessions": 2, "short_sessions": 1, "pairs": 16}


def test_skipgram_pairs_drop_oov_and_self_pairs():
    centers, contexts, _ = skipgram_pairs([np.array([1, 0, 1, 2])], window=1, min_len=1)
    assert _pairs(centers, contexts) == [(1, 2), (2, 1)]


def test_negatives_follow_unigram_075_and_never_oov():
    clicks = np.array([50.0, 15.0, 0.0, 3.0])  # id 0 = OOV never drawn
    sampler = NegativeSampler(clicks, alpha=0.75)
    draws = sampler.sample(np.random.default_rng(0), np.ones(100_000, np.int64), 2)
    assert draws.min() >= 1
    freq = np.bincount(draws.ravel(), minlength=4)[1:] / draws.size
    expected = (clicks[1:] + 1) ** 0.75 / ((clicks[1:] + 1) ** 0.75).sum()
    np.testing.assert_allclose(freq, expected, atol=0.01)


def test_attribute_negatives_share_the_positive_attribute():
    clicks = np.array([0, 5, 5, 5, 5, 5, 5], float)
    city = np.array([0, 1, 1, 1, 2, 2, 3])  # id 6 is alone in city 3
    sampler = NegativeSampler(clicks, attribute=city, attribute_ratio=1.0)
    rng = np.random.default_rng(1)
    positives = np.array([1, 4, 6] * 500)
    neg = sampler.sample(rng, positives, 2)
    same = city[neg] == city[positives][:, None]
    assert same[positives != 6].all()
    assert not same[positives == 6].all()  # singleton group: global fallback
    half = NegativeSampler(clicks, attribute=city, attribute_ratio=0.5).sample(rng, positives, 2)
    assert (city[half[:, 0]] == city[positives])[positives != 6].all()


def test_mean_history_tower_averages_recent_clicks():
    vectors = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32)
    tower = MeanHistoryTower(["a", "b", "c"], vectors, "hist", recent_clicks=2)
    out = tower({"hist": tf.constant([["a", "b", "c"], ["a", "", ""], ["", "", ""],
                                      ["zz", "c", ""]])}).numpy()
    np.testing.assert_allclose(out, [[0.5, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    # config round trip: vectors travel as weights, not config
    clone = MeanHistoryTower.from_config(tower.get_config())
    clone({"hist": tf.constant([["a"]])})
    clone.set_weights(tower.get_weights())
    np.testing.assert_allclose(clone({"hist": tf.constant([["a", "b", "c"]])}).numpy(), out[:1])
    assert "vectors" not in tower.get_config()


def test_tower_with_a_prior_column_averages_the_rest_and_weights_the_prior_by_one():
    # Rows: OOV, a, b, c; the last column is each item's weighted prior.
    vectors = np.array([[0, 0, 0], [1, 0, 0.5], [0, 1, 0.2], [1, 1, 0.9]], np.float32)
    tower = MeanHistoryTower(["a", "b", "c"], vectors, "hist", recent_clicks=2,
                             prior_column=True)
    out = tower({"hist": tf.constant([["a", "b", "c"], ["a", "", ""], ["", "", ""]])}).numpy()
    # (b + c) / 2 = [0.5, 1.0], prior weight 1; no known click: the prior alone.
    np.testing.assert_allclose(out, [[0.5, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    # user . c = 0.5 + 1.0 + 0.9: similarity plus c's prior.
    assert float(out[0] @ vectors[3]) == pytest.approx(2.4)
    clone = MeanHistoryTower.from_config(tower.get_config())
    clone({"hist": tf.constant([["a"]])})
    clone.set_weights(tower.get_weights())
    np.testing.assert_allclose(clone({"hist": tf.constant([["", ""]])}).numpy(), [[0, 0, 1]])
    with pytest.raises(ValueError, match="prior_column needs vectors of width >= 2, got 1"):
        MeanHistoryTower(["a"], np.zeros((2, 1), np.float32), "hist", prior_column=True)


def test_scaled_log_clicks_by_hand():
    np.testing.assert_allclose(i2v_train.scaled_log_clicks(np.array([0, 1, 3])),
                               [0.0, np.log(2) / np.log(4), 1.0], rtol=1e-6)
    np.testing.assert_array_equal(i2v_train.scaled_log_clicks(np.zeros(3)), [0, 0, 0])


def test_prior_weight_is_chosen_on_the_validation_queries():
    """Similarity ranks the popular target last; only a large enough prior lifts it.

    100 items: item 0 (1000 clicks) = -(e_1 + ... + e_99) / sqrt(99), item j = e_j
    (1 click each). Query j (history [j], target 0): similarity of item 0 is
    -1/sqrt(99) = -0.1005, of the others 0. Scaled priors: 1 and log 2 / log 1001
    = 0.1003. beta = 0.05: item 0 scores -0.0505 < 0.0050: miss. beta = 0.2:
    0.0995 > 0.0201: hit. Ties go to the first weight, so 0.2 wins over 1.0.
    """
    vectors = np.zeros((100, 99), np.float32)
    vectors[0] = -1.0 / np.sqrt(99)
    vectors[1:] = np.eye(99)
    clicks = np.array([1000] + [1] * 99)
    history = [np.array([j]) for j in range(1, 21)]
    queries = i2v_train.NextItemQueries(history, [np.array([0])] * 20, history)
    weight, curve = i2v_train.choose_prior_weight(queries, vectors, clicks,
                                                  (0.0, 0.05, 0.2, 1.0))
    assert weight == 0.2
    assert curve == {"0.0": 0.0, "0.05": 0.0, "0.2": 1.0, "1.0": 1.0}
    assert i2v_train.choose_prior_weight(queries, vectors, clicks, (0.0,)) == (0.0, {"0.0": 0.0})


def test_next_item_queries_exclude_every_earlier_click_whatever_recent_clicks():
    """Session a b c a d (rows 0 1 2 0 3), every position, recent_clicks 1:
    b <- [a], c <- [b], the second a is no query (clicked before, though not
    the latest click), d <- [a] with a, b, c excluded. The query set is the
    same at recent_clicks 5; only the user vectors' inputs differ. An unknown
    click (x) is neither a query nor history."""
    ids = ["a", "b", "c", "d"]
    session = [b"a", b"b", b"x", b"c", b"a", b"d"]
    one = i2v_train.next_item_queries([session], ids, 1, every_position=True)
    assert [t.tolist() for t in one.targets] == [[1], [2], [3]]
    assert [h.tolist() for h in one.history] == [[0], [1], [0]]
    assert [h.tolist() for h in one.seen] == [[0], [0, 1], [0, 1, 2, 0]]
    five = i2v_train.next_item_queries([session], ids, 5, every_position=True)
    assert [t.tolist() for t in five.targets] == [[1], [2], [3]]
    assert [h.tolist() for h in five.history] == [[0], [0, 1], [0, 1, 2, 0]]
    last = i2v_train.next_item_queries([session], ids, 1)
    assert [t.tolist() for t in last.targets] == [[3]] and last.seen[0].tolist() == [0, 1, 2, 0]
    # The top-K never returns an excluded item. Scores of a's vector: b 0.9,
    # c 0.8, d 0; of b's: c 0.74, d 0.1. So b's query gets b, c's gets c (a, b
    # excluded) and d's gets d, though a's vector, its user vector, is nearer b, c.
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0]], np.float32)
    top = i2v_train.next_item_top_k(one, vectors, 1)
    assert top[:, 0].tolist() == [1, 2, 3]


def test_config_rejects_bad_prior_weights():
    for bad in ((), (-0.1,), ("x",), (float("inf"),), (float("nan"),)):
        with pytest.raises(Item2VecConfigError,
                           match="prior_weights must be a non-empty list of finite weights"):
            Item2VecConfig(prior_weights=bad)
    assert Item2VecConfig.from_hparams({"prior_weights": [0, 1]}).prior_weights == (0.0, 1.0)


HPARAMS = {"dim": 16, "batch_size": 64, "learning_rate": 0.02,
           "attribute_role": fc.ROLE_ITEM_CITY}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("i2v"))
    paths = recall_fixtures.write_dataset(os.path.join(root, "data"))
    export = os.path.join(root, "export")
    metrics = i2v_train.train(paths["config"], paths["item2vec"], paths["vocab"], paths["items"],
                              {**HPARAMS, "max_epochs": 30, "patience": 2}, export)
    return paths, export, metrics


def _sessions(paths, split):
    config = fc.load(paths["config"])
    return data.load_examples(os.path.join(paths["item2vec"], f"Split-{split}", "*.gz"), config,
                              fc.ITEM2VEC)


def test_train_learns_categories_and_exports(trained):
    paths, export, metrics = trained
    curve = metrics["learning_curve"]
    best = metrics["early_stopping"]["best_epoch"]
    assert curve[best - 1]["train_loss"] < curve[0]["train_loss"] - 0.5
    emb = artifacts.read_item_embeddings(os.path.join(export, artifacts.ITEM_EMBEDDINGS_DIR))
    assert emb.metadata["model"] == "item2vec" and emb.metadata["dim"] == 16
    assert emb.metadata["metric"] == "ip"
    # Trained items first, then every other catalogue item with an imputed
    # vector (all 10 categories have trained items: none needs the city or
    # the global mean); the imputed means make the artifact not normalized.
    candidates = recall_fixtures.item2vec_candidates()
    trained = len(candidates)
    missing = recall_fixtures.NUM_ITEMS - trained
    assert sorted(emb.ids[:trained]) == sorted(candidates)
    assert sorted(emb.ids) == sorted(f"i{k}" for k in range(recall_fixtures.NUM_ITEMS))
    assert (metrics["num_items"], metrics["trained_items"], metrics["imputed_items"]) == (
        recall_fixtures.NUM_ITEMS, trained, missing) and missing > 0
    by = {"item_category": missing, "item_city": 0, "global_mean": 0}
    assert metrics["imputed_by"] == by and emb.metadata["imputed_by"] == by
    assert (emb.metadata["trained_items"], emb.metadata["imputed_items"]) == (trained, missing)
    assert not emb.metadata["normalized"]
    norms = np.linalg.norm(emb.embeddings, axis=1)
    np.testing.assert_allclose(norms[:trained], 1.0, atol=1e-5)
    assert (norms[trained:] < 1.0 - 1e-3).all()
    cat = np.array([int(i[1:]) % recall_fixtures.NUM_CATEGORIES for i in emb.ids[:trained]])
    sims = emb.embeddings[:trained] @ emb.embeddings[:trained].T
    same = cat[:, None] == cat[None, :]
    np.fill_diagonal(same, False)
    different = cat[:, None] != cat[None, :]
    assert sims[same].mean() > sims[different].mean() + 0.3
    # eval: one query per eval session whose last click and an earlier one
    # have a vector (every catalogue item now), the last click not clicked
    # earlier in the session; random HR@50 ~ 50 / 200
    assert metrics["eval_sessions"] == recall_fixtures.next_item_query_count(
        recall_fixtures.item2vec_eval_sessions(), set(emb.ids))
    assert metrics["eval_next_item_hr@50"] > 0.6
    # The fixture's few hundred sessions are far below FEW_SESSIONS: the run
    # says so, with its own counts; most items are trained, so no coverage warning.
    min_len = fc.load(paths["config"]).min_session_len
    dropped = (f" ({metrics['short_sessions']} shorter ones dropped)"
               if metrics["short_sessions"] else "")
    assert metrics["warnings"] == [
        f"only {metrics['sessions']} fit sessions of >= {min_len} clicks{dropped}; fewer than "
        f"1000 give noisy vectors (a lower min_session_len keeps more)"]


def test_data_warnings_name_few_sessions_and_low_coverage():
    enough = {"sessions": i2v_train.FEW_SESSIONS, "short_sessions": 7}
    assert i2v_train.data_warnings(enough, 5, 50, 100) == []
    few = {"sessions": 37, "short_sessions": 900}
    assert i2v_train.data_warnings(few, 5, 50, 100) == [
        "only 37 fit sessions of >= 5 clicks (900 shorter ones dropped); fewer than 1000 "
        "give noisy vectors (a lower min_session_len keeps more)"]
    assert i2v_train.data_warnings({"sessions": 37, "short_sessions": 0}, 5, 50, 100) == [
        "only 37 fit sessions of >= 5 clicks; fewer than 1000 give noisy vectors (a lower "
        "min_session_len keeps more)"]
    assert i2v_train.data_warnings(enough, 5, 49, 100) == [
        "49 of 100 items (49%) have trained vectors; the others are imputed (impute_untrained)"]
    assert i2v_train.data_warnings(enough, 5, 496, 1000, imputed=False) == [
        "496 of 1000 items (49%) have trained vectors; the others are never recommended "
        "(impute_untrained is off)"]
    assert i2v_train.data_warnings(enough, 5, 0, 0) == []
    assert len(i2v_train.data_warnings(few, 3, 1, 100)) == 2


def test_validation_is_carved_from_the_latest_sessions(trained):
    _, _, metrics = trained
    # first sessions start at START_TS + u (u = 4..79), second ones at
    # START_TS + 3600 * 7 + u: cutoff = START_TS + 25279 - 0.1 * 25275, every
    # second session is validation and every first one fit
    expected = recall_fixtures.item2vec_validation()
    assert expected["cutoff"] == recall_fixtures.START_TS + 22751.5
    assert metrics["validation"] == {**expected, "fit_examples": 76, "validation_examples": 76}
    assert metrics["sessions"] == 76 and metrics["short_sessions"] == 0


def test_early_stopping_keeps_the_best_epoch(trained):
    paths, export, metrics = trained
    curve, stopping = metrics["learning_curve"], metrics["early_stopping"]
    best = stopping["best_epoch"]
    values = [c["val_hr@50"] for c in curve]
    assert [c["epoch"] for c in curve] == list(range(1, len(curve) + 1))
    assert stopping["stopped_early"] and stopping["monitor"] == "val_hr@50"
    assert stopping["epochs_run"] == len(curve) == best + 2 < 30  # patience 2
    assert stopping["best_value"] == values[best - 1] == max(values)
    assert values[-1] < values[best - 1]  # the last epoch is worse: restoring matters
    # The exported trained vectors (the first trained_items rows) are the best
    # epoch's: their validation HR@50 is that epoch's.
    emb = artifacts.read_item_embeddings(os.path.join(export, artifacts.ITEM_EMBEDDINGS_DIR))
    trained = emb.metadata["trained_items"]
    carve = training.carve_validation(_sessions(paths, fc.TRAIN), 0.1, "item2vec")
    queries = i2v_train.next_item_queries(carve.validation[fc.SESSION_ITEMS_KEY],
                                          emb.ids[:trained], Item2VecConfig().recent_clicks,
                                          every_position=True)
    assert len(queries) == metrics["validation"]["validation_queries"]
    # Each epoch is validated at its best popularity-prior weight; the weight
    # kept is the best one on the kept epoch, and its beta = 0 entry is the
    # exported similarity columns' own HR@50.
    prior = metrics["popularity_prior"]
    hr = prior["val_hr@50"]
    assert list(hr) == [str(w) for w in Item2VecConfig().prior_weights]
    assert values[best - 1] == max(hr.values()) == hr[str(prior["weight"])]
    assert emb.metadata["prior_column"] == (prior["weight"] > 0)
    similarity = emb.embeddings[:trained, :emb.embeddings.shape[1] - (prior["weight"] > 0)]
    again = i2v_train.next_item_hit_rate(queries, similarity, 50)
    assert again == pytest.approx(hr["0.0"], abs=1e-12)


def test_improving_run_trains_to_the_cap_and_similar_items_share_category(trained):
    paths, _, metrics = trained
    config = fc.load(paths["config"])
    catalogue = data.load_catalogue(paths["items"], config)
    result = i2v_train.fit(config, _sessions(paths, fc.TRAIN),
                           inputs.read_vocab(paths["vocab"], "item_id"), catalogue,
                           Item2VecConfig(**HPARAMS, max_epochs=4))
    curve = result.stats["learning_curve"]
    values = [c["val_hr@50"] for c in curve]
    # better every epoch (by more than min_delta): no reason to stop before the cap
    min_delta = Item2VecConfig().min_delta
    assert all(b > a + min_delta for a, b in zip(values, values[1:]))
    assert result.stats["early_stopping"] == {
        "best_epoch": 4, "best_value": values[3], "epochs_run": 4, "stopped_early": False,
        "monitor": "val_hr@50"}
    # same seed, same data: the first 4 epochs of the 30-epoch run
    assert values == pytest.approx([c["val_hr@50"] for c in metrics["learning_curve"][:4]])
    similar = result.similar_items("i0", 5)
    assert len(similar) == 5 and "i0" not in [s for s, _ in similar]
    assert sum(int(s[1:]) % recall_fixtures.NUM_CATEGORIES == 0 for s, _ in similar) >= 4
    history = config.history_feature.name
    # No known click: zero similarity columns; the prior alone when there is one.
    empty = result.user_vectors({history: np.array([[b""] * 50])})
    expected = np.zeros_like(empty)
    expected[:, -1] = 1.0 if result.prior_column else 0.0
    np.testing.assert_array_equal(empty, expected)


def test_exported_user_tower_matches_in_training_vectors(trained):
    paths, export, _ = trained
    config = fc.load(paths["config"])
    serve = artifacts.load_user_tower(os.path.join(export, artifacts.USER_TOWER_DIR))
    arrays = data.load_examples(os.path.join(paths["retrieval"], "Split-eval", "*.gz"), config,
                                fc.RETRIEVAL)
    request = {k: tf.constant(arrays[k][:5]) for k in data.serving_signature(config)}
    served = serve(**request)["user_embedding"].numpy()
    emb = artifacts.read_item_embeddings(os.path.join(export, artifacts.ITEM_EMBEDDINGS_DIR))
    row = {x: i for i, x in enumerate(emb.ids)}
    hist = data.history_lists(arrays[config.history_feature.name][:5])
    expected = np.stack([emb.embeddings[[row[x] for x in h[-20:] if x in row]].mean(0)
                         if any(x in row for x in h) else np.zeros(16) for h in hist])
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_no_validation_query_fails_clearly(trained):
    paths, _, _ = trained
    config = fc.load(paths["config"])
    sessions = _sessions(paths, fc.TRAIN)
    cutoff = recall_fixtures.item2vec_validation()["cutoff"]
    held_out = sessions[fc.SESSION_ITEMS_KEY][sessions[fc.TIMESTAMP_KEY] >= cutoff]
    for i, s in enumerate(held_out):  # one click each: nothing to query with
        held_out[i] = s[:1]
    sessions[fc.SESSION_ITEMS_KEY][sessions[fc.TIMESTAMP_KEY] >= cutoff] = held_out
    with pytest.raises(validation.ValidationError) as info:
        i2v_train.fit(config, sessions, inputs.read_vocab(paths["vocab"], "item_id"), None,
                      Item2VecConfig(dim=4))
    assert str(info.value) == (
        f"item2vec: the 76 validation examples (timestamp >= {cutoff}; 76 fit examples "
        f"before it) give no validation query with a target: too little training data to "
        f"validate on")


def test_config_rejects_unknown_hparams_roles_and_epochs():
    with pytest.raises(Item2VecConfigError, match="unknown Item2vec hparams"):
        Item2VecConfig.from_hparams({"windw": 3})
    with pytest.raises(Item2VecConfigError, match="attribute_role 'user_tags' not in"):
        Item2VecConfig(attribute_role="user_tags")
    with pytest.raises(Item2VecConfigError, match="use 'max_epochs'"):
        Item2VecConfig.from_hparams({"epochs": 25})
