"""Item2vec: pair generation, negative sampling, training, export."""

import os

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import feature_config as fc
from models.item2vec import train as i2v_train
from models.item2vec.config import Item2VecConfig
from models.item2vec.model import MeanHistoryTower, NegativeSampler, skipgram_pairs
from models.recall import artifacts
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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("i2v"))
    paths = recall_fixtures.write_dataset(os.path.join(root, "data"))
    export = os.path.join(root, "export")
    metrics = i2v_train.train(paths["config"], paths["item2vec"], paths["vocab"], paths["items"],
                              {"dim": 16, "epochs": 25, "learning_rate": 0.02,
                               "attribute_role": fc.ROLE_ITEM_CITY}, export)
    return paths, export, metrics


def test_train_learns_categories_and_exports(trained):
    paths, export, metrics = trained
    assert metrics["epoch_losses"][-1] < metrics["epoch_losses"][0]
    emb = artifacts.read_item_embeddings(os.path.join(export, artifacts.ITEM_EMBEDDINGS_DIR))
    assert emb.metadata["model"] == "item2vec" and emb.metadata["normalized"]
    assert emb.metadata["dim"] == 16 and emb.metadata["metric"] == "ip"
    np.testing.assert_allclose(np.linalg.norm(emb.embeddings, axis=1), 1.0, atol=1e-5)
    cat = np.array([int(i[1:]) % recall_fixtures.NUM_CATEGORIES for i in emb.ids])
    sims = emb.embeddings @ emb.embeddings.T
    same = cat[:, None] == cat[None, :]
    np.fill_diagonal(same, False)
    different = cat[:, None] != cat[None, :]
    assert sims[same].mean() > sims[different].mean() + 0.2
    assert metrics["eval_sessions"] == recall_fixtures.NUM_USERS


def test_exported_user_tower_matches_in_training_vectors(trained):
    paths, export, _ = trained
    config = fc.load(paths["config"])
    result = i2v_train.fit(config, [["i0", "i5", "i10", "i15", "i20"]] * 4,
                           [f"i{k}" for k in range(60)], None, Item2VecConfig(dim=8, epochs=1))
    serve = artifacts.load_user_tower(os.path.join(export, artifacts.USER_TOWER_DIR))
    from models.recall import data
    arrays = data.load_examples(os.path.join(paths["retrieval"], "Split-eval", "*.gz"), config,
                                fc.RETRIEVAL)
    request = {k: tf.constant(arrays[k][:5]) for k in data.serving_signature(config)}
    served = serve(**request)["user_embedding"].numpy()
    emb = artifacts.read_item_embeddings(os.path.join(export, artifacts.ITEM_EMBEDDINGS_DIR))
    row = {x: i for i, x in enumerate(emb.ids)}
    hist = data.history_lists(arrays[config.history_feature.name][:5])
    expected = np.stack([emb.embeddings[[row[x] for x in h[-20:] if x in row]].mean(0)
                         if h else np.zeros(16) for h in hist])
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert result.user_vectors({config.history_feature.name: np.array([[b""] * 50])}).sum() == 0


def test_similar_items_share_category(trained):
    paths, export, _ = trained
    config = fc.load(paths["config"])
    from models.recall import data
    from models import inputs
    catalogue = data.load_catalogue(paths["items"], config)
    sessions = data.load_examples(os.path.join(paths["item2vec"], "Split-train", "*.gz"), config,
                                  fc.ITEM2VEC)[fc.SESSION_ITEMS_KEY]
    result = i2v_train.fit(config, sessions, inputs.read_vocab(paths["vocab"], "item_id"),
                           catalogue, Item2VecConfig(dim=16, epochs=25, learning_rate=0.02))
    similar = result.similar_items("i0", 5)
    assert len(similar) == 5 and "i0" not in [s for s, _ in similar]
    assert sum(int(s[1:]) % 5 == 0 for s, _ in similar) >= 4
    # eval sessions stay (90%) inside one category of 12 items: random HR@10 ~ 0.18
    eval_sessions = data.load_examples(os.path.join(paths["item2vec"], "Split-eval", "*.gz"),
                                       config, fc.ITEM2VEC)[fc.SESSION_ITEMS_KEY]
    assert i2v_train.eval_next_item(result, eval_sessions, k=10)["eval_next_item_hr@10"] > 0.5


def test_config_rejects_unknown_hparams_and_roles():
    with pytest.raises(ValueError, match="unknown Item2vec hparams"):
        Item2VecConfig.from_hparams({"windw": 3})
    with pytest.raises(ValueError, match="attribute_role"):
        Item2VecConfig(attribute_role="user_tags")
