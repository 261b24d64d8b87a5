"""ServingValidator: loads into the model server, sends a real Predict, blesses."""

import os

import numpy as np
from absl.testing import parameterized
from tfx.types import standard_artifacts

from components.artifacts import DataAnomalies
from components.serving_validator import (RANKING, USER_TOWER, ServingValidator, check_outputs,
                                          read_serialized_examples)
from tests.components.helpers import executor_fn, new_artifact


class CheckOutputsTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ("ok_probabilities", {"click": np.array([0.1, 0.9])}, 2, RANKING, []),
        ("ok_embeddings", {"user_embedding": np.array([[3.0, -2.0], [0.0, 1.0]])}, 2,
         USER_TOWER, []),
        ("no_outputs", {}, 2, RANKING, ["the response has no outputs"]),
        ("wrong_rows", {"click": np.array([0.5])}, 2, RANKING,
         ["output 'click' has shape [1], want 2 rows"]),
        ("nan", {"click": np.array([0.5, np.nan])}, 2, RANKING, ["output 'click' has NaN or inf"]),
        ("not_probability", {"click": np.array([0.5, 1.5])}, 2, RANKING,
         ["output 'click' is not a probability: range [0.5, 1.5]"]),
    )
    def test_problems(self, outputs, rows, kind, expected):
        self.assertEqual(check_outputs(outputs, rows, kind), expected)


def _run(model, examples, vocabulary, root, name, kind, data_anomalies=None):
    blessing = new_artifact(standard_artifacts.InfraBlessing, root, f"blessing_{name}")
    executor_fn(ServingValidator)(model=model, examples=examples, vocabulary=vocabulary,
                                  blessing=blessing, model_name=name, model_kind=kind,
                                  num_examples=8, data_anomalies=data_anomalies)
    return blessing


def _anomalies(root, blessed, reason=""):
    anomalies = new_artifact(DataAnomalies, root, f"anomalies_{blessed}")
    anomalies.set_int_custom_property("blessed", blessed)
    anomalies.set_string_custom_property("reason", reason)
    return anomalies


def test_blocking_data_anomalies_refuse_the_model(ranking_model, sessionized, tmp_path):
    blocked = _anomalies(str(tmp_path), 0, "train.network: drift l-infinity 0.500 > 0.1")
    blessing = _run(ranking_model[0], sessionized["ranking_examples"], sessionized["vocabulary"],
                    str(tmp_path), "ranking", RANKING, data_anomalies=blocked)
    assert blessing.get_int_custom_property("blessed") == 0
    assert blessing.get_string_custom_property("reason") == (
        "data checks block the push: train.network: drift l-infinity 0.500 > 0.1")
    assert blessing.get_int_custom_property("request_examples") == 0
    allowed = _run(ranking_model[0], sessionized["ranking_examples"], sessionized["vocabulary"],
                   str(tmp_path), "ranking_ok", RANKING,
                   data_anomalies=_anomalies(str(tmp_path), 1))
    assert allowed.get_int_custom_property("blessed") == 1
    assert allowed.get_int_custom_property("request_examples") == 8


def test_ranking_model_is_blessed(ranking_model, sessionized, tmp_path):
    blessing = _run(ranking_model[0], sessionized["ranking_examples"], sessionized["vocabulary"],
                    str(tmp_path), "ranking", RANKING)
    assert blessing.get_int_custom_property("blessed") == 1, \
        blessing.get_string_custom_property("reason")
    assert blessing.get_int_custom_property("request_examples") == 8
    assert os.path.exists(os.path.join(blessing.uri, "INFRA_BLESSED"))


def test_user_tower_is_blessed(recall_model, sessionized, tmp_path):
    blessing = _run(recall_model[0], sessionized["retrieval_examples"], sessionized["vocabulary"],
                    str(tmp_path), "user_tower_two_tower", USER_TOWER)
    assert blessing.get_int_custom_property("blessed") == 1, \
        blessing.get_string_custom_property("reason")


def test_unloadable_model_is_not_blessed(sessionized, tmp_path):
    broken = new_artifact(standard_artifacts.Model, str(tmp_path), "broken")
    os.makedirs(os.path.join(broken.uri, "Format-Serving"))
    with open(os.path.join(broken.uri, "Format-Serving", "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    blessing = _run(broken, sessionized["ranking_examples"], sessionized["vocabulary"],
                    str(tmp_path), "ranking", RANKING)
    assert blessing.get_int_custom_property("blessed") == 0
    assert "serving failed" in blessing.get_string_custom_property("reason")
    assert os.path.exists(os.path.join(blessing.uri, "INFRA_NOT_BLESSED"))


def test_wrong_request_kind_is_not_blessed(ranking_model, sessionized, tmp_path):
    # A ranking model sent a user-tower request: the server rejects the inputs.
    blessing = _run(ranking_model[0], sessionized["retrieval_examples"], sessionized["vocabulary"],
                    str(tmp_path), "ranking", USER_TOWER)
    assert blessing.get_int_custom_property("blessed") == 0
    assert "input" in blessing.get_string_custom_property("reason")


def test_read_serialized_examples_caps_the_batch(sessionized):
    got = read_serialized_examples(sessionized["ranking_examples"].uri, "eval", 3)
    assert got.shape == (3,) and all(isinstance(x, bytes) for x in got)
