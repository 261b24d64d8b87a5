"""The recommend hot path: fast TensorProto conversion, row-based recall and merge."""
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

from serving import toy_models
from serving.catalogue import ItemCatalogue, encode_column, read_item_frequencies
from serving.indexes import IndexSet, load_index, set_search_threads
from serving.recommender import (Recommender, RecommenderSettings, merge_round_robin, merge_rows)
from serving.store import InMemoryStore
from serving.tensors import to_ndarray, to_tensor_proto

NOW = 1_700_000_000.0
CHANNELS = ["two_tower", "youtubenet", "item2vec"]


def _strings(*shape):
    values = np.array([f"v{i}".encode() for i in range(int(np.prod(shape)))], dtype=object)
    return values.reshape(shape)


class TensorProtoTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ("strings_n", _strings(500)),
        ("strings_n_l", _strings(4, 3)),
        ("strings_one", _strings(1)),
        ("strings_padded", np.array([[b"a", b""], [b"", b""]], dtype=object)),
        ("unicode_str", np.array(["é", "plain"], dtype=object)),
        ("strings_empty", np.zeros((0, 3), dtype=object)),
        ("float32_n", np.linspace(0, 1, 7, dtype=np.float32)),
        ("float32_n_l", np.arange(6, dtype=np.float32).reshape(2, 3)),
        ("float32_one", np.array([2.5], np.float32)),  # TF writes float_val here
        ("int32_n", np.arange(5, dtype=np.int32)),
        ("float64_narrowed_by_tf", np.array([0.1, 0.2])),
        ("int64_narrowed_by_tf", np.array([1, 2, 3], np.int64)),
    )
    def test_equals_tensorflow(self, value):
        expected = tf.make_tensor_proto(value)
        got = to_tensor_proto(value)
        self.assertEqual(got.SerializeToString(), expected.SerializeToString())
        back, oracle = to_ndarray(expected), tf.make_ndarray(expected)
        self.assertEqual(back.dtype, oracle.dtype)
        self.assertEqual(back.shape, oracle.shape)
        np.testing.assert_array_equal(back, oracle)

    def test_fills_in_place(self):
        from tensorflow_serving.apis import predict_pb2
        request = predict_pb2.PredictRequest()
        to_tensor_proto(_strings(3, 2), request.inputs["tags"])
        to_tensor_proto(np.ones(4, np.float32), request.inputs["age"])
        self.assertEqual(request.inputs["tags"], tf.make_tensor_proto(_strings(3, 2)))
        self.assertEqual(request.inputs["age"], tf.make_tensor_proto(np.ones(4, np.float32)))

    def test_non_strings_in_object_array_raise_like_tensorflow(self):
        bad = np.array([b"a", 3], dtype=object)
        with self.assertRaises(TypeError):
            tf.make_tensor_proto(bad)
        with self.assertRaises(TypeError):
            to_tensor_proto(bad)

    def test_read_float_val_and_broadcast_string(self):
        proto = tf.make_tensor_proto(np.array([3.5], np.float32))
        self.assertFalse(proto.tensor_content)  # the float_val form
        np.testing.assert_array_equal(to_ndarray(proto), [3.5])
        # A short string_val is broadcast by TensorFlow (its path is used).
        proto = tf.make_tensor_proto(b"x", shape=[3])
        np.testing.assert_array_equal(to_ndarray(proto), tf.make_ndarray(proto))


def _merge_oracle(lists, seen, limit):
    """The original per-item loop, as an oracle for the vectorized merge."""
    merged = {}
    depth = max((len(ids) for _, ids in lists), default=0)
    for rank in range(depth):
        for name, ids in lists:
            if rank >= len(ids):
                continue
            item = ids[rank]
            if item < 0 or item in seen:
                continue
            if item in merged:
                if name not in merged[item]:
                    merged[item].append(name)
            elif len(merged) < limit:
                merged[item] = [name]
    return merged


@pytest.mark.parametrize("seed", range(6))
def test_merge_rows_matches_the_loop(seed):
    rng = np.random.default_rng(seed)
    lists = [(name, rng.choice(np.arange(-1, 60), size=rng.integers(0, 40), replace=False))
             for name in ("a", "b", "c", "d")[:rng.integers(1, 5)]]
    seen = set(rng.choice(60, size=5).tolist())
    limit = int(rng.integers(1, 50))
    merged = merge_rows(lists, np.array(sorted(seen), dtype=np.int64), limit)
    expected = _merge_oracle(lists, seen, limit)
    assert merged.rows.tolist() == list(expected)
    assert [list(c) for c in merged.channels_of(merged.rows)] == list(expected.values())


def test_merge_round_robin_of_nothing():
    assert merge_round_robin([], set(), 5) == {}
    assert merge_round_robin([("a", [])], {"x"}, 5) == {}


def test_encoded_tags_are_cut_to_the_longest_selected_row(config):
    spec = next(f for f in config.features if f.name == "item_tags")
    column = encode_column(spec, [["a"], ["b", "c", "d"], []])
    assert column.values.shape == (3, 3) and column.lengths.tolist() == [1, 3, 0]
    np.testing.assert_array_equal(column.take(np.array([2, 0])), [[b""], [b"a"]])
    np.testing.assert_array_equal(column.take(np.array([1])), [[b"b", b"c", b"d"]])
    assert column.take(np.array([2])).shape == (1, 1)  # width at least 1, as _column made it


def test_popular_rows_by_hand(config, tmp_path):
    import gzip
    import json
    rows = [{"item_id": "a", "city": "c1"}, {"item_id": "b", "city": "c2"},
            {"item_id": "c", "city": "c1"}, {"item_id": "d", "city": "c1"}]
    path = tmp_path / "items.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    cat = ItemCatalogue.from_table(str(path), config, {"a": 1, "b": 9, "c": 5, "d": 5})
    # clicks: b 9, c 5, d 5 (tie: catalogue order), a 1.
    assert cat.popular_rows(None, None, 3).tolist() == [1, 2, 3]
    assert cat.popular_rows("item_city", "c1", 5).tolist() == [2, 3, 0]
    assert cat.popular_rows("item_city", "c1", 2, np.array([2])).tolist() == [3, 0]
    assert cat.popular_rows("item_city", "nowhere", 5).tolist() == []
    np.testing.assert_array_equal(cat.encoded_ids[[1, 0]], [b"b", b"a"])


def test_search_rows_and_catalogue_rows(tmp_path):
    vectors = np.array([[1, 0], [0, 1], [0.7, 0.7]], np.float32)
    index = load_index(toy_models.write_index(str(tmp_path / "ch" / "1"), ["a", "b", "c"],
                                              vectors, "ch"))
    rows = index.search_rows(np.array([[0.1, 1.0]], np.float32), 10)  # k capped at 3
    assert rows.tolist() == [1, 2, 0]
    mapping = {"c": 0, "a": 5}
    assert index.catalogue_rows(mapping).tolist() == [5, -1, 0]
    assert index.catalogue_rows(mapping) is index.catalogue_rows(mapping)  # built once
    with pytest.raises(ValueError, match="width"):
        index.search_rows(np.zeros((1, 3), np.float32), 2)
    with pytest.raises(ValueError, match="NaN"):
        index.search_rows(np.array([[np.nan, 0]], np.float32), 2)
    with pytest.raises(ValueError, match=">= 1"):
        set_search_threads(0)


@pytest.fixture
def recommender(world, config, client, tmp_path):
    shutil.copytree(os.path.join(world["root"], "indexes"), tmp_path / "indexes")
    catalogue = ItemCatalogue.from_table(world["items"], config,
                                         read_item_frequencies(world["item_frequencies"]))
    return Recommender(config, client, InMemoryStore(), IndexSet(str(tmp_path / "indexes"), CHANNELS),
                       catalogue, RecommenderSettings(num_candidates=90, per_channel=40,
                                                      popular_fallback=15),
                       clock=lambda: NOW)


def test_row_path_equals_the_id_path(recommender, client):
    """candidates() on rows == merge_round_robin over the id lists each index returns."""
    for item in ["i3", "i8", "i8"]:
        recommender.ingest({"user_id": "u9", "item_id": item})
    history = recommender.store.recent_clicks("u9")
    row = recommender.user_features("u9", {}, history, {}, NOW)
    lists = []
    for name in CHANNELS:
        index = recommender.indexes.get(name)
        if name == "item2vec":
            vector = index.mean_vector(history)
        else:
            _, wanted = client.signature_inputs(f"user_tower_{name}", "serving_default")
            vector = client.predict(f"user_tower_{name}",
                                    recommender._row_inputs(row, wanted))["user_embedding"]
        ids, _ = index.search(vector, recommender.settings.per_channel + len(set(history)))
        lists.append((name, ids[0]))
    expected = merge_round_robin(lists, set(history), 90, recommender.catalogue.row)
    got = recommender.candidates("u9", row, history, {})
    assert list(got.items()) == list(expected.items())


def test_unknown_item_is_a_clear_error(recommender, client):
    row = recommender.user_features("u1", {}, [], {}, NOW)
    _, wanted = client.signature_inputs("ranking", "score_candidates")
    with pytest.raises(ValueError, match="not in the catalogue"):
        recommender._item_inputs(["i1", "nope"], row, wanted, NOW)


def test_item_inputs_equal_per_item_encoding(recommender, client):
    """Gathered columns == encoding the candidates' raw values one by one."""
    items = ["i4", "i0", "i17"]
    row = recommender.user_features("u1", {}, [], {}, NOW)
    _, wanted = client.signature_inputs("ranking", "score_candidates")
    inputs = recommender._item_inputs(items, row, wanted, NOW)
    cat = recommender.catalogue
    for name in ("author", "item_tags"):
        spec = recommender._specs[name]
        expected = encode_column(spec, [cat.features[name][cat.row[i]] for i in items]).values
        np.testing.assert_array_equal(inputs[name], expected)
    np.testing.assert_array_equal(inputs["item_id"], [b"i4", b"i0", b"i17"])
