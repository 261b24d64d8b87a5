"""YouTubeNet: logQ-corrected sampled softmax, training, export, new users."""

import os
import types

import numpy as np
import pytest
import tensorflow as tf

from feature_contract import feature_config as fc
from models.layers.feature_embedding import load_vocabularies
from models import validation
from models.recall import artifacts, data, protocols, training
from models.youtubenet import train as ytn_train
from models.youtubenet.config import YouTubeNetConfig, YouTubeNetConfigError
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
                                            max_epochs=30, patience=2,
                                            batch_size=64, num_sampled=20,
                                            learning_rate=0.01))
    export = os.path.join(root, "export")
    result.export(export)
    queries = protocols.time_split(data.load_examples(
        os.path.join(paths["retrieval"], "Split-eval", "*.gz"), config, fc.RETRIEVAL), config)
    return types.SimpleNamespace(paths=paths, config=config, result=result, export=export,
                                 queries=queries, arrays=arrays)


def test_youtubenet_learns_and_exports(trained):
    config, result, export, queries = (trained.config, trained.result, trained.export,
                                       trained.queries)
    out = protocols.evaluate_embeddings(queries, result.user_vectors(queries.features),
                                        result.item_ids, result.item_vectors, ks=(10, 50))
    # 200 items in 10 categories of 20: random HR@50 ~ 0.26, knowing the
    # user's category ~ 0.9 (10% of clicks are off-category noise)
    assert out["hr@50"] > 0.8 and out["hr@10"] > 0.4
    curve = result.stats["learning_curve"]
    best = result.stats["early_stopping"]["best_epoch"]
    assert curve[best - 1]["train_loss"] < curve[0]["train_loss"] - 0.5
    serve = artifacts.load_user_tower(os.path.join(export, artifacts.USER_TOWER_DIR))
    request = {k: tf.constant(queries.features[k]) for k in data.serving_signature(config)}
    np.testing.assert_allclose(serve(**request)["user_embedding"].numpy(),
                               result.user_vectors(queries.features), atol=1e-4)
    emb = artifacts.read_item_embeddings(os.path.join(export, artifacts.ITEM_EMBEDDINGS_DIR))
    assert emb.metadata["model"] == "youtubenet" and emb.metadata["normalized"] is False
    assert sorted(emb.ids) == sorted(f"i{k}" for k in range(recall_fixtures.NUM_ITEMS))


def test_validation_is_carved_from_the_last_train_hour(trained):
    result = trained.result
    # train clicks span START_TS + 4 (user 4, click 0) .. START_TS + 3600 * 9 + 79
    # (user 79, click 9): cutoff = START_TS + 32479 - 0.1 * 32475; validation
    # = the 76 returning users' 10th clicks, fit = their 9 earlier ones
    expected = recall_fixtures.retrieval_validation()
    assert expected["cutoff"] == recall_fixtures.START_TS + 29231.5
    assert result.stats["validation"] == {**expected, "fit_examples": 684,
                                          "validation_examples": 76}
    assert result.stats["examples"] == 684 and result.stats["dropped_unknown_target"] == 0


def test_early_stopping_keeps_the_best_epoch(trained):
    config, result, arrays = trained.config, trained.result, trained.arrays
    curve, stopping = result.stats["learning_curve"], result.stats["early_stopping"]
    best = stopping["best_epoch"]
    values = [c["val_hr@50"] for c in curve]
    assert [c["epoch"] for c in curve] == list(range(1, len(curve) + 1))
    assert stopping["stopped_early"] and stopping["monitor"] == "val_hr@50"
    assert stopping["epochs_run"] == len(curve) == best + 2 < 30  # patience 2
    assert stopping["best_value"] == values[best - 1] == max(values)
    assert best >= 3 and values[best - 1] > values[0] + 0.3  # it learned for several epochs
    assert values[-1] < values[best - 1]  # the last epoch is worse: restoring matters
    # The returned model is the best epoch's: its validation HR@50 is that epoch's.
    carve = training.carve_validation(arrays, 0.1, "youtubenet")
    queries = training.validation_queries(carve, config, "youtubenet")
    again = training.validation_hit_rate(queries, result.user_vectors(queries.features),
                                         result.item_ids, result.item_vectors)
    assert again == pytest.approx(values[best - 1], abs=1e-12)


def test_new_user_vector(trained):
    result, queries = trained.result, trained.queries
    empty = np.array([h == [] for h in queries.history])
    feats = data.take(queries.features, np.flatnonzero(queries.is_new & empty))
    assert len(feats[fc.USER_KEY]) == recall_fixtures.NEW_USERS
    vectors = result.user_vectors(feats)
    assert np.all(np.isfinite(vectors)) and np.linalg.norm(vectors, axis=1).min() > 0
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-4


def test_unknown_and_retired_hparams_rejected():
    with pytest.raises(YouTubeNetConfigError, match="unknown YouTubeNet hparams"):
        YouTubeNetConfig.from_hparams({"dims": 3})
    with pytest.raises(YouTubeNetConfigError, match="use 'max_epochs'"):
        YouTubeNetConfig.from_hparams({"epochs": 3})


def test_too_little_data_to_validate_fails_clearly(trained):
    rows = data.take(trained.arrays, np.arange(3))
    rows[fc.TIMESTAMP_KEY] = np.full(3, recall_fixtures.START_TS)
    with pytest.raises(validation.ValidationError) as info:
        ytn_train.fit(trained.config, rows, None, {}, YouTubeNetConfig())
    assert str(info.value).startswith("youtubenet: cannot carve a validation split from 3 "
                                      "training examples")


def test_train_entry_point_reports_eval_metrics_of_the_exported_model(trained, tmp_path):
    paths = trained.paths
    export = str(tmp_path / "export")
    out = ytn_train.train(paths["config"], paths["retrieval"], paths["vocab"], paths["items"],
                          {"dim": 8, "embedding_dim": 4, "hidden_units": [8], "max_epochs": 1,
                           "num_sampled": 10}, export)
    assert out["examples"] == 684 and out["dropped_unknown_target"] == 0
    assert out["validation"] == recall_fixtures.retrieval_validation()
    [epoch] = out["learning_curve"]
    assert epoch["epoch"] == 1 and epoch["train_loss"] > 0
    assert out["early_stopping"] == {"best_epoch": 1, "best_value": epoch["val_hr@50"],
                                     "epochs_run": 1, "stopped_early": False,
                                     "monitor": "val_hr@50"}
    # hr@50 is the eval split's, once, with the exported towers (not validation's)
    config, queries = trained.config, trained.queries
    serve = artifacts.load_user_tower(out["user_tower"])
    users = serve(**{k: tf.constant(queries.features[k])
                     for k in data.serving_signature(config)})["user_embedding"].numpy()
    emb = artifacts.read_item_embeddings(out["item_embeddings"])
    expected = protocols.evaluate_embeddings(queries, users, emb.ids, emb.embeddings)
    assert out["hr@50"] == pytest.approx(expected["hr@50"])
    assert out["num_users"] == expected["num_users"] > 100
    with pytest.raises(YouTubeNetConfigError, match="use 'max_epochs'"):
        ytn_train.train(paths["config"], paths["retrieval"], paths["vocab"], paths["items"],
                        {"epochs": 1}, str(tmp_path / "y"))
    with pytest.raises(FileNotFoundError, match="no TFRecord files"):
        ytn_train.train(paths["config"], str(tmp_path / "nothing"), paths["vocab"], None, {},
                        str(tmp_path / "x"))
