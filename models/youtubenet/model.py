"""YouTubeNet: user tower over pooled history + demographics + context, sampled softmax.

References:
  Covington, Adams & Sargin, "Deep Neural Networks for YouTube
  Recommendations", RecSys 2016; Jean et al., "On Using Very Large Target
  Vocabulary", 2015 (sampled softmax with the logQ correction).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from models.recall.towers import FeatureTower  # noqa: E402


class YouTubeNet(keras.Model):
    """User tower + candidate (softmax) embedding table over the item vocabulary.

    Args:
      user_tower: FeatureTower (mean-pooled history, not normalized).
      num_items: V + 1 softmax classes (class 0 = OOV, never a target).
      dim: user vector width = candidate embedding width.
      unigrams: [V + 1] sampling weights of the negatives (row 0 ~ 0).
      num_sampled: negatives per batch.
    """

    def __init__(self, user_tower: FeatureTower, num_items: int, dim: int,
                 unigrams: Sequence[float], num_sampled: int, **kwargs):
        super().__init__(**kwargs)
        self.user_tower = user_tower
        self.num_items, self.dim = int(num_items), int(dim)
        self.unigrams = [float(u) for u in unigrams]
        if len(self.unigrams) != self.num_items:
            raise ValueError(f"{len(self.unigrams)} unigram weights for {num_items} classes")
        self.num_sampled = min(int(num_sampled), self.num_items - 1)
        self.candidates = self.add_weight(
            name="candidate_embedding", shape=(self.num_items, self.dim),
            initializer=keras.initializers.RandomNormal(stddev=0.05))

    def compute_loss(self, features: Mapping[str, tf.Tensor], labels: tf.Tensor) -> tf.Tensor:
        """Mean sampled-softmax loss; labels: [B] int64 class ids.

        Negatives are drawn from the unigram table; biases are zero (not
        trained) so that retrieval stays a pure inner product.
        """
        users = self.user_tower(features)
        labels = tf.reshape(tf.cast(labels, tf.int64), [-1, 1])
        sampled = tf.random.fixed_unigram_candidate_sampler(
            true_classes=labels, num_true=1, num_sampled=self.num_sampled, unique=True,
            range_max=self.num_items, unigrams=self.unigrams)
        return sampled_softmax_loss(users, self.candidates, labels, sampled)


def sampled_softmax_loss(users: tf.Tensor, candidates: tf.Tensor, labels: tf.Tensor,
                         sampled_values: tuple[tf.Tensor, tf.Tensor, tf.Tensor]) -> tf.Tensor:
    """Mean logQ-corrected sampled softmax over a candidate table.

    Every logit u . w_j is reduced by log(expected count of j under the
    sampler), and sampled negatives equal to the label are removed.

    Args:
      users: [B, d].
      candidates: [V, d] candidate table.
      labels: [B, 1] int64 class ids.
      sampled_values: (sampled ids [S], true expected counts [B, 1], sampled
        expected counts [S]) as returned by a tf.random candidate sampler.
    Returns:
      scalar loss.
    """
    num_items = int(candidates.shape[0])
    return tf.reduce_mean(tf.nn.sampled_softmax_loss(
        weights=candidates, biases=tf.zeros([num_items], candidates.dtype), labels=labels,
        inputs=users, num_sampled=int(sampled_values[0].shape[0]), num_classes=num_items,
        sampled_values=sampled_values, remove_accidental_hits=True))


def sampling_weights(clicks_by_id: np.ndarray, alpha: float) -> np.ndarray:
    """[V + 1] unigram weights (clicks + 1)**alpha, with a negligible OOV row."""
    weights = (np.asarray(clicks_by_id, np.float64) + 1.0) ** alpha
    weights[0] = 1e-6
    return weights
