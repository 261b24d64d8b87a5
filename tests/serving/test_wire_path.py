"""The model server's wire path: TensorProtos parsed and outputs serialized inside one graph."""
import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving import model_server
from serving.servables import (ModelManager, Servable, ServingError, Signature, run_signature,
                               run_wire, validate_protos)
from serving.tensors import to_tensor_proto

from .test_model_server import _code, _examples, _tower_inputs


@pytest.fixture(scope="module")
def servables(world):
    return {name: Servable(name, 1, world[name])
            for name in ("ranking", "ranking_multitask", "user_tower_two_tower")}


def _ranking_inputs(config, n: int = 4) -> dict:
    """score_candidates inputs: user/context batch 1, item features batch n."""
    out = {}
    for spec in config.features:
        rows = n if spec.field == "item" else 1
        if spec.type == "numeric":
            out[spec.name] = np.linspace(0, 5, rows).astype(np.float32)
        elif spec.type == "categorical":
            out[spec.name] = np.array([f"{spec.name}_{i % 3}".encode() for i in range(rows)],
                                      dtype=object)
        else:
            out[spec.name] = np.array([[b"a", b"b"], [b"c", b""]] * rows, dtype=object)[:rows]
    return out


def _protos(arrays: dict) -> dict:
    return {k: to_tensor_proto(v) for k, v in arrays.items()}


def _outputs(serialized: dict) -> dict:
    return {k: tf.make_ndarray(tensor_pb2.TensorProto.FromString(v)) for k, v in serialized.items()}


@pytest.mark.parametrize("model,signature_name", [
    ("ranking", "serving_default"), ("ranking_multitask", "serving_default"),
    ("ranking", "score_candidates"), ("user_tower_two_tower", "serving_default")])
def test_wire_path_equals_the_numpy_path(servables, config, model, signature_name):
    if signature_name == "score_candidates":
        inputs = {k: v for k, v in _ranking_inputs(config).items()
                  if k in servables[model].signature(signature_name).inputs}
    elif model.startswith("ranking"):
        inputs = {"examples": _examples(6)}
    else:
        inputs = _tower_inputs(config, 3)
    signature = servables[model].signature(signature_name)
    protos = _protos(inputs)
    served = model_server.ModelServerCore(ModelManager([])).predict_protos(
        servables[model], signature_name, protos)
    assert all(isinstance(v, bytes) for v in served.values())  # the server took the wire path
    wire = _outputs(served)
    numpy = run_signature(signature, inputs)
    assert set(wire) == set(numpy) == set(signature.outputs)
    for key in numpy:
        assert wire[key].dtype == numpy[key].dtype and wire[key].shape == numpy[key].shape
        np.testing.assert_allclose(wire[key], numpy[key], rtol=1e-6)
    only = run_wire(signature, protos, [sorted(signature.outputs)[0]])
    assert list(only) == [sorted(signature.outputs)[0]]


def test_short_value_lists_broadcast_as_tensorflow_does(servables, config):
    """Fewer values than elements: TensorFlow repeats the last one (TF Serving too)."""
    signature = servables["user_tower_two_tower"].signature("serving_default")
    inputs = _tower_inputs(config, 3)
    protos = _protos(inputs)
    city = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    city.tensor_shape.dim.add().size = 3
    city.string_val.append(b"city_1")
    protos["city"] = city
    validate_protos(signature, protos)
    wire = _outputs(run_wire(signature, protos))
    inputs["city"] = np.array([b"city_1"] * 3, dtype=object)
    np.testing.assert_allclose(wire["user_embedding"],
                               run_signature(signature, inputs)["user_embedding"], rtol=1e-6)


def _invalid(signature: Signature, protos: dict) -> str:
    with pytest.raises(ServingError) as info:
        validate_protos(signature, protos)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return info.value.message


def test_malformed_protos_are_invalid_argument_naming_the_input(servables, config):
    signature = servables["ranking"].signature("score_candidates")
    good = _protos({k: v for k, v in _ranking_inputs(config).items() if k in signature.inputs})

    too_many = tensor_pb2.TensorProto()
    too_many.CopyFrom(good["item_id"])
    too_many.string_val.append(b"one_more")
    assert "'item_id' is not a valid TensorProto: 5 values for shape [4]" in _invalid(
        signature, {**good, "item_id": too_many})

    short_content = tensor_pb2.TensorProto()
    short_content.CopyFrom(good["item_age_hours"])
    short_content.tensor_content = short_content.tensor_content[:-4]
    assert "'item_age_hours' is not a valid TensorProto: 12 bytes" in _invalid(
        signature, {**good, "item_age_hours": short_content})

    raw_strings = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_content=b"abcd")
    raw_strings.tensor_shape.dim.add().size = 4
    assert "'item_id' is not a valid TensorProto: strings in tensor_content" in _invalid(
        signature, {**good, "item_id": raw_strings})

    unknown = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    unknown.tensor_shape.unknown_rank = True
    assert "shape is unknown" in _invalid(signature, {**good, "item_id": unknown})

    as_floats = to_tensor_proto(np.zeros(4, np.float32))
    assert "Expects arg 'item_id' to be string but float is provided" in _invalid(
        signature, {**good, "item_id": as_floats})

    rank3 = to_tensor_proto(np.array([[[b"x"]]], dtype=object))
    assert "'item_id' has shape [1, 1, 1]" in _invalid(signature, {**good, "item_id": rank3})

    missing = dict(good)
    del missing["item_id"]
    assert "Missing but required: ['item_id']" in _invalid(signature, missing)


def test_malformed_proto_over_grpc_is_invalid_argument_and_serving_goes_on(client):
    too_many = to_tensor_proto(_examples(2))
    too_many.string_val.append(b"extra")
    code, details = _code(lambda: client.predict("ranking", {"examples": too_many}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "3 values for shape [2]" in details
    assert client.predict("ranking", {"examples": _examples(2)})["click"].shape == (2,)


def test_signature_without_wire_path_is_served_on_the_numpy_path(servables, config):
    servable = servables["user_tower_two_tower"]
    original = servable.signatures["serving_default"]
    servable.signatures["serving_default"] = Signature(original.fn, original.inputs,
                                                       original.outputs, wire=None)
    try:
        core = model_server.ModelServerCore(ModelManager([]))
        inputs = _tower_inputs(config, 2)
        out = core.predict_protos(servable, "serving_default", _protos(inputs))
        assert isinstance(out["user_embedding"], np.ndarray)
        np.testing.assert_allclose(out["user_embedding"],
                                   run_signature(original, inputs)["user_embedding"], rtol=1e-6)
    finally:
        servable.signatures["serving_default"] = original


def test_wire_function_declines_composite_signatures():
    from serving.servables import wire_function
    ragged = {"x": tf.RaggedTensorSpec([None, None], tf.float32)}
    assert wire_function(lambda **kw: kw, ragged, {"y": tf.TensorSpec([None], tf.float32)}) is None
