"""models.inputs and the shared FeatureIds / FieldEmbedding layers."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from feature_contract import feature_config as fc
from models import inputs
from models.layers.feature_embedding import FeatureIds, FieldEmbedding, ordered_feature_names

CONFIG = fc.load(fc.builtin_config_path("movielens"))
VOCABS = {"user_id": ["u1", "u2"], "gender": ["M", "F"], "occupation": ["eng"],
          "zip_prefix": ["9"], "item_id": ["i10", "i11", "i12"], "genre": ["Drama"],
          "genres": ["Drama", "Comedy"]}


def _example(history, genres, click=1):
    feature = {
        "user_id": [b"u2"], "gender": [b"F"], "occupation": [b"eng"], "zip_prefix": [b"9"],
        "clicked_item_list": history, "item_id": [b"i12"], "genre": [b"Drama"],
        "genres": genres, "hour": [b"3"], "weekday": [b"1"], "user_key": [b"u2"]}
    f = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=v)) for k, v in feature.items()}
    f["age"] = tf.train.Feature(float_list=tf.train.FloatList(value=[30.0]))
    f["year"] = tf.train.Feature(float_list=tf.train.FloatList(value=[1995.0]))
    for key, value in (("click", click), ("follow", 0), ("timestamp", 7), ("is_new_user", 1)):
        f[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()


def test_parse_examples_dense_conventions():
    history = [b"i%d" % i for i in range(60)]  # longer than max_len 50
    parsed = inputs.parse_examples(
        tf.constant([_example(history, [b"Drama"]), _example([], [])]), CONFIG, fc.RANKING)
    seq = parsed["clicked_item_list"].numpy()
    assert seq.shape == (2, 50)
    # The most recent 50 clicks are kept, in order, the last one last.
    assert seq[0, 0] == b"i10" and seq[0, -1] == b"i59"
    assert list(seq[1]) == [b""] * 50
    assert parsed["genres"].numpy().tolist() == [[b"Drama"] + [b""] * 5, [b""] * 6]
    assert parsed["click"].dtype == tf.float32 and parsed["click"].numpy().tolist() == [1.0, 1.0]
    assert parsed["age"].numpy().tolist() == [30.0, 30.0]
    assert parsed["is_new_user"].numpy().tolist() == [1, 1]


def test_make_dataset_reads_split_layout(tmp_path):
    split = tmp_path / "ranking" / "Split-train"
    split.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(split / "data-0.gz"), options="GZIP") as w:
        for click in (0, 1, 1):
            w.write(_example([b"i10"], [b"Comedy"], click))
    ds = inputs.make_dataset(inputs.split_pattern(str(tmp_path / "ranking"), "train"), CONFIG,
                             fc.RANKING, batch_size=2, label_keys=["click"])
    labels = [b[1]["click"].numpy().tolist() for b in ds]
    assert labels == [[0.0, 1.0], [1.0]]
    with pytest.raises(FileNotFoundError, match="no TFRecord files"):
        inputs.make_dataset(str(tmp_path / "none" / "*.gz"), CONFIG, fc.RANKING, 2)


def _raw_batch():
    return {"user_id": tf.constant(["u1", "zz"]), "age": tf.constant([20.0, 60.0]),
            "gender": tf.constant(["F", ""]), "occupation": tf.constant(["eng", "x"]),
            "zip_prefix": tf.constant(["9", "1"]),
            "clicked_item_list": tf.constant([["i10", "i11", ""], ["", "", ""]]),
            "item_id": tf.constant(["i12", "i10"]), "genre": tf.constant(["Drama", "?"]),
            "genres": tf.constant([["Drama", "Comedy"], ["", ""]]),
            "year": tf.constant([1995.0, 1930.0]), "hour": tf.constant(["3", "4"]),
            "weekday": tf.constant(["1", "2"])}


def test_feature_ids_reserve_zero_for_oov_and_padding():
    ids = FeatureIds(CONFIG.to_dict(), VOCABS)(_raw_batch())
    assert ids["user_id"].numpy().tolist() == [1, 0]  # "zz" is OOV
    assert ids["gender"].numpy().tolist() == [2, 0]  # "" is missing
    # The history uses the item_id vocabulary (line i -> id i + 1).
    assert ids["clicked_item_list"].numpy().tolist() == [[1, 2, 0], [0, 0, 0]]
    assert ids["item_id"].numpy().tolist() == [3, 1]
    # age boundaries 18,25,35,45,50,56: 20 -> bucket 1, 60 -> bucket 6; +1 for reserved 0.
    assert ids["age"].numpy().tolist() == [2, 7]
    assert ids["hour"].numpy().tolist() == [0, 0]  # no vocabulary given


def test_hashed_ids_keep_zero_for_empty_strings_only():
    raw = CONFIG.to_dict()
    for feature in raw["features"]:
        if feature["name"] == "user_id":
            feature.pop("vocab_size", None)
            feature["hash_buckets"] = 7
    lookup = FeatureIds(raw, VOCABS, feature_names=["user_id"])
    ids = lookup({"user_id": tf.constant(["u1", "", "never seen"])})["user_id"].numpy().tolist()
    hashed = keras.layers.Hashing(num_bins=7)(tf.constant(["u1", "never seen"])).numpy().tolist()
    assert ids == [hashed[0] + 1, 0, hashed[1] + 1]  # buckets shift by one past the reserved 0
    assert lookup.num_rows("user_id") == 8


def test_field_embedding_pools_and_shares_item_table():
    lookup = FeatureIds(CONFIG.to_dict(), VOCABS)
    ids = lookup(_raw_batch())
    layer = FieldEmbedding(CONFIG.to_dict(), {n: lookup.num_rows(n) for n in lookup.feature_names},
                           dim=3, with_linear=True)
    emb, linear = layer(ids)
    names = layer.feature_names
    assert names == ordered_feature_names(CONFIG)
    assert emb.shape == (2, len(names), 3) and linear.shape == (2, len(names))
    assert "clicked_item_list_embedding" not in [w.name.split("/")[-1].split(":")[0]
                                                 for w in layer.weights]
    table = layer.tables["item_id"].numpy()
    h = names.index("clicked_item_list")
    np.testing.assert_allclose(emb[0, h].numpy(), (table[1] + table[2]) / 2, rtol=1e-6)
    np.testing.assert_allclose(emb[1, h].numpy(), np.zeros(3), atol=0)  # empty history
    assert layer.field_of()[h] == fc.USER and layer.field_of()[names.index("hour")] == fc.CONTEXT


@pytest.mark.parametrize("pooling,history,genres", [
    # history ids 1, 2 (2 items); genres ids 1, 2 of example 0; both empty in example 1.
    ("mean", lambda t: (t[1] + t[2]) / 2, lambda g: (g[1] + g[2]) / 2),
    ("sum", lambda t: t[1] + t[2], lambda g: g[1] + g[2]),
    ("sqrtn", lambda t: (t[1] + t[2]) / np.sqrt(2), lambda g: (g[1] + g[2]) / np.sqrt(2)),
])
def test_field_embedding_pooling_modes(pooling, history, genres):
    lookup = FeatureIds(CONFIG.to_dict(), VOCABS)
    ids = lookup(_raw_batch())
    layer = FieldEmbedding(CONFIG.to_dict(), {n: lookup.num_rows(n) for n in lookup.feature_names},
                           dim=3, with_linear=True, pooling=pooling)
    layer(ids)
    # First-order tables start at zero: give them values so their pooling shows.
    layer.linear_tables["item_id"].assign(tf.random.normal(
        layer.linear_tables["item_id"].shape, seed=3))
    emb, linear = layer(ids)
    names = layer.feature_names
    h, g = names.index("clicked_item_list"), names.index("genres")
    items, genre_table = layer.tables["item_id"].numpy(), layer.tables["genres"].numpy()
    np.testing.assert_allclose(emb[0, h].numpy(), history(items), rtol=1e-6)
    np.testing.assert_allclose(emb[0, g].numpy(), genres(genre_table), rtol=1e-6)
    # The first-order weights pool the same way.
    np.testing.assert_allclose(linear[0, h].numpy(), history(layer.linear_tables["item_id"]
                                                               .numpy())[0], rtol=1e-6)
    np.testing.assert_allclose(emb[1, h].numpy(), np.zeros(3), atol=0)  # empty history
    assert FieldEmbedding.from_config(layer.get_config()).pooling == pooling
    with pytest.raises(ValueError, match="pooling 'max' not in"):
        FieldEmbedding(CONFIG.to_dict(), {}, 3, pooling="max")


def test_layers_serialize_round_trip():
    lookup = FeatureIds(CONFIG.to_dict(), VOCABS)
    clone = FeatureIds.from_config(lookup.get_config())
    raw = _raw_batch()
    for name, value in lookup(raw).items():
        assert clone(raw)[name].numpy().tolist() == value.numpy().tolist()
    layer = FieldEmbedding(CONFIG.to_dict(), {n: lookup.num_rows(n) for n in lookup.feature_names}, 4)
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert again.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="dim must be >= 1, got 0"):
        FieldEmbedding(CONFIG.to_dict(), {}, 0)


def test_raw_signature_shapes():
    sig = inputs.raw_signature(CONFIG.field_features(fc.USER))
    assert sig["user_id"].shape.as_list() == [None] and sig["user_id"].dtype == tf.string
    assert sig["clicked_item_list"].shape.as_list() == [None, None]
    assert sig["age"].dtype == tf.float32
