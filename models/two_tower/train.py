"""Two-tower training entry: retrieval examples -> towers -> exported artifacts."""

from __future__ import annotations

import contextlib
import dataclasses
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
from models.layers.feature_embedding import FeatureIds  # noqa: E402
from models.recall.towers import FeatureTower, recent_clicks_apply  # noqa: E402
from models.two_tower.config import TwoTowerConfig  # noqa: E402
from models.two_tower.model import HardNegativeSampler, TwoTowerModel  # noqa: E402

MODEL_NAME = "two_tower"


class TwoTowerResult(training.TowerResult):
    MODEL_NAME = MODEL_NAME
    NORMALIZED = True  # cosine model: item vectors are L2-normalized


def feature_names(feature_config: fc.FeatureConfig, config: TwoTowerConfig
                  ) -> tuple[list[str], list[str]]:
    """The user and item feature names the towers read."""
    return ([f.name for f in data.user_features(feature_config, config.use_user_id)],
            [f.name for f in data.item_features(feature_config)])


def build_model(feature_config: fc.FeatureConfig, vocabularies: Mapping[str, list[str]],
                config: TwoTowerConfig, recent_clicks: int | None = None,
                share_item_embedding: bool | None = None
                ) -> tuple[TwoTowerModel, list[str], list[str]]:
    """The untrained model and the user / item feature names its towers read.

    recent_clicks, share_item_embedding: the user tower's recent-click mean
    and whether the towers share the item-id table (None: the config's only
    choice, as a trained result's config holds).
    Raises:
      ValueError: a choice is None while the config holds several.
    """
    user_names, item_names = feature_names(feature_config, config)
    cfg = feature_config.to_dict()
    for name, value in (("recent_clicks", recent_clicks),
                        ("share_item_embedding", share_item_embedding)):
        if value is None and len(getattr(config, name)) != 1:
            raise ValueError(f"the config holds {name} choices {getattr(config, name)}: "
                             f"say which one to build")
    recent = config.recent_clicks[0] if recent_clicks is None else recent_clicks
    share = (config.share_item_embedding[0] if share_item_embedding is None
             else share_item_embedding)
    shared = _shared_item_table(feature_config, vocabularies, config, user_names, item_names,
                                share)
    user_tower = FeatureTower(cfg, vocabularies, user_names, config.embedding_dim,
                              config.hidden_units, config.dim, config.attention_units,
                              normalize=True, recent_clicks=recent,
                              history_positions=config.history_positions,
                              shared_tables=shared, dropout=config.dropout, name="user_tower")
    item_tower = FeatureTower(cfg, vocabularies, item_names, config.embedding_dim,
                              config.hidden_units, config.dim, attention_units=0,
                              normalize=True, shared_tables=shared, dropout=config.dropout,
                              name="item_tower")
    return TwoTowerModel(user_tower, item_tower, config.temperature), user_names, item_names


def shareable_item_features(feature_config: fc.FeatureConfig, user_names: Sequence[str],
                            item_names: Sequence[str]) -> list[str]:
    """Item-tower features a user-tower sequence (the click history) is `of`:
    the tables share_item_embedding can share (none: nothing to choose)."""
    ofs = {feature_config.feature(n).of for n in user_names
           if feature_config.feature(n).type == fc.SEQUENCE}
    return [n for n in item_names if n in ofs]


def _shared_item_table(feature_config: fc.FeatureConfig, vocabularies: Mapping[str, list[str]],
                       config: TwoTowerConfig, user_names: Sequence[str],
                       item_names: Sequence[str], share: bool
                       ) -> dict[str, keras.layers.Embedding]:
    """{item-id feature: its table} when sharing is on and applies, else {}."""
    shared = shareable_item_features(feature_config, user_names, item_names) if share else []
    if not shared:
        return {}
    ids = FeatureIds(feature_config.to_dict(), vocabularies, shared)
    # Built lazily by the first tower that calls it, so its variable is
    # named under that tower (user_tower/...): the user tower runs first
    # both where a cluster builds the model (CoordinatedSteps.build) and in
    # its single-process copy, whose assign_trained matches names. Building
    # it here instead would also move its initial draw before the towers'.
    return {n: keras.layers.Embedding(
        ids.num_rows(n), config.embedding_dim,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01),
        name=f"{n}_shared_embedding") for n in shared}


def make_optimizer(config: TwoTowerConfig) -> keras.optimizers.Optimizer:
    """Adam, or AdamW when `config.weight_decay` > 0 (decoupled: each step
    also shrinks every weight by learning_rate * weight_decay of itself)."""
    if config.weight_decay:
        return keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(config.learning_rate)


def _hard_sampler(feature_config: fc.FeatureConfig, catalogue: data.Catalogue
                  ) -> HardNegativeSampler | None:
    category = feature_config.role(fc.ROLE_ITEM_CATEGORY)
    if category is None:
        return None  # "other category" is undefined: no hard negatives
    city = feature_config.role(fc.ROLE_ITEM_CITY)
    return HardNegativeSampler(catalogue.attribute_codes(category.name),
                               None if city is None else catalogue.attribute_codes(city.name))


class InProcessSteps:
    """How `fit` runs its training steps: in this process, one after another.

    The hook a cluster trainer replaces (models.distributed.two_tower's
    CoordinatedSteps dispatches the same step function to the workers of a
    ParameterServerStrategy cluster), so the loop, the sampling and the loss
    stay one piece of code.
    """

    def scope(self) -> contextlib.AbstractContextManager:
        """Where the model and optimizer are created (their variables' placement)."""
        return contextlib.nullcontext()

    def build(self, model: TwoTowerModel, optimizer: keras.optimizers.Optimizer,
              user_features: Mapping[str, tf.Tensor], item_features: Mapping[str, tf.Tensor]
              ) -> None:
        """Creates the variables before the first step (here: the first step does)."""

    def function(self, step_fn):
        """`step_fn(*batch) -> loss` as the function `dispatch` runs."""
        return tf.function(step_fn, reduce_retracing=True)

    def dispatch(self, step, args: tuple) -> Any:
        """Runs one step on `args`; returns its loss (or a handle to it)."""
        return step(*args)

    def losses(self, pending: list[Any]) -> list[float]:
        """The losses of the dispatched steps, once they are done."""
        return [float(loss) for loss in pending]


def batch_candidates(rng: np.random.Generator, positives: np.ndarray, click_probability: np.ndarray,
                     num_uniform: int, hard: HardNegativeSampler | None, num_hard: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One batch's candidates and the per-draw probability each was drawn with (logQ).

    Args:
      positives: [B] catalogue rows of the batch's clicked items.
      click_probability: [N] click-frequency probability: the in-batch
        positives' sampling distribution.
      num_uniform: shared negatives drawn uniformly over the N items (Q = 1/N).
      hard: per-query hard negative sampler (None: no hard negatives).
      num_hard: hard negatives per query.
    Returns:
      shared rows [B + num_uniform] (the positives first), their Q; hard rows
      [B, num_hard], their Q ([B, 0] each without hard negatives).
    """
    n = len(click_probability)
    uniform = rng.integers(0, n, num_uniform)
    shared = np.concatenate([positives, uniform])
    shared_q = np.concatenate([click_probability[positives], np.full(num_uniform, 1.0 / n)])
    if hard is None or num_hard == 0:
        return shared, shared_q, np.zeros((len(positives), 0), np.int64), np.zeros(
            (len(positives), 0))
    hard_rows, hard_q = hard.sample(rng, positives, num_hard)
    return shared, shared_q, hard_rows, hard_q


def future_targets(user_keys: np.ndarray, timestamps: np.ndarray, rows: np.ndarray,
                   window: int) -> np.ndarray:
    """Each example's own target and its user's next clicks, as catalogue rows.

    Args:
      user_keys: [N] the examples' users (any sortable ids).
      timestamps: [N] their click times.
      rows: [N] their target items' catalogue rows.
      window: columns of the result (1: the own target only).
    Returns:
      [N, window] int64: column 0 is `rows`; column k the target of the same
      user's k-th later example (by time, then input order), -1 past the
      user's last. The valid entries of a row are contiguous from column 0.
    """
    n = len(rows)
    out = np.full((n, window), -1, np.int64)
    out[:, 0] = rows
    if window == 1 or n == 0:
        return out
    _, users = np.unique(np.asarray(user_keys), return_inverse=True)
    order = np.lexsort((np.arange(n), np.asarray(timestamps), users))
    sorted_users = users[order]
    for k in range(1, window):
        same = sorted_users[k:] == sorted_users[:-k]
        out[order[:-k][same], k] = rows[order[k:][same]]
    return out


def sample_targets(rng: np.random.Generator, future: np.ndarray, batch: np.ndarray
                   ) -> np.ndarray:
    """One target per example of `batch`, uniform over its valid future_targets columns.

    With one column the own targets are returned and `rng` is not drawn from,
    so a run without future targets is the same run as before they existed.
    """
    if future.shape[1] == 1:
        return future[batch, 0]
    candidates = future[batch]
    counts = (candidates >= 0).sum(axis=1)  # >= 1: column 0 is always valid
    pick = np.minimum((rng.random(len(batch)) * counts).astype(np.int64), counts - 1)
    return candidates[np.arange(len(batch)), pick]


def fit(feature_config: fc.FeatureConfig, arrays: Mapping[str, np.ndarray],
        catalogue: data.Catalogue, vocabularies: Mapping[str, list[str]],
        config: TwoTowerConfig, steps: InProcessSteps | None = None) -> TwoTowerResult:
    """Trains the towers on retrieval examples (history -> clicked item).

    The latest `validation_fraction` of the examples' time span is held out
    (time-split queries, as in the eval); training runs epoch by epoch until
    their HR@50 stops improving and keeps the best epoch
    (models.recall.training.fit_epochs). One model is trained per pair of
    `share_item_embedding` and `recent_clicks` choices (same seed; the
    config's order, share outermost) and the best validation HR@50 is kept
    (a later pair must beat the kept one by more than min_delta); the
    result's config holds the chosen values, stats["choices"] every pair's
    validation HR@50, and stats["recent_clicks"] / stats["share_item_embedding"]
    each axis through the chosen pair. A user tower without the history
    feature, or with nothing else, has only the recent_clicks choice 0; with
    no item-tower feature the history is `of`, only the share choice False.

    Args:
      steps: where the model lives and the steps run (default: this process,
        InProcessSteps).
    Raises:
      models.validation.ValidationError: too few examples to carve a
        validation split, or no validation query with a target.
      ValueError: no fit example's target item is in the catalogue.
    """
    start = time.time()
    steps = steps or InProcessSteps()
    carve = training.carve_validation(arrays, config.validation_fraction, MODEL_NAME)
    queries = training.validation_queries(carve, feature_config, MODEL_NAME)
    rows, unknown = training.target_rows(carve.fit, feature_config, catalogue)
    keep = np.flatnonzero(rows >= 0)
    if len(keep) == 0:
        raise ValueError("no retrieval example has a target item in the catalogue")
    fit_arrays, rows = data.take(carve.fit, keep), rows[keep]
    # (The validation queries above already needed the user column.)
    future = future_targets(fit_arrays[fc.USER_KEY], fit_arrays[fc.TIMESTAMP_KEY], rows,
                            config.future_targets)
    probability = data.click_probabilities(catalogue)
    hard = _hard_sampler(feature_config, catalogue)

    def fit_one(recent: int, share: bool) -> tuple[TwoTowerModel, dict[str, Any], np.ndarray]:
        """One model (recent-click mean of `recent`, item table shared or not)
        trained to early stopping."""
        rng = np.random.default_rng(config.seed)
        # Seeds Keras' initializers too (tf.random.set_seed alone leaves them
        # to Python's `random`): the same seed gives the same run, and every
        # choice starts from the same draws.
        keras.utils.set_random_seed(config.seed)
        with steps.scope():
            model, user_names, item_names = build_model(feature_config, vocabularies, config,
                                                        recent, share)
            optimizer = make_optimizer(config)
        steps.build(model, optimizer, training.tensors(fit_arrays, user_names, np.arange(1)),
                    training.tensors(catalogue.features, item_names, np.arange(1)))

        def step_fn(user_features, shared_features, shared_ids, shared_probability,
                    hard_features, hard_ids, hard_probability):
            with tf.GradientTape() as tape:
                loss = model.compute_loss(user_features, shared_features, shared_ids,
                                          shared_probability, hard_features, hard_ids,
                                          hard_probability)
            variables = model.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        step = steps.function(step_fn)

        def train_epoch() -> float:
            pending = []
            for batch in training.minibatches(len(rows), config.batch_size, rng):
                shared, shared_q, hard_rows, hard_q = batch_candidates(
                    rng, sample_targets(rng, future, batch), probability,
                    config.extra_negatives, hard, config.hard_negatives)
                pending.append(steps.dispatch(step, (
                    training.tensors(fit_arrays, user_names, batch),
                    training.tensors(catalogue.features, item_names, shared),
                    tf.constant(shared), tf.constant(shared_q, tf.float32),
                    training.tensors(catalogue.features, item_names, hard_rows.reshape(-1)),
                    tf.constant(hard_rows), tf.constant(hard_q, tf.float32))))
            return sum(steps.losses(pending)) / max(len(pending), 1)

        def item_vectors() -> np.ndarray:
            return training.predict(model.item_tower, catalogue.features, item_names,
                                    config.dim)

        def validate() -> float:
            users = training.predict(model.user_tower, queries.features, user_names,
                                     config.dim)
            return training.validation_hit_rate(queries, users, catalogue.ids, item_vectors())

        history = training.fit_epochs(model, train_epoch, validate, config)
        return model, history, item_vectors()

    user_names, item_names = feature_names(feature_config, config)
    # Without a history beside another user feature there is nothing to choose.
    recents = config.recent_clicks if recent_clicks_apply(feature_config, user_names) else (0,)
    shares = (config.share_item_embedding
              if shareable_item_features(feature_config, user_names, item_names) else (False,))
    best, model, history, item_vectors, values = None, None, None, None, {}
    for share in shares:
        for recent in recents:
            run_model, run_history, run_vectors = fit_one(recent, share)
            values[(recent, share)] = run_history["early_stopping"]["best_value"]
            # A later pair must beat the kept one by more than min_delta (the
            # early stopping's own notion of a gain); only the kept run is held.
            if best is None or values[(recent, share)] > values[best] + config.min_delta:
                best, model, history, item_vectors = ((recent, share), run_model, run_history,
                                                      run_vectors)
    recent, share = best
    chosen = dataclasses.replace(config, recent_clicks=(recent,), share_item_embedding=(share,))
    monitor = training.MONITOR
    stats = {**history, "examples": int(len(rows)), "dropped_unknown_target": unknown,
             "num_items": len(catalogue),
             "choices": {"chosen": {"recent_clicks": recent, "share_item_embedding": share},
                         monitor: {f"recent_clicks={r},share_item_embedding={str(s).lower()}": v
                                   for (r, s), v in values.items()}},
             "recent_clicks": {"chosen": recent, monitor: {
                 str(r): v for (r, s), v in values.items() if s == share}},
             "share_item_embedding": {"chosen": share, monitor: {
                 str(s).lower(): v for (r, s), v in values.items() if r == recent}},
             "validation": {**carve.summary(),
                            "validation_queries": training.count_with_targets(queries)},
             "train_seconds": time.time() - start}
    return TwoTowerResult(feature_config, chosen, model, user_names, list(catalogue.ids),
                          item_vectors, stats)


def train(config_path: str, examples_dir: str, vocab_dir: str, items_pattern: str,
          hparams: Mapping[str, Any] | None, export_dir: str) -> dict[str, Any]:
    """Trains on OUT/retrieval Split-train (validation carved from it), evaluates
    once on Split-eval (time split), exports.

    Args:
      config_path: feature config YAML.
      examples_dir: retrieval examples directory (Split-train, Split-eval).
      vocab_dir: OUT/vocab.
      items_pattern: item catalogue TFRecords glob.
      hparams: TwoTowerConfig fields.
      export_dir: receives user_tower/ and item_embeddings/.
    Returns:
      training statistics (learning_curve, early_stopping, validation, ...)
      and time-split eval metrics (hr@50, recall@50, ...).
    """
    return training.train_and_export(fit, TwoTowerConfig.from_hparams(hparams), config_path,
                                     examples_dir, vocab_dir, items_pattern, export_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line of `train` (`python -m models.two_tower.train --help`)."""
    return cli.recall_trainer_main(train, MODEL_NAME, __doc__, fc.RETRIEVAL, cli.ITEMS_REQUIRED,
                                   argv)


if __name__ == "__main__":
    sys.exit(main())
