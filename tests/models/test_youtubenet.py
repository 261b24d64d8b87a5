"""YouTubeNet: logQ-corrected sampled softmax, training, export, new users."""

import os

import numpy as np
import pytest
import tensorflow as tf

from beam_jobs import feature_config as fc
from models.layers.feature_embedding import load_vocabularies
from models.recall import artifacts, data, protocols
from models.youtubenet import train as ytn_train
from models.youtubenet.config import YouTubeNetConfig
from models.youtubenet.model import sampled_softmax_loss, sampling_weights
from tests.models import recall_fixtures


def test_sampled_softmax_subtracts_log_expected_count_and_drops_hits():
    users = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    table = np.array([[0, 0], [1.0, 0.5], [0.2, 1.0], [-1.0, 0.3]], np.float32)
    labels = np.array([[1], [2]], np.int64)
    sampled = np.array([2, 3], np.int64)  # class 2 is user 1's own label: accidental hit
    true_q = np.array([[0.5], [0.25]], np.float32)
    sampled_q = np.array([0.25, 0.125], np.float32)
    loss = sampled_softmax_loss(tf.constant(users), tf.constant(table), tf.constant(labels),
                                (tf.constant(sampled), tf.constant(true_q), tf.constant(sampled_q)))
    expected = []
    for b in range(2):
        pos = users[b] @ table[labels[b, 0]] - np.log(true_q[b, 0])
        neg = [users[b] @ table[s] - np.log(q) for s, q in zip(sampled, sampled_q)
               if s != labels[b, 0]]
        logits = np.array([pos] + neg)
        expected.append(-(pos - np.log(np.exp(logits).sum())))
    assert float(loss) == pytest.approx(np.mean(expected), rel=1e-4)


def test_sampling_weights():
    np.testing.assert_allclose(sampling_weights(np.array([9, 0, 15]), 0.5), [1e-6, 1.0, 4.0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ytn"))
    paths = recall_fixtures.write_dataset(os.path.join(root, "data"))
    config = fc.load(paths["config"])
    catalogue = data.load_catalogue(paths["items"], config)
    arrays = data.load_examples(os.path.join(paths["retrieval"], "Split-train", "*.gz"), config,
                                fc.RETRIEVAL)
    result = ytn_train.fit(config, arrays, catalogue, load_vocabularies(config, paths["vocab"]),
                           YouTubeNetConfig(dim=16, embedding_dim=8, hidden_units=(32,),
                                            epochs=30, batch_size=64, num_sampled=20,
                                            learning_rate=0.01))
    export = os.path.join(root, "export")
    result.export(export)
    queries = protocols.time_split(data.load_examples(
        os.path.join(paths["retrieval"], "Split-eval", "*.gz"), config, fc.RETRIEVAL), config)
    return config, result, export, queries


def test_youtubenet_learns_and_exports(trained):
    config, result, export, queries = trained
    out = protocols.evaluate_embeddings(queries, result.user_vectors(queries.features),
                                        result.item_ids, result.item_vectors, ks=(10, 50))
    assert out["hr@10"] > 0.6  # random ~0.18
    serve = artifacts.load_user_tower(os.path.join(export, artifacts.USER_TOWER_DIR))
    request = {k: tf.constant(queries.features[k]) for k in data.serving_signature(config)}
    np.testing.assert_allclose(serve(**request)["user_embedding"].numpy(),
                               result.user_vectors(queries.features), atol=1e-4)
    emb = artifacts.read_item_embeddings(os.path.join(export, artifacts.ITEM_EMBEDDINGS_DIR))
    assert emb.metadata["model"] == "youtubenet" and emb.metadata["normalized"] is False
    assert sorted(emb.ids) == sorted(f"i{k}" for k in range(recall_fixtures.NUM_ITEMS))


def test_new_user_vector(trained):
    config, result, _, queries = trained
    empty = np.array([h == [] for h in queries.history])
    feats = data.take(queries.features, np.flatnonzero(queries.is_new & empty))
    assert len(feats[fc.USER_KEY]) == recall_fixtures.NEW_USERS
    vectors = result.user_vectors(feats)
    assert np.all(np.isfinite(vectors)) and np.linalg.norm(vectors, axis=1).min() > 0
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-4


def test_unknown_hparams_rejected():
    with pytest.raises(ValueError, match="unknown YouTubeNet hparams"):
        YouTubeNetConfig.from_hparams({"dims": 3})


def test_train_entry_point_reports_time_split_metrics_and_exports(tmp_path):
    paths = recall_fixtures.write_dataset(str(tmp_path / "data"))
    export = str(tmp_path / "export")
    out = ytn_train.train(paths["config"], paths["retrieval"], paths["vocab"], paths["items"],
                          {"dim": 8, "embedding_dim": 4, "hidden_units": [8], "epochs": 1,
                           "num_sampled": 10}, export)
    assert out["examples"] == recall_fixtures.NUM_USERS * recall_fixtures.CLICKS_PER_USER - (
        recall_fixtures.NEW_USERS * recall_fixtures.CLICKS_PER_USER
        + (recall_fixtures.NUM_USERS - recall_fixtures.NEW_USERS) * recall_fixtures.EVAL_CLICKS)
    assert 0.0 <= out["hr@50"] <= 1.0 and out["dropped_unknown_target"] == 0
    assert os.path.isdir(out["user_tower"]) and os.path.isdir(out["item_embeddings"])
    with pytest.raises(FileNotFoundError, match="no TFRecord files"):
        ytn_train.train(paths["config"], str(tmp_path / "nothing"), paths["vocab"], None, {},
                        str(tmp_path / "x"))
