"""Reading the sessionize job's TFRecords into dense feature tensors.

One module serves every model: the parse spec, the tf.data pipeline and the
raw-feature signature are all derived from the feature config, so no model
names a column. Dense conventions (also the raw serving signature):

  categorical  string  [B]
  tags         string  [B, max_len]   padded with ""
  sequence     string  [B, max_len]   padded with "", most recent click last
  numeric      float32 [B]
  labels       float32 [B]            (click, follow)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402


def features_for_kind(config: fc.FeatureConfig, kind: str) -> tuple[fc.FeatureSpec, ...]:
    """Model features present in examples of `kind` (ranking or retrieval)."""
    if kind == fc.RANKING:
        return config.features
    if kind == fc.RETRIEVAL:
        return config.features  # user + context + history + target item features
    raise ValueError(f"kind {kind!r} has no model features; want ranking or retrieval")


def feature_parse_spec(specs: Sequence[fc.FeatureSpec]) -> dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]:
    """parse_example entries of model features: numeric float, categorical one
    string (missing -> the feature's default), tags / sequence variable-length strings."""
    spec: dict = {}
    for f in specs:
        if f.type == fc.NUMERIC:
            spec[f.name] = tf.io.FixedLenFeature([], tf.float32, default_value=0.0)
        elif f.type == fc.CATEGORICAL:
            spec[f.name] = tf.io.FixedLenFeature([], tf.string, default_value=f.default)
        else:
            spec[f.name] = tf.io.VarLenFeature(tf.string)
    return spec


def parse_spec(config: fc.FeatureConfig, kind: str) -> dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]:
    """tf.io.parse_example spec for one example kind."""
    if kind == fc.ITEM2VEC:
        return {fc.SESSION_ITEMS_KEY: tf.io.VarLenFeature(tf.string),
                fc.USER_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
                fc.TIMESTAMP_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0)}
    spec = feature_parse_spec(features_for_kind(config, kind))
    spec[fc.TIMESTAMP_KEY] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
    spec[fc.NEW_USER_KEY] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
    spec[fc.USER_KEY] = tf.io.FixedLenFeature([], tf.string, default_value="")
    if kind == fc.RANKING:
        for label in fc.LABEL_KEYS:
            spec[label] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
    return spec


def pad_to(values: tf.Tensor | tf.SparseTensor | tf.RaggedTensor, max_len: int,
           keep_last: bool = False) -> tf.Tensor:
    """Densifies a [B, None] string tensor to [B, max_len], padding with "".

    Args:
      values: sparse, ragged or dense strings, [B, None].
      max_len: output width.
      keep_last: keep the last max_len values (histories) instead of the first.
    Returns:
      string [B, max_len].
    """
    if isinstance(values, tf.SparseTensor):
        values = tf.RaggedTensor.from_sparse(values)
    elif not isinstance(values, tf.RaggedTensor):
        values = tf.RaggedTensor.from_tensor(values, padding="")
    values = values[:, -max_len:] if keep_last else values[:, :max_len]
    return values.to_tensor(default_value="", shape=[None, max_len])


def densify(parsed: dict[str, tf.Tensor], config: fc.FeatureConfig) -> dict[str, tf.Tensor]:
    """Turns parse_example output into the dense conventions of this module."""
    out = dict(parsed)
    for f in config.features:
        if f.name in out and f.type in (fc.TAGS, fc.SEQUENCE):
            out[f.name] = pad_to(out[f.name], f.max_len, keep_last=f.type == fc.SEQUENCE)
    if fc.SESSION_ITEMS_KEY in out and isinstance(out[fc.SESSION_ITEMS_KEY], tf.SparseTensor):
        out[fc.SESSION_ITEMS_KEY] = tf.RaggedTensor.from_sparse(out[fc.SESSION_ITEMS_KEY])
    return out


def parse_examples(serialized: tf.Tensor, config: fc.FeatureConfig, kind: str) -> dict[str, tf.Tensor]:
    """serialized tf.Example [B] -> dense feature dict (labels as float32)."""
    parsed = densify(tf.io.parse_example(serialized, parse_spec(config, kind)), config)
    for label in fc.LABEL_KEYS:
        if label in parsed:
            parsed[label] = tf.cast(parsed[label], tf.float32)
    return parsed


def split_pattern(examples_dir: str, split: str) -> str:
    """Files of one split under an Examples directory (TFX `Split-<name>` layout)."""
    return os.path.join(examples_dir, f"Split-{split}", "*.gz")


def make_dataset(file_pattern: str | Sequence[str], config: fc.FeatureConfig, kind: str,
                 batch_size: int, shuffle: bool = False, seed: int = 0,
                 num_epochs: int | None = 1,
                 label_keys: Sequence[str] = (),
                 record_filter: Callable[[tf.Tensor], tf.Tensor] | None = None
                 ) -> tf.data.Dataset:
    """Batched dataset of dense feature dicts (or (features, labels) pairs).

    Args:
      file_pattern: gzip TFRecord glob(s).
      config: the dataset's feature config.
      kind: ranking, retrieval or item2vec.
      batch_size: examples per batch.
      shuffle: shuffle files and examples (training).
      seed: shuffle seed.
      num_epochs: repeat count (None = forever).
      label_keys: when given, yield (features, {label: [B] float32}).
      record_filter: keeps the serialized records for which it returns True
        (e.g. models.validation.is_validation_record), applied before
        shuffling and batching so batches stay full.
    Returns:
      tf.data.Dataset.
    """
    files = tf.io.gfile.glob(file_pattern) if isinstance(file_pattern, str) else [
        p for pat in file_pattern for p in tf.io.gfile.glob(pat)]
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {file_pattern!r}")
    ds = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")
    if record_filter is not None:
        ds = ds.filter(record_filter)
    if shuffle:
        ds = ds.shuffle(50_000, seed=seed, reshuffle_each_iteration=True)
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda s: parse_examples(s, config, kind), num_parallel_calls=tf.data.AUTOTUNE)
    if label_keys:
        ds = ds.map(lambda d: (d, {k: d[k] for k in label_keys}))
    return ds.prefetch(tf.data.AUTOTUNE)


def raw_signature(specs: Sequence[fc.FeatureSpec]) -> dict[str, tf.TensorSpec]:
    """TensorSpecs of the raw-feature serving signature for these features."""
    out = {}
    for f in specs:
        if f.type == fc.NUMERIC:
            out[f.name] = tf.TensorSpec([None], tf.float32, name=f.name)
        elif f.type == fc.CATEGORICAL:
            out[f.name] = tf.TensorSpec([None], tf.string, name=f.name)
        else:
            out[f.name] = tf.TensorSpec([None, None], tf.string, name=f.name)
    return out


def read_vocab(vocab_dir: str, name: str) -> list[str]:
    """Vocabulary file lines (most frequent first); [] when the file is absent."""
    path = os.path.join(vocab_dir, f"{name}.txt")
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]
