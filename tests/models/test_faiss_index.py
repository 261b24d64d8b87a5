"""FAISS builder and loader: exact small catalogues, tuned recall in metadata, versions."""

import json
import os

import numpy as np
import pytest

from models.faiss_index import builder, latest_version_dir, load_index
from models.faiss_index.__main__ import main as cli_main
from models.recall import artifacts


def _clustered(n, dim, seed=0, clusters=20):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    noise = 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_returns_exact_top_k(tmp_path):
    vectors = _clustered(300, 16)
    ids = [f"item{k}" for k in range(300)]
    src = artifacts.write_item_embeddings(str(tmp_path / "emb"), ids, vectors, "two_tower", True, 7)
    out = builder.build_index(src, str(tmp_path / "idx"), "two_tower",
                              builder.BuildOptions(k=10, num_queries=50), version=1)
    index = load_index(out)
    assert index.metadata["index_type"] == "flat" and index.metadata["recall@10"] == 1.0
    assert index.metadata["model"] == "two_tower" and index.metadata["model_version"] == 7
    queries = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    got_ids, scores = index.search(queries, 10)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert got_ids == [[ids[j] for j in row] for row in exact]
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, exact, 1), rtol=1e-5)
    single_ids, single_scores = index.search(queries[0], 3)  # one vector [dim]
    assert single_ids == [got_ids[0][:3]] and single_scores.shape == (1, 3)
    np.testing.assert_array_equal(index.vectors_of(["item3"]), vectors[3:4])
    assert sorted(os.listdir(out)) == ["embeddings.npy", "ids.txt", "index.faiss", "metadata.json"]


@pytest.mark.parametrize("index_type,param", [("ivf", "nprobe"), ("hnsw", "efSearch")])
def test_approximate_index_tunes_to_target_and_records_measured_recall(tmp_path, index_type, param):
    vectors = _clustered(4000, 32, seed=2)
    ids = [str(k) for k in range(4000)]
    options = builder.BuildOptions(index_type=index_type, target_recall=0.9, k=20,
                                   num_queries=200)
    out = builder.build_from_vectors(ids, vectors, str(tmp_path), "m", {"model": "m"}, options,
                                     version=3)
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["index_type"] == index_type and meta["target_reached"]
    assert meta["recall@20"] >= 0.9 and param in meta["params"]
    assert meta["tuning_trace"][-1]["recall"] == meta["recall@20"]
    # Re-measure on the loaded index with the same queries: the recorded figure holds.
    index = load_index(out)
    queries = builder.sample_queries(vectors, 200, 0)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :20]
    got, _ = index.search(queries, 20)
    rows = np.array([[int(i) for i in r] for r in got])
    assert builder.recall_at_k(rows, exact) == pytest.approx(meta["recall@20"], abs=1e-9)


def test_auto_picks_by_catalogue_size(tmp_path):
    vectors = _clustered(500, 8)
    ids = [str(k) for k in range(500)]
    small = builder.build_from_vectors(ids, vectors, str(tmp_path), "a", None,
                                       builder.BuildOptions(flat_threshold=1000, k=5), version=1)
    large = builder.build_from_vectors(ids, vectors, str(tmp_path), "a", None,
                                       builder.BuildOptions(flat_threshold=100, k=5), version=2)
    assert load_index(small).metadata["index_type"] == "flat"
    assert load_index(large).metadata["index_type"] == "ivf"


def test_versions_latest_and_errors(tmp_path):
    vectors = _clustered(50, 4)
    ids = [str(k) for k in range(50)]
    base = str(tmp_path)
    assert latest_version_dir(os.path.join(base, "m")) is None
    for version in (5, 12):
        builder.build_from_vectors(ids, vectors, base, "m", None, builder.BuildOptions(k=5),
                                   version=version)
    os.makedirs(os.path.join(base, "m", "99"))  # unfinished build: no metadata.json
    assert latest_version_dir(os.path.join(base, "m")) == os.path.join(base, "m", "12")
    with pytest.raises(ValueError, match="already exists"):
        builder.build_from_vectors(ids, vectors, base, "m", None, version=12)
    with pytest.raises(ValueError, match="ids for vectors"):
        builder.build_from_vectors(ids[:3], vectors, base, "m", None, version=13)
    bad = vectors.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        builder.build_from_vectors(ids, bad, base, "m", None, version=14)
    index = load_index(os.path.join(base, "m", "12"))
    with pytest.raises(ValueError, match="width"):
        index.search(np.zeros((1, 3)), 5)
    with pytest.raises(FileNotFoundError):
        load_index(os.path.join(base, "m", "99"))
    got, scores = index.search(vectors[:1], 60)  # k > N: padded with -inf, ids shorter
    assert len(got[0]) == 50 and np.isneginf(scores[0, 50:]).all()


def test_cli_build_info_similar(tmp_path, capsys):
    vectors = _clustered(100, 8)
    ids = [f"i{k}" for k in range(100)]
    src = artifacts.write_item_embeddings(str(tmp_path / "emb"), ids, vectors, "item2vec", True)
    assert cli_main(["build", "--embeddings", src, "--base", str(tmp_path / "idx"),
                     "--name", "item2vec", "--version", "4", "--k", "10"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "idx" / "item2vec" / "4")
    assert cli_main(["info", "--base", str(tmp_path / "idx" / "item2vec")]) == 0
    assert json.loads(capsys.readouterr().out)["num_items"] == 100
    assert cli_main(["similar", "--base", str(tmp_path / "idx" / "item2vec"), "--item", "i0",
                     "--k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    exact = [ids[j] for j in np.argsort(-(vectors @ vectors[0]))[1:4]]
    assert [line.split("\t")[0] for line in lines][:3] == exact
    assert cli_main(["info", "--base", str(tmp_path / "nothing")]) == 1


def test_choose_type_follows_the_catalogue_size_unless_a_type_is_given():
    defaults = builder.BuildOptions()
    assert builder.choose_type(defaults, 49_999) == "flat"
    assert builder.choose_type(defaults, 50_000) == "ivf"
    assert builder.choose_type(defaults, 1_000_000) == "ivf"
    assert builder.choose_type(builder.BuildOptions(large_index_type="hnsw"), 1_000_000) == "hnsw"
    assert builder.choose_type(builder.BuildOptions(index_type="hnsw"), 10) == "hnsw"
