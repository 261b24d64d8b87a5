"""tf.Example protobuf wire encoding, without protobuf objects.

A `Features` map entry is self-contained bytes, so a job encodes each user's
and each item's feature entries once and concatenates them into every
example of that user / item; `example_bytes` wraps the entries into a
serialized tf.Example. The output parses as `tf.train.Example` (checked in
tests/beam_jobs/test_sessionize.py) and equals what protobuf serializes for
the same features in the same order.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from feature_contract import feature_config as fc

_VARINT_CACHE = []
for _n in range(1 << 14):
    _VARINT_CACHE.append(bytes([_n]) if _n < 0x80 else bytes([(_n & 0x7F) | 0x80, _n >> 7]))
_VARINT_CACHE = tuple(_VARINT_CACHE)
_MASK64 = (1 << 64) - 1


def _varint(n: int) -> bytes:
    if n < 16384:
        return _VARINT_CACHE[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _bytes_piece(value: bytes) -> bytes:
    """One BytesList.value entry."""
    return b"\n" + _varint(len(value)) + value


def _feature_entry(key: bytes, feature: bytes) -> bytes:
    """One Features.feature map entry {key: feature}."""
    inner = b"\n" + _varint(len(key)) + key + b"\x12" + _varint(len(feature)) + feature
    return b"\n" + _varint(len(inner)) + inner


def bytes_entry(key: bytes, values: Iterable[bytes]) -> bytes:
    inner = b"".join(_bytes_piece(v) for v in values)
    return _feature_entry(key, b"\n" + _varint(len(inner)) + inner)


def _bytes_entry_from_pieces(key: bytes, pieces: Sequence[bytes]) -> bytes:
    inner = b"".join(pieces)
    return _feature_entry(key, b"\n" + _varint(len(inner)) + inner)


def float_entry(key: bytes, values: Sequence[float]) -> bytes:
    payload = struct.pack(f"<{len(values)}f", *values)
    flist = b"\n" + _varint(len(payload)) + payload
    return _feature_entry(key, b"\x12" + _varint(len(flist)) + flist)


def int64_entry(key: bytes, values: Sequence[int]) -> bytes:
    payload = b"".join(_varint(int(v) & _MASK64) for v in values)
    ilist = b"\n" + _varint(len(payload)) + payload
    return _feature_entry(key, b"\x1a" + _varint(len(ilist)) + ilist)


def int64_entry_maker(key: bytes) -> Any:
    """A fast `lambda v: int64_entry(key, [v])` for non-negative ints.

    Everything but the value's varint depends only on the varint's length, so
    the prefix is built once per length.
    """
    prefixes: dict[int, bytes] = {}

    def make(value: int) -> bytes:
        if 268435456 <= value < 34359738368:  # 5-byte varints: every unix second 1978..3058
            payload = bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80,
                             ((value >> 14) & 0x7F) | 0x80, ((value >> 21) & 0x7F) | 0x80,
                             value >> 28))
        else:
            payload = _varint(value)
        prefix = prefixes.get(len(payload))
        if prefix is None:
            prefix = int64_entry(key, [value])[:-len(payload)]
            prefixes[len(payload)] = prefix
        return prefix + payload

    return make


def _tail_entry_maker(build: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """`build` made fast for entries that end in their argument, the rest
    depending only on its length: the prefix is built once per length."""
    prefixes: dict[int, bytes] = {}

    def make(tail: bytes) -> bytes:
        prefix = prefixes.get(len(tail))
        if prefix is None:
            entry = build(tail)
            prefix = prefixes[len(tail)] = entry[:len(entry) - len(tail)]
        return prefix + tail

    return make


def bytes_value_entry_maker(key: bytes) -> Callable[[bytes], bytes]:
    """A fast `lambda value: bytes_entry(key, [value])` for one bytes value:
    a side table's unique ids (user / item ids) each cost one dict lookup and
    one concatenation."""
    return _tail_entry_maker(lambda value: bytes_entry(key, [value]))


def packed_bytes_entry_maker(key: bytes) -> Callable[[bytes], bytes]:
    """A fast `lambda packed: bytes_entry(key, values)` given `packed`, the
    values' `_bytes_piece`s joined."""
    return _tail_entry_maker(lambda packed: _bytes_entry_from_pieces(key, [packed]))


def float_entry_maker(key: bytes) -> Any:
    """A fast `lambda v: float_entry(key, [v])`: a fixed prefix + 4 bytes."""
    prefix = float_entry(key, [0.0])[:-4]
    pack = struct.Struct("<f").pack
    return lambda value: prefix + pack(value)


def example_bytes(entries: Iterable[bytes]) -> bytes:
    """Serialized tf.Example from feature map entries (keys must be unique)."""
    body = b"".join(entries)
    return b"\n" + _varint(len(body)) + body


def encode_value(spec: fc.FeatureSpec, value: Any) -> bytes:
    """Feature map entry of a normalized value (see `normalize_value`)."""
    key = spec.name.encode()
    if spec.type == fc.NUMERIC:
        return float_entry(key, [value])
    if spec.type == fc.TAGS:
        return bytes_entry(key, [v.encode() for v in value])
    return bytes_entry(key, [value.encode()])

