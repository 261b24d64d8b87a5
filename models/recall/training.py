"""Pieces shared by the YouTubeNet and two-tower training loops."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from beam_jobs import feature_config as fc  # noqa: E402
from models import inputs  # noqa: E402
from models.layers.feature_embedding import load_vocabularies  # noqa: E402
from models.recall import artifacts, data, protocols  # noqa: E402


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


@dataclasses.dataclass
class TowerResult:
    """A trained tower model: user tower + candidate table, and how to export both.

    Subclasses set MODEL_NAME and NORMALIZED (whether item_vectors are L2-normalized).
    """

    MODEL_NAME: ClassVar[str] = ""
    NORMALIZED: ClassVar[bool] = False

    feature_config: fc.FeatureConfig
    config: Any
    model: Any
    user_names: list[str]
    item_ids: list[str]
    item_vectors: np.ndarray  # [N, dim]
    stats: dict[str, Any]

    def user_vectors(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        return predict(self.model.user_tower, features, self.user_names, self.config.dim)

    def export(self, export_dir: str, model_version: int | None = None) -> dict[str, str]:
        """Writes export_dir/user_tower (SavedModel) and export_dir/item_embeddings."""
        user_dir = os.path.join(export_dir, artifacts.USER_TOWER_DIR)
        item_dir = os.path.join(export_dir, artifacts.ITEM_EMBEDDINGS_DIR)
        tower = self.model.user_tower
        artifacts.export_user_tower(tower, tower, data.serving_signature(self.feature_config),
                                    user_dir)
        artifacts.write_item_embeddings(item_dir, self.item_ids, self.item_vectors,
                                        self.MODEL_NAME, normalized=self.NORMALIZED,
                                        model_version=model_version)
        return {"user_tower": user_dir, "item_embeddings": item_dir}


def train_and_export(fit: Callable[..., TowerResult], config: Any, config_path: str,
                     examples_dir: str, vocab_dir: str, items_pattern: str | None,
                     export_dir: str) -> dict[str, Any]:
    """The shared train entry of the tower models (YouTubeNet, two-tower).

    Loads the feature config, catalogue, vocabularies and train retrieval
    examples, fits, evaluates on the time-split eval examples when present,
    and exports user_tower/ and item_embeddings/ under export_dir.

    Returns:
      training statistics, time-split metrics (hr@50, ...) and export paths.
    """
    feature_config = fc.load(config_path)
    catalogue = data.load_catalogue(items_pattern, feature_config) if items_pattern else None
    vocabularies = load_vocabularies(feature_config, vocab_dir)
    train_arrays = data.load_examples(inputs.split_pattern(examples_dir, fc.TRAIN),
                                      feature_config, fc.RETRIEVAL)
    result = fit(feature_config, train_arrays, catalogue, vocabularies, config)
    out = dict(result.stats)
    if tf.io.gfile.glob(inputs.split_pattern(examples_dir, fc.EVAL)):
        queries = protocols.time_split(data.load_examples(
            inputs.split_pattern(examples_dir, fc.EVAL), feature_config, fc.RETRIEVAL),
            feature_config)
        out.update(protocols.evaluate_embeddings(queries, result.user_vectors(queries.features),
                                                 result.item_ids, result.item_vectors))
    out.update(result.export(export_dir))
    return out
