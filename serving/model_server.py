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
import binascii
import collections
import logging
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from typing import Any

import grpc
import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from tensorflow.core.framework import tensor_pb2  # noqa: E402
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,  # noqa: E402
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from serving import config_files  # noqa: E402
from serving.batching import Batcher  # noqa: E402
from serving.httpd import (HardenedHTTPServer, HttpError, HttpLimits,  # noqa: E402
                           JsonRequestHandler, ReusePortHTTPServer, parse_json)
from serving.limits import RequestLimits, proto_shapes  # noqa: E402
from serving.servables import (ERROR_CODES, ModelManager, Servable, ServingError,  # noqa: E402
                               run_signature, run_wire, validate_inputs, validate_protos)
from serving.tensors import to_ndarray, to_tensor_proto  # noqa: E402
from serving.lifecycle import freeze_heap, wait_for_termination  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
SIGNATURE_DEF_FIELD = "signature_def"
_HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
                grpc.StatusCode.RESOURCE_EXHAUSTED: 413, grpc.StatusCode.UNIMPLEMENTED: 501,
                grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.FAILED_PRECONDITION: 400,
                grpc.StatusCode.INTERNAL: 500}


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

    def prometheus(self, manager: ModelManager | None = None) -> str:
        """The Prometheus text page; with `manager`, also load failures and loaded versions."""
        lines = ["# TYPE feedrec_request_count counter",
                 "# TYPE feedrec_request_latency_seconds_sum counter"]
        with self._lock:
            for (model, api, code), n in sorted(self.count.items()):
                labels = f'model_name="{model}",API="{api}",status="{code}"'
                lines.append(f"feedrec_request_count{{{labels}}} {n}")
                lines.append(f"feedrec_request_latency_seconds_sum{{{labels}}} "
                             f"{self.seconds[(model, api, code)]:.6f}")
        if manager is not None:
            lines.append("# TYPE feedrec_model_load_failures_total counter")
            lines += [f'feedrec_model_load_failures_total{{model_name="{name}"}} '
                      f"{manager.failure_counts[name]}" for name in sorted(manager.entries)]
            lines.append("# TYPE feedrec_model_versions_loaded gauge")
            lines += [f'feedrec_model_versions_loaded{{model_name="{name}"}} '
                      f"{len(manager.versions(name))}" for name in sorted(manager.entries)]
        return "\n".join(lines) + "\n"


class ModelServerCore:
    """Everything both front ends share: lookup, validation, execution, metrics."""

    def __init__(self, manager: ModelManager, batcher: Batcher | None = None,
                 limits: RequestLimits = RequestLimits()):
        self.manager = manager
        self.batcher = batcher
        self.limits = limits
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
        validate_inputs(signature, inputs, output_filter, self.limits)
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
            proto_shapes(inputs, self.limits)  # sizes first: nothing is built past a limit
            arrays = {k: _to_ndarray(k, v) for k, v in inputs.items()}
            return self.predict(servable, signature_name, arrays, output_filter)
        validate_protos(signature, inputs, output_filter, self.limits)
        return run_wire(signature, inputs, output_filter)

    def prometheus(self) -> str:
        return self.metrics.prometheus(self.manager)


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
            rows = self.core.manager.status(request.model_spec.name, _version(request.model_spec))
        except ServingError as err:
            context.abort(err.code, err.message)
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state, failure in rows:
            status = response.model_version_status.add()
            status.version = version
            status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
            if failure is not None:  # END after a failed load, as TF Serving reports it
                status.status.error_code = ERROR_CODES[failure.error_code].number
                status.status.error_message = failure.message
        return response

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "config reload is not served; edit models.config and restart")


# ---- gRPC registration ---------------------------------------------------------------
class MalformedRequest:
    """What the request deserializer returns for bytes that are not the request message.

    gRPC Python answers a deserializer exception with INTERNAL "Exception
    deserializing request!" and a logged traceback per request; TF Serving
    answers INVALID_ARGUMENT. The handler turns this marker into that.
    """

    def __init__(self, type_name: str, err: Exception):
        self.message = f"request is not a valid {type_name}: {str(err)[:200] or type(err).__name__}"


def _tolerant(parse: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as err:  # noqa: BLE001 - DecodeError, RecursionError (nesting), ...
            return MalformedRequest(type_name, err)
    return deserialize


class ReadWatchdog:
    """Cancels calls whose request message has not fully arrived `timeout_s` after they began.

    gRPC Python's synchronous server gives a call its handler thread before
    the request message is in, and that thread waits for it without limit: a
    client that sends the headers and stalls holds a thread for as long as it
    likes, and 16 such calls (the pool) stop every other Predict. So the
    methods are served as stream-unary handlers (wire-compatible with unary
    clients), which read the one message themselves after arming this
    watchdog; one thread cancels the calls still waiting at their deadline.
    All deadlines are `now + timeout_s`, so arming is a deque append;
    disarming drops the entry's reference to the call (a call's state is
    ~19 KB, and a deque of finished calls kept for `timeout_s` grew the
    server by that much per request), and the thread clears finished
    entries at least every `sweep_s`.
    """

    sweep_s = 0.5

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._pending: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cancelled = 0

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="grpc-read-watchdog",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def arm(self, context: grpc.ServicerContext) -> list:
        """Registers a call; returns its entry, to be passed to `disarm`."""
        entry = [context, True]
        self._pending.append((time.monotonic() + self.timeout_s, entry))
        if len(self._pending) == 1:
            self._wake.set()
        return entry

    @staticmethod
    def disarm(entry: list) -> None:
        entry[1] = False
        entry[0] = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            while self._pending and (self._pending[0][0] <= now or not self._pending[0][1][1]):
                _, entry = self._pending.popleft()
                context = entry[0]
                if entry[1] and context is not None:
                    self.cancelled += 1
                    context.cancel()  # wakes the waiting handler thread, which exits quietly
            wait = min(self._pending[0][0] - now, self.sweep_s) if self._pending else None
            self._wake.wait(wait)
            self._wake.clear()


def _read_one(method: Callable[[Any, Any], Any], watchdog: ReadWatchdog, metrics: Metrics,
              api: str) -> Callable[[Any, Any], Any]:
    """A stream-unary behavior serving a unary `method`: reads the request under the watchdog."""
    def behavior(request_iterator, context):
        entry = watchdog.arm(context)
        try:
            request = next(request_iterator, None)  # a cancelled call raises: gRPC ends it quietly
        finally:
            watchdog.disarm(entry)
        if request is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request message")
        if isinstance(request, MalformedRequest):
            metrics.record("", api, grpc.StatusCode.INVALID_ARGUMENT, 0.0)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return method(request, context)
    return behavior


# The services' methods: name -> (request class, response class), as the generated
# *_pb2_grpc registration has them (the wheel's model_service_pb2 does not import on
# this protobuf, so the descriptors cannot be walked).
PREDICTION_METHODS = {
    "Classify": (classification_pb2.ClassificationRequest,
                 classification_pb2.ClassificationResponse),
    "Regress": (regression_pb2.RegressionRequest, regression_pb2.RegressionResponse),
    "Predict": (predict_pb2.PredictRequest, predict_pb2.PredictResponse),
    "MultiInference": (inference_pb2.MultiInferenceRequest, inference_pb2.MultiInferenceResponse),
    "GetModelMetadata": (get_model_metadata_pb2.GetModelMetadataRequest,
                         get_model_metadata_pb2.GetModelMetadataResponse)}
MODEL_METHODS = {
    "GetModelStatus": (get_model_status_pb2.GetModelStatusRequest,
                       get_model_status_pb2.GetModelStatusResponse),
    "HandleReloadConfigRequest": (model_management_pb2.ReloadConfigRequest,
                                  model_management_pb2.ReloadConfigResponse)}


def service_handler(service: str, methods: Mapping[str, tuple[Any, Any]], servicer: Any,
                    watchdog: ReadWatchdog, metrics: Metrics) -> grpc.GenericRpcHandler:
    """The generic handler of `service` (full name) serving `methods` on `servicer`."""
    handlers = {}
    for name, (request_class, response_class) in methods.items():
        handlers[name] = grpc.stream_unary_rpc_method_handler(
            _read_one(getattr(servicer, name), watchdog, metrics, name.lower()),
            request_deserializer=_tolerant(request_class.FromString,
                                           request_class.DESCRIPTOR.full_name),
            response_serializer=response_class.SerializeToString)
    return grpc.method_handlers_generic_handler(service, handlers)


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
    """JSON tensor values -> Python values: strings to UTF-8 bytes, {"b64": ...} decoded strictly.

    Raises:
      ValueError: an object other than {"b64": str}, or base64 that is not
        valid (b64decode without validate=True silently drops bad characters).
    """
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            encoded = value["b64"]
            if not isinstance(encoded, str):
                raise ValueError(f'"b64" wants a string, got {type(encoded).__name__}')
            try:
                return base64.b64decode(encoded, validate=True)
            except binascii.Error as err:
                raise ValueError(f"invalid base64 {encoded[:40]!r}: {err}") from err
        raise ValueError(f"unexpected object {str(value)[:80]}; only {{\"b64\": ...}} is allowed "
                         "in a tensor")
    if isinstance(value, list):
        return [_decode_json_value(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def _json_array(name: str, value: Any, spec: tf.TensorSpec | None) -> np.ndarray:
    """One input's JSON value as an array of the signature's dtype (any dtype when spec is None).

    Raises:
      ServingError: INVALID_ARGUMENT naming the input.
    """
    try:
        decoded = _decode_json_value(value)
        if spec is None:  # not an input of the signature: validation names it
            return np.array(decoded, dtype=object)
        if spec.dtype == tf.string:
            array = np.array(decoded, dtype=object)
            if any(not isinstance(v, bytes) for v in array.reshape(-1)):
                raise ValueError("want strings")
            return array
        array = np.array(decoded)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"want numbers, got {array.dtype}")
        return array.astype(spec.dtype.as_numpy_dtype)
    except (ValueError, TypeError, OverflowError) as err:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name[:100]!r}: cannot read {str(value)[:80]} as "
                           f"{spec.dtype.name if spec is not None else 'a tensor'}: "
                           f"{str(err)[:200]}") from err


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
    if not isinstance(signature_name, str):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, '"signature_name" must be a string')
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
    output_filter = body.get("output_filter", [])
    if not isinstance(output_filter, list) or not all(isinstance(o, str) for o in output_filter):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           '"output_filter" must be a list of output names')
    arrays = {k: _json_array(k, v, signature.inputs.get(k)) for k, v in columns.items()}
    outputs = core.predict(servable, signature_name, arrays, output_filter)
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
    """TF Serving's REST model status: AVAILABLE versions, and END ones with their load error."""
    return {"model_version_status": [
        {"version": str(v), "state": state,
         "status": {"error_code": failure.error_code if failure else "OK",
                    "error_message": failure.message if failure else ""}}
        for v, state, failure in core.manager.status(name, version)]}


def rest_metadata(servable: Servable) -> dict:
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in servable.signature_defs.items():
        sig_map.signature_def[key].CopyFrom(sig)
    return {"model_spec": {"name": servable.name, "signature_name": "",
                           "version": str(servable.version)},
            "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(sig_map)}}


def _http_error(err: ServingError) -> HttpError:
    return HttpError(_HTTP_STATUS.get(err.code, 500), err.message)


def _rest_route(path: str) -> tuple[re.Match, int | None]:
    match = _REST_PATH.match(path.split("?", 1)[0])
    if not match:
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"no REST route {path[:200]!r}; "
                           "want /v1/models/<name>[/versions/<v>][/metadata|:predict]")
    return match, int(match["version"]) if match["version"] else None


def make_rest_handler(core: ModelServerCore, limits: HttpLimits,
                      prometheus_path: str | None) -> type[JsonRequestHandler]:
    """TF Serving's REST API over `core` (timeouts, body rules and errors: serving.httpd)."""
    class Handler(JsonRequestHandler):
        def get(self):
            if prometheus_path and self.path == prometheus_path:
                self.send_json(200, core.prometheus(), content_type="text/plain; version=0.0.4")
                return
            try:
                match, version = _rest_route(self.path)
                if match["verb"]:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f":{match['verb']} needs POST")
                if match["metadata"]:
                    self.send_json(200, rest_metadata(core.servable(match["name"], version,
                                                                    match["label"] or "")))
                else:
                    self.send_json(200, rest_status(core, match["name"], version))
            except ServingError as err:
                raise _http_error(err) from err

        def post(self):
            start, name, code = time.perf_counter(), "", grpc.StatusCode.OK
            try:
                raw = self.read_body()  # before routing: the connection stays usable
                match, version = _rest_route(self.path)
                name = match["name"]
                if match["verb"] != "predict":
                    raise ServingError(grpc.StatusCode.UNIMPLEMENTED
                                       if match["verb"] else grpc.StatusCode.INVALID_ARGUMENT,
                                       f"POST {self.path[:200]}: only :predict is served")
                body = parse_json(raw)
                if not isinstance(body, dict):
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "body must be a JSON object")
                servable = core.servable(name, version, match["label"] or "")
                self.send_json(200, rest_predict(core, servable, body))
            except ServingError as err:
                code = err.code
                raise _http_error(err) from err
            except HttpError as err:
                code = (grpc.StatusCode.INVALID_ARGUMENT if err.status < 500
                        else grpc.StatusCode.INTERNAL)
                raise
            finally:
                if name:
                    core.metrics.record(name, "predict_rest", code, time.perf_counter() - start)

    Handler.limits = limits
    return Handler


class ModelServer:
    """gRPC + REST servers over one ModelManager.

    Args:
      manager: loads and swaps model versions.
      batcher: optional server-side batching.
      max_message_bytes: gRPC receive/send limit and REST body limit; larger
        requests get RESOURCE_EXHAUSTED.
      prometheus_path: REST path of the metrics page, None for none.
      max_workers: gRPC handler threads.
      limits: request size limits (serving.limits); default: RequestLimits
        with max_string_tensor_bytes = max_message_bytes.
      http_limits: REST timeouts and connection cap (serving.httpd); its
        read and idle timeouts also bound gRPC (a call's request must arrive
        within the read timeout; idle connections are closed).
      max_concurrent_rpcs: gRPC calls in progress at once; more are answered
        RESOURCE_EXHAUSTED at once. Default 4 x max_workers.
      ssl: TLS for both ports (config_files.read_ssl_config), None for plain.
    """

    def __init__(self, manager: ModelManager, batcher: Batcher | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 prometheus_path: str | None = None, max_workers: int = 16,
                 limits: RequestLimits | None = None, http_limits: HttpLimits | None = None,
                 max_concurrent_rpcs: int | None = None,
                 ssl: config_files.SslConfig | None = None):
        self.core = ModelServerCore(manager, batcher, limits or RequestLimits(
            max_string_tensor_bytes=max_message_bytes))
        self.max_message_bytes = max_message_bytes
        self.prometheus_path = prometheus_path
        self.max_workers = max_workers
        self.http_limits = http_limits or HttpLimits(max_body_bytes=max_message_bytes)
        self.max_concurrent_rpcs = max_concurrent_rpcs or 4 * max_workers
        self.ssl = ssl
        self.watchdog = ReadWatchdog(self.http_limits.read_timeout_s)
        self._grpc: grpc.Server | None = None
        self._http: HardenedHTTPServer | None = None
        self.grpc_port = self.rest_port = 0

    def start(self, host: str = "127.0.0.1", grpc_port: int = 8500,
              rest_port: int | None = 8501, reuse_port: bool = False) -> tuple[int, int]:
        """Binds and starts; port 0 picks a free one. Returns (grpc_port, rest_port).

        reuse_port: share the ports with sibling worker processes (SO_REUSEPORT);
        otherwise a port in use is an error.
        """
        limits = self.http_limits
        options = [("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", self.max_message_bytes),
                   ("grpc.so_reuseport", int(reuse_port)),
                   ("grpc.max_connection_idle_ms", int(limits.idle_timeout_s * 1000)),
                   ("grpc.server_handshake_timeout_ms", int(limits.read_timeout_s * 1000))]
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers),
                                 options=options, maximum_concurrent_rpcs=self.max_concurrent_rpcs)
        self._grpc.add_generic_rpc_handlers((
            service_handler("tensorflow.serving.PredictionService", PREDICTION_METHODS,
                            PredictionServicer(self.core), self.watchdog, self.core.metrics),
            service_handler("tensorflow.serving.ModelService", MODEL_METHODS,
                            ModelServicer(self.core), self.watchdog, self.core.metrics)))
        address = f"{host}:{grpc_port}"
        self.grpc_port = (self._grpc.add_secure_port(address, self.ssl.grpc_credentials())
                          if self.ssl else self._grpc.add_insecure_port(address))
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {host}:{grpc_port}")
        self.watchdog.start()
        self._grpc.start()
        if rest_port is not None:
            handler = make_rest_handler(self.core, limits, self.prometheus_path)
            self._http = (ReusePortHTTPServer if reuse_port else HardenedHTTPServer)(
                (host, rest_port), handler,
                ssl_context=self.ssl.http_context() if self.ssl else None)
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
        self.watchdog.stop()
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
    parser.add_argument("--grpc_max_message_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest gRPC message and REST body (RESOURCE_EXHAUSTED / 413 above)")
    parser.add_argument("--grpc_max_threads", type=int, default=16)
    parser.add_argument("--grpc_max_concurrent_rpcs", type=int, default=0,
                        help="gRPC calls in progress at once; more get RESOURCE_EXHAUSTED at once "
                             "(0 = 4 x --grpc_max_threads)")
    defaults = RequestLimits()
    parser.add_argument("--max_batch_size", type=int, default=defaults.max_batch_size,
                        help="rows (leading dimension) of any Predict input (serving.limits)")
    parser.add_argument("--max_tensor_elements", type=int, default=defaults.max_tensor_elements,
                        help="elements of one Predict input")
    parser.add_argument("--max_request_elements", type=int, default=defaults.max_request_elements,
                        help="elements of all inputs of one Predict")
    parser.add_argument("--max_string_tensor_bytes", type=int, default=0,
                        help="bytes a string input may expand to when it repeats its last value "
                             "(0 = --grpc_max_message_bytes)")
    http = HttpLimits()
    parser.add_argument("--read_timeout_seconds", type=float, default=http.read_timeout_s,
                        help="a request (HTTP line, headers and body; a gRPC call's message) must "
                             "arrive within this of its start")
    parser.add_argument("--idle_timeout_seconds", type=float, default=http.idle_timeout_s,
                        help="idle keep-alive HTTP / gRPC connections are closed after this")
    parser.add_argument("--http_max_connections", type=int, default=http.max_connections,
                        help="connections each HTTP port serves at once (one thread each); more "
                             "are answered 503 and closed")
    parser.add_argument("--ssl_config_file", default=None,
                        help="TF Serving SSLConfig text proto (server_key, server_cert, custom_ca, "
                             "client_verify): TLS on gRPC and HTTPS on the HTTP ports")
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
                         args.grpc_max_threads, request_limits(args),
                         http_limits(args, args.grpc_max_message_bytes),
                         args.grpc_max_concurrent_rpcs or None, ssl_config(args))
    return server, manager


def request_limits(args: argparse.Namespace) -> RequestLimits:
    """RequestLimits from the flags."""
    return RequestLimits(args.max_batch_size, args.max_tensor_elements, args.max_request_elements,
                         args.max_string_tensor_bytes or args.grpc_max_message_bytes)


def http_limits(args: argparse.Namespace, max_body_bytes: int) -> HttpLimits:
    """HttpLimits of one HTTP port from the flags."""
    return HttpLimits(args.read_timeout_seconds, args.idle_timeout_seconds,
                      args.http_max_connections, max_body_bytes)


def ssl_config(args: argparse.Namespace) -> config_files.SslConfig | None:
    """The --ssl_config_file, read (None without the flag)."""
    return config_files.read_ssl_config(args.ssl_config_file) if args.ssl_config_file else None


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
