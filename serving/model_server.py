"""A TF-Serving-compatible model server: the same gRPC and REST API, our own loop.

Production runs the real `tensorflow_model_server` on serving_configs/ (see
serving_configs/README.md). This server is the embedded default: it reads the
same models.config and speaks the same API, so serving.client, the
recommender and any TF Serving client work against either.

  gRPC  tensorflow.serving.PredictionService  Predict, GetModelMetadata
                                              (Classify, Regress, MultiInference: UNIMPLEMENTED)
        tensorflow.serving.ModelService       GetModelStatus
  REST  GET  /v1/models/<name>[/versions/<v>]            model status
        GET  /v1/models/<name>[/versions/<v>]/metadata   signature defs
        POST /v1/models/<name>[/versions/<v>]:predict    {"instances": [...]} or {"inputs": ...}
        GET  <prometheus path of monitoring.config>      request counters

Each model's base path is polled every --file_system_poll_wait_seconds; a new
version is loaded beside the old one and swapped in atomically (requests in
flight finish on the version they started on), then the old one is dropped.

  python -m serving.model_server --model_config_file serving_configs/models.config \
      --model_base_path_prefix work/serving/models --port 8500 --rest_api_port 8501
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from tensorflow.core.framework import tensor_pb2  # noqa: E402
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,  # noqa: E402
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import config_files  # noqa: E402
from serving.batching import Batcher  # noqa: E402
from serving.servables import (ModelManager, Servable, ServingError,  # noqa: E402
                               run_signature, run_wire, validate_inputs, validate_protos)
from serving.tensors import to_ndarray, to_tensor_proto  # noqa: E402
from serving.lifecycle import freeze_heap, wait_for_termination  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
SIGNATURE_DEF_FIELD = "signature_def"
_HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
                grpc.StatusCode.RESOURCE_EXHAUSTED: 413, grpc.StatusCode.UNIMPLEMENTED: 501,
                grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.FAILED_PRECONDITION: 400}


class Metrics:
    """Request counts and latency sums per (model, api, status), Prometheus text."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count: dict[tuple[str, str, str], int] = defaultdict(int)
        self.seconds: dict[tuple[str, str, str], float] = defaultdict(float)

    def record(self, model: str, api: str, code: grpc.StatusCode, seconds: float) -> None:
        key = (model, api, code.name)
        with self._lock:
            self.count[key] += 1
            self.seconds[key] += seconds

    def prometheus(self) -> str:
        lines = ["# TYPE feedrec_request_count counter",
                 "# TYPE feedrec_request_latency_seconds_sum counter"]
        with self._lock:
            for (model, api, code), n in sorted(self.count.items()):
                labels = f'model_name="{model}",API="{api}",status="{code}"'
                lines.append(f"feedrec_request_count{{{labels}}} {n}")
                lines.append(f"feedrec_request_latency_seconds_sum{{{labels}}} "
                             f"{self.seconds[(model, api, code)]:.6f}")
        return "\n".join(lines) + "\n"


class ModelServerCore:
    """Everything both front ends share: lookup, validation, execution, metrics."""

    def __init__(self, manager: ModelManager, batcher: Batcher | None = None):
        self.manager = manager
        self.batcher = batcher
        self.metrics = Metrics()

    def servable(self, name: str, version: int | None, label: str = "") -> Servable:
        if label:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Labeled({name}, {label}); "
                               f"no version labels are configured")
        return self.manager.get(name, version)

    def predict(self, servable: Servable, signature_name: str, inputs: Mapping[str, np.ndarray],
                output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        signature = servable.signature(signature_name)
        validate_inputs(signature, inputs, output_filter)
        if self.batcher is not None:
            return self.batcher.run(servable, signature_name, inputs, output_filter)
        return run_signature(signature, inputs, output_filter)

    def predict_protos(self, servable: Servable, signature_name: str,
                       inputs: Mapping[str, tensor_pb2.TensorProto],
                       output_filter: Sequence[str] = ()) -> dict[str, bytes | np.ndarray]:
        """Predict on TensorProtos: the wire path when it applies, else `predict`.

        Returns:
          output alias -> serialized TensorProto (wire path) or np.ndarray.
        """
        signature = servable.signature(signature_name)
        if self.batcher is not None or signature.wire is None:  # batching concatenates arrays
            arrays = {k: _to_ndarray(k, v) for k, v in inputs.items()}
            return self.predict(servable, signature_name, arrays, output_filter)
        validate_protos(signature, inputs, output_filter)
        return run_wire(signature, inputs, output_filter)

    def status(self, name: str, version: int | None) -> list[tuple[int, str]]:
        versions = self.manager.versions(name)
        if version is not None:
            self.manager.get(name, version)  # NOT_FOUND when not loaded
            return [(version, "AVAILABLE")]
        if not versions:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Latest({name}); "
                               f"no version is loaded yet")
        return [(v, "AVAILABLE") for v in sorted(versions)]


def _version(spec) -> int | None:
    return spec.version.value if spec.HasField("version") else None


def _to_ndarray(name: str, proto) -> np.ndarray:
    try:
        return to_ndarray(proto)
    except (TypeError, ValueError) as err:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name!r} is not a valid TensorProto: {err}") from err


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService over ModelServerCore."""

    def __init__(self, core: ModelServerCore):
        self.core = core

    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        start, name, code = time.perf_counter(), request.model_spec.name, grpc.StatusCode.OK
        try:
            servable = self.core.servable(name, _version(request.model_spec),
                                          request.model_spec.version_label)
            outputs = self.core.predict_protos(servable, request.model_spec.signature_name,
                                               request.inputs, list(request.output_filter))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
            for key, value in outputs.items():
                if isinstance(value, bytes):
                    response.outputs[key].ParseFromString(value)
                else:
                    to_tensor_proto(value, response.outputs[key])
            return response
        except ServingError as err:
            code = err.code
            context.abort(err.code, err.message)
        finally:
            self.core.metrics.record(name, "predict", code, time.perf_counter() - start)

    def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            servable = self.core.servable(request.model_spec.name, _version(request.model_spec),
                                          request.model_spec.version_label)
            fields = list(request.metadata_field)
            if fields != [SIGNATURE_DEF_FIELD]:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Metadata field(s) {fields} not supported; want "
                                   f"['{SIGNATURE_DEF_FIELD}']")
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for key, sig in servable.signature_defs.items():
                sig_map.signature_def[key].CopyFrom(sig)
            response.metadata[SIGNATURE_DEF_FIELD].Pack(sig_map)
            return response
        except ServingError as err:
            context.abort(err.code, err.message)

    def Classify(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Classify is not served; use Predict")

    def Regress(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not served; use Predict")

    def MultiInference(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not served; use Predict")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: GetModelStatus."""

    def __init__(self, core: ModelServerCore):
        self.core = core

    def GetModelStatus(self, request, context):  # noqa: N802
        try:
            rows = self.core.status(request.model_spec.name, _version(request.model_spec))
        except ServingError as err:
            context.abort(err.code, err.message)
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, _ in rows:
            status = response.model_version_status.add()
            status.version = version
            status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "config reload is not served; edit models.config and restart")


# ---- in-process transport ----------------------------------------------------------
class InProcessRpcError(grpc.RpcError):
    """What an aborted in-process call raises: a grpc.RpcError with code() and details()."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _InProcessContext:
    """The part of grpc.ServicerContext the servicers use."""

    def abort(self, code: grpc.StatusCode, details: str):
        raise InProcessRpcError(code, details)


class InProcessStub:
    """PredictionService and ModelService stubs that call the servicers directly.

    For a recommender co-located with the embedded model server: the same
    request and response protos, the same servicer code (lookup, validation,
    status codes, metrics), minus the loopback gRPC hop. That hop, client and
    server side together, costs ~1 ms of CPU per call in Python, about as much
    as a user-tower graph: a recommend makes three such calls. Errors surface
    as grpc.RpcError with the status the network path would carry. Message
    size limits and deadlines are transport matters and do not apply: a call
    runs to completion on the caller's thread.
    """

    def __init__(self, core: ModelServerCore):
        self._prediction = PredictionServicer(core)
        self._models = ModelServicer(core)

    @staticmethod
    def _call(method, request):
        return method(request, _InProcessContext())

    def Predict(self, request, timeout=None):  # noqa: N802 - stub method names
        return self._call(self._prediction.Predict, request)

    def GetModelMetadata(self, request, timeout=None):  # noqa: N802
        return self._call(self._prediction.GetModelMetadata, request)

    def GetModelStatus(self, request, timeout=None):  # noqa: N802
        return self._call(self._models.GetModelStatus, request)


# ---- REST ---------------------------------------------------------------------
_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                        r"(?:/labels/(?P<label>[^/:]+))?"
                        r"(?:(?P<metadata>/metadata)|:(?P<verb>predict|classify|regress))?$")


def _decode_json_value(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        raise ValueError(f"unexpected object {value!r}; only {{\"b64\": ...}} is allowed in a tensor")
    if isinstance(value, list):
        return [_decode_json_value(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def _json_array(name: str, value: Any, spec: tf.TensorSpec) -> np.ndarray:
    decoded = _decode_json_value(value)
    try:
        if spec.dtype == tf.string:
            array = np.array(decoded, dtype=object)
            if any(not isinstance(v, bytes) for v in array.reshape(-1)):
                raise ValueError("want strings")
            return array
        array = np.array(decoded)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"want numbers, got {array.dtype}")
        return array.astype(spec.dtype.as_numpy_dtype)
    except ValueError as err:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name!r}: cannot read {str(value)[:80]} as "
                           f"{spec.dtype.name}: {err}") from err


def _json_output(array: np.ndarray) -> Any:
    if array.dtype.kind in "OS":
        def enc(v: bytes):
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(v).decode("ascii")}
        return np.vectorize(enc, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def rest_predict(core: ModelServerCore, servable: Servable, body: Mapping[str, Any]) -> dict:
    """TF Serving's REST predict: row ("instances") or columnar ("inputs") form."""
    signature_name = body.get("signature_name", "serving_default")
    signature = servable.signature(signature_name)
    if ("instances" in body) == ("inputs" in body):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           'request must have exactly one of "instances" or "inputs"')
    names = sorted(signature.inputs)
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, '"instances" must be a non-empty list')
        if all(isinstance(i, dict) and "b64" not in i for i in instances):
            keys = set(instances[0])
            if any(set(i) != keys for i in instances):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "every instance must name the same inputs")
            columns = {k: [i[k] for i in instances] for k in keys}
        elif len(names) == 1:
            columns = {names[0]: instances}
        else:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"signature has inputs {names}; instances must be objects naming them")
    else:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and "b64" not in inputs:
            columns = inputs
        elif len(names) == 1:
            columns = {names[0]: inputs}
        else:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"signature has inputs {names}; \"inputs\" must be an object")
    arrays = {k: _json_array(k, v, signature.inputs[k]) if k in signature.inputs
              else np.array(_decode_json_value(v), dtype=object) for k, v in columns.items()}
    outputs = core.predict(servable, signature_name, arrays, body.get("output_filter", ()))
    if "instances" in body:
        if len(outputs) == 1:
            return {"predictions": _json_output(next(iter(outputs.values())))}
        as_lists = {k: _json_output(v) for k, v in outputs.items()}
        rows = len(next(iter(as_lists.values())))
        return {"predictions": [{k: v[i] for k, v in as_lists.items()} for i in range(rows)]}
    if len(outputs) == 1:
        return {"outputs": _json_output(next(iter(outputs.values())))}
    return {"outputs": {k: _json_output(v) for k, v in outputs.items()}}


def rest_status(core: ModelServerCore, name: str, version: int | None) -> dict:
    return {"model_version_status": [
        {"version": str(v), "state": state, "status": {"error_code": "OK", "error_message": ""}}
        for v, state in core.status(name, version)]}


def rest_metadata(servable: Servable) -> dict:
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in servable.signature_defs.items():
        sig_map.signature_def[key].CopyFrom(sig)
    return {"model_spec": {"name": servable.name, "signature_name": "",
                           "version": str(servable.version)},
            "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(sig_map)}}


def make_rest_handler(core: ModelServerCore, max_body_bytes: int,
                      prometheus_path: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body leave as two writes; with Nagle on, the body waits for
        # the client's delayed ACK of the headers (~40 ms on Linux) every request.
        disable_nagle_algorithm = True

        def log_message(self, fmt, *args):  # route to logging, not stderr
            log.debug("rest %s", fmt % args)

        def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, err: ServingError) -> None:
            self._send(_HTTP_STATUS.get(err.code, 500), {"error": err.message})

        def _route(self):
            match = _REST_PATH.match(self.path.split("?", 1)[0])
            if not match:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"no REST route {self.path!r}; "
                                   "want /v1/models/<name>[/versions/<v>][/metadata|:predict]")
            version = int(match["version"]) if match["version"] else None
            return match, version

        def do_GET(self):  # noqa: N802
            if prometheus_path and self.path == prometheus_path:
                self._send(200, core.metrics.prometheus(), "text/plain; version=0.0.4")
                return
            try:
                match, version = self._route()
                if match["verb"]:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f":{match['verb']} needs POST")
                if match["metadata"]:
                    self._send(200, rest_metadata(core.servable(match["name"], version,
                                                                match["label"] or "")))
                else:
                    self._send(200, rest_status(core, match["name"], version))
            except ServingError as err:
                self._error(err)

        def do_POST(self):  # noqa: N802
            start, name, code = time.perf_counter(), "", grpc.StatusCode.OK
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > max_body_bytes:
                    self.rfile.read(length)  # drain so the connection stays usable
                    raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"request body of {length} bytes exceeds the "
                                       f"{max_body_bytes}-byte limit")
                raw = self.rfile.read(length)
                match, version = self._route()
                name = match["name"]
                if match["verb"] != "predict":
                    raise ServingError(grpc.StatusCode.UNIMPLEMENTED
                                       if match["verb"] else grpc.StatusCode.INVALID_ARGUMENT,
                                       f"POST {self.path}: only :predict is served")
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError as err:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"body is not JSON: {err}") from err
                if not isinstance(body, dict):
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "body must be a JSON object")
                servable = core.servable(name, version, match["label"] or "")
                self._send(200, rest_predict(core, servable, body))
            except ServingError as err:
                code = err.code
                self._error(err)
            finally:
                if name:
                    core.metrics.record(name, "predict_rest", code, time.perf_counter() - start)

    return Handler


class BackloggedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a listen backlog for bursts (the stdlib default is 5)."""

    request_queue_size = 256
    daemon_threads = True


class ReusePortHTTPServer(BackloggedHTTPServer):
    """BackloggedHTTPServer that shares its port with sibling worker processes."""

    allow_reuse_port = True


class ModelServer:
    """gRPC + REST servers over one ModelManager.

    Args:
      manager: loads and swaps model versions.
      batcher: optional server-side batching.
      max_message_bytes: gRPC receive/send limit and REST body limit; larger
        requests get RESOURCE_EXHAUSTED.
      prometheus_path: REST path of the metrics page, None for none.
      max_workers: gRPC handler threads.
    """

    def __init__(self, manager: ModelManager, batcher: Batcher | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 prometheus_path: str | None = None, max_workers: int = 16):
        self.core = ModelServerCore(manager, batcher)
        self.max_message_bytes = max_message_bytes
        self.prometheus_path = prometheus_path
        self.max_workers = max_workers
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self.grpc_port = self.rest_port = 0

    def start(self, host: str = "127.0.0.1", grpc_port: int = 8500,
              rest_port: int | None = 8501, reuse_port: bool = False) -> tuple[int, int]:
        """Binds and starts; port 0 picks a free one. Returns (grpc_port, rest_port).

        reuse_port: share the ports with sibling worker processes (SO_REUSEPORT);
        otherwise a port in use is an error.
        """
        options = [("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", self.max_message_bytes),
                   ("grpc.so_reuseport", int(reuse_port))]
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers),
                                 options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.core), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.core), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"{host}:{grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {host}:{grpc_port}")
        self._grpc.start()
        if rest_port is not None:
            handler = make_rest_handler(self.core, self.max_message_bytes, self.prometheus_path)
            self._http = (ReusePortHTTPServer if reuse_port else BackloggedHTTPServer)(
                (host, rest_port), handler)
            self._http.daemon_threads = True
            self.rest_port = self._http.server_address[1]
            threading.Thread(target=self._http.serve_forever, name="rest", daemon=True).start()
        return self.grpc_port, self.rest_port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait()
            self._grpc = None
        if self.core.batcher is not None:
            self.core.batcher.stop()


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags named as tensorflow_model_server names them, plus the path prefix."""
    parser.add_argument("--model_config_file", default="serving_configs/models.config")
    parser.add_argument("--model_base_path_prefix", default=None,
                        help="local root replacing the container mount (/models) of every "
                             "base_path in models.config, e.g. work/serving/models")
    parser.add_argument("--host", default="127.0.0.1",
                        help="bind address (loopback by default; 0.0.0.0 to expose)")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port")
    parser.add_argument("--rest_api_port", type=int, default=8501, help="REST port (0 = none)")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                        help="interval of the new-version poller")
    parser.add_argument("--enable_batching", action="store_true")
    parser.add_argument("--batching_parameters_file", default=None)
    parser.add_argument("--monitoring_config_file", default=None)
    parser.add_argument("--grpc_max_message_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    parser.add_argument("--grpc_max_threads", type=int, default=16)
    parser.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                        help="threads of one op (0 = TensorFlow's choice), as TF Serving's flag")
    parser.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                        help="ops run in parallel (0 = TensorFlow's choice), as TF Serving's flag")


def set_tensorflow_threads(intra_op: int, inter_op: int) -> None:
    """Applies the thread flags; must run before TensorFlow executes anything.

    Raises:
      RuntimeError: TensorFlow already initialized its thread pools.
    """
    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


def build_server(args: argparse.Namespace) -> tuple[ModelServer, ModelManager]:
    """A started-but-unbound server from parsed flags (initial versions loaded)."""
    set_tensorflow_threads(args.tensorflow_intra_op_parallelism,
                           args.tensorflow_inter_op_parallelism)
    entries = config_files.read_model_config(args.model_config_file, args.model_base_path_prefix)
    manager = ModelManager(entries)
    loaded = manager.poll_once()
    log.info("initial versions: %s", loaded)
    batcher = None
    if args.enable_batching:
        params = (config_files.read_batching_parameters(args.batching_parameters_file)
                  if args.batching_parameters_file else config_files.BatchingParameters())
        batcher = Batcher(params)
    prometheus = (config_files.read_prometheus_path(args.monitoring_config_file)
                  if args.monitoring_config_file else None)
    server = ModelServer(manager, batcher, args.grpc_max_message_bytes, prometheus,
                         args.grpc_max_threads)
    return server, manager


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_flags(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server, manager = build_server(args)
    grpc_port, rest_port = server.start(args.host, args.port,
                                        args.rest_api_port if args.rest_api_port else None)
    manager.start(args.file_system_poll_wait_seconds)
    log.info("serving gRPC on %s:%d, REST on %s:%s", args.host, grpc_port, args.host, rest_port or "-")
    freeze_heap()
    wait_for_termination()
    manager.stop()
    server.stop()


if __name__ == "__main__":
    main()
