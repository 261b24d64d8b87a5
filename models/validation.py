"""Validation carved from the training split, and early stopping.

One mechanism for every model (ranking and recall): the eval split written by
sessionize is touched once, for the reported figure; epochs, early stopping
and any model selection look only at a validation split carved here from the
*training* examples: the last `fraction` of the training time span, cut the
same way sessionize cuts eval from the whole span, so validation looks like
eval (later in time, some users new to it).

The carve happens in the trainer, not in sessionize, so every example kind
(ranking, retrieval, item2vec sessions) and every consumer (pipeline, bench,
a user's own script) gets the same rule from the examples it already has.
Vocabularies are still counted on the whole training split (validation
included): they carry no labels, and a served model sees the same vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402

DEFAULT_VALIDATION_FRACTION = 0.1


class ValidationError(ValueError):
    """Bad validation settings, or training data too small to carve from."""


def validation_cutoff(timestamps: np.ndarray | Sequence[float], fraction: float) -> float:
    """The time from which training examples are validation.

    validation = timestamp >= cutoff, cutoff = max - fraction * (max - min).

    Args:
      timestamps: the training examples' timestamps (any order).
      fraction: share of the training time span held out, in (0, 1).
    Returns:
      the cutoff (unix seconds).
    Raises:
      ValidationError: fraction outside (0, 1), no timestamps, or a span of
        zero length (nothing to cut by time).
    """
    if not 0.0 < fraction < 1.0:
        raise ValidationError(f"validation_fraction must be in (0, 1), got {fraction!r}")
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.size == 0:
        raise ValidationError("no training examples to carve a validation split from")
    lo, hi = float(ts.min()), float(ts.max())
    if not hi > lo:
        raise ValidationError(f"every training example has timestamp {lo}: cannot carve "
                              f"a validation split by time")
    return hi - fraction * (hi - lo)


def read_timestamps(file_pattern: str | Sequence[str]) -> np.ndarray:
    """The `timestamp` of every example in gzip TFRecord files (int64 [N]).

    Parses only that feature, so it is cheap next to a training epoch.
    """
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted(p for pat in patterns for p in tf.io.gfile.glob(pat))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {file_pattern!r}")
    spec = {fc.TIMESTAMP_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0)}
    ds = (tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8192)
          .map(lambda s: tf.io.parse_example(s, spec)[fc.TIMESTAMP_KEY]))
    parts = [b.numpy() for b in ds]
    return np.concatenate(parts) if parts else np.zeros((0,), np.int64)


def is_validation_record(cutoff: float):
    """A tf.data filter predicate on serialized examples: timestamp >= cutoff."""
    spec = {fc.TIMESTAMP_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0)}
    cutoff = tf.constant(cutoff, tf.float64)

    def predicate(serialized: tf.Tensor) -> tf.Tensor:
        ts = tf.io.parse_single_example(serialized, spec)[fc.TIMESTAMP_KEY]
        return tf.cast(ts, tf.float64) >= cutoff

    return predicate


def split_arrays(arrays: Mapping[str, np.ndarray], cutoff: float
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(fit, validation) rows of column arrays that carry `timestamp`.

    Args:
      arrays: feature -> array with one row per example (first axis).
      cutoff: from validation_cutoff.
    Returns:
      (rows with timestamp < cutoff, rows with timestamp >= cutoff).
    """
    ts = np.asarray(arrays[fc.TIMESTAMP_KEY], dtype=np.float64)
    val = ts >= cutoff
    return ({k: v[~val] for k, v in arrays.items()}, {k: v[val] for k, v in arrays.items()})


@dataclasses.dataclass
class EarlyStopping:
    """Tracks a validation metric epoch by epoch (higher is better).

    The caller trains one epoch, calls `update(value)`, snapshots the weights
    when it returns True (a new best) and stops when `should_stop`; at the end
    it restores the best snapshot. `max_epochs` caps the run; a dataset that
    keeps improving trains to the cap, one that overfits stops `patience`
    epochs after its best.

    Attributes:
      patience: epochs without an improvement of more than min_delta before stopping.
      max_epochs: hard cap on epochs.
      min_delta: smallest change that counts as an improvement.
    """

    patience: int = 2
    max_epochs: int = 20
    min_delta: float = 1e-4
    values: list[float] = dataclasses.field(default_factory=list)
    best_value: float = -math.inf
    best_epoch: int = 0  # 1-based; 0 = none yet

    def __post_init__(self):
        if int(self.patience) < 1:
            raise ValidationError(f"patience must be >= 1, got {self.patience!r}")
        if int(self.max_epochs) < 1:
            raise ValidationError(f"max_epochs must be >= 1, got {self.max_epochs!r}")
        if not self.min_delta >= 0.0:
            raise ValidationError(f"min_delta must be >= 0, got {self.min_delta!r}")

    @property
    def epochs(self) -> int:
        return len(self.values)

    def update(self, value: float) -> bool:
        """Records one epoch's metric; True when it is the new best.

        A NaN metric (e.g. AUC of a split without positives) never improves.
        """
        value = float(value)
        self.values.append(value)
        if self.best_epoch == 0 and not math.isnan(value):
            improved = True
        else:
            improved = not math.isnan(value) and value > self.best_value + self.min_delta
        if improved:
            self.best_value, self.best_epoch = value, self.epochs
        return improved

    @property
    def should_stop(self) -> bool:
        if self.epochs >= self.max_epochs:
            return True
        since = self.epochs - self.best_epoch if self.best_epoch else self.epochs
        return since >= self.patience

    def summary(self) -> dict[str, object]:
        """{best_epoch, best_value, epochs_run, stopped_early} for metrics.json."""
        return {"best_epoch": self.best_epoch,
                "best_value": None if math.isinf(self.best_value) else self.best_value,
                "epochs_run": self.epochs,
                "stopped_early": self.epochs < self.max_epochs}
