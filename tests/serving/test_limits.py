"""Request size limits and the recommender's value checks, at their exact boundaries."""
import grpc
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2

from feature_contract import feature_config as fc
from serving.errors import ServingError
from serving.limits import RequestLimits, check_shape, proto_shapes
from serving.request_checks import (BadRequest, RequestRules, check_feature_value, check_id,
                                    check_k, check_timestamp)

LIMITS = RequestLimits(max_batch_size=10, max_tensor_elements=40, max_request_elements=60,
                       max_string_tensor_bytes=100)


def _strings(shape, values):
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    proto.string_val.extend(values)
    return proto


def _refused(call) -> str:
    with pytest.raises(ServingError) as info:
        call()
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    return info.value.message


def test_each_limit_at_its_boundary():
    assert check_shape("x", [10, 4], LIMITS) == 40  # exactly at both limits
    assert _refused(lambda: check_shape("x", [11], LIMITS)) == (
        "input 'x' declares 11 rows (shape [11]): over the limit of 10 (--max_batch_size)")
    assert _refused(lambda: check_shape("x", [10, 5], LIMITS)) == (
        "input 'x' declares 50 elements (shape [10, 5]): over the limit of 40 "
        "(--max_tensor_elements)")
    assert check_shape("scalar", [], LIMITS) == 1  # rank 0: one element, no rows
    # 40 + 20 = 60 elements in all is fine; one more is not.
    ok = {"a": _strings([10, 4], [b""]), "b": _strings([5, 4], [b""])}
    assert proto_shapes(ok, LIMITS) == {"a": [10, 4], "b": [5, 4]}
    assert _refused(lambda: proto_shapes({**ok, "c": _strings([1], [b""])}, LIMITS)) == (
        "the request declares 61 elements in all: over the limit of 60 (--max_request_elements)")


def test_a_repeated_string_counts_what_it_expands_to():
    # 2 values sent for 10 elements: the last repeats 8 times; 12 bytes x 8 = 96 <= 100.
    assert proto_shapes({"s": _strings([10], [b"a", b"x" * 12])}, LIMITS) == {"s": [10]}
    # 13 bytes x 8 = 104 > 100.
    assert _refused(lambda: proto_shapes({"s": _strings([10], [b"a", b"x" * 13])}, LIMITS)) == (
        "input 's' repeats a 13-byte string to 10 elements: over the limit of 100 "
        "(--max_string_tensor_bytes)")
    # All values sent: nothing repeats, the message limit already bounds them.
    proto_shapes({"s": _strings([2], [b"x" * 500, b"y" * 500])}, LIMITS)


def test_bad_shapes_are_invalid_argument():
    for proto in (_strings([-1], []), _strings([1] * 33, [])):
        with pytest.raises(ServingError) as info:
            proto_shapes({"x": proto}, LIMITS)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        RequestLimits(max_batch_size=0)


RULES = RequestRules(max_k=5, max_id_chars=4, max_value_chars=3)


@pytest.mark.parametrize("k,expected", [(1, 1), (5, 5), (3.0, 3), (2 ** 70, None), (0, None),
                                        (6, None), (2.5, None), (float("inf"), None),
                                        (float("nan"), None), ("3", None), (True, None)])
def test_k(k, expected):
    if expected is None:
        with pytest.raises(BadRequest, match=r"k must be an integer in 1\.\.5"):
            check_k(k, RULES)
    else:
        assert check_k(k, RULES) == expected


def test_ids_and_timestamps():
    assert check_id("abcd", "user_id", RULES) == "abcd" and check_id(42, "user_id", RULES) == "42"
    for bad in ("", "abcde", None, ["a"], 1.5, True):
        with pytest.raises(BadRequest):
            check_id(bad, "user_id", RULES)
    config = fc.load(fc.builtin_config_path("synthetic"))
    assert check_timestamp(config.min_timestamp, config) == float(config.min_timestamp)
    for bad in (config.min_timestamp - 1, config.max_timestamp + 1, 1e300, float("nan"), "1"):
        with pytest.raises(BadRequest, match="context.timestamp must be unix seconds"):
            check_timestamp(bad, config)


@pytest.mark.parametrize("kind,value,ok", [
    ("categorical", "abc", True), ("categorical", 7, True), ("categorical", "abcd", False),
    ("categorical", ["a"], False), ("categorical", {"a": 1}, False), ("categorical", None, True),
    ("numeric", 2.5, True), ("numeric", "2.5", True), ("numeric", "abc", False),
    ("numeric", float("inf"), False), ("numeric", 10 ** 400, False), ("numeric", True, False),
    ("tags", ["a", "b"], True), ("tags", "a|b", True), ("tags", ["a", "b", "c"], False),
    ("tags", "a|b|c", False), ("tags", 12345, False), ("tags", ["abcd"], False),
    ("tags", [["a"]], False)])
def test_feature_values(kind, value, ok):
    spec = fc.FeatureSpec(name="f", field="user", type=kind, source="users", max_len=2)
    if ok:
        assert check_feature_value(spec, value, "profile.f", RULES) is value
    else:
        with pytest.raises(BadRequest, match="profile.f"):
            check_feature_value(spec, value, "profile.f", RULES)
