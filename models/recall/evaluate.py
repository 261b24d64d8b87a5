"""Scores an exported recall model under both offline protocols.

    python -m models.recall.evaluate --model EXPORT_DIR --config X.yaml \\
        --examples OUT/retrieval [--k 50 500] [--out metrics.json]

EXPORT_DIR is what a recall trainer wrote (user_tower/ and
item_embeddings/, models.recall.artifacts), whichever the model: user
vectors come from the exported user tower on the raw features, candidates
from the item-embedding artifact, and the top-K is exact inner-product
retrieval with the query's history excluded (models.recall.protocols).

* time_split: every Split-eval retrieval example is a query.
* leave_last_out: each user's last click over Split-train + Split-eval
  (users with >= 3 clicks) is the query, its earlier clicks the history.
  An exported model cannot be retrained without that click, so only the
  queries whose click is in Split-eval (which the trainer never saw) are
  scored; `trained_targets_dropped` counts the others (users with no
  eval-period click).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from models import cli, inputs  # noqa: E402
from models.recall import artifacts, data, protocols, training  # noqa: E402

TIME_SPLIT, LEAVE_LAST_OUT = "time_split", "leave_last_out"
# metrics.evaluate reports the new / returning-user slices at HR@50; the top-K
# must reach 50 for that figure to be what its name says.
SLICE_K = 50
# Marks the rows of Split-eval inside the train + eval arrays of leave-last-out.
_EVAL_ROW_KEY = "__is_eval_row"


@dataclasses.dataclass
class ExportedModel:
    """A recall export: the user tower's serving signature and the candidates."""

    directory: str
    user_tower: Callable[..., dict[str, tf.Tensor]]
    items: artifacts.ItemEmbeddings

    def user_vectors(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """User tower on the raw features of each row: [N, dim]."""
        names = list(self.user_tower.structured_input_signature[1])
        return training.predict(
            lambda batch: self.user_tower(**batch)[artifacts.USER_EMBEDDING_KEY], features,
            names, self.items.embeddings.shape[1])


def load_exported(model_dir: str, config: fc.FeatureConfig) -> ExportedModel:
    """Loads export_dir/user_tower and export_dir/item_embeddings.

    Raises:
      FileNotFoundError: either part is missing.
      ValueError: the user tower's inputs are not the config's serving
        features (the model was trained on another feature config).
    """
    user_dir = os.path.join(model_dir, artifacts.USER_TOWER_DIR)
    item_dir = os.path.join(model_dir, artifacts.ITEM_EMBEDDINGS_DIR)
    for path in (user_dir, item_dir):
        if not tf.io.gfile.isdir(path):
            raise FileNotFoundError(f"{model_dir!r} is not a recall export: no {path!r} "
                                    f"(want {artifacts.USER_TOWER_DIR}/ and "
                                    f"{artifacts.ITEM_EMBEDDINGS_DIR}/)")
    tower = artifacts.load_user_tower(user_dir)
    takes = sorted(tower.structured_input_signature[1])
    wanted = sorted(data.serving_signature(config))
    if takes != wanted:
        raise ValueError(f"the user tower of {model_dir!r} takes {takes}, but the feature "
                         f"config's user and context features are {wanted}")
    return ExportedModel(model_dir, tower, artifacts.read_item_embeddings(item_dir))


def take_queries(queries: protocols.Queries, rows: np.ndarray) -> protocols.Queries:
    """Queries `rows` of `queries`."""
    return protocols.Queries(data.take(queries.features, rows),
                             [queries.targets[i] for i in rows],
                             [queries.history[i] for i in rows], queries.is_new[rows])


def leave_last_out_unseen(train: Mapping[str, np.ndarray], evals: Mapping[str, np.ndarray],
                          config: fc.FeatureConfig) -> tuple[protocols.Queries, int]:
    """Leave-last-out queries of train + eval whose click the trainer never saw.

    Returns:
      (the queries whose example is in evals, the count of the others).
    """
    both = {key: np.concatenate([train[key], evals[key]]) for key in evals}
    both[_EVAL_ROW_KEY] = np.r_[np.zeros(data.num_rows(train), bool),
                                np.ones(data.num_rows(evals), bool)]
    _, queries = protocols.leave_last_out(both, config)
    unseen = np.flatnonzero(queries.features.pop(_EVAL_ROW_KEY))
    return take_queries(queries, unseen), len(queries) - len(unseen)


def score(model: ExportedModel, queries: protocols.Queries, ks: Sequence[int]
          ) -> dict[str, Any]:
    """protocols.evaluate_embeddings of the model's vectors, plus the query count."""
    metrics = protocols.evaluate_embeddings(queries, model.user_vectors(queries.features),
                                            model.items.ids, model.items.embeddings, ks)
    return {**metrics, "queries": len(queries)}


def evaluate(model_dir: str, config_path: str, examples_dir: str,
             ks: Sequence[int] = protocols.KS) -> dict[str, Any]:
    """Both protocols' metrics of an exported recall model.

    Args:
      model_dir: a recall trainer's export_dir.
      config_path: the feature config the model was trained with.
      examples_dir: retrieval examples (Split-train and Split-eval).
      ks: cutoffs; SLICE_K is always added.
    Returns:
      {"model", "model_name", "model_version", "num_items", "ks",
       "time_split": {hr@k, recall@k, ndcg@k, coverage@k, avg_position,
       num_users, skipped_users, new / returning-user HR@50, queries},
       "leave_last_out": {the same, trained_targets_dropped}}.
    Raises:
      FileNotFoundError: no export, or no examples of a split.
      ValueError: the export does not fit the config, or no eval example.
    """
    config = fc.load(config_path)
    model = load_exported(model_dir, config)
    ks = tuple(sorted(set(ks) | {SLICE_K}))
    train = data.load_examples(inputs.split_pattern(examples_dir, fc.TRAIN), config,
                               fc.RETRIEVAL)
    evals = data.load_examples(inputs.split_pattern(examples_dir, fc.EVAL), config,
                               fc.RETRIEVAL)
    llo_queries, dropped = leave_last_out_unseen(train, evals, config)
    return {"model": model_dir, "model_name": model.items.metadata.get("model"),
            "model_version": model.items.metadata.get("model_version"),
            "num_items": len(model.items.ids), "ks": list(ks),
            TIME_SPLIT: score(model, protocols.time_split(evals, config), ks),
            LEAVE_LAST_OUT: {**score(model, llo_queries, ks),
                             "trained_targets_dropped": dropped}}


def parser() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(prog="python -m models.recall.evaluate",
                                  description=__doc__.splitlines()[0])
    out.add_argument("--model", required=True,
                     help="export dir of a recall trainer (user_tower/, item_embeddings/)")
    out.add_argument("--config", required=True, help="feature config YAML the model used")
    out.add_argument("--examples", required=True,
                     help="retrieval examples directory (OUT/retrieval: Split-train, "
                          "Split-eval)")
    out.add_argument("--k", type=cli.positive_int, nargs="+", default=list(protocols.KS),
                     help=f"cutoffs (default {' '.join(map(str, protocols.KS))}; "
                          f"{SLICE_K} is always reported)")
    cli.add_out_flag(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (`python -m models.recall.evaluate --help`)."""
    return cli.run(parser(), argv,
                   lambda a: evaluate(a.model, a.config, a.examples, a.k))


if __name__ == "__main__":
    sys.exit(main())
