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

`pair_weights="vector"` makes every r a d-vector multiplied elementwise (the
FvFM form of Sun et al. 2021, "FM^2: Field-matrix Factorization Machines"):
each field pair weighs each dimension of its product on its own, at the same
FLOPs and M(M+1)/2 * (d - 1) more parameters. The default "scalar" is Meitu's.

The layer works from per-field statistics (V_m and sum_{i in m} v_i^2), so
fields may arrive at different batch sizes that broadcast: ranking's
score_candidates computes one user's user and context fields once ([1, d])
against N candidates' item field ([N, d]).

Dropout follows the published formula, not inverted dropout: in training
each element of B is kept with probability beta and zeroed otherwise (no
1/beta rescaling), so E[B_train] = beta * B; at inference B is multiplied by
beta.

References:
  Meitu, "NFwFM: Neural Field-weighted Factorization Machines" (push
  recommendation system talk / blog, 2019); Pan et al., "Field-weighted
  Factorization Machines for Click-Through Rate Prediction", WWW 2018; Sun et
  al., "FM^2: Field-matrix Factorization Machines for Recommender Systems",
  WWW 2021 (the vector form).
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402


SCALAR, VECTOR = "scalar", "vector"
PAIR_WEIGHT_FORMS = (SCALAR, VECTOR)


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
      pair_weights: "scalar" (one r per field pair, FwFM; the default) or
        "vector" (one d-vector r per field pair, FvFM).
    Call:
      embeddings: [B, F, d]; linear: [B, F] first-order weights (optional).
    Returns:
      (S [B], B [B, d]).
    Raises:
      ValueError: keep_prob out of (0, 1], no features, pair_weights not one
        of PAIR_WEIGHT_FORMS, or the input's F does not match field_of.
    """

    def __init__(self, field_of: Sequence[str], use_fm_module: bool = True,
                 use_dropout: bool = True, keep_prob: float = 0.8,
                 seed: int | None = None, pair_weights: str = SCALAR, **kwargs):
        super().__init__(**kwargs)
        if not field_of:
            raise ValueError("field_of is empty: the layer needs at least one feature")
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
        if pair_weights not in PAIR_WEIGHT_FORMS:
            raise ValueError(f"pair_weights must be one of {PAIR_WEIGHT_FORMS}, got "
                             f"{pair_weights!r}")
        self.pair_weight_form = pair_weights
        self.field_of = list(field_of)
        self.use_fm_module = bool(use_fm_module)
        self.use_dropout = bool(use_dropout)
        self.keep_prob = float(keep_prob)
        self.seed = seed
        self.fields, _, self._pairs = field_layout(self.field_of)

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    @property
    def num_pairs(self) -> int:
        return len(self._pairs)

    def build(self, input_shape):
        # r starts at 1: the layer starts as NFM's Bi-Interaction and learns
        # how much each field pair matters.
        if self.pair_weight_form == VECTOR:
            dim = tf.TensorShape(input_shape)[-1]
            if dim is None:
                raise ValueError(f"pair_weights={VECTOR!r} needs a known embedding width, "
                                 f"got input shape {input_shape}")
            tail = (int(dim),)
        else:
            tail = ()
        self.pair_weights = self.add_weight(
            name="pair_weights", shape=(self.num_pairs, *tail), initializer="ones")
        if self.use_fm_module:
            self.field_weights = self.add_weight(
                name="field_weights", shape=(self.num_fields, *tail), initializer="ones")
        super().build(input_shape)

    def field_statistics(self, embeddings: tf.Tensor, positions: Sequence[int] | None = None
                         ) -> dict[int, tuple[tf.Tensor, tf.Tensor | None]]:
        """Per-field sums V_m and sums of squares of some features.

        The field layout is static, so each field is one slice (features of
        a field are usually adjacent) or one gather, summed over axis 1: much
        cheaper on CPU than an einsum with the [F, M] one-hot, which
        transposes the whole [B, F, d] tensor.

        Args:
          embeddings: [B, K, d], the features at `positions` of field_of.
          positions: indices into field_of of axis 1 (default: all, in order).
        Returns:
          field index m -> (V_m [B, d], sum_{i in m} v_i^2 [B, d] or None
          without the FM module), for the fields with a feature among
          `positions`.
        """
        positions = list(range(len(self.field_of)) if positions is None else positions)
        if embeddings.shape.rank != 3 or embeddings.shape[1] != len(positions):
            against = "field_of" if len(positions) == len(self.field_of) else "positions"
            raise ValueError(f"want embeddings [B, {len(positions)}, d] matching {against}, "
                             f"got shape {embeddings.shape}")
        by_field: dict[int, list[int]] = {}
        for k, pos in enumerate(positions):
            by_field.setdefault(self.fields.index(self.field_of[pos]), []).append(k)
        out = {}
        for m, ks in by_field.items():
            if ks == list(range(ks[0], ks[-1] + 1)):
                part = embeddings[:, ks[0]:ks[-1] + 1]
            else:
                part = tf.gather(embeddings, ks, axis=1)
            square = (tf.reduce_sum(tf.square(part), axis=1) if self.use_fm_module
                      else None)
            out[m] = (tf.reduce_sum(part, axis=1), square)
        return out

    def parts_from_statistics(self, stats: dict[int, tuple[tf.Tensor, tf.Tensor | None]]
                              ) -> tuple[tf.Tensor, tf.Tensor]:
        """(MF, FM) from field_statistics output; batches broadcast.

        Fields may come with different batch sizes that broadcast (e.g. one
        user's fields [1, d] and N candidates' item field [N, d]), so the
        user x context terms are computed once per user.

        Raises:
          ValueError: a field has no statistics.
        """
        missing = [self.fields[m] for m in range(self.num_fields) if m not in stats]
        if missing:
            raise ValueError(f"no features of fields {missing}")
        # Stack the M field sums (broadcast to a common batch) into [B, M, d];
        # the P = M(M-1)/2 pair products are one gather pair and one einsum
        # with r_ij, not a Python loop over pairs.
        sums = [stats[m][0] for m in range(self.num_fields)]
        shape = functools.reduce(tf.broadcast_dynamic_shape, [tf.shape(v) for v in sums])
        field_sums = tf.stack([tf.broadcast_to(v, shape) for v in sums], axis=1)
        left = tf.gather(field_sums, self._pairs[:, 0], axis=1)
        right = tf.gather(field_sums, self._pairs[:, 1], axis=1)
        vector = self.pair_weight_form == VECTOR
        mf = tf.einsum("bpd,pd->bd" if vector else "bpd,p->bd", left * right,
                       self.pair_weights)
        if not self.use_fm_module:
            return mf, tf.zeros_like(mf)
        squares = tf.stack([tf.broadcast_to(stats[m][1], shape)
                            for m in range(self.num_fields)], axis=1)
        fm = tf.einsum("bmd,md->bd" if vector else "bmd,m->bd",
                       0.5 * (tf.square(field_sums) - squares), self.field_weights)
        return mf, fm

    def second_order_parts(self, embeddings: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The MF and FM module outputs before dropout.

        Args:
          embeddings: [B, F, d].
        Returns:
          (MF [B, d], FM [B, d]); FM is zeros when the module is disabled.
        """
        return self.parts_from_statistics(self.field_statistics(embeddings))

    def call(self, embeddings: tf.Tensor, linear: tf.Tensor | None = None,
             training: bool | tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        mf, fm = self.second_order_parts(embeddings)
        interaction = self.finish(mf, fm, training)
        if linear is None:
            first_order = tf.zeros(tf.shape(embeddings)[:1], embeddings.dtype)
        else:
            first_order = tf.reduce_sum(linear, axis=1)
        return first_order, interaction

    def finish(self, mf: tf.Tensor, fm: tf.Tensor, training=None) -> tf.Tensor:
        """B = MF + FM, then the published dropout (scaling by beta at inference)."""
        interaction = mf + fm
        if self.use_dropout:
            interaction = self._dropout(interaction, training)
        return interaction

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
                "keep_prob": self.keep_prob, "seed": self.seed,
                "pair_weights": self.pair_weight_form}
