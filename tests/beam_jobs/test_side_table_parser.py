"""SideTableParser: users / items rows -> (key, SideRowInfo), with hand-built entries.

The parser caches each feature's encoded entry per value (side-table columns
repeat a few values); these tests pin that a cached entry is the entry of
that exact value: -0.0 and 0.0 stay apart, a full cache still encodes, and a
bad numeric falls back to the feature's default.
"""

import struct

import pytest

from feature_contract import feature_config as fc
from beam_jobs import event_parsing
from beam_jobs.event_parsing import MISSING_KEY, Reject, SideTableParser

CONFIG = fc.from_dict({"name": "side", "features": [
    {"name": "user_id", "field": "user", "type": "categorical", "source": "users",
     "vocab_size": 10},
    {"name": "city", "field": "user", "type": "categorical", "source": "users",
     "vocab_size": 10, "default": "none"},
    {"name": "score", "field": "user", "type": "numeric", "source": "users",
     "default": "1.5", "boundaries": [0.0, 1.0]},
    {"name": "interests", "field": "user", "type": "tags", "source": "users",
     "vocab_size": 10, "max_len": 2},
    {"name": "item_id", "field": "item", "type": "categorical", "source": "items",
     "vocab_size": 10},
    {"name": "hour", "field": "context", "type": "categorical", "source": "derived",
     "derive": "hour_of_day", "vocab_size": 24}]})


def _varint(n):
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def _entry(name, feature):
    """A tf.Example feature map entry by the protobuf wire format, by hand."""
    key = name.encode()
    body = b"\n" + _varint(len(key)) + key + b"\x12" + _varint(len(feature)) + feature
    return b"\n" + _varint(len(body)) + body


def _bytes_feature(*values):
    inner = b"".join(b"\n" + _varint(len(v)) + v for v in values)
    return b"\n" + _varint(len(inner)) + inner


def _float_feature(value):
    packed = struct.pack("<f", value)
    flist = b"\n" + _varint(len(packed)) + packed
    return b"\x12" + _varint(len(flist)) + flist


def _expected(user, city, score, interests):
    return b"".join([_entry("user_id", _bytes_feature(user.encode())),
                     _entry("city", _bytes_feature(city.encode())),
                     _entry("score", _float_feature(score)),
                     _entry("interests", _bytes_feature(*(t.encode() for t in interests)))])


def test_rows_encode_to_hand_built_entries_and_vocab():
    parser = SideTableParser(CONFIG, event_parsing.USERS)
    key, info = parser.parse(b'{"user_id": " u1 ", "city": "paris", "score": 0.25, '
                             b'"interests": "a|b|c"}')
    assert key == "u1"
    assert info.entries == _expected("u1", "paris", 0.25, ["a", "b"])
    assert info.vocab == (("user_id", ("u1",)), ("city", ("paris",)),
                          ("interests", ("a", "b")))
    assert info.created_ts is None
    # Missing / blank / unparsable values: the features' defaults.
    _, info = parser.parse({"user_id": 7, "city": "  ", "score": "high"})
    assert info.entries == _expected("7", "none", 1.5, [])
    assert info.vocab == (("user_id", ("7",)), ("city", ("none",)), ("interests", ()))


def test_cached_entries_equal_fresh_ones_and_zeros_keep_their_sign():
    parser = SideTableParser(CONFIG, event_parsing.USERS)
    rows = [{"user_id": "u", "city": "paris", "score": s, "interests": ["x"]}
            for s in (0.0, -0.0, 0.0, 2.0, 2.0, -0.0)]
    got = [parser.parse(row)[1].entries for row in rows]
    fresh = [SideTableParser(CONFIG, event_parsing.USERS).parse(row)[1].entries for row in rows]
    assert got == fresh
    assert got[0] == _expected("u", "paris", 0.0, ["x"])
    assert got[1] == _expected("u", "paris", -0.0, ["x"])
    assert got[0] != got[1]  # the sign bit: 00 00 00 00 vs 00 00 00 80
    assert got[1].endswith(b"\x00\x00\x00\x80" + _entry("interests", _bytes_feature(b"x")))


def test_a_full_cache_still_encodes_every_row(monkeypatch):
    monkeypatch.setattr(event_parsing, "_MAX_CACHED_ENTRIES", 3)
    parser = SideTableParser(CONFIG, event_parsing.USERS)
    for i in range(20):
        _, info = parser.parse({"user_id": f"u{i}", "city": f"c{i % 4}", "score": i / 4,
                                "interests": [f"t{i}"]})
        assert info.entries == _expected(f"u{i}", f"c{i % 4}", i / 4, [f"t{i}"])
    # Each feature caches at most 3 values: the 20 user ids cannot crowd out the cities.
    sizes = {spec.name: len(cache) for spec, _, _, cache in parser._columns}
    assert sizes == {"user_id": 3, "city": 3, "score": 3, "interests": 3}


def test_a_nan_default_is_encoded_but_never_cached():
    config = fc.from_dict({"name": "nan", "features": [
        dict(CONFIG.to_dict()["features"][0]),
        {"name": "score", "field": "user", "type": "numeric", "source": "users",
         "default": "nan", "boundaries": [0.0, 1.0]},
        {"name": "hour", "field": "context", "type": "categorical", "source": "derived",
         "derive": "hour_of_day", "vocab_size": 24},
        dict(CONFIG.to_dict()["features"][4])]})
    parser = SideTableParser(config, event_parsing.USERS)
    for i in range(5):
        _, info = parser.parse({"user_id": "u", "score": "bad"})
        assert info.entries.endswith(_entry("score", _float_feature(float("nan"))))
    assert [len(cache) for spec, _, _, cache in parser._columns if spec.name == "score"] == [0]


def test_raw_values_of_other_types_are_cached_with_their_type():
    # The categorical cache is keyed on the raw value: 7, 7.0 and True are
    # equal dict keys whose strings differ, so a non-str value is keyed with
    # its type; a NaN (never equal to itself) and an unhashable list are not
    # cached. Each value twice: cold, then from the cache.
    parser = SideTableParser(CONFIG, event_parsing.USERS)
    nan = float("nan")
    for raw, want in [("7", "7"), (7, "7"), (7.0, "7"), (True, "True"), (" 7 ", "7"),
                      ("7", "7"), (1, "1"), (True, "True"), (7.5, "7.5"), (7, "7"),
                      (nan, "nan"), (nan, "nan"), (["7"], "['7']"), (["7"], "['7']")]:
        _, info = parser.parse({"user_id": "u", "city": raw, "score": 0.5})
        assert info.entries == _expected("u", want, 0.5, []), raw
        assert info.vocab[1] == ("city", (want,))
    cache = {spec.name: cache for spec, _, _, cache in parser._columns}["city"]
    assert set(cache) == {"7", " 7 ", (int, 7), (float, 7.0), (bool, True), (int, 1),
                          (float, 7.5)}


@pytest.mark.parametrize("raw, want", [
    ([" a ", " ", "b", "c"], ("a", "b")),  # a list of str
    (["a"], ("a",)),
    ([], ()),
    ([3, None, "b"], ("3", "b")),  # other items: normalize_value's _to_str
    ([None, 2.0, " x "], ("2", "x")),
    ([b"raw"], ("b'raw'",)),  # bytes have a strip() too; still str() as before
    ("a|b|c", ("a", "b")),
    ('["p", 4]', ("p", "4")),
    (None, ()),
])
def test_tags_normalize_as_normalize_value_with_hand_built_entries(raw, want):
    parser = SideTableParser(CONFIG, event_parsing.USERS)
    spec = {s.name: s for s in CONFIG.features}["interests"]
    assert event_parsing.normalize_value(spec, raw) == want
    for _ in range(2):  # cold and cached tags
        _, info = parser.parse({"user_id": "u", "city": "c", "score": 0.5, "interests": raw})
        assert info.entries == _expected("u", "c", 0.5, list(want))
        assert info.vocab[2] == ("interests", want)


def test_a_row_without_its_key_is_rejected():
    parser = SideTableParser(CONFIG, event_parsing.ITEMS)
    with pytest.raises(Reject) as err:
        parser.parse({"item_id": "  "})
    assert err.value.reason == MISSING_KEY
    key, info = parser.parse({"item_id": "i9"})
    assert (key, info.entries) == ("i9", _entry("item_id", _bytes_feature(b"i9")))
