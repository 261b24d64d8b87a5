"""YouTubeNet training entry: retrieval examples -> user tower + candidate table."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from models import cli  # noqa: E402
from models.recall import data, training  # noqa: E402
from models.recall.towers import FeatureTower  # noqa: E402
from models.youtubenet.config import YouTubeNetConfig  # noqa: E402
from models.youtubenet.model import YouTubeNet, sampling_weights  # noqa: E402

MODEL_NAME = "youtubenet"


class YouTubeNetResult(training.TowerResult):
    MODEL_NAME = MODEL_NAME
    NORMALIZED = False  # inner-product softmax: raw candidate embeddings


def fit(feature_config: fc.FeatureConfig, arrays: Mapping[str, np.ndarray],
        catalogue: data.Catalogue | None, vocabularies: Mapping[str, list[str]],
        config: YouTubeNetConfig) -> YouTubeNetResult:
    """Trains the user tower and candidate table with a logQ-corrected sampled softmax.

    The latest `validation_fraction` of the examples' time span is held out
    (time-split queries, as in the eval); training runs epoch by epoch until
    their HR@50 stops improving and keeps the best epoch
    (models.recall.training.fit_epochs).

    Raises:
      models.validation.ValidationError: too few examples to carve a
        validation split, or no validation query with a target.
      ValueError: no fit example's target is in the item vocabulary.
    """
    start = time.time()
    rng = np.random.default_rng(config.seed)
    # Seeds Keras' initializers too (tf.random.set_seed alone leaves them to
    # Python's `random`): the same seed gives the same run.
    keras.utils.set_random_seed(config.seed)
    carve = training.carve_validation(arrays, config.validation_fraction, MODEL_NAME)
    queries = training.validation_queries(carve, feature_config, MODEL_NAME)
    item_name = feature_config.item_id_feature.name
    vocabulary = list(vocabularies.get(item_name) or [])
    index = data.item_vocab_index(vocabulary)
    labels = np.array([index.get(x.decode() if isinstance(x, bytes) else x, 0)
                       for x in carve.fit[item_name]], np.int64)
    keep = np.flatnonzero(labels > 0)
    if len(keep) == 0:
        raise ValueError("no retrieval example has a target in the item vocabulary")
    dropped = int(len(labels) - len(keep))
    fit_arrays, labels = data.take(carve.fit, keep), labels[keep]
    clicks = np.bincount(labels, minlength=len(vocabulary) + 1)
    user_names = [f.name for f in data.user_features(feature_config, config.use_user_id)]
    tower = FeatureTower(feature_config.to_dict(), vocabularies, user_names, config.embedding_dim,
                         config.hidden_units, config.dim, attention_units=0, normalize=False,
                         name="user_tower")
    model = YouTubeNet(tower, len(vocabulary) + 1, config.dim,
                       sampling_weights(clicks, config.sampling_alpha), config.num_sampled)
    optimizer = keras.optimizers.Adam(config.learning_rate)
    rows = np.arange(1, len(vocabulary) + 1)
    if catalogue is not None:
        rows = rows[catalogue.rows_of(vocabulary) >= 0]
    item_ids = [vocabulary[r - 1] for r in rows]

    @tf.function(reduce_retracing=True)
    def step(features, batch_labels):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(features, batch_labels)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def train_epoch() -> float:
        total, batches = 0.0, 0
        for batch in training.minibatches(len(labels), config.batch_size, rng):
            total += float(step(training.tensors(fit_arrays, user_names, batch),
                                tf.constant(labels[batch])))
            batches += 1
        return total / max(batches, 1)

    def validate() -> float:
        users = training.predict(tower, queries.features, user_names, config.dim)
        return training.validation_hit_rate(queries, users, item_ids,
                                            model.candidates.numpy()[rows])

    history = training.fit_epochs(model, train_epoch, validate, config)
    stats = {**history, "examples": int(len(labels)), "dropped_unknown_target": dropped,
             "num_items": int(len(rows)),
             "validation": {**carve.summary(),
                            "validation_queries": training.count_with_targets(queries)},
             "train_seconds": time.time() - start}
    return YouTubeNetResult(feature_config, config, model, user_names, item_ids,
                            model.candidates.numpy()[rows], stats)


def train(config_path: str, examples_dir: str, vocab_dir: str, items_pattern: str | None,
          hparams: Mapping[str, Any] | None, export_dir: str) -> dict[str, Any]:
    """Trains on OUT/retrieval Split-train (validation carved from it), evaluates
    once on Split-eval (time split), exports.

    Args:
      config_path: feature config YAML.
      examples_dir: retrieval examples directory (Split-train, Split-eval).
      vocab_dir: OUT/vocab.
      items_pattern: item catalogue glob (restricts exported candidates); or None.
      hparams: YouTubeNetConfig fields.
      export_dir: receives user_tower/ and item_embeddings/.
    Returns:
      training statistics (learning_curve, early_stopping, validation, ...)
      and time-split eval metrics (hr@50, ...).
    """
    return training.train_and_export(fit, YouTubeNetConfig.from_hparams(hparams), config_path,
                                     examples_dir, vocab_dir, items_pattern, export_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line of `train` (`python -m models.youtubenet.train --help`)."""
    return cli.recall_trainer_main(train, MODEL_NAME, __doc__, fc.RETRIEVAL, cli.ITEMS_OPTIONAL,
                                   argv)


if __name__ == "__main__":
    sys.exit(main())
