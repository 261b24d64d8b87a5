"""Loaded SavedModel versions, the version manager and the Predict core.

The gRPC and REST front ends of serving.model_server both call into this
module, so request validation and its error codes are written once. Errors are
`ServingError(code, message)` with the grpc.StatusCode TF Serving returns for
the same mistake:

  unknown model / version          NOT_FOUND
  unknown signature / output       INVALID_ARGUMENT
  missing, extra, wrong dtype or
  shape of an input                INVALID_ARGUMENT
  failure inside the model graph   INVALID_ARGUMENT (bad values) / INTERNAL
  an input over a size limit       RESOURCE_EXHAUSTED (serving.limits, checked
                                   from the headers before anything is built)

Predict over gRPC takes the wire path (`validate_protos` + `run_wire`): each
signature gets, at load time, a companion graph that takes the request's
serialized TensorProtos, parses them with tf.io.parse_tensor (TensorFlow's own
Tensor::FromProto, as TF Serving uses), calls the signature and serializes the
outputs, all in one graph call. Converting each input to numpy and back to a
tensor in Python, plus binding ~20 keyword tensors to the signature, cost more
than the 500-candidate ranking graph itself (~2 ms of ~3 ms); on the wire path
the server's work is the graph call. REST (JSON) and server-side batching work
on numpy arrays and keep `validate_inputs` + `run_signature`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence

import grpc
import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402
from tensorflow_serving.apis import status_pb2  # noqa: E402

from serving.config_files import ModelEntry  # noqa: E402
from serving.errors import ServingError  # noqa: E402  (re-exported: callers import it from here)
from serving.lifecycle import Poller  # noqa: E402
from serving.limits import RequestLimits, check_arrays, proto_shapes  # noqa: E402

DEFAULT_SIGNATURE = "serving_default"
SAVED_MODEL_FILE = "saved_model.pb"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Signature:
    """One callable signature of a servable.

    Attributes:
      fn: the loaded concrete function, called with keyword tensors.
      inputs: input alias -> TensorSpec.
      outputs: output alias -> TensorSpec.
      wire: the wire-path graph ([inputs] serialized TensorProtos in sorted
        alias order -> [outputs] serialized TensorProtos in sorted alias
        order), None when the signature cannot have one.
      input_names, output_names: sorted aliases (the wire path's order).
      input_dims: input alias -> dims (None = any size), or None for any rank.
    """

    fn: Callable[..., Mapping[str, tf.Tensor]]
    inputs: Mapping[str, tf.TensorSpec]
    outputs: Mapping[str, tf.TensorSpec]
    wire: Callable[[tf.Tensor], tf.Tensor] | None = None
    input_names: list[str] = dataclasses.field(init=False)
    output_names: list[str] = dataclasses.field(init=False)
    input_dims: dict[str, tuple[int | None, ...] | None] = dataclasses.field(init=False)

    def __post_init__(self):
        # Derived once: per-request checks compare plain tuples, since
        # TensorShape methods cost microseconds on every input of every request.
        object.__setattr__(self, "input_names", sorted(self.inputs))
        object.__setattr__(self, "output_names", sorted(self.outputs))
        object.__setattr__(self, "input_dims", {
            k: None if s.shape.rank is None else tuple(s.shape.as_list())
            for k, s in self.inputs.items()})


def wire_function(fn: Callable[..., Mapping[str, tf.Tensor]], inputs: Mapping[str, tf.TensorSpec],
                  outputs: Mapping[str, tf.TensorSpec]) -> Callable[[tf.Tensor], tf.Tensor] | None:
    """The wire-path graph of a signature (see the module docstring), traced once.

    Returns None (the signature is served on the numpy path) when an input or
    output is not a plain dense tensor.
    """
    names, out_names = sorted(inputs), sorted(outputs)
    if not all(isinstance(s, tf.TensorSpec) for s in [*inputs.values(), *outputs.values()]):
        return None

    @tf.function(input_signature=[tf.TensorSpec([len(names)], tf.string)], autograph=False)
    def wire(protos: tf.Tensor) -> tf.Tensor:
        kwargs = {name: tf.ensure_shape(tf.io.parse_tensor(protos[i], inputs[name].dtype),
                                        inputs[name].shape)
                  for i, name in enumerate(names)}
        result = fn(**kwargs)
        return tf.stack([tf.io.serialize_tensor(result[k]) for k in out_names])

    try:
        concrete = wire.get_concrete_function()
    except (TypeError, ValueError, tf.errors.OpError) as err:
        log.warning("no wire path for a signature with inputs %s: %s", names, _first_line(err))
        return None
    return _flat_caller(concrete)


def _flat_caller(concrete) -> Callable[[tf.Tensor], tf.Tensor]:
    """Calls a one-input ConcreteFunction without re-binding its signature.

    The public call re-binds the argument to the function type and rebuilds
    the captured-input list on every call: ~0.05-0.25 ms, up to 15% of a
    500-candidate ranking call. `_call_flat` is ConcreteFunction's own inner
    call (TensorFlow is pinned in requirements.lock); without it, the public
    call is used.
    """
    call_flat = getattr(concrete, "_call_flat", None)
    if call_flat is None:
        return concrete
    captured = list(concrete.captured_inputs)  # variable handles: fixed for the servable's life
    return lambda protos: call_flat([protos], captured)


class Servable:
    """One loaded version of one model (immutable once built)."""

    def __init__(self, name: str, version: int, path: str):
        self.name = name
        self.version = version
        self.path = path
        self._loaded = tf.saved_model.load(path)  # keeps variables alive
        self.signatures: dict[str, Signature] = {}
        for key, fn in self._loaded.signatures.items():
            inputs, outputs = dict(fn.structured_input_signature[1]), dict(fn.structured_outputs)
            self.signatures[key] = Signature(fn, inputs, outputs,
                                             wire_function(fn, inputs, outputs))
        with tf.io.gfile.GFile(os.path.join(path, SAVED_MODEL_FILE), "rb") as f:
            proto = saved_model_pb2.SavedModel.FromString(f.read())
        # The SignatureDefs as TF Serving reports them in GetModelMetadata.
        self.signature_defs = dict(proto.meta_graphs[0].signature_def)
        self.loaded_at = time.time()

    def signature(self, name: str) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'Serving signature name: "{name}" not found in signature def of model '
                f"{self.name!r} version {self.version}; it has {sorted(self.signatures)}")
        return self.signatures[name]


def _dtype_name(dtype: tf.DType | str) -> str:
    """TF Serving's name for a dtype; a str (an unreadable dtype) is passed through."""
    if isinstance(dtype, str):
        return dtype
    return {"float32": "float", "float64": "double"}.get(dtype.name, dtype.name)


def _as_dtype(array: np.ndarray) -> tf.DType:
    if array.dtype.kind in "OSU":
        return tf.string
    return tf.as_dtype(array.dtype)


def _names(names: Sequence[str], limit: int = 20) -> str:
    """A name list for an error message, cut after `limit` (a request may send millions)."""
    names = sorted(names)
    shown = repr(names[:limit])
    return shown if len(names) <= limit else f"{shown[:-1]}, ... {len(names) - limit:,} more]"


def _check_names(signature: Signature, sent: set[str], output_filter: Sequence[str]) -> None:
    expected = set(signature.inputs)
    if sent != expected:
        extra, missing = sent - expected, expected - sent
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({_names(sent)}) != len({_names(expected)}). Sent extra: {_names(extra)}. "
            f"Missing but required: {_names(missing)}.")
    if len(output_filter) > len(signature.outputs):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"output_filter names {len(output_filter):,} outputs; the signature "
                           f"has {len(signature.outputs)}: {sorted(signature.outputs)}")
    for name in output_filter:
        if name not in signature.outputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {name[:200]}. Outputs expected to "
                f"be in the set {sorted(signature.outputs)}.")


def _compatible(dims: tuple[int | None, ...] | None, shape: Sequence[int]) -> bool:
    return dims is None or (len(dims) == len(shape)
                            and all(d is None or d == s for d, s in zip(dims, shape)))


def _check_tensor(signature: Signature, name: str, got: tf.DType | str,
                  shape: Sequence[int]) -> None:
    spec = signature.inputs[name]
    if got != spec.dtype:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Expects arg {name!r} to be {_dtype_name(spec.dtype)} but "
            f"{_dtype_name(got)} is provided")
    if not _compatible(signature.input_dims[name], shape):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input {name!r} has shape {list(shape)}, signature wants "
            f"{spec.shape.as_list() if spec.shape.rank is not None else 'any'} "
            f"(None = any size)")


def validate_inputs(signature: Signature, inputs: Mapping[str, np.ndarray],
                    output_filter: Sequence[str] = (),
                    limits: RequestLimits = RequestLimits()) -> None:
    """Checks names, size limits, dtypes and shapes against the signature.

    Raises:
      ServingError: INVALID_ARGUMENT naming the offending input or output;
        RESOURCE_EXHAUSTED over a size limit.
    """
    _check_names(signature, set(inputs), output_filter)
    check_arrays(inputs, limits)
    for name, array in inputs.items():
        _check_tensor(signature, name, _as_dtype(array), array.shape)


# Bytes per value in tensor_content, and the repeated field holding the values otherwise.
_VALUE_FIELDS = {types_pb2.DT_FLOAT: (4, "float_val"), types_pb2.DT_DOUBLE: (8, "double_val"),
                 types_pb2.DT_INT32: (4, "int_val"), types_pb2.DT_INT64: (8, "int64_val"),
                 types_pb2.DT_BOOL: (1, "bool_val")}


@functools.lru_cache(maxsize=None)
def _dtype_of_enum(enum: int) -> tf.DType | str:
    """tf.as_dtype of a DataType enum, cached (it is on every input of every request)."""
    try:
        return tf.as_dtype(enum)
    except TypeError:
        return f"unknown dtype {enum}"


def _values_problem(proto: tensor_pb2.TensorProto, count: int) -> str | None:
    """Why the proto's values cannot fill `count` elements, or None.

    Fewer values than elements is valid (TensorFlow repeats the last one);
    dtypes other than strings and _VALUE_FIELDS are left to the graph.
    """
    if proto.dtype == types_pb2.DT_STRING:
        if proto.tensor_content:
            return "strings in tensor_content"
        have = len(proto.string_val)
    elif proto.dtype in _VALUE_FIELDS:
        width, field = _VALUE_FIELDS[proto.dtype]
        if proto.tensor_content:
            have = len(proto.tensor_content)
            return None if have == count * width else f"{have} bytes of tensor_content"
        have = len(getattr(proto, field))
    else:
        return None
    return None if have <= count else f"{have} values"


def validate_protos(signature: Signature, protos: Mapping[str, tensor_pb2.TensorProto],
                    output_filter: Sequence[str] = (),
                    limits: RequestLimits = RequestLimits()) -> None:
    """validate_inputs for TensorProtos, read from their headers (no conversion).

    Also rejects a proto whose values cannot fill its shape: more values than
    elements, raw content of the wrong length, or a negative / unknown shape.

    Raises:
      ServingError: INVALID_ARGUMENT naming the offending input or output;
        RESOURCE_EXHAUSTED over a size limit (serving.limits).
    """
    _check_names(signature, set(protos), output_filter)
    shapes = proto_shapes(protos, limits)
    for name, proto in protos.items():
        got = _dtype_of_enum(proto.dtype)
        shape = shapes[name]
        _check_tensor(signature, name, got, shape)
        problem = _values_problem(proto, math.prod(shape))
        if problem is not None:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} is not a valid TensorProto: {problem} for shape "
                               f"{shape} of {got.name}")


def run_signature(signature: Signature, inputs: Mapping[str, np.ndarray],
                  output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Runs a validated request; returns output alias -> array.

    Raises:
      ServingError: INVALID_ARGUMENT when the graph rejects the values
        (e.g. batch sizes that do not line up), INTERNAL otherwise.
    """
    with _model_errors():
        tensors = {k: tf.constant(v, dtype=signature.inputs[k].dtype) for k, v in inputs.items()}
        outputs = signature.fn(**tensors)
    wanted = list(output_filter) or list(outputs)
    return {k: outputs[k].numpy() for k in wanted}


def run_wire(signature: Signature, protos: Mapping[str, tensor_pb2.TensorProto],
             output_filter: Sequence[str] = ()) -> dict[str, bytes]:
    """Runs a validated request on the wire path.

    Returns:
      output alias -> serialized TensorProto (parse it into the response).
    Raises:
      ServingError: as run_signature.
    """
    if signature.wire is None:
        raise ValueError("signature has no wire path; use run_signature")
    with _model_errors():
        packed = tf.constant([protos[n].SerializeToString() for n in signature.input_names],
                             dtype=tf.string)
        serialized = signature.wire(packed).numpy().tolist()
    outputs = dict(zip(signature.output_names, serialized))
    return {k: outputs[k] for k in (list(output_filter) or signature.output_names)}


@contextlib.contextmanager
def _model_errors() -> Iterator[None]:
    """Maps errors raised by a graph call to the status TF Serving gives them."""
    try:
        yield
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as err:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"model rejected the request: {_first_line(err)}") from err
    except tf.errors.OpError as err:
        raise ServingError(grpc.StatusCode.INTERNAL, f"model failed: {_first_line(err)}") from err


def _first_line(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def list_versions(base_path: str) -> list[int]:
    """Integer version dirs under base_path that hold a complete SavedModel.

    A directory without saved_model.pb is skipped: the Pusher (like TF
    Serving's convention) writes elsewhere and renames into place, so a
    half-written version is never picked up.
    """
    if not tf.io.gfile.isdir(base_path):
        return []
    versions = []
    for child in tf.io.gfile.listdir(base_path):
        child = child.rstrip("/")
        if child.isdigit() and tf.io.gfile.exists(os.path.join(base_path, child, SAVED_MODEL_FILE)):
            versions.append(int(child))
    return sorted(versions)


def desired_versions(entry: ModelEntry, on_disk: Sequence[int]) -> list[int]:
    """Versions the policy keeps loaded: latest N, or the pinned ones present."""
    if entry.specific_versions:
        return [v for v in on_disk if v in entry.specific_versions]
    return list(on_disk)[-entry.num_versions:]


# tensorflow.error.Code by name, as StatusProto.error_code carries it.
ERROR_CODES = dict(status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"]
                   .enum_type.values_by_name)
_ERROR_NAMES = {value.number: name for name, value in ERROR_CODES.items()}


@dataclasses.dataclass(frozen=True)
class LoadFailure:
    """A version that failed to load: TF Serving reports it in state END with this error.

    Attributes:
      error_code: tensorflow.error.Code name (e.g. DATA_LOSS, NOT_FOUND, UNKNOWN).
      message: the error's first line.
      fingerprint: what the version dir looked like when it failed
        (`version_fingerprint`); it is not tried again until that changes.
    """

    error_code: str
    message: str
    fingerprint: tuple

    def __str__(self) -> str:  # how callers print a failure (components.adapters does)
        return f"{self.error_code}: {self.message}"


def load_error_code(err: BaseException) -> str:
    """The tensorflow.error.Code name TF Serving would give a failed load.

    tf.saved_model.load raises plain Python errors, told apart by message: a
    truncated saved_model.pb is "Cannot parse file" (TF Serving: DATA_LOSS,
    "Can't parse saved_model.pb as binary proto"), an empty one has "0
    MetaGraphs" (TF Serving: NOT_FOUND, no meta graph with the serve tag).
    """
    if isinstance(err, tf.errors.OpError):
        return _ERROR_NAMES.get(err.error_code, "UNKNOWN")
    text = str(err)
    if isinstance(err, DecodeError) or "Cannot parse file" in text:
        return "DATA_LOSS"
    if isinstance(err, FileNotFoundError) or "MetaGraph" in text:
        return "NOT_FOUND"
    return "UNKNOWN"


def version_fingerprint(path: str) -> tuple:
    """(mtime, size) of the version dir and its saved_model.pb: a re-push changes it."""
    out = []
    for name in (path, os.path.join(path, SAVED_MODEL_FILE)):
        try:
            st = os.stat(name)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


class ModelManager:
    """Loads the versions each model's policy wants and swaps them atomically.

    `models` maps name -> {version: Servable}. A poll builds a fresh mapping
    and replaces the reference under a lock; a request that already holds a
    Servable keeps using it to the end, so a swap never fails in-flight
    requests, and an unloaded version is freed once its last request returns.

    A version that fails to load (any exception: a truncated saved_model.pb
    raises a protobuf DecodeError, an empty one an IndexError) is recorded in
    `load_failures`, logged once and counted in `failure_counts`; the model
    status APIs report it in state END with its error, as TF Serving does. It
    is not tried again until its files change (a re-push), so a bad version
    costs one log line, not one per poll; the versions already loaded keep
    serving, and with none loaded yet (start-up) the newest older version
    that loads is served instead (`_fallback`).
    """

    def __init__(self, entries: Sequence[ModelEntry],
                 loader: Callable[[str, int, str], Servable] = Servable):
        self.entries = {e.name: e for e in entries}
        self._loader = loader
        self._lock = threading.Lock()
        self._models: dict[str, dict[int, Servable]] = {e.name: {} for e in entries}
        self.load_failures: dict[tuple[str, int], LoadFailure] = {}
        self.failure_counts: Counter = Counter()
        self._poller = Poller(self.poll_once, "model-poller")
        self.poll_count = 0

    # ---- loading ---------------------------------------------------------
    def poll_once(self) -> dict[str, list[int]]:
        """Loads new versions and drops stale ones; returns name -> loaded versions."""
        for entry in self.entries.values():
            current = self._models.get(entry.name, {})
            on_disk = list_versions(entry.base_path)
            for key in [k for k in self.load_failures if k[0] == entry.name
                        and k[1] not in on_disk]:
                del self.load_failures[key]  # the bad version was removed
            want = desired_versions(entry, on_disk)
            if not want or sorted(current) == want:
                continue  # nothing on disk keeps what is loaded (TF Serving does too)
            fresh: dict[int, Servable] = {}
            for version in want:
                if version in current:
                    fresh[version] = current[version]
                    continue
                loaded = self._load(entry.name, version)
                if loaded is not None:
                    fresh[version] = loaded
            if not fresh and not current and not entry.specific_versions:
                fresh = self._fallback(entry.name, on_disk, want)
            if not fresh:
                continue  # every wanted version failed: keep serving the old ones
            with self._lock:
                models = dict(self._models)
                models[entry.name] = fresh
                self._models = models
        self.poll_count += 1
        return {name: sorted(versions) for name, versions in self._models.items()}

    def _fallback(self, name: str, on_disk: Sequence[int], failed: Sequence[int]
                  ) -> dict[int, Servable]:
        """The newest older version that loads, when nothing is loaded and the wanted ones failed.

        At start-up a corrupt latest version would otherwise leave the model
        unserved although the version before it is fine (a hot swap already
        keeps the old one). Each version is tried once (`_load` remembers).
        """
        for version in sorted(set(on_disk) - set(failed), reverse=True):
            servable = self._load(name, version)
            if servable is not None:
                log.warning("serving %s version %d: the newer %s failed to load", name, version,
                            sorted(failed))
                return {version: servable}
        return {}

    def _load(self, name: str, version: int) -> Servable | None:
        """One version, or None when it fails (recorded and logged once) or failed before."""
        path = os.path.join(self.entries[name].base_path, str(version))
        fingerprint = version_fingerprint(path)
        failed = self.load_failures.get((name, version))
        if failed is not None and failed.fingerprint == fingerprint:
            return None  # failed before and unchanged since
        try:
            servable = self._loader(name, version, path)
        except Exception as err:  # noqa: BLE001 - no broken version may stop the poller
            failure = LoadFailure(load_error_code(err), _first_line(err), fingerprint)
            self.load_failures[(name, version)] = failure
            self.failure_counts[name] += 1
            log.error("cannot load %s version %d from %s: %s: %s (state END; not retried until "
                      "its files change)", name, version, path, failure.error_code, failure.message)
            return None
        self.load_failures.pop((name, version), None)
        log.info("loaded %s version %d from %s", name, version, path)
        return servable

    def start(self, interval_s: float) -> None:
        """Polls for new versions every interval_s seconds on a daemon thread."""
        self._poller.start(interval_s)

    def stop(self) -> None:
        self._poller.stop()

    # ---- lookups ---------------------------------------------------------
    def versions(self, name: str) -> dict[int, Servable]:
        models = self._models  # one read: a consistent snapshot
        if name not in models:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Latest({name}); "
                               f"serving {sorted(models)}")
        return models[name]

    def get(self, name: str, version: int | None = None) -> Servable:
        """The requested version, or the latest loaded one.

        Raises:
          ServingError: NOT_FOUND for an unknown model, a model with nothing
            loaded, or a version that is not loaded.
        """
        versions = self.versions(name)
        if version is None:
            if not versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Latest({name}); "
                                   f"no version is loaded yet")
            return versions[max(versions)]
        if version not in versions:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({name}, {version}); "
                               f"loaded versions {sorted(versions)}")
        return versions[version]

    def status(self, name: str, version: int | None = None
               ) -> list[tuple[int, str, LoadFailure | None]]:
        """GetModelStatus rows: (version, state, failure), ascending by version.

        Loaded versions are AVAILABLE; versions that failed to load are END
        with their LoadFailure (TF Serving's ModelVersionStatus).

        Raises:
          ServingError: NOT_FOUND for an unknown model, or when the model (or
            the requested version) is neither loaded nor failed.
        """
        versions = self.versions(name)
        rows = {v: (v, "AVAILABLE", None) for v in versions}
        for (model, v), failure in list(self.load_failures.items()):
            if model == name and v not in rows:
                rows[v] = (v, "END", failure)
        if version is not None:
            if version not in rows:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Specific({name}, {version}); "
                                   f"loaded versions {sorted(versions)}")
            return [rows[version]]
        if not rows:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Latest({name}); "
                               f"no version is loaded yet")
        return [rows[v] for v in sorted(rows)]
