"""Export formats shared by every recall model.

* Item-embedding artifact directory: ids.txt (one item id a line),
  embeddings.npy (float32 [N, dim]) and metadata.json
  {model, model_version, dim, metric: "ip", normalized, ...}. The FAISS builder
  reads it; the recommender reads the copy the builder puts next to the index.
* User-tower SavedModel: signature `serving_default` on the raw user + context
  features (models.recall.data.serving_signature) -> {"user_embedding": [B, dim]}.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

IDS_FILE, EMBEDDINGS_FILE, METADATA_FILE = "ids.txt", "embeddings.npy", "metadata.json"
USER_TOWER_DIR, ITEM_EMBEDDINGS_DIR = "user_tower", "item_embeddings"
USER_EMBEDDING_KEY = "user_embedding"


@dataclasses.dataclass
class ItemEmbeddings:
    ids: list[str]
    embeddings: np.ndarray  # float32 [N, dim]
    metadata: dict[str, Any]


def write_item_embeddings(directory: str, ids: Sequence[str], embeddings: np.ndarray,
                          model: str, normalized: bool, model_version: int | None = None,
                          extra: Mapping[str, Any] | None = None) -> str:
    """Writes an item-embedding artifact; returns the directory.

    Raises:
      ValueError: ids and rows disagree, ids repeat or contain newlines, or
        embeddings are not finite.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} ids for embeddings of shape {embeddings.shape}")
    if len(set(ids)) != len(ids):
        raise ValueError("item ids repeat")
    if any("\n" in i or not i for i in ids):
        raise ValueError("item ids must be non-empty and contain no newline")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("embeddings contain NaN or inf")
    tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(os.path.join(directory, IDS_FILE), "w") as f:
        f.write("".join(f"{i}\n" for i in ids))
    with tf.io.gfile.GFile(os.path.join(directory, EMBEDDINGS_FILE), "wb") as f:
        np.save(f, embeddings)
    metadata = {"model": model, "model_version": int(model_version or time.time()),
                "dim": int(embeddings.shape[1]), "metric": "ip", "normalized": bool(normalized),
                "num_items": len(ids), **dict(extra or {})}
    with tf.io.gfile.GFile(os.path.join(directory, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
    return directory


def read_item_embeddings(directory: str) -> ItemEmbeddings:
    """Reads an artifact written by write_item_embeddings (checks consistency)."""
    with tf.io.gfile.GFile(os.path.join(directory, IDS_FILE)) as f:
        ids = [line.rstrip("\n") for line in f if line.rstrip("\n")]
    with tf.io.gfile.GFile(os.path.join(directory, EMBEDDINGS_FILE), "rb") as f:
        embeddings = np.load(f).astype(np.float32)
    with tf.io.gfile.GFile(os.path.join(directory, METADATA_FILE)) as f:
        metadata = json.load(f)
    if embeddings.shape != (len(ids), metadata["dim"]):
        raise ValueError(f"{directory}: {len(ids)} ids, dim {metadata['dim']}, "
                         f"embeddings {embeddings.shape}")
    return ItemEmbeddings(ids, embeddings, metadata)


class _UserTowerModule(tf.Module):
    def __init__(self, tower: tf.Module, fn: Callable[[dict], tf.Tensor]):
        super().__init__()
        self.tower = tower  # tracked: its variables are saved
        self._fn = fn

    @tf.function
    def serve(self, features):
        return {USER_EMBEDDING_KEY: tf.cast(self._fn(features), tf.float32)}


def export_user_tower(tower: tf.Module, fn: Callable[[dict], tf.Tensor],
                      signature: Mapping[str, tf.TensorSpec], export_dir: str) -> str:
    """Saves `fn(raw features) -> [B, dim]` as a SavedModel with serving_default.

    Args:
      tower: object owning the variables `fn` reads (a Keras model/layer).
      fn: raw feature dict -> user vectors [B, dim]; must ignore unused keys.
      signature: name -> TensorSpec of the raw request.
      export_dir: SavedModel directory.
    """
    module = _UserTowerModule(tower, fn)
    concrete = module.serve.get_concrete_function(dict(signature))
    tf.saved_model.save(module, export_dir, signatures={"serving_default": concrete})
    return export_dir


def load_user_tower(export_dir: str) -> Callable[..., dict]:
    """The serving_default signature of an exported user tower."""
    return tf.saved_model.load(export_dir).signatures["serving_default"]
