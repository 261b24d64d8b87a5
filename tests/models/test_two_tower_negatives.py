"""Two-tower mixed negative sampling: per-query hard negatives and per-distribution logQ."""

import numpy as np
import pytest
import tensorflow as tf

from models.two_tower.config import TwoTowerConfig
from models.two_tower.model import HardNegativeSampler, mixed_softmax_loss
from models.two_tower.train import batch_candidates

TEMPERATURE = 0.5
# Two queries; shared candidates: the 2 positives (ids 10, 11) and one uniform
# negative (id 12); each query has one hard negative of its own.
QUERIES = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
SHARED = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
SHARED_IDS = np.array([10, 11, 12])
SHARED_Q = np.array([0.5, 0.25, 0.1], np.float32)
HARD_Q = np.array([[0.2], [0.125]], np.float32)


def _log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def _query_loss(b, hard_vector):
    """Hand computation of query b's cross-entropy: its row of shared logits plus
    its own hard negative, each minus log Q."""
    shared = QUERIES[b] @ SHARED.T / TEMPERATURE - np.log(SHARED_Q)
    own = QUERIES[b] @ hard_vector / TEMPERATURE - np.log(HARD_Q[b, 0])
    return -_log_softmax(np.append(shared, own))[b]


def _loss(hard, hard_ids=np.array([[20], [21]])):
    return float(mixed_softmax_loss(
        tf.constant(QUERIES), tf.constant(SHARED), tf.constant(SHARED_IDS),
        tf.constant(SHARED_Q), tf.constant(hard[:, None, :]), tf.constant(hard_ids),
        tf.constant(HARD_Q), TEMPERATURE))


def test_hard_negative_scored_against_its_own_query_only():
    hard_a, hard_b = np.array([0.8, 0.6], np.float32), np.array([1.0, 0.0], np.float32)
    loss = _loss(np.stack([hard_a, hard_b]))
    a, b = _query_loss(0, hard_a), _query_loss(1, hard_b)
    assert loss == pytest.approx((a + b) / 2, rel=1e-6)
    # Query B's hard negative moved onto query A's own positive: only B's term changes.
    other_b = np.array([-1.0, 0.0], np.float32)
    changed = _loss(np.stack([hard_a, other_b]))
    assert changed == pytest.approx((a + _query_loss(1, other_b)) / 2, rel=1e-6)
    assert changed - loss == pytest.approx((_query_loss(1, other_b) - b) / 2, rel=1e-5)
    # Were B's hard negative in A's softmax, A's loss would be this instead:
    shared_a = QUERIES[0] @ SHARED.T / TEMPERATURE - np.log(SHARED_Q)
    leaked = -_log_softmax(np.concatenate(
        [shared_a, [QUERIES[0] @ hard_a / TEMPERATURE - np.log(0.2),
                    QUERIES[0] @ hard_b / TEMPERATURE - np.log(0.125)]]))[0]
    assert loss != pytest.approx((leaked + b) / 2, rel=1e-3)


def test_accidental_hits_masked_in_shared_and_hard_candidates():
    hard = np.array([[0.8, 0.6], [1.0, 0.0]], np.float32)
    # The uniform negative is query A's own item (id 10) and query B's hard
    # negative is B's own item (id 11): both leave that query's softmax.
    ids = np.array([10, 11, 10])
    loss = float(mixed_softmax_loss(
        tf.constant(QUERIES), tf.constant(SHARED), tf.constant(ids), tf.constant(SHARED_Q),
        tf.constant(hard[:, None, :]), tf.constant([[20], [11]]), tf.constant(HARD_Q),
        TEMPERATURE))
    shared = QUERIES @ SHARED.T / TEMPERATURE - np.log(SHARED_Q)[None, :]
    own = np.einsum("bd,bd->b", QUERIES, hard) / TEMPERATURE - np.log(HARD_Q[:, 0])
    a = -_log_softmax(np.array([shared[0, 0], shared[0, 1], own[0]]))[0]
    b = -_log_softmax(shared[1])[1]
    assert loss == pytest.approx((a + b) / 2, rel=1e-6)


def test_no_hard_negatives_is_the_shared_softmax():
    loss = float(mixed_softmax_loss(
        tf.constant(QUERIES), tf.constant(SHARED), tf.constant(SHARED_IDS),
        tf.constant(SHARED_Q), tf.zeros([2, 0, 2]), tf.zeros([2, 0], tf.int64),
        tf.zeros([2, 0]), TEMPERATURE))
    logits = QUERIES @ SHARED.T / TEMPERATURE - np.log(SHARED_Q)[None, :]
    assert loss == pytest.approx(-(_log_softmax(logits[0])[0] + _log_softmax(logits[1])[1]) / 2,
                                 rel=1e-6)


# Catalogue of 8 items: city / category per row.
CITY = np.array([1, 1, 1, 1, 1, 2, 2, 3])
CATEGORY = np.array([7, 7, 8, 9, 9, 7, 7, 7])


def test_logq_of_each_negative_kind():
    clicks = np.array([3, 1, 0, 0, 2, 1, 0, 1], np.float64)
    click_q = (clicks + 1) / (clicks + 1).sum()  # (c + 1) / 16
    hard = HardNegativeSampler(CATEGORY, CITY)
    positives = np.array([0, 3, 7])
    shared, shared_q, hard_rows, hard_q = batch_candidates(
        np.random.default_rng(0), positives, click_q, 2, hard, 3)
    np.testing.assert_array_equal(shared[:3], positives)
    # in-batch: the click-frequency probability; uniform: 1 / 8
    np.testing.assert_allclose(shared_q, [4 / 16, 1 / 16, 2 / 16, 1 / 8, 1 / 8], rtol=1e-6)
    # hard: item 0 (city 1, cat 7) -> pool {2, 3, 4}: 1/3; item 3 (city 1,
    # cat 9) -> {0, 1, 2}: 1/3; item 7 (city 3 holds only cat 7) -> every
    # item of another category {2, 3, 4}: 1/3
    np.testing.assert_allclose(hard_q, np.full((3, 3), 1 / 3))
    assert set(hard_rows[0]) <= {2, 3, 4} and set(hard_rows[1]) <= {0, 1, 2}
    assert set(hard_rows[2]) <= {2, 3, 4}
    none = batch_candidates(np.random.default_rng(0), positives, click_q, 2, None, 3)
    assert none[2].shape == (3, 0) and none[3].shape == (3, 0)
    # the default (extra_negatives 0): the shared candidates are the batch's
    # positives alone, with their click-frequency Q; hard negatives as before
    shared, shared_q, hard_rows, hard_q = batch_candidates(
        np.random.default_rng(0), positives, click_q, 0, hard, 1)
    np.testing.assert_array_equal(shared, positives)
    np.testing.assert_allclose(shared_q, [4 / 16, 1 / 16, 2 / 16], rtol=1e-6)
    np.testing.assert_allclose(hard_q, np.full((3, 1), 1 / 3))
    assert set(hard_rows[0]) <= {2, 3, 4} and set(hard_rows[1]) <= {0, 1, 2}
    assert set(hard_rows[2]) <= {2, 3, 4}
    assert TwoTowerConfig().extra_negatives == 0


def test_hard_negatives_uniform_over_their_pool():
    hard = HardNegativeSampler(CATEGORY, CITY)
    rows, q = hard.sample(np.random.default_rng(1), np.full(6000, 5), 1)  # city 2, cat 7
    # city 2 has only category 7: the fallback pool is every other-category item
    np.testing.assert_array_equal(np.unique(rows), [2, 3, 4])
    np.testing.assert_allclose(q, 1 / 3)
    rows, q = hard.sample(np.random.default_rng(2), np.full(6000, 2), 1)  # city 1, cat 8
    np.testing.assert_array_equal(np.unique(rows), [0, 1, 3, 4])
    np.testing.assert_allclose(q, 1 / 4)
    counts = np.bincount(rows[:, 0], minlength=8)[[0, 1, 3, 4]]
    assert np.abs(counts / 6000 - 0.25).max() < 0.02  # uniform, not click-weighted
    no_city, q = HardNegativeSampler(CATEGORY, None).sample(
        np.random.default_rng(3), np.full(4000, 3), 1)
    np.testing.assert_array_equal(np.unique(no_city), [0, 1, 2, 5, 6, 7])
    np.testing.assert_allclose(q, 1 / 6)
    one, q = HardNegativeSampler(np.ones(8), CITY).sample(np.random.default_rng(4), [0, 1], 2)
    assert one.shape == (2, 2) and one.min() >= 0 and one.max() < 8
    np.testing.assert_allclose(q, 1 / 8)
