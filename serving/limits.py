"""Size limits of a Predict request, checked from its headers before any tensor is built.

A TensorProto declares its shape in a few bytes, and TensorFlow fills a
declared shape from fewer values by repeating the last one (TF Serving too),
so a 37-byte Predict can ask for a million-row tensor. Before these checks one
such request took 26 s and grew the server by 4.6 GB, never released; a
declared 2^40 elements held a handler for 10 s. Every check here reads the
shape header and the value count of each input: O(number of inputs), a few
microseconds on the hot path, whatever the declared size.

Limits (flags of serving.model_server, defaults below):
  max_batch_size          rows (leading dimension) of any input        8,192
  max_tensor_elements     elements of one input                      262,144
  max_request_elements    elements of all inputs together          1,048,576
  max_string_tensor_bytes bytes of one string input once its repeated
                          last value is expanded                 the message limit (64 MiB)
The recommender's own ranking request (500 candidates, ~20 inputs) declares
~15,000 elements, so the defaults leave it a 64x margin and bound the worst
request to about what a full-size message could carry anyway.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import ServingError

MAX_RANK = 32  # TensorFlow allows 254; no served signature has more than 2


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """Per-request size limits (see the module docstring).

    Attributes:
      max_batch_size: rows (leading dimension) of any input.
      max_tensor_elements: elements of one input.
      max_request_elements: elements of all inputs of a request.
      max_string_tensor_bytes: bytes one string input may expand to when it
        sends fewer values than elements (the last one is repeated).
    """

    max_batch_size: int = 8192
    max_tensor_elements: int = 1 << 18
    max_request_elements: int = 1 << 20
    max_string_tensor_bytes: int = 64 << 20

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"{field.name} must be >= 1, got {getattr(self, field.name)}")


def _too_large(what: str, limit: int, flag: str) -> ServingError:
    return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"{what}: over the limit of {limit:,} (--{flag})")


def check_shape(name: str, shape: Sequence[int], limits: RequestLimits) -> int:
    """Checks one input's declared shape; returns its element count.

    Raises:
      ServingError: RESOURCE_EXHAUSTED over a limit.
    """
    if shape and shape[0] > limits.max_batch_size:
        raise _too_large(f"input {name!r} declares {shape[0]:,} rows (shape {list(shape)})",
                         limits.max_batch_size, "max_batch_size")
    count = math.prod(shape)
    if count > limits.max_tensor_elements:
        raise _too_large(f"input {name!r} declares {count:,} elements (shape {list(shape)})",
                         limits.max_tensor_elements, "max_tensor_elements")
    return count


def _check_total(total: int, limits: RequestLimits) -> None:
    if total > limits.max_request_elements:
        raise _too_large(f"the request declares {total:,} elements in all",
                         limits.max_request_elements, "max_request_elements")


def proto_shapes(protos: Mapping[str, tensor_pb2.TensorProto], limits: RequestLimits
                 ) -> dict[str, list[int]]:
    """Shape of every input, read from the headers and checked against `limits`.

    Returns:
      input alias -> shape.
    Raises:
      ServingError: INVALID_ARGUMENT for an unknown, negative or over-rank
        shape; RESOURCE_EXHAUSTED over a limit.
    """
    shapes, total = {}, 0
    for name, proto in protos.items():
        dims = proto.tensor_shape.dim
        if proto.tensor_shape.unknown_rank or len(dims) > MAX_RANK:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} is not a valid TensorProto: its shape is unknown "
                               f"or has more than {MAX_RANK} dimensions")
        shape = [d.size for d in dims]
        if any(size < 0 for size in shape):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} is not a valid TensorProto: its shape is unknown")
        count = check_shape(name, shape, limits)
        total += count
        if proto.dtype == types_pb2.DT_STRING:
            values = proto.string_val
            if 0 < len(values) < count:  # TensorFlow repeats the last value to fill the shape
                expanded = (count - len(values)) * len(values[-1])
                if expanded > limits.max_string_tensor_bytes:
                    raise _too_large(f"input {name!r} repeats a {len(values[-1]):,}-byte string "
                                     f"to {count:,} elements", limits.max_string_tensor_bytes,
                                     "max_string_tensor_bytes")
        shapes[name] = shape
    _check_total(total, limits)
    return shapes


def check_arrays(arrays: Mapping[str, np.ndarray], limits: RequestLimits) -> None:
    """The same limits for inputs already decoded (REST JSON).

    Raises:
      ServingError: RESOURCE_EXHAUSTED over a limit.
    """
    _check_total(sum(check_shape(name, array.shape, limits) for name, array in arrays.items()),
                 limits)
