"""Two-tower retrieval: cosine towers, in-batch softmax with logQ correction, hard negatives.

References:
  Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
  Recommendations", RecSys 2019 (in-batch softmax, logQ correction);
  Yang et al., "Mixed Negative Sampling", WWW 2020 (in-batch + extra
  negatives); 58.com two-tower recall (attention-pooled interest tags, hard
  negatives from the same city).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402
import tf_keras as keras  # noqa: E402

from models.recall.negatives import GroupedSampler  # noqa: E402
from models.recall.towers import FeatureTower  # noqa: E402


def retrieval_task(temperature: float) -> tfrs.tasks.Retrieval:
    """In-batch softmax (mean cross-entropy over queries), accidental hits removed."""
    return tfrs.tasks.Retrieval(
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, reduction=keras.losses.Reduction.SUM_OVER_BATCH_SIZE),
        temperature=temperature, remove_accidental_hits=True)


class TwoTowerModel(keras.Model):
    """User tower + item tower + tfrs Retrieval task.

    Call (training): `compute_loss(user_features, candidate_features,
    candidate_ids, candidate_probability)`: the first B candidates are the
    positives of the B queries, the rest are extra negatives shared by all.
    """

    def __init__(self, user_tower: FeatureTower, item_tower: FeatureTower, temperature: float,
                 **kwargs):
        super().__init__(**kwargs)
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.task = retrieval_task(temperature)

    def compute_loss(self, user_features: Mapping[str, tf.Tensor],
                     candidate_features: Mapping[str, tf.Tensor], candidate_ids: tf.Tensor,
                     candidate_probability: tf.Tensor) -> tf.Tensor:
        """Mean softmax cross-entropy of the positives.

        Args:
          user_features: raw user + context features of B queries.
          candidate_features: raw item features of C >= B candidates.
          candidate_ids: [C] int ids (accidental-hit removal).
          candidate_probability: [C] per-draw sampling probability (logQ).
        """
        queries = self.user_tower(user_features)
        candidates = self.item_tower(candidate_features)
        return self.task(queries, candidates, candidate_sampling_probability=candidate_probability,
                         candidate_ids=candidate_ids, compute_metrics=False,
                         compute_batch_metrics=False)


class HardNegativeSampler:
    """Hard negatives: same city as the positive, other category (58.com).

    Without a city attribute, any item of another category. Draws are by
    click frequency within the city; up to `tries` draws per slot are made
    and the first of another category kept, else a frequency draw.

    Args:
      clicks: [N] click counts by catalogue row.
      category: [N] category codes (0 = missing).
      city: [N] city codes or None.
      tries: rejection-sampling attempts per slot.
    """

    def __init__(self, clicks: np.ndarray, category: np.ndarray, city: np.ndarray | None,
                 tries: int = 4):
        self.category = np.asarray(category, np.int64)
        self.city = None if city is None else np.asarray(city, np.int64)
        self.any_item = GroupedSampler(clicks, alpha=1.0)
        self.by_city = None if city is None else GroupedSampler(clicks, self.city, alpha=1.0)
        self.tries = tries

    def sample(self, rng: np.random.Generator, positives: np.ndarray) -> np.ndarray:
        """One hard negative row per positive row, [P]."""
        positives = np.asarray(positives, np.int64)
        if self.by_city is None:
            draws = self.any_item.sample(rng, (len(positives), self.tries))
        else:
            draws = self.by_city.sample(rng, (len(positives), self.tries),
                                        group=self.city[positives])
        other = self.category[draws] != self.category[positives][:, None]
        first = np.argmax(other, axis=1)
        chosen = draws[np.arange(len(positives)), first]
        fallback = ~other.any(axis=1)
        chosen[fallback] = self.any_item.sample(rng, int(fallback.sum()))
        return chosen
