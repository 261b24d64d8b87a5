"""Training entry of the ranking models (usable from a TFX component).

`train(...)` is a pure function of its arguments: it reads the examples and
vocabularies it is given, trains, evaluates on the eval split, exports the
SavedModel to export_dir and returns the metrics. The lower-level pieces
(build_model, fit, predict, evaluate_model, complexity) are shared with the
benchmark.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from beam_jobs import feature_config as fc  # noqa: E402
from models import inputs  # noqa: E402
from models.layers.feature_embedding import load_vocabularies  # noqa: E402
from models.ranking import complexity, export, metrics  # noqa: E402
from models.ranking import config as rc  # noqa: E402
from models.ranking.model import RankingModel  # noqa: E402
from models.ranking.optimizers import LazyAdam  # noqa: E402


def make_optimizer(config: rc.RankingConfig) -> keras.optimizers.Optimizer:
    if config.optimizer == "adam":
        return keras.optimizers.Adam(config.learning_rate)
    if config.optimizer == "adagrad":
        return keras.optimizers.Adagrad(config.learning_rate)
    return LazyAdam(config.learning_rate)


def build_model(config: rc.RankingConfig, features: fc.FeatureConfig,
                vocabularies: Mapping[str, Sequence[str]],
                example_batch: Mapping[str, tf.Tensor] | None = None) -> RankingModel:
    """A compiled RankingModel; built on example_batch when given."""
    keras.utils.set_random_seed(config.seed)
    model = RankingModel(config.to_dict(), features.to_dict(), vocabularies,
                         name=f"ranking_{config.model}")
    model.compile(optimizer=make_optimizer(config))
    if example_batch is not None:
        model.build_from_example(example_batch)
    return model


def count_records(file_pattern: str | Sequence[str]) -> int:
    """Records in gzip TFRecord files (read, not parsed)."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted(p for pat in patterns for p in tf.io.gfile.glob(pat))
    return int(tf.data.TFRecordDataset(files, compression_type="GZIP").reduce(
        np.int64(0), lambda n, _: n + 1))


def fit(model: RankingModel, dataset: tf.data.Dataset, epochs: int,
        num_examples: int) -> dict[str, Any]:
    """Trains on (features, labels) batches; returns the last epoch's logs and speed.

    Args:
      num_examples: examples per epoch (for the examples/s figure).
    """
    examples = num_examples
    start = time.perf_counter()
    history = model.fit(dataset, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    logs = {k: float(v[-1]) for k, v in history.history.items()}
    return {"logs": logs, "train_seconds": seconds,
            "train_examples_per_s": examples * epochs / max(seconds, 1e-9)}


def predict(model: RankingModel, dataset: tf.data.Dataset
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, float]:
    """Scores a dataset of feature dicts (or (features, labels) pairs).

    Returns:
      (task -> probabilities, label -> labels, user keys, examples per second).
    """
    spec = dataset.element_spec
    spec = spec[0] if isinstance(spec, tuple) else spec
    score = tf.function(lambda f: model(f, training=False), input_signature=[spec])
    probs: dict[str, list] = {t: [] for t in model.tasks}
    labels: dict[str, list] = {k: [] for k in fc.LABEL_KEYS}
    users: list[np.ndarray] = []
    seconds = 0.0
    for batch in dataset:
        features = batch[0] if isinstance(batch, tuple) else batch
        start = time.perf_counter()
        out = score(features)
        out = {t: v.numpy() for t, v in out.items()}
        seconds += time.perf_counter() - start
        for t, v in out.items():
            probs[t].append(v)
        for k in fc.LABEL_KEYS:
            if k in features:
                labels[k].append(features[k].numpy())
        users.append(features[fc.USER_KEY].numpy())
    cat = {t: np.concatenate(v) for t, v in probs.items()}
    n = sum(v.size for v in cat.values()) // max(len(cat), 1)
    return (cat, {k: np.concatenate(v) for k, v in labels.items() if v},
            np.concatenate(users), n / max(seconds, 1e-9))


def evaluate_model(model: RankingModel, dataset: tf.data.Dataset) -> dict[str, Any]:
    """Per-task metrics (auc, logloss, gauc, calibration) + scoring speed."""
    probs, labels, users, speed = predict(model, dataset)
    missing = sorted(set(probs) - set(labels))
    if missing:
        raise ValueError(f"eval examples carry no labels {missing}")
    return {**metrics.evaluate(labels, probs, users), "score_examples_per_s": speed}


def model_complexity(model: RankingModel) -> dict[str, int]:
    """Analytic params (inference weights) and per-example FLOPs."""
    features = fc.from_dict(model.feature_config)
    return {"params": complexity.count_params(model.ranking_config, features, model.num_rows,
                                              include_training_only=False),
            "flops_per_example": complexity.flops_per_example(model.ranking_config, features)}


def train(model_name: str, config_path: str, train_pattern: str | Sequence[str],
          eval_pattern: str | Sequence[str], vocab_dir: str, hparams: Mapping[str, Any] | None,
          export_dir: str | None) -> dict[str, Any]:
    """Trains, evaluates and exports one ranking model.

    Args:
      model_name: one of models.ranking.config.MODEL_NAMES.
      config_path: the dataset's feature config (YAML).
      train_pattern: gzip TFRecord glob(s) of training ranking examples.
      eval_pattern: gzip TFRecord glob(s) of eval ranking examples.
      vocab_dir: directory of <feature>.txt vocabularies.
      hparams: RankingConfig overrides (e.g. {"embedding_dim": 16}).
      export_dir: where the SavedModel goes; None skips the export.

    Returns:
      {task: {auc, logloss, gauc, calibration, examples, positives}, "params",
       "flops_per_example", "train_examples_per_s", "score_examples_per_s",
       "sigma" (task -> learned sigma, uncertainty mode), "config",
       "export_dir"}.

    Raises:
      RankingConfigError: bad model name or hparams.
      FileNotFoundError: no files match a pattern.
    """
    config = rc.make_config(model_name, hparams)
    features = fc.load(config_path)
    vocabularies = load_vocabularies(features, vocab_dir)
    train_ds = inputs.make_dataset(train_pattern, features, fc.RANKING, config.batch_size,
                                   shuffle=True, seed=config.seed, label_keys=fc.LABEL_KEYS)
    eval_ds = inputs.make_dataset(eval_pattern, features, fc.RANKING, 1024)
    first, _ = next(iter(train_ds))
    model = build_model(config, features, vocabularies, example_batch=first)
    fitted = fit(model, train_ds, config.epochs, count_records(train_pattern))
    result: dict[str, Any] = evaluate_model(model, eval_ds)
    result.update(model_complexity(model))
    result["train_examples_per_s"] = fitted["train_examples_per_s"]
    result["train_logs"] = fitted["logs"]
    result["sigma"] = model.task_loss.sigmas()
    result["config"] = config.to_dict()
    result["export_dir"] = export.export(model, export_dir) if export_dir else None
    return result
