"""Feature towers shared by YouTubeNet and the two-tower model.

A tower maps raw feature tensors (models.inputs dense conventions) to one
vector: FeatureIds -> per-feature embeddings -> concat -> MLP -> [B, dim].
Multi-valued features (the click history, interest tags) are mean-pooled, or
attention-pooled with the single-valued features (demographics, context) as
the query, as in 58.com's two-tower user tower.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from models.layers.feature_embedding import FeatureIds, FieldEmbedding  # noqa: E402


@keras.utils.register_keras_serializable(package="feedrec")
class AttentionPooling(keras.layers.Layer):
    """Additive attention over a padded sequence, guided by a query vector.

    score_l = v . tanh(W_k x_l + W_q q), softmax over the non-padding
    positions; a row with no valid position pools to zeros (a new user's
    empty history contributes nothing instead of NaN).

    Args:
      units: hidden width of the scoring MLP.
      positions: > 0: each position's distance from the row's latest valid
        position (0 = latest, capped at positions - 1) adds a learned
        vector inside the tanh, so the scores can weigh recency (the pooled
        values stay the sequence's own vectors).
    Call:
      sequence: [B, L, d]; mask: [B, L] bool; query: [B, q].
    Returns:
      [B, d].
    """

    def __init__(self, units: int, positions: int = 0, **kwargs):
        super().__init__(**kwargs)
        if units < 1:
            raise ValueError(f"units must be >= 1, got {units}")
        if positions < 0:
            raise ValueError(f"positions must be >= 0, got {positions}")
        self.units, self.positions = int(units), int(positions)
        self.position_table = (keras.layers.Embedding(self.positions, units, name="position")
                               if self.positions else None)
        self.key_proj = keras.layers.Dense(units, use_bias=False, name="key")
        self.query_proj = keras.layers.Dense(units, name="query")
        self.score = keras.layers.Dense(1, use_bias=False, name="score")

    def call(self, sequence: tf.Tensor, mask: tf.Tensor, query: tf.Tensor) -> tf.Tensor:
        keys = self.key_proj(sequence) + self.query_proj(query)[:, None, :]
        if self.position_table is not None:
            from_end = tf.cumsum(tf.cast(mask, tf.int32), axis=1, reverse=True) - 1
            keys += self.position_table(tf.clip_by_value(from_end, 0, self.positions - 1))
        hidden = tf.tanh(keys)
        scores = tf.squeeze(self.score(hidden), -1)  # [B, L]
        mask = tf.cast(mask, scores.dtype)
        scores = scores - tf.reduce_max(scores - 1e9 * (1.0 - mask), axis=1, keepdims=True)
        weights = tf.exp(tf.minimum(scores, 0.0)) * mask
        weights = weights / tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1e-9)
        return tf.einsum("bl,bld->bd", weights, sequence)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "positions": self.positions}


def recent_mean(sequence: tf.Tensor, mask: tf.Tensor, count: int | None = None) -> tf.Tensor:
    """Mean of the last `count` valid positions of each row.

    Valid positions are taken in order wherever the padding sits: a position
    counts when at most `count` valid positions are at or after it.

    Args:
      sequence: [B, L, d] embeddings, oldest first.
      mask: [B, L] bool, True at valid positions.
      count: how many of the latest valid positions (None: all of them).
    Returns:
      [B, d]; zeros for a row with no valid position.
    """
    weights = tf.cast(mask, sequence.dtype)  # [B, L]
    if count is not None:
        from_end = tf.cumsum(weights, axis=1, reverse=True)
        weights = weights * tf.cast(from_end <= count, sequence.dtype)
    total = tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1.0)
    return tf.einsum("bl,bld->bd", weights / total, sequence)


def recent_clicks_apply(config: fc.FeatureConfig, feature_names: Sequence[str]) -> bool:
    """Whether a tower of `feature_names` can take a recent-click mean: it reads a
    sequence feature and another feature (FeatureTower refuses it otherwise)."""
    sequence = [n for n in feature_names if config.feature(n).type == fc.SEQUENCE]
    return bool(sequence) and len(sequence) < len(feature_names)


@keras.utils.register_keras_serializable(package="feedrec")
class FeatureTower(keras.Model):
    """Raw features -> one vector per example.

    Args:
      feature_config: FeatureConfig.to_dict().
      vocabularies: feature name -> vocabulary list.
      feature_names: the features this tower reads (others in the input dict
        are ignored).
      embedding_dim: per-feature embedding width.
      hidden_units: ReLU MLP widths.
      output_dim: output width.
      attention_units: 0 = mean-pool multi-valued features; > 0 = attention
        pooling with the single-valued embeddings as query.
      normalize: L2-normalize the output (cosine towers).
      history_positions: attention pooling of each sequence feature (the
        click history) also scores each position's distance from the row's
        latest click (`AttentionPooling` positions = the feature's max_len).
      recent_clicks: > 0: each sequence feature (the click history, oldest
        first) also adds the mean of its last `recent_clicks` entries (both
        poolings are order-free, and the next click may follow the latest
        ones most). With mean pooling the sequences then get their own
        tables, as with attention.
      shared_tables: item-id feature name -> an Embedding layer another tower
        also uses (the two-tower model's `share_item_embedding`): this
        tower's sequence features whose `of` names it (the click history)
        and that feature itself, if the tower reads it, embed through it, so
        a history click and a candidate item are the same vector. A runtime
        binding, not in get_config: a tower rebuilt from its config embeds
        those features in tables of its own (with mean pooling and no
        recent-click mean, the history back inside FieldEmbedding), so the
        trained weights do not load into it; serve the exported SavedModel,
        which holds the shared weights.
      dropout: rate of Dropout on the MLP's input (the pooled embeddings)
        and on each hidden layer's output, in training only; 0 = none.
    Call:
      features: dict name -> raw tensor.
      training: Dropout is applied only when true.
    Returns:
      [B, output_dim] float32.
    """

    def __init__(self, feature_config: Mapping[str, Any], vocabularies: Mapping[str, Sequence[str]],
                 feature_names: Sequence[str], embedding_dim: int, hidden_units: Sequence[int],
                 output_dim: int, attention_units: int = 0, normalize: bool = False,
                 recent_clicks: int = 0, history_positions: bool = False,
                 shared_tables: Mapping[str, keras.layers.Embedding] | None = None,
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.feature_config = dict(feature_config)
        self.vocabularies = {k: list(v) for k, v in vocabularies.items()}
        self.feature_names = list(feature_names)
        self.embedding_dim, self.output_dim = int(embedding_dim), int(output_dim)
        self.hidden_units = [int(u) for u in hidden_units]
        self.attention_units, self.normalize = int(attention_units), bool(normalize)
        self.recent_clicks = int(recent_clicks)
        self.history_positions = bool(history_positions)
        self.dropout = float(dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if self.recent_clicks < 0:
            raise ValueError(f"recent_clicks must be >= 0, got {recent_clicks}")
        config = fc.from_dict(self.feature_config)
        if not self.feature_names:
            raise ValueError("a tower needs at least one feature")
        if self.recent_clicks and not recent_clicks_apply(config, self.feature_names):
            # Otherwise the setting would change nothing (or leave no feature
            # to embed), and a trainer choosing it would fit one model twice.
            raise ValueError(f"recent_clicks {self.recent_clicks} needs a sequence feature "
                             f"and another feature in {list(self.feature_names)}")
        self.ids = FeatureIds(self.feature_config, self.vocabularies, self.feature_names)
        shared_tables = dict(shared_tables or {})
        # Features looked up in a shared table: the id feature itself, and
        # the sequences of it (embedded apart from FieldEmbedding).
        self.shared_names = [n for n in self.feature_names if n in shared_tables]
        shared_sequences = [n for n in self.feature_names
                            if config.feature(n).type == fc.SEQUENCE
                            and config.feature(n).of in shared_tables]
        rest = [n for n in self.feature_names if n not in self.shared_names]
        multi = [n for n in rest if config.feature(n).type in (fc.TAGS, fc.SEQUENCE)]
        single = [n for n in rest if n not in multi]
        attend = bool(self.attention_units and single)
        if not attend:
            single, multi = rest, []
            if self.recent_clicks or shared_sequences:
                # Mean pooling with a recent-click mean or a shared table:
                # the sequences get their own tables, as attention pooling's do.
                multi = [n for n in rest if config.feature(n).type == fc.SEQUENCE]
                single = [n for n in rest if n not in multi]
        if self.history_positions and not (attend and any(
                config.feature(n).type == fc.SEQUENCE for n in multi)):
            # Otherwise no pooling would read positions: a run would train
            # the plain tower while its config says positions are on.
            raise ValueError(f"history_positions needs attention pooling (attention_units > 0 "
                             f"and a non-sequence feature) over a sequence feature in "
                             f"{list(self.feature_names)}")
        if not single and not self.shared_names:
            raise ValueError(f"no feature of {list(self.feature_names)} is left to embed "
                             f"apart from the shared tables' sequences")
        self.single_names, self.multi_names = single, multi
        self.recent_names = ([n for n in multi if config.feature(n).type == fc.SEQUENCE]
                             if self.recent_clicks else [])
        rows = {n: self.ids.num_rows(n) for n in single}
        for n in single:
            spec = config.feature(n)
            if spec.type == fc.SEQUENCE:
                rows[spec.of] = self.ids.num_rows(n)
        self.embed = (FieldEmbedding(self.feature_config, rows, self.embedding_dim,
                                     feature_names=single, name="field_embedding")
                      if single else None)
        for n in self.shared_names + shared_sequences:
            of = n if n in shared_tables else config.feature(n).of
            table = shared_tables[of]
            if table.input_dim != self.ids.num_rows(n) or table.output_dim != self.embedding_dim:
                raise ValueError(f"shared table for {of!r} is {table.input_dim} x "
                                 f"{table.output_dim}; {n!r} needs {self.ids.num_rows(n)} x "
                                 f"{self.embedding_dim}")
        self.shared_tables = {n: shared_tables[n] for n in self.shared_names}
        self.sequence_tables = {
            n: (shared_tables[config.feature(n).of] if n in shared_sequences else
                keras.layers.Embedding(self.ids.num_rows(n), self.embedding_dim,
                                       embeddings_initializer=keras.initializers.RandomNormal(
                                           stddev=0.01), name=f"{n}_sequence_embedding"))
            for n in multi}
        self.poolers = {n: AttentionPooling(
            self.attention_units, name=f"{n}_attention",
            positions=(config.feature(n).max_len if self.history_positions
                       and config.feature(n).type == fc.SEQUENCE else 0))
            for n in multi if attend}
        self.mlp = [keras.layers.Dense(u, activation="relu", name=f"hidden_{i}")
                    for i, u in enumerate(self.hidden_units)]
        self.out = keras.layers.Dense(self.output_dim, name="output")
        self.drop = [keras.layers.Dropout(self.dropout, name=f"dropout_{i}")
                     for i in range(len(self.hidden_units) + 1)] if self.dropout else []

    def call(self, features: Mapping[str, tf.Tensor], training: bool | None = None) -> tf.Tensor:
        ids = self.ids({n: features[n] for n in self.feature_names})
        flats = []
        if self.embed is not None:
            single = self.embed({n: ids[n] for n in self.single_names})  # [B, F, e]
            flats.append(tf.reshape(single, [-1, len(self.single_names) * self.embedding_dim]))
        flats += [self.shared_tables[n](ids[n]) for n in self.shared_names]  # [B, e] each
        flat = tf.concat(flats, axis=1) if len(flats) > 1 else flats[0]
        parts = [flat]
        for n in self.multi_names:
            vectors = self.sequence_tables[n](ids[n])  # [B, L, e]
            mask = ids[n] > 0
            parts.append(self.poolers[n](vectors, mask, flat) if n in self.poolers
                         else recent_mean(vectors, mask))
            if n in self.recent_names:
                parts.append(recent_mean(vectors, mask, self.recent_clicks))
        x = tf.concat(parts, axis=1)
        for i, layer in enumerate(self.mlp):
            x = layer(self.drop[i](x, training=training) if self.drop else x)
        if self.drop:
            x = self.drop[-1](x, training=training)
        x = self.out(x)
        return tf.math.l2_normalize(x, axis=1) if self.normalize else x

    def get_config(self) -> dict[str, Any]:
        return {"feature_config": self.feature_config, "vocabularies": self.vocabularies,
                "feature_names": self.feature_names, "embedding_dim": self.embedding_dim,
                "hidden_units": self.hidden_units, "output_dim": self.output_dim,
                "attention_units": self.attention_units, "normalize": self.normalize,
                "recent_clicks": self.recent_clicks,
                "history_positions": self.history_positions, "dropout": self.dropout,
                "name": self.name}
