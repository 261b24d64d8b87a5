"""Training entry of the ranking models (usable from a TFX component).

`train(...)` is a pure function of its arguments: it reads the examples and
vocabularies it is given, carves a validation split from the training
examples (the latest `validation_fraction` of their time span,
models.validation), trains epoch by epoch with early stopping on validation
AUC, restores the best epoch's weights, evaluates once on the eval split,
exports the SavedModel to export_dir and returns the metrics.

The eval split never steers training: epochs, early stopping and the chosen
weights see only the validation split. The lower-level pieces (build_model,
fit_with_early_stopping, predict, evaluate_model, model_complexity) are
shared with the benchmark, which feeds them datasets built from in-memory
tensors.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from models import cli, inputs, validation  # noqa: E402
from models.layers.feature_embedding import (  # noqa: E402
    check_vocabulary_coverage, load_vocabularies)
from models.ranking import complexity, export, metrics  # noqa: E402
from models.ranking import config as rc  # noqa: E402
from models.ranking.model import RankingModel  # noqa: E402
from models.ranking.optimizers import LazyAdam  # noqa: E402

# Monitor of click + follow models: model selection must not ignore the follow head.
MEAN_CLICK_FOLLOW_AUC = "mean_click_follow_auc"
VALIDATION_BATCH_SIZE = 1024

_log = logging.getLogger(__name__)


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


def early_stopping(config: rc.RankingConfig) -> validation.EarlyStopping:
    """A fresh tracker with the config's max_epochs, patience and min_delta."""
    return validation.EarlyStopping(patience=config.patience, max_epochs=config.max_epochs,
                                    min_delta=config.min_delta)


def default_monitor(tasks: Sequence[str]) -> str:
    """The validation metric that early stopping follows for these tasks.

    click_auc for click models, follow_auc for follow-only ones, and for click
    + follow models the mean of both AUCs (MEAN_CLICK_FOLLOW_AUC).
    """
    if {fc.CLICK_LABEL, fc.FOLLOW_LABEL} <= set(tasks):
        return MEAN_CLICK_FOLLOW_AUC
    return f"{tasks[0]}_auc"


def monitored_value(val_metrics: Mapping[str, float], monitor: str) -> tuple[float, str]:
    """(value, metric actually used) of `monitor` in validation_metrics' output.

    MEAN_CLICK_FOLLOW_AUC falls back to click_auc when follow AUC is NaN (a
    validation split without follow positives): the click head still needs
    choosing, and a NaN would stop training after `patience` epochs.

    Raises:
      ValueError: a monitor that is neither MEAN_CLICK_FOLLOW_AUC nor a
        "<task>_auc" in val_metrics.
    """
    if monitor == MEAN_CLICK_FOLLOW_AUC:
        click, follow = val_metrics["click_auc"], val_metrics["follow_auc"]
        if math.isnan(follow):
            return click, "click_auc"
        return (click + follow) / 2.0, monitor
    if not monitor.endswith("_auc") or monitor not in val_metrics:
        raise ValueError(f"monitor {monitor!r} is not {MEAN_CLICK_FOLLOW_AUC!r} or one of "
                         f"{sorted(k for k in val_metrics if k.endswith('_auc'))}")
    return val_metrics[monitor], monitor


def _scorer(model: RankingModel, dataset: tf.data.Dataset) -> Callable:
    """One traced `model(features, training=False)` for the dataset's batches."""
    spec = dataset.element_spec
    spec = spec[0] if isinstance(spec, tuple) else spec
    return tf.function(lambda f: model(f, training=False), input_signature=[spec])


def predict(model: RankingModel, dataset: tf.data.Dataset, score: Callable | None = None,
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, float]:
    """Scores a dataset of feature dicts (or (features, labels) pairs).

    Labels are read from the feature dict, or from the pair's labels dict.

    Args:
      score: a _scorer of this model and dataset, to reuse one trace over
        several calls (validation every epoch); None traces a new one.
    Returns:
      (task -> probabilities, label -> labels, user keys, examples per second).
    """
    score = score or _scorer(model, dataset)
    probs: dict[str, list] = {t: [] for t in model.tasks}
    labels: dict[str, list] = {k: [] for k in fc.LABEL_KEYS}
    users: list[np.ndarray] = []
    seconds = 0.0
    for batch in dataset:
        features = batch[0] if isinstance(batch, tuple) else batch
        batch_labels = {**(batch[1] if isinstance(batch, tuple) else {}), **features}
        start = time.perf_counter()
        out = score(features)
        out = {t: v.numpy() for t, v in out.items()}
        seconds += time.perf_counter() - start
        for t, v in out.items():
            probs[t].append(v)
        for k in fc.LABEL_KEYS:
            if k in batch_labels:
                labels[k].append(batch_labels[k].numpy())
        users.append(features[fc.USER_KEY].numpy())
    cat = {t: np.concatenate(v) for t, v in probs.items()}
    n = sum(v.size for v in cat.values()) // max(len(cat), 1)
    return (cat, {k: np.concatenate(v) for k, v in labels.items() if v},
            np.concatenate(users), n / max(seconds, 1e-9))


def validation_metrics(model: RankingModel, dataset: tf.data.Dataset,
                       score: Callable | None = None) -> dict[str, float]:
    """{"<task>_auc", "<task>_logloss"} of every task of the model on `dataset`.

    Raises:
      ValueError: the dataset lacks a task's labels.
    """
    probs, labels, _, _ = predict(model, dataset, score)
    missing = sorted(set(probs) - set(labels))
    if missing:
        raise ValueError(f"validation examples carry no labels {missing}")
    out: dict[str, float] = {}
    for task, p in probs.items():
        out[f"{task}_auc"] = metrics.auc(labels[task], p)
        out[f"{task}_logloss"] = metrics.logloss(labels[task], p)
    return out


def fit_with_early_stopping(model: RankingModel, fit_ds: tf.data.Dataset,
                            val_ds: tf.data.Dataset, stopping: validation.EarlyStopping,
                            monitor: str, num_examples: int) -> dict[str, Any]:
    """Trains epoch by epoch until `stopping` says stop; keeps the best epoch's weights.

    Each epoch: one pass over fit_ds, validation AUC and log loss of every
    task on val_ds, `stopping.update(monitored value)`, a copy of the weights
    when that is a new best. At the end the best copy is restored (weights
    only: the optimizer's moments stay at the last epoch's, harmless since
    training is over). If no epoch gave a finite monitored value, the last
    weights are kept and early_stopping.best_epoch is 0.

    Args:
      model: a compiled, built RankingModel (train_on_ids as fit_ds needs).
      fit_ds: (features, labels) batches, reshuffled per iteration if wanted.
      val_ds: raw feature dicts (or (features, labels) pairs) carrying the
        task labels; scored with model(features, training=False).
      stopping: a fresh tracker (early_stopping(config)).
      monitor: default_monitor(tasks), or "<task>_auc".
      num_examples: examples in fit_ds per epoch (for the examples/s figure).
    Returns:
      {"learning_curve": [{"epoch" (1-based), "train_loss" (mean over the
         epoch's batches), "train_<task>_loss", "val_<task>_auc",
         "val_<task>_logloss", "val_monitor"}, ...],
       "early_stopping": stopping.summary() + {"monitor", "monitor_fallback"
         (None, or the metric used instead of a NaN monitor)},
       "train_logs": the best epoch's epoch-mean train logs,
       "train_seconds", "validation_seconds", "train_examples_per_s"}.
    Raises:
      ValueError: a tracker that has already seen epochs, or a bad monitor.
    """
    if stopping.epochs:
        raise ValueError(f"stopping has already tracked {stopping.epochs} epochs; pass a "
                         f"fresh EarlyStopping")
    score = _scorer(model, val_ds)
    curve: list[dict[str, Any]] = []
    best_weights: list[np.ndarray] | None = None
    best_logs: dict[str, float] = {}
    fallback: str | None = None
    train_seconds = validation_seconds = 0.0
    while not stopping.should_stop:
        start = time.perf_counter()
        history = model.fit(fit_ds, epochs=1, verbose=0)
        train_seconds += time.perf_counter() - start
        logs = {k: float(v[-1]) for k, v in history.history.items()}
        start = time.perf_counter()
        val = validation_metrics(model, val_ds, score)
        value, used = monitored_value(val, monitor)
        validation_seconds += time.perf_counter() - start
        if used != monitor:
            fallback = used
        curve.append({"epoch": stopping.epochs + 1, "train_loss": logs["loss"],
                      **{f"train_{k}": v for k, v in logs.items() if k != "loss"},
                      **{f"val_{k}": v for k, v in val.items()}, "val_monitor": value})
        if stopping.update(value):
            best_weights, best_logs = model.get_weights(), logs
    if best_weights is not None:
        model.set_weights(best_weights)
    else:
        _log.warning("no epoch gave a finite validation %s; keeping the last weights", monitor)
    epochs = stopping.epochs
    return {"learning_curve": curve,
            "early_stopping": {**stopping.summary(), "monitor": monitor,
                               "monitor_fallback": fallback},
            "train_logs": best_logs, "train_seconds": train_seconds,
            "validation_seconds": validation_seconds,
            "train_examples_per_s": num_examples * epochs / max(train_seconds, 1e-9)}


def fit_learning_rates(config: rc.RankingConfig,
                       build_and_fit: Callable[[rc.RankingConfig], tuple[RankingModel, dict]]
                       ) -> tuple[RankingModel, dict[str, Any], rc.RankingConfig, list | None]:
    """Trains at config.learning_rates, each to early stopping; keeps the best.

    Without learning_rates this is one build_and_fit(config). With them, one
    model per rate (config with that learning_rate and no learning_rates,
    otherwise unchanged; train() gives every rate the same seed and batch
    order, the distributed trainer's workers shuffle unseeded), and the
    winner is the highest early_stopping best_value, the validation monitor
    at its best epoch (first rate on ties; a rate whose validation was never
    finite loses). Only the winner is kept: a beaten model is dropped and
    collected (Keras models hold reference cycles) before the next trains.

    Args:
      config: the model's settings.
      build_and_fit: builds, compiles and trains a model of the given config
        with early stopping; returns (model, fit_with_early_stopping's dict).
    Returns:
      (model, its fit dict, its config, tuning): tuning is None without
      learning_rates, else one {"learning_rate", "validation" (best_value),
      "monitor", "best_epoch", "epochs_run", "chosen"} per rate in order.
    """
    if not config.learning_rates:
        model, fitted = build_and_fit(config)
        return model, fitted, config, None
    best: tuple[RankingModel, dict[str, Any], rc.RankingConfig] | None = None
    best_value, best_row = -math.inf, 0
    tuning: list[dict[str, Any]] = []
    for rate in config.learning_rates:
        point = dataclasses.replace(config, learning_rate=float(rate), learning_rates=())
        model, fitted = build_and_fit(point)
        stopping = fitted["early_stopping"]
        value = stopping.get("best_value")
        value = -math.inf if value is None or math.isnan(value) else float(value)
        tuning.append({"learning_rate": float(rate), "validation": stopping.get("best_value"),
                       "monitor": stopping.get("monitor_fallback") or stopping.get("monitor"),
                       "best_epoch": stopping.get("best_epoch"),
                       "epochs_run": stopping.get("epochs_run"), "chosen": False})
        _log.info("learning rate %g: validation %s %.4f at epoch %s", rate,
                  tuning[-1]["monitor"], value, stopping.get("best_epoch"))
        if best is None or value > best_value:
            best, best_value, best_row = (model, fitted, point), value, len(tuning) - 1
        del model, fitted
        gc.collect()
    assert best is not None  # learning_rates is non-empty
    tuning[best_row]["chosen"] = True
    return (*best, tuning)


def carve_validation(train_pattern: str | Sequence[str], fraction: float) -> dict[str, Any]:
    """The validation cutoff of the training files and the sizes of both parts.

    Returns:
      {"cutoff": float (validation = timestamp >= cutoff), "fit_examples",
       "validation_examples"}.
    Raises:
      FileNotFoundError: no files match.
      models.validation.ValidationError: every example has the same timestamp.
    """
    timestamps = validation.read_timestamps(train_pattern)
    cutoff = validation.validation_cutoff(timestamps, fraction)
    num_validation = int((timestamps.astype(np.float64) >= cutoff).sum())
    return {"cutoff": float(cutoff), "fit_examples": int(timestamps.size - num_validation),
            "validation_examples": num_validation}


def split_datasets(train_pattern: str | Sequence[str], features: fc.FeatureConfig,
                   config: rc.RankingConfig, cutoff: float
                   ) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """(fit, validation) datasets of the training files, split at `cutoff`.

    fit: shuffled (features, labels) batches of examples before the cutoff;
    validation: feature dicts (labels included) of the others, in file order.
    """
    is_validation = validation.is_validation_record(cutoff)
    fit_ds = inputs.make_dataset(
        train_pattern, features, fc.RANKING, config.batch_size, shuffle=True, seed=config.seed,
        label_keys=fc.LABEL_KEYS, record_filter=lambda s: tf.logical_not(is_validation(s)))
    val_ds = inputs.make_dataset(train_pattern, features, fc.RANKING, VALIDATION_BATCH_SIZE,
                                 record_filter=is_validation)
    return fit_ds, val_ds


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
    """Trains with validation-driven early stopping, evaluates and exports one ranking model.

    Args:
      model_name: one of models.ranking.config.MODEL_NAMES.
      config_path: the dataset's feature config (YAML).
      train_pattern: gzip TFRecord glob(s) of training ranking examples; the
        latest `validation_fraction` of their time span is validation.
      eval_pattern: gzip TFRecord glob(s) of eval ranking examples (used
        once, after training, for the reported metrics).
      vocab_dir: directory of <feature>.txt vocabularies.
      hparams: RankingConfig overrides (e.g. {"embedding_dim": 16}).
      export_dir: where the SavedModel goes; None skips the export.

    Returns:
      {task: {auc, logloss, gauc, calibration, examples, positives} on eval,
       "params", "flops_per_example", "train_examples_per_s",
       "score_examples_per_s", "sigma" (task -> learned sigma, uncertainty
       mode), "learning_curve", "early_stopping", "train_logs" (see
       fit_with_early_stopping; the chosen rate's when config.learning_rates
       is set), "validation": {"cutoff", "fit_examples",
       "validation_examples"}, "learning_rate_tuning" (fit_learning_rates'
       tuning: None, or one row per rate), "config" (with the chosen
       learning_rate), "export_dir"}.

    Raises:
      RankingConfigError: bad model name or hparams.
      FileNotFoundError: no files match a pattern.
      VocabularyError: vocab_dir holds no vocabulary of the config, or one
        that every training feature is out of (a wrong vocab_dir).
      models.validation.ValidationError: training examples that cannot be
        split by time.
    """
    config = rc.make_config(model_name, hparams)
    features = fc.load(config_path)
    vocabularies = load_vocabularies(features, vocab_dir)
    carve = carve_validation(train_pattern, config.validation_fraction)
    # Made now so a bad eval pattern fails before training; read only after it.
    eval_ds = inputs.make_dataset(eval_pattern, features, fc.RANKING, 1024)
    # One batch in file order builds the model and checks the vocabularies
    # (values do not matter, only shapes and ids): no shuffle buffer to fill.
    first = next(iter(inputs.make_dataset(train_pattern, features, fc.RANKING,
                                          config.batch_size)))
    if vocab_dir:
        check_vocabulary_coverage(vocabularies, first, vocab_dir)

    def build_and_fit(point: rc.RankingConfig) -> tuple[RankingModel, dict[str, Any]]:
        # The seed goes in before the datasets are made: tf.data's shuffle
        # derives its order from the global seed as well as its own, so a
        # dataset made before any seed was set (the first model a process
        # trains) would see another order than the same run made later.
        # Made anew per model, every learning rate sees the same batches
        # (a reused dataset would carry on its reshuffling).
        keras.utils.set_random_seed(point.seed)
        fit_ds, val_ds = split_datasets(train_pattern, features, point, carve["cutoff"])
        model = build_model(point, features, vocabularies, example_batch=first)
        return model, fit_with_early_stopping(model, fit_ds, val_ds, early_stopping(point),
                                              default_monitor(point.tasks),
                                              carve["fit_examples"])

    model, fitted, chosen, tuning = fit_learning_rates(config, build_and_fit)
    result: dict[str, Any] = evaluate_model(model, eval_ds)
    result.update(model_complexity(model))
    for key in ("train_examples_per_s", "learning_curve", "early_stopping", "train_logs"):
        result[key] = fitted[key]
    result["validation"] = carve
    result["learning_rate_tuning"] = tuning
    result["sigma"] = model.task_loss.sigmas()
    result["config"] = chosen.to_dict()
    result["export_dir"] = export.export(model, export_dir) if export_dir else None
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The command line of `train` (`python -m models.ranking.train --help`).

    --examples is the ranking examples directory: Split-train trains (the
    validation split carved from it), Split-eval is scored once, as
    components.adapters.train_ranking passes them.
    """
    parser = cli.trainer_parser("python -m models.ranking.train",
                                "Trains, evaluates and exports one ranking model "
                                "(ranking examples of OUT/ranking).", fc.RANKING, items=None)
    parser.add_argument("--model", required=True, choices=rc.MODEL_NAMES,
                        help="which ranking model")
    return cli.run(parser, argv, lambda a: train(
        a.model, a.config, inputs.split_pattern(a.examples, fc.TRAIN),
        inputs.split_pattern(a.examples, fc.EVAL), a.vocab, a.hparams, a.export_dir))


if __name__ == "__main__":
    sys.exit(main())
