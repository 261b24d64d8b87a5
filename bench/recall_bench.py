"""Recall benchmark: learned models vs classic baselines on two protocols.

    python -m bench.recall_bench [--quick] [--seeds 5] [--datasets synthetic,movielens]
        [--models name,...] [--max_epochs N] [--jobs 2] [--out bench/results/recall.json]

`--quick` is a smoke run (2 seeds, learned models capped at 3 epochs), not a
result. `--jobs 2` (default) benchmarks the two datasets side by side in
child processes: on 2 cores the whole run then takes ~30 min (README).

Data: the real pipeline. A `--datasets` entry is a built-in dataset
(`beam_jobs.datasets.prepare` makes the synthetic log or MovieLens-100k) or a
dataset YAML (feature config + `data:` globs); `python -m beam_jobs.sessionize`
writes the retrieval examples, item2vec sessions, vocabularies and item
catalogue, once per distinct input under --work_dir
(bench.parallel.sessionize_once). The JSON goes to bench/results/recall.json
for the built-in datasets and under --work_dir for any other, unless --out
says where.

Protocols (models.recall.protocols; items of the query's history are
excluded from the top-K; the JSON's `_protocol.protocols` states each rule):
  * time split: the models train on Split-train (Item2vec and the gensim
    peer on the item2vec Split-train sessions) with the sessionize job's
    vocabularies (Split-train events); trained once per seed, each model is
    scored on two query sets: `time_split` (per click: every Split-eval
    retrieval example is a query) and `time_split_per_user` (one query per
    user at their first eval click, every eval-period click a target).
  * leave-last-out at a cut-off (`leave_last_out`): over train + eval, the
    cut-off T is the time of the click at position
    floor((1 - LLO_HOLDOUT_FRACTION) * N) of the N clicks sorted by time;
    each user with >= LLO_MIN_CLICKS clicks whose last click is at or after T
    gives one query (that last click); every click strictly before T trains,
    so no model sees a click at or after any held-out click. The protocol's
    vocabularies (`vocabularies_from_examples`), catalogue click counts and
    Item2vec sessions (`sessions_from_examples`) come from those training
    clicks alone.
  Each protocol's `_queries` reports the new-user share (user without a
  training click) and `unreachable_targets` (targets outside the protocol's
  item vocabulary; above UNREACHABLE_FLAG every `_targets` entry of that
  protocol carries the share); every model's entry has HR@50 of new and
  returning users.

Training (the JSON's `_protocol` records all of it):
  * Learned models (Item2vec, YouTubeNet, two-tower) run their own trainers
    with their configs' default hyperparameters: each trainer carves its
    validation split from the end of the training time span
    (models.recall.training.carve_validation), trains epoch by epoch until
    validation HR@50 has not improved for `patience` epochs (`max_epochs` is
    only a cap) and keeps the best epoch. The epoch each seed stopped at is
    in the JSON (`best_epochs`, `epochs_run`). Nothing is chosen on the eval
    queries; they are scored once per trained model.
  * Classic peers train on the whole training split (they choose nothing on
    validation) with the fixed settings of PEER_SETTINGS, the same on both
    datasets and not tuned. Popularity and ItemCF are deterministic and run
    once; ALS, BPR and gensim Word2Vec run one seed per seed. ALS and BPR
    fold every query in from its history alike (a query user's trained
    factor is never used): ALS by its exact solve (recalculate_user), BPR,
    which implicit cannot fold in, by SGD on the BPR loss of the user factor
    alone with the item factors frozen (`bpr_fold_in`).
  * Comparisons (per dataset and protocol, on HR@50): paired by seed, mean
    difference with a 95% Student-t interval (bench.stats.paired_difference);
    against a deterministic peer every seed is paired with its single value.
    An interval containing 0 is a tie.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit asks for this

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from beam_jobs import datasets, sessionize  # noqa: E402
from feature_contract import feature_config as fc  # noqa: E402
from bench import parallel, stats  # noqa: E402
from models import inputs  # noqa: E402
from models.item2vec import train as i2v_train  # noqa: E402
from models.item2vec.config import Item2VecConfig  # noqa: E402
from models.layers.feature_embedding import load_vocabularies  # noqa: E402
from models.recall import data, protocols, training  # noqa: E402
from models.two_tower import train as tt_train  # noqa: E402
from models.two_tower.config import TwoTowerConfig  # noqa: E402
from models.validation import DEFAULT_VALIDATION_FRACTION  # noqa: E402
from models.youtubenet import train as ytn_train  # noqa: E402
from models.youtubenet.config import YouTubeNetConfig  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "recall.json")
TIME_SPLIT, LEAVE_LAST_OUT = "time_split", "leave_last_out"
TIME_SPLIT_PER_USER = "time_split_per_user"  # the time split's models, one query per user
PROTOCOLS = (TIME_SPLIT, TIME_SPLIT_PER_USER, LEAVE_LAST_OUT)
# Leave-last-out's cut-off: the last 20% of the clicks (the share of the time
# span the built-in datasets' time split evaluates on) lie at or after it.
LLO_HOLDOUT_FRACTION, LLO_MIN_CLICKS = 0.2, 3
LEARNED = ("item2vec", "youtubenet", "two_tower")
# Item2vec's vectors scored without the popularity prior (an ablation row).
SIMILARITY_ONLY = "item2vec_similarity_only"
CLASSIC = ("most_popular", "itemcf", "als", "bpr")
PEERS = CLASSIC + ("word2vec",)
MODELS = LEARNED + PEERS
# Scored from the training clicks alone: every seed would give the same figure.
DETERMINISTIC = frozenset({"most_popular", "itemcf"})
REPORTED = ("hr@50", "recall@50", "ndcg@50", "hr@500", "coverage@50", "avg_position",
            "new_user_hr@50", "returning_user_hr@50", "train_seconds", "eval_seconds")
PER_SEED = ("hr@50", "recall@50", "ndcg@50")
METRIC = "hr@50"  # what the comparisons and targets are on
POPULARITY_FACTOR = 1.5  # target: every learned model >= 1.5x popularity (MovieLens)
DEFAULT_SEEDS, QUICK_SEEDS, QUICK_MAX_EPOCHS = 5, 2, 3

CONFIGS = {"item2vec": Item2VecConfig, "youtubenet": YouTubeNetConfig,
           "two_tower": TwoTowerConfig}
# Learned models run their configs' defaults: nothing here was chosen on
# validation, so nothing overrides them (the seed, --max_epochs and an
# ablation's --hparams aside).
HPARAMS: dict[str, dict[str, Any]] = {name: {} for name in LEARNED}
# Peers' fixed settings, one set for both datasets, not tuned on anything:
# 64 factors like the learned models' vectors; ALS's confidence weight alpha
# and BPR's learning rate are the usual implicit-feedback choices for binary
# clicks; Word2Vec is skip-gram with Item2vec's window.
PEER_SETTINGS: dict[str, dict[str, Any]] = {
    "als": {"factors": 64, "regularization": 0.05, "iterations": 15, "alpha": 10.0},
    "bpr": {"factors": 64, "learning_rate": 0.05, "regularization": 0.01, "iterations": 100},
    "word2vec": {"vector_size": 64, "window": 64, "sg": 1, "negative": 5, "epochs": 10,
                 "min_count": 1},
}

# BPR's fold-in (bpr_fold_in): epochs of |history| SGD steps per query with
# BPR's learning rate and regularization; 20 epochs give a 2-click history 40
# steps (bounded numpy time on 10k queries; the training's 100 epochs would
# be 5x that).
BPR_FOLD_IN_EPOCHS = 20


# ---- data ------------------------------------------------------------------

def sessionized(name: str, work_dir: str, num_events: int) -> tuple[str, str]:
    """(config path, sessionize output dir) of a built-in name or dataset YAML, made once."""
    config_path, out, _ = parallel.sessionize_once(name, work_dir, num_events,
                                                   os.path.join(work_dir, "sessionized"))
    return config_path, out


def sessions_from_examples(arrays: Mapping[str, np.ndarray], config: fc.FeatureConfig
                           ) -> data.Arrays:
    """Click sessions rebuilt from retrieval examples, in the item2vec example layout.

    Leave-last-out must not train Item2vec on the held-out click, so its
    sessions come from the training clicks, not from OUT/item2vec. A user's
    clicks in time order start a new session after an idle gap strictly
    longer than `session_gap_seconds` (sessionize's rule, here on clicks
    only); sessions shorter than `min_session_len` are dropped, as sessionize
    drops them.

    Args:
      arrays: retrieval examples (user id, timestamp, item id).
      config: the dataset's feature config.
    Returns:
      {session_items: object array of lists of item-id bytes, chronological;
       timestamp: int64, each session's first click}, sessions ordered by
      user then time.
    """
    users = np.array([_text(u) for u in arrays[fc.USER_KEY]], object)
    ts = np.asarray(arrays[fc.TIMESTAMP_KEY], np.int64)
    # Same order as the protocols: user, time, then input order for ties.
    order = np.lexsort((np.arange(len(users)), ts, users))
    users, ts = users[order], ts[order]
    items = [x if isinstance(x, bytes) else str(x).encode()
             for x in arrays[config.item_id_feature.name][order]]
    new = np.r_[True, (users[1:] != users[:-1]) | (np.diff(ts) > config.session_gap_seconds)]
    bounds = np.r_[np.flatnonzero(new), len(order)]
    min_len = max(config.min_session_len, 1)
    keep = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= min_len]
    session_items = np.empty(len(keep), dtype=object)
    session_items[:] = [items[a:b] for a, b in keep]
    return {fc.SESSION_ITEMS_KEY: session_items,
            fc.TIMESTAMP_KEY: np.array([ts[a] for a, _ in keep], np.int64)}


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def decoded_sessions(sessions: Mapping[str, np.ndarray]) -> list[list[str]]:
    """Item-id strings of item2vec session arrays (the gensim peer's sentences)."""
    return [[_text(x) for x in s] for s in sessions[fc.SESSION_ITEMS_KEY]]


def concat(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> data.Arrays:
    return {k: np.concatenate([a[k], b[k]]) for k in a if k in b}


def vocabularies_from_examples(arrays: Mapping[str, np.ndarray], config: fc.FeatureConfig
                               ) -> dict[str, list[str]]:
    """A protocol's own vocabularies: sessionize's rule over its training clicks.

    Each retrieval example (one click) counts its user, item and context
    values, tags one count per tag, as sessionize counts a Split-train event;
    then beam_jobs.sessionize.vocabularies keeps the values seen at least
    min_count times, most frequent first, ties by value, capped
    (FeatureConfig.vocab_rule). The examples hold no impressions, so only
    clicks count. A vocab feature absent from the examples gets an empty
    vocabulary.

    Args:
      arrays: the protocol's training retrieval examples.
      config: the dataset's feature config.
    Returns:
      feature -> vocabulary, for every config.vocab_features entry.
    """
    counters = {spec.name: collections.Counter(_text(v) for v in
                                               np.asarray(arrays[spec.name]).ravel())
                for spec in config.vocab_features if spec.name in arrays}
    return sessionize.vocabularies(config, {"vocab": counters, "items": {}}, {})


def catalogue_from_examples(catalogue: data.Catalogue, arrays: Mapping[str, np.ndarray],
                            config: fc.FeatureConfig) -> data.Catalogue:
    """The catalogue with click counts of the protocol's training clicks.

    Item2vec's negatives and the two-tower logQ read catalogue.clicks, which
    sessionize counts over Split-train; leave-last-out trains on other clicks.
    Impressions are unknown from clicks alone and set to 0 (nothing reads
    them).
    """
    rows = catalogue.rows_of(arrays[config.item_id_feature.name])
    clicks = np.bincount(rows[rows >= 0], minlength=len(catalogue)).astype(np.int64)
    return data.Catalogue(list(catalogue.ids), dict(catalogue.features), clicks,
                          np.zeros(len(catalogue), np.int64))


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


# A fitted peer: the queries' [Q, N] history matrix -> score_fn(start, stop) -> [b, N].
Scorer = Callable[[sp.csr_matrix], Callable[[int, int], np.ndarray]]


def fit_most_popular(train: sp.csr_matrix, seed: int) -> Scorer:
    """Training clicks per item: the same list for every query."""
    pop = popularity(train)
    return lambda hist: lambda a, b: np.broadcast_to(pop, (b - a, len(pop)))


def fit_itemcf(train: sp.csr_matrix, seed: int) -> Scorer:
    """Cosine item-item co-clicks summed over the query's history."""
    counts = np.asarray(train.sum(axis=0)).ravel()
    co = (train.T @ train).tocsr().astype(np.float32)
    co.setdiag(0)
    co.eliminate_zeros()
    norm = 1.0 / np.sqrt(np.maximum(counts, 1.0)).astype(np.float32)
    sim = sp.diags(norm) @ co @ sp.diags(norm)
    # Popularity breaks ties and serves users without history.
    pop = 1e-6 * popularity(train)
    return lambda hist: lambda a, b: np.asarray((hist[a:b] @ sim).todense()) + pop


def bpr_fold_in(item_factors: np.ndarray, hist: sp.csr_matrix, seed: int, epochs: int,
                learning_rate: float, regularization: float) -> np.ndarray:
    """User factors of the queries fitted to their histories under BPR, items frozen.

    implicit's BPR has no recalculate_user, so each query's factor is fitted
    the way BPR trains one: SGD on -ln sigmoid(u . (v_pos - v_neg)) +
    regularization/2 |u|^2, every epoch |history| steps per query, each with
    a positive drawn from the history and a negative drawn uniformly from the
    items outside it (a drawn history item is skipped, as implicit verifies
    negatives). The factor starts at 0; its last entry stays 1 because
    implicit's last item column is the item bias. A query without history
    keeps u = (0, ..., 0, 1): item bias only.

    Args:
      item_factors: [N, F + 1] BPR item factors, the last column the bias.
      hist: [Q, N] binary history matrix of the queries.
      seed: seed of the samples.
      epochs, learning_rate, regularization: the SGD schedule.
    Returns:
      [Q, F + 1] float32 user factors.
    """
    items = np.asarray(item_factors, np.float32)
    hist = sp.csr_matrix(hist)
    num_queries, num_items = hist.shape
    users = np.zeros((num_queries, items.shape[1]), np.float32)
    users[:, -1] = 1.0
    lengths = np.diff(hist.indptr)
    seen = hist.toarray() > 0
    # Longest histories first: step s updates the queries with > s clicks.
    order = np.argsort(-lengths, kind="stable")
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for step in range(int(lengths.max(initial=0))):
            q = order[:np.searchsorted(-lengths[order], -step, side="left")]
            pos = hist.indices[hist.indptr[q] + rng.integers(0, lengths[q])]
            neg = rng.integers(0, num_items, len(q))
            keep = ~seen[q, neg]
            q, pos, neg = q[keep], pos[keep], neg[keep]
            diff = items[pos] - items[neg]
            u = users[q]
            weight = 1.0 / (1.0 + np.exp(np.einsum("qf,qf->q", u, diff)))  # sigmoid(-x)
            u[:, :-1] += learning_rate * (weight[:, None] * diff[:, :-1]
                                          - regularization * u[:, :-1])
            users[q] = u
    return users


def _fold_in_scores(items: np.ndarray, users: np.ndarray, train: sp.csr_matrix,
                    hist: sp.csr_matrix) -> Callable[[int, int], np.ndarray]:
    """score_fn of folded-in factors; a query without history gets popularity only."""
    pop = 1e-6 * popularity(train)
    users = np.array(users, np.float32).reshape(hist.shape[0], -1)
    users[np.asarray(hist.sum(axis=1)).ravel() == 0] = 0.0
    return lambda a, b: users[a:b] @ items.T + pop


def fit_als(train: sp.csr_matrix, seed: int) -> Scorer:
    """implicit ALS; every query is folded in from its history by ALS's exact solve."""
    from implicit.als import AlternatingLeastSquares
    model = AlternatingLeastSquares(**PEER_SETTINGS["als"], random_state=seed, num_threads=1)
    model.fit(train, show_progress=False)
    items = np.asarray(model.item_factors)
    return lambda hist: _fold_in_scores(
        items, np.asarray(model.recalculate_user(np.arange(hist.shape[0]), hist)), train, hist)


def fit_bpr(train: sp.csr_matrix, seed: int) -> Scorer:
    """implicit BPR; every query is folded in from its history by bpr_fold_in."""
    from implicit.bpr import BayesianPersonalizedRanking
    settings = PEER_SETTINGS["bpr"]
    model = BayesianPersonalizedRanking(**settings, random_state=seed, num_threads=1)
    model.fit(train, show_progress=False)
    items = np.asarray(model.item_factors)
    return lambda hist: _fold_in_scores(
        items, bpr_fold_in(items, hist, seed, BPR_FOLD_IN_EPOCHS, settings["learning_rate"],
                           settings["regularization"]), train, hist)


PEER_FITS: dict[str, Callable[[sp.csr_matrix, int], Scorer]] = {
    "most_popular": fit_most_popular, "itemcf": fit_itemcf, "als": fit_als, "bpr": fit_bpr}


def word2vec_vectors(sessions: Sequence[Sequence[str]], seed: int
                     ) -> tuple[list[str], np.ndarray]:
    from gensim.models import Word2Vec
    model = Word2Vec(sentences=[list(s) for s in sessions if len(s) >= 2],
                     **PEER_SETTINGS["word2vec"], seed=seed, workers=1)
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

def learned_config(name: str, seed: int, max_epochs: int | None = None,
                   overrides: Mapping[str, Mapping[str, Any]] | None = None):
    """The config of a learned model: its defaults, HPARAMS, the run's
    --hparams overrides for it, the seed and the epoch cap.

    Raises:
      the config's error (a ValueError naming the value) on a bad setting.
    """
    hparams = {**HPARAMS[name], **(overrides or {}).get(name, {}), "seed": seed}
    if max_epochs is not None:
        hparams["max_epochs"] = max_epochs
    return CONFIGS[name].from_hparams(hparams)


def seeds_of(name: str, seeds: Sequence[int]) -> list[int]:
    """The seeds a model runs: all of them, or the first for a deterministic peer."""
    return list(seeds[:1]) if name in DETERMINISTIC else list(seeds)


def fit_learned(name: str, config: fc.FeatureConfig, train: data.Arrays,
                sessions: data.Arrays, catalogue: data.Catalogue,
                vocabularies: Mapping[str, list[str]], model_config: Any):
    """One learned model trained by its own trainer (validation carve, early stopping)."""
    if name == "item2vec":
        return i2v_train.fit(config, sessions, vocabularies[config.item_id_feature.name],
                             catalogue, model_config)
    fit = ytn_train.fit if name == "youtubenet" else tt_train.fit
    return fit(config, train, catalogue, vocabularies, model_config)


def training_record(trainer_stats: Mapping[str, Any]) -> dict[str, Any]:
    """What a learned run's JSON keeps of its trainer's statistics."""
    stopping = trainer_stats["early_stopping"]
    return {"best_epoch": stopping["best_epoch"], "epochs_run": stopping["epochs_run"],
            "stopped_early": stopping["stopped_early"],
            f"best_{training.MONITOR}": stopping["best_value"],
            "learning_curve": trainer_stats["learning_curve"],
            "validation": trainer_stats["validation"],
            **{key: trainer_stats[key] for key in ("popularity_prior", "recent_clicks",
                                                    "share_item_embedding", "choices",
                                                    "warnings")
               if key in trainer_stats}}


def query_record(queries: protocols.Queries, item_vocabulary: Sequence[str]
                 ) -> dict[str, Any]:
    """A query set's counts: queries, new users and their share, unreachable targets.

    num_queries_with_target: queries left with a target once the targets
    inside the history are dropped (the metrics score only these).
    """
    num_new = int(queries.is_new.sum())
    return {"num_queries": len(queries), "num_new_users": num_new,
            "new_user_share": num_new / len(queries) if len(queries) else None,
            "num_queries_with_target": sum(1 for t in queries.targets if t),
            "num_targets": sum(len(t) for t in queries.targets),
            "unreachable_targets": protocols.unreachable_share(queries, item_vocabulary)}


def run_protocol(config: fc.FeatureConfig, train: data.Arrays, sessions: data.Arrays,
                 views: Mapping[str, protocols.Queries], catalogue: data.Catalogue,
                 vocabularies: Mapping[str, list[str]], seeds: Sequence[int],
                 models: Sequence[str], max_epochs: int | None,
                 export_root: str | None, label: str = "",
                 overrides: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> dict[str, dict[str, Any]]:
    """Every model, every seed, trained once on one protocol's data and scored on each view.

    Args:
      config: the dataset's feature config.
      train: retrieval examples the models train on (learned models carve
        their validation from them; peers use all of them).
      sessions: item2vec session arrays (session_items, timestamp) of the
        same clicks, for Item2vec and the gensim peer.
      views: name -> eval queries; every trained model is scored on each.
      catalogue, vocabularies: the protocol's (click counts and vocabularies
        of its training data; the catalogue's ids are every candidate).
      seeds: seeds of learned and seeded models (deterministic peers: the first).
      models: names from MODELS.
      max_epochs: cap on the learned models' epochs (None: their defaults).
      export_root: seed 0's learned models are exported under it (None: not).
      label: log prefix.
      overrides: model -> hparams over its defaults (--hparams).
    Returns:
      view -> {model -> summarize(...), "_comparisons": compare(...),
      "_queries": query_record(...) + training-data counts}.
    """
    item_ids = list(catalogue.ids)
    item_index = {x: i for i, x in enumerate(item_ids)}
    train_matrix, _ = interactions(train, config, item_index)
    hists = {view: history_matrix(q, item_index) for view, q in views.items()}
    sentences = decoded_sessions(sessions) if "word2vec" in models else []
    n_cat = len(item_ids)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {view: {} for view in views}
    for name in models:
        for seed in seeds_of(name, seeds):
            start = time.time()
            extra: dict[str, Any] = {}
            if name in LEARNED:
                result = fit_learned(name, config, train, sessions, catalogue, vocabularies,
                                     learned_config(name, seed, max_epochs, overrides))
            elif name == "word2vec":
                ids, vectors = word2vec_vectors(sentences, seed)
            else:
                scorer = PEER_FITS[name](train_matrix, seed)
            trained = time.time()
            if name in LEARNED:
                extra = training_record(result.stats)
                if export_root and seed == seeds[0]:
                    result.export(os.path.join(export_root, name))
            for view, queries in views.items():
                begin = time.time()
                if name in LEARNED:
                    users = result.user_vectors(queries.features)
                    out = protocols.evaluate_embeddings(
                        queries, users, result.item_ids, result.item_vectors,
                        catalogue_size=n_cat)
                elif name == "word2vec":
                    out = protocols.evaluate_embeddings(
                        queries, mean_history(queries, ids, vectors), ids, vectors,
                        catalogue_size=n_cat)
                else:  # ALS / BPR fold the queries in here: in eval_seconds
                    out = protocols.evaluate_scores(queries, scorer(hists[view]), item_ids,
                                                    catalogue_size=n_cat)
                record = {"seed": seed, **out, "train_seconds": trained - start,
                          "eval_seconds": time.time() - begin, **extra}
                runs[view].setdefault(name, []).append(record)
                if name == "item2vec":
                    # Ablation of the same vectors: similarity alone, no
                    # popularity prior (equal to item2vec where beta = 0).
                    width = result.similarity_vectors.shape[1]
                    plain = protocols.evaluate_embeddings(
                        queries, users[:, :width], result.item_ids, result.similarity_vectors,
                        catalogue_size=n_cat)
                    runs[view].setdefault(SIMILARITY_ONLY, []).append(
                        {"seed": seed, **plain,
                         "prior_weight": result.stats["popularity_prior"]["weight"]})
                epochs = (f" best epoch {record['best_epoch']}/{record['epochs_run']}"
                          if name in LEARNED else "")
                print(f"[{label} {view}] {name:13s} seed {seed} "
                      f"hr@50 {out.get('hr@50', float('nan')):.4f} "
                      f"recall@50 {out.get('recall@50', float('nan')):.4f}{epochs} "
                      f"({record['train_seconds']:.1f}s + {record['eval_seconds']:.1f}s eval)",
                      flush=True)
    item_vocabulary = vocabularies.get(config.item_id_feature.name, [])
    results = {}
    for view, queries in views.items():
        summary: dict[str, Any] = {name: summarize(r) for name, r in runs[view].items()}
        summary["_comparisons"] = compare(summary)
        summary["_queries"] = {**query_record(queries, item_vocabulary),
                               "num_train_examples": data.num_rows(train),
                               "num_sessions": data.num_rows(sessions),
                               "item_vocabulary_size": len(item_vocabulary)}
        results[view] = summary
    return results


# ---- summaries and comparisons -------------------------------------------------

def _mean(values: Sequence[float]) -> float | None:
    values = [float(v) for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else None


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One model's runs: means of REPORTED, per-seed values, stopping epochs.

    Returns:
      {<REPORTED metric>: mean over seeds, "seeds": [...], "values": {<PER_SEED
       metric>: [one per seed]}, "std": {metric: sample std (ddof 1) or None
       for one run}, "details": mean of every numeric metric, "runs": the
       per-seed records}, plus "best_epochs", "epochs_run", "stopped_early"
      (one per seed) for a learned model.
    """
    numeric = [k for k, v in runs[0].items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed"]
    details = {k: _mean([r.get(k) for r in runs]) for k in numeric}
    values = {k: [r[k] for r in runs] for k in PER_SEED if k in runs[0]}
    out: dict[str, Any] = {k: details.get(k) for k in REPORTED}
    out.update({"seeds": [r["seed"] for r in runs], "values": values,
                "std": {k: float(np.std(v, ddof=1)) if len(v) > 1 else None
                        for k, v in values.items()},
                "details": details})
    if "best_epoch" in runs[0]:
        out["best_epochs"] = [r["best_epoch"] for r in runs]
        out["epochs_run"] = [r["epochs_run"] for r in runs]
        out["stopped_early"] = [r["stopped_early"] for r in runs]
    out["runs"] = list(runs)
    return out


def paired(summary: Mapping[str, Any], a: str, b: str, factor: float = 1.0,
           metric: str = METRIC) -> dict[str, Any]:
    """Paired difference of `metric`, a's seeds minus factor x b's, with its 95% CI.

    Seeds pair by position. A model with one run (a deterministic peer) is
    paired with every seed of the other: the interval is then the one-sample
    interval of the seed values minus that constant.
    """
    va, vb = list(summary[a]["values"][metric]), list(summary[b]["values"][metric])
    if len(vb) == 1:
        vb = vb * len(va)
    elif len(va) == 1:
        va = va * len(vb)
    n = min(len(va), len(vb))
    label = b if factor == 1.0 else f"{factor:g} x {b}"
    return {"a": a, "b": label, "metric": metric,
            **stats.paired_difference(va[:n], [factor * v for v in vb[:n]])}


def best_of(summary: Mapping[str, Any], names: Sequence[str], metric: str = METRIC
            ) -> str | None:
    """The model among `names` with the highest mean `metric` (None if none ran)."""
    present = [n for n in names if n in summary]
    return max(present, key=lambda n: summary[n][metric]) if present else None


def compare(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The comparisons the targets name, as paired differences of HR@50.

    Keys: best_learned_vs_best_classic (the learned and the classic model
    with the best mean, classic = popularity / ItemCF / ALS / BPR),
    two_tower_vs_item2vec, <learned>_vs_most_popular and
    <learned>_vs_1.5x_most_popular (the MovieLens target's margin).
    """
    out: dict[str, Any] = {}
    learned, classic = best_of(summary, LEARNED), best_of(summary, CLASSIC)
    if learned and classic:
        out["best_learned_vs_best_classic"] = paired(summary, learned, classic)
    if "two_tower" in summary and "item2vec" in summary:
        out["two_tower_vs_item2vec"] = paired(summary, "two_tower", "item2vec")
    if "most_popular" in summary:
        for name in LEARNED:
            if name in summary:
                out[f"{name}_vs_most_popular"] = paired(summary, name, "most_popular")
                out[f"{name}_vs_{POPULARITY_FACTOR:g}x_most_popular"] = paired(
                    summary, name, "most_popular", POPULARITY_FACTOR)
    if "item2vec" in summary and SIMILARITY_ONLY in summary:
        out[f"item2vec_vs_{SIMILARITY_ONLY}"] = paired(summary, "item2vec", SIMILARITY_ONLY)
    return out


# A protocol whose share of targets outside its item vocabulary exceeds this
# has every target flagged with that share (check_targets).
UNREACHABLE_FLAG = 0.25


def _check(comparison: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """A target's entry: met on the mean difference, with the interval's verdict."""
    return {"a": comparison["a"], "b": comparison["b"], "met": comparison["mean"] >= 0.0,
            "mean": comparison["mean"], "ci": [comparison["ci_low"], comparison["ci_high"]],
            "verdict": comparison["verdict"], **extra}


def check_targets(results: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's targets, from the comparisons (mean difference >= 0, with its verdict).

    MovieLens: every learned model >= 1.5x popularity, best learned >= best
    classic peer. Every dataset: every learned model >= popularity,
    two-tower >= Item2vec.
    """
    checks: dict[str, Any] = {}
    for dataset, res in results.items():
        if dataset.startswith("_"):
            continue
        for protocol in PROTOCOLS:
            if protocol not in res:
                continue
            r, cmp = res[protocol], res[protocol]["_comparisons"]
            prefix = f"{dataset}/{protocol}"
            unreachable = (r.get("_queries") or {}).get("unreachable_targets") or 0.0
            # Past the flag many targets have no trained id embedding (a model
            # that knows items by id alone never returns them; Item2vec's
            # imputed and two-tower's attribute-fed vectors may): the targets
            # compare models on a skewed query set (a heavy-tailed log's LLO), and say so.
            flags = {"unreachable_targets": unreachable} if unreachable > UNREACHABLE_FLAG else {}
            if dataset == datasets.MOVIELENS:
                for name in LEARNED:
                    key = f"{name}_vs_{POPULARITY_FACTOR:g}x_most_popular"
                    if key in cmp:
                        pop = r["most_popular"][METRIC]
                        checks[f"{prefix}/{name}_hr50_ge_{POPULARITY_FACTOR:g}x_popular"] = \
                            _check(cmp[key], ratio=r[name][METRIC] / pop if pop else None, **flags)
                if "best_learned_vs_best_classic" in cmp:
                    checks[f"{prefix}/best_learned_ge_best_classic"] = _check(
                        cmp["best_learned_vs_best_classic"], **flags)
            for name in LEARNED:
                if f"{name}_vs_most_popular" in cmp:
                    checks[f"{prefix}/{name}_ge_popular"] = _check(cmp[f"{name}_vs_most_popular"],
                                                                     **flags)
            if "two_tower_vs_item2vec" in cmp:
                checks[f"{prefix}/two_tower_ge_item2vec"] = _check(cmp["two_tower_vs_item2vec"],
                                                                  **flags)
    return checks


# ---- one dataset -------------------------------------------------------------

def run_dataset(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """Both protocols of one dataset (a built-in name or a dataset YAML)."""
    name = parallel.dataset_key(spec)
    config_path, out = sessionized(spec, args.work_dir, args.num_events)
    config = fc.load(config_path)
    catalogue = data.load_catalogue(os.path.join(out, "items", "*.gz"), config)
    vocabularies = load_vocabularies(config, os.path.join(out, "vocab"))
    retrieval = os.path.join(out, fc.RETRIEVAL)
    train = data.load_examples(inputs.split_pattern(retrieval, fc.TRAIN), config, fc.RETRIEVAL)
    evals = data.load_examples(inputs.split_pattern(retrieval, fc.EVAL), config, fc.RETRIEVAL)
    sessions = data.load_examples(inputs.split_pattern(os.path.join(out, fc.ITEM2VEC), fc.TRAIN),
                                  config, fc.ITEM2VEC)
    results: dict[str, Any] = {"_data": {
        "sessionized": out, "catalogue": len(catalogue), "train_examples": data.num_rows(train),
        "eval_examples": data.num_rows(evals), "item2vec_train_sessions": data.num_rows(sessions)}}
    clicks = concat(train, evals)
    views = {TIME_SPLIT: protocols.time_split(evals, config),
             TIME_SPLIT_PER_USER: protocols.time_split(evals, config, per_user=True)}
    results.update(run_protocol(
        config, train, sessions, views, catalogue, vocabularies, args.seed_list,
        args.model_list, args.max_epochs,
        # bench.faiss_bench reads work_dir/exports: a smoke run or an ablation
        # (--hparams) must not replace them.
        os.path.join(args.work_dir, "exports-quick" if args.quick else
                     "exports-hparams" if args.hparams else "exports", name),
        label=name, overrides=args.hparams))
    llo = protocols.leave_last_out_at_cutoff(clicks, config, LLO_HOLDOUT_FRACTION,
                                             LLO_MIN_CLICKS)
    views[LEAVE_LAST_OUT] = llo.queries
    results.update(run_protocol(
        config, llo.train, sessions_from_examples(llo.train, config),
        {LEAVE_LAST_OUT: llo.queries}, catalogue_from_examples(catalogue, llo.train, config),
        vocabularies_from_examples(llo.train, config), args.seed_list, args.model_list,
        args.max_epochs, None, label=name, overrides=args.hparams))
    results[LEAVE_LAST_OUT]["_queries"]["cutoff"] = llo.cutoff
    for view, queries in views.items():
        results[view]["_queries"]["history_leaks"] = protocols.history_leaks(clicks, queries)
    return results


def protocol_rules() -> dict[str, str]:
    """The exact rule of each protocol (the JSON's `_protocol.protocols`)."""
    return {
        TIME_SPLIT: "train: Split-train retrieval examples (clicks before the sessionize "
                    "split time), item2vec Split-train sessions, sessionize vocabularies "
                    "(Split-train events); queries: every Split-eval click, history = the "
                    "user's clicks strictly before it; is_new = no event before the split",
        TIME_SPLIT_PER_USER: f"the models trained for {TIME_SPLIT}; queries: one per user "
                             "at the user's first Split-eval click, targets = every item "
                             "the user clicked in Split-eval (history items dropped)",
        LEAVE_LAST_OUT: f"over Split-train + Split-eval clicks: cut-off T = timestamp of "
                        f"the click at position floor((1 - {LLO_HOLDOUT_FRACTION}) * N) of "
                        f"the N clicks sorted by time (`_queries.cutoff`); queries: the "
                        f"last click of each user with >= {LLO_MIN_CLICKS} clicks whose "
                        f"last click is at or after T, history = the user's clicks "
                        f"strictly before it; train: every click strictly before T (no "
                        f"training click at or after any held-out click); vocabularies, "
                        f"catalogue click counts and Item2vec sessions from those training "
                        f"clicks; is_new = no click before T",
        "history_leaks": "queries whose history holds more items than the user clicked "
                         "strictly before the query (models.recall.protocols.history_leaks): "
                         "0 = no history holds the held-out click or a later one",
        "unreachable_targets": "share of (query, target) pairs whose item is outside the "
                               "protocol's item-id vocabulary (candidates are the whole "
                               "catalogue; such a target has no trained id embedding)",
    }


def protocol_record(args: argparse.Namespace) -> dict[str, Any]:
    """How every figure was obtained (the JSON's `_protocol`)."""
    schedules = {name: {k: getattr(learned_config(name, 0, args.max_epochs, args.hparams), k)
                        for k in ("max_epochs", "patience", "min_delta", "validation_fraction")}
                 for name in LEARNED}
    return {
        "protocols": protocol_rules(),
        "validation": f"each learned model's trainer carves the last "
                      f"{DEFAULT_VALIDATION_FRACTION:.0%} of its training time span "
                      f"(models.recall.training.carve_validation) and monitors "
                      f"{training.MONITOR} after every epoch; the eval queries are scored "
                      f"once per trained model",
        "training": "epoch by epoch until validation HR@50 has not improved by min_delta for "
                    "patience epochs (max_epochs a cap), best epoch's weights kept; per-seed "
                    "best_epochs / epochs_run in each learned model's entry",
        "schedules": schedules,
        "hparams": {"learned": ("each config's defaults; the choices a trainer makes on "
                                "its own validation split (Item2vec's popularity-prior "
                                "weight, two-tower's recent_clicks and share_item_embedding) "
                                "are recorded per seed; nothing is chosen on eval"),
                    "overrides": {name: {**HPARAMS[name], **args.hparams.get(name, {})}
                                  for name in LEARNED},
                    "peers": PEER_SETTINGS,
                    "peers_note": "fixed, untuned, the same on both datasets; peers train on "
                                  "the whole training split (no validation carve)",
                    "bpr_fold_in_epochs": BPR_FOLD_IN_EPOCHS},
        "fold_in": "ALS and BPR score every query from a user factor fitted to its history "
                   "with the item factors frozen (a training user's own factor is never "
                   "used): ALS by implicit's recalculate_user (exact least squares); BPR "
                   "by SGD on the BPR loss from u = 0 (bench.recall_bench.bpr_fold_in: "
                   "each epoch |history| steps, positive from the history, negative "
                   "uniform outside it, BPR's learning rate and regularization, the bias "
                   "entry fixed at 1); a query without history: popularity",
        "seeds": {"learned_and_seeded_peers": args.seed_list,
                  "deterministic_peers": sorted(DETERMINISTIC)},
        "comparisons": f"{METRIC}, paired by seed: mean difference with a 95% Student-t "
                       f"interval (bench.stats.paired_difference); a deterministic peer's "
                       f"single value is paired with every seed; an interval containing 0 "
                       f"is a tie; 'best' = highest mean over seeds",
        "timing": "train_seconds (fit, validation included) and eval_seconds (per query "
                  "view; ALS / BPR fold-in included) per seed; "
                  + (f"the datasets ran side by side in {len(args.dataset_list)} processes "
                     f"(--jobs {args.jobs}), so timings share the cores"
                     if args.jobs > 1 and len(args.dataset_list) > 1 else
                     "the datasets ran one after the other"),
        "quick": args.quick,
    }


# ---- command line ------------------------------------------------------------

def _names(spec: str, known: Sequence[str], what: str,
           parser: argparse.ArgumentParser) -> list[str]:
    names = [n for n in spec.split(",") if n]
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown {what} {unknown}; known: {list(known)}")
    if not names:
        parser.error(f"no {what} given")
    return names


def _hparams(text: str, parser: argparse.ArgumentParser) -> dict[str, dict[str, Any]]:
    """--hparams parsed and checked: every model learned, every setting accepted."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        parser.error(f"--hparams is not JSON ({e}): {text!r}")
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        parser.error(f"--hparams must be a JSON object of objects, got {text!r}")
    unknown = sorted(set(value) - set(LEARNED))
    if unknown:
        parser.error(f"--hparams names {unknown}, not learned models {list(LEARNED)}")
    for name in value:
        # --seeds sets the seed: an override would be recorded in _protocol
        # but never applied (as max_epochs under --max_epochs / --quick).
        if "seed" in value[name]:
            parser.error(f"--hparams for {name}: the seed is set by --seeds")
        try:
            learned_config(name, 0, None, value)
        except (ValueError, TypeError) as e:
            parser.error(f"--hparams for {name}: {e}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags, with --quick's defaults resolved (seed_list, model_list, dataset_list)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SEEDS} seeds, learned models capped at "
                             f"{QUICK_MAX_EPOCHS} epochs (a smoke run, not a result)")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"seeds 0..N-1 (default {DEFAULT_SEEDS}; quick {QUICK_SEEDS})")
    parser.add_argument("--max_epochs", type=int, default=None,
                        help="cap on the learned models' epochs (default: their configs' "
                             f"own; quick {QUICK_MAX_EPOCHS})")
    parser.add_argument("--datasets", default=",".join(datasets.DATASETS),
                        help="comma-separated built-in names and/or dataset YAMLs")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--work_dir", default=os.path.join("work", "bench_recall"))
    parser.add_argument("--num_events", type=int, default=datasets.DEFAULT_NUM_EVENTS,
                        help="synthetic events")
    parser.add_argument("--out", default=None,
                        help=f"the JSON (default: {os.path.relpath(RESULTS)} for a full run "
                             "of both built-in datasets; otherwise <work_dir>/recall-<names>.json, "
                             "recall-quick-, recall-hparams- or recall-models-<names>.json)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="datasets benchmarked side by side in child processes (default "
                             "2: the whole run fits ~30 min on 2 cores; 1: one after the "
                             "other, per-model seconds without a neighbour)")
    parser.add_argument("--hparams", default="{}",
                        help='JSON {model: {hparam: value}} over the learned models\' '
                             'defaults, for an ablation (e.g. \'{"two_tower": {"share_item_'
                             'embedding": false}}\'); recorded in the JSON\'s _protocol')
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra/inter-op threads (0: TensorFlow's default; "
                             "children of --jobs get cores / datasets)")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = QUICK_SEEDS if args.quick else DEFAULT_SEEDS
    if args.max_epochs is None and args.quick:
        args.max_epochs = QUICK_MAX_EPOCHS
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.max_epochs is not None and args.max_epochs < 1:
        parser.error(f"--max_epochs must be >= 1, got {args.max_epochs}")
    if args.jobs < 1 or args.threads < 0:
        parser.error(f"--jobs must be >= 1 and --threads >= 0, got {args.jobs} / {args.threads}")
    args.seed_list = list(range(args.seeds))
    args.model_list = _names(args.models, MODELS, "models", parser)
    args.hparams = _hparams(args.hparams, parser)
    if args.max_epochs is not None and any("max_epochs" in h for h in args.hparams.values()):
        parser.error("--hparams sets max_epochs, which --max_epochs (or --quick) overrides")
    specs = [n for n in args.datasets.split(",") if n]
    for spec in specs:
        if (problem := parallel.dataset_spec_error(spec)) is not None:
            parser.error(problem)
    args.dataset_list = _names(args.datasets, specs, "datasets", parser)
    # An ablation, a smoke run or a subset of the models is not the recorded
    # result (and must not replace it).
    partial = "hparams" if args.hparams else "quick" if args.quick else (
        "models" if args.model_list != list(MODELS) else "")
    args.out = args.out or parallel.default_out(args.dataset_list, RESULTS, args.work_dir,
                                                "recall", partial)
    return args


def child_command(args: argparse.Namespace, dataset: str, out: str, threads: int) -> list[str]:
    """The command benchmarking one dataset in its own process, with this run's settings."""
    cmd = [sys.executable, "-m", "bench.recall_bench", "--datasets", dataset,
           "--seeds", str(args.seeds), "--models", ",".join(args.model_list),
           "--work_dir", args.work_dir, "--num_events", str(args.num_events),
           "--out", out, "--jobs", "1", "--threads", str(threads)]
    if args.max_epochs is not None:
        cmd += ["--max_epochs", str(args.max_epochs)]
    if args.hparams:
        cmd += ["--hparams", json.dumps(args.hparams)]
    return cmd + (["--quick"] if args.quick else [])


def run_parallel(args: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    """One child process per dataset, each with an even share of the cores."""
    threads = parallel.thread_share(len(args.dataset_list))
    commands = {}
    for dataset in args.dataset_list:
        key = parallel.dataset_key(dataset)
        out = os.path.join(out_dir, f"{key}.json")
        commands[key] = (child_command(args, dataset, out, threads), out)
    return parallel.run_children(commands, lambda m: print(m, flush=True))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    parallel.set_tf_threads(args.threads)
    run_info = stats.provenance(["python", "-m", "bench.recall_bench", *argv])
    start = time.time()
    if args.jobs > 1 and len(args.dataset_list) > 1:
        with tempfile.TemporaryDirectory() as tmp:
            results = run_parallel(args, tmp)
    else:
        results = {}
        for name in args.dataset_list:
            started = time.time()
            key = parallel.dataset_key(name)
            results[key] = run_dataset(name, args)
            results[key]["_data"]["seconds"] = time.time() - started
    results["_targets"] = check_targets(results)
    results["_protocol"] = protocol_record(args)
    results["_run"] = {**run_info, "seeds": args.seed_list, "quick": args.quick,
                       "max_epochs": args.max_epochs, "num_events": args.num_events,
                       "models": args.model_list, "jobs": args.jobs,
                       "total_seconds": time.time() - start}
    stats.write_report(args.out, results)
    print(json.dumps(results["_targets"], indent=1))
    print(f"wrote {args.out} ({results['_run']['total_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(parallel.guarded(main))
