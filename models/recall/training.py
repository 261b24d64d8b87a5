"""Pieces shared by the YouTubeNet and two-tower training loops."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from beam_jobs import feature_config as fc  # noqa: E402
from models.recall import data  # noqa: E402


def minibatches(num_rows: int, batch_size: int, rng: np.random.Generator,
                drop_remainder: bool = False) -> Iterator[np.ndarray]:
    """Shuffled row indices, batch by batch."""
    order = rng.permutation(num_rows)
    stop = num_rows - (num_rows % batch_size if drop_remainder else 0)
    for i in range(0, stop, batch_size):
        yield order[i:i + batch_size]


def tensors(arrays: Mapping[str, np.ndarray], names: Sequence[str],
            index: np.ndarray | None = None) -> dict[str, tf.Tensor]:
    """Selected features (rows `index`) as tensors."""
    return {n: tf.constant(arrays[n] if index is None else arrays[n][index]) for n in names}


def target_rows(arrays: Mapping[str, np.ndarray], config: fc.FeatureConfig,
                catalogue: data.Catalogue) -> tuple[np.ndarray, int]:
    """Catalogue row of each example's target item and the count of unknown targets."""
    rows = catalogue.rows_of(arrays[config.item_id_feature.name])
    return rows, int((rows < 0).sum())


def predict(fn, arrays: Mapping[str, np.ndarray], names: Sequence[str], dim: int,
            batch_size: int = 4096) -> np.ndarray:
    """fn(feature tensors) -> [B, dim] over all rows, as numpy [N, dim]."""
    n = data.num_rows({k: arrays[k] for k in names})
    parts = [fn(tensors(arrays, names, np.arange(i, min(i + batch_size, n)))).numpy()
             for i in range(0, n, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
