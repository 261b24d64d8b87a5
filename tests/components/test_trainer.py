"""Trainers: real models from real example artifacts, in TFX's Model layout."""

import json
import os

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from components.trainer import parse_hparams, read_metrics


class ParseHparamsTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ("empty", "", {}),
        ("object", '{"epochs": 2, "hidden_units": [8]}', {"epochs": 2, "hidden_units": [8]}),
    )
    def test_ok(self, text, expected):
        self.assertEqual(parse_hparams(text), expected)

    @parameterized.named_parameters(
        ("not_json", "epochs=2"),
        ("list", "[1, 2]"),
        ("number", "3"),
    )
    def test_rejected_naming_the_value(self, text):
        with self.assertRaisesRegex(ValueError, "JSON object"):
            parse_hparams(text)


def test_ranking_trainer_writes_serving_model_and_metrics(ranking_model, sessionized):
    model, metrics = ranking_model
    serving = os.path.join(model.uri, "Format-Serving")
    assert os.path.exists(os.path.join(serving, "saved_model.pb"))
    content = read_metrics(metrics.uri)
    assert content["model_name"] == "nfwfm"
    auc = content["metrics"]["click"]["auc"]
    assert 0.0 <= auc <= 1.0
    # The MLMD property is the same figure as the file.
    assert abs(model.get_float_custom_property("click_auc") - auc) < 1e-12
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
