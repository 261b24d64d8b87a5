"""beam_jobs.example_encoding writes the bytes protobuf writes for the same tf.Example.

A one-feature example's map has one entry, so its serialization is fixed and
the hand encoder must match `tf.train.Example.SerializeToString` byte for
byte: empty lists, unicode keys and values, negative and extreme int64s,
float NaN / inf / -0.0, values long enough for 2- and 3-byte length varints,
and every varint length of the int64 entry maker. Examples with several
features keep the job's feature order (protobuf's map order is its own), so
those are compared parsed, entry by entry. The one difference (an empty
numeric list, which the job never writes) is pinned by its own test.
"""

import math
import struct

import pytest
import tensorflow as tf

from beam_jobs import example_encoding as enc


def proto_bytes(key, **kind):
    """SerializeToString of a one-feature tf.Example (kind: bytes_list / int64_list / float_list)."""
    (name, values), = kind.items()
    list_type = {"bytes_list": tf.train.BytesList, "int64_list": tf.train.Int64List,
                 "float_list": tf.train.FloatList}[name]
    feature = tf.train.Feature(**{name: list_type(value=values)})
    return tf.train.Example(features=tf.train.Features(feature={key: feature})).SerializeToString()


@pytest.mark.parametrize("key, values", [
    ("s", [b"a"]),
    ("empty", []),
    ("several", [b"a", b"", b"bc"]),
    ("unicode_\u00e9", ["\u00e9\u4e2d\U0001f600".encode()]),
    ("long", [b"x" * 200]),  # 2-byte length varints
    ("longer", [b"y" * 20_000, b"z" * 3]),  # 3-byte length varints
])
def test_bytes_entry_equals_protobuf(key, values):
    assert enc.example_bytes([enc.bytes_entry(key.encode(), values)]) == proto_bytes(
        key, bytes_list=values)


@pytest.mark.parametrize("values", [
    [0], [1, 127, 128, 300], [-1], [-7, 2**40], [2**63 - 1, -2**63],
    list(range(-50, 400, 7)),
])
def test_int64_entry_equals_protobuf(values):
    assert enc.example_bytes([enc.int64_entry(b"i", values)]) == proto_bytes(
        "i", int64_list=values)


@pytest.mark.parametrize("values", [
    [0.0], [-0.0], [1.5, -2.25], [1e-40, 3.4e38], [math.inf, -math.inf],
    [0.1, 1 / 3],  # rounded to float32 the same way
])
def test_float_entry_equals_protobuf(values):
    assert enc.example_bytes([enc.float_entry(b"f", values)]) == proto_bytes(
        "f", float_list=values)


def test_empty_numeric_lists_carry_an_empty_packed_field_protobuf_leaves_out():
    """The one known difference: an empty Int64List / FloatList.

    The encoder writes the list's packed `value` field with length 0
    (bytes 0a 00); protobuf writes the list message empty. Both parse to an
    empty list. The job never writes one (every numeric feature holds one
    value), so its outputs are unaffected; this pins today's bytes.
    """
    for entry, kind, tag in ((enc.int64_entry(b"i", []), "int64_list", b"\x1a"),
                             (enc.float_entry(b"f", []), "float_list", b"\x12")):
        key = entry[4:5]
        ours = enc.example_bytes([entry])
        assert ours == b"\n\x0b\n\t\n\x01" + key + b"\x12\x04" + tag + b"\x02\n\x00"
        assert proto_bytes(key.decode(), **{kind: []}) == (
            b"\n\t\n\x07\n\x01" + key + b"\x12\x02" + tag + b"\x00")
        parsed = tf.train.Example.FromString(ours).features.feature[key.decode()]
        assert list(getattr(parsed, kind).value) == []


def test_float_nan_keeps_protobufs_bits():
    ours = enc.example_bytes([enc.float_entry(b"f", [math.nan])])
    assert ours == proto_bytes("f", float_list=[math.nan])
    assert ours[-4:] == struct.pack("<f", math.nan)


@pytest.mark.parametrize("value", [
    0, 1, 127, 128, 16_383, 16_384, 2**28 - 1, 2**28, 1_767_225_773, 2**35 - 1, 2**35,
    2**62,
])
def test_int64_entry_maker_equals_protobuf_at_every_varint_length(value):
    make = enc.int64_entry_maker(b"timestamp")
    assert enc.example_bytes([make(value)]) == proto_bytes("timestamp", int64_list=[value])
    assert make(value) == enc.int64_entry(b"timestamp", [value])  # the cached prefix path


@pytest.mark.parametrize("value", [0.0, -3.5, 1e10, math.inf])
def test_float_entry_maker_equals_float_entry(value):
    assert enc.float_entry_maker(b"age")(value) == enc.float_entry(b"age", [value])


# The entry nests four lengths (value, BytesList, Feature, map entry); from
# 115 to 130 bytes each of them crosses the 1- to 2-byte varint boundary in
# turn (at 119, 124, 126, 128 for the key "s"), and 16,384 the 2- to 3-byte one.
@pytest.mark.parametrize("length", [0, 1, *range(115, 131), 16_380, 16_384])
def test_bytes_value_entry_maker_equals_protobuf_at_every_length(length):
    make = enc.bytes_value_entry_maker(b"s")
    value = b"v" * length
    for _ in range(2):  # the first call builds the length's prefix, the second reuses it
        assert enc.example_bytes([make(value)]) == proto_bytes("s", bytes_list=[value])
    assert make(b"w" * length) == enc.bytes_entry(b"s", [b"w" * length])


@pytest.mark.parametrize("values", [[], [b""], [b"a", b"bc"], [b"x" * 60, b"y" * 66],
                                    [b"x" * 200, b"z"]])
def test_packed_bytes_entry_maker_equals_protobuf(values):
    make = enc.packed_bytes_entry_maker(b"tags")
    packed = b"".join(enc._bytes_piece(v) for v in values)
    for _ in range(2):
        assert enc.example_bytes([make(packed)]) == proto_bytes("tags", bytes_list=values)


def test_several_features_parse_back_in_the_given_order():
    entries = [enc.bytes_entry(b"user_id", [b"u1"]), enc.int64_entry(b"click", [1]),
               enc.float_entry(b"age", [2.5]), enc.bytes_entry(b"tags", [])]
    serialized = enc.example_bytes(entries)
    assert serialized == b"\n" + bytes([sum(map(len, entries))]) + b"".join(entries)
    example = tf.train.Example.FromString(serialized)
    assert sorted(example.features.feature) == ["age", "click", "tags", "user_id"]
    assert example.features.feature["user_id"].bytes_list.value == [b"u1"]
    assert example.features.feature["click"].int64_list.value == [1]
    assert example.features.feature["age"].float_list.value == [2.5]
    assert list(example.features.feature["tags"].bytes_list.value) == []
    # Each entry alone is what protobuf writes for that one feature.
    for entry, key in zip(entries, ["user_id", "click", "age", "tags"]):
        feature = example.features.feature[key]
        one = tf.train.Example(features=tf.train.Features(feature={key: feature}))
        assert enc.example_bytes([entry]) == one.SerializeToString()
