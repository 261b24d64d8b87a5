"""Meitu's Field-wise Bi-Interaction layer (the core of NFwFM).

Features are grouped into M fields (user, item, context). With v_i the
embedding of feature i, x_i its first-order weight, F(i) its field and
V_m = sum_{i in m} v_i the field sum, the layer computes

  S  = sum_i x_i                                           (first order)
  MF = sum_{a<b} r_ab * V_a (.) V_b                        (field pairs)
  FM = sum_m r_mm * 0.5 * (V_m^2 - sum_{i in m} v_i^2)     (inside a field)
  B  = MF + FM                                             [d]

We keep the 0.5 in FM so that B = sum_{i<j} r_{F(i)F(j)} v_i (.) v_j exactly:
every unordered feature pair counted once, with the weight of its field pair
(the FwFM form), and with all r = 1 B equals NFM's Bi-Interaction.

Dropout follows the published formula, not inverted dropout: in training
each element of B is kept with probability beta and zeroed otherwise (no
1/beta rescaling), so E[B_train] = beta * B; at inference B is multiplied by
beta.

References:
  Meitu, "NFwFM: Neural Field-weighted Factorization Machines" (push
  recommendation system talk / blog, 2019); Pan et al., "Field-weighted
  Factorization Machines for Click-Through Rate Prediction", WWW 2018.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402


def field_layout(field_of: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Fields in first-appearance order, the [F, M] one-hot, the [P, 2] pairs.

    Args:
      field_of: field name of each feature, aligned with axis 1 of the
        embeddings.
    Returns:
      (fields, one_hot float32 [F, M], pairs int32 [P, 2] with a < b).
    """
    fields = list(dict.fromkeys(field_of))
    one_hot = np.zeros((len(field_of), len(fields)), np.float32)
    for i, name in enumerate(field_of):
        one_hot[i, fields.index(name)] = 1.0
    pairs = np.array(list(itertools.combinations(range(len(fields)), 2)),
                     np.int32).reshape(-1, 2)
    return fields, one_hot, pairs


@keras.utils.register_keras_serializable(package="feedrec")
class FieldWiseBiInteraction(keras.layers.Layer):
    """S, MF and FM modules of NFwFM, vectorized over fields and field pairs.

    Args:
      field_of: field of each feature (e.g. FieldEmbedding.field_of()).
      use_fm_module: include the within-field FM module (ablation switch).
      use_dropout: apply the Bernoulli dropout on B (ablation switch).
      keep_prob: beta, the keep probability of that dropout, in (0, 1].
      seed: op seed of the dropout mask.
    Call:
      embeddings: [B, F, d]; linear: [B, F] first-order weights (optional).
    Returns:
      (S [B], B [B, d]).
    Raises:
      ValueError: keep_prob out of (0, 1], no features, or the input's F does
        not match field_of.
    """

    def __init__(self, field_of: Sequence[str], use_fm_module: bool = True,
                 use_dropout: bool = True, keep_prob: float = 0.8,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not field_of:
            raise ValueError("field_of is empty: the layer needs at least one feature")
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
        self.field_of = list(field_of)
        self.use_fm_module = bool(use_fm_module)
        self.use_dropout = bool(use_dropout)
        self.keep_prob = float(keep_prob)
        self.seed = seed
        self.fields, one_hot, pairs = field_layout(self.field_of)
        self._one_hot = tf.constant(one_hot)
        self._pairs = pairs

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    @property
    def num_pairs(self) -> int:
        return len(self._pairs)

    def build(self, input_shape):
        # r starts at 1: the layer starts as NFM's Bi-Interaction and learns
        # how much each field pair matters.
        self.pair_weights = self.add_weight(
            name="pair_weights", shape=(self.num_pairs,), initializer="ones")
        if self.use_fm_module:
            self.field_weights = self.add_weight(
                name="field_weights", shape=(self.num_fields,), initializer="ones")
        super().build(input_shape)

    def _pair_matrix(self) -> tf.Tensor:
        """[M, M] strictly upper-triangular matrix holding r_ab at (a, b)."""
        return tf.scatter_nd(self._pairs, self.pair_weights,
                             [self.num_fields, self.num_fields])

    def second_order_parts(self, embeddings: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The MF and FM module outputs before dropout.

        Args:
          embeddings: [B, F, d].
        Returns:
          (MF [B, d], FM [B, d]); FM is zeros when the module is disabled.
        """
        if embeddings.shape.rank != 3 or embeddings.shape[1] != len(self.field_of):
            raise ValueError(f"want embeddings [B, {len(self.field_of)}, d] matching "
                             f"field_of, got shape {embeddings.shape}")
        one_hot = tf.cast(self._one_hot, embeddings.dtype)
        field_sums = tf.einsum("bfd,fm->bmd", embeddings, one_hot)
        # One einsum over all field pairs, weighted by the upper-triangular r.
        mf = tf.einsum("bmd,bnd,mn->bd", field_sums, field_sums, self._pair_matrix())
        if not self.use_fm_module:
            return mf, tf.zeros_like(mf)
        field_square_sums = tf.einsum("bfd,fm->bmd", tf.square(embeddings), one_hot)
        within = 0.5 * (tf.square(field_sums) - field_square_sums)
        fm = tf.einsum("bmd,m->bd", within, self.field_weights)
        return mf, fm

    def call(self, embeddings: tf.Tensor, linear: tf.Tensor | None = None,
             training: bool | tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        mf, fm = self.second_order_parts(embeddings)
        interaction = mf + fm
        if self.use_dropout:
            interaction = self._dropout(interaction, training)
        if linear is None:
            first_order = tf.zeros(tf.shape(embeddings)[:1], embeddings.dtype)
        else:
            first_order = tf.reduce_sum(linear, axis=1)
        return first_order, interaction

    def _dropout(self, x: tf.Tensor, training) -> tf.Tensor:
        def train():
            keep = tf.random.uniform(tf.shape(x), seed=self.seed, dtype=x.dtype) < self.keep_prob
            return x * tf.cast(keep, x.dtype)

        def infer():
            return x * self.keep_prob

        if training is None or isinstance(training, bool):
            return train() if training else infer()
        return tf.cond(tf.cast(training, tf.bool), train, infer)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "field_of": self.field_of,
                "use_fm_module": self.use_fm_module, "use_dropout": self.use_dropout,
                "keep_prob": self.keep_prob, "seed": self.seed}
