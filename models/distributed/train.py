"""Ranking models trained under ParameterServerStrategy, embedding tables sharded over PS tasks.

The way large recommender embeddings are trained: variables live on
parameter-server tasks, a `variable_partitioner` (MinSizePartitioner) splits
every table above `min_shard_bytes` into up to one shard per PS, and workers
run training steps asynchronously, dispatched by this process (the
coordinator) through Keras `Model.fit`. Everything else is the single-process
trainer's (models.ranking.train): the same model, input pipeline, validation
carve, early stopping on validation AUC, eval metrics and SavedModel
signatures. The coordinator scores validation and eval itself, reading the
variables from the PS tasks.

Export: the trained variables are copied by name, a sharded table's shards
joined back whole (assign_trained), into a single-process copy of the model,
which models.ranking.export writes: the SavedModel is the one single-process
training exports, loadable and servable without any cluster.

Why ParameterServerStrategy and not MultiWorkerMirroredStrategy: mirroring
keeps a full copy of every variable on every worker, so the largest table must
fit one machine; PS training holds each table once, split over the PS tasks,
and a worker reads only what its steps need.

The two-tower recall model's cluster trainer is models.distributed.two_tower;
it shares this module's strategy, cluster and export helpers and its
command line, `--model two_tower`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from models import inputs, validation  # noqa: E402
from models.distributed import cluster as cl  # noqa: E402
from models.layers.feature_embedding import load_vocabularies  # noqa: E402
from models.ranking import config as rc  # noqa: E402
from models.ranking import export  # noqa: E402
from models.ranking import train as ranking_train  # noqa: E402
from models.ranking.model import RankingModel  # noqa: E402

# Shard a variable once it holds this much; real tables (1e5+ rows) are far above it.
DEFAULT_MIN_SHARD_BYTES = 256 << 10
# Steps per dispatched function: a dispatch costs the coordinator a round trip.
DEFAULT_STEPS_PER_EXECUTION = 4
# training_cluster value of a process started by a cluster manager (KFP, Kubernetes).
FROM_TF_CONFIG = "tf_config"


def make_strategy(resolver: Any, num_ps: int, min_shard_bytes: int = DEFAULT_MIN_SHARD_BYTES
                  ) -> tf.distribute.ParameterServerStrategy:
    """ParameterServerStrategy over `resolver`'s cluster with tables split over the PS tasks.

    Args:
      resolver: a ClusterResolver with worker and ps jobs
        (models.distributed.cluster.cluster_resolver).
      num_ps: PS tasks: the most shards a variable is split into.
      min_shard_bytes: a variable gets as many shards as it holds this many
        bytes (at least one, at most num_ps).
    """
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=min_shard_bytes, max_shards=num_ps)
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def fit_dataset_creator(train_pattern: str | Sequence[str], features: fc.FeatureConfig,
                        config: rc.RankingConfig, cutoff: float
                        ) -> keras.utils.experimental.DatasetCreator:
    """Every worker's endless, shuffled stream of the fit split's (features, labels) batches.

    The shuffle is unseeded, each worker drawing its own order at run time:
    the dataset function is traced once and run on every worker, and Keras
    builds it anew for each epoch's fit call, so a seed fixed at trace time
    (an explicit one, or one derived from the global seed build_model sets)
    would give every worker, and every epoch, the same order: the workers
    would train on the same batches and the rest of the fit split would
    never be read.
    """
    is_validation = validation.is_validation_record(cutoff)

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        del input_context  # PS training gives one pipeline per worker, no sharding id
        # Traced in a graph, this clears that graph's seed only (the global
        # seed stays), so shuffle(seed=None) draws its seed when it runs.
        tf.random.set_seed(None)
        return inputs.make_dataset(
            train_pattern, features, fc.RANKING, config.batch_size, shuffle=True, seed=None,
            num_epochs=None, label_keys=fc.LABEL_KEYS,
            record_filter=lambda s: tf.logical_not(is_validation(s)))

    return keras.utils.experimental.DatasetCreator(dataset_fn)


def fit_on_cluster(model: RankingModel, creator: keras.utils.experimental.DatasetCreator,
                   val_ds: tf.data.Dataset, stopping: validation.EarlyStopping, monitor: str,
                   steps_per_epoch: int, batch_size: int) -> dict[str, Any]:
    """models.ranking.train.fit_with_early_stopping, an epoch being `steps_per_epoch` steps.

    Under ParameterServerStrategy an epoch cannot be "one pass over a finite
    dataset" (each worker streams its own endless copy), so an epoch is the
    fit split's batch count, dispatched to whichever worker is free.

    Returns:
      fit_with_early_stopping's dict (train_examples_per_s counts
      steps_per_epoch * batch_size examples per epoch).
    """
    # fit_with_early_stopping calls model.fit(data, epochs=1, verbose=0): an
    # instance attribute (untracked, removed after) gives that call the epoch
    # length, so the early-stopping loop stays one function for both trainers.
    object.__setattr__(model, "fit", functools.partial(model.fit, steps_per_epoch=steps_per_epoch))
    try:
        return ranking_train.fit_with_early_stopping(model, creator, val_ds, stopping, monitor,
                                                     steps_per_epoch * batch_size)
    finally:
        object.__delattr__(model, "fit")


def _base_name(var: tf.Variable) -> str:
    """The variable's name without ":0" and, for a shard, without "/part_<k>"."""
    name = var.name.split(":")[0]
    return name.rsplit("/part_", 1)[0] if "/part_" in name else name


def _part_index(var: tf.Variable) -> int:
    """k of a shard named ".../part_<k>:0"; 0 for an unsharded variable."""
    name = var.name.split(":")[0]
    return int(name.rsplit("/part_", 1)[1]) if "/part_" in name else 0


def variable_placement(model: keras.Model) -> dict[str, list[str]]:
    """Variable name (_base_name) -> device of each of its shards, in row order."""
    out: dict[str, list[str]] = {}
    for var in sorted(model.variables, key=_part_index):
        out.setdefault(_base_name(var), []).append(var.device)
    return out


def params_per_ps(model: keras.Model) -> dict[str, int]:
    """PS device ("/job:ps/replica:0/task:<k>/device:CPU:0") -> scalars it holds."""
    out: dict[str, int] = {}
    for var in model.variables:
        out[var.device] = out.get(var.device, 0) + int(np.prod(var.shape))
    return dict(sorted(out.items()))


def assign_trained(copy: Sequence[tf.Variable], trained: Sequence[tf.Variable]) -> None:
    """Gives every variable of `copy` (outside any strategy) its `trained` value, by name.

    A sharded trained variable gives its shards' rows concatenated in shard
    order (the partitioner splits axis 0 into consecutive row ranges, the
    first shards one row longer when the rows do not divide evenly).

    Raises:
      ValueError: a variable of the copy that `trained` lacks, or whose rows
        do not add up (a different model).
    """
    shards: dict[str, list[tf.Variable]] = {}
    for var in trained:
        shards.setdefault(_base_name(var), []).append(var)
    for var in copy:
        parts = shards.get(_base_name(var))
        if not parts:
            raise ValueError(f"the trained model has no variable {_base_name(var)!r}")
        parts = sorted(parts, key=_part_index)
        value = tf.concat([p.read_value() for p in parts], axis=0) if len(parts) > 1 else (
            parts[0].read_value())
        if value.shape != var.shape:
            raise ValueError(f"variable {_base_name(var)!r}: trained shape {value.shape}, "
                             f"copy's {var.shape}")
        var.assign(value)


def single_process_copy(model: RankingModel, example_batch: Mapping[str, tf.Tensor]
                        ) -> RankingModel:
    """A model outside any strategy holding `model`'s trained weights (assign_trained)."""
    copy = RankingModel(model.ranking_config.to_dict(), model.feature_config,
                        model.vocabularies, name=model.name)
    copy.build_from_example(example_batch)
    assign_trained(copy.variables, model.variables)
    return copy


@contextlib.contextmanager
def cluster_strategy(training_cluster: str, min_shard_bytes: int = DEFAULT_MIN_SHARD_BYTES
                     ) -> Iterator[tuple[tf.distribute.ParameterServerStrategy, dict[str, Any]]]:
    """The strategy of a training cluster, and the result's "cluster" entry.

    Args:
      training_cluster: "local:workers=<n>,ps=<m>" starts n worker and m PS
        processes on this machine for the block and stops them after;
        "tf_config" (FROM_TF_CONFIG) joins the cluster TF_CONFIG describes,
        this process being its coordinator (task type "chief").
      min_shard_bytes: see make_strategy.
    Yields:
      (strategy, {"source": training_cluster, "workers": n, "ps": m}).
    Raises:
      models.distributed.cluster.ClusterError: a bad training_cluster, a
        TF_CONFIG without worker and ps jobs, or servers that do not start.
    """
    local = None
    if training_cluster != FROM_TF_CONFIG:
        local = cl.LocalCluster(cl.parse_cluster_flag(training_cluster))
    with local if local is not None else contextlib.nullcontext():
        resolver = cl.cluster_resolver(local)
        jobs = resolver.cluster_spec().as_dict()
        yield (make_strategy(resolver, len(jobs[cl.PS]), min_shard_bytes),
               {"source": training_cluster, "workers": len(jobs[cl.WORKER]),
                "ps": len(jobs[cl.PS])})


def train_with_strategy(strategy: tf.distribute.ParameterServerStrategy, model_name: str,
                        config_path: str, train_pattern: str | Sequence[str],
                        eval_pattern: str | Sequence[str], vocab_dir: str,
                        hparams: Mapping[str, Any] | None, export_dir: str | None,
                        steps_per_execution: int = DEFAULT_STEPS_PER_EXECUTION
                        ) -> dict[str, Any]:
    """models.ranking.train.train on a cluster, given its strategy.

    Args:
      steps_per_execution: training steps a worker runs per dispatched
        function (Keras compile's): more amortizes the coordinator's round
        trip per dispatch over more steps.

    Returns:
      models.ranking.train.train's dict, plus "variable_placement"
      (variable_placement) and "params_per_ps" (params_per_ps).
    """
    config = rc.make_config(model_name, hparams)
    features = fc.load(config_path)
    vocabularies = load_vocabularies(features, vocab_dir)
    carve = ranking_train.carve_validation(train_pattern, config.validation_fraction)
    _, val_ds = ranking_train.split_datasets(train_pattern, features, config, carve["cutoff"])
    eval_ds = inputs.make_dataset(eval_pattern, features, fc.RANKING, 1024)
    first = next(iter(val_ds))
    steps = max(math.ceil(carve["fit_examples"] / config.batch_size), 1)

    def build_and_fit(point: rc.RankingConfig) -> tuple[RankingModel, dict[str, Any]]:
        with strategy.scope():
            model = ranking_train.build_model(point, features, vocabularies, example_batch=first)
            if steps_per_execution != 1:
                model.compile(optimizer=model.optimizer, steps_per_execution=steps_per_execution)
        return model, fit_on_cluster(
            model, fit_dataset_creator(train_pattern, features, point, carve["cutoff"]), val_ds,
            ranking_train.early_stopping(point), ranking_train.default_monitor(point.tasks),
            steps, point.batch_size)

    model, fitted, config, tuning = ranking_train.fit_learning_rates(config, build_and_fit)
    result: dict[str, Any] = ranking_train.evaluate_model(model, eval_ds)
    result.update(ranking_train.model_complexity(model))
    for key in ("train_examples_per_s", "learning_curve", "early_stopping", "train_logs"):
        result[key] = fitted[key]
    result["validation"] = carve
    result["learning_rate_tuning"] = tuning
    result["sigma"] = model.task_loss.sigmas()
    result["config"] = config.to_dict()
    result["variable_placement"] = variable_placement(model)
    result["params_per_ps"] = params_per_ps(model)
    result["export_dir"] = (export.export(single_process_copy(model, first), export_dir)
                            if export_dir else None)
    return result


def train(model_name: str, config_path: str, train_pattern: str | Sequence[str],
          eval_pattern: str | Sequence[str], vocab_dir: str, hparams: Mapping[str, Any] | None,
          export_dir: str | None, training_cluster: str = FROM_TF_CONFIG,
          min_shard_bytes: int = DEFAULT_MIN_SHARD_BYTES,
          steps_per_execution: int = DEFAULT_STEPS_PER_EXECUTION) -> dict[str, Any]:
    """models.ranking.train.train under ParameterServerStrategy (same arguments first).

    Args:
      training_cluster, min_shard_bytes: see cluster_strategy.
      steps_per_execution: see train_with_strategy.
    Returns:
      train_with_strategy's dict, plus "cluster": {"source" (the
      training_cluster argument), "workers", "ps"}.
    Raises:
      models.distributed.cluster.ClusterError: a bad training_cluster, a
        TF_CONFIG without worker and ps jobs, or servers that do not start.
    """
    with cluster_strategy(training_cluster, min_shard_bytes) as (strategy, cluster):
        result = train_with_strategy(strategy, model_name, config_path, train_pattern,
                                     eval_pattern, vocab_dir, hparams, export_dir,
                                     steps_per_execution)
    result["cluster"] = cluster
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m models.distributed.train`: the coordinator's command line.

    --examples is the model's examples directory (Split-train, Split-eval):
    ranking examples for a ranking model, as for `python -m
    models.ranking.train`; retrieval examples for two_tower (with --items),
    as for `python -m models.two_tower.train`. Prints the metrics as JSON.
    """
    # Imported here: models.distributed.two_tower imports this module.
    from models.distributed import two_tower  # noqa: PLC0415
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=(*rc.MODEL_NAMES, two_tower.MODEL_NAME))
    parser.add_argument("--config", required=True, help="feature config YAML")
    parser.add_argument("--examples", required=True,
                        help="ranking (two_tower: retrieval) examples directory")
    parser.add_argument("--vocab", required=True, help="vocabulary directory")
    parser.add_argument("--items", default=None,
                        help="item catalogue TFRecords glob (two_tower only, required there)")
    parser.add_argument("--hparams", type=json.loads, default={},
                        help="JSON RankingConfig (two_tower: TwoTowerConfig) overrides")
    parser.add_argument("--export_dir", default=None)
    parser.add_argument("--training_cluster", default=FROM_TF_CONFIG,
                        help="'local:workers=<n>,ps=<m>', or 'tf_config' (default) to join "
                             "the cluster of this process's TF_CONFIG as its chief")
    parser.add_argument("--min_shard_bytes", type=int, default=DEFAULT_MIN_SHARD_BYTES)
    args = parser.parse_args(argv)
    if args.model == two_tower.MODEL_NAME:
        if not args.items or not args.export_dir:
            parser.error("--model two_tower needs --items and --export_dir")
        result = two_tower.train(args.config, args.examples, args.vocab, args.items,
                                 args.hparams, args.export_dir, args.training_cluster,
                                 args.min_shard_bytes)
    else:
        result = train(args.model, args.config, inputs.split_pattern(args.examples, fc.TRAIN),
                       inputs.split_pattern(args.examples, fc.EVAL), args.vocab, args.hparams,
                       args.export_dir, args.training_cluster, args.min_shard_bytes)
    print(json.dumps(result, indent=2, default=str))
    return 0

if __name__ == "__main__":
    sys.exit(main())
