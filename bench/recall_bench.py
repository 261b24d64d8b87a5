"""Recall benchmark: learned models vs classic baselines on two protocols.

    python -m bench.recall_bench [--datasets synthetic,movielens] [--seeds 0,1,2] [--quick]

For each dataset the raw tables are prepared (beam_jobs.datasets) and
sessionized (beam_jobs.sessionize) once under --work_dir; then, for the time
split (retrieval eval examples) and leave-last-out on clicks, every model is
trained per seed and scored by models.recall.protocols (history items
excluded from the top-K). Models: Item2vec, YouTubeNet, two-tower (ours);
most-popular, ItemCF (co-occurrence cosine), implicit ALS and BPR, gensim
Word2Vec (peers). Results (mean over seeds, with std) go to
bench/results/recall.json together with the target checks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit asks for this

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from beam_jobs import datasets  # noqa: E402
from beam_jobs import feature_config as fc  # noqa: E402
from models import inputs  # noqa: E402
from models.item2vec import train as i2v_train  # noqa: E402
from models.item2vec.config import Item2VecConfig  # noqa: E402
from models.layers.feature_embedding import load_vocabularies  # noqa: E402
from models.recall import data, protocols  # noqa: E402
from models.two_tower import train as tt_train  # noqa: E402
from models.two_tower.config import TwoTowerConfig  # noqa: E402
from models.youtubenet import train as ytn_train  # noqa: E402
from models.youtubenet.config import YouTubeNetConfig  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "recall.json")
TIME_SPLIT, LEAVE_LAST_OUT = "time_split", "leave_last_out"
LEARNED = ("item2vec", "youtubenet", "two_tower")
PEERS = ("most_popular", "itemcf", "als", "bpr", "word2vec")
REPORTED = ("hr@50", "recall@50", "ndcg@50", "hr@500", "coverage@50", "avg_position",
            "new_user_hr@50", "train_seconds")

# Hyperparameters of the full run (--quick halves the epochs); DATASET_HPARAMS
# override them per dataset (the synthetic log has few, short sessions, so
# Item2vec needs smaller batches to get enough updates).
HPARAMS: dict[str, dict[str, Any]] = {
    "item2vec": {"dim": 64, "window": 64, "epochs": 8, "learning_rate": 0.02,
                 "batch_size": 8192, "max_pairs_per_epoch": 1_000_000, "recent_clicks": 10},
    "youtubenet": {"dim": 64, "embedding_dim": 32, "hidden_units": (128,), "epochs": 8,
                   "batch_size": 256, "num_sampled": 256, "learning_rate": 0.003},
    "two_tower": {"dim": 64, "embedding_dim": 32, "hidden_units": (128,), "epochs": 8,
                  "batch_size": 256, "extra_negatives": 64, "temperature": 0.1,
                  "learning_rate": 0.003},
}
DATASET_HPARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "synthetic": {"item2vec": {"batch_size": 1024, "epochs": 20, "learning_rate": 0.01}},
}


# ---- data ------------------------------------------------------------------

def sessionized(name: str, work_dir: str, num_events: int) -> tuple[str, str]:
    """(config path, sessionize output dir), producing them once."""
    raw = datasets.prepare(name, work_dir, num_events=num_events)
    suffix = f"-{num_events}" if name == datasets.SYNTHETIC else ""
    out = os.path.join(work_dir, "sessionized", name + suffix)
    if not os.path.exists(os.path.join(out, "summary.json")):
        subprocess.run([sys.executable, "-m", "beam_jobs.sessionize", "--config", raw.config_path,
                        "--events", raw.events, "--users", raw.users, "--items", raw.items,
                        "--output_dir", out], check=True)
    return raw.config_path, out


def sessions_from_examples(arrays: Mapping[str, np.ndarray], config: fc.FeatureConfig
                           ) -> list[list[str]]:
    """Click sessions rebuilt from retrieval examples (user, time; idle gap cut).

    Leave-last-out must not train Item2vec on the held-out click, so its
    sessions come from the training examples, not from OUT/item2vec.
    """
    users = np.array([u.decode() for u in arrays[fc.USER_KEY]], object)
    ts = arrays[fc.TIMESTAMP_KEY]
    items = [x.decode() for x in arrays[config.item_id_feature.name]]
    order = np.lexsort((ts, users))
    sessions, current, last_user, last_ts = [], [], None, None
    for i in order:
        if users[i] != last_user or ts[i] - last_ts > config.session_gap_seconds:
            if current:
                sessions.append(current)
            current = []
        current.append(items[i])
        last_user, last_ts = users[i], ts[i]
    if current:
        sessions.append(current)
    return sessions


def concat(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> data.Arrays:
    return {k: np.concatenate([a[k], b[k]]) for k in a if k in b}


# ---- peers -----------------------------------------------------------------

def interactions(arrays: Mapping[str, np.ndarray], config: fc.FeatureConfig,
                 item_index: Mapping[str, int]) -> tuple[sp.csr_matrix, dict[str, int]]:
    """Binary user x item click matrix of training examples."""
    users = [u.decode() for u in arrays[fc.USER_KEY]]
    user_index: dict[str, int] = {}
    rows = np.array([user_index.setdefault(u, len(user_index)) for u in users])
    cols = np.array([item_index.get(x.decode(), -1) for x in arrays[config.item_id_feature.name]])
    keep = cols >= 0
    m = sp.csr_matrix((np.ones(keep.sum(), np.float32), (rows[keep], cols[keep])),
                      shape=(len(user_index), len(item_index)))
    m.data[:] = 1.0
    return m, user_index


def history_matrix(queries: protocols.Queries, item_index: Mapping[str, int]) -> sp.csr_matrix:
    rows, cols = [], []
    for q, hist in enumerate(queries.history):
        for x in hist:
            if x in item_index:
                rows.append(q)
                cols.append(item_index[x])
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                      shape=(len(queries), len(item_index)))
    m.data[:] = 1.0
    return m


def popularity(train: sp.csr_matrix) -> np.ndarray:
    pop = np.asarray(train.sum(axis=0)).ravel().astype(np.float32)
    return pop / max(pop.max(), 1.0)


def score_most_popular(train, queries, hist, seed) -> Callable:
    pop = popularity(train)
    return lambda a, b: np.broadcast_to(pop, (b - a, len(pop)))


def score_itemcf(train, queries, hist, seed) -> Callable:
    counts = np.asarray(train.sum(axis=0)).ravel()
    co = (train.T @ train).tocsr().astype(np.float32)
    co.setdiag(0)
    co.eliminate_zeros()
    norm = 1.0 / np.sqrt(np.maximum(counts, 1.0)).astype(np.float32)
    sim = sp.diags(norm) @ co @ sp.diags(norm)
    # Popularity breaks ties and serves users without history.
    pop = 1e-6 * popularity(train)
    return lambda a, b: np.asarray((hist[a:b] @ sim).todense()) + pop


def _implicit_scores(model, train, queries, hist, user_index, recalculate: bool) -> Callable:
    items = np.asarray(model.item_factors)
    pop = 1e-6 * popularity(train)
    if recalculate:
        users = np.asarray(model.recalculate_user(np.arange(hist.shape[0]), hist))
        users = users.reshape(hist.shape[0], -1)
    else:
        ids = [user_index.get(u.decode(), -1) for u in queries.features[fc.USER_KEY]]
        factors = np.asarray(model.user_factors)
        users = np.stack([factors[i] if i >= 0 else np.zeros(factors.shape[1], np.float32)
                          for i in ids])
    has = np.asarray(hist.sum(axis=1)).ravel() > 0
    users[~has] = 0.0  # no history: popularity only
    return lambda a, b: users[a:b] @ items.T + pop


def score_als(train, queries, hist, seed, user_index=None) -> Callable:
    from implicit.als import AlternatingLeastSquares
    model = AlternatingLeastSquares(factors=64, regularization=0.05, iterations=15,
                                    alpha=10.0, random_state=seed, num_threads=1)
    model.fit(train, show_progress=False)
    # Fold each query's history in (ALS supports it): serves every query alike.
    return _implicit_scores(model, train, queries, hist, user_index, recalculate=True)


def score_bpr(train, queries, hist, seed, user_index=None) -> Callable:
    from implicit.bpr import BayesianPersonalizedRanking
    model = BayesianPersonalizedRanking(factors=64, learning_rate=0.05, regularization=0.01,
                                        iterations=100, random_state=seed, num_threads=1)
    model.fit(train, show_progress=False)
    return _implicit_scores(model, train, queries, hist, user_index, recalculate=False)


def word2vec_vectors(sessions: Sequence[Sequence[str]], seed: int, epochs: int
                     ) -> tuple[list[str], np.ndarray]:
    from gensim.models import Word2Vec
    model = Word2Vec(sentences=[list(s) for s in sessions if len(s) >= 2], vector_size=64,
                     window=64, min_count=1, sg=1, negative=5, epochs=epochs, seed=seed,
                     workers=1)
    ids = list(model.wv.index_to_key)
    vectors = model.wv.vectors / np.maximum(
        np.linalg.norm(model.wv.vectors, axis=1, keepdims=True), 1e-12)
    return ids, vectors.astype(np.float32)


def mean_history(queries: protocols.Queries, ids: Sequence[str], vectors: np.ndarray,
                 recent: int = 20) -> np.ndarray:
    row = {x: i for i, x in enumerate(ids)}
    out = np.zeros((len(queries), vectors.shape[1]), np.float32)
    for q, hist in enumerate(queries.history):
        rows = [row[x] for x in hist if x in row][-recent:]
        if rows:
            out[q] = vectors[rows].mean(axis=0)
    return out


# ---- one protocol ------------------------------------------------------------

def run_protocol(config: fc.FeatureConfig, train: data.Arrays, sessions: list[list[str]],
                 queries: protocols.Queries, catalogue: data.Catalogue,
                 vocabularies: Mapping[str, list[str]], seeds: Sequence[int], quick: bool,
                 models: Sequence[str], export_root: str | None,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    item_ids = list(catalogue.ids)
    item_index = {x: i for i, x in enumerate(item_ids)}
    train_matrix, user_index = interactions(train, config, item_index)
    hist = history_matrix(queries, item_index)
    n_cat = len(item_ids)
    per_model: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:
        for name in models:
            start = time.time()
            scale = 0.5 if quick else 1.0
            if name in LEARNED:
                hp = dict(HPARAMS[name], **(overrides or {}).get(name, {}), seed=seed)
                hp["epochs"] = max(1, int(round(hp["epochs"] * scale)))
                if name == "item2vec":
                    result = i2v_train.fit(config, sessions, vocabularies[
                        config.item_id_feature.name], catalogue, Item2VecConfig(**hp))
                elif name == "youtubenet":
                    result = ytn_train.fit(config, train, catalogue, vocabularies,
                                           YouTubeNetConfig(**hp))
                else:
                    result = tt_train.fit(config, train, catalogue, vocabularies,
                                          TwoTowerConfig(**hp))
                seconds = time.time() - start
                users = result.user_vectors(queries.features)
                out = protocols.evaluate_embeddings(queries, users, result.item_ids,
                                                    result.item_vectors, catalogue_size=n_cat)
                if export_root and seed == seeds[0]:
                    result.export(os.path.join(export_root, name))
            elif name == "word2vec":
                ids, vectors = word2vec_vectors(sessions, seed, 3 if quick else 10)
                seconds = time.time() - start
                out = protocols.evaluate_embeddings(queries, mean_history(queries, ids, vectors),
                                                    ids, vectors, catalogue_size=n_cat)
            else:
                scorer = {"most_popular": score_most_popular, "itemcf": score_itemcf,
                          "als": score_als, "bpr": score_bpr}[name]
                kwargs = {"user_index": user_index} if name in ("als", "bpr") else {}
                score_fn = scorer(train_matrix, queries, hist, seed, **kwargs)
                seconds = time.time() - start
                out = protocols.evaluate_scores(queries, score_fn, item_ids, catalogue_size=n_cat)
            out["train_seconds"] = seconds
            per_model.setdefault(name, []).append(out)
            print(f"  seed {seed} {name:13s} hr@50 {out.get('hr@50', float('nan')):.4f} "
                  f"recall@50 {out.get('recall@50', float('nan')):.4f} "
                  f"({seconds:.1f}s)", flush=True)
    summary = {}
    for name, runs in per_model.items():
        keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
        mean = {k: float(np.nanmean([r[k] for r in runs])) if not all(
            np.isnan(r[k]) for r in runs) else None for k in keys}
        summary[name] = {**{k: mean.get(k) for k in REPORTED},
                         "std": {k: float(np.nanstd([r[k] for r in runs])) for k in
                                 ("hr@50", "recall@50", "ndcg@50")},
                         "details": mean, "seeds": len(runs)}
    summary["_queries"] = {"num_queries": len(queries),
                           "num_new_users": int(queries.is_new.sum()),
                           "num_train_examples": data.num_rows(train),
                           "num_sessions": len(sessions)}
    return summary


def run_dataset(name: str, work_dir: str, num_events: int, seeds: Sequence[int], quick: bool,
                models: Sequence[str]) -> dict[str, Any]:
    config_path, out = sessionized(name, work_dir, num_events)
    config = fc.load(config_path)
    catalogue = data.load_catalogue(os.path.join(out, "items", "*.gz"), config)
    vocabularies = load_vocabularies(config, os.path.join(out, "vocab"))
    retrieval = os.path.join(out, fc.RETRIEVAL)
    train = data.load_examples(inputs.split_pattern(retrieval, fc.TRAIN), config, fc.RETRIEVAL)
    evals = data.load_examples(inputs.split_pattern(retrieval, fc.EVAL), config, fc.RETRIEVAL)
    sessions = [[x.decode() for x in s] for s in data.load_examples(
        inputs.split_pattern(os.path.join(out, fc.ITEM2VEC), fc.TRAIN), config,
        fc.ITEM2VEC)[fc.SESSION_ITEMS_KEY]]
    results = {"_data": {"sessionized": out, "catalogue": len(catalogue),
                         "train_examples": data.num_rows(train),
                         "eval_examples": data.num_rows(evals),
                         "item2vec_train_sessions": len(sessions)}}
    print(f"{name}: time split", flush=True)
    results[TIME_SPLIT] = run_protocol(
        config, train, sessions, protocols.time_split(evals, config), catalogue, vocabularies,
        seeds, quick, models, os.path.join(work_dir, "exports", name),
        DATASET_HPARAMS.get(name))
    print(f"{name}: leave-last-out", flush=True)
    llo_train, llo_queries = protocols.leave_last_out(concat(train, evals), config)
    results[LEAVE_LAST_OUT] = run_protocol(
        config, llo_train, sessions_from_examples(llo_train, config), llo_queries, catalogue,
        vocabularies, seeds, quick, models, None, DATASET_HPARAMS.get(name))
    return results


def check_targets(results: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's targets, evaluated on what was measured."""
    checks: dict[str, Any] = {}
    ml = results.get(datasets.MOVIELENS)
    if ml:
        for protocol in (TIME_SPLIT, LEAVE_LAST_OUT):
            r = ml[protocol]
            pop = r.get("most_popular", {}).get("hr@50")
            for m in LEARNED:
                if m in r and pop:
                    checks[f"movielens/{protocol}/{m}_hr50_ge_1.5x_popular"] = {
                        "value": r[m]["hr@50"] / pop, "pass": r[m]["hr@50"] >= 1.5 * pop}
            learned = [r[m]["hr@50"] for m in LEARNED if m in r]
            peers = [r[m]["hr@50"] for m in ("als", "bpr") if m in r]
            if learned and peers:
                checks[f"movielens/{protocol}/best_learned_ge_best_als_bpr"] = {
                    "value": [max(learned), max(peers)], "pass": max(learned) >= max(peers)}
    for dataset, res in results.items():
        for protocol in (TIME_SPLIT, LEAVE_LAST_OUT):
            r = res.get(protocol, {})
            if "two_tower" in r and "item2vec" in r:
                checks[f"{dataset}/{protocol}/two_tower_ge_item2vec"] = {
                    "value": [r["two_tower"]["hr@50"], r["item2vec"]["hr@50"]],
                    "pass": r["two_tower"]["hr@50"] >= r["item2vec"]["hr@50"]}
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="synthetic,movielens")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default=",".join(LEARNED + PEERS))
    parser.add_argument("--quick", action="store_true", help="one seed, half the epochs")
    parser.add_argument("--work_dir", default=os.path.join("work", "bench_recall"))
    parser.add_argument("--num_events", type=int, default=datasets.DEFAULT_NUM_EVENTS)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        seeds = seeds[:1]
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(LEARNED + PEERS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}")
    start = time.time()
    results: dict[str, Any] = {}
    for name in [d for d in args.datasets.split(",") if d]:
        results[name] = run_dataset(name, args.work_dir, args.num_events, seeds, args.quick,
                                    models)
    results["_targets"] = check_targets(results)
    results["_run"] = {"seeds": seeds, "quick": args.quick, "num_events": args.num_events,
                       "total_seconds": time.time() - start, "hparams": HPARAMS,
                       "dataset_hparams": DATASET_HPARAMS,
                       "command": "python -m bench.recall_bench " + " ".join(argv or sys.argv[1:])}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, default=str)
    os.replace(tmp, args.out)
    print(json.dumps(results["_targets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
