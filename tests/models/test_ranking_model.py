"""Ranking models end to end on a tiny generated example set.

Each model is trained through the public `train()` entry, exported, reloaded
and compared with the in-memory model; the two serving signatures must agree.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

from feature_contract import feature_config as fc
from models import inputs
from models.layers.feature_embedding import load_vocabularies
from models.ranking import config as rc
from models.ranking import metrics as ranking_metrics
from models.ranking import complexity, export, synthetic_examples, train
from models.ranking.model import RankingModel, esmm_follow_logit

CONFIG_PATH = fc.builtin_config_path("movielens")
SMALL = {"embedding_dim": 4, "hidden_units": (8,), "max_epochs": 1, "batch_size": 128}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranking")
    written = synthetic_examples.write_ranking_examples(
        str(out), fc.load(CONFIG_PATH), num_train=1500, num_eval=500, seed=0)
    return {**written, "dir": str(out)}


def _eval_batch(data, n=64):
    features = fc.load(CONFIG_PATH)
    files = tf.io.gfile.glob(data["eval_pattern"])
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(n)]


def test_fixture_follows_the_readme_layout(data):
    assert os.path.exists(os.path.join(data["vocab_dir"], "user_id.txt"))
    words = inputs.read_vocab(data["vocab_dir"], "genre")
    assert 0 < len(words) <= fc.load(CONFIG_PATH).feature("genre").vocab_size
    assert 0.1 < data["click_rate"] < 0.9 and 0.0 < data["follow_rate"] < data["click_rate"]


def _built_model(data, name, hparams, n=16):
    features = fc.load(CONFIG_PATH)
    config = rc.make_config(name, hparams)
    parsed = inputs.parse_examples(tf.constant(_eval_batch(data, n)), features, fc.RANKING)
    model = train.build_model(config, features, load_vocabularies(features, data["vocab_dir"]),
                              example_batch=parsed)
    # Move weights away from their initial values so a reload bug would show.
    for v in model.trainable_variables:
        v.assign(v + tf.random.normal(tf.shape(v), stddev=0.1, seed=1))
    return model, parsed


def test_public_train_entry_trains_evaluates_and_exports(data, tmp_path):
    export_dir = str(tmp_path / "export")
    result = train.train("multitask_nfwfm", CONFIG_PATH, data["train_pattern"],
                         data["eval_pattern"], data["vocab_dir"], SMALL, export_dir)
    # Round trip: the export's scores on the 500 eval examples give the reported metrics.
    files = tf.io.gfile.glob(data["eval_pattern"])
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    parsed = [tf.train.Example.FromString(r).features.feature for r in records]
    labels = {task: np.array([f[task].int64_list.value[0] if f[task].int64_list.value
                              else f[task].float_list.value[0] for f in parsed], np.float64)
              for task in fc.LABEL_KEYS}
    users = [f[fc.USER_KEY].bytes_list.value[0] for f in parsed]
    scored = tf.saved_model.load(export_dir).signatures["serving_default"](
        examples=tf.constant(records))
    expected = ranking_metrics.evaluate(labels, {t: scored[t].numpy() for t in fc.LABEL_KEYS},
                                        users)
    for task in ("click", "follow"):
        assert result[task]["examples"] == 500
        for key in ("auc", "logloss", "gauc", "calibration"):
            assert result[task][key] == pytest.approx(expected[task][key], abs=1e-4), (task, key)
    # Params are the served weights: every variable the serving signature reads (the
    # training-only log-variances of the uncertainty loss are not exported).
    exported = tf.saved_model.load(export_dir)
    served = exported.signatures["serving_default"].variables
    assert result["params"] == sum(int(np.prod(v.shape)) for v in served)
    assert result["flops_per_example"] == complexity.flops_per_example(
        rc.make_config("multitask_nfwfm", SMALL), fc.load(CONFIG_PATH))
    # The uncertainty weights start at sigma 1 and were trained.
    assert set(result["sigma"]) == {"click", "follow"}
    assert all(abs(s - 1.0) > 1e-6 for s in result["sigma"].values()), result["sigma"]
    assert result["export_dir"] == export_dir
    # Timestamps 1_700_000_000 + j, j < 1500: the last 150 (j >= 1349.1) validate.
    assert result["validation"] == {"cutoff": pytest.approx(1_700_000_000 + 1499 - 149.9),
                                    "fit_examples": 1350, "validation_examples": 150}
    (epoch,) = result["learning_curve"]
    assert epoch["val_monitor"] == pytest.approx(
        (epoch["val_click_auc"] + epoch["val_follow_auc"]) / 2)
    assert result["early_stopping"]["monitor"] == "mean_click_follow_auc"
    assert result["early_stopping"]["epochs_run"] == 1
    assert result["train_logs"]["loss"] == epoch["train_loss"]
    served = export.load(export_dir).signatures["serving_default"](
        examples=tf.constant(_eval_batch(data, 8)))
    assert set(served) == {"click", "follow"} and served["click"].shape == (8,)


@pytest.mark.parametrize("name,hparams", [
    ("lr", {}),
    ("nfm", SMALL),
    ("nfwfm", SMALL),
    ("multitask_nfwfm", SMALL),
    ("multitask_nfwfm", {**SMALL, "task_towers": True, "interaction_batch_norm": True}),
    ("multitask_nfwfm", {**SMALL, "follow_mode": "esmm", "task_towers": True}),
    ("deepfm", SMALL),
    ("dcn", SMALL),
    # Ablation options: no first-order tables (both scoring paths), sqrtn / sum pooling.
    ("nfwfm", {**SMALL, "use_first_order": False, "pooling": "sqrtn"}),
    ("nfwfm", {**SMALL, "pair_weights": "vector"}),
    ("nfm", {**SMALL, "use_first_order": False, "pooling": "sum"}),
    ("deepfm", {**SMALL, "use_first_order": False}),
])
def test_export_round_trip_and_signatures_agree(data, tmp_path, name, hparams):
    model, _ = _built_model(data, name, hparams)
    tasks = model.tasks
    loaded = export.load(export.export(model, str(tmp_path / "export")))
    serialized = _eval_batch(data, 32)
    features = fc.load(CONFIG_PATH)
    parsed = inputs.parse_examples(tf.constant(serialized), features, fc.RANKING)

    # Round trip: serving_default of the reloaded model == the in-memory model.
    served = loaded.signatures["serving_default"](examples=tf.constant(serialized))
    expected = model(parsed, training=False)
    assert set(served) == set(tasks)
    for task in tasks:
        assert served[task].shape == (32,)
        np.testing.assert_allclose(served[task].numpy(), expected[task].numpy(),
                                   rtol=1e-5, atol=1e-6)

    # score_candidates: one user's and context features (batch 1), 32 candidate items ...
    item_names = {f.name for f in features.field_features(fc.ITEM)}
    raw = {f.name: (parsed[f.name] if f.name in item_names else parsed[f.name][:1])
           for f in features.features}
    scored = loaded.signatures["score_candidates"](**raw)
    # ... equals serving_default on the same candidates as full examples of that user.
    same_user = [_with_user_of(serialized[0], s, item_names) for s in serialized]
    served_same = loaded.signatures["serving_default"](examples=tf.constant(same_user))
    for task in tasks:
        assert scored[task].shape == (32,)
        np.testing.assert_allclose(scored[task].numpy(), served_same[task].numpy(),
                                   rtol=1e-5, atol=1e-6)
    assert not np.allclose(served_same[tasks[0]].numpy(), served_same[tasks[0]].numpy()[0])


def test_esmm_logit_is_the_logit_of_the_product_by_hand():
    x = tf.constant([0.0, np.log(3.0), 30.0, -100.0])
    y = tf.constant([0.0, 0.0, 30.0, -100.0])
    got = esmm_follow_logit(x, y).numpy()
    # sigmoid(0)^2 = 1/4 -> log(1/3); 0.75 * 0.5 = 0.375 -> log(0.375 / 0.625);
    # both near 1 -> -log(2 e^-30 + e^-60) ~ 30 - log 2; both near 0 -> -200.
    np.testing.assert_allclose(got, [np.log(1 / 3), np.log(0.6), 30 - np.log(2), -200.0],
                               rtol=1e-5)


def test_esmm_follow_output_is_click_times_follow_given_click(data):
    model, parsed = _built_model(data, "multitask_nfwfm", {**SMALL, "follow_mode": "esmm"})
    ids = model.feature_ids({n: parsed[n] for n in model.feature_names})
    first_order, rep = model.body(ids, training=False)
    heads = {t: tf.sigmoid(v).numpy()
             for t, v in model.tower_logits(first_order, rep, training=False).items()}
    out = model(parsed, training=False)
    np.testing.assert_allclose(out["click"].numpy(), heads["click"], rtol=1e-6)
    np.testing.assert_allclose(out["follow"].numpy(), heads["click"] * heads["follow"],
                               rtol=1e-5)
    assert np.all(out["follow"].numpy() <= out["click"].numpy())
    # Trains on every impression with the follow label against p(click) * p(follow | click).
    labels = {k: parsed[k] for k in fc.LABEL_KEYS}
    loss = model.fit(tf.data.Dataset.from_tensors((parsed, labels)).repeat(3),
                     verbose=0).history["follow_loss"][0]
    assert np.isfinite(loss) and loss > 0


def _with_user_of(user_example: bytes, example: bytes, item_names: set[str]) -> bytes:
    source = tf.train.Example.FromString(user_example)
    target = tf.train.Example.FromString(example)
    for key, value in source.features.feature.items():
        if key not in item_names:
            target.features.feature[key].CopyFrom(value)
    return target.SerializeToString()


def test_vocabularies_live_in_the_saved_model_and_config_round_trips(data, tmp_path):
    model, parsed = _built_model(data, "nfwfm", SMALL)
    export_dir = str(tmp_path / "m")
    export.export(model, export_dir)
    files = [f for _, _, names in os.walk(export_dir) for f in names]
    assert not any(f.endswith(".txt") for f in files), files
    # Ids come from the embedded vocabularies: a known genre maps to a non-zero id.
    genre = inputs.read_vocab(data["vocab_dir"], "genre")[0]
    ids = model.feature_ids({**{n: parsed[n][:1] for n in model.feature_names},
                             "genre": tf.constant([genre])})
    assert int(ids["genre"][0]) == 1
    # Keras config round trip rebuilds an equivalent (same-shaped) model.
    clone = RankingModel.from_config(model.get_config())
    clone.build_from_example(parsed)
    assert clone.count_params() == model.count_params()
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(parsed)["click"].numpy(), model(parsed)["click"].numpy(),
                               rtol=1e-6)


def test_score_candidates_rejects_a_user_batch_of_two(data, tmp_path):
    features = fc.load(CONFIG_PATH)
    model, _ = _built_model(data, "lr", {})
    parsed = inputs.parse_examples(tf.constant(_eval_batch(data, 4)), features, fc.RANKING)
    loaded = export.load(export.export(model, str(tmp_path / "m")))
    raw = {f.name: parsed[f.name] for f in features.features}  # user batch 4, items 4
    raw["user_id"] = parsed["user_id"][:2]
    with pytest.raises(tf.errors.InvalidArgumentError, match="user_id must have batch 1"):
        loaded.signatures["score_candidates"](**raw)


@pytest.mark.parametrize("name,hparams", [
    ("nfwfm", {}),
    ("nfm", {"embedding_dim": 16}),
])
def test_short_training_beats_a_constant_predictor(data, name, hparams):
    hp = {**SMALL, "embedding_dim": 8, "max_epochs": 5, "batch_size": 64, "learning_rate": 0.01,
          **hparams}
    result = train.train(name, CONFIG_PATH, data["train_pattern"], data["eval_pattern"],
                         data["vocab_dir"], hp, None)
    # A constant predictor has AUC 0.5; the fixture's signal is learnable.
    assert result["click"]["auc"] > 0.62, result["click"]


def test_train_reports_missing_files(data):
    with pytest.raises(FileNotFoundError, match="no TFRecord files"):
        train.train("nfwfm", CONFIG_PATH, "/nonexistent/*.gz", data["eval_pattern"],
                    data["vocab_dir"], SMALL, None)


def test_interaction_batch_norm_learns_moving_statistics_in_training(data):
    model, parsed = _built_model(data, "nfwfm", {**SMALL, "interaction_batch_norm": True}, n=64)
    bn = model.interaction_bn
    before = bn.moving_variance.numpy().copy()
    np.testing.assert_allclose(before, 1.0)
    labels = {k: parsed[k] for k in fc.LABEL_KEYS}
    model.fit(tf.data.Dataset.from_tensors((parsed, labels)).repeat(5), verbose=0)
    # Our train_step runs the layer with training=True, so the statistics move
    # towards the interaction's (tiny at init) variance and inference uses them.
    assert np.all(bn.moving_variance.numpy() < before)
    assert not np.allclose(bn.moving_mean.numpy(), 0.0)


def test_without_first_order_the_model_has_no_linear_tables(data):
    with_first, _ = _built_model(data, "nfwfm", SMALL)
    without, _ = _built_model(data, "nfwfm", {**SMALL, "use_first_order": False})
    assert with_first.embedding.linear_tables and not without.embedding.linear_tables
    # Each shared table drops exactly its rows x 1 first-order weights.
    rows = sum(t.shape[0] for t in with_first.embedding.tables.values())
    assert with_first.count_params() - without.count_params() == rows
    with pytest.raises(rc.RankingConfigError,
                       match="use_first_order False needs a model with a first-order term"):
        rc.make_config(rc.DCN, {"use_first_order": False})


def test_lookup_penalty_by_hand_and_in_the_training_loss(data):
    # No interaction dropout, so the training forward pass equals inference's.
    model, parsed = _built_model(data, "nfwfm", {**SMALL, "lookup_l2": 0.5,
                                                 "use_interaction_dropout": False}, n=8)
    # Two examples, two features of width 2: mean over the batch of sum ||v||^2
    # = ((1 + 4 + 1) + 9) / 2 = 7.5, times lookup_l2 0.5.
    embeddings = tf.constant([[[1.0, 2.0], [0.0, 1.0]], [[3.0, 0.0], [0.0, 0.0]]])
    assert float(model.lookup_penalty((embeddings, tf.zeros([2, 2])))) == pytest.approx(3.75)
    assert float(model.lookup_penalty(embeddings)) == pytest.approx(3.75)
    # train_step's loss is the task loss plus the penalty of the batch's own vectors.
    labels = {k: parsed[k] for k in fc.LABEL_KEYS}
    ids = model.feature_ids({n: parsed[n] for n in model.feature_names})
    penalty = float(model.lookup_penalty(model.embedding(ids)))
    task = float(model.task_loss(labels, model.logits(parsed, training=False))[0])
    assert penalty > 0.01
    assert float(model.train_step((parsed, labels))["loss"]) == pytest.approx(
        task + penalty, rel=1e-5)
    with pytest.raises(rc.RankingConfigError, match="lookup_l2 must be finite and >= 0"):
        rc.make_config(rc.NFWFM, {"lookup_l2": -1.0})


def test_learning_rate_decays_per_epoch_across_fit_calls(data):
    model, parsed = _built_model(data, "nfwfm", {**SMALL, "learning_rate": 0.01,
                                                 "learning_rate_decay": 0.5}, n=16)
    labels = {k: parsed[k] for k in fc.LABEL_KEYS}
    ds = tf.data.Dataset.from_tensors((parsed, labels))
    # Epoch k trains at 0.01 * 0.5^k, whether epochs come one per fit call ...
    seen = []
    for _ in range(3):
        model.fit(ds, epochs=1, verbose=0)
        seen.append(float(model.optimizer.learning_rate))
    assert seen == pytest.approx([0.01, 0.005, 0.0025])
    # ... or several in one call (continuing the count: epochs 3 and 4).
    model.fit(ds, epochs=2, verbose=0)
    assert model.epochs_trained == 5
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01 * 0.5 ** 4)
    constant, _ = _built_model(data, "nfwfm", {**SMALL, "learning_rate": 0.01}, n=16)
    constant.fit(ds, epochs=2, verbose=0)
    assert float(constant.optimizer.learning_rate) == pytest.approx(0.01)
    with pytest.raises(rc.RankingConfigError, match=r"learning_rate_decay must be in \(0, 1\]"):
        rc.make_config(rc.NFWFM, {"learning_rate_decay": 0.0})
