"""Two-tower retrieval: cosine towers, mixed negative sampling with per-distribution logQ.

Each query's softmax runs over three kinds of candidates, each logit
corrected by the log-probability of the distribution that candidate was
drawn from (logQ), so the loss estimates the full-catalogue softmax:
  in-batch: the batch's positives (drawn by click frequency);
  uniform: extra negatives shared by the whole batch, uniform over the
    catalogue (Q = 1 / N);
  hard: per-query negatives, uniform over the query's positive's same-city,
    other-category items (Q = 1 / pool size); scored against that query only.

References:
  Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
  Recommendations", RecSys 2019 (in-batch softmax, logQ correction);
  Yang et al., "Mixed Negative Sampling", WWW 2020 (in-batch + uniformly
  sampled negatives); 58.com two-tower recall (attention-pooled interest
  tags, hard negatives from the same city).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from models.recall.towers import FeatureTower  # noqa: E402

# Logit given to masked candidates (accidental hits): exp() underflows to 0.
_MASKED_LOGIT = -1e9


def mixed_softmax_loss(queries: tf.Tensor, shared: tf.Tensor, shared_ids: tf.Tensor,
                       shared_probability: tf.Tensor, hard: tf.Tensor, hard_ids: tf.Tensor,
                       hard_probability: tf.Tensor, temperature: float) -> tf.Tensor:
    """Mean softmax cross-entropy of each query's positive.

    Query b's logits are [q_b . c_j / T - log Q(c_j)] over the C shared
    candidates (the first B are the positives, query b's label is column b)
    followed by [q_b . h_bk / T - log Q(h_bk)] over its own K hard negatives
    only. A candidate with query b's positive id other than column b is an
    accidental hit and is masked out of query b's softmax.

    Args:
      queries: [B, d] query vectors.
      shared: [C, d] candidate vectors, C >= B.
      shared_ids: [C] int ids.
      shared_probability: [C] per-draw probability of each shared candidate.
      hard: [B, K, d] per-query hard negative vectors (K may be 0).
      hard_ids: [B, K] int ids.
      hard_probability: [B, K] per-draw probability within each query's pool.
      temperature: logits are divided by it before the logQ term.
    Returns:
      scalar loss.
    """
    batch = tf.shape(queries)[0]
    shared_ids, hard_ids = tf.cast(shared_ids, tf.int64), tf.cast(hard_ids, tf.int64)
    shared_logits = (tf.matmul(queries, shared, transpose_b=True) / temperature
                     - tf.math.log(shared_probability)[None, :])
    hard_logits = (tf.einsum("bd,bkd->bk", queries, hard) / temperature
                   - tf.math.log(hard_probability))
    positive_ids = shared_ids[:batch]
    label = tf.equal(tf.range(batch)[:, None], tf.range(tf.shape(shared)[0])[None, :])
    shared_hit = tf.logical_and(tf.equal(positive_ids[:, None], shared_ids[None, :]),
                                tf.logical_not(label))
    hard_hit = tf.equal(positive_ids[:, None], hard_ids)
    logits = tf.concat([tf.where(shared_hit, _MASKED_LOGIT, shared_logits),
                        tf.where(hard_hit, _MASKED_LOGIT, hard_logits)], axis=1)
    labels = tf.range(batch)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


class TwoTowerModel(keras.Model):
    """User tower + item tower, trained with `mixed_softmax_loss`.

    Call (training): `compute_loss(user_features, shared_features, shared_ids,
    shared_probability, hard_features, hard_ids, hard_probability)`.
    """

    def __init__(self, user_tower: FeatureTower, item_tower: FeatureTower, temperature: float,
                 **kwargs):
        super().__init__(**kwargs)
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.temperature = float(temperature)

    def compute_loss(self, user_features: Mapping[str, tf.Tensor],
                     shared_features: Mapping[str, tf.Tensor], shared_ids: tf.Tensor,
                     shared_probability: tf.Tensor, hard_features: Mapping[str, tf.Tensor],
                     hard_ids: tf.Tensor, hard_probability: tf.Tensor) -> tf.Tensor:
        """`mixed_softmax_loss` of the towers' vectors.

        Args:
          user_features: raw user + context features of B queries.
          shared_features: raw item features of C >= B shared candidates
            (the B positives first).
          shared_ids: [C] int ids; shared_probability: [C] per-draw Q.
          hard_features: raw item features of B * K hard negatives, query-major
            (query b's are rows b*K .. b*K+K-1).
          hard_ids: [B, K] int ids; hard_probability: [B, K] per-draw Q.
        """
        # training=True: the towers' Dropout (if any) acts in the loss only.
        queries = self.user_tower(user_features, training=True)
        shared = self.item_tower(shared_features, training=True)
        # Explicit width: with K = 0 the reshape of an empty tensor cannot infer it.
        hard = tf.reshape(self.item_tower(hard_features, training=True),
                          [tf.shape(hard_ids)[0], tf.shape(hard_ids)[1],
                           self.item_tower.output_dim])
        return mixed_softmax_loss(queries, shared, shared_ids, shared_probability, hard,
                                  hard_ids, hard_probability, self.temperature)


class _OtherCategoryPools:
    """Uniform draws over "items of city c except category k", vectorized.

    Items are sorted by the key city * n_categories + category (dense codes):
    a city's items are one contiguous segment and its category-k items a
    sub-segment, so a uniform draw over the rest is one index skip.
    """

    def __init__(self, city: np.ndarray, category: np.ndarray, n_categories: int):
        self.n_categories = n_categories
        self.key = city * n_categories + category
        self.order = np.argsort(self.key, kind="stable")
        self.sorted_key = self.key[self.order]

    def draw(self, rng: np.random.Generator, positives: np.ndarray,
             k: int) -> tuple[np.ndarray, np.ndarray]:
        """[P, k] rows and [P] pool sizes (0: the positive's pool is empty)."""
        key = self.key[positives]
        city_key = key - key % self.n_categories
        city_start = np.searchsorted(self.sorted_key, city_key, "left")
        city_end = np.searchsorted(self.sorted_key, city_key + self.n_categories, "left")
        own_start = np.searchsorted(self.sorted_key, key, "left")
        own_size = np.searchsorted(self.sorted_key, key, "right") - own_start
        pool = city_end - city_start - own_size
        j = (rng.random((len(positives), k)) * pool[:, None]).astype(np.int64)
        index = city_start[:, None] + j
        index = np.where(index >= own_start[:, None], index + own_size[:, None], index)
        return self.order[np.minimum(index, len(self.order) - 1)], pool


class HardNegativeSampler:
    """Hard negatives: uniform over the positive's same-city, other-category items (58.com).

    Uniform rather than click-weighted, so each draw's probability is exactly
    1 / pool size and its logQ correction is exact. Without a city attribute
    the pool is every item of another category. A positive whose city holds
    only its own category draws from every other-category item instead, and
    in a one-category catalogue from every item (its probability says which).

    Args:
      category: [N] category codes (0 = missing, itself a category).
      city: [N] city codes or None.
    """

    def __init__(self, category: np.ndarray, city: np.ndarray | None):
        _, category = np.unique(np.asarray(category, np.int64), return_inverse=True)
        n_categories = int(category.max()) + 1
        self.num_items = len(category)
        no_city = np.zeros(self.num_items, np.int64)
        self.fallback = _OtherCategoryPools(no_city, category, n_categories)
        self.by_city = (None if city is None else _OtherCategoryPools(
            np.unique(np.asarray(city, np.int64), return_inverse=True)[1], category,
            n_categories))

    def sample(self, rng: np.random.Generator, positives: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
        """`k` hard negative rows per positive row, and their per-draw probabilities.

        Returns:
          [P, k] item rows; [P, k] probabilities (1 / the size of the pool
          each positive's draws came from).
        """
        positives = np.asarray(positives, np.int64)
        rows = np.zeros((len(positives), k), np.int64)
        pool = np.zeros(len(positives), np.int64)
        todo = np.ones(len(positives), bool)
        for pools in (self.by_city, self.fallback):
            if pools is None or not todo.any():
                continue
            r, size = pools.draw(rng, positives[todo], k)
            ok = size > 0
            idx = np.flatnonzero(todo)[ok]
            rows[idx], pool[idx] = r[ok], size[ok]
            todo[idx] = False
        if todo.any():  # one category in the catalogue: "other category" is empty
            rows[todo] = rng.integers(0, self.num_items, (int(todo.sum()), k))
            pool[todo] = self.num_items
        return rows, np.repeat(1.0 / pool[:, None], k, axis=1)
