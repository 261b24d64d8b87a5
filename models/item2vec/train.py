"""Item2vec training entry: sessions -> SGNS item vectors -> exported artifacts."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from beam_jobs import feature_config as fc  # noqa: E402
from models import inputs  # noqa: E402
from models.item2vec.config import Item2VecConfig  # noqa: E402
from models.item2vec.model import (MeanHistoryTower, NegativeSampler, SkipGram,  # noqa: E402
                                   normalize_rows, skipgram_pairs)
from models.recall import artifacts, data, metrics  # noqa: E402

MODEL_NAME = "item2vec"


@dataclasses.dataclass
class Item2VecResult:
    """A trained Item2vec: normalized vectors of the trained catalogue items."""

    feature_config: fc.FeatureConfig
    config: Item2VecConfig
    vocabulary: list[str]
    item_ids: list[str]
    item_vectors: np.ndarray  # [N, dim], L2-normalized
    tower: MeanHistoryTower
    stats: dict[str, Any]

    def user_vectors(self, features: Mapping[str, np.ndarray],
                     batch_size: int = 4096) -> np.ndarray:
        """Mean of recent clicked item vectors, [B, dim] (zeros without history)."""
        name = self.feature_config.history_feature.name
        history = features[name]
        return np.concatenate([self.tower({name: tf.constant(history[i:i + batch_size])}).numpy()
                               for i in range(0, len(history), batch_size)] or
                              [np.zeros((0, self.config.dim), np.float32)])

    def similar_items(self, item_id: str, k: int) -> list[tuple[str, float]]:
        """Item-to-item recall: the k nearest items by cosine, itself excluded."""
        row = self.item_ids.index(item_id)
        best = metrics.top_k(self.item_vectors[row:row + 1], self.item_vectors, k,
                             exclude=[np.array([row])])[0]
        return [(self.item_ids[j], float(self.item_vectors[row] @ self.item_vectors[j]))
                for j in best if j >= 0]

    def export(self, export_dir: str, model_version: int | None = None) -> dict[str, str]:
        user_dir = os.path.join(export_dir, artifacts.USER_TOWER_DIR)
        item_dir = os.path.join(export_dir, artifacts.ITEM_EMBEDDINGS_DIR)
        artifacts.export_user_tower(self.tower, self.tower,
                                    data.serving_signature(self.feature_config), user_dir)
        artifacts.write_item_embeddings(item_dir, self.item_ids, self.item_vectors, MODEL_NAME,
                                        normalized=True, model_version=model_version,
                                        extra={"recent_clicks": self.config.recent_clicks})
        return {"user_tower": user_dir, "item_embeddings": item_dir}


def sessions_to_ids(sessions: Sequence[Sequence], vocabulary: Sequence[str]) -> list[np.ndarray]:
    """Item-id sessions (bytes or str) -> model-id arrays (0 = OOV)."""
    index = data.item_vocab_index(vocabulary)
    return [np.array([index.get(x.decode() if isinstance(x, bytes) else x, 0) for x in s],
                     np.int64) for s in sessions]


def fit(feature_config: fc.FeatureConfig, sessions: Sequence[Sequence], vocabulary: Sequence[str],
        catalogue: data.Catalogue | None, config: Item2VecConfig) -> Item2VecResult:
    """Trains SGNS on click sessions.

    Args:
      feature_config: dataset config (history feature, roles, min_session_len).
      sessions: chronological item-id lists.
      vocabulary: item-id vocabulary (model id = line + 1).
      catalogue: item catalogue (click counts for the unigram table, the
        attribute of attribute-aware negatives, the exported candidates); None
        uses session counts and exports every trained vocabulary item.
      config: hyperparameters.
    Raises:
      ValueError: no training pair, or an attribute role the config lacks.
    """
    start = time.time()
    rng = np.random.default_rng(config.seed)
    tf.random.set_seed(config.seed)
    vocabulary = list(vocabulary)
    num_rows = len(vocabulary) + 1
    id_sessions = sessions_to_ids(sessions, vocabulary)
    min_len = config.min_session_len or feature_config.min_session_len
    centers, contexts, stats = skipgram_pairs(id_sessions, config.window, min_len)
    if len(centers) == 0:
        raise ValueError(f"no skip-gram pairs from {len(sessions)} sessions "
                         f"(min_session_len {min_len})")
    clicks = np.bincount(np.concatenate(id_sessions), minlength=num_rows).astype(np.float64)
    attribute = None
    if catalogue is not None:
        rows = catalogue.rows_of(vocabulary)
        cat_clicks = np.where(rows >= 0, catalogue.clicks[np.maximum(rows, 0)], 0)
        clicks = np.maximum(clicks, np.concatenate([[0], cat_clicks]))
        if config.attribute_role:
            spec = feature_config.role(config.attribute_role)
            if spec is None:
                raise ValueError(f"attribute_role {config.attribute_role!r} is not set in the "
                                 f"feature config roles {dict(feature_config.roles)}")
            codes = catalogue.attribute_codes(spec.name)
            attribute = np.concatenate([[0], np.where(rows >= 0, codes[np.maximum(rows, 0)], 0)])
    clicks[0] = 0.0
    sampler = NegativeSampler(clicks, config.unigram_alpha, attribute,
                              config.attribute_negative_ratio)
    model = SkipGram(num_rows, config.dim)
    optimizer = keras.optimizers.Adam(config.learning_rate)

    @tf.function
    def step(c, x, n):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model((c, x, n)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    losses = []
    for _ in range(config.epochs):
        order = rng.permutation(len(centers))
        if config.max_pairs_per_epoch:
            order = order[:config.max_pairs_per_epoch]
        negatives = np.zeros((len(centers), config.negatives_per_positive), np.int64)
        negatives[order] = sampler.sample(rng, contexts[order], config.negatives_per_positive)
        total, batches = 0.0, 0
        for i in range(0, len(order), config.batch_size):
            b = order[i:i + config.batch_size]
            total += float(step(tf.constant(centers[b]), tf.constant(contexts[b]),
                                tf.constant(negatives[b])))
            batches += 1
        losses.append(total / max(batches, 1))
    vectors = normalize_rows(model.center.embeddings.numpy())
    vectors[0] = 0.0
    trained = np.zeros(num_rows, bool)
    trained[np.unique(centers)] = True
    if catalogue is not None:
        in_catalogue = np.zeros(num_rows, bool)
        known = catalogue.rows_of(vocabulary) >= 0
        in_catalogue[1:] = known
        trained &= in_catalogue
    # Items that never were a center keep their random init: never candidates.
    vectors[~trained] = 0.0
    export_rows = np.flatnonzero(trained)
    tower = MeanHistoryTower(vocabulary, vectors, feature_config.history_feature.name,
                             config.recent_clicks)
    stats.update({"epoch_losses": losses, "num_items": int(len(export_rows)),
                  "untrained_vocab_items": int(num_rows - 1 - len(export_rows)),
                  "train_seconds": time.time() - start})
    return Item2VecResult(feature_config, config, vocabulary,
                          [vocabulary[r - 1] for r in export_rows], vectors[export_rows], tower,
                          stats)


def eval_next_item(result: Item2VecResult, sessions: Sequence[Sequence], k: int = 50
                   ) -> dict[str, float]:
    """Eval-session HR@k: the mean of all but the last item must retrieve the last."""
    row = {item: i for i, item in enumerate(result.item_ids)}
    queries, targets, exclude = [], [], []
    for s in sessions:
        s = [x.decode() if isinstance(x, bytes) else x for x in s]
        hist = [row[x] for x in s[:-1] if x in row][-result.config.recent_clicks:]
        if len(s) < 2 or not hist or s[-1] not in row:
            continue
        queries.append(result.item_vectors[hist].mean(axis=0))
        targets.append(np.array([row[s[-1]]]))
        exclude.append(np.array(hist))
    if not queries:
        return {"eval_sessions": 0}
    kk = max(k, 1)
    top = metrics.top_k(np.stack(queries), result.item_vectors, kk, exclude)
    out = metrics.evaluate(top, targets, len(result.item_ids), ks=(kk,))
    return {"eval_sessions": out["num_users"], f"eval_next_item_hr@{kk}": out[f"hr@{kk}"]}


def train(config_path: str, examples_dir: str, vocab_dir: str, items_pattern: str | None,
          hparams: Mapping[str, Any] | None, export_dir: str) -> dict[str, Any]:
    """Trains Item2vec on OUT/item2vec examples and exports both artifacts.

    Args:
      config_path: feature config YAML.
      examples_dir: directory with Split-train (and optionally Split-eval) of
        item2vec examples (one click session each).
      vocab_dir: OUT/vocab.
      items_pattern: item catalogue TFRecords glob (None: no catalogue).
      hparams: Item2VecConfig fields.
      export_dir: receives user_tower/ and item_embeddings/.
    Returns:
      training statistics and eval-session next-item HR@50.
    """
    feature_config = fc.load(config_path)
    config = Item2VecConfig.from_hparams(hparams)
    vocabulary = inputs.read_vocab(vocab_dir, feature_config.item_id_feature.name)
    if not vocabulary:
        raise FileNotFoundError(f"no item vocabulary in {vocab_dir!r}")
    catalogue = data.load_catalogue(items_pattern, feature_config) if items_pattern else None
    train_arrays = data.load_examples(inputs.split_pattern(examples_dir, fc.TRAIN),
                                      feature_config, fc.ITEM2VEC)
    result = fit(feature_config, train_arrays[fc.SESSION_ITEMS_KEY], vocabulary, catalogue, config)
    out = dict(result.stats)
    if tf.io.gfile.glob(inputs.split_pattern(examples_dir, fc.EVAL)):
        eval_arrays = data.load_examples(inputs.split_pattern(examples_dir, fc.EVAL),
                                         feature_config, fc.ITEM2VEC)
        out.update(eval_next_item(result, eval_arrays[fc.SESSION_ITEMS_KEY]))
    out.update(result.export(export_dir))
    return out
