"""FaissIndexBuilder: item embeddings -> a published FAISS index version.

Builds the index with models.faiss_index (tuned to a recall target against
exact search) and publishes it atomically at
<index_base_dir>/<index_name>/<version>/, the layout the recommender polls.
The build is gated like a Pusher: when the user tower's InfraBlessing says
not blessed, nothing is published (the index would serve a tower that cannot
be served) and the PushedIndex records why.

A smoke query runs on the published index: every item's own vector must
return the item itself first (inner product of normalized vectors), so an
index that answers nonsense is caught at build time.
"""

import json
import os

import numpy as np
import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components import adapters
from components.artifacts import ItemEmbeddings, PushedIndex

PUSHED_KEY, DESTINATION_KEY, REASON_KEY = "pushed", "pushed_destination", "reason"
SMOKE_FILE = "smoke_query.json"


def smoke_query(version_dir: str, embeddings_dir: str, num_queries: int = 20, k: int = 10
                ) -> dict:
    """Queries the index with the first items' own vectors; returns the hit rate of
    "the item itself is in the top k" and the first query's answer."""
    index = adapters.load_faiss_index(version_dir)
    with tf.io.gfile.GFile(os.path.join(embeddings_dir, "ids.txt")) as f:
        ids = [line.rstrip("\n") for line in f if line.strip()][:num_queries]
    vectors = np.array(index.vectors_of(ids), np.float32)
    if index.metadata.get("prior_column"):
        # Item2vec's popularity prior is the last column; a query of 0 there
        # asks for similarity alone, which is what "finds itself" means.
        vectors[:, -1] = 0.0
    found, _ = index.search(vectors, min(k, len(index)))
    self_hits = float(np.mean([item in top for item, top in zip(ids, found)])) if ids else 0.0
    return {"queries": len(ids), "k": k, "self_hit_rate": self_hits,
            "example": {"item": ids[0] if ids else None, "top": found[0] if found else []}}


@component
def FaissIndexBuilder(  # noqa: N802
        item_embeddings: InputArtifact[ItemEmbeddings],
        pushed_index: OutputArtifact[PushedIndex],
        index_base_dir: Parameter[str],
        index_name: Parameter[str],
        infra_blessing: InputArtifact[standard_artifacts.InfraBlessing] = None,
        min_self_hit_rate: Parameter[float] = 0.9):
    """Builds and publishes the FAISS index of one recall model's item vectors.

    Args:
      item_embeddings: ids.txt, embeddings.npy, metadata.json.
      pushed_index: pushed (0/1), pushed_destination, reason; the index
        metadata and smoke query result are copied into its URI.
      index_base_dir: <serving_dir>/indexes.
      index_name: sub-directory name (the recall model's name).
      infra_blessing: the user tower's serving check; not blessed -> no push.
      min_self_hit_rate: smoke-query floor (items finding themselves in the top
        10), applied when the vectors are normalized.
    """
    if infra_blessing is not None and infra_blessing.get_int_custom_property("blessed") != 1:
        reason = ("user tower not blessed by the serving validator: "
                  + infra_blessing.get_string_custom_property("reason"))
        pushed_index.set_int_custom_property(PUSHED_KEY, 0)
        pushed_index.set_string_custom_property(REASON_KEY, reason)
        return
    version_dir = adapters.build_faiss_index(item_embeddings.uri, index_base_dir, index_name)
    smoke = smoke_query(version_dir, item_embeddings.uri)
    with tf.io.gfile.GFile(os.path.join(pushed_index.uri, SMOKE_FILE), "w") as f:
        json.dump(smoke, f, indent=1)
    tf.io.gfile.copy(os.path.join(version_dir, "metadata.json"),
                     os.path.join(pushed_index.uri, "metadata.json"), overwrite=True)
    with tf.io.gfile.GFile(os.path.join(version_dir, "metadata.json")) as f:
        normalized = bool(json.load(f).get("normalized"))
    # Only normalized vectors are guaranteed to be their own nearest neighbour
    # under inner product; for the others the rate is recorded, not gated.
    if normalized and smoke["self_hit_rate"] < min_self_hit_rate:
        # Withdraw the version: the recommender must never pick it up.
        tf.io.gfile.rmtree(version_dir)
        reason = (f"smoke query failed: items found themselves in the top {smoke['k']} "
                  f"{smoke['self_hit_rate']:.2f} < {min_self_hit_rate}")
        pushed_index.set_int_custom_property(PUSHED_KEY, 0)
        pushed_index.set_string_custom_property(REASON_KEY, reason)
        return
    pushed_index.set_int_custom_property(PUSHED_KEY, 1)
    pushed_index.set_string_custom_property(DESTINATION_KEY, version_dir)
    pushed_index.set_string_custom_property(REASON_KEY, "published")
    pushed_index.set_float_custom_property("self_hit_rate", smoke["self_hit_rate"])
