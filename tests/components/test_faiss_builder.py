"""FaissIndexBuilder: publishes a queryable index, or nothing with a reason."""

import os

import numpy as np
from tfx.types import standard_artifacts

from components.artifacts import ItemEmbeddings, PushedIndex
from components.faiss_builder import FaissIndexBuilder
from models.recall.artifacts import write_item_embeddings
from tests.components.helpers import executor_fn, new_artifact


def _embeddings(root: str) -> ItemEmbeddings:
    artifact = new_artifact(ItemEmbeddings, root, "embeddings")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_item_embeddings(artifact.uri, [f"item{i}" for i in range(40)], vectors, "test",
                          normalized=True)
    return artifact, vectors


def _blessing(root: str, blessed: int):
    artifact = new_artifact(standard_artifacts.InfraBlessing, root, f"infra{blessed}")
    artifact.set_int_custom_property("blessed", blessed)
    artifact.set_string_custom_property("reason", "served" if blessed else "cannot load")
    return artifact


def test_publishes_a_queryable_index(tmp_path):
    from models.faiss_index.index import load_index
    embeddings, vectors = _embeddings(str(tmp_path))
    pushed = new_artifact(PushedIndex, str(tmp_path), "pushed")
    base = str(tmp_path / "serving" / "indexes")
    executor_fn(FaissIndexBuilder)(item_embeddings=embeddings, pushed_index=pushed,
                                   index_base_dir=base, index_name="two_tower",
                                   infra_blessing=_blessing(str(tmp_path), 1))
    assert pushed.get_int_custom_property("pushed") == 1
    destination = pushed.get_string_custom_property("pushed_destination")
    assert os.path.dirname(destination) == os.path.join(base, "two_tower")
    assert pushed.get_float_custom_property("self_hit_rate") == 1.0
    ids, scores = load_index(destination).search(vectors[7], 3)
    # Exact answer by brute force: item7 itself, then its nearest neighbours.
    expected = [f"item{i}" for i in np.argsort(-(vectors @ vectors[7]))[:3]]
    assert ids[0] == expected
    assert os.path.exists(os.path.join(pushed.uri, "smoke_query.json"))


def test_not_blessed_tower_publishes_nothing(tmp_path):
    embeddings, _ = _embeddings(str(tmp_path))
    pushed = new_artifact(PushedIndex, str(tmp_path), "pushed")
    base = str(tmp_path / "serving" / "indexes")
    executor_fn(FaissIndexBuilder)(item_embeddings=embeddings, pushed_index=pushed,
                                   index_base_dir=base, index_name="two_tower",
                                   infra_blessing=_blessing(str(tmp_path), 0))
    assert pushed.get_int_custom_property("pushed") == 0
    assert "cannot load" in pushed.get_string_custom_property("reason")
    assert not os.path.exists(base)
