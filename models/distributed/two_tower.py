"""The two-tower recall model trained under ParameterServerStrategy, its tables sharded over PS tasks.

The single-process trainer (models.two_tower.train.fit) runs unchanged: the
same carve, batches, in-batch + shared uniform + per-query hard negatives
with their logQ, loss (TwoTowerModel.compute_loss), Adam step and early
stopping on validation HR@50. What changes is where it runs, through the
`steps` hook fit takes (CoordinatedSteps here):

  variables   the towers and Adam's slots are created under the strategy's
              scope, so every table above `min_shard_bytes` (the item-id
              tables first) is split over the PS tasks, each slot beside
              its variable;
  steps       this process (the coordinator) draws each batch and its
              negatives as the single-process loop does, and
              ClusterCoordinator.schedule sends the step to whichever worker
              is free; workers apply their updates to the PS variables
              asynchronously;
  validation  the coordinator computes the user and item vectors itself,
              reading the variables from the PS tasks, after every epoch's
              steps are done (ClusterCoordinator.join).

Why the coordinator feeds the batches instead of a per-worker tf.data
pipeline: the negative samplers are numpy code over the catalogue
(models.two_tower.model.HardNegativeSampler), which a worker process (a bare
TensorFlow server) cannot run; feeding from the coordinator keeps them one
implementation and the batch sequence the single-process one for a seed.

Export: the trained variables are copied, sharded tables whole, into a
single-process model (models.distributed.train.assign_trained), which
exports user_tower/ and item_embeddings/ exactly as single-process training
does, loadable without any cluster.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from models.distributed import train as dt  # noqa: E402
from models.recall import data, training  # noqa: E402
from models.two_tower import train as tt_train  # noqa: E402
from models.two_tower.config import TwoTowerConfig  # noqa: E402
from models.two_tower.model import TwoTowerModel  # noqa: E402

MODEL_NAME = tt_train.MODEL_NAME


class CoordinatedSteps(tt_train.InProcessSteps):
    """models.two_tower.train.fit's steps on the workers of a ParameterServerStrategy cluster.

    Args:
      strategy: the cluster's strategy (models.distributed.train.make_strategy).
    """

    def __init__(self, strategy: tf.distribute.ParameterServerStrategy):
        self.strategy = strategy
        self.coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)

    def scope(self):
        return self.strategy.scope()

    def build(self, model: TwoTowerModel, optimizer: keras.optimizers.Optimizer,
              user_features: Mapping[str, tf.Tensor], item_features: Mapping[str, tf.Tensor]
              ) -> None:
        """Creates every variable here, under the scope: a worker's step cannot create any.

        Each tower is called once on one example; Adam's slots are built
        beside their variables (a table's slots beside its shards).
        """
        with self.strategy.scope():
            model.user_tower(user_features)
            model.item_tower(item_features)
            optimizer.build(model.trainable_variables)

    def function(self, step_fn):
        """`step_fn` as one replica's step of a worker (one replica per worker under PS)."""
        strategy = self.strategy

        @tf.function(reduce_retracing=True)
        def worker_step(*args):
            return strategy.run(step_fn, args=args)

        return worker_step

    def dispatch(self, step, args: tuple) -> Any:
        """Queues the step for the next free worker; returns its RemoteValue."""
        return self.coordinator.schedule(step, args=args)

    def losses(self, pending: list[Any]) -> list[float]:
        """Waits for every queued step, then reads their losses in dispatch order."""
        self.coordinator.join()
        return [float(remote.fetch()) for remote in pending]


def single_process_copy(model: TwoTowerModel, feature_config: fc.FeatureConfig,
                        vocabularies: Mapping[str, list[str]], config: TwoTowerConfig,
                        user_features: Mapping[str, tf.Tensor],
                        item_features: Mapping[str, tf.Tensor]) -> TwoTowerModel:
    """A two-tower model outside any strategy holding `model`'s trained weights.

    Args:
      user_features, item_features: one example of each tower's features
        (builds the copy's variables).
    Raises:
      ValueError: see models.distributed.train.assign_trained.
    """
    copy, _, _ = tt_train.build_model(feature_config, vocabularies, config)
    copy.user_tower(user_features)
    copy.item_tower(item_features)
    dt.assign_trained(copy.variables, model.variables)
    return copy


def fit_with_strategy(strategy: tf.distribute.ParameterServerStrategy,
                      feature_config: fc.FeatureConfig, arrays: Mapping[str, np.ndarray],
                      catalogue: data.Catalogue, vocabularies: Mapping[str, list[str]],
                      config: TwoTowerConfig) -> tt_train.TwoTowerResult:
    """models.two_tower.train.fit on a cluster (same arguments after the strategy).

    Returns:
      fit's result, its model a single-process copy of the trained one (so
      user_vectors and export need no cluster), its stats with
      "variable_placement" and "params_per_ps" (models.distributed.train's)
      of the trained model.
    """
    trained = tt_train.fit(feature_config, arrays, catalogue, vocabularies, config,
                           steps=CoordinatedSteps(strategy))
    # trained.config holds the recent_clicks choice the trained model has.
    user_names, item_names = tt_train.feature_names(feature_config, config)
    copy = single_process_copy(trained.model, feature_config, vocabularies, trained.config,
                               training.tensors(arrays, user_names, np.arange(1)),
                               training.tensors(catalogue.features, item_names, np.arange(1)))
    stats = {**trained.stats, "variable_placement": dt.variable_placement(trained.model),
             "params_per_ps": dt.params_per_ps(trained.model)}
    return dataclasses.replace(trained, model=copy, stats=stats)


def train_with_strategy(strategy: tf.distribute.ParameterServerStrategy, config_path: str,
                        examples_dir: str, vocab_dir: str, items_pattern: str,
                        hparams: Mapping[str, Any] | None, export_dir: str) -> dict[str, Any]:
    """models.two_tower.train.train on a cluster, given its strategy.

    Returns:
      models.two_tower.train.train's dict, plus "variable_placement" and
      "params_per_ps" (fit_with_strategy).
    """
    return training.train_and_export(
        functools.partial(fit_with_strategy, strategy), TwoTowerConfig.from_hparams(hparams),
        config_path, examples_dir, vocab_dir, items_pattern, export_dir)


def train(config_path: str, examples_dir: str, vocab_dir: str, items_pattern: str,
          hparams: Mapping[str, Any] | None, export_dir: str,
          training_cluster: str = dt.FROM_TF_CONFIG,
          min_shard_bytes: int = dt.DEFAULT_MIN_SHARD_BYTES) -> dict[str, Any]:
    """models.two_tower.train.train under ParameterServerStrategy (same arguments first).

    Args:
      training_cluster, min_shard_bytes: see models.distributed.train.cluster_strategy.
    Returns:
      train_with_strategy's dict, plus "cluster": {"source", "workers", "ps"}.
    Raises:
      models.distributed.cluster.ClusterError: a bad training_cluster, a
        TF_CONFIG without worker and ps jobs, or servers that do not start.
    """
    with dt.cluster_strategy(training_cluster, min_shard_bytes) as (strategy, cluster):
        result = train_with_strategy(strategy, config_path, examples_dir, vocab_dir,
                                     items_pattern, hparams, export_dir)
    result["cluster"] = cluster
    return result
