"""A TF Serving gRPC client using only the public API (works against real TF Serving).

Requests are built with tensorflow_serving.apis protos (tensors through
serving.tensors, which builds exactly tf.make_tensor_proto's protos, faster),
responses read likewise; nothing here knows which server answers.

  client = ModelServerClient("127.0.0.1:8500")
  out = client.predict("ranking", {"examples": serialized}, signature_name="serving_default")
  out["click"]  # np.ndarray [B]
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import tensor_pb2  # noqa: E402
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,  # noqa: E402
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving.tensors import to_ndarray, to_tensor_proto  # noqa: E402


@dataclasses.dataclass(frozen=True)
class PredictResult:
    """Outputs of one Predict plus the version that answered it."""

    outputs: dict[str, np.ndarray]
    model_version: int


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    dtype: tf.DType
    shape: tuple[int | None, ...] | None  # None: unknown rank


def _set_spec(spec, name: str, version: int | None, signature_name: str | None = None) -> None:
    spec.name = name
    if version is not None:
        spec.version.value = int(version)
    if signature_name is not None:
        spec.signature_name = signature_name


def make_predict_request(model: str, inputs: Mapping[str, Any], signature_name: str = "serving_default",
                         version: int | None = None,
                         output_filter: Sequence[str] = ()) -> predict_pb2.PredictRequest:
    """PredictRequest from numpy-like inputs (strings as str or bytes)."""
    request = predict_pb2.PredictRequest()
    _set_spec(request.model_spec, model, version, signature_name)
    for key, value in inputs.items():
        if isinstance(value, tensor_pb2.TensorProto):
            request.inputs[key].CopyFrom(value)
        else:
            to_tensor_proto(value, request.inputs[key])  # built in place: no copy of 500 rows
    request.output_filter.extend(output_filter)
    return request


class ModelServerClient:
    """Predict / GetModelMetadata / GetModelStatus against host:port.

    Args:
      target: "host:port" of the gRPC endpoint.
      timeout_s: per-call deadline.
      max_message_bytes: receive/send limit of the channel.
      root_certificates: PEM of the CA (or self-signed certificate) to trust:
        a TLS channel; None for a plain one.
      tls_server_name: name to check the server's certificate against when it
        is not the host of `target`.
    """

    def __init__(self, target: str, timeout_s: float = 10.0,
                 max_message_bytes: int = 64 << 20, root_certificates: bytes | None = None,
                 tls_server_name: str | None = None):
        self.target = target
        self.timeout_s = timeout_s
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if root_certificates is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            self._channel = grpc.secure_channel(
                target, grpc.ssl_channel_credentials(root_certificates), options=options)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    @classmethod
    def from_stub(cls, stub: Any, target: str = "in-process",
                  timeout_s: float = 10.0) -> "ModelServerClient":
        """A client over an object with the stubs' methods (Predict,
        GetModelMetadata, GetModelStatus), e.g. serving.model_server.InProcessStub.
        """
        client = cls.__new__(cls)
        client.target, client.timeout_s, client._channel = target, timeout_s, None
        client._predict = client._models = stub
        return client

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> "ModelServerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Blocks until the channel connects (raises grpc.FutureTimeoutError)."""
        if self._channel is not None:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)

    def predict_full(self, model: str, inputs: Mapping[str, Any],
                     signature_name: str = "serving_default", version: int | None = None,
                     output_filter: Sequence[str] = ()) -> PredictResult:
        """Predict; returns outputs and the version that served them.

        Raises:
          grpc.RpcError: the server's status (NOT_FOUND, INVALID_ARGUMENT, ...).
        """
        request = make_predict_request(model, inputs, signature_name, version, output_filter)
        response = self._predict.Predict(request, timeout=self.timeout_s)
        return PredictResult({k: to_ndarray(v) for k, v in response.outputs.items()},
                             response.model_spec.version.value)

    def predict(self, model: str, inputs: Mapping[str, Any],
                signature_name: str = "serving_default", version: int | None = None,
                output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Predict; returns output alias -> np.ndarray."""
        return self.predict_full(model, inputs, signature_name, version, output_filter).outputs

    def get_model_metadata(self, model: str, version: int | None = None
                           ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        _set_spec(request.model_spec, model, version)
        request.metadata_field.append("signature_def")
        return self._predict.GetModelMetadata(request, timeout=self.timeout_s)

    def signature_inputs(self, model: str, signature_name: str = "serving_default",
                         version: int | None = None) -> tuple[int, dict[str, TensorInfo]]:
        """(version, input alias -> dtype/shape) of one signature, from GetModelMetadata.

        Raises:
          KeyError: the model has no such signature.
        """
        response = self.get_model_metadata(model, version)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        if signature_name not in sig_map.signature_def:
            raise KeyError(f"model {model!r} has no signature {signature_name!r}; "
                           f"has {sorted(sig_map.signature_def)}")
        out = {}
        for alias, info in sig_map.signature_def[signature_name].inputs.items():
            shape = None if info.tensor_shape.unknown_rank else tuple(
                None if d.size < 0 else d.size for d in info.tensor_shape.dim)
            out[alias] = TensorInfo(tf.as_dtype(info.dtype), shape)
        return response.model_spec.version.value, out

    def get_model_status(self, model: str, version: int | None = None
                         ) -> get_model_status_pb2.GetModelStatusResponse:
        request = get_model_status_pb2.GetModelStatusRequest()
        _set_spec(request.model_spec, model, version)
        return self._models.GetModelStatus(request, timeout=self.timeout_s)

    def available_versions(self, model: str) -> list[int]:
        """Versions in state AVAILABLE ([] when the model is unknown)."""
        try:
            response = self.get_model_status(model)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise
        return sorted(s.version for s in response.model_version_status
                      if s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE)
