"""Every request of issue 14, sent as an operator would to `python -m serving.serve` on loopback:
each gets its status code and body, fast, and the server keeps serving.

Bounded: one serve process for the module (small timeouts: read 1 s, idle 3 s,
8 connections per HTTP port), a few hundred requests, ~1 minute.
"""
import http.client
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time

import grpc
import portpicker
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.client import make_predict_request

from .conftest import REPO
from .test_model_server import _examples

READ_TIMEOUT_S, IDLE_TIMEOUT_S, MAX_CONNECTIONS = 1.0, 3.0, 8
PREDICT = "/tensorflow.serving.PredictionService/Predict"


# ---- the server under test ---------------------------------------------------------
@pytest.fixture(scope="module")
def served(world, tmp_path_factory):
    """`python -m serving.serve` on the toy world with small timeouts; its ports, pid, log."""
    tmp = tmp_path_factory.mktemp("abuse")
    serving_dir = tmp / "serving"
    shutil.copytree(world["root"], serving_dir)
    ready, log_path = tmp / "ready.json", tmp / "serve.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.serve", "--serving_dir", str(serving_dir),
             "--data", "synthetic", "--port", "0",
             "--rest_api_port", str(portpicker.pick_unused_port()),
             "--recommender_port", "0", "--ready_file", str(ready),
             "--read_timeout_seconds", str(READ_TIMEOUT_S),
             "--idle_timeout_seconds", str(IDLE_TIMEOUT_S),
             "--http_max_connections", str(MAX_CONNECTIONS)],
            cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while not ready.exists():
        assert proc.poll() is None, log_path.read_text()
        assert time.time() < deadline, "serve did not become ready"
        time.sleep(0.2)
    info = json.loads(ready.read_text())
    info.update(pid=proc.pid, log=log_path, grpc=info["model_server"],
                rest=info["rest_api_port"], rec=info["recommender_port"])
    yield info
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def stub(served):
    channel = grpc.insecure_channel(served["grpc"])
    grpc.channel_ready_future(channel).result(timeout=10)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def _huge_request(dim: int, values: int) -> predict_pb2.PredictRequest:
    """A Predict on ranking whose one input declares shape [dim] with `values` empty strings."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ranking"
    proto = request.inputs["examples"]
    proto.dtype = types_pb2.DT_STRING
    proto.tensor_shape.dim.add().size = dim
    proto.string_val.extend([b""] * values)
    return request


def _valid_request() -> predict_pb2.PredictRequest:
    return make_predict_request("ranking", {"examples": _examples(2)})


def _rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# ---- gRPC: caps before allocation ------------------------------------------------------
def test_huge_declared_shape_is_refused_at_once_without_memory(served, stub):
    request = _huge_request(1_000_000, 1)
    assert request.ByteSize() < 40  # the 37-byte request
    message = ("input 'examples' declares 1,000,000 rows (shape [1000000]): over the limit of "
               "8,192 (--max_batch_size)")
    for _ in range(20):  # warm the path
        _rpc_error(lambda: stub.Predict(request, timeout=10))
    rss_before = _rss_kb(served["pid"])
    # No timing assertion (a timed test fails on a loaded CI machine: one
    # refusal took 102 ms there): "at once" is the exact error before any
    # allocation, which the server's flat RSS shows.
    for _ in range(1000):  # a leak of even 4 KB per refusal would show
        err = _rpc_error(lambda: stub.Predict(request, timeout=10))
        assert (err.code(), err.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, message)
    assert _rss_kb(served["pid"]) - rss_before < 4096  # KB: no growth past a few MB
    # 2^40 elements with no values: the same, on the per-tensor cap.
    err = _rpc_error(lambda: stub.Predict(_huge_request(1 << 40, 0), timeout=10))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "declares 1,099,511,627,776 rows" in err.details()


def test_seventeen_huge_requests_at_once_do_not_stall_valid_ones(served, stub):
    huge, stop, codes = _huge_request(1 << 40, 0), threading.Event(), []

    def abuse():
        while not stop.is_set():
            try:
                stub.Predict(huge, timeout=10)
            except grpc.RpcError as err:
                codes.append(err.code())

    threads = [threading.Thread(target=abuse) for _ in range(17)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        start = time.perf_counter()
        response = stub.Predict(_valid_request(), timeout=5)
        predict_s = time.perf_counter() - start
        conn = http.client.HTTPConnection("127.0.0.1", served["rest"], timeout=5)
        conn.request("GET", "/v1/models/ranking")
        status = conn.getresponse().status
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert list(response.outputs["click"].tensor_shape.dim)[0].size == 2 and predict_s < 2.0
    assert status == 200
    assert codes and set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_per_tensor_total_and_string_expansion_caps(stub):
    def tower_like(shape, values=(b"x",)):
        request = _huge_request(1, 0)
        proto = request.inputs["examples"]
        del proto.tensor_shape.dim[:]
        for size in shape:
            proto.tensor_shape.dim.add().size = size
        del proto.string_val[:]
        proto.string_val.extend(values)
        return request

    err = _rpc_error(lambda: stub.Predict(tower_like([8000, 40]), timeout=10))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "input 'examples' declares 320,000 elements (shape "
        "[8000, 40]): over the limit of 262,144 (--max_tensor_elements)")
    # A 1 MiB string repeated 8,000 times would be 8 GB once built.
    err = _rpc_error(lambda: stub.Predict(tower_like([8000], [b"x" * (1 << 20)]), timeout=10))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "input 'examples' repeats a 1,048,576-byte string to "
        "8,000 elements: over the limit of 67,108,864 (--max_string_tensor_bytes)")
    rank = tower_like([1] * 40)
    err = _rpc_error(lambda: stub.Predict(rank, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 32 dimensions" in err.details()


def test_malformed_bytes_are_invalid_argument_without_a_traceback(served, stub):
    channel = grpc.insecure_channel(served["grpc"])
    raw = channel.unary_unary(PREDICT)  # no serializer: the bytes go as they are
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05abc", b"\x12" * 30):
        err = _rpc_error(lambda: raw(garbage, timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith(
            "request is not a valid tensorflow.serving.PredictRequest: Error parsing message")
    channel.close()
    log = served["log"].read_text()
    assert "Exception deserializing" not in log and "Traceback" not in log
    assert stub.Predict(_valid_request(), timeout=10).model_spec.version.value == 1


def test_a_stalled_grpc_call_is_cancelled_after_the_read_timeout(served, stub):
    """Headers sent, message never: 20 such calls (more than the 16 handler threads)."""
    channel = grpc.insecure_channel(served["grpc"])
    stalled = channel.stream_unary(PREDICT, request_serializer=lambda r: r,
                                   response_deserializer=predict_pb2.PredictResponse.FromString)
    release = threading.Event()

    def never():
        release.wait(30)
        return
        yield  # noqa: unreachable - makes this a generator that sends nothing

    calls = [stalled.future(never(), timeout=30) for _ in range(20)]
    try:
        start = time.perf_counter()
        codes = [c.exception(timeout=10).code() for c in calls]
        elapsed = time.perf_counter() - start
    finally:
        release.set()
        channel.close()
    assert set(codes) == {grpc.StatusCode.CANCELLED}
    assert READ_TIMEOUT_S * 0.5 < elapsed < READ_TIMEOUT_S + 2.0
    assert stub.Predict(_valid_request(), timeout=5).model_spec.version.value == 1


def test_an_idle_grpc_connection_is_closed_and_the_next_call_reconnects(served):
    channel = grpc.insecure_channel(served["grpc"])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    assert stub.Predict(_valid_request(), timeout=10).model_spec.version.value == 1
    start, states = time.time(), []
    channel.subscribe(states.append)  # READY now; IDLE once the server closes the connection
    # gRPC core checks idleness on a timer re-armed from the last activity, so
    # the GOAWAY comes between one and about two idle periods (6.2 s was seen
    # with a 3 s timeout on a loaded box): the test bounds it at three.
    while grpc.ChannelConnectivity.IDLE not in states and time.time() - start < 3 * IDLE_TIMEOUT_S:
        time.sleep(0.1)
    idle_after = time.time() - start
    assert states[0] == grpc.ChannelConnectivity.READY
    assert grpc.ChannelConnectivity.IDLE in states  # the server's GOAWAY after the idle timeout
    assert idle_after > IDLE_TIMEOUT_S - 1  # never before the timeout
    assert stub.Predict(_valid_request(), timeout=10).model_spec.version.value == 1
    channel.close()


# ---- REST: every request gets an answer ------------------------------------------------
def _raw_http(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict, dict]:
    """Sends raw bytes; returns (status, headers, JSON body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"{}")


def _post_raw(port: int, path: str, body: bytes, length: str | None = "auto") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if length == "auto":
        length = str(len(body))
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return head.encode() + b"\r\n" + body


@pytest.mark.parametrize("port_key,path", [("rest", "/v1/models/ranking:predict"),
                                           ("rec", "/recommend")])
def test_bad_bodies_get_json_errors(served, port_key, path):
    port = served[port_key]
    deep = b"[" * 100_000 + b"]" * 100_000
    status, headers, body = _raw_http(port, _post_raw(port, path, deep))
    assert (status, body) == (400, {"error": "body is not usable JSON: nested too deeply"})
    for bad in ("abc", "1e11", "-1", "12, 13"):
        status, headers, body = _raw_http(port, _post_raw(port, path, b"{}", bad))
        assert (status, body["error"]) == (400, f"bad Content-Length {bad!r}: want one decimal "
                                                "byte count")
        assert headers["Connection"] == "close"
    status, _, body = _raw_http(port, _post_raw(port, path, b"", None))
    assert (status, body) == (411, {"error": "Content-Length is required"})
    limit = (64 << 20) if port_key == "rest" else (1 << 20)
    status, _, body = _raw_http(port, _post_raw(port, path, b"{", "100000000000"))
    assert (status, body) == (413, {"error": f"request body of 100,000,000,000 bytes exceeds the "
                                             f"{limit:,}-byte limit"})
    chunked = (f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               "2\r\n{}\r\n0\r\n\r\n").encode()
    assert _raw_http(port, chunked)[0] == 411
    status, _, body = _raw_http(port, _post_raw(port, path, b"{not json"))
    assert status == 400 and body["error"].startswith("body is not JSON: Expecting")
    status, _, body = _raw_http(port, b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (501, {"error": "Unsupported method ('BREW')"})


def test_rest_predict_rejects_bad_base64_and_oversized_tensors(served):
    port = served["rest"]
    status, _, body = _raw_http(port, _post_raw(port, "/v1/models/ranking:predict",
                                                b'{"instances": [{"b64": "!!!"}]}'))
    assert status == 400
    assert "invalid base64 '!!!'" in body["error"]
    big = json.dumps({"instances": [""] * 9000}).encode()
    status, _, body = _raw_http(port, _post_raw(port, "/v1/models/ranking:predict", big))
    assert (status, body) == (413, {"error": "input 'examples' declares 9,000 rows (shape [9000]): "
                                             "over the limit of 8,192 (--max_batch_size)"})


def test_half_sent_requests_time_out_and_overflow_is_refused(served):
    """100 half-sent requests per HTTP port: 8 held (then 408 after the read timeout), 92 refused
    with 503 at once; then the port serves again."""
    for port, path in ((served["rest"], "/v1/models/ranking"), (served["rec"], "/healthz")):
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(100)]
        for sock in socks:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())  # no blank line
        start = time.perf_counter()
        arrived, waiting = {}, set(socks)
        while waiting and time.perf_counter() - start < 10:  # when each answer arrives
            for sock in select.select(list(waiting), [], [], 0.05)[0]:
                arrived[sock] = time.perf_counter() - start
                waiting.discard(sock)
        elapsed = time.perf_counter() - start
        answers = []
        for sock in socks:
            response = http.client.HTTPResponse(sock)
            response.begin()
            answers.append((response.status, json.loads(response.read())["error"], arrived[sock]))
            sock.close()
        statuses = [a[0] for a in answers]
        assert statuses.count(408) == MAX_CONNECTIONS
        assert statuses.count(503) == 100 - MAX_CONNECTIONS
        assert {a[1] for a in answers if a[0] == 408} == {
            f"request not received within {READ_TIMEOUT_S:g} s (read timeout)"}
        assert {a[1] for a in answers if a[0] == 503} == {
            f"server busy: {MAX_CONNECTIONS} connections open; retry later"}
        assert max(a[2] for a in answers if a[0] == 503) < READ_TIMEOUT_S
        assert elapsed < READ_TIMEOUT_S + 2.0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        assert conn.getresponse().status == 200
        conn.close()


def test_a_trickling_client_cannot_stretch_the_read_timeout(served):
    with socket.create_connection(("127.0.0.1", served["rec"]), timeout=10) as sock:
        start = time.perf_counter()
        status = None
        for byte in b"GET /healthz HTTP/1.1\r\nHost: xxxxxxxxxxxxxxxxxxxxxxxx\r\n":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
            if select_readable(sock):
                break
        response = http.client.HTTPResponse(sock)
        response.begin()
        status = response.status
    assert status == 408 and time.perf_counter() - start < READ_TIMEOUT_S + 1.0


def select_readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def test_idle_keepalive_connection_is_closed(served):
    conn = http.client.HTTPConnection("127.0.0.1", served["rec"], timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read()
    time.sleep(IDLE_TIMEOUT_S + 0.5)
    assert conn.sock.recv(1) == b""  # the server closed it
    conn.close()


# ---- the recommender: validation ----------------------------------------------------------
def _post(port: int, path: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, answer = _raw_http(port, _post_raw(port, path, data))
    return status, answer


@pytest.mark.parametrize("body,error", [
    (b'{"user_id": "u1", "k": Infinity}', "k must be an integer in 1..200, got inf"),
    ({"user_id": "u1", "k": 10 ** 6}, "k must be an integer in 1..200, got 1000000"),
    ({"user_id": "u1", "k": 2.7}, "k must be an integer in 1..200, got 2.7"),
    ({"user_id": "u1", "k": "10"}, "k must be an integer in 1..200, got 10"),
    ({"user_id": "u1", "k": True}, "k must be an integer in 1..200, got True"),
    ({"user_id": "u1", "context": {"timestamp": 1e300}},
     "context.timestamp must be unix seconds in 946684800..4102444800, got 1e+300"),
    ({"user_id": "u1", "context": {"timestamp": "now"}},
     "context.timestamp must be unix seconds in 946684800..4102444800, got now"),
    ({"user_id": "u1", "context": {"network": ["a"]}},
     "context.network must be a string, got ['a']"),
    ({"user_id": "u1", "context": {"interest_tags": 12345}},
     "context.interest_tags must be a list of strings (at most 5) or a '|'-joined string, "
     "got 12345"),
    ({"user_id": "u1", "context": [1]}, "context must be an object, got [1]"),
    ({"user_id": "x" * 300}, "user_id is 300 characters; at most 256"),
    ({"user_id": ["u1"]}, "user_id is required: a non-empty string, got ['u1']"),
    ({"k": 3}, "user_id is required: a non-empty string, got None"),
])
def test_recommend_validates_k_context_and_ids(served, body, error):
    assert _post(served["rec"], "/recommend", body) == (400, {"error": error})


def test_ingest_validates_profile_and_items_so_later_requests_still_work(served):
    port = served["rec"]
    assert _post(port, "/ingest", {"user_id": "u3", "item_id": "i1",
                                   "profile": {"interest_tags": 12345}}) == (
        400, {"error": "profile.interest_tags must be a list of strings (at most 5) or a "
                       "'|'-joined string, got 12345"})
    assert _post(port, "/ingest", {"user_id": "u3", "item_id": "i1",
                                   "profile": {"interest_tags": ["a"] * 6}}) == (
        400, {"error": "profile.interest_tags has 6 values; at most 5"})
    assert _post(port, "/ingest", {"user_id": "u3", "item_id": "i1",
                                   "profile": {"favourite": "x"}})[1]["error"].startswith(
        "profile key 'favourite' is not a profile feature; profile features are ['age',")
    assert _post(port, "/ingest", {"user_id": "u3", "item_id": "no_such_item"}) == (
        400, {"error": "item 'no_such_item' is not in the catalogue"})
    assert _post(port, "/ingest", {"user_id": "u3", "item_id": "i1", "event": "like"})[0] == 400
    # A valid profile update and click, then the user's recommend works.
    assert _post(port, "/ingest", {"user_id": "u3", "item_id": "i1",
                                   "profile": {"interest_tags": ["sport", "news"], "city": "c_2"}}
                 ) == (200, {"history_changed": True})
    status, body = _post(port, "/recommend", {"user_id": "u3", "k": 5})
    assert status == 200 and len(body["items"]) == 5
    health = json.loads(urlopen(port, "/healthz"))
    assert health["stats"]["ingest_unknown_item"] == 1 and health["stats"]["bad_requests"] >= 5


def urlopen(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return data


def test_liveness_and_readiness(served):
    port = served["rec"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/readyz")
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 200 and body["ready"] is True
    assert body["checks"] == {"store": "ok", "model:ranking": "ok",
                              "model:user_tower_two_tower": "ok",
                              "model:user_tower_youtubenet": "ok", "index:two_tower": "ok",
                              "index:youtubenet": "ok", "index:item2vec": "ok"}
    assert json.loads(urlopen(port, "/healthz"))["alive"] is True


# ---- model versions and incompatible models (in-process servers) -------------------------
def _manager(models_root, names=("ranking",)):
    from serving import config_files
    from serving.servables import ModelManager
    return ModelManager([config_files.ModelEntry(n, str(models_root / n)) for n in names])


def test_a_corrupt_version_is_reported_logged_once_and_the_old_one_serves(tmp_path, world, caplog):
    from serving import model_server
    from serving.client import ModelServerClient
    from tensorflow_serving.apis import get_model_status_pb2
    base = tmp_path / "models" / "ranking"
    shutil.copytree(world["ranking"], base / "1")
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"")  # empty
    manager = _manager(tmp_path / "models")
    with caplog.at_level("ERROR", logger="serving.servables"):
        for _ in range(5):  # five polls, as five seconds of the poller
            assert manager.poll_once() == {"ranking": [1]}
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"cannot load ranking version 2 from {base / '2'}"]
    failure = manager.load_failures[("ranking", 2)]
    assert failure.error_code == "NOT_FOUND" and "0 MetaGraphs" in failure.message
    assert str(failure) == f"NOT_FOUND: {failure.message}"
    server = model_server.ModelServer(manager, prometheus_path="/metrics")
    grpc_port, rest_port = server.start("127.0.0.1", 0, 0)
    try:
        with ModelServerClient(f"127.0.0.1:{grpc_port}") as client:
            statuses = client.get_model_status("ranking").model_version_status
            assert [(s.version, s.state) for s in statuses] == [
                (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
                (2, get_model_status_pb2.ModelVersionStatus.END)]
            assert statuses[1].status.error_message == failure.message != ""
            assert statuses[1].status.error_code == 5  # tensorflow.error.Code NOT_FOUND
            assert client.predict("ranking", {"examples": _examples(1)})["click"].shape == (1,)
            one = client.get_model_status("ranking", version=2).model_version_status
            assert [(s.version, s.status.error_message) for s in one] == [(2, failure.message)]
        rest = json.loads(urlopen(rest_port, "/v1/models/ranking"))
        assert rest["model_version_status"][1] == {
            "version": "2", "state": "END",
            "status": {"error_code": failure.error_code, "error_message": failure.message}}
        metrics = urlopen(rest_port, "/metrics").decode()
        assert 'feedrec_model_load_failures_total{model_name="ranking"} 1' in metrics
        assert 'feedrec_model_versions_loaded{model_name="ranking"} 1' in metrics
        # A truncated version 3 too; then version 3 re-pushed whole: it loads.
        (base / "3").mkdir()
        good = (base / "1" / "saved_model.pb").read_bytes()
        (base / "3" / "saved_model.pb").write_bytes(good[:len(good) // 2])
        assert manager.poll_once() == {"ranking": [1]}
        assert manager.load_failures[("ranking", 3)].error_code == "DATA_LOSS"
        shutil.rmtree(base / "3")
        shutil.copytree(base / "1", tmp_path / "staging")
        os.rename(tmp_path / "staging", base / "3")
        assert manager.poll_once() == {"ranking": [3]}
        assert [(v, state) for v, state, _ in manager.status("ranking")] == [
            (2, "END"), (3, "AVAILABLE")]
        assert manager.failure_counts["ranking"] == 2
    finally:
        server.stop()


@pytest.fixture
def recommender_over(world, config, tmp_path):
    """A recommender HTTP API over an in-process model server on `models` (name -> SavedModel)."""
    from serving import model_server
    from serving.catalogue import ItemCatalogue, read_item_frequencies
    from serving.client import ModelServerClient
    from serving.indexes import IndexSet
    from serving.recommender import Recommender, RecommenderSettings
    from serving.serve import RecommenderHTTPServer
    from serving.store import InMemoryStore
    started = []

    def start(models: dict, channels=("two_tower", "youtubenet", "item2vec")):
        root = tmp_path / f"models{len(started)}"
        for name, source in models.items():
            if source is not None:
                shutil.copytree(source, root / name / "1")
            else:  # a version that cannot load
                (root / name / "1").mkdir(parents=True)
                (root / name / "1" / "saved_model.pb").write_bytes(b"")
        manager = _manager(root, ["ranking", "user_tower_two_tower", "user_tower_youtubenet"])
        manager.poll_once()
        core = model_server.ModelServerCore(manager)
        indexes = tmp_path / f"indexes{len(started)}"
        for channel in channels:
            shutil.copytree(world[channel], indexes / channel / "1")
        catalogue = ItemCatalogue.from_table(world["items"], config,
                                             read_item_frequencies(world["item_frequencies"]))
        store = InMemoryStore()
        store.mark_seeded({"users": 0})
        rec = Recommender(config, ModelServerClient.from_stub(model_server.InProcessStub(core)),
                          store, IndexSet(str(indexes), ["two_tower", "youtubenet", "item2vec"]),
                          catalogue, RecommenderSettings(num_candidates=50, per_channel=30))
        http_server = RecommenderHTTPServer(rec, "127.0.0.1", 0)
        started.append(http_server)
        return http_server.start()

    yield start
    for server in started:
        server.stop()


def test_an_incompatible_model_pushed_as_ranking_is_a_500(recommender_over, world):
    port = recommender_over({"ranking": world["user_tower_two_tower"],
                             "user_tower_two_tower": world["user_tower_two_tower"],
                             "user_tower_youtubenet": world["user_tower_youtubenet"]})
    assert _post(port, "/recommend", {"user_id": "u1", "k": 3}) == (500, {
        "error": "model incompatible: model 'ranking' has no signature 'score_candidates'; has "
                 "['__saved_model_init_op', 'serving_default']"})
    assert json.loads(urlopen(port, "/healthz"))["stats"]["model_incompatible"] == 1


def test_not_ready_without_a_loaded_model_or_an_index_but_recall_still_answers(recommender_over, world):
    port = recommender_over({"ranking": None,
                             "user_tower_two_tower": world["user_tower_two_tower"],
                             "user_tower_youtubenet": world["user_tower_youtubenet"]},
                            channels=("two_tower", "youtubenet"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/readyz")
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 503 and body["ready"] is False
    assert {k: v for k, v in body["checks"].items() if v != "ok"} == {
        "model:ranking": "no loaded version", "index:item2vec": "missing"}
    # Without a ranker (and no blend.json) the recall result is served in
    # merge order, score 1 / (1 + merge rank), and counted.
    status, answer = _post(port, "/recommend", {"user_id": "u1", "k": 3})
    assert status == 200
    assert [r["score"] for r in answer["items"]] == pytest.approx([1.0, 0.5, 1 / 3])
    assert json.loads(urlopen(port, "/healthz"))["stats"]["ranking_missing"] == 1


def test_the_server_log_has_no_traceback(served):
    """Run last: after every request above, nothing in the serve log is a traceback."""
    log = served["log"].read_text()
    assert "Traceback" not in log, log[-3000:]
