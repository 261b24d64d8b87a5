"""Two-tower: loss with logQ and accidental hits, hard negatives, attention, export, new users."""

import dataclasses
import os
import types

import numpy as np
import pytest
import tensorflow as tf

from feature_contract import feature_config as fc
from models.layers.feature_embedding import FeatureIds, load_vocabularies
from models import validation
from models.recall import artifacts, data, protocols, training
from models.recall.towers import AttentionPooling, FeatureTower, recent_mean
from models.two_tower import train as tt_train
from models.two_tower.config import TwoTowerConfig, TwoTowerConfigError
from models.two_tower.model import HardNegativeSampler, mixed_softmax_loss
from tests.models import recall_fixtures


def _log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def test_loss_applies_logq_and_removes_accidental_hits():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    c = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)  # 3rd: extra negative
    ids = np.array([10, 11, 10])  # the extra negative is query 0's own item: an accidental hit
    p = np.array([0.5, 0.25, 0.125], np.float32)
    temperature = 0.5
    logits = q @ c.T / temperature - np.log(p)[None, :]
    row0 = _log_softmax(logits[0, :2])[0]          # column 2 removed for query 0
    row1 = _log_softmax(logits[1])[1]              # kept for query 1 (id 11 != 10)
    expected = -(row0 + row1) / 2
    no_hard = (tf.zeros([2, 0, 2]), tf.zeros([2, 0], tf.int64), tf.zeros([2, 0]))
    loss = mixed_softmax_loss(tf.constant(q), tf.constant(c), tf.constant(ids), tf.constant(p),
                              *no_hard, temperature)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    no_logq = mixed_softmax_loss(tf.constant(q), tf.constant(c), tf.constant(ids),
                                 tf.ones([3]), *no_hard, temperature)
    assert float(no_logq) != pytest.approx(expected, rel=1e-3)


def test_hard_negatives_same_city_other_category():
    n = 40
    category = np.arange(n) % 4 + 1
    city = np.arange(n) % 5 + 1
    sampler = HardNegativeSampler(category, city)
    positives = np.random.default_rng(0).integers(0, n, 2000)
    neg, q = sampler.sample(np.random.default_rng(1), positives, 3)
    # every city (8 items, 2 per category) holds other categories: all exact
    assert np.all(city[neg] == city[positives][:, None])
    assert np.all(category[neg] != category[positives][:, None])
    np.testing.assert_allclose(q, 1 / 6)
    no_city, q = HardNegativeSampler(category, None).sample(np.random.default_rng(2),
                                                            positives, 3)
    assert np.all(category[no_city] != category[positives][:, None])
    np.testing.assert_allclose(q, 1 / 30)


def test_attention_pooling_hand_computed_and_empty_rows():
    layer = AttentionPooling(2)
    seq = tf.constant([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    mask = tf.constant([[True, True, False], [False, False, False]])
    query = tf.constant([[1.0], [1.0]])
    out = layer(seq, mask, query).numpy()
    wk, wq, bq, v = (w.numpy() for w in (layer.key_proj.kernel, layer.query_proj.kernel,
                                         layer.query_proj.bias, layer.score.kernel))
    scores = np.tanh(seq.numpy()[0, :2] @ wk + (np.array([1.0]) @ wq + bq)) @ v[:, 0]
    weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose(out[0], weights @ seq.numpy()[0, :2], rtol=1e-5)
    np.testing.assert_array_equal(out[1], [0.0, 0.0])  # new user: no history, no NaN


def test_attention_pooling_positions_count_from_each_rows_latest_valid_position():
    # Padding on either side: position 0 is each row's latest valid entry.
    layer = AttentionPooling(2, positions=2)
    seq = tf.constant([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], [[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]]])
    mask = tf.constant([[True, True, False], [False, True, True]])
    query = tf.constant([[1.0], [-1.0]])
    out = layer(seq, mask, query).numpy()
    wk, wq, bq, v, pos = (w.numpy() for w in (
        layer.key_proj.kernel, layer.query_proj.kernel, layer.query_proj.bias,
        layer.score.kernel, layer.position_table.embeddings))
    assert pos.shape == (2, 2) and layer.get_config()["positions"] == 2
    for row, (valid, from_end) in enumerate((([0, 1], [1, 0]), ([1, 2], [1, 0]))):
        x = seq.numpy()[row, valid]
        keys = x @ wk + (query.numpy()[row] @ wq + bq) + pos[from_end]
        scores = np.tanh(keys) @ v[:, 0]
        weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        np.testing.assert_allclose(out[row], weights @ x, rtol=1e-5)
    # Older positions than `positions` share the last row of the table.
    long_seq, long_mask = tf.ones([1, 4, 2]) * tf.range(4.0)[None, :, None], tf.ones([1, 4], bool)
    keys = (np.arange(4.0)[:, None] * np.ones(2)) @ wk + (np.array([1.0]) @ wq + bq)
    scores = np.tanh(keys + pos[[1, 1, 1, 0]]) @ v[:, 0]
    weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose(layer(long_seq, long_mask, tf.constant([[1.0]])).numpy()[0],
                               weights @ (np.arange(4.0)[:, None] * np.ones(2)), rtol=1e-5)
    with pytest.raises(ValueError, match="positions must be >= 0"):
        AttentionPooling(2, positions=-1)


# One share_item_embedding choice: the recent_clicks tests below see only
# their own axis (the share choice has its own tests).
TRAINED_CONFIG = TwoTowerConfig(dim=16, embedding_dim=8, hidden_units=(32,), max_epochs=30,
                                batch_size=64, extra_negatives=16, share_item_embedding=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tt"))
    paths = recall_fixtures.write_dataset(os.path.join(root, "data"))
    config = fc.load(paths["config"])
    catalogue = data.load_catalogue(paths["items"], config)
    arrays = data.load_examples(os.path.join(paths["retrieval"], "Split-train", "*.gz"), config,
                                fc.RETRIEVAL)
    vocabularies = load_vocabularies(config, paths["vocab"])
    result = tt_train.fit(config, arrays, catalogue, vocabularies, TRAINED_CONFIG)
    export = os.path.join(root, "export")
    result.export(export)
    queries = protocols.time_split(data.load_examples(
        os.path.join(paths["retrieval"], "Split-eval", "*.gz"), config, fc.RETRIEVAL), config)
    return types.SimpleNamespace(config=config, result=result, export=export, queries=queries,
                                 arrays=arrays, catalogue=catalogue, vocabularies=vocabularies)


def test_two_tower_learns_user_category(trained):
    result, queries = trained.result, trained.queries
    out = protocols.evaluate_embeddings(queries, result.user_vectors(queries.features),
                                        result.item_ids, result.item_vectors, ks=(10, 50))
    # 200 items in 10 categories of 20: random HR@50 ~ 0.26, knowing the
    # user's category ~ 0.9 (10% of clicks are off-category noise)
    assert out["hr@50"] > 0.8 and out["hr@10"] > 0.4
    curve = result.stats["learning_curve"]
    best = result.stats["early_stopping"]["best_epoch"]
    assert curve[best - 1]["train_loss"] < curve[0]["train_loss"] - 1.0


def test_validation_is_carved_from_the_last_train_hour(trained):
    # the same fixture and carve as YouTubeNet's (test_youtubenet has the arithmetic)
    assert trained.result.stats["validation"] == recall_fixtures.retrieval_validation()
    assert trained.result.stats["validation"]["fit_examples"] == 684
    assert trained.result.stats["examples"] == 684


def test_early_stopping_keeps_the_best_epoch(trained):
    result = trained.result
    curve, stopping = result.stats["learning_curve"], result.stats["early_stopping"]
    best = stopping["best_epoch"]
    values = [c["val_hr@50"] for c in curve]
    assert [c["epoch"] for c in curve] == list(range(1, len(curve) + 1))
    assert stopping["stopped_early"] and stopping["monitor"] == "val_hr@50"
    assert stopping["epochs_run"] == len(curve) == best + 2 < 30  # patience 2
    assert stopping["best_value"] == values[best - 1] == max(values)
    assert all(v <= values[best - 1] + 1e-4 for v in values[best:])
    # The returned towers are the best epoch's: their validation HR@50 is that epoch's.
    carve = training.carve_validation(trained.arrays, 0.1, "two_tower")
    queries = training.validation_queries(carve, trained.config, "two_tower")
    again = training.validation_hit_rate(queries, result.user_vectors(queries.features),
                                         result.item_ids, result.item_vectors)
    assert again == pytest.approx(values[best - 1], abs=1e-12)


def test_no_validation_query_fails_clearly(trained):
    # every validation click re-clicks an item of its own history: no target is left
    arrays = {k: v.copy() for k, v in trained.arrays.items()}
    held_out = arrays[fc.TIMESTAMP_KEY] >= recall_fixtures.retrieval_validation()["cutoff"]
    history = arrays[trained.config.history_feature.name]
    history[held_out, 0] = arrays[trained.config.item_id_feature.name][held_out]
    with pytest.raises(validation.ValidationError) as info:
        tt_train.fit(trained.config, arrays, None, {}, TwoTowerConfig())
    assert str(info.value) == (
        f"two_tower: the 76 validation examples (timestamp >= "
        f"{recall_fixtures.START_TS + 29231.5}; 684 fit examples before it) give no validation "
        f"query with a target: too little training data to validate on")


def test_exported_user_tower_matches_training_model(trained):
    config, result, export, queries = (trained.config, trained.result, trained.export,
                                       trained.queries)
    serve = artifacts.load_user_tower(os.path.join(export, artifacts.USER_TOWER_DIR))
    request = {k: tf.constant(queries.features[k]) for k in data.serving_signature(config)}
    np.testing.assert_allclose(serve(**request)["user_embedding"].numpy(),
                               result.user_vectors(queries.features), atol=1e-5)
    emb = artifacts.read_item_embeddings(os.path.join(export, artifacts.ITEM_EMBEDDINGS_DIR))
    assert emb.ids == result.item_ids and emb.metadata["normalized"] is True
    np.testing.assert_allclose(emb.embeddings, result.item_vectors, atol=1e-6)


def test_new_user_vector_from_demographics_and_context(trained):
    config, result, export, queries = (trained.config, trained.result, trained.export,
                                       trained.queries)
    empty = np.array([h == [] for h in queries.history])
    new = np.flatnonzero(queries.is_new & empty)  # each new user's first eval click
    assert len(new) == recall_fixtures.NEW_USERS
    feats = data.take(queries.features, new)
    tags = config.role(fc.ROLE_USER_TAGS).name
    feats[tags] = np.full_like(feats[tags], b"")  # no interest tags either
    vectors = result.user_vectors(feats)
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3  # demographics differ -> vectors differ
    serve = artifacts.load_user_tower(os.path.join(export, artifacts.USER_TOWER_DIR))
    served = serve(**{k: tf.constant(feats[k]) for k in data.serving_signature(config)})
    np.testing.assert_allclose(served["user_embedding"].numpy(), vectors, atol=1e-5)


def test_config_validation():
    with pytest.raises(TwoTowerConfigError, match="temperature must be > 0, got 0"):
        TwoTowerConfig(temperature=0)
    with pytest.raises(TwoTowerConfigError, match="unknown two-tower hparams"):
        TwoTowerConfig.from_hparams({"tmp": 1})
    with pytest.raises(TwoTowerConfigError, match="use 'max_epochs'"):
        TwoTowerConfig.from_hparams({"epochs": 2})
    assert TwoTowerConfig.from_hparams({"hidden_units": [8, 4]}).hidden_units == (8, 4)


def test_recent_mean_hand_computed_wherever_the_padding_sits():
    seq = tf.constant([[[1.0], [2.0], [3.0], [4.0], [0.0]],     # padding last
                       [[0.0], [0.0], [5.0], [7.0], [9.0]],     # padding first
                       [[1.0], [1.0], [1.0], [1.0], [1.0]]])    # no click
    mask = tf.constant([[True, True, True, True, False],
                        [False, False, True, True, True],
                        [False] * 5])
    np.testing.assert_allclose(recent_mean(seq, mask, 2).numpy(), [[3.5], [8.0], [0.0]])
    np.testing.assert_allclose(recent_mean(seq, mask, 10).numpy(), [[2.5], [7.0], [0.0]])
    np.testing.assert_allclose(recent_mean(seq, mask).numpy(), [[2.5], [7.0], [0.0]])


def test_recent_clicks_with_mean_pooling_gives_the_history_its_own_table(trained):
    config = trained.config
    vocabularies = {k: list(v) for k, v in trained.result.model.user_tower.vocabularies.items()}
    names = trained.result.user_names
    history = config.history_feature.name
    plain = FeatureTower(config.to_dict(), vocabularies, names, 4, (8,), 4)
    recent = FeatureTower(config.to_dict(), vocabularies, names, 4, (8,), 4, recent_clicks=3)
    assert plain.multi_names == [] and recent.multi_names == [history]
    assert recent.recent_names == [history] and history not in recent.single_names
    assert recent.get_config()["recent_clicks"] == 3
    features = {k: tf.constant(v[:3]) for k, v in trained.arrays.items() if k in names}
    assert recent(features).shape == (3, 4)
    with pytest.raises(ValueError, match="recent_clicks must be >= 0, got -1"):
        FeatureTower(config.to_dict(), vocabularies, names, 4, (8,), 4, recent_clicks=-1)


def test_tower_dropout_acts_in_training_only_and_restores_from_config(trained):
    config = trained.config
    vocabularies = {k: list(v) for k, v in trained.result.model.user_tower.vocabularies.items()}
    names = trained.result.user_names
    features = {k: tf.constant(v[:16]) for k, v in trained.arrays.items() if k in names}
    plain = FeatureTower(config.to_dict(), vocabularies, names, 4, (8,), 4)
    dropped = FeatureTower(config.to_dict(), vocabularies, names, 4, (8,), 4, dropout=0.5)
    plain(features), dropped(features)
    dropped.set_weights(plain.get_weights())  # Dropout adds no weights
    np.testing.assert_allclose(dropped(features).numpy(), plain(features).numpy(), atol=1e-6)
    np.testing.assert_allclose(dropped(features, training=False).numpy(),
                               plain(features, training=True).numpy(), atol=1e-6)
    tf.random.set_seed(0)
    assert np.abs(dropped(features, training=True).numpy() - plain(features).numpy()).max() > 1e-3
    assert dropped.get_config()["dropout"] == 0.5 and plain.get_config()["dropout"] == 0.0
    assert TwoTowerConfig().dropout == 0.2  # the validation-chosen default (README)
    restored = FeatureTower.from_config(dropped.get_config())
    restored(features)
    restored.set_weights(dropped.get_weights())
    np.testing.assert_allclose(restored(features).numpy(), plain(features).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        FeatureTower(config.to_dict(), vocabularies, names, 4, (8,), 4, dropout=1.0)
    with pytest.raises(TwoTowerConfigError, match=r"dropout must be in \[0, 1\), got -0.1"):
        TwoTowerConfig(dropout=-0.1)


def test_two_tower_loss_sees_dropout_and_weight_decay_shrinks_each_step(trained):
    model, _, _ = tt_train.build_model(trained.config, trained.vocabularies,
                                       dataclasses.replace(TRAINED_CONFIG, dropout=0.3), 0, False)
    user = {k: tf.constant(v[:8]) for k, v in trained.arrays.items()
            if k in model.user_tower.feature_names}
    items = {k: tf.constant(v[:8]) for k, v in trained.catalogue.features.items()}
    ids, q = tf.range(8), tf.fill([8], 1 / 200)
    hard = {k: v[:0] for k, v in items.items()}
    args = (user, items, ids, q, hard, tf.zeros([8, 0], tf.int64), tf.zeros([8, 0]))
    tf.random.set_seed(1)
    # Dropout draws a new mask each call: the training loss is not a function of the weights alone.
    assert abs(float(model.compute_loss(*args)) - float(model.compute_loss(*args))) > 1e-4
    # AdamW: a zero gradient (Adam's own step is 0) still shrinks w by lr * weight_decay * w.
    w = tf.Variable([1.0, -2.0])
    optimizer = tt_train.make_optimizer(TwoTowerConfig(learning_rate=0.1, weight_decay=0.5))
    optimizer.apply_gradients([(tf.zeros(2), w)])
    np.testing.assert_allclose(w.numpy(), [0.95, -1.9], rtol=1e-6)
    plain = tt_train.make_optimizer(TwoTowerConfig(learning_rate=0.1))
    w.assign([1.0, -2.0])
    plain.apply_gradients([(tf.zeros(2), w)])
    np.testing.assert_allclose(w.numpy(), [1.0, -2.0])
    with pytest.raises(TwoTowerConfigError, match="weight_decay must be >= 0, got -1"):
        TwoTowerConfig(weight_decay=-1)


def test_recent_clicks_choice_is_the_best_validation_and_each_starts_alike(trained):
    result = trained.result
    choice = result.stats["recent_clicks"]
    assert set(choice["val_hr@50"]) == {"0", "5"}
    best = max(choice["val_hr@50"].values())
    assert choice["val_hr@50"][str(choice["chosen"])] == best
    assert result.stats["early_stopping"]["best_value"] == best
    assert result.config.recent_clicks == (choice["chosen"],)
    assert result.model.user_tower.recent_clicks == choice["chosen"]
    # One choice alone trains exactly as it did among two: same seed, same draws.
    alone = tt_train.fit(trained.config, trained.arrays, trained.catalogue,
                         trained.vocabularies, dataclasses.replace(TRAINED_CONFIG,
                                                                   recent_clicks=(5,)))
    assert alone.stats["early_stopping"]["best_value"] == choice["val_hr@50"]["5"]
    assert alone.stats["recent_clicks"] == {"chosen": 5, "val_hr@50": {"5": choice["val_hr@50"]["5"]}}


def _assert_export_serves_the_training_vectors(result, trained, export_dir):
    """The exported user tower's serving_default gives the trained model's vectors."""
    result.export(export_dir)
    serve = artifacts.load_user_tower(os.path.join(export_dir, artifacts.USER_TOWER_DIR))
    features = trained.queries.features
    request = {k: tf.constant(features[k]) for k in data.serving_signature(trained.config)}
    np.testing.assert_allclose(serve(**request)["user_embedding"].numpy(),
                               result.user_vectors(features), atol=1e-5)


def test_recent_clicks_tower_exports_and_restores(trained, tmp_path):
    config = trained.config
    alone = tt_train.fit(config, trained.arrays, trained.catalogue, trained.vocabularies,
                         dataclasses.replace(TRAINED_CONFIG, recent_clicks=(5,)))
    tower = alone.model.user_tower
    assert tower.recent_clicks == 5 and tower.recent_names == [config.history_feature.name]
    _assert_export_serves_the_training_vectors(alone, trained, str(tmp_path))
    queries = trained.queries
    # get_config / from_config rebuilds the same tower (attention and mean pooling).
    features = {k: tf.constant(v[:4]) for k, v in queries.features.items()
                if k in tower.feature_names}
    mean_pooled = FeatureTower(config.to_dict(), trained.vocabularies, tower.feature_names, 4,
                               (8,), 4, recent_clicks=2)
    for original in (tower, mean_pooled):
        out = original(features).numpy()
        copy = FeatureTower.from_config(original.get_config())
        copy(features)
        copy.set_weights(original.get_weights())
        np.testing.assert_allclose(copy(features).numpy(), out, atol=1e-6)


def test_history_positions_only_on_the_history_and_restored_from_config(trained):
    config = trained.config
    names = tt_train.feature_names(config, TRAINED_CONFIG)[0]
    tower = FeatureTower(config.to_dict(), trained.vocabularies, names, 4, (8,), 4,
                         attention_units=3, history_positions=True)
    history = config.history_feature.name
    assert {n: p.positions for n, p in tower.poolers.items()} == {
        n: (config.history_feature.max_len if n == history else 0) for n in tower.multi_names}
    features = {k: tf.constant(v[:4]) for k, v in trained.queries.features.items()
                if k in tower.feature_names}
    out = tower(features).numpy()
    copy = FeatureTower.from_config(tower.get_config())
    copy(features)
    copy.set_weights(tower.get_weights())
    np.testing.assert_allclose(copy(features).numpy(), out, atol=1e-6)
    # The trainer's model builder passes the option to the user tower only.
    on = dataclasses.replace(TRAINED_CONFIG, history_positions=True)
    model = tt_train.build_model(config, trained.vocabularies, on, recent_clicks=0)[0]
    assert model.user_tower.poolers[history].positions == config.history_feature.max_len
    assert model.user_tower.history_positions and not model.item_tower.history_positions
    off = tt_train.build_model(config, trained.vocabularies, TRAINED_CONFIG, recent_clicks=0)[0]
    assert off.user_tower.poolers[history].positions == 0
    # Without attention no pooling would read the positions: refused, not ignored.
    with pytest.raises(ValueError, match="history_positions needs attention pooling"):
        FeatureTower(config.to_dict(), trained.vocabularies, names, 4, (8,), 4,
                     attention_units=0, history_positions=True)
    with pytest.raises(TwoTowerConfigError, match="history_positions needs attention_units"):
        TwoTowerConfig(attention_units=0, history_positions=True)
    with pytest.raises(TwoTowerConfigError, match="history_positions must be true or false"):
        TwoTowerConfig.from_hparams({"history_positions": "false"})
    with pytest.raises(TwoTowerConfigError, match="use_user_id must be true or false"):
        TwoTowerConfig.from_hparams({"use_user_id": 1})


def test_recent_clicks_needs_a_sequence_and_another_feature(trained):
    config, vocabularies = trained.config, trained.vocabularies
    history = config.history_feature.name
    others = [n for n in trained.result.user_names if n != history]
    for names in (others, [history]):
        with pytest.raises(ValueError, match=r"recent_clicks 5 needs a sequence feature and "
                                             r"another feature in \["):
            FeatureTower(config.to_dict(), vocabularies, names, 4, (8,), 4, recent_clicks=5)
    with pytest.raises(ValueError, match=r"the config holds recent_clicks choices \(0, 5\): "
                                         r"say which one to build"):
        tt_train.build_model(config, vocabularies, TRAINED_CONFIG)


def test_recent_clicks_choice_needs_a_gain_above_min_delta(trained, monkeypatch):
    """Fake validation values per choice (the loop, not the models, is under test)."""
    def choose(values, choices):
        calls = iter(values)

        def fake_fit_epochs(model, train_epoch, validate, config):
            return {"learning_curve": [], "early_stopping": {"best_value": next(calls)}}

        monkeypatch.setattr(tt_train.training, "fit_epochs", fake_fit_epochs)
        result = tt_train.fit(trained.config, trained.arrays, trained.catalogue,
                              trained.vocabularies, dataclasses.replace(
                                  TRAINED_CONFIG, recent_clicks=choices, min_delta=0.01))
        return result.stats["recent_clicks"]["chosen"], result.config.recent_clicks

    assert choose([0.50, 0.509], (0, 5)) == (0, (0,))    # +0.009: not above min_delta
    assert choose([0.50, 0.511], (0, 5)) == (5, (5,))    # +0.011: a gain
    assert choose([0.50, 0.60, 0.605], (0, 5, 3)) == (5, (5,))
    assert choose([0.60, 0.50], (5, 0)) == (5, (5,))     # the first listed is kept on a loss
    # A user tower of the history alone has nothing to choose: one run, choice 0.
    history = [f for f in data.user_features(trained.config)
               if f.name == trained.config.history_feature.name]
    monkeypatch.setattr(tt_train.data, "user_features", lambda *args: history)
    assert choose([0.50], (0, 5)) == (0, (0,))


def test_future_targets_by_hand():
    # u1 clicks rows 11 (t=1), 12 (t=2), 10 (t=3); u2 rows 20 (t=1), 21 (t=5).
    users = np.array([b"u1", b"u2", b"u1", b"u1", b"u2"], object)
    times = np.array([3, 1, 1, 2, 5])
    rows = np.array([10, 20, 11, 12, 21])
    got = tt_train.future_targets(users, times, rows, 3)
    assert got.tolist() == [[10, -1, -1], [20, 21, -1], [11, 12, 10], [12, 10, -1],
                            [21, -1, -1]]
    assert tt_train.future_targets(users, times, rows, 1).tolist() == [[r] for r in rows]
    # Equal times keep the input order.
    tied = tt_train.future_targets(np.array([b"u", b"u"], object), np.array([7, 7]),
                                   np.array([4, 5]), 2)
    assert tied.tolist() == [[4, 5], [5, -1]]


class _FixedDraws:
    """An rng whose random(n) returns the given values (and counts the calls)."""

    def __init__(self, values):
        self.values, self.calls = np.asarray(values, np.float64), 0

    def random(self, n):
        self.calls += 1
        return self.values[:n]


def test_sample_targets_uniform_over_the_valid_columns_by_hand():
    future = np.array([[10, -1, -1], [11, 12, 10], [12, 10, -1]])
    # u * count, floored: row 1 (3 valid) 0.0 -> col 0, 0.5 -> 1, 0.99 -> 2;
    # row 2 (2 valid) 0.6 -> 1; row 0 (1 valid) any -> 0.
    draws = _FixedDraws([0.99, 0.0, 0.6])
    assert tt_train.sample_targets(draws, future, np.array([0, 1, 2])).tolist() == [10, 11, 10]
    draws = _FixedDraws([0.5, 0.99])
    assert tt_train.sample_targets(draws, future, np.array([1, 1])).tolist() == [12, 10]
    # One column: the own targets, and the rng is not drawn from (same runs as before).
    draws = _FixedDraws([0.5])
    assert tt_train.sample_targets(draws, future[:, :1], np.array([2, 0])).tolist() == [12, 10]
    assert draws.calls == 0


def test_future_targets_feed_the_batches_positives(trained, monkeypatch):
    seen = {"sampled": [], "positives": []}
    real_sample, real_candidates = tt_train.sample_targets, tt_train.batch_candidates

    def sample(rng, future, batch):
        out = real_sample(rng, future, batch)
        seen["sampled"].append(out)
        seen["future"] = future
        return out

    def candidates(rng, positives, *args):
        seen["positives"].append(positives)
        return real_candidates(rng, positives, *args)

    monkeypatch.setattr(tt_train, "sample_targets", sample)
    monkeypatch.setattr(tt_train, "batch_candidates", candidates)
    tt_train.fit(trained.config, trained.arrays, trained.catalogue, trained.vocabularies,
                 dataclasses.replace(TRAINED_CONFIG, future_targets=3, max_epochs=1,
                                     recent_clicks=(0,)))
    assert seen["future"].shape[1] == 3 and (seen["future"][:, 1] >= 0).any()
    assert len(seen["positives"]) == len(seen["sampled"]) > 0
    for got, want in zip(seen["positives"], seen["sampled"]):
        np.testing.assert_array_equal(got, want)
    # Some example's positive was a later click of its user, not its own.
    future = seen["future"]
    assert not np.array_equal(np.sort(np.concatenate(seen["sampled"])), np.sort(future[:, 0]))


def test_future_targets_config():
    assert TwoTowerConfig().future_targets == 1
    assert TwoTowerConfig.from_hparams({"future_targets": 5}).future_targets == 5
    with pytest.raises(TwoTowerConfigError, match="future_targets must be >= 1, got 0"):
        TwoTowerConfig(future_targets=0)
    for bad in (2.5, 2.0, True):
        with pytest.raises(TwoTowerConfigError, match="future_targets must be an integer >= 1"):
            TwoTowerConfig(future_targets=bad)


def test_recent_clicks_config():
    assert TwoTowerConfig().recent_clicks == (0, 5)
    assert TwoTowerConfig.from_hparams({"recent_clicks": 3}).recent_clicks == (3,)
    assert TwoTowerConfig.from_hparams({"recent_clicks": [0, 10]}).recent_clicks == (0, 10)
    for bad in ([], [-1], [2, 2], [1.5], True, "5"):
        with pytest.raises(TwoTowerConfigError) as info:
            TwoTowerConfig.from_hparams({"recent_clicks": bad})
        assert str(info.value) == ("recent_clicks must be distinct integers >= 0 (one or a list "
                                   f"to choose from), got {bad!r}")


def test_shared_item_table_is_one_table_in_both_towers(trained):
    config, vocabularies = trained.config, trained.vocabularies
    item_id = config.item_id_feature.name
    history = config.history_feature.name
    cfg = dataclasses.replace(TRAINED_CONFIG, recent_clicks=(0,))
    model, user_names, item_names = tt_train.build_model(config, vocabularies, cfg, 0, True)
    alone, _, _ = tt_train.build_model(config, vocabularies, cfg, 0, False)
    for m in (model, alone):
        m.user_tower(training.tensors(trained.arrays, user_names, np.arange(2)))
        m.item_tower(training.tensors(trained.catalogue.features, item_names, np.arange(2)))
    table = model.item_tower.shared_tables[item_id]
    assert model.user_tower.sequence_tables[history] is table
    # Named under the tower that called it first (the user tower, as in a
    # cluster's build and its single-process copy).
    assert table.embeddings.name.startswith(f"user_tower/{item_id}_shared_embedding/")
    assert model.item_tower.shared_names == [item_id] and model.user_tower.shared_names == []
    # One item-id table fewer than the unshared model, nothing else different.
    rows = model.item_tower.ids.num_rows(item_id)
    n_params = lambda m: sum(int(np.prod(v.shape)) for v in m.trainable_variables)  # noqa: E731
    assert n_params(alone) - n_params(model) == rows * TRAINED_CONFIG.embedding_dim
    # The same vector for an item as a history click and as a candidate.
    some_item = str(trained.catalogue.ids[3]).encode()
    ids = FeatureIds(config.to_dict(), vocabularies, [history])(
        {history: tf.constant([[some_item, b""]])})[history]
    item_ids = FeatureIds(config.to_dict(), vocabularies, [item_id])(
        {item_id: tf.constant([some_item])})[item_id]
    assert int(ids[0, 0]) == int(item_ids[0]) > 0
    np.testing.assert_array_equal(model.user_tower.sequence_tables[history](ids)[0, 0].numpy(),
                                  table(item_ids)[0].numpy())
    with pytest.raises(ValueError, match=r"shared table for 'item_id' is 3 x 8; 'item_id' needs"):
        FeatureTower(config.to_dict(), vocabularies, item_names, 8, (8,), 4,
                     shared_tables={item_id: tf.keras.layers.Embedding(3, 8)})


def test_share_choice_is_the_best_validation_over_the_grid(trained, monkeypatch):
    """Fake validation values per pair, in the order tried: share outer, recent inner."""
    def choose(values, **choices):
        calls = iter(values)
        built = []

        def fake_fit_epochs(model, train_epoch, validate, config):
            built.append(bool(model.item_tower.shared_names))
            return {"learning_curve": [], "early_stopping": {"best_value": next(calls)}}

        monkeypatch.setattr(tt_train.training, "fit_epochs", fake_fit_epochs)
        result = tt_train.fit(trained.config, trained.arrays, trained.catalogue,
                              trained.vocabularies,
                              dataclasses.replace(TRAINED_CONFIG, min_delta=0.01, **choices))
        return result, built

    result, built = choose([0.50, 0.52, 0.55, 0.51], share_item_embedding=(False, True),
                           recent_clicks=(0, 5))
    assert built == [False, False, True, True]
    assert result.config.share_item_embedding == (True,) and result.config.recent_clicks == (0,)
    assert result.stats["choices"] == {
        "chosen": {"recent_clicks": 0, "share_item_embedding": True},
        "val_hr@50": {"recent_clicks=0,share_item_embedding=false": 0.50,
                      "recent_clicks=5,share_item_embedding=false": 0.52,
                      "recent_clicks=0,share_item_embedding=true": 0.55,
                      "recent_clicks=5,share_item_embedding=true": 0.51}}
    assert result.stats["recent_clicks"] == {"chosen": 0, "val_hr@50": {"0": 0.55, "5": 0.51}}
    assert result.stats["share_item_embedding"] == {"chosen": True,
                                                    "val_hr@50": {"false": 0.50, "true": 0.55}}
    # +0.009 over the kept pair is not a gain: the unshared model stays.
    result, _ = choose([0.50, 0.509], share_item_embedding=(False, True), recent_clicks=(0,))
    assert result.config.share_item_embedding == (False,)
    # Without an item-tower feature the history is `of`, there is nothing to share.
    monkeypatch.setattr(tt_train, "shareable_item_features", lambda *args: [])
    result, built = choose([0.50], share_item_embedding=(False, True), recent_clicks=(0,))
    assert built == [False] and result.config.share_item_embedding == (False,)


def test_shared_tower_exports_and_serves_the_trained_vectors(trained, tmp_path):
    shared = tt_train.fit(trained.config, trained.arrays, trained.catalogue, trained.vocabularies,
                          dataclasses.replace(TRAINED_CONFIG, recent_clicks=(0,),
                                              share_item_embedding=True, max_epochs=3))
    assert shared.config.share_item_embedding == (True,)
    _assert_export_serves_the_training_vectors(shared, trained, str(tmp_path))


def test_share_item_embedding_config():
    assert TwoTowerConfig().share_item_embedding == (False, True)
    assert TwoTowerConfig.from_hparams({"share_item_embedding": True}).share_item_embedding \
        == (True,)
    assert TwoTowerConfig.from_hparams(
        {"share_item_embedding": [True, False]}).share_item_embedding == (True, False)
    for bad in ("yes", [], [True, True], [1]):
        with pytest.raises(TwoTowerConfigError, match="share_item_embedding must be true, false"):
            TwoTowerConfig.from_hparams({"share_item_embedding": bad})
