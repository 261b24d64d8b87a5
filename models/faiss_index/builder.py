"""Builds a versioned FAISS index from an item-embedding artifact.

The index type follows the catalogue size: exact Flat IP below
`flat_threshold` items; above it IVF-Flat (default) or HNSW, whose search
breadth (nprobe / efSearch) is raised step by step on a held-out query sample
until recall@K against exact search reaches the target. The measured recall
and the chosen parameters go into metadata.json, so the recommender knows
what it loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from models.faiss_index.index import EMBEDDINGS_FILE, IDS_FILE, INDEX_FILE, METADATA_FILE

FLAT, IVF, HNSW, AUTO = "flat", "ivf", "hnsw", "auto"
INDEX_TYPES = (AUTO, FLAT, IVF, HNSW)
NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
EF_SEARCHES = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """Index choice and tuning.

    Attributes:
      index_type: auto (flat below flat_threshold, else large_index_type),
        flat, ivf or hnsw.
      flat_threshold: catalogues smaller than this get exact Flat IP.
      large_index_type: ivf or hnsw, for auto above the threshold.
      target_recall: recall@k vs exact the tuning must reach.
      k: the K of recall@K.
      num_queries: held-out queries for tuning.
      nlist: IVF lists (None: 4 * sqrt(N), at least 1).
      hnsw_m, ef_construction: HNSW graph parameters.
      seed: query sampling / k-means seed.
    """

    index_type: str = AUTO
    flat_threshold: int = 50_000
    large_index_type: str = IVF
    target_recall: float = 0.95
    k: int = 50
    num_queries: int = 1000
    nlist: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 80
    seed: int = 0

    def __post_init__(self):
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index_type {self.index_type!r} not in {INDEX_TYPES}")
        if self.large_index_type not in (IVF, HNSW):
            raise ValueError(f"large_index_type {self.large_index_type!r} not in {(IVF, HNSW)}")
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target_recall {self.target_recall} not in (0, 1]")
        if self.k < 1 or self.num_queries < 1:
            raise ValueError("k and num_queries must be >= 1")


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean |approx_q ∩ exact_q| / |exact_q| over queries; rows of item rows (-1 ignored)."""
    total = 0.0
    for a, e in zip(approx, exact):
        e = e[e >= 0]
        total += len(np.intersect1d(a[a >= 0], e)) / max(len(e), 1)
    return total / max(len(exact), 1)


def sample_queries(vectors: np.ndarray, num: int, seed: int) -> np.ndarray:
    """Held-out-style queries: catalogue vectors mixed with noise of their own scale.

    User vectors are not item vectors; a random item plus Gaussian noise of
    the catalogue's per-dimension spread is a query that is near, but not on,
    the catalogue (an exact copy would be found by any index).
    """
    rng = np.random.default_rng(seed)
    picks = vectors[rng.integers(0, len(vectors), num)]
    noise = rng.standard_normal(picks.shape).astype(np.float32) * vectors.std(axis=0)
    return (0.7 * picks + 0.3 * noise).astype(np.float32)


def choose_type(options: BuildOptions, n: int) -> str:
    """The index type built for n vectors: options.index_type, or auto's pick by size."""
    if options.index_type != AUTO:
        return options.index_type
    return FLAT if n < options.flat_threshold else options.large_index_type


def create_index(vectors: np.ndarray, index_type: str, options: BuildOptions
                 ) -> tuple[faiss.Index, dict[str, Any]]:
    """An index of type flat/ivf/hnsw holding `vectors` (inner product)."""
    n, dim = vectors.shape
    if index_type == FLAT:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index, {}
    if index_type == IVF:
        nlist = options.nlist or max(1, int(4 * math.sqrt(n)))
        nlist = min(nlist, n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(options.seed)
        train = vectors[rng.choice(n, min(n, 64 * nlist), replace=False)]
        index.cp.seed = options.seed
        index.train(train)
        index.add(vectors)
        return index, {"nlist": nlist}
    if index_type == HNSW:
        index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = options.ef_construction
        index.add(vectors)
        return index, {"M": options.hnsw_m, "efConstruction": options.ef_construction}
    raise ValueError(f"unknown index type {index_type!r}")


def tune(index: faiss.Index, index_type: str, queries: np.ndarray, exact_rows: np.ndarray,
         k: int, target: float) -> tuple[dict[str, int], float, bool, list[dict]]:
    """Smallest nprobe / efSearch reaching `target` recall@k (else the largest tried).

    Returns:
      (search params, measured recall, target reached, trace of tried values).
    """
    if index_type == FLAT:
        _, rows = index.search(queries, k)
        return {}, recall_at_k(rows, exact_rows), True, []
    if index_type == IVF:
        ivf = faiss.extract_index_ivf(index)
        key, values = "nprobe", [v for v in NPROBES if v <= ivf.nlist] or [ivf.nlist]
        if values[-1] != ivf.nlist and ivf.nlist <= NPROBES[-1]:
            values.append(ivf.nlist)
    else:
        key, values = "efSearch", [v for v in EF_SEARCHES if v >= k] or [k]
    trace, recall = [], 0.0
    for value in values:
        if key == "nprobe":
            faiss.extract_index_ivf(index).nprobe = value
        else:
            index.hnsw.efSearch = value
        _, rows = index.search(queries, k)
        recall = recall_at_k(rows, exact_rows)
        trace.append({key: value, "recall": recall})
        if recall >= target:
            return {key: value}, recall, True, trace
    return {key: values[-1]}, recall, False, trace


def build_from_vectors(ids: Sequence[str], vectors: np.ndarray, base_dir: str, name: str,
                       source_metadata: dict[str, Any] | None = None,
                       options: BuildOptions = BuildOptions(), version: int | None = None,
                       queries: np.ndarray | None = None) -> str:
    """Builds, tunes and writes `<base_dir>/<name>/<version>/`; returns that directory.

    The version directory appears atomically (written under a temporary name,
    then renamed), so latest_version_dir never sees a half-written build.

    Raises:
      ValueError: empty catalogue, ids/vectors mismatch, non-finite vectors,
        or an existing version.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0 or len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for vectors of shape {vectors.shape}")
    if not np.all(np.isfinite(vectors)):
        raise ValueError("item vectors contain NaN or inf")
    start = time.time()
    index_type = choose_type(options, len(vectors))
    index, build_params = create_index(vectors, index_type, options)
    build_seconds = time.time() - start
    k = min(options.k, len(vectors))
    if queries is None:
        queries = sample_queries(vectors, options.num_queries, options.seed)
        if (source_metadata or {}).get("prior_column"):
            queries[:, -1] = 1.0  # a user vector's prior weight (MeanHistoryTower)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, exact_rows = exact.search(queries, k)
    params, recall, reached, trace = tune(index, index_type, queries, exact_rows, k,
                                          options.target_recall)
    source = dict(source_metadata or {})
    version = int(version if version is not None else time.time())
    model_dir = os.path.join(base_dir, name)
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise ValueError(f"index version {final} already exists")
    os.makedirs(model_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir)
    try:
        faiss.write_index(index, os.path.join(tmp, INDEX_FILE))
        with open(os.path.join(tmp, IDS_FILE), "w", encoding="utf-8") as f:
            f.write("".join(f"{i}\n" for i in ids))
        np.save(os.path.join(tmp, EMBEDDINGS_FILE), vectors)
        metadata = {
            "name": name, "version": version, "model": source.get("model"),
            "model_version": source.get("model_version"), "dim": int(vectors.shape[1]),
            "metric": "ip", "normalized": source.get("normalized"),
            "index_type": index_type, "num_items": len(ids),
            "build_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(build_seconds, 3), "build_params": build_params,
            "params": params, f"recall@{k}": recall, "recall_k": k,
            "target_recall": options.target_recall, "target_reached": reached,
            "tuning_queries": int(len(queries)), "tuning_trace": trace}
        if "recent_clicks" in source:
            # Item2vec's user-vector rule (mean of the last N known clicks):
            # the recommender computes that vector from the index, so the
            # index must carry N or serving averages a different history.
            metadata["recent_clicks"] = int(source["recent_clicks"])
        if source.get("prior_column"):
            # Item2vec's popularity prior is the vectors' last column; the
            # user vector built from the index needs 1 there, not a mean.
            metadata["prior_column"] = True
            metadata["prior_weight"] = source.get("prior_weight")
        with open(os.path.join(tmp, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2, sort_keys=True)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def build_index(embeddings_dir: str, base_dir: str, name: str,
                options: BuildOptions = BuildOptions(), version: int | None = None,
                queries: np.ndarray | None = None) -> str:
    """build_from_vectors over an item-embedding artifact directory."""
    from models.recall.artifacts import read_item_embeddings
    artifact = read_item_embeddings(embeddings_dir)
    if artifact.metadata.get("metric", "ip") != "ip":
        raise ValueError(f"{embeddings_dir}: metric {artifact.metadata.get('metric')!r}, want 'ip'")
    return build_from_vectors(artifact.ids, artifact.embeddings, base_dir, name,
                              artifact.metadata, options, version, queries)
