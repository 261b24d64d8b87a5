"""FAISS benchmark: Flat vs IVF vs HNSW on clustered vectors (and exported item vectors).

    python -m bench.faiss_bench [--num_vectors 1000000] [--dim 128] [--quick]

Indexes are built and tuned by models.faiss_index.builder (the code the
pipeline uses): nprobe / efSearch rise until recall@50 against exact search
reaches 0.95 on held-out queries. For each index: build seconds, serialized
size, recall@50, single-query latency p50/p99 (1 thread), batch QPS on 1 and
2 threads, and single-query speed-up over exact search. Writes
bench/results/faiss.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from models.faiss_index import builder

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "faiss.json")


def clustered(n: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around `clusters` centers, plus 1000 held-out queries (same law)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    spread = rng.uniform(0.3, 0.8, clusters).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), np.float32)
        for start in range(0, m, 100_000):
            c = rng.integers(0, clusters, min(100_000, m - start))
            x = centers[c] + spread[c, None] * rng.standard_normal((len(c), dim)).astype(np.float32)
            out[start:start + len(c)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n), draw(1000)


def single_query_latencies(index: faiss.Index, queries: np.ndarray, k: int) -> np.ndarray:
    faiss.omp_set_num_threads(1)
    out = np.empty(len(queries))
    for i in range(len(queries)):
        start = time.perf_counter()
        index.search(queries[i:i + 1], k)
        out[i] = time.perf_counter() - start
    return out


def batch_qps(index: faiss.Index, queries: np.ndarray, k: int, threads: int) -> float:
    faiss.omp_set_num_threads(threads)
    index.search(queries[:10], k)  # warm-up
    start = time.perf_counter()
    index.search(queries, k)
    return len(queries) / (time.perf_counter() - start)


def measure(name: str, index: faiss.Index, index_type: str, build_seconds: float,
            queries: np.ndarray, exact_rows: np.ndarray, k: int, target: float,
            latency_queries: int) -> dict[str, Any]:
    faiss.omp_set_num_threads(2)
    params, recall, reached, trace = builder.tune(index, index_type, queries, exact_rows, k,
                                                  target)
    lat = single_query_latencies(index, queries[:latency_queries], k)
    return {"index": name, "build_seconds": round(build_seconds, 2),
            "bytes": int(len(faiss.serialize_index(index))), "params": params,
            f"recall@{k}": recall, "target_reached": reached, "tuning_trace": trace,
            "single_query_ms_p50": float(np.percentile(lat, 50) * 1e3),
            "single_query_ms_p99": float(np.percentile(lat, 99) * 1e3),
            "single_query_qps": float(1.0 / lat.mean()),
            "latency_queries": int(len(lat)),
            "batch_qps_1_thread": batch_qps(index, queries, k, 1),
            "batch_qps_2_threads": batch_qps(index, queries, k, 2)}


def bench_vectors(vectors: np.ndarray, queries: np.ndarray, k: int, target: float,
                  types: Sequence[str], options: builder.BuildOptions) -> dict[str, Any]:
    faiss.omp_set_num_threads(2)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, exact_rows = exact.search(queries, k)
    out: dict[str, Any] = {"num_vectors": int(len(vectors)), "dim": int(vectors.shape[1]),
                           "num_queries": int(len(queries)), "k": k, "indexes": {}}
    for index_type in types:
        faiss.omp_set_num_threads(2)
        start = time.time()
        index, build_params = builder.create_index(vectors, index_type, options)
        seconds = time.time() - start
        # Exact search at 1M costs tens of ms per query: fewer timed queries.
        n_lat = 200 if index_type == builder.FLAT and len(vectors) > 200_000 else 1000
        res = measure(index_type, index, index_type, seconds, queries, exact_rows, k, target,
                      n_lat)
        res["build_params"] = build_params
        out["indexes"][index_type] = res
        print(f"  {index_type:5s} build {seconds:7.1f}s recall@{k} {res[f'recall@{k}']:.4f} "
              f"p50 {res['single_query_ms_p50']:.3f}ms p99 {res['single_query_ms_p99']:.3f}ms "
              f"qps1 {res['batch_qps_1_thread']:.0f} qps2 {res['batch_qps_2_threads']:.0f}",
              flush=True)
        del index
    flat_qps = out["indexes"].get(builder.FLAT, {}).get("single_query_qps")
    for res in out["indexes"].values():
        if flat_qps:
            res["single_query_speedup_vs_exact"] = res["single_query_qps"] / flat_qps
    return out


def targets(result: dict[str, Any], k: int, target: float) -> dict[str, Any]:
    checks = {}
    for name, res in result["indexes"].items():
        if name == builder.FLAT:
            continue
        checks[f"{name}_recall@{k}_ge_{target}"] = {"value": res[f"recall@{k}"],
                                                    "pass": res[f"recall@{k}"] >= target}
        checks[f"{name}_p99_le_2ms"] = {"value": res["single_query_ms_p99"],
                                        "pass": res["single_query_ms_p99"] <= 2.0}
        speed = res.get("single_query_speedup_vs_exact")
        checks[f"{name}_ge_20x_exact_single_query"] = {"value": speed,
                                                       "pass": bool(speed and speed >= 20)}
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--target_recall", type=float, default=0.95)
    parser.add_argument("--hnsw_m", type=int, default=16)
    parser.add_argument("--ef_construction", type=int, default=40)
    parser.add_argument("--exports", default=os.path.join("work", "bench_recall", "exports"),
                        help="item-embedding artifacts from bench.recall_bench, if present")
    parser.add_argument("--types", default="flat,ivf,hnsw",
                        help="index types to bench (flat is the exact baseline)")
    parser.add_argument("--quick", action="store_true", help="200k vectors")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    n = 200_000 if args.quick else args.num_vectors
    options = builder.BuildOptions(hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                                   k=args.k, target_recall=args.target_recall)
    types = tuple(t for t in args.types.split(",") if t)
    unknown = set(types) - {builder.FLAT, builder.IVF, builder.HNSW}
    if unknown:
        parser.error(f"unknown index types {sorted(unknown)}")
    start = time.time()
    vectors, queries = clustered(n, args.dim, args.clusters, seed=0)
    print(f"clustered: {n} x {args.dim}", flush=True)
    results: dict[str, Any] = {"clustered": bench_vectors(vectors, queries, args.k,
                                                          args.target_recall, types, options)}
    results["clustered"]["targets"] = targets(results["clustered"], args.k, args.target_recall)
    del vectors
    from models.recall.artifacts import read_item_embeddings
    for path in sorted(glob.glob(os.path.join(args.exports, "*", "*", "item_embeddings"))):
        art = read_item_embeddings(path)
        label = os.path.relpath(os.path.dirname(path), args.exports)
        print(f"exported {label}: {art.embeddings.shape}", flush=True)
        q = builder.sample_queries(art.embeddings, 1000, 0)
        results[f"exported/{label}"] = bench_vectors(
            art.embeddings, q, min(args.k, len(art.ids)), args.target_recall, types,
            builder.BuildOptions(hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                                 k=min(args.k, len(art.ids))))
    results["_run"] = {"quick": args.quick, "total_seconds": time.time() - start,
                       "cpu_count": os.cpu_count(), "faiss": faiss.__version__,
                       "command": "python -m bench.faiss_bench " + " ".join(argv or sys.argv[1:])}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    print(json.dumps(results["clustered"]["targets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
