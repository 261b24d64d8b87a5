"""Small real SavedModels and indexes with the pushed-model contracts.

Tests, the serving benchmark and a first `make serve` before any training use
these: they have exactly the signatures the trained models export, driven by
the feature config, but hashed-embedding weights instead of trained ones.

  ranking[_multitask]   serving_default(examples: string [B]) -> click [B] (+ follow [B])
                        score_candidates(raw features; user/context batch 1,
                                         item batch N) -> click [N] (+ follow [N])
  user_tower_*          serving_default(raw user + context features) -> user_embedding [B, dim]
  index dir             index.faiss, ids.txt, embeddings.npy, metadata.json
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from models import inputs  # noqa: E402

_BUCKETS = 4096


class _HashedEncoder(tf.Module):
    """Sum over features of (masked mean) hashed embeddings: dict -> [B, dim]."""

    def __init__(self, specs: Sequence[fc.FeatureSpec], dim: int, seed: int):
        super().__init__()
        self.specs = list(specs)
        rng = np.random.default_rng(seed)
        self.table = tf.Variable(rng.normal(0, 0.5, (_BUCKETS, dim)).astype(np.float32))
        self.numeric = tf.Variable(rng.normal(0, 0.1, (max(1, len(self.specs)), dim)).astype(np.float32))

    def __call__(self, features: dict, batch: tf.Tensor) -> tf.Tensor:
        total = tf.zeros([batch, self.table.shape[1]])
        for i, spec in enumerate(self.specs):
            if spec.name not in features:
                continue
            value = features[spec.name]
            if spec.type == fc.NUMERIC:
                total += tf.math.log1p(tf.abs(tf.reshape(value, [-1, 1]))) * self.numeric[i]
                continue
            keys = tf.strings.join([spec.name + "=", value])
            emb = tf.gather(self.table, tf.strings.to_hash_bucket_fast(keys, _BUCKETS))
            if spec.type == fc.CATEGORICAL:
                total += emb
            else:  # [B, L, dim], "" is padding
                mask = tf.cast(tf.not_equal(value, ""), tf.float32)[..., None]
                total += tf.reduce_sum(emb * mask, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0)
        return total


class _Ranker(tf.Module):
    def __init__(self, config: fc.FeatureConfig, multitask: bool, seed: int, scale: float):
        super().__init__()
        self.config = config
        self.multitask = multitask
        self.scale = tf.constant(scale)
        user_ctx = list(config.field_features(fc.USER)) + list(config.field_features(fc.CONTEXT))
        self.user = _HashedEncoder(user_ctx, 8, seed)
        self.item = _HashedEncoder(config.field_features(fc.ITEM), 8, seed + 1)

    def _score(self, u: tf.Tensor, v: tf.Tensor) -> dict:
        logit = self.scale * tf.reduce_sum(u * v, -1) / 8.0
        out = {"click": tf.sigmoid(logit)}
        if self.multitask:
            out["follow"] = tf.sigmoid(logit - 1.0)
        return out

    @tf.function
    def serve_examples(self, examples):
        features = inputs.parse_examples(examples, self.config, fc.RANKING)
        batch = tf.shape(examples)[0]
        return self._score(self.user(features, batch), self.item(features, batch))

    @tf.function
    def score_candidates(self, features):
        item_id = features[self.config.item_id_feature.name]
        n = tf.shape(item_id)[0]
        u = self.user(features, 1)  # user and context features have batch 1
        return self._score(tf.broadcast_to(u, [n, u.shape[1]]), self.item(features, n))


class _UserTower(tf.Module):
    def __init__(self, specs: Sequence[fc.FeatureSpec], dim: int, seed: int):
        super().__init__()
        self.encoder = _HashedEncoder(specs, dim, seed)
        self.specs = list(specs)

    @tf.function
    def serve(self, features):
        first = features[self.specs[0].name]
        return {"user_embedding": tf.math.l2_normalize(
            self.encoder(features, tf.shape(first)[0]), -1)}


def user_tower_specs(config: fc.FeatureConfig) -> list[fc.FeatureSpec]:
    """Raw inputs of a user tower: user field (incl. id and history) + context."""
    return list(config.field_features(fc.USER)) + list(config.field_features(fc.CONTEXT))


def export_ranking(export_dir: str, config: fc.FeatureConfig, multitask: bool = False,
                   seed: int = 0, scale: float = 1.0) -> str:
    """Writes a ranking SavedModel with serving_default and score_candidates."""
    module = _Ranker(config, multitask, seed, scale)
    examples = module.serve_examples.get_concrete_function(tf.TensorSpec([None], tf.string, name="examples"))
    raw = module.score_candidates.get_concrete_function(inputs.raw_signature(config.features))
    tf.saved_model.save(module, export_dir,
                        signatures={"serving_default": examples, "score_candidates": raw})
    return export_dir


def export_user_tower(export_dir: str, config: fc.FeatureConfig, dim: int = 16,
                      seed: int = 0) -> str:
    """Writes a user-tower SavedModel: raw user + context features -> user_embedding."""
    specs = user_tower_specs(config)
    module = _UserTower(specs, dim, seed)
    concrete = module.serve.get_concrete_function(inputs.raw_signature(specs))
    tf.saved_model.save(module, export_dir, signatures={"serving_default": concrete})
    return export_dir


def write_index(index_dir: str, ids: Sequence[str], embeddings: np.ndarray, model: str) -> str:
    """A Flat inner-product FAISS index dir in the contract layout."""
    import faiss

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    os.makedirs(index_dir, exist_ok=True)
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    faiss.write_index(index, os.path.join(index_dir, "index.faiss"))
    with open(os.path.join(index_dir, "ids.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{i}\n" for i in ids))
    np.save(os.path.join(index_dir, "embeddings.npy"), embeddings)
    with open(os.path.join(index_dir, "metadata.json"), "w", encoding="utf-8") as f:
        json.dump({"model": model, "dim": int(embeddings.shape[1]), "metric": "ip",
                   "index_type": "Flat", "num_items": len(ids), "toy": True}, f)
    return index_dir


def _raw_value(spec: fc.FeatureSpec, rng: np.random.Generator, cardinality: int):
    if spec.type == fc.NUMERIC:
        lo, hi = spec.boundaries[0], spec.boundaries[-1]
        return float(rng.uniform(lo, hi))
    if spec.type == fc.TAGS:
        return [f"{spec.raw_column}_{v}" for v in rng.choice(cardinality, 2, replace=False)]
    return f"{spec.raw_column}_{rng.integers(cardinality)}"


def write_toy_world(out_dir: str, config: fc.FeatureConfig, num_users: int = 50,
                    num_items: int = 2000, seed: int = 0, version: int = 1,
                    tower_dim: int = 16) -> dict[str, str]:
    """Models, indexes, users/items tables and item frequencies for a demo or test.

    Layout (what serving.serve expects under work/serving):
      models/<name>/<version>/, indexes/<channel>/<version>/,
      users.jsonl.gz, items.jsonl.gz, item_frequencies.tsv.

    Returns:
      name -> path of everything written.
    """
    rng = np.random.default_rng(seed)
    cities = 4
    users, items = [], []
    for u in range(num_users):
        row = {config.users_key: f"u{u}"}
        for spec in config.by_source(fc.SOURCE_USERS):
            if spec.raw_column != config.users_key:
                row[spec.raw_column] = _raw_value(spec, rng, cities)
        users.append(row)
    created = config.item_created_column
    for i in range(num_items):
        row = {config.items_key: f"i{i}"}
        for spec in config.by_source(fc.SOURCE_ITEMS):
            if spec.raw_column != config.items_key:
                row[spec.raw_column] = _raw_value(spec, rng, cities)
        if created:
            row[created] = 1_700_000_000 - int(rng.integers(0, 30 * 86400))
        items.append(row)
    paths = {}
    for name, rows in (("users", users), ("items", items)):
        paths[name] = os.path.join(out_dir, f"{name}.jsonl.gz")
        os.makedirs(out_dir, exist_ok=True)
        with gzip.open(paths[name], "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    clicks = rng.zipf(1.5, num_items).clip(max=10_000)
    paths["item_frequencies"] = os.path.join(out_dir, "item_frequencies.tsv")
    with open(paths["item_frequencies"], "w", encoding="utf-8") as f:
        f.write("item_id\timpressions\tclicks\n")
        f.writelines(f"i{i}\t{c * 10}\t{c}\n" for i, c in enumerate(clicks))
    models = os.path.join(out_dir, "models")
    for name, multitask in (("ranking", False), ("ranking_multitask", True)):
        paths[name] = export_ranking(os.path.join(models, name, str(version)), config,
                                     multitask=multitask, seed=seed)
    ids = [f"i{i}" for i in range(num_items)]
    for tower, channel in (("user_tower_two_tower", "two_tower"),
                           ("user_tower_youtubenet", "youtubenet")):
        paths[tower] = export_user_tower(os.path.join(models, tower, str(version)), config,
                                         dim=tower_dim, seed=seed + len(channel))
        vectors = rng.normal(size=(num_items, tower_dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        paths[channel] = write_index(os.path.join(out_dir, "indexes", channel, str(version)),
                                     ids, vectors, channel)
    item2vec = rng.normal(size=(num_items, tower_dim)).astype(np.float32)
    item2vec /= np.linalg.norm(item2vec, axis=1, keepdims=True)
    paths["item2vec"] = write_index(os.path.join(out_dir, "indexes", "item2vec", str(version)),
                                    ids, item2vec, "item2vec")
    return paths
