"""FAISS benchmark: Flat vs IVF vs HNSW, tuned on one query set, scored on another.

    python -m bench.faiss_bench [--num_vectors 1000000] [--dim 128] [--quick]
        [--datasets synthetic,movielens] [--hnsw_configs 32:80,32:128,32:200]

Indexes are built by models.faiss_index.builder (the code the pipeline uses)
and tuned by its `tune`: nprobe / efSearch rise until recall@50 against exact
search reaches 0.95 on the TUNING queries. The figures are then measured on
a disjoint set of EVAL queries with the tuned parameters, so a parameter is
never scored on the queries it was chosen on (`tune_then_report`).

Two parts:
  * `clustered`: N synthetic unit vectors around 1000 centers (default 1M x
    128); tuning and eval queries are two independent draws of the same law.
    HNSW is swept over (M, efConstruction) (`--hnsw_configs`) until a graph
    whose build takes at most `--hnsw_build_budget_s` reaches the target on
    the tuning queries; every tried graph is in `hnsw_sweep`. The index type
    the builder picks at N vectors (`builder.choose_type` with its default
    options) is checked against the targets (recall@50 >= 0.95, single-query
    p99 <= 2 ms, >= 20x exact single-query throughput) in `builder_choice`.
  * `exported` -> `<dataset>/<model>`: the item vectors of the recall bench's
    seed-0 exports (<work_dir>/exports/<dataset>/<model>, written by
    `make bench-recall`). Tuning queries are the user vectors (the export's
    user tower on the raw features) of the VALIDATION queries: the
    time-split queries of the latest 10% of the training period, carved as
    the trainers carve it (models.recall.training.carve_validation,
    models.validation.DEFAULT_VALIDATION_FRACTION, every recall config's
    default; Item2vec carves its sessions at the same share of the time span,
    its tuning queries are these retrieval-example ones too). Eval queries
    are the user vectors of the time-split eval queries (every Split-eval
    click). Both sets' sizes are recorded, and how many eval vectors equal a
    tuning vector bit for bit (distinct queries with the same history give
    Item2vec the same mean vector). Zero user vectors (Item2vec's users
    without history) are dropped and counted: they tie every item. A
    dataset without exports is recorded as skipped with the reason; nothing
    else stands in for it.

Per index: build seconds, serialized size, tuned parameters with the tuning
trace, recall@50 on the eval queries, single-query latency p50/p99 with one
search thread (faiss.omp_set_num_threads(1)), batch QPS on 1 and 2 threads,
and the speed-up over exact search. The load average is recorded before and
after each latency measurement and for the whole run: on a busy machine the
latencies are not the idle-machine figures the targets are about. Writes
bench/results/faiss.json with the commit and date (bench.stats.provenance).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from bench import stats
from models.faiss_index import builder
from models.faiss_index.index import set_search_params

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "faiss.json")
# Targets of issue #13 for the index the builder picks at 1M vectors.
TARGET_P99_MS, TARGET_SPEEDUP = 2.0, 20.0
DEFAULT_HNSW_CONFIGS = "32:80,32:128,32:200"
HNSW_BUILD_BUDGET_S = 600.0
# Queries per set from the exports: enough for recall to +-0.01, bounded user-tower time.
MAX_EXPORT_QUERIES = 5000


# ---- query sets --------------------------------------------------------------

def clustered(n: int, dim: int, clusters: int, seed: int, num_queries: int = 1000
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n unit vectors around `clusters` centers, plus tuning and eval queries.

    Returns:
      (vectors [n, dim], tuning queries [num_queries, dim], eval queries
      [num_queries, dim]): the two query sets are independent draws of the
      vectors' law (continuous, so no query is in both).
    """
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

    return draw(n), draw(num_queries), draw(num_queries)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row ids of each query's exact top-k by inner product: [Q, k]."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, rows = exact.search(queries, k)
    return rows


def shared_rows(tuning: np.ndarray, evals: np.ndarray) -> int:
    """Eval query vectors that are bit-for-bit also a tuning query vector."""
    seen = {row.tobytes() for row in np.ascontiguousarray(tuning)}
    return sum(row.tobytes() in seen for row in np.ascontiguousarray(evals))


# ---- tuning and measuring ----------------------------------------------------

def tune_then_report(index: faiss.Index, index_type: str, tuning: np.ndarray,
                     tuning_exact: np.ndarray, evals: np.ndarray, eval_exact: np.ndarray,
                     k: int, target: float) -> dict[str, Any]:
    """nprobe / efSearch chosen on the tuning queries, recall@k measured on the eval queries.

    Args:
      index: a built index (left with the tuned parameters set).
      index_type: builder.FLAT / IVF / HNSW.
      tuning, evals: query vectors [Q, dim] of the two sets.
      tuning_exact, eval_exact: their exact top-k rows [Q, k].
      k, target: recall@k and the recall the tuning must reach.
    Returns:
      {"params", "tuning": {"num_queries", "recall@k", "target_reached",
      "trace"}, "recall@k" (eval), "eval_queries", "target_reached" (eval
      recall >= target)}.
    """
    params, tuning_recall, reached, trace = builder.tune(index, index_type, tuning, tuning_exact,
                                                         k, target)
    set_search_params(index, {"params": params})
    _, rows = index.search(evals, k)
    recall = builder.recall_at_k(rows, eval_exact)
    return {"params": params,
            "tuning": {"num_queries": int(len(tuning)), f"recall@{k}": tuning_recall,
                       "target_reached": reached, "trace": trace},
            f"recall@{k}": recall, "eval_queries": int(len(evals)),
            "target_reached": recall >= target}


def single_query_latencies(index: faiss.Index, queries: np.ndarray, k: int) -> np.ndarray:
    """Seconds per one-vector search, one search thread."""
    faiss.omp_set_num_threads(1)
    out = np.empty(len(queries))
    for i in range(len(queries)):
        start = time.perf_counter()
        index.search(queries[i:i + 1], k)
        out[i] = time.perf_counter() - start
    return out


def batch_qps(index: faiss.Index, queries: np.ndarray, k: int, threads: int) -> float:
    """Queries per second of one batched search over all queries on `threads` threads."""
    faiss.omp_set_num_threads(threads)
    index.search(queries[:10], k)  # warm-up
    start = time.perf_counter()
    index.search(queries, k)
    return len(queries) / (time.perf_counter() - start)


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def timings(index: faiss.Index, queries: np.ndarray, k: int, latency_queries: int
            ) -> dict[str, Any]:
    """Single-query p50/p99 (1 thread) and batch QPS (1 and 2 threads) on `queries`."""
    before = load_average()
    lat = single_query_latencies(index, queries[:latency_queries], k)
    out = {"single_query_ms_p50": float(np.percentile(lat, 50) * 1e3),
           "single_query_ms_p99": float(np.percentile(lat, 99) * 1e3),
           "single_query_qps": float(1.0 / lat.mean()), "latency_queries": int(len(lat)),
           "latency_threads": 1,
           "batch_qps_1_thread": batch_qps(index, queries, k, 1),
           "batch_qps_2_threads": batch_qps(index, queries, k, 2),
           "load_average_before": before, "load_average_after": load_average()}
    faiss.omp_set_num_threads(2)
    return out


def measure(index: faiss.Index, index_type: str, build_seconds: float,
            build_params: dict[str, Any], queries: dict[str, np.ndarray],
            exact: dict[str, np.ndarray], k: int, target: float, latency_queries: int
            ) -> dict[str, Any]:
    """tune_then_report plus size and timings (on the eval queries) of one built index."""
    faiss.omp_set_num_threads(2)
    res = {"index": index_type, "build_seconds": round(build_seconds, 2),
           "build_params": build_params, "bytes": int(len(faiss.serialize_index(index)))}
    res.update(tune_then_report(index, index_type, queries["tuning"], exact["tuning"],
                                queries["eval"], exact["eval"], k, target))
    res.update(timings(index, queries["eval"], k, latency_queries))
    return res


def predicted_build_seconds(done: dict[str, Any], m: int, ef_construction: int) -> float:
    """A graph's build time scaled from a built one: linear in M and efConstruction."""
    return (done["build_seconds"] * m / done["build_params"]["M"]
            * ef_construction / done["build_params"]["efConstruction"])


def hnsw_sweep(vectors: np.ndarray, queries: dict[str, np.ndarray],
               exact: dict[str, np.ndarray], k: int, target: float,
               configs: Sequence[tuple[int, int]], options: builder.BuildOptions,
               budget_s: float, latency_queries: int
               ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """HNSW graphs in `configs` order until one within budget reaches target on tuning.

    The graph kept is the first whose build took <= budget_s and whose tuning
    recall reached the target, else the one of highest tuning recall (chosen
    on the tuning queries; its eval figures are reported as they are). A
    config whose predicted build time (scaled from the last built one)
    exceeds the budget is skipped and says so.

    Returns:
      (the kept graph's measure(...) result or None, the trace: one entry per
      config with M, efConstruction, build_seconds, within_budget, params,
      tuning and eval recall, or `skipped`).
    """
    trace: list[dict[str, Any]] = []
    kept: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    for m, ef_construction in configs:
        entry: dict[str, Any] = {"M": m, "efConstruction": ef_construction}
        if last is not None:
            predicted = predicted_build_seconds(last, m, ef_construction)
            if predicted > budget_s:
                entry["skipped"] = (f"predicted build {predicted:.0f}s > budget {budget_s:.0f}s "
                                    f"(scaled from M {last['build_params']['M']}, "
                                    f"efConstruction {last['build_params']['efConstruction']})")
                trace.append(entry)
                continue
        graph_options = builder.BuildOptions(index_type=builder.HNSW, hnsw_m=m,
                                             ef_construction=ef_construction, k=options.k,
                                             target_recall=target, seed=options.seed)
        faiss.omp_set_num_threads(2)
        start = time.time()
        index, build_params = builder.create_index(vectors, builder.HNSW, graph_options)
        seconds = time.time() - start
        res = measure(index, builder.HNSW, seconds, build_params, queries, exact, k, target,
                      latency_queries)
        del index
        # Predict from the unrounded time: res rounds to 0.01 s, and a graph
        # built in under 5 ms would predict 0 s for every later one.
        last = {**res, "build_seconds": seconds}
        within = seconds <= budget_s
        entry.update({"build_seconds": res["build_seconds"], "within_budget": within,
                      "params": res["params"],
                      f"tuning_recall@{k}": res["tuning"][f"recall@{k}"],
                      f"eval_recall@{k}": res[f"recall@{k}"],
                      "single_query_ms_p99": res["single_query_ms_p99"]})
        trace.append(entry)
        print(f"  hnsw M {m} efC {ef_construction}: build {seconds:.0f}s {res['params']} "
              f"tuning recall {res['tuning'][f'recall@{k}']:.4f} "
              f"eval recall {res[f'recall@{k}']:.4f}", flush=True)
        if within and res["tuning"]["target_reached"]:
            return res, trace
        if kept is None or res["tuning"][f"recall@{k}"] > kept["tuning"][f"recall@{k}"]:
            kept = res
    return kept, trace


def bench_vectors(vectors: np.ndarray, tuning: np.ndarray, evals: np.ndarray, k: int,
                  target: float, types: Sequence[str], options: builder.BuildOptions,
                  hnsw_configs: Sequence[tuple[int, int]] | None = None,
                  budget_s: float = HNSW_BUILD_BUDGET_S) -> dict[str, Any]:
    """Every index type on one catalogue, tuned on `tuning`, measured on `evals`.

    Args:
      vectors: catalogue [N, dim].
      tuning, evals: the two query sets [Q, dim].
      k, target: recall@k and the tuning target.
      types: index types (flat is the exact baseline of the speed-ups).
      options: builder options (IVF nlist, HNSW M / efConstruction, seed).
      hnsw_configs: (M, efConstruction) sweep for HNSW (None: options' only).
      budget_s: HNSW build-time bound of the sweep.
    Returns:
      {"num_vectors", "dim", "k", "tuning_queries", "eval_queries",
       "eval_queries_also_in_tuning", "indexes": {type: measure(...)},
       "hnsw_sweep" (when HNSW ran)}.
    """
    faiss.omp_set_num_threads(2)
    queries = {"tuning": tuning, "eval": evals}
    exact = {name: exact_top_k(vectors, q, k) for name, q in queries.items()}
    out: dict[str, Any] = {"num_vectors": int(len(vectors)), "dim": int(vectors.shape[1]),
                           "k": k, "tuning_queries": int(len(tuning)),
                           "eval_queries": int(len(evals)),
                           "eval_queries_also_in_tuning": shared_rows(tuning, evals),
                           "indexes": {}}
    for index_type in types:
        # Exact search at 1M costs tens of ms per query: fewer timed queries.
        n_lat = 200 if index_type == builder.FLAT and len(vectors) > 200_000 else 1000
        if index_type == builder.HNSW:
            configs = hnsw_configs or [(options.hnsw_m, options.ef_construction)]
            res, out["hnsw_sweep"] = hnsw_sweep(vectors, queries, exact, k, target, configs,
                                                options, budget_s, n_lat)
            if res is None:
                continue
        else:
            faiss.omp_set_num_threads(2)
            start = time.time()
            index, build_params = builder.create_index(vectors, index_type, options)
            res = measure(index, index_type, time.time() - start, build_params, queries, exact,
                          k, target, n_lat)
            del index
        out["indexes"][index_type] = res
        print(f"  {index_type:5s} build {res['build_seconds']:7.1f}s {res['params']} "
              f"recall@{k} tuning {res['tuning'][f'recall@{k}']:.4f} "
              f"eval {res[f'recall@{k}']:.4f} p50 {res['single_query_ms_p50']:.3f}ms "
              f"p99 {res['single_query_ms_p99']:.3f}ms qps1 {res['batch_qps_1_thread']:.0f} "
              f"qps2 {res['batch_qps_2_threads']:.0f}", flush=True)
    flat = out["indexes"].get(builder.FLAT)
    for res in out["indexes"].values():
        if flat:
            res["single_query_speedup_vs_exact"] = res["single_query_qps"] / flat[
                "single_query_qps"]
            res["batch_1_thread_speedup_vs_exact"] = res["batch_qps_1_thread"] / flat[
                "batch_qps_1_thread"]
    return out


# ---- targets -----------------------------------------------------------------

def check(value: float | None, ok: bool) -> dict[str, Any]:
    return {"value": value, "met": bool(ok)}


def index_targets(res: dict[str, Any], k: int, target: float) -> dict[str, Any]:
    """One index's eval recall@k, single-query p99 and speed-up against the targets."""
    speed = res.get("single_query_speedup_vs_exact")
    return {f"recall@{k}_ge_{target}": check(res[f"recall@{k}"], res[f"recall@{k}"] >= target),
            f"p99_le_{TARGET_P99_MS:g}ms": check(res["single_query_ms_p99"],
                                                 res["single_query_ms_p99"] <= TARGET_P99_MS),
            f"ge_{TARGET_SPEEDUP:g}x_exact_single_query": check(
                speed, speed is not None and speed >= TARGET_SPEEDUP)}


def targets(result: dict[str, Any], k: int, target: float) -> dict[str, Any]:
    """index_targets of every approximate index, keyed `<type>_<check>`."""
    return {f"{name}_{key}": value
            for name, res in result["indexes"].items() if name != builder.FLAT
            for key, value in index_targets(res, k, target).items()}


def builder_choice(result: dict[str, Any], k: int, target: float) -> dict[str, Any]:
    """The index type the builder picks at this catalogue size, against the targets.

    The builder's default options (BuildOptions()) decide; its IVF nlist is
    the one the bench builds. An HNSW pick is reported with the kept graph of
    the sweep, which may differ from the builder's default M / efConstruction
    (both are in the entry).
    """
    defaults = builder.BuildOptions()
    chosen = builder.choose_type(defaults, result["num_vectors"])
    out: dict[str, Any] = {"index_type": chosen, "num_vectors": result["num_vectors"],
                           "builder_options": {"flat_threshold": defaults.flat_threshold,
                                               "large_index_type": defaults.large_index_type,
                                               "hnsw_m": defaults.hnsw_m,
                                               "ef_construction": defaults.ef_construction}}
    res = result["indexes"].get(chosen)
    if res is None:
        out["skipped"] = f"{chosen} was not benched (--types)"
        return out
    out.update({"params": res["params"], "build_params": res["build_params"],
                f"recall@{k}": res[f"recall@{k}"],
                "single_query_ms_p99": res["single_query_ms_p99"],
                "single_query_speedup_vs_exact": res.get("single_query_speedup_vs_exact"),
                "targets": index_targets(res, k, target)})
    out["all_met"] = all(c["met"] for c in out["targets"].values())
    return out


# ---- exported recall models --------------------------------------------------

def export_dirs(root: str) -> list[str]:
    """Model directories under root holding both a user tower and item embeddings."""
    from models.recall import artifacts
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, name) for name in sorted(os.listdir(root))
            if os.path.isdir(os.path.join(root, name, artifacts.USER_TOWER_DIR))
            and os.path.isdir(os.path.join(root, name, artifacts.ITEM_EMBEDDINGS_DIR))]


def sample_rows(n: int, cap: int, seed: int) -> np.ndarray:
    """All of 0..n-1, or `cap` of them drawn without replacement (sorted)."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def nonzero_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows with a non-zero vector: a zero user vector ties every item, so no top-k exists."""
    return np.flatnonzero(np.linalg.norm(vectors, axis=1) > 0)


def dataset_query_sets(spec: str, work_dir: str, num_events: int):
    """Validation and eval time-split queries of a dataset the recall bench ran on.

    Validation: the time-split queries of the training examples at or after
    the trainers' validation cut-off (carve_validation with
    DEFAULT_VALIDATION_FRACTION); eval: every Split-eval click.

    Returns:
      (feature config, validation Queries, eval Queries, examples dir).
    """
    from bench.recall_bench import sessionized
    from feature_contract import feature_config as fc
    from models import inputs
    from models.recall import data, protocols, training
    from models.validation import DEFAULT_VALIDATION_FRACTION
    config_path, out = sessionized(spec, work_dir, num_events)
    config = fc.load(config_path)
    retrieval = os.path.join(out, fc.RETRIEVAL)
    train = data.load_examples(inputs.split_pattern(retrieval, fc.TRAIN), config, fc.RETRIEVAL)
    evals = data.load_examples(inputs.split_pattern(retrieval, fc.EVAL), config, fc.RETRIEVAL)
    carve = training.carve_validation(train, DEFAULT_VALIDATION_FRACTION, "faiss_bench")
    return (config, protocols.time_split(carve.validation, config),
            protocols.time_split(evals, config), out)


def user_vector_sets(model: Any, validation: Any, evals: Any, max_queries: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Tuning (validation) and eval user vectors of an export, with their counts.

    Args:
      model: models.recall.evaluate.ExportedModel.
      validation, evals: protocols.Queries of the two sets.
      max_queries: queries drawn per set (all when fewer).
      seed: the draw's seed.
    Returns:
      (tuning vectors, eval vectors, {"tuning": counts, "eval": counts}) with
      counts {"source", "total_queries", "sampled", "zero_vectors_dropped",
      "used"}.
    """
    from models.recall import data
    vectors, counts = {}, {}
    for offset, (name, queries, source) in enumerate((
            ("tuning", validation, "validation: time-split queries of the training examples at "
                                   "or after the trainers' validation cut-off"),
            ("eval", evals, "eval: time-split queries, every Split-eval click"))):
        rows = sample_rows(len(queries), max_queries, seed + offset)
        user = model.user_vectors(data.take(queries.features, rows)).astype(np.float32)
        keep = nonzero_rows(user)
        vectors[name] = np.ascontiguousarray(user[keep])
        counts[name] = {"source": source, "total_queries": len(queries), "sampled": len(rows),
                        "zero_vectors_dropped": int(len(rows) - len(keep)), "used": len(keep)}
    return vectors["tuning"], vectors["eval"], counts


def modified_at(path: str) -> str:
    """A file's modification time, UTC ISO 8601 to the second."""
    return datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc
                                           ).isoformat(timespec="seconds")


def bench_export(model_dir: str, config: Any, validation: Any, evals: Any,
                 args: argparse.Namespace, types: Sequence[str]) -> dict[str, Any]:
    """bench_vectors on one export: its item vectors, its validation / eval user vectors."""
    from models.recall import evaluate
    model = evaluate.load_exported(model_dir, config)
    tuning, eval_vectors, counts = user_vector_sets(model, validation, evals,
                                                    args.max_export_queries, seed=0)
    items = model.items
    print(f"exported {model_dir}: {items.embeddings.shape}, tuning {len(tuning)} / eval "
          f"{len(eval_vectors)} user vectors", flush=True)
    export = {"dir": model_dir, "model": items.metadata.get("model"),
              "model_version": items.metadata.get("model_version"),
              "exported_at": modified_at(os.path.join(model_dir, "item_embeddings"))}
    if len(tuning) == 0 or len(eval_vectors) == 0:
        msg = f"{model_dir}: no non-zero user vector in a query set ({counts})"
        print(msg, flush=True)
        return {"skipped": msg, "export": export, "query_sets": counts}
    k = min(args.k, len(items.ids))
    options = builder.BuildOptions(hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                                   k=k, target_recall=args.target_recall)
    out = bench_vectors(items.embeddings, tuning, eval_vectors, k, args.target_recall, types,
                        options)
    # What the pipeline would build for this catalogue (exact Flat below the threshold).
    out.update({"export": export, "query_sets": counts,
                "builder_choice": builder_choice(out, k, args.target_recall)})
    return out


def bench_exports(args: argparse.Namespace, types: Sequence[str]) -> dict[str, Any]:
    """bench_export for every export of every dataset; a dataset without one is skipped.

    Returns:
      "<dataset>/<model>" -> bench_export(...) + {"examples", "examples_written_at",
      "export_older_than_examples"}, or "<dataset>"
      -> {"skipped": reason} when <exports>/<dataset> holds no export.
    """
    from bench import parallel
    out: dict[str, Any] = {}
    for spec in args.dataset_list:
        key = parallel.dataset_key(spec)
        root = os.path.join(args.exports, key)
        dirs = export_dirs(root)
        if not dirs:
            msg = (f"no recall exports under {root}: run `make bench-recall` first (it exports "
                   f"seed 0's learned models there); {key}'s exported part is skipped")
            print(msg, flush=True)
            out[key] = {"skipped": msg}
            continue
        config, validation, evals, examples = dataset_query_sets(spec, args.work_dir,
                                                                 args.num_events)
        written = modified_at(os.path.join(examples, "summary.json"))
        for model_dir in dirs:
            entry = {**bench_export(model_dir, config, validation, evals, args, types),
                     "examples": examples, "examples_written_at": written}
            # The queries come from the examples the current sessionize code
            # writes; an export older than them was trained on an earlier
            # examples directory (its user tower still reads the raw features).
            entry["export_older_than_examples"] = entry["export"]["exported_at"] < written
            out[f"{key}/{os.path.basename(model_dir)}"] = entry
    return out


# ---- main --------------------------------------------------------------------

def parse_hnsw_configs(spec: str) -> list[tuple[int, int]]:
    """"32:80,32:128" -> [(32, 80), (32, 128)].

    Raises:
      ValueError: an entry is not M:efConstruction with positive integers.
    """
    out = []
    for entry in (e for e in spec.split(",") if e):
        try:
            m, ef = (int(x) for x in entry.split(":"))
        except ValueError:
            raise ValueError(f"--hnsw_configs entry {entry!r} is not M:efConstruction") from None
        if m < 2 or ef < 1:
            raise ValueError(f"--hnsw_configs entry {entry!r}: want M >= 2, efConstruction >= 1")
        out.append((m, ef))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from beam_jobs import datasets
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_vectors", type=int, default=None,
                        help="clustered catalogue size (default 1M; --quick: 200k)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--num_queries", type=int, default=1000,
                        help="clustered queries per set (tuning and eval)")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--target_recall", type=float, default=0.95)
    parser.add_argument("--hnsw_m", type=int, default=builder.BuildOptions.hnsw_m,
                        help="HNSW M of the exported catalogues (the builder's default)")
    parser.add_argument("--ef_construction", type=int,
                        default=builder.BuildOptions.ef_construction,
                        help="HNSW efConstruction of the exported catalogues")
    parser.add_argument("--hnsw_configs", default=None,
                        help=f"clustered HNSW sweep, M:efConstruction,... (default "
                             f"{DEFAULT_HNSW_CONFIGS}; --quick: the first)")
    parser.add_argument("--hnsw_build_budget_s", type=float, default=HNSW_BUILD_BUDGET_S)
    parser.add_argument("--types", default="flat,ivf,hnsw",
                        help="index types to bench (flat is the exact baseline)")
    parser.add_argument("--datasets", default=",".join(datasets.DATASETS),
                        help="datasets whose recall exports are benched ('' for none)")
    parser.add_argument("--work_dir", default=os.path.join("work", "bench_recall"),
                        help="the recall bench's --work_dir (examples and exports)")
    parser.add_argument("--num_events", type=int, default=datasets.DEFAULT_NUM_EVENTS,
                        help="the recall bench's --num_events (finds its examples)")
    parser.add_argument("--exports", default=None,
                        help="recall exports root (default <work_dir>/exports; --quick: "
                             "<work_dir>/exports-quick, where a quick recall run writes)")
    parser.add_argument("--max_export_queries", type=int, default=MAX_EXPORT_QUERIES)
    parser.add_argument("--quick", action="store_true", help="a smoke run, not a result")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    args.types = tuple(t for t in args.types.split(",") if t)
    unknown = set(args.types) - {builder.FLAT, builder.IVF, builder.HNSW}
    if unknown:
        parser.error(f"unknown index types {sorted(unknown)}")
    try:
        configs = parse_hnsw_configs(args.hnsw_configs or DEFAULT_HNSW_CONFIGS)
    except ValueError as err:
        parser.error(str(err))
    args.hnsw_config_list = configs[:1] if args.quick and not args.hnsw_configs else configs
    args.num_vectors = args.num_vectors or (200_000 if args.quick else 1_000_000)
    args.dataset_list = [d for d in args.datasets.split(",") if d]
    args.exports = args.exports or os.path.join(
        args.work_dir, "exports-quick" if args.quick else "exports")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    run_info = stats.provenance(["python", "-m", "bench.faiss_bench", *argv])
    start = time.time()
    # The exports first: minutes, where the 1M part takes tens of minutes.
    results: dict[str, Any] = {"exported": bench_exports(args, args.types)}
    vectors, tuning, evals = clustered(args.num_vectors, args.dim, args.clusters, seed=0,
                                       num_queries=args.num_queries)
    print(f"clustered: {args.num_vectors} x {args.dim}", flush=True)
    options = builder.BuildOptions(k=args.k, target_recall=args.target_recall)
    part = bench_vectors(vectors, tuning, evals, args.k, args.target_recall, args.types,
                         options, args.hnsw_config_list, args.hnsw_build_budget_s)
    del vectors
    part["targets"] = targets(part, args.k, args.target_recall)
    part["builder_choice"] = builder_choice(part, args.k, args.target_recall)
    results["clustered"] = part
    results["_run"] = {**run_info, "quick": args.quick, "total_seconds": time.time() - start,
                       "faiss": faiss.__version__, "load_average_end": load_average(),
                       "note": "latencies are idle-machine figures only when the load "
                               "averages recorded around them are below 1"}
    stats.write_report(args.out, results)
    print(f"builder choice: {results['clustered']['builder_choice']}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
