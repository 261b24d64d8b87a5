"""Offline replay of the whole funnel: eval requests through the served Recommender.

    python -m bench.funnel_bench [--quick] [--datasets synthetic,movielens] [--seed 0]
        [--max_requests N] [--jobs 2] [--out bench/results/funnel.json]

What is replayed is what `make serve` runs, not a re-implementation of it:
the models are trained, exported and pushed into a serving layout
(`<work_dir>/<dataset>/serving/{models,indexes}/<name>/1/`), the embedded
model server (serving.model_server: a ModelManager over that layout, called
through the same PredictionService protos as TF Serving, in-process as
`make serve` does by default) serves them, and every request goes through
`serving.recommender.Recommender.recommend`: user towers, FAISS channels,
round-robin merge and dedupe (merge_rows), seen-item removal, one NFwFM
score_candidates call, top-k. `FunnelRecommender` only keeps each request's
channel lists (Recommender._channel_lists) so every channel can be scored on
its own list of the very same request.

Data and models (the JSON's `_protocol` records all of it):
  * A `--datasets` entry is a built-in dataset or a dataset YAML, sessionized
    once under --work_dir (bench.parallel.sessionize_once), as the recall and
    ranking benches do.
  * Recall: Item2vec, YouTubeNet and two-tower with their configs' defaults,
    trained by their own trainers on Split-train (validation carved from its
    end, early stopping on validation HR@50; bench.recall_bench.fit_learned),
    exported, their item vectors indexed by the FAISS builder.
  * Ranking: NFwFM with its defaults on the ranking Split-train (validation
    carved from its end, early stopping on validation click AUC;
    bench.ranking_bench.train_ours), exported with its score_candidates
    signature.
  * Serving inputs: the raw items table (catalogue, item features), the
    sessionize job's item_frequencies.tsv (cold-start popularity), the raw
    users table (profiles), RecommenderSettings() defaults (500 candidates,
    500 per channel).
Requests (time split, models.recall.protocols.time_split): every Split-eval
retrieval example is one request: its user, context and timestamp, and the
user's click history as of that moment (the example's clicked_item_list, set
in the store before the call); the clicked item is the target. Requests whose
target is already in the history are skipped (the seen-filter can never
return it). `is_new_user` splits new from returning users.

Figures per list (HR@10, NDCG@10, HR@50, recall, coverage; all, new and
returning users): the final list (recommend(k=50)); each channel's own list
(its FAISS order, seen items removed; cold-start channels popular_city /
popular exist only for requests without history); the merged candidates in
merge order before ranking (and their HR@500, the ranking's ceiling); and as
references popularity and ALS top-k (bench.recall_bench's scorers, trained on
the retrieval Split-train, history excluded). Each channel's share of the
final top-10: the mean share of its slots the channel retrieved (an item
retrieved by several channels counts for each) and retrieved alone.

Targets (issue #13, reported, not tuned to): the final HR@10 >= the best
single channel's own HR@10, and >= ALS top-10 HR; each with the paired
difference over requests (per-request hits, 95% Student-t interval): that
interval covers request sampling for one trained model set (one seed), not
training seeds.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's ALS asks for this

import numpy as np  # noqa: E402

from beam_jobs import datasets  # noqa: E402
from bench import parallel, ranking_bench, recall_bench, stats  # noqa: E402
from feature_contract import feature_config as fc  # noqa: E402
from models import inputs  # noqa: E402
from models.faiss_index import builder as faiss_builder  # noqa: E402
from models.layers.feature_embedding import load_vocabularies  # noqa: E402
from models.ranking import config as rc  # noqa: E402
from models.ranking import export as ranking_export  # noqa: E402
from models.ranking import train as ranking_train  # noqa: E402
from models.recall import data, metrics, protocols  # noqa: E402
from models.recall.evaluate import take_queries  # noqa: E402
from serving import model_server  # noqa: E402
from serving.blend import BLEND_FILE, CLICK_LOGIT  # noqa: E402
from serving.recommender import RecommenderSettings  # noqa: E402
# The replay itself is serving code (the pipeline's BlendFitter runs it too);
# the names stay importable from here for the bench's tests and scripts.
from serving.replay import (BLEND_FOLDS, BLEND_REQUESTS, FINAL_K, MODELS_CONFIG,  # noqa: E402,F401
                            RANKER_ONLY, Replayed, ReplayRecommender, Request,
                            build_recommender, fit_validation_blend, replay, requests_of,
                            serving_client, subsample, target_rows)

FunnelRecommender = ReplayRecommender  # the bench's earlier name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results", "funnel.json")
RANKING_MODEL = "ranking"
TOWER_PREFIX = "user_tower_"
KS = (10, 50)
TOP = 10  # the cut-off of the targets and of the shares
FINAL, MERGED = "final", "merged_candidates"
REFERENCES = ("most_popular", "als")
SLICES = ("all", "new_users", "returning_users")
QUICK_EVENTS, QUICK_MAX_EPOCHS, QUICK_REQUESTS = 30_000, 2, 300
QUICK_MAX_TRAIN = 30_000  # ranking examples a quick run trains on (ranking_bench's --max_train)
QUICK_BLEND_REQUESTS = 300
VERSION = 1


# ---- the served world ---------------------------------------------------------

def push_recall(result: Any, name: str, export_dir: str, serving_dir: str) -> dict[str, str]:
    """Exports a trained recall model and pushes it as serving expects it.

    The user tower (towers only: Item2vec's user vector is the mean of the
    clicked items' vectors, computed by the Recommender) goes to
    models/user_tower_<name>/1/, the item vectors through the FAISS builder
    to indexes/<name>/1/.

    Returns:
      {"index": index dir, "tower": tower dir or absent}.
    """
    paths = result.export(export_dir)
    out = {"index": faiss_builder.build_index(
        paths["item_embeddings"], os.path.join(serving_dir, "indexes"), name, version=VERSION)}
    tower = next((c.tower for c in RecommenderSettings().channels if c.name == name), None)
    if tower:
        out["tower"] = os.path.join(serving_dir, "models", tower, str(VERSION))
        shutil.copytree(paths["user_tower"], out["tower"])
    return out


def single_file(pattern: str | None, what: str) -> str | None:
    """The one file a raw-table glob matches (None when the dataset has no such table).

    Raises:
      ValueError: the glob matches no file or several.
    """
    if not pattern:
        return None
    found = sorted(glob.glob(pattern))
    if len(found) != 1:
        raise ValueError(f"the {what} glob {pattern!r} matches {len(found)} files; the funnel "
                         "bench serves from exactly one")
    return found[0]


# ---- requests ------------------------------------------------------------------

def topk_matrix(lists: Sequence[np.ndarray], width: int) -> np.ndarray:
    """Ragged row lists -> int64 [Q, width], -1 padded (metrics.evaluate's layout)."""
    out = np.full((len(lists), width), -1, np.int64)
    for q, rows in enumerate(lists):
        rows = np.asarray(rows, np.int64)[:width]
        out[q, :len(rows)] = rows
    return out


# ---- figures ------------------------------------------------------------------

def hits_at(topk: np.ndarray, targets: Sequence[np.ndarray], k: int) -> np.ndarray:
    """bool [Q]: a target in the first k rows."""
    return metrics.hit_matrix(topk[:, :k], targets).any(axis=1)


def list_figures(topk: np.ndarray, queries: protocols.Queries, item_ids: Sequence[str],
                 ks: Sequence[int] = KS) -> dict[str, Any]:
    """HR / NDCG / recall / coverage at ks for all, new and returning users."""
    out: dict[str, Any] = {}
    for name, mask in (("all", np.ones(len(queries), bool)), ("new_users", queries.is_new),
                       ("returning_users", ~queries.is_new)):
        rows = np.flatnonzero(mask)
        if not len(rows):
            out[name] = {"num_users": 0}
            continue
        out[name] = protocols.evaluate_topk(take_queries(queries, rows), item_ids, topk[rows],
                                            ks, catalogue_size=len(item_ids))
        out[name].pop("num_new_users", None)
    return out


def shares(final_channels: Sequence[Sequence[tuple[str, ...]]], names: Sequence[str],
           top: int = TOP) -> dict[str, dict[str, float]]:
    """Each channel's share of the final top slots, mean over requests.

    `share`: slots whose item the channel retrieved (with or without others);
    `only`: slots only it retrieved. Requests with an empty list are skipped.
    """
    totals = {n: [0.0, 0.0] for n in names}
    counted = 0
    for channels in final_channels:
        slots = list(channels)[:top]
        if not slots:
            continue
        counted += 1
        for name in names:
            totals[name][0] += sum(name in c for c in slots) / len(slots)
            totals[name][1] += sum(tuple(c) == (name,) for c in slots) / len(slots)
    return {n: {f"share_of_final@{top}": s / counted if counted else None,
                f"only_share_of_final@{top}": o / counted if counted else None}
            for n, (s, o) in totals.items()}


def target_check(hits_final: np.ndarray, hits_other: np.ndarray, other: str) -> dict[str, Any]:
    """final HR@10 >= other's HR@10: the figures, met, and the paired difference over requests."""
    diff = stats.paired_difference(hits_final.astype(float), hits_other.astype(float))
    return {"a": FINAL, "b": other, f"final_hr@{TOP}": float(hits_final.mean()),
            f"b_hr@{TOP}": float(hits_other.mean()), "met": bool(hits_final.mean()
                                                                   >= hits_other.mean()),
            "mean_difference": diff["mean"], "ci": [diff["ci_low"], diff["ci_high"]],
            "verdict": diff["verdict"], "n": diff["n"]}


def funnel_figures(replayed: Sequence[Replayed], queries: protocols.Queries,
                   item_ids: Sequence[str], references: Mapping[str, np.ndarray],
                   channel_names: Sequence[str], num_candidates: int) -> dict[str, Any]:
    """Every list's figures, the channels' shares and the targets.

    Args:
      replayed: one per query, same order.
      queries: the replayed queries (targets, is_new).
      item_ids: catalogue ids (rows index them).
      references: name -> top-k rows [Q, >= FINAL_K] of a reference scorer.
      channel_names: channels to report (absent from a request = empty list).
      num_candidates: the merge's limit (HR of the whole merged set).
    Returns:
      {"final", "merged_candidates", "channels", "references", "_targets"}.
    """
    targets = target_rows(queries, item_ids)
    final = topk_matrix([r.final for r in replayed], FINAL_K)
    merged = topk_matrix([r.merged for r in replayed], max(num_candidates, FINAL_K))
    out: dict[str, Any] = {FINAL: list_figures(final, queries, item_ids)}
    out[MERGED] = list_figures(merged, queries, item_ids,
                               tuple(sorted({*KS, max(num_candidates, FINAL_K)})))
    hits = {FINAL: hits_at(final, targets, TOP)}
    share = shares([r.final_channels for r in replayed], channel_names)
    out["channels"] = {}
    for name in channel_names:
        own = topk_matrix([r.channels.get(name, np.zeros(0, np.int64)) for r in replayed],
                          FINAL_K)
        out["channels"][name] = {**list_figures(own, queries, item_ids), **share[name],
                                 "served_requests": int(sum(name in r.channels
                                                            for r in replayed))}
        hits[name] = hits_at(own, targets, TOP)
    out["references"] = {}
    for name, topk in references.items():
        out["references"][name] = list_figures(topk[:, :FINAL_K], queries, item_ids)
        hits[name] = hits_at(topk, targets, TOP)
    checks: dict[str, Any] = {}
    served = [n for n in channel_names if out["channels"][n]["served_requests"]]
    if served:
        best = max(served, key=lambda n: out["channels"][n]["all"].get(f"hr@{TOP}", 0.0))
        checks[f"final_hr@{TOP}_ge_best_channel"] = target_check(hits[FINAL], hits[best], best)
    if "als" in references:
        checks[f"final_hr@{TOP}_ge_als"] = target_check(hits[FINAL], hits["als"], "als")
    out["_targets"] = checks
    return out


def reference_topk(train: data.Arrays, queries: protocols.Queries, config: fc.FeatureConfig,
                   item_ids: Sequence[str], seed: int, names: Sequence[str] = REFERENCES
                   ) -> dict[str, np.ndarray]:
    """Top-FINAL_K rows of popularity and ALS (bench.recall_bench), history excluded."""
    item_index = {x: i for i, x in enumerate(item_ids)}
    train_matrix, _ = recall_bench.interactions(train, config, item_index)
    hist = recall_bench.history_matrix(queries, item_index)
    excluded = protocols.exclusions(queries, item_ids)
    out = {}
    for name in names:
        score = recall_bench.PEER_FITS[name](train_matrix, seed)(hist)
        out[name] = metrics.top_k_from_scores(score, len(queries), len(item_ids), FINAL_K,
                                              excluded)
    return out


# ---- the blend ----------------------------------------------------------------

# ---- one dataset -------------------------------------------------------------

def train_ranker(examples_dir: str, config: fc.FeatureConfig, vocabularies: Any, seed: int,
                 max_epochs: int | None, max_train: int | None, export_dir: str
                 ) -> dict[str, Any]:
    """NFwFM at its defaults with its learning rate chosen on validation, exported.

    The rate is chosen as the pipeline's default profile chooses it: from
    rc.TUNED_LEARNING_RATES on validation carved from Split-train, one model
    per rate, each early-stopped, the best kept
    (models.ranking.train.fit_learning_rates). The rest is the bench's
    own: in-memory batches, the config's epoch cap unless --max_epochs.
    """
    ranking = os.path.join(examples_dir, fc.RANKING)
    train = ranking_bench.load_split(inputs.split_pattern(ranking, fc.TRAIN), config, max_train)
    fit, val, cutoff = ranking_bench.carve_validation(
        train, rc.make_config(rc.NFWFM).validation_fraction)
    tuned = rc.make_config(rc.NFWFM, {"learning_rates": rc.TUNED_LEARNING_RATES})
    model, record, chosen, tuning = ranking_train.fit_learning_rates(
        tuned, lambda point: ranking_bench.train_ours(
            "nfwfm", config, vocabularies, fit, val, seed,
            tuned={"learning_rate": point.learning_rate}, max_epochs=max_epochs))
    ranking_export.export(model, export_dir)
    stopping = record["early_stopping"]
    return {"model": rc.NFWFM, "best_epoch": stopping["best_epoch"],
            "epochs_run": stopping["epochs_run"], "monitor": stopping["monitor"],
            "best_validation": stopping["best_value"], "learning_rate": chosen.learning_rate,
            "learning_rate_tuning": tuning, "validation_cutoff": cutoff,
            "fit_examples": data.num_rows(fit), "validation_examples": data.num_rows(val)}


def run_dataset(spec: str, args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Trains, pushes and serves one dataset's models, then replays its eval requests."""
    name = parallel.dataset_key(spec)
    started = time.time()
    config_path, out_dir, summary = parallel.sessionize_once(
        spec, args.work_dir, args.num_events, os.path.join(args.work_dir, "sessionized"))
    raw = datasets.resolve(spec, args.work_dir, num_events=args.num_events)
    config = fc.load(config_path)
    catalogue = data.load_catalogue(os.path.join(out_dir, "items", "*.gz"), config)
    vocabularies = load_vocabularies(config, os.path.join(out_dir, "vocab"))
    train, evals, sessions = (
        data.load_examples(inputs.split_pattern(os.path.join(out_dir, kind), split), config, kind)
        for kind, split in ((fc.RETRIEVAL, fc.TRAIN), (fc.RETRIEVAL, fc.EVAL),
                            (fc.ITEM2VEC, fc.TRAIN)))
    root = os.path.join(args.work_dir, "quick" if args.quick else "full", name)
    shutil.rmtree(root, ignore_errors=True)  # a fresh serving layout: version 1 of everything
    serving_dir = os.path.join(root, "serving")
    training: dict[str, Any] = {}
    for model in recall_bench.LEARNED:
        t0 = time.time()
        result = recall_bench.fit_learned(
            model, config, train, sessions, catalogue, vocabularies,
            recall_bench.learned_config(model, args.seed, args.max_epochs))
        push_recall(result, model, os.path.join(root, "exports", model), serving_dir)
        training[model] = {**{k: v for k, v in recall_bench.training_record(result.stats).items()
                              if k != "learning_curve"},
                           "seconds": time.time() - t0}
        log(f"[{name}] {model}: best epoch {training[model]['best_epoch']}/"
            f"{training[model]['epochs_run']} ({training[model]['seconds']:.0f}s)")
    t0 = time.time()
    training["nfwfm"] = train_ranker(
        out_dir, config, vocabularies, args.seed, args.max_epochs,
        QUICK_MAX_TRAIN if args.quick else None,
        os.path.join(serving_dir, "models", RANKING_MODEL, str(VERSION)))
    training["nfwfm"]["seconds"] = time.time() - t0
    log(f"[{name}] nfwfm: best epoch {training['nfwfm']['best_epoch']}/"
        f"{training['nfwfm']['epochs_run']} ({training['nfwfm']['seconds']:.0f}s)")

    items_table, users_table = single_file(raw.items, "items"), single_file(raw.users, "users")
    blend, blend_record = fit_validation_blend(
        train, config, serving_dir, items_table, users_table, root,
        args.blend_requests, args.seed, lambda m: log(f"[{name}] {m}"))
    with open(os.path.join(serving_dir, BLEND_FILE), "w", encoding="utf-8") as f:
        f.write(blend.to_json())  # where `make serve` reads it (serving.serve.read_blend)
    recommender = build_recommender(
        config, serving_dir, items_table, users_table,
        os.path.join(out_dir, "item_frequencies.tsv"), RecommenderSettings(blend=blend))
    queries_all = protocols.time_split(evals, config)
    queries = subsample(queries_all, args.max_requests, args.seed)
    item_ids = recommender.catalogue.ids
    t0 = time.time()
    replayed = [replay(recommender, request) for request in requests_of(queries, config)]
    replay_seconds = time.time() - t0
    log(f"[{name}] replayed {len(replayed)} requests ({replay_seconds:.0f}s)")
    references = reference_topk(train, queries, config, item_ids, args.seed)
    channel_names = [c.name for c in recommender.settings.channels] + [
        n for n in ("popular_city", "popular") if any(n in r.channels for r in replayed)]
    figures = funnel_figures(replayed, queries, item_ids, references, channel_names,
                             recommender.settings.num_candidates)
    # The ranker alone, as before the blend: the same requests' candidates
    # re-ordered by the click logit the replay recorded. A served order that
    # weighs no ranker output (a channel's order) makes no ranking Predict,
    # so there is no logit to re-order by: None, not the merge order.
    figures["ranker_only"] = list_figures(
        topk_matrix([r.ranked_by(RANKER_ONLY) for r in replayed], FINAL_K), queries, item_ids
    ) if any(r.features and CLICK_LOGIT in r.features for r in replayed) else None
    figures["_blend"] = blend_record
    figures["_data"] = {
        "sessionized": out_dir, "catalogue": len(item_ids),
        "train_examples": data.num_rows(train), "eval_examples": data.num_rows(evals),
        "requests": len(queries), "requests_with_target": int(sum(
            len(t) > 0 for t in queries_all.targets)),
        "new_user_requests": int(queries.is_new.sum()),
        "new_user_share": float(queries.is_new.mean()) if len(queries) else None,
        "cold_start_requests": int(recommender.stats["cold_start"]),
        "replay_seconds": replay_seconds,
        "replay_ms_per_request": 1000.0 * replay_seconds / max(1, len(replayed)),
        "seconds": time.time() - started}
    figures["_training"] = training
    return figures


# ---- command line ------------------------------------------------------------

def protocol_record(args: argparse.Namespace) -> dict[str, Any]:
    """How every figure was obtained (the JSON's `_protocol`)."""
    settings = RecommenderSettings()
    return {
        "replay": "every time-split eval request through serving.recommender.Recommender."
                  "recommend over the embedded model server (in-process PredictionService, "
                  "as `make serve`), FAISS indexes and an in-memory store holding the user's "
                  "history as of the request; requests whose target is in that history are "
                  "skipped",
        "settings": {"num_candidates": settings.num_candidates,
                     "per_channel": settings.per_channel,
                     "channels": [c.name for c in settings.channels],
                     "popular_fallback": settings.popular_fallback,
                     "final_k": FINAL_K},
        "models": "Item2vec, YouTubeNet, two-tower and NFwFM with their configs' defaults, "
                  "each trained by its own trainer on Split-train with validation carved from "
                  "its end and early stopping on validation (recall: HR@50; NFwFM: click AUC), "
                  "one seed; nothing tuned on the eval requests",
        "channel_figures": "each channel's own FAISS list of the same request, seen items "
                           "removed, ranked by its own scores; cold-start channels only exist "
                           "for requests without history",
        "references": "popularity and ALS (bench.recall_bench.PEER_SETTINGS) on the retrieval "
                      "Split-train, history excluded, ALS folding each request's history in",
        "final_order": f"serving.replay.fit_validation_blend: the blend fitted on replayed "
                       f"validation requests (never eval) is served when its {BLEND_FOLDS}-fold "
                       f"held-out validation HR@{TOP} beats every channel's order as served "
                       "(serving.blend.channel_order: the channel's own list, then the other "
                       "candidates in merge order); otherwise the best channel's order; "
                       "`_blend.chosen`",
        "targets": f"final HR@{TOP} >= the best channel's own HR@{TOP}, and >= ALS HR@{TOP}; "
                   "'met' on the means, with the paired difference over requests (95% "
                   "Student-t; covers request sampling, not training seeds)",
        "seed": args.seed, "max_epochs": args.max_epochs, "max_requests": args.max_requests,
        "quick": args.quick,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EVENTS} synthetic events, {QUICK_MAX_EPOCHS} epochs at "
                             f"most, {QUICK_REQUESTS} requests (a smoke run, not a result)")
    parser.add_argument("--datasets", default=",".join(datasets.DATASETS),
                        help="comma-separated built-in names and/or dataset YAMLs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_epochs", type=int, default=None,
                        help=f"cap on every model's epochs (default: their own; quick "
                             f"{QUICK_MAX_EPOCHS})")
    parser.add_argument("--max_requests", type=int, default=None,
                        help=f"replay a seeded sample of at most N requests (default: all; "
                             f"quick {QUICK_REQUESTS})")
    parser.add_argument("--blend_requests", type=int, default=None,
                        help=f"validation requests the final blend is fitted on (default "
                             f"{BLEND_REQUESTS}; quick {QUICK_BLEND_REQUESTS})")
    parser.add_argument("--num_events", type=int, default=None,
                        help=f"synthetic events (default {datasets.DEFAULT_NUM_EVENTS}; quick "
                             f"{QUICK_EVENTS})")
    parser.add_argument("--work_dir", default=os.path.join("work", "bench_funnel"))
    parser.add_argument("--out", default=None,
                        help=f"the JSON (default: {os.path.relpath(RESULTS, REPO)} for both "
                             "built-in datasets, <work_dir>/funnel-<names>.json otherwise)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="datasets run side by side in child processes (default 2)")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra/inter-op threads (0: TensorFlow's default; "
                             "children of --jobs get cores / datasets)")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_events = args.num_events or QUICK_EVENTS
        args.max_epochs = args.max_epochs or QUICK_MAX_EPOCHS
        args.max_requests = args.max_requests or QUICK_REQUESTS
        args.blend_requests = args.blend_requests or QUICK_BLEND_REQUESTS
    args.blend_requests = args.blend_requests or BLEND_REQUESTS
    args.num_events = args.num_events or datasets.DEFAULT_NUM_EVENTS
    if (args.max_epochs is not None and args.max_epochs < 1) or (
            args.max_requests is not None and args.max_requests < 1):
        parser.error("--max_epochs and --max_requests must be >= 1")
    if args.jobs < 1 or args.threads < 0:
        parser.error(f"--jobs must be >= 1 and --threads >= 0, got {args.jobs} / {args.threads}")
    args.dataset_list = [d for d in args.datasets.split(",") if d]
    if not args.dataset_list:
        parser.error("no datasets given")
    # A quick run never overwrites the recorded results.
    default = (os.path.join(args.work_dir, "funnel-quick.json") if args.quick else RESULTS)
    args.out = args.out or parallel.default_out(args.dataset_list, default, args.work_dir,
                                                "funnel")
    return args


def run_parallel(args: argparse.Namespace, argv: Sequence[str], out_dir: str,
                 log=print) -> dict[str, Any]:
    """One child process per dataset, each with an even share of the cores."""
    threads = parallel.thread_share(len(args.dataset_list))
    commands = {}
    for dataset in args.dataset_list:
        key = parallel.dataset_key(dataset)
        out = os.path.join(out_dir, f"{key}.json")
        commands[key] = ([sys.executable, "-m", "bench.funnel_bench",
                          *ranking_bench.child_args(argv), "--datasets", dataset, "--out", out,
                          "--jobs", "1", "--threads", str(threads)], out)
    return parallel.run_children(commands, log)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    started = time.time()
    model_server.set_tensorflow_threads(args.threads, args.threads)  # before any op runs
    run_info = stats.provenance(["python", "-m", "bench.funnel_bench", *argv])

    def log(message: str) -> None:
        print(f"{time.time() - started:7.1f}s {message}", flush=True)

    if args.jobs > 1 and len(args.dataset_list) > 1:
        with tempfile.TemporaryDirectory() as tmp:
            report = run_parallel(args, argv, tmp, log)
    else:
        report = {parallel.dataset_key(d): run_dataset(d, args, log) for d in args.dataset_list}
    for key, figures in report.items():
        for target, check in figures["_targets"].items():
            log(f"[{key}] {target}: {'met' if check['met'] else 'UNMET'} "
                f"(final {check[f'final_hr@{TOP}']:.4f} vs {check['b']} "
                f"{check[f'b_hr@{TOP}']:.4f}, {check['verdict']})")
    report["_protocol"] = protocol_record(args)
    report["_run"] = {**run_info, "total_seconds": time.time() - started,
                      "datasets": args.dataset_list, "jobs": args.jobs}
    stats.write_report(args.out, report)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(parallel.guarded(main))
