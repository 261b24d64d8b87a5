"""In-memory views of the sessionize job's output used by the recall models.

Recall training is small enough (one example per click) to hold in memory as
numpy arrays in the dense conventions of `models.inputs`; that lets negative
sampling, re-splitting (leave-last-out) and evaluation stay vectorized numpy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from models import inputs  # noqa: E402

Arrays = dict[str, np.ndarray]


def user_features(config: fc.FeatureConfig, use_user_id: bool = False) -> list[fc.FeatureSpec]:
    """Features a user tower reads: user field (+ history) and context.

    The user-id feature is left out unless asked for: a hashed or vocab id
    gives new users an untrained row, and the towers must serve them from
    demographics and context alone.
    """
    specs = []
    for f in list(config.field_features(fc.USER)) + list(config.field_features(fc.CONTEXT)):
        if not use_user_id and f.field == fc.USER and f.raw_column == config.users_key \
                and f.type == fc.CATEGORICAL:
            continue
        specs.append(f)
    return specs


def item_features(config: fc.FeatureConfig) -> list[fc.FeatureSpec]:
    """Item-field features stored in the catalogue (event-derived ones excluded)."""
    return [f for f in config.field_features(fc.ITEM) if f.source == fc.SOURCE_ITEMS]


def serving_signature(config: fc.FeatureConfig) -> dict[str, tf.TensorSpec]:
    """Raw signature every exported user tower accepts (all user + context features).

    The same request works for every recall model; a tower ignores what it
    does not use (e.g. Item2vec reads only the history).
    """
    return inputs.raw_signature(user_features(config, use_user_id=True))


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, tf.RaggedTensor):
        # Explicit 1-d object array: np.array would make equal-length rows 2-d.
        rows = value.to_list()
        out = np.empty(len(rows), dtype=object)
        out[:] = rows
        return out
    return value.numpy()


def load_examples(file_pattern: str | Sequence[str], config: fc.FeatureConfig, kind: str,
                  batch_size: int = 4096) -> Arrays:
    """All examples of one kind as numpy arrays (dense conventions of models.inputs).

    Returns:
      name -> array [N] / [N, L]; strings are bytes objects. Item2vec sessions
      are an object array of lists of bytes.
    """
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in inputs.make_dataset(file_pattern, config, kind, batch_size=batch_size):
        for key, value in batch.items():
            chunks.setdefault(key, []).append(_to_numpy(value))
    out = {}
    for key, parts in chunks.items():
        out[key] = np.concatenate(parts, axis=0)
    return out


def take(arrays: Mapping[str, np.ndarray], index: np.ndarray) -> Arrays:
    """Rows `index` of every array."""
    return {k: v[index] for k, v in arrays.items()}


def num_rows(arrays: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values()))) if arrays else 0


@dataclasses.dataclass
class Catalogue:
    """The item catalogue: ids, raw item features and popularity counts.

    Attributes:
      ids: item ids, [N] str.
      features: item feature name -> raw values [N] / [N, L] (bytes / float).
      clicks: [N] int64 click counts.
      impressions: [N] int64 impression counts.
    """

    ids: list[str]
    features: Arrays
    clicks: np.ndarray
    impressions: np.ndarray

    def __post_init__(self):
        self.row = {item: i for i, item in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, item_ids: Sequence) -> np.ndarray:
        """Catalogue row of each id (bytes or str); -1 when unknown."""
        return np.array([self.row.get(_text(i), -1) for i in item_ids], dtype=np.int64)

    def attribute_codes(self, feature: str) -> np.ndarray:
        """Integer code per item of a categorical item feature (0 = missing)."""
        values = [_text(v) for v in self.features[feature]]
        codes: dict[str, int] = {"": 0}
        return np.array([codes.setdefault(v, len(codes)) for v in values], dtype=np.int64)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def items_parse_spec(config: fc.FeatureConfig) -> dict:
    spec = inputs.feature_parse_spec(item_features(config))
    spec[fc.ITEM_CLICKS_KEY] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
    spec[fc.ITEM_IMPRESSIONS_KEY] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
    return spec


def load_catalogue(items_pattern: str | Sequence[str], config: fc.FeatureConfig) -> Catalogue:
    """Reads OUT/items/*.gz into a Catalogue (duplicate ids keep the first row).

    Raises:
      FileNotFoundError: nothing matches the pattern.
      ValueError: the catalogue is empty.
    """
    patterns = [items_pattern] if isinstance(items_pattern, str) else list(items_pattern)
    files = sorted(p for pat in patterns for p in tf.io.gfile.glob(pat))
    if not files:
        raise FileNotFoundError(f"no item catalogue files match {items_pattern!r}")
    spec = items_parse_spec(config)
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096).map(
        lambda s: inputs.densify(tf.io.parse_example(s, spec), config))
    chunks: dict[str, list[np.ndarray]] = {}
    for batch in ds:
        for key, value in batch.items():
            chunks.setdefault(key, []).append(value.numpy())
    if not chunks:
        raise ValueError(f"item catalogue {items_pattern!r} is empty")
    arrays = {k: np.concatenate(v) for k, v in chunks.items()}
    id_name = config.item_id_feature.name
    ids = [_text(v) for v in arrays[id_name]]
    _, first = np.unique(np.array(ids, dtype=object), return_index=True)
    keep = np.sort(first)
    return Catalogue(
        ids=[ids[i] for i in keep],
        features={f.name: arrays[f.name][keep] for f in item_features(config)},
        clicks=arrays.pop(fc.ITEM_CLICKS_KEY)[keep].astype(np.int64),
        impressions=arrays.pop(fc.ITEM_IMPRESSIONS_KEY)[keep].astype(np.int64))


def read_item_frequencies(path: str) -> dict[str, int]:
    """item_frequencies.tsv -> item id -> clicks (header line optional)."""
    out = {}
    with tf.io.gfile.GFile(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or not parts[2].strip().lstrip("-").isdigit():
                continue  # header or malformed row
            out[parts[0]] = int(parts[2])
    return out


def click_probabilities(catalogue: Catalogue, smoothing: float = 1.0) -> np.ndarray:
    """Per-draw probability of each item under click-frequency sampling, [N].

    This is Q of the logQ correction: an item with c clicks appears as an
    in-batch positive with probability proportional to c (+ smoothing so that
    unseen items keep a finite log).
    """
    counts = catalogue.clicks.astype(np.float64) + smoothing
    return (counts / counts.sum()).astype(np.float32)


def item_vocab_index(vocab: Sequence[str]) -> dict[str, int]:
    """Item id -> model id (line i of the vocabulary is id i + 1; 0 = OOV)."""
    return {item: i + 1 for i, item in enumerate(vocab)}


def history_lists(history: np.ndarray) -> list[list[str]]:
    """Dense [N, L] history (padded with b"") -> lists of item ids (str)."""
    return [[_text(x) for x in row if x] for row in history]
