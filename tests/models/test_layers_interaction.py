"""Bi-Interaction, Field-wise Bi-Interaction and cross network vs naive loops."""
import itertools

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models.layers.bi_interaction import BiInteraction
from models.layers.cross_network import CrossNetwork
from models.layers.field_wise_bi_interaction import FieldWiseBiInteraction, field_layout

FIELD_OF = ["user", "user", "item", "item", "item", "context"]


def _embeddings(batch=2, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, len(FIELD_OF), dim)).astype(np.float32)


def _naive_field_wise(v, field_of, pair_r, field_r):
    """Double loop over features: MF = cross-field pairs, FM = same-field pairs."""
    fields = list(dict.fromkeys(field_of))
    r = {}
    for (a, b), w in zip(itertools.combinations(range(len(fields)), 2), pair_r):
        r[(a, b)] = w
    mf = np.zeros((v.shape[0], v.shape[2]))
    fm = np.zeros_like(mf)
    for i, j in itertools.combinations(range(len(field_of)), 2):
        a, b = fields.index(field_of[i]), fields.index(field_of[j])
        if a == b:
            fm += field_r[a] * v[:, i] * v[:, j]
        else:
            mf += r[(min(a, b), max(a, b))] * v[:, i] * v[:, j]
    return mf, fm


def test_bi_interaction_matches_pairwise_sum():
    v = _embeddings()
    expected = sum(v[:, i] * v[:, j] for i, j in itertools.combinations(range(v.shape[1]), 2))
    np.testing.assert_allclose(BiInteraction()(tf.constant(v)).numpy(), expected, rtol=1e-5,
                               atol=1e-6)


def test_bi_interaction_hand_computed():
    # v1 = [1, 2], v2 = [3, -1], v3 = [0, 4]: sum_{i<j} v_i v_j = [3, -2] + [0, 8] + [0, -4].
    v = tf.constant([[[1.0, 2.0], [3.0, -1.0], [0.0, 4.0]]])
    np.testing.assert_allclose(BiInteraction()(v).numpy(), [[3.0, 2.0]])


def test_bi_interaction_rejects_rank_2():
    with pytest.raises(ValueError, match="B, F, d"):
        BiInteraction()(tf.zeros([2, 3]))


def test_field_layout_one_hot_and_pairs():
    fields, one_hot, pairs = field_layout(FIELD_OF)
    assert fields == ["user", "item", "context"]
    assert one_hot.sum(axis=0).tolist() == [2, 3, 1]
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 2]]


def _layer(**kwargs):
    layer = FieldWiseBiInteraction(FIELD_OF, **kwargs)
    layer.build(tf.TensorShape([None, len(FIELD_OF), 3]))
    return layer


def test_field_wise_modules_match_naive_double_loop():
    v = _embeddings()
    linear = np.arange(12, dtype=np.float32).reshape(2, 6) / 10
    pair_r, field_r = [0.5, -2.0, 1.5], [0.3, 2.0, 7.0]
    layer = _layer(use_dropout=False)
    layer.set_weights([np.array(pair_r, np.float32), np.array(field_r, np.float32)])
    mf, fm = layer.second_order_parts(tf.constant(v))
    naive_mf, naive_fm = _naive_field_wise(v.astype(np.float64), FIELD_OF, pair_r, field_r)
    np.testing.assert_allclose(mf.numpy(), naive_mf, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fm.numpy(), naive_fm, rtol=1e-5, atol=1e-5)
    s, b = layer(tf.constant(v), tf.constant(linear), training=False)
    np.testing.assert_allclose(s.numpy(), linear.sum(axis=1), rtol=1e-6)  # S module
    np.testing.assert_allclose(b.numpy(), naive_mf + naive_fm, rtol=1e-5, atol=1e-5)


def test_field_wise_hand_computed_two_fields():
    # user: u1=[1,2], u2=[3,0]; item: i1=[2,-1]; r_ui = 2, r_uu = 0.5, r_ii = 9.
    # MF = 2 * (u1+u2) * i1 = 2 * [4,2] * [2,-1] = [16,-4]; FM = 0.5 * u1*u2 = [1.5, 0];
    # the item field has one feature, so its FM term is 0.
    layer = FieldWiseBiInteraction(["user", "user", "item"], use_dropout=False)
    layer.build(tf.TensorShape([None, 3, 2]))
    layer.set_weights([np.array([2.0], np.float32), np.array([0.5, 9.0], np.float32)])
    _, b = layer(tf.constant([[[1.0, 2.0], [3.0, 0.0], [2.0, -1.0]]]))
    np.testing.assert_allclose(b.numpy(), [[17.5, -4.0]])


def test_vector_pair_weights_hand_computed_two_fields():
    # As above, with r a vector per dimension: r_ui = [2, -1], r_uu = [0.5, 3], r_ii = [9, 9].
    # MF = [2, -1] * ([4,2] * [2,-1]) = [16, 2]; FM = [0.5, 3] * 0.5 * u1*u2 = [1.5, 0].
    layer = FieldWiseBiInteraction(["user", "user", "item"], use_dropout=False,
                                   pair_weights="vector")
    layer.build(tf.TensorShape([None, 3, 2]))
    assert [tuple(w.shape) for w in layer.weights] == [(1, 2), (2, 2)]
    layer.set_weights([np.array([[2.0, -1.0]], np.float32),
                       np.array([[0.5, 3.0], [9.0, 9.0]], np.float32)])
    _, b = layer(tf.constant([[[1.0, 2.0], [3.0, 0.0], [2.0, -1.0]]]))
    np.testing.assert_allclose(b.numpy(), [[17.5, 2.0]])


def test_vector_pair_weights_per_dimension_match_the_scalar_layer():
    # Dimension k of the vector form is the scalar form with r = r[:, k].
    v = _embeddings(dim=3)
    pair_r = np.array([[0.5, 1.0, -1.0], [-2.0, 0.0, 3.0], [1.5, 2.0, 0.25]], np.float32)
    field_r = np.array([[0.3, 1.0, 2.0], [2.0, -1.0, 0.5], [7.0, 7.0, 7.0]], np.float32)
    vector = _layer(use_dropout=False, pair_weights="vector")
    vector.set_weights([pair_r, field_r])
    _, b = vector(tf.constant(v))
    for k in range(3):
        scalar = _layer(use_dropout=False)
        scalar.set_weights([pair_r[:, k], field_r[:, k]])
        np.testing.assert_allclose(b.numpy()[:, k], scalar(tf.constant(v))[1].numpy()[:, k],
                                   rtol=1e-5, atol=1e-6)
    # Starts as NFM's Bi-Interaction, like the scalar form; the layer round-trips its config.
    fresh = _layer(use_dropout=False, pair_weights="vector")
    np.testing.assert_allclose(fresh(tf.constant(v))[1].numpy(),
                               BiInteraction()(tf.constant(v)).numpy(), rtol=1e-5, atol=1e-6)
    assert FieldWiseBiInteraction.from_config(vector.get_config()).pair_weight_form == "vector"


def test_all_ones_weights_equal_nfm_bi_interaction():
    v = tf.constant(_embeddings())
    _, b = _layer(use_dropout=False)(v)
    np.testing.assert_allclose(b.numpy(), BiInteraction()(v).numpy(), rtol=1e-5, atol=1e-6)


def test_fm_module_can_be_disabled():
    v = _embeddings()
    layer = _layer(use_fm_module=False, use_dropout=False)
    assert [w.name.split("/")[-1].split(":")[0] for w in layer.weights] == ["pair_weights"]
    _, b = layer(tf.constant(v))
    naive_mf, _ = _naive_field_wise(v.astype(np.float64), FIELD_OF, [1, 1, 1], [0, 0, 0])
    np.testing.assert_allclose(b.numpy(), naive_mf, rtol=1e-5, atol=1e-5)


def test_dropout_published_convention():
    beta = 0.7
    v = tf.constant(_embeddings(batch=1, dim=4))
    plain = _layer(use_dropout=False)
    dropped = _layer(keep_prob=beta, seed=1)
    _, full = plain(v)
    _, inference = dropped(v, training=False)
    # Inference: exactly beta times the undropped interaction.
    np.testing.assert_allclose(inference.numpy(), beta * full.numpy(), rtol=1e-6)
    # One call on 4000 copies of the example = 4000 independent masks.
    draws = dropped(tf.repeat(v, 4000, axis=0), training=True)[1].numpy()
    # Training: each element is either zeroed or kept unscaled (no 1/beta) ...
    kept = np.isclose(draws, full.numpy(), rtol=1e-5)
    assert np.all(kept | (draws == 0.0))
    assert not np.allclose(draws[0], inference.numpy())
    # ... so E[x_train] = beta * x: the mean of many draws matches inference.
    np.testing.assert_allclose(draws.mean(axis=0), beta * full.numpy()[0],
                               atol=0.05 * np.abs(full.numpy()).max())
    assert abs(kept.mean() - beta) < 0.02


@pytest.mark.parametrize("batch,dim,field_of", [
    (1, 1, ["user", "item", "context"]),
    (4, 8, ["user", "user", "user", "item", "context", "context"]),
    (3, 5, ["user", "item"]),
    (2, 2, ["item"]),
])
def test_field_wise_shapes(batch, dim, field_of):
    layer = FieldWiseBiInteraction(field_of)
    s, b = layer(tf.ones([batch, len(field_of), dim]), tf.ones([batch, len(field_of)]))
    assert s.shape == (batch,) and b.shape == (batch, dim)
    m = len(set(field_of))
    assert layer.count_params() == m * (m - 1) // 2 + m


def test_field_wise_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="keep_prob"):
        FieldWiseBiInteraction(FIELD_OF, keep_prob=0.0)
    with pytest.raises(ValueError, match="empty"):
        FieldWiseBiInteraction([])
    with pytest.raises(ValueError, match="pair_weights must be one of .*'matrix'"):
        FieldWiseBiInteraction(FIELD_OF, pair_weights="matrix")
    with pytest.raises(ValueError, match=r"\[B, 6, d\]"):
        FieldWiseBiInteraction(FIELD_OF)(tf.zeros([2, 5, 3]))


def test_non_adjacent_fields_match_naive_double_loop():
    # Features of a field need not be adjacent (the gather path).
    field_of = ["user", "item", "user", "context", "item", "user"]
    v = _embeddings()
    pair_r, field_r = [0.5, -2.0, 1.5], [0.3, 2.0, 7.0]
    layer = FieldWiseBiInteraction(field_of, use_dropout=False)
    layer.build(tf.TensorShape([None, 6, 3]))
    layer.set_weights([np.array(pair_r, np.float32), np.array(field_r, np.float32)])
    mf, fm = layer.second_order_parts(tf.constant(v))
    naive_mf, naive_fm = _naive_field_wise(v.astype(np.float64), field_of, pair_r, field_r)
    np.testing.assert_allclose(mf.numpy(), naive_mf, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fm.numpy(), naive_fm, rtol=1e-5, atol=1e-5)


def test_statistics_of_one_user_broadcast_to_candidates():
    # One user (fields user, context at batch 1) and 5 candidate items: the
    # per-field statistics broadcast and give the same B as the full [5, F, d].
    layer = _layer(use_dropout=False)
    layer.set_weights([np.array([0.5, -2.0, 1.5], np.float32),
                       np.array([0.3, 2.0, 7.0], np.float32)])
    full = _embeddings(batch=5, seed=2)
    full[:, [0, 1, 5]] = full[:1, [0, 1, 5]]  # same user and context in every row
    stats = layer.field_statistics(tf.constant(full[:1, [0, 1, 5]]), [0, 1, 5])
    stats.update(layer.field_statistics(tf.constant(full[:, 2:5]), [2, 3, 4]))
    assert stats[0][0].shape == (1, 3) and stats[1][0].shape == (5, 3)
    mf, fm = layer.parts_from_statistics(stats)
    want_mf, want_fm = layer.second_order_parts(tf.constant(full))
    np.testing.assert_allclose(mf.numpy(), want_mf.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fm.numpy(), want_fm.numpy(), rtol=1e-5, atol=1e-6)


def test_statistics_errors_name_the_bad_value():
    layer = _layer()
    with pytest.raises(ValueError, match=r"\[B, 2, d\] matching positions"):
        layer.field_statistics(tf.zeros([1, 3, 3]), [0, 1])
    with pytest.raises(ValueError, match=r"no features of fields \['item'\]"):
        layer.parts_from_statistics(layer.field_statistics(tf.zeros([1, 3, 3]), [0, 1, 5]))


def test_field_wise_serialization_round_trip():
    layer = _layer(use_fm_module=False, keep_prob=0.6, seed=3)
    config = keras.layers.serialize(layer)
    clone = keras.layers.deserialize(config)
    assert clone.get_config() == layer.get_config()
    clone.build(tf.TensorShape([None, 6, 3]))
    clone.set_weights(layer.get_weights())
    v = tf.constant(_embeddings())
    np.testing.assert_allclose(clone(v)[1].numpy(), layer(v)[1].numpy())


def test_cross_network_matches_formula():
    x0 = np.array([[1.0, 2.0, -1.0]], np.float32)
    layer = CrossNetwork(2)
    layer.build(tf.TensorShape([None, 3]))
    w0, w1 = np.array([0.5, 1.0, 2.0]), np.array([-1.0, 0.0, 1.0])
    b0, b1 = np.array([0.1, 0.2, 0.3]), np.array([0.0, -0.5, 1.0])
    layer.set_weights([w0, w1, b0, b1])
    x1 = x0 * (x0 @ w0)[:, None] + b0 + x0
    x2 = x0 * (x1 @ w1)[:, None] + b1 + x1
    np.testing.assert_allclose(layer(tf.constant(x0)).numpy(), x2, rtol=1e-6)
    assert keras.layers.deserialize(keras.layers.serialize(layer)).num_layers == 2
