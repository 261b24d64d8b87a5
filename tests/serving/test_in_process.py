"""The in-process transport: the same stub API, answers, status codes and metrics as gRPC."""
import os
import shutil

import grpc
import numpy as np
import pytest

from serving import model_server
from serving.catalogue import ItemCatalogue, read_item_frequencies, read_user_profiles
from serving.client import ModelServerClient
from serving.indexes import IndexSet
from serving.recommender import Recommender, RecommenderSettings
from serving.store import InMemoryStore

from .test_model_server import _code, _examples, _tower_inputs

NOW = 1_700_000_000.0
CHANNELS = ["two_tower", "youtubenet", "item2vec"]


@pytest.fixture(scope="module")
def local(server):
    """An in-process client of the same server the gRPC `client` fixture talks to."""
    return ModelServerClient.from_stub(model_server.InProcessStub(server.core))


def test_predict_metadata_and_status_equal_the_grpc_answers(local, client, config):
    for model, inputs in (("ranking", {"examples": _examples(4)}),
                          ("user_tower_two_tower", _tower_inputs(config, 2))):
        over_grpc, in_process = client.predict_full(model, inputs), local.predict_full(model, inputs)
        assert in_process.model_version == over_grpc.model_version == 1
        assert set(in_process.outputs) == set(over_grpc.outputs)
        for key, value in over_grpc.outputs.items():
            np.testing.assert_array_equal(in_process.outputs[key], value)
    assert local.signature_inputs("ranking", "score_candidates") == \
        client.signature_inputs("ranking", "score_candidates")
    assert local.available_versions("ranking_multitask") == [1]
    assert local.available_versions("no_such_model") == []
    local.wait_ready(0.1)  # nothing to connect: returns at once
    local.close()  # no channel: a no-op, the client stays usable
    assert local.predict("ranking", {"examples": _examples(1)})["click"].shape == (1,)


def test_errors_are_rpc_errors_with_the_grpc_status(local, client):
    good = {"examples": _examples(2)}
    cases = [lambda c: c.predict("nope", good),
             lambda c: c.predict("ranking", good, version=7),
             lambda c: c.predict("ranking", good, signature_name="nope"),
             lambda c: c.predict("ranking", {"examples": np.zeros(2, np.float32)}),
             lambda c: c.predict("ranking", {**good, "extra": np.array([1.0])})]
    for case in cases:
        code, details = _code(lambda: case(local))
        grpc_code, grpc_details = _code(lambda: case(client))
        assert (code, details) == (grpc_code, grpc_details)
        assert isinstance(code, grpc.StatusCode) and code != grpc.StatusCode.OK


def test_in_process_calls_are_counted_in_the_metrics(server, local):
    before = server.core.metrics.count[("ranking", "predict", "OK")]
    local.predict("ranking", {"examples": _examples(3)})
    assert server.core.metrics.count[("ranking", "predict", "OK")] == before + 1


def test_recommender_gives_the_same_answers_over_either_transport(world, config, server, client,
                                                                  local, tmp_path):
    catalogue = ItemCatalogue.from_table(world["items"], config,
                                         read_item_frequencies(world["item_frequencies"]))
    indexes_root = tmp_path / "indexes"
    shutil.copytree(os.path.join(world["root"], "indexes"), indexes_root)
    answers = []
    for transport in (client, local):
        store = InMemoryStore(max_clicks=50)
        store.put_profiles(read_user_profiles(world["users"], config))
        store.set_clicks("u3", ["i4", "i9", "i17"])
        rec = Recommender(config, transport, store, IndexSet(str(indexes_root), CHANNELS),
                          catalogue, RecommenderSettings(num_candidates=80, per_channel=40),
                          clock=lambda: NOW)
        answers.append([(r.item_id, round(r.score, 6), r.channels)
                        for r in rec.recommend("u3", {"network": "network_1"}, k=15)])
        answers.append([(r.item_id, round(r.score, 6), r.channels)
                        for r in rec.recommend("new_user", {"city": "city_2"}, k=15)])
    assert answers[0] == answers[2] and answers[1] == answers[3]
    assert len(answers[0]) == 15
