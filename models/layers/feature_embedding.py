"""Raw feature tensors -> ids -> one embedding per feature, grouped by field.

Shared by every ranking and recall model. Id 0 is reserved in every feature for
out-of-vocabulary / missing / padding, so masks are simply `ids > 0`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from models import inputs  # noqa: E402

# How a multi-valued feature (tags, click history) is pooled into one vector.
MEAN, SUM, SQRTN = "mean", "sum", "sqrtn"
POOLINGS: tuple[str, ...] = (MEAN, SUM, SQRTN)


class VocabularyError(ValueError):
    """The vocabularies do not belong to the data (a wrong vocab_dir)."""


def load_vocabularies(config: fc.FeatureConfig, vocab_dir: str | None) -> dict[str, list[str]]:
    """Vocabulary lists of the config's vocab features (sequences use `of`'s).

    Raises:
      VocabularyError: vocab_dir is given but holds no vocabulary of any of
        the config's features: every id would be OOV and the model would
        train to AUC 0.5 without a word, so a wrong path fails here.
    """
    vocabs = {}
    for f in config.vocab_features:
        words = inputs.read_vocab(vocab_dir, f.name) if vocab_dir else []
        vocabs[f.name] = words[: f.vocab_size]
    if vocab_dir and config.vocab_features and not any(vocabs.values()):
        raise VocabularyError(
            f"vocab_dir {vocab_dir!r} holds no vocabulary of "
            f"{sorted(f.name for f in config.vocab_features)} (<feature>.txt): a wrong path?")
    return vocabs


def oov_rates(vocabularies: Mapping[str, Sequence[str]], batch: Mapping[str, Any]
              ) -> dict[str, float]:
    """Share of a batch's non-empty string values outside each feature's vocabulary.

    Args:
      vocabularies: feature -> vocabulary (load_vocabularies).
      batch: feature -> raw values ([B] or [B, L] strings or bytes; "" = padding).
    Returns:
      feature -> OOV share, for the features in both with any value.
    """
    rates = {}
    for name, words in vocabularies.items():
        if name not in batch:
            continue
        values = [v.decode() if isinstance(v, bytes) else str(v)
                  for v in np.asarray(batch[name]).ravel()]
        values = [v for v in values if v]
        if values:
            known = set(words)
            rates[name] = sum(v not in known for v in values) / len(values)
    return rates


def check_vocabulary_coverage(vocabularies: Mapping[str, Sequence[str]],
                              batch: Mapping[str, Any], vocab_dir: str,
                              max_oov: float = 0.99) -> dict[str, float]:
    """Fails when EVERY vocab feature of a training batch is (almost) all OOV.

    The vocabularies are built from the training split, so on the right ones
    the train OOV share is small (the vocab_size cap, min_count); all features
    at >= max_oov means vocabularies of other data (e.g. another dataset's
    vocab_dir). One feature alone may be all OOV (a cold id), so only all of
    them together fail.

    Returns:
      the OOV rates (oov_rates).
    Raises:
      VocabularyError: naming vocab_dir and every feature's OOV rate.
    """
    rates = oov_rates(vocabularies, batch)
    if rates and min(rates.values()) >= max_oov:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(rates.items()))
        raise VocabularyError(f"every feature of the training data is out of the vocabularies "
                              f"in {vocab_dir!r} (OOV rate {shown}): vocabularies of other data?")
    return rates


@keras.utils.register_keras_serializable(package="feedrec")
class FeatureIds(keras.layers.Layer):
    """Maps raw feature tensors to int ids, 0 = OOV / missing / padding.

    Args:
      feature_config: FeatureConfig.to_dict() of the dataset.
      vocabularies: feature name -> vocabulary list (most frequent first).
      feature_names: which features to map (default: all).
    Call:
      raw: dict name -> categorical string [B] | tags/sequence string [B, L] |
        numeric float [B].
    Returns:
      dict name -> int32 ids, [B] or [B, L].
    """

    def __init__(self, feature_config: Mapping[str, Any], vocabularies: Mapping[str, Sequence[str]],
                 feature_names: Sequence[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.feature_config = dict(feature_config)
        self.vocabularies = {k: list(v) for k, v in vocabularies.items()}
        self._config = fc.from_dict(self.feature_config)
        self.feature_names = list(feature_names or [f.name for f in self._config.features])
        self._lookups: dict[str, keras.layers.Layer] = {}
        for name in self.feature_names:
            spec = self._config.feature(name)
            source = self._config.feature(spec.of) if spec.type == fc.SEQUENCE else spec
            if spec.type == fc.NUMERIC:
                self._lookups[name] = keras.layers.Discretization(
                    bin_boundaries=list(spec.boundaries), name=f"{name}_buckets")
            elif source.hash_buckets:
                self._lookups[name] = keras.layers.Hashing(
                    num_bins=source.hash_buckets, name=f"{name}_hash")
            else:
                vocab = self.vocabularies.get(source.name) or []
                # StringLookup rejects an empty vocabulary; a placeholder token
                # that never occurs keeps ids stable (everything maps to 0).
                vocab = [v for v in vocab if v] or ["\x00<empty>"]
                self._lookups[name] = keras.layers.StringLookup(
                    vocabulary=vocab, num_oov_indices=1, mask_token=None,
                    name=f"{name}_lookup")

    def num_rows(self, name: str) -> int:
        """Embedding rows feature `name` needs (ids are in [0, num_rows))."""
        spec = self._config.feature(name)
        source = self._config.feature(spec.of) if spec.type == fc.SEQUENCE else spec
        if spec.type == fc.NUMERIC:
            return len(spec.boundaries) + 2
        if source.hash_buckets:
            return source.hash_buckets + 1
        return max(len(self.vocabularies.get(source.name) or []), 1) + 1

    def call(self, raw: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = {}
        for name in self.feature_names:
            spec = self._config.feature(name)
            value = raw[name]
            if spec.type == fc.NUMERIC:
                ids = tf.cast(self._lookups[name](tf.cast(value, tf.float32)), tf.int32) + 1
            else:
                value = tf.convert_to_tensor(value)
                ids = tf.cast(self._lookups[name](value), tf.int32)
                # Empty strings are padding / missing: always id 0. A vocabulary
                # never holds "" (see __init__), so a StringLookup already maps
                # it to the OOV id 0; only hashed ids need the mask (3 ops per
                # feature saved on every serving call).
                if isinstance(self._lookups[name], keras.layers.Hashing):
                    ids = tf.where(tf.equal(value, ""), tf.zeros_like(ids), ids + 1)
            out[name] = ids
        return out

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "feature_config": self.feature_config,
                "vocabularies": self.vocabularies, "feature_names": self.feature_names}


@keras.utils.register_keras_serializable(package="feedrec")
class FieldEmbedding(keras.layers.Layer):
    """One vector per feature: ids -> [B, F, dim], plus first-order weights.

    Multi-valued features (tags, the click history) are pooled over their
    non-zero ids: mean (default), sum, or sum / sqrt(count) ("sqrtn"). The history shares the embedding table of the feature named
    by its `of` (the candidate item id), as in Meitu's design.

    Args:
      feature_config: FeatureConfig.to_dict().
      num_rows: feature name -> table rows (from FeatureIds.num_rows).
      dim: embedding width.
      feature_names: features to embed, in output order (default: config
        order grouped by field user, item, context).
      with_linear: also build 1-wide tables for the first-order term.
      l2: L2 penalty on the embedding tables.
      pooling: one of POOLINGS, how a multi-valued feature's vectors are pooled.
    Call:
      ids: dict name -> int32 [B] or [B, L].
    Returns:
      embeddings [B, F, dim] (and linear weights [B, F] when with_linear).
    """

    def __init__(self, feature_config: Mapping[str, Any], num_rows: Mapping[str, int], dim: int,
                 feature_names: Sequence[str] | None = None, with_linear: bool = False,
                 l2: float = 0.0, pooling: str = MEAN, **kwargs):
        super().__init__(**kwargs)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} not in {POOLINGS}")
        self.pooling = pooling
        self.feature_config = dict(feature_config)
        self.num_rows = dict(num_rows)
        self.dim = int(dim)
        self.with_linear = bool(with_linear)
        self.l2 = float(l2)
        self._config = fc.from_dict(self.feature_config)
        self.feature_names = list(feature_names or ordered_feature_names(self._config))

    def _table_owner(self, name: str) -> str:
        spec = self._config.feature(name)
        return spec.of if spec.type == fc.SEQUENCE and spec.of in self.num_rows else name

    def build(self, input_shape):
        reg = keras.regularizers.l2(self.l2) if self.l2 else None
        self.tables: dict[str, tf.Variable] = {}
        self.linear_tables: dict[str, tf.Variable] = {}
        for name in self.feature_names:
            owner = self._table_owner(name)
            if owner in self.tables:
                continue
            self.tables[owner] = self.add_weight(
                name=f"{owner}_embedding", shape=(self.num_rows[owner], self.dim),
                initializer=keras.initializers.RandomNormal(stddev=0.01), regularizer=reg)
            if self.with_linear:
                self.linear_tables[owner] = self.add_weight(
                    name=f"{owner}_linear", shape=(self.num_rows[owner], 1), initializer="zeros")
        super().build(input_shape)

    def _pool(self, vectors: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
        """Masked pooling over axis 1: [B, L, d] -> [B, d]; all-padding rows give 0.

        The mean keeps a long history's vector at the scale of one item's;
        the sum lets the interaction terms grow with the number of tags or
        past clicks; sqrtn sits between (TF's "sqrtn" combiner).
        """
        mask = tf.cast(ids > 0, vectors.dtype)[..., None]
        total = tf.reduce_sum(vectors * mask, axis=1)
        if self.pooling == SUM:
            return total
        count = tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        return total / (tf.sqrt(count) if self.pooling == SQRTN else count)

    def _lookup(self, table: tf.Variable, ids: tf.Tensor) -> tf.Tensor:
        # embedding_lookup, not tf.gather: on a table sharded over parameter
        # servers (a ShardedVariable, models.distributed) it reads each shard
        # and puts the rows back in id order, while tf.gather goes through
        # ShardedVariable.sparse_read, which (TF 2.21) returns the rows grouped
        # by shard, out of id order, and takes only 1-D ids. On a plain
        # variable both are the same gather.
        vectors = tf.nn.embedding_lookup(table, ids)
        if ids.shape.rank == 2:
            return self._pool(vectors, ids)
        # Id 0 (OOV / missing) of a single-valued feature keeps its own learned
        # row: "unknown" is information for a categorical feature.
        return vectors

    def call(self, ids: Mapping[str, tf.Tensor]):
        return self.embed(ids, self.feature_names)

    def embed(self, ids: Mapping[str, tf.Tensor], names: Sequence[str]):
        """Like call, for a subset of the features (in the given order).

        Lets a caller embed features of different batch sizes separately, e.g.
        one user's features once and N candidate items' features, then
        broadcast (ranking's score_candidates).
        """
        embedded = [self._lookup(self.tables[self._table_owner(n)], ids[n]) for n in names]
        embeddings = tf.stack(embedded, axis=1)
        if not self.with_linear:
            return embeddings
        linear = tf.concat([self._lookup(self.linear_tables[self._table_owner(n)], ids[n])
                            for n in names], axis=1)
        return embeddings, linear

    def field_of(self) -> list[str]:
        """Field of each output feature, aligned with axis 1 of the output."""
        return [self._config.feature(n).field for n in self.feature_names]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "feature_config": self.feature_config,
                "num_rows": self.num_rows, "dim": self.dim,
                "feature_names": self.feature_names, "with_linear": self.with_linear,
                "l2": self.l2, "pooling": self.pooling}


def ordered_feature_names(config: fc.FeatureConfig,
                          fields: Sequence[str] = fc.FIELDS) -> list[str]:
    """Feature names grouped by field (user, item, context), config order within."""
    return [f.name for field in fields for f in config.field_features(field)]
