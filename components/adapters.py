"""The one place where components call into beam_jobs and models.

Each dependency is wrapped by one function here, so a change in a lower
package's API is absorbed in one spot and the components stay declarative.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import apache_beam as beam  # noqa: E402

RANKING_MODELS: tuple[str, ...] = ("lr", "fm", "nfm", "nfwfm", "multitask_nfwfm", "deepfm", "dcn")
RECALL_MODELS: tuple[str, ...] = ("item2vec", "youtubenet", "two_tower")


def sessionize(pipeline: beam.Pipeline, config_path: str, events: str, users: str, items: str,
               output_dir: str) -> None:
    """Adds the read -> sessionize -> write graph of beam_jobs.sessionize to `pipeline`.

    The caller runs the pipeline (the component's own Beam pipeline, so the
    job inherits the pipeline's beam_pipeline_args: runner, workers, ...).
    """
    import argparse

    from beam_jobs import sessionize as job  # imported late: only ExampleGen needs it
    job.build_pipeline(pipeline, argparse.Namespace(
        config=config_path, events=events, users=users, items=items, output_dir=output_dir))


def train_ranking(model_name: str, config_path: str, examples_dir: str, vocab_dir: str,
                  hparams: Mapping[str, Any], export_dir: str,
                  training_cluster: str = "") -> dict[str, Any]:
    """Trains models.ranking `model_name` on Split-train, evaluates on Split-eval.

    Args:
      training_cluster: "" trains in this process; "local:workers=<n>,ps=<m>"
        or "tf_config" trains under ParameterServerStrategy with the embedding
        tables sharded over the PS tasks (models.distributed.train).

    Returns:
      models.ranking.train.train's metrics dict (per task auc/logloss/gauc,
      sigma, params, ...). The SavedModel is written to export_dir.
    """
    from models import inputs
    from models.ranking import train as ranking_train
    from feature_contract import feature_config as fc
    patterns = (inputs.split_pattern(examples_dir, fc.TRAIN),
                inputs.split_pattern(examples_dir, fc.EVAL))
    if training_cluster:
        from models.distributed import train as distributed_train
        return distributed_train.train(model_name, config_path, *patterns, vocab_dir,
                                       dict(hparams), export_dir,
                                       training_cluster=training_cluster)
    return ranking_train.train(model_name, config_path, *patterns, vocab_dir, dict(hparams),
                               export_dir)


def train_recall(model_name: str, config_path: str, examples_dir: str, vocab_dir: str,
                 items_pattern: str | None, hparams: Mapping[str, Any],
                 export_dir: str, training_cluster: str = "") -> dict[str, Any]:
    """Trains a recall model; export_dir receives user_tower/ and item_embeddings/.

    Args:
      training_cluster: "" trains in this process; "local:workers=<n>,ps=<m>"
        or "tf_config" trains two_tower under ParameterServerStrategy, its
        tables sharded over the PS tasks (models.distributed.two_tower).

    Returns:
      The model's train() dict; on a cluster also "variable_placement",
      "params_per_ps" and "cluster".

    Raises:
      ValueError: an unknown model, or a training_cluster for a model other
        than two_tower.
    """
    if training_cluster and model_name != "two_tower":
        # Refused, not ignored: a cluster flag that silently trains in process
        # would misreport where (and at what scale) the model was trained.
        raise ValueError(f"{model_name} has no training_cluster path; "
                         "only two_tower and the ranking models do")
    if training_cluster:
        from models.distributed import two_tower as distributed_two_tower
        return distributed_two_tower.train(config_path, examples_dir, vocab_dir, items_pattern,
                                           dict(hparams), export_dir,
                                           training_cluster=training_cluster)
    if model_name == "item2vec":
        from models.item2vec import train as module
    elif model_name == "youtubenet":
        from models.youtubenet import train as module
    elif model_name == "two_tower":
        from models.two_tower import train as module
    else:
        raise ValueError(f"unknown recall model {model_name!r}; want one of {RECALL_MODELS}")
    return module.train(config_path, examples_dir, vocab_dir, items_pattern, dict(hparams),
                        export_dir)


def recall_export_dirs() -> tuple[str, str]:
    """(user tower, item embeddings) sub-directory names of a recall export."""
    from models.recall import artifacts
    return artifacts.USER_TOWER_DIR, artifacts.ITEM_EMBEDDINGS_DIR


def build_faiss_index(embeddings_dir: str, base_dir: str, name: str) -> str:
    """Builds and publishes <base_dir>/<name>/<version>/; returns the version dir."""
    from models.faiss_index import builder
    return builder.build_index(embeddings_dir, base_dir, name)


def load_faiss_index(directory: str):
    from models.faiss_index import index
    return index.load_index(directory)


def user_tower_request(config_path: str, retrieval_examples_dir: str, split: str,
                       num_examples: int) -> dict[str, Any]:
    """Raw user + context features of real retrieval examples, in the user
    towers' serving signature (name -> numpy array [N] / [N, L])."""
    from feature_contract import feature_config as fc
    from models import inputs
    from models.recall import data
    config = fc.load(config_path)
    arrays = data.load_examples(inputs.split_pattern(retrieval_examples_dir, split), config,
                                fc.RETRIEVAL, batch_size=max(1, num_examples))
    return {name: arrays[name][:num_examples] for name in data.serving_signature(config)}


def serve_and_predict(model_dir: str, model_name: str, inputs: Mapping[str, Any],
                      signature_name: str = "serving_default") -> dict[str, Any]:
    """Loads model_dir into serving.model_server, sends one gRPC Predict, returns outputs.

    The model is staged as version 1 under a temporary base path (a symlink,
    nothing copied), served on a free loopback port, queried with
    serving.client (TF Serving's public PredictionService API), and the
    server is stopped before returning.

    Raises:
      RuntimeError: the server could not load the model.
      grpc.RpcError: the Predict call failed (bad signature, bad inputs...).
    """
    import tempfile

    from serving.client import ModelServerClient
    from serving.config_files import ModelEntry
    from serving.model_server import ModelServer
    from serving.servables import ModelManager

    with tempfile.TemporaryDirectory(prefix="feedrec-validate-") as base:
        os.makedirs(os.path.join(base, model_name))
        os.symlink(os.path.abspath(model_dir), os.path.join(base, model_name, "1"))
        manager = ModelManager([ModelEntry(name=model_name, base_path=os.path.join(base, model_name))])
        loaded = manager.poll_once()
        if not loaded.get(model_name):
            raise RuntimeError(f"model server could not load {model_dir}: "
                               f"{manager.load_failures.get((model_name, 1), 'unknown error')}")
        server = ModelServer(manager, max_workers=2)
        try:
            grpc_port, _ = server.start("127.0.0.1", 0, None)
            with ModelServerClient(f"127.0.0.1:{grpc_port}") as client:
                client.wait_ready(timeout_s=30.0)
                return dict(client.predict(model_name, inputs, signature_name=signature_name))
        finally:
            server.stop()
