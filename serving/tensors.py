"""Fast numpy <-> TensorProto conversion for the Predict hot path.

tf.make_tensor_proto / tf.make_ndarray are general but slow on the request
path: they walk string tensors element by element in Python (as_bytes per
value), which for a 500-candidate ranking request was ~1.2 ms of the client's
CPU and a similar share on the server. These two functions take the common
cases through whole-array calls (`string_val.extend(list)`, `tensor_content`,
`np.frombuffer`) and hand everything else to TensorFlow, so the protos they
build are exactly those tf.make_tensor_proto builds (tests compare the
serialized bytes) and the wire format stays TF Serving's.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402

# make_tensor_proto writes these dtypes as raw tensor_content once a tensor has
# more than one element (float64 / int64 it first narrows, so they fall back).
_CONTENT_DTYPES = {np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.int32): types_pb2.DT_INT32}
# Reading: raw tensor_content, or the repeated *_val field of a 0/1-element tensor.
_READ_DTYPES = {types_pb2.DT_FLOAT: (np.float32, "float_val"),
                types_pb2.DT_DOUBLE: (np.float64, "double_val"),
                types_pb2.DT_INT32: (np.int32, "int_val"),
                types_pb2.DT_INT64: (np.int64, "int64_val")}


def _set_shape(proto: tensor_pb2.TensorProto, shape: tuple[int, ...]) -> None:
    dims = proto.tensor_shape.dim
    for size in shape:
        dims.add().size = size


def to_tensor_proto(value: Any, out: tensor_pb2.TensorProto | None = None
                    ) -> tensor_pb2.TensorProto:
    """A TensorProto equal to tf.make_tensor_proto(value).

    Fast for object arrays of bytes / str (any rank, e.g. [N] or [N, L]) and
    float32 / int32 arrays; other values go through tf.make_tensor_proto.

    Args:
      value: np.ndarray (or anything tf.make_tensor_proto accepts).
      out: an empty TensorProto to fill in place (e.g. `request.inputs[key]`,
        saving a copy of a large tensor); a new one when None.
    Returns:
      The filled TensorProto (`out` when given).
    Raises:
      TypeError / ValueError: as tf.make_tensor_proto for values it rejects.
    """
    proto = tensor_pb2.TensorProto() if out is None else out
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            try:
                # upb encodes str as UTF-8, as compat.as_bytes does; anything
                # else raises TypeError and takes TensorFlow's path and message.
                proto.string_val.extend(value.ravel().tolist())
            except TypeError:
                proto.Clear()
            else:
                proto.dtype = types_pb2.DT_STRING
                _set_shape(proto, value.shape)
                return proto
        datatype = _CONTENT_DTYPES.get(value.dtype)
        if datatype is not None and value.size > 1:
            proto.dtype = datatype
            _set_shape(proto, value.shape)
            proto.tensor_content = np.ascontiguousarray(value).tobytes()
            return proto
    proto.CopyFrom(tf.make_tensor_proto(value))
    return proto


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """np.ndarray equal to tf.make_ndarray(proto) (strings as an object array of bytes).

    Fast for strings and float / double / int32 / int64 tensors whose values
    are all present; anything else (broadcast short value lists, other
    dtypes) goes through tf.make_ndarray.

    Raises:
      TypeError / ValueError: as tf.make_ndarray for a malformed proto.
    """
    shape = [d.size for d in proto.tensor_shape.dim]
    count = 1
    for size in shape:
        count *= size
    if proto.dtype == types_pb2.DT_STRING and not proto.tensor_content:
        values = proto.string_val
        if len(values) == count and count >= 0:
            out = np.empty(count, dtype=object)
            out[:] = list(values)  # a plain list: np.array would parse bytes into 'S'
            return out.reshape(shape)
    elif proto.dtype in _READ_DTYPES and count >= 0:
        dtype, field = _READ_DTYPES[proto.dtype]
        if proto.tensor_content:
            if len(proto.tensor_content) == count * np.dtype(dtype).itemsize:
                return np.frombuffer(proto.tensor_content, dtype=dtype).copy().reshape(shape)
        else:
            values = getattr(proto, field)
            if len(values) == count:
                return np.array(values, dtype=dtype).reshape(shape)
    return tf.make_ndarray(proto)
