"""LazyAdam: touched rows follow Adam exactly, untouched rows and moments stay put."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.ranking.optimizers import LazyAdam


def _two_steps(optimizer, ids_per_step):
    table = tf.Variable(np.arange(12, dtype=np.float32).reshape(6, 2) / 10)
    for ids in ids_per_step:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(tf.gather(table, ids)))
        grad = tape.gradient(loss, table)
        optimizer.apply_gradients([(grad, table)])
    return table.numpy()


def test_rows_touched_every_step_match_dense_adam_and_others_do_not_move():
    ids = [tf.constant([1, 3, 1]), tf.constant([3, 1])]  # row 1 repeated in step 1
    lazy = _two_steps(LazyAdam(0.1), ids)
    dense = _two_steps(keras.optimizers.Adam(0.1), [tf.constant([1, 3, 1]), tf.constant([3, 1])])
    start = np.arange(12, dtype=np.float32).reshape(6, 2) / 10
    np.testing.assert_allclose(lazy[[1, 3]], dense[[1, 3]], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(lazy[[0, 2, 4, 5]], start[[0, 2, 4, 5]])
    # Hand check of step 1 on row 3 (g = 2 * x): Adam's first step is -lr * sign(g).
    one = _two_steps(LazyAdam(0.1), [tf.constant([3])])
    np.testing.assert_allclose(one[3], start[3] - 0.1, rtol=1e-4)


def test_dense_gradients_take_the_ordinary_adam_step():
    w1, w2 = tf.Variable([1.0, -2.0]), tf.Variable([1.0, -2.0])
    for opt, w in ((LazyAdam(0.05), w1), (keras.optimizers.Adam(0.05), w2)):
        for _ in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(w * w)
            opt.apply_gradients([(tape.gradient(loss, w), w)])
    np.testing.assert_allclose(w1.numpy(), w2.numpy(), rtol=1e-6)
