"""Trainer components: one for ranking models, one for recall models.

Both call the model packages through components.adapters and write TFX's
Model layout, <model.uri>/Format-Serving/ (a SavedModel), which the Evaluator,
the serving validator and the Pusher expect. The trainer's own evaluation goes
to a TrainingMetrics artifact (<uri>/metrics.json: the eval figures plus
"learning_curve", "early_stopping" and "validation" from the models' early
stopping) and headline figures to custom properties, so MLMD queries see
them: <task>_auc, <task>_eval_positives / _eval_examples, hr_at_50, ...,
best_epoch, epochs_run, stopped_early (0/1) and early_stopping_monitor, and
for a ranking model whose learning rate was chosen on validation
learning_rate and learning_rates_tried.
"""

import json
import math
import numbers
import os
from typing import Any

import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from components import adapters
from models.json_safe import json_safe
from components.artifacts import (FeatureVocabulary, ItemCatalogue, ItemEmbeddings,
                                  TrainingMetrics)
from components.example_gen import CONFIG_FILE, ITEMS_DIR, VOCAB_DIR

METRICS_FILE = "metrics.json"
_EXPORT_STAGING = "_export"


def parse_hparams(hparams: str) -> dict[str, Any]:
    """A JSON object string -> dict.

    Raises:
      ValueError: not JSON, or not an object.
    """
    try:
        value = json.loads(hparams or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"hparams must be a JSON object, got {hparams!r}: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"hparams must be a JSON object, got {hparams!r}")
    return value


def write_metrics(artifact: TrainingMetrics, model_name: str, metrics: dict[str, Any]) -> None:
    """Writes metrics.json and sets model_name on the artifact."""
    with tf.io.gfile.GFile(os.path.join(artifact.uri, METRICS_FILE), "w") as f:
        # default=str: a metric of another type (a config value) is kept as text.
        json.dump({"model_name": model_name, "metrics": json_safe(metrics)}, f, indent=1,
                  sort_keys=True, default=str)
    artifact.set_string_custom_property("model_name", model_name)


def read_metrics(artifact_uri: str) -> dict[str, Any]:
    """The {"model_name", "metrics"} written by write_metrics."""
    with tf.io.gfile.GFile(os.path.join(artifact_uri, METRICS_FILE)) as f:
        return json.load(f)


def _set_float(artifact, key: str, value: Any) -> None:
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        artifact.set_float_custom_property(key, float(value))


def _set_int(artifact, key: str, value: Any) -> None:
    # numbers.Integral covers numpy integers; a bool is not a count.
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        artifact.set_int_custom_property(key, int(value))


def record_early_stopping(artifact, result: dict[str, Any]) -> None:
    """best_epoch, epochs_run, stopped_early (0/1) and early_stopping_monitor
    from result["early_stopping"]; nothing when the trainer reported none."""
    stopping = result.get("early_stopping")
    if not isinstance(stopping, dict):
        return
    for key in ("best_epoch", "epochs_run"):
        _set_int(artifact, key, stopping.get(key))
    if stopping.get("stopped_early") is not None:
        artifact.set_int_custom_property("stopped_early", int(bool(stopping["stopped_early"])))
    if stopping.get("monitor"):
        artifact.set_string_custom_property("early_stopping_monitor", str(stopping["monitor"]))


@component
def RankingTrainer(  # noqa: N802
        examples: InputArtifact[standard_artifacts.Examples],
        vocabulary: InputArtifact[FeatureVocabulary],
        model: OutputArtifact[standard_artifacts.Model],
        metrics: OutputArtifact[TrainingMetrics],
        model_name: Parameter[str],
        hparams: Parameter[str] = "{}",
        training_cluster: Parameter[str] = ""):
    """Trains one models.ranking model (nfm, nfwfm, multitask_nfwfm, ...).

    Args:
      examples: ranking Examples (Split-train trains, Split-eval evaluates).
      vocabulary: vocabularies and the feature config.
      model: receives Format-Serving/ (serving_default: examples -> click [+ follow]).
      metrics: the trainer's eval metrics (auc, gauc, logloss per task, sigmas).
      model_name: models.ranking model name.
      hparams: JSON object of RankingConfig overrides.
      training_cluster: "" (this process), "local:workers=<n>,ps=<m>" or
        "tf_config": ParameterServerStrategy (adapters.train_ranking).
    """
    result = adapters.train_ranking(
        model_name, os.path.join(vocabulary.uri, CONFIG_FILE), examples.uri,
        os.path.join(vocabulary.uri, VOCAB_DIR), parse_hparams(hparams),
        path_utils.serving_model_dir(model.uri), training_cluster=training_cluster)
    write_metrics(metrics, model_name, result)
    model.set_string_custom_property("model_name", model_name)
    for task, values in result.items():
        if isinstance(values, dict) and "auc" in values:
            _set_float(model, f"{task}_auc", values["auc"])
            _set_float(metrics, f"{task}_auc", values["auc"])
            # An AUC that is missing because the eval split has one class
            # must read as "not evaluable", not as a forgotten figure.
            for key in ("positives", "examples"):
                _set_int(metrics, f"{task}_eval_{key}", values.get(key))
    record_early_stopping(metrics, result)
    tuning = result.get("learning_rate_tuning")
    if tuning:  # the rate chosen on validation, and of how many
        _set_float(metrics, "learning_rate", result["config"]["learning_rate"])
        _set_int(metrics, "learning_rates_tried", len(tuning))


@component
def RecallTrainer(  # noqa: N802
        examples: InputArtifact[standard_artifacts.Examples],
        vocabulary: InputArtifact[FeatureVocabulary],
        catalogue: InputArtifact[ItemCatalogue],
        model: OutputArtifact[standard_artifacts.Model],
        item_embeddings: OutputArtifact[ItemEmbeddings],
        metrics: OutputArtifact[TrainingMetrics],
        model_name: Parameter[str],
        hparams: Parameter[str] = "{}",
        training_cluster: Parameter[str] = ""):
    """Trains one recall model (item2vec, youtubenet, two_tower).

    Args:
      examples: retrieval Examples (item2vec Examples for item2vec).
      vocabulary: vocabularies and the feature config.
      catalogue: the item catalogue (candidate set, sampling frequencies).
      model: the user tower at Format-Serving/ (raw features -> user_embedding).
      item_embeddings: ids.txt, embeddings.npy, metadata.json.
      metrics: the trainer's eval metrics (hr@K, recall@K, ...).
      model_name: item2vec, youtubenet or two_tower.
      hparams: JSON object of the model config's overrides.
      training_cluster: "" (this process), "local:workers=<n>,ps=<m>" or
        "tf_config": ParameterServerStrategy, two_tower only
        (adapters.train_recall).
    """
    staging = os.path.join(model.uri, _EXPORT_STAGING)
    result = adapters.train_recall(
        model_name, os.path.join(vocabulary.uri, CONFIG_FILE), examples.uri,
        os.path.join(vocabulary.uri, VOCAB_DIR), os.path.join(catalogue.uri, ITEMS_DIR, "*.gz"),
        parse_hparams(hparams), staging, training_cluster=training_cluster)
    user_dir, item_dir = adapters.recall_export_dirs()
    tf.io.gfile.rename(os.path.join(staging, user_dir), path_utils.serving_model_dir(model.uri))
    if tf.io.gfile.exists(item_embeddings.uri):
        tf.io.gfile.rmtree(item_embeddings.uri)
    tf.io.gfile.rename(os.path.join(staging, item_dir), item_embeddings.uri)
    tf.io.gfile.rmtree(staging)
    result = {k: v for k, v in result.items() if k not in (user_dir, item_dir)}
    write_metrics(metrics, model_name, result)
    for artifact in (model, item_embeddings):
        artifact.set_string_custom_property("model_name", model_name)
    for key, value in result.items():
        if "@" in key:  # hr@50, recall@50, ...: headline figures
            _set_float(metrics, key.replace("@", "_at_"), value)
    record_early_stopping(metrics, result)
