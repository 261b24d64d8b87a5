"""Trainers: real models from real example artifacts, in TFX's Model layout."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

from components.trainer import parse_hparams, read_metrics
from models.ranking import metrics as ranking_metrics


class ParseHparamsTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ("empty", "", {}),
        ("object", '{"max_epochs": 2, "hidden_units": [8]}',
         {"max_epochs": 2, "hidden_units": [8]}),
    )
    def test_ok(self, text, expected):
        self.assertEqual(parse_hparams(text), expected)

    @parameterized.named_parameters(
        ("not_json", "max_epochs=2"),
        ("list", "[1, 2]"),
        ("number", "3"),
    )
    def test_rejected_naming_the_value(self, text):
        with self.assertRaisesRegex(ValueError, "JSON object"):
            parse_hparams(text)


def _label(record: bytes, name: str) -> float:
    feature = tf.train.Example.FromString(record).features.feature[name]
    values = list(feature.int64_list.value) or list(feature.float_list.value)
    return float(values[0]) if values else 0.0


def test_ranking_trainer_writes_serving_model_and_metrics(ranking_model, sessionized):
    model, metrics = ranking_model
    serving = os.path.join(model.uri, "Format-Serving")
    assert os.path.exists(os.path.join(serving, "saved_model.pb"))
    content = read_metrics(metrics.uri)
    assert content["model_name"] == "nfwfm"
    auc = content["metrics"]["click"]["auc"]
    # Round trip: the exported model's scores on Split-eval give the recorded AUC.
    files = tf.io.gfile.glob(os.path.join(sessionized["ranking_examples"].uri, "Split-eval",
                                          "*.gz"))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    labels = [_label(r, "click") for r in records]
    serve = tf.saved_model.load(serving).signatures["serving_default"]
    scores = np.concatenate([serve(examples=tf.constant(records[i:i + 512]))["click"].numpy()
                             for i in range(0, len(records), 512)])
    assert len(records) == content["metrics"]["click"]["examples"]
    assert auc == pytest.approx(ranking_metrics.auc(labels, scores), abs=1e-4)
    # The MLMD property is the same figure as the file.
    assert abs(model.get_float_custom_property("click_auc") - auc) < 1e-12
    click = content["metrics"]["click"]
    assert metrics.get_int_custom_property("click_eval_positives") == click["positives"] > 0
    assert metrics.get_int_custom_property("click_eval_examples") == click["examples"]
    # max_epochs 2: two epochs, the second best, not "stopped early" (the cap stopped it).
    stopping = content["metrics"]["early_stopping"]
    assert (stopping["epochs_run"], stopping["best_epoch"], stopping["stopped_early"]) == (
        2, 2, False)
    assert (metrics.get_int_custom_property("best_epoch"),
            metrics.get_int_custom_property("epochs_run"),
            metrics.get_int_custom_property("stopped_early")) == (2, 2, 0)
    assert metrics.get_string_custom_property("early_stopping_monitor") == stopping["monitor"]
    assert [row["epoch"] for row in content["metrics"]["learning_curve"]] == [1, 2]
    # Two learning rates tried on validation; MLMD names the one the model was trained at.
    tuning = content["metrics"]["learning_rate_tuning"]
    (chosen,) = [row for row in tuning if row["chosen"]]
    assert [row["learning_rate"] for row in tuning] == [1e-9, 0.01]
    assert chosen["learning_rate"] == 0.01  # the shared model is a trained one
    assert chosen["validation"] == max(row["validation"] for row in tuning) == \
        stopping["best_value"]
    assert metrics.get_float_custom_property("learning_rate") == chosen["learning_rate"] == \
        content["metrics"]["config"]["learning_rate"]
    assert metrics.get_int_custom_property("learning_rates_tried") == 2
    # The exported model scores real examples: one probability per example.
    files = tf.io.gfile.glob(os.path.join(sessionized["ranking_examples"].uri, "Split-eval", "*"))
    batch = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(5)]
    out = tf.saved_model.load(serving).signatures["serving_default"](examples=tf.constant(batch))
    click = out["click"].numpy()
    assert click.shape == (5,) and np.all((click >= 0) & (click <= 1))


def test_recall_trainer_splits_tower_and_embeddings(recall_model):
    model, embeddings, metrics = recall_model
    assert os.path.exists(os.path.join(model.uri, "Format-Serving", "saved_model.pb"))
    assert not os.path.exists(os.path.join(model.uri, "_export"))
    ids = open(os.path.join(embeddings.uri, "ids.txt")).read().split()
    vectors = np.load(os.path.join(embeddings.uri, "embeddings.npy"))
    with open(os.path.join(embeddings.uri, "metadata.json")) as f:
        meta = json.load(f)
    assert vectors.shape == (len(ids), meta["dim"]) == (len(ids), 8)
    content = read_metrics(metrics.uri)
    assert content["model_name"] == "two_tower"
    assert "user_tower" not in content["metrics"]  # export paths are not metrics
    assert metrics.get_float_custom_property("recall_at_50") == content["metrics"]["recall@50"]
    assert (metrics.get_int_custom_property("best_epoch"),
            metrics.get_int_custom_property("epochs_run")) == (1, 1)
    assert metrics.get_string_custom_property("early_stopping_monitor") == \
        content["metrics"]["early_stopping"]["monitor"]
