"""Item2vec: skip-gram pairs, negative sampling, the SGNS model and the mean-history user tower.

References:
  Barkan & Koenigstein, "Item2Vec: Neural Item Embedding for Collaborative
  Filtering", 2016; Mikolov et al., "Distributed Representations of Words and
  Phrases", 2013 (negative sampling, unigram^0.75); Meitu and 58.com recall
  write-ups (window 64, 2x negatives, sessions >= 5, attribute-aware negatives,
  user vector = mean of recent clicks).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from models.recall.negatives import GroupedSampler  # noqa: E402


def skipgram_pairs(sessions: Sequence[np.ndarray], window: int, min_len: int
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """All (center, context) pairs within `window` positions, both directions.

    Vectorized: sessions are concatenated and, for each distance d in
    1..window, positions i and i + d of the same session form two pairs.
    Pairs involving id 0 (OOV) or the same item twice are dropped.

    Args:
      sessions: int id arrays, chronological.
      window: max |i - j|.
      min_len: sessions shorter than this are dropped (counted).
    Returns:
      centers [P] int64, contexts [P] int64, counts {sessions, short_sessions, pairs}.
    """
    lengths = np.array([len(s) for s in sessions], np.int64)
    keep = lengths >= min_len
    stats = {"sessions": int(keep.sum()), "short_sessions": int((~keep).sum())}
    kept = [np.asarray(s, np.int64) for s, k in zip(sessions, keep) if k]
    if not kept:
        stats["pairs"] = 0
        return np.zeros(0, np.int64), np.zeros(0, np.int64), stats
    flat = np.concatenate(kept)
    session_of = np.repeat(np.arange(len(kept)), [len(s) for s in kept])
    centers, contexts = [], []
    for d in range(1, min(window, len(flat) - 1) + 1):
        same = session_of[:-d] == session_of[d:]
        if not same.any():
            break  # no session is longer than d
        a, b = flat[:-d][same], flat[d:][same]
        centers += [a, b]
        contexts += [b, a]
    centers = np.concatenate(centers) if centers else np.zeros(0, np.int64)
    contexts = np.concatenate(contexts) if contexts else np.zeros(0, np.int64)
    valid = (centers > 0) & (contexts > 0) & (centers != contexts)
    stats["pairs"] = int(valid.sum())
    return centers[valid], contexts[valid], stats


class NegativeSampler:
    """unigram^alpha negatives over model ids 1..V, optionally sharing an attribute.

    Args:
      clicks: [V + 1] click counts by model id (index 0 = OOV, never drawn).
      alpha: unigram exponent.
      attribute: optional [V + 1] attribute code by model id (0 = missing).
      attribute_ratio: share of each row's negatives drawn from the positive's
        attribute group; positives whose group is missing or has < 2 items
        fall back to the global table.
    """

    def __init__(self, clicks: np.ndarray, alpha: float = 0.75,
                 attribute: np.ndarray | None = None, attribute_ratio: float = 0.5):
        clicks = np.asarray(clicks, np.float64)
        self.global_sampler = GroupedSampler(clicks[1:], alpha=alpha)
        self.attribute = None if attribute is None else np.asarray(attribute, np.int64)
        self.group_sampler = (None if attribute is None else
                              GroupedSampler(clicks[1:], groups=self.attribute[1:], alpha=alpha))
        self.attribute_ratio = attribute_ratio

    def sample(self, rng: np.random.Generator, positives: np.ndarray, k: int) -> np.ndarray:
        """Negatives [P, k] (model ids) for positive contexts [P]."""
        positives = np.asarray(positives, np.int64)
        out = self.global_sampler.sample(rng, (len(positives), k)) + 1
        if self.group_sampler is None or self.attribute_ratio <= 0:
            return out
        n_attr = int(round(self.attribute_ratio * k))
        if n_attr == 0:
            return out
        groups = self.attribute[positives]
        ok = (groups > 0) & (self.group_sampler.group_sizes_of(groups) >= 2)
        if ok.any():
            out[ok, :n_attr] = self.group_sampler.sample(
                rng, (int(ok.sum()), n_attr), group=groups[ok]) + 1
        return out


@keras.utils.register_keras_serializable(package="feedrec")
class SkipGram(keras.Model):
    """SGNS: separate center (input) and context (output) tables.

    Args:
      num_rows: V + 1 (row 0 = OOV / padding).
      dim: embedding width.
    Call:
      (centers [B], contexts [B], negatives [B, k]) int.
    Returns:
      loss per pair [B]: -log s(c . x) - sum_n log s(-c . n).
    """

    def __init__(self, num_rows: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.num_rows, self.dim = int(num_rows), int(dim)
        self.center = keras.layers.Embedding(
            num_rows, dim, embeddings_initializer=keras.initializers.RandomUniform(
                -0.5 / dim, 0.5 / dim), name="center")
        self.context = keras.layers.Embedding(num_rows, dim, embeddings_initializer="zeros",
                                              name="context")

    def call(self, inputs):
        centers, contexts, negatives = inputs
        c = self.center(centers)  # [B, d]
        pos = tf.reduce_sum(c * self.context(contexts), axis=-1)  # [B]
        neg = tf.einsum("bd,bkd->bk", c, self.context(negatives))  # [B, k]
        return -tf.math.log_sigmoid(pos) - tf.reduce_sum(tf.math.log_sigmoid(-neg), axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {"num_rows": self.num_rows, "dim": self.dim, "name": self.name}


def normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


@keras.utils.register_keras_serializable(package="feedrec")
class MeanHistoryTower(keras.layers.Layer):
    """Item2vec's user "tower": mean of the most recent clicked items' vectors (58.com).

    Args:
      vocabulary: item ids, line i = model id i + 1.
      vectors: [V + 1, dim] item vectors by model id (row 0 ignored); None
        with `dim` builds a zero table to be filled by set_weights / restore.
      history_feature: name of the history input.
      recent_clicks: how many most recent clicks to average.
      dim: vector width when `vectors` is None.
      prior_column: the vectors' last column is the item's popularity prior
        (Item2VecConfig.prior_weights): the user vector averages the other
        columns and puts 1 in that one, so user . item = similarity + prior.
        A user with no known click then gets [0, ..., 0, 1]: no similarity,
        the prior alone (the score's own value for an empty history).
    Call:
      features: dict with history_feature: string [B, L], most recent last,
        padded with "".
    Returns:
      [B, dim] float32; without a prior column, all-zero for a user with no
      known click (the recommender falls back to another recall source).
    """

    def __init__(self, vocabulary: Sequence[str], vectors=None, history_feature: str = "",
                 recent_clicks: int = 20, dim: int | None = None, prior_column: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        if not history_feature:
            raise ValueError("history_feature is required")
        self.vocabulary = list(vocabulary)
        if vectors is None and dim is None:
            raise ValueError("give the item vectors or their dim")
        self._vectors = None if vectors is None else np.asarray(vectors, np.float32)
        self.dim = int(dim if vectors is None else self._vectors.shape[1])
        self.history_feature = history_feature
        self.recent_clicks = int(recent_clicks)
        self.prior_column = bool(prior_column)
        if self.prior_column and self.dim < 2:
            raise ValueError(f"prior_column needs vectors of width >= 2, got {self.dim}")
        self.lookup = keras.layers.StringLookup(
            vocabulary=self.vocabulary or ["\x00<empty>"], num_oov_indices=1, mask_token=None)

    def build(self, input_shape):
        init = ("zeros" if self._vectors is None
                else keras.initializers.Constant(self._vectors))
        self.table = self.add_weight(
            name="item_vectors", shape=(len(self.vocabulary) + 1, self.dim), trainable=False,
            initializer=init)
        super().build(input_shape)

    def call(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        history = tf.convert_to_tensor(features[self.history_feature])
        ids = tf.cast(self.lookup(history), tf.int32)
        ids = tf.where(tf.equal(history, ""), tf.zeros_like(ids), ids)
        # Keep the last `recent_clicks` non-padding ids: history is padded on
        # the right, so rank positions from each row's last real click.
        valid = tf.cast(ids > 0, tf.int32)
        from_end = tf.cumsum(valid, axis=1, reverse=True)  # 1 at the last real click
        keep = tf.cast((ids > 0) & (from_end <= self.recent_clicks), tf.float32)[..., None]
        vectors = tf.gather(self.table, ids)
        count = tf.reduce_sum(keep, axis=1)  # [B, 1]
        mean = tf.reduce_sum(vectors * keep, axis=1) / tf.maximum(count, 1.0)
        if not self.prior_column:
            return mean
        return tf.concat([mean[:, :-1], tf.ones_like(count)], axis=1)

    def get_config(self) -> dict[str, Any]:
        # The vectors are weights, not config (a catalogue would bloat the JSON).
        return {**super().get_config(), "vocabulary": self.vocabulary, "dim": self.dim,
                "history_feature": self.history_feature, "recent_clicks": self.recent_clicks,
                "prior_column": self.prior_column}
