"""The embedded model server over real gRPC / HTTP on loopback: API, errors, hot swap, batching."""
import base64
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf

from serving import config_files, model_server, toy_models
from serving.batching import Batcher
from serving.client import ModelServerClient
from serving.servables import ModelManager

from .conftest import MODELS_CONFIG


def _examples(n: int) -> np.ndarray:
    out = []
    for i in range(n):
        ex = tf.train.Example()
        ex.features.feature["item_id"].bytes_list.value.append(f"i{i}".encode())
        ex.features.feature["city"].bytes_list.value.append(b"city_1")
        ex.features.feature["clicked_item_list"].bytes_list.value.extend([b"i1", b"i2"])
        out.append(ex.SerializeToString())
    return np.array(out, dtype=object)


def _tower_inputs(config, n: int = 2) -> dict:
    out = {}
    for spec in toy_models.user_tower_specs(config):
        if spec.type == "numeric":
            out[spec.name] = np.zeros([n], np.float32)
        elif spec.type == "categorical":
            out[spec.name] = np.array([f"{spec.name}_{i}".encode() for i in range(n)], dtype=object)
        else:
            out[spec.name] = np.array([[b"a", b""]] * n, dtype=object)
    return out


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# ---- client path: the same standard API calls TF Serving answers ---------------
def test_predict_matches_the_savedmodel_in_process(client, world):
    examples = _examples(5)
    result = client.predict_full("ranking", {"examples": examples})
    expected = tf.saved_model.load(world["ranking"]).signatures["serving_default"](
        examples=tf.constant(examples))["click"].numpy()
    assert result.model_version == 1
    np.testing.assert_allclose(result.outputs["click"], expected, rtol=1e-6)
    multitask = client.predict("ranking_multitask", {"examples": examples})
    assert set(multitask) == {"click", "follow"} and multitask["follow"].shape == (5,)


def test_metadata_and_status(client):
    version, inputs = client.signature_inputs("ranking", "score_candidates")
    assert version == 1
    assert inputs["item_id"].dtype == tf.string and inputs["item_id"].shape == (None,)
    assert inputs["interest_tags"].shape == (None, None)
    assert inputs["item_age_hours"].dtype == tf.float32
    assert client.available_versions("user_tower_two_tower") == [1]
    assert client.available_versions("no_such_model") == []


# ---- each bad-request class, and the server keeps serving ---------------------
def test_bad_requests_get_tf_serving_status_codes(client, config):
    good = {"examples": _examples(2)}
    code, details = _code(lambda: client.predict("nope", good))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in details
    code, details = _code(lambda: client.predict("ranking", good, version=7))
    assert code == grpc.StatusCode.NOT_FOUND and "Specific(ranking, 7)" in details
    code, details = _code(lambda: client.predict("ranking", good, signature_name="nope"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and '"nope" not found' in details
    code, details = _code(lambda: client.predict("ranking", {"examples": np.zeros(2, np.float32)}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "to be string but float" in details
    code, details = _code(lambda: client.predict("ranking", {"examples": _examples(4).reshape(2, 2)}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "shape [2, 2]" in details
    tower = _tower_inputs(config)
    del tower["city"]
    code, details = _code(lambda: client.predict("user_tower_two_tower", tower))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Missing but required: ['city']" in details
    code, details = _code(lambda: client.predict("ranking", {**good, "extra": np.array([1.0])}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Sent extra: ['extra']" in details
    code, details = _code(lambda: client.predict("ranking", good, output_filter=["nope"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "nope" in details
    # Batch sizes the graph cannot line up: rejected by the model, not a crash.
    bad = _tower_inputs(config, 3)
    bad["city"] = bad["city"][:2]
    code, details = _code(lambda: client.predict("user_tower_two_tower", bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "model rejected" in details
    assert client.predict("ranking", good)["click"].shape == (2,)  # still serving


def test_oversized_request_is_resource_exhausted(client, server):
    huge = np.array([b"x" * (5 << 20)], dtype=object)  # over the 4 MiB limit of the fixture
    code, _ = _code(lambda: client.predict("ranking", {"examples": huge}))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.predict("ranking", {"examples": _examples(1)})["click"].shape == (1,)


def test_classify_is_unimplemented(server):
    from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "ranking"
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(request, timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


# ---- REST ----------------------------------------------------------------------
def _http(server, method: str, path: str, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=data,
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_rest_status_metadata_and_predict_forms(server, client):
    status, body = _http(server, "GET", "/v1/models/ranking")
    assert status == 200 and body["model_version_status"][0] == {
        "version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    status, body = _http(server, "GET", "/v1/models/ranking/versions/1/metadata")
    assert status == 200
    assert set(body["metadata"]["signature_def"]["signatureDef"]) >= {"serving_default",
                                                                      "score_candidates"}
    examples = _examples(3)
    grpc_click = client.predict("ranking", {"examples": examples})["click"]
    b64 = [{"b64": base64.b64encode(e).decode()} for e in examples]
    status, body = _http(server, "POST", "/v1/models/ranking:predict", {"instances": b64})
    assert status == 200
    np.testing.assert_allclose(body["predictions"], grpc_click, rtol=1e-6)
    status, body = _http(server, "POST", "/v1/models/ranking/versions/1:predict",
                         {"inputs": {"examples": b64}})
    assert status == 200
    np.testing.assert_allclose(body["outputs"], grpc_click, rtol=1e-6)
    status, body = _http(server, "POST", "/v1/models/ranking_multitask:predict", {"instances": b64})
    assert status == 200 and set(body["predictions"][0]) == {"click", "follow"}


def test_rest_errors(server):
    assert _http(server, "GET", "/v1/models/nope")[0] == 404
    assert _http(server, "GET", "/v1/models/ranking/versions/9")[0] == 404
    status, body = _http(server, "POST", "/v1/models/ranking:predict",
                         {"signature_name": "nope", "instances": ["a"]})
    assert status == 400 and "nope" in body["error"]
    status, body = _http(server, "POST", "/v1/models/ranking:predict", {"instances": [1.5]})
    assert status == 400 and "string" in body["error"]
    status, body = _http(server, "POST", "/v1/models/ranking:predict", {"nothing": 1})
    assert status == 400 and "instances" in body["error"]
    assert _http(server, "POST", "/v1/models/ranking:classify", {"instances": ["a"]})[0] == 501


# ---- hot swap under concurrent requests ---------------------------------------
def test_hot_swap_under_load_has_no_failures(tmp_path, config, world):
    base = tmp_path / "models"
    shutil.copytree(os.path.dirname(world["user_tower_two_tower"]), base / "user_tower_two_tower")
    entries = [config_files.ModelEntry("user_tower_two_tower", str(base / "user_tower_two_tower"))]
    manager = ModelManager(entries)
    manager.poll_once()
    srv = model_server.ModelServer(manager)
    port, _ = srv.start("127.0.0.1", 0, None)
    manager.start(0.05)
    inputs = _tower_inputs(config)
    failures, versions, stop = [], [], threading.Event()

    def hammer():
        with ModelServerClient(f"127.0.0.1:{port}") as c:
            while not stop.is_set():
                try:
                    r = c.predict_full("user_tower_two_tower", inputs)
                    versions.append((r.model_version, r.outputs["user_embedding"][0, 0]))
                except grpc.RpcError as err:
                    failures.append(err.code())

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)
        staging = tmp_path / "staging"
        toy_models.export_user_tower(str(staging), config, dim=16, seed=99)
        os.rename(staging, base / "user_tower_two_tower" / "2")  # atomic, like the Pusher
        deadline = time.time() + 20
        while time.time() < deadline and not any(v == 2 for v, _ in versions[-5:]):
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
        manager.stop()
        srv.stop()
    assert failures == []
    seen = {v for v, _ in versions}
    assert seen == {1, 2}
    v1 = {round(float(x), 6) for v, x in versions if v == 1}
    v2 = {round(float(x), 6) for v, x in versions if v == 2}
    assert len(v1) == 1 and len(v2) == 1 and v1 != v2  # each version answers consistently
    assert sorted(manager.versions("user_tower_two_tower")) == [2]  # version 1 unloaded


def test_half_written_version_is_ignored(tmp_path, world):
    base = tmp_path / "ranking"
    shutil.copytree(world["ranking"], base / "1")
    (base / "2").mkdir()  # no saved_model.pb yet
    manager = ModelManager([config_files.ModelEntry("ranking", str(base))])
    assert manager.poll_once() == {"ranking": [1]}


# ---- batching -----------------------------------------------------------------
def test_batching_gives_the_same_answers(world, config):
    entries = config_files.read_model_config(MODELS_CONFIG, os.path.join(world["root"], "models"))
    manager = ModelManager(entries)
    manager.poll_once()
    batcher = Batcher(config_files.BatchingParameters(max_batch_size=64, batch_timeout_micros=20000,
                                                      num_batch_threads=1))
    srv = model_server.ModelServer(manager, batcher)
    port, _ = srv.start("127.0.0.1", 0, None)
    examples = _examples(8)
    results = {}
    try:
        with ModelServerClient(f"127.0.0.1:{port}") as c:
            def call(i):
                results[i] = c.predict("ranking", {"examples": examples[i:i + 1]})["click"]
            threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            whole = c.predict("ranking", {"examples": examples})["click"]
    finally:
        srv.stop()
    np.testing.assert_allclose(np.concatenate([results[i] for i in range(8)]), whole, rtol=1e-6)
    assert batcher.requests_batched >= 2  # at least one call shared a batch


# ---- config files -------------------------------------------------------------
def test_config_files(tmp_path):
    entries = config_files.read_model_config(MODELS_CONFIG, "work/serving/models")
    assert [e.name for e in entries] == ["ranking", "ranking_multitask", "user_tower_two_tower",
                                         "user_tower_youtubenet"]
    assert entries[0].base_path == "work/serving/models/ranking" and entries[0].num_versions == 1
    assert config_files.map_base_path("/models/ranking", None) == "/models/ranking"
    repo = os.path.dirname(MODELS_CONFIG)
    params = config_files.read_batching_parameters(os.path.join(repo, "batching_parameters.txt"))
    assert (params.max_batch_size, params.batch_timeout_micros, params.num_batch_threads) == (1024, 2000, 2)
    assert config_files.read_prometheus_path(os.path.join(repo, "monitoring.config")) == \
        "/monitoring/prometheus/metrics"
    bad = tmp_path / "bad.config"
    bad.write_text('model_config_list { config { name: "a" base_path: "/m/a" } '
                   'config { name: "a" base_path: "/m/b" } }')
    with pytest.raises(ValueError, match="listed twice"):
        config_files.read_model_config(str(bad))
