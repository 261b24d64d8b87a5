"""Pieces shared by the recall training loops (Item2vec, YouTubeNet, two-tower).

Every recall model trains the same way: the validation split is carved from
the training examples by time (models.validation; the eval split is not
looked at until the one final evaluation), then `fit_epochs` trains epoch by
epoch, measures HR@50 on the validation queries with the current vectors,
keeps a copy of the weights of the best epoch, stops when the metric has not
improved for `patience` epochs, and restores that best copy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from models import inputs, validation  # noqa: E402
from models.layers.feature_embedding import load_vocabularies  # noqa: E402
from models.recall import artifacts, data, protocols  # noqa: E402

# The early-stopping monitor: HR at the same K as the headline eval figure.
VALIDATION_K = 50
MONITOR = f"val_hr@{VALIDATION_K}"


@dataclasses.dataclass(frozen=True)
class Carve:
    """Training examples split by time into fit (earlier) and validation (later) rows.

    Attributes:
      cutoff: validation = timestamp >= cutoff (models.validation.validation_cutoff).
      fit: rows trained on.
      validation: rows the validation queries come from.
    """

    cutoff: float
    fit: data.Arrays
    validation: data.Arrays

    def summary(self) -> dict[str, Any]:
        """The result's "validation" entry (before the model adds its query count)."""
        return {"cutoff": self.cutoff, "fit_examples": data.num_rows(self.fit),
                "validation_examples": data.num_rows(self.validation)}


def carve_validation(arrays: Mapping[str, np.ndarray], fraction: float, model: str) -> Carve:
    """Splits training examples (column arrays with `timestamp`) by time.

    Args:
      arrays: training examples (retrieval examples or item2vec sessions,
        whose timestamp is the session start).
      fraction: share of the training time span held out (the latest).
      model: model name, for the error message.
    Raises:
      models.validation.ValidationError: too little data to carve from (no
        example, or every example at one time); names the model and counts.
    """
    if fc.TIMESTAMP_KEY not in arrays:
        raise validation.ValidationError(
            f"{model}: training examples have no {fc.TIMESTAMP_KEY!r} column "
            f"(got {sorted(arrays)}): cannot carve a validation split by time")
    timestamps = arrays[fc.TIMESTAMP_KEY]
    try:
        cutoff = validation.validation_cutoff(timestamps, fraction)
    except validation.ValidationError as err:
        raise validation.ValidationError(
            f"{model}: cannot carve a validation split from {len(timestamps)} training "
            f"examples (validation_fraction {fraction}): {err}") from err
    fit, held_out = validation.split_arrays(arrays, cutoff)
    return Carve(cutoff, fit, held_out)


def check_validation_queries(count: int, carve: Carve, model: str) -> None:
    """Raises when the validation examples give no query to measure HR on.

    Raises:
      models.validation.ValidationError: count is 0; names the model and counts.
    """
    if count == 0:
        raise validation.ValidationError(
            f"{model}: the {data.num_rows(carve.validation)} validation examples (timestamp >= "
            f"{carve.cutoff}; {data.num_rows(carve.fit)} fit examples before it) give no "
            f"validation query with a target: too little training data to validate on")


def validation_queries(carve: Carve, feature_config: fc.FeatureConfig,
                       model: str) -> protocols.Queries:
    """Time-split queries of the validation examples (the eval split's construction).

    Raises:
      models.validation.ValidationError: no query has a target left.
    """
    queries = protocols.time_split(carve.validation, feature_config)
    check_validation_queries(count_with_targets(queries), carve, model)
    return queries


def count_with_targets(queries: protocols.Queries) -> int:
    """Queries that count in HR (a target not already in the history)."""
    return sum(1 for t in queries.targets if t)


def validation_hit_rate(queries: protocols.Queries, user_vectors: np.ndarray,
                        item_ids: Sequence[str], item_vectors: np.ndarray) -> float:
    """HR@VALIDATION_K of the queries by exact inner-product retrieval."""
    out = protocols.evaluate_embeddings(queries, user_vectors, item_ids, item_vectors,
                                        ks=(VALIDATION_K,))
    return out[f"hr@{VALIDATION_K}"]


def fit_epochs(model: Any, train_epoch: Callable[[], float], validate: Callable[[], float],
               config: Any) -> dict[str, Any]:
    """Trains epoch by epoch until validation HR@50 stops improving; keeps the best epoch.

    Per epoch: train_epoch() (one pass, returns the mean batch loss), then
    validate() (HR@50 of the validation queries with the current weights),
    EarlyStopping.update, and a copy of every weight on a new best. At the
    end the best epoch's weights are put back, so everything computed from
    `model` afterwards (item vectors, exports) is the best epoch's.

    Args:
      model: a Keras model (get_weights / set_weights) holding every trained weight.
      train_epoch: trains one epoch; returns its mean batch loss.
      validate: the validation metric of the current weights (higher is better).
      config: a recall config with max_epochs, patience, min_delta.
    Returns:
      {"learning_curve": [{"epoch" (1-based), "train_loss", "val_hr@50"}, ...],
       "early_stopping": EarlyStopping.summary() + {"monitor": "val_hr@50"}}.
    """
    stopping = validation.EarlyStopping(patience=config.patience, max_epochs=config.max_epochs,
                                        min_delta=config.min_delta)
    curve: list[dict[str, Any]] = []
    best: list[np.ndarray] | None = None
    while not stopping.should_stop:
        loss = float(train_epoch())
        value = float(validate())
        curve.append({"epoch": len(curve) + 1, "train_loss": loss, MONITOR: value})
        if stopping.update(value):
            best = model.get_weights()  # numpy copies: later steps leave them alone
    if best is not None:
        model.set_weights(best)
    return {"learning_curve": curve,
            "early_stopping": {**stopping.summary(), "monitor": MONITOR}}


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
    examples, fits (validation carved from the train examples, early
    stopping), evaluates once on the time-split eval examples when present,
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
