"""Item2vec ablation on VALIDATION only: 58.com's negatives and the seed's settings.

    python -m bench.item2vec_ablation [--quick] [--seeds 5] [--datasets synthetic,movielens]
        [--variants seed_unigram,seed_city,...] [--max_epochs 20] [--max_pairs_per_epoch N]
        [--jobs 2] [--out bench/results/item2vec_ablation.json]

Data: bench.recall_bench's (the same built-in datasets through the real
sessionize job, bench.parallel.sessionize_once; raw data prepared under
--data_dir, examples under --work_dir). Item2vec trains on the item2vec
Split-train sessions with its own trainer (models.item2vec.train.fit): the
validation split is the latest 10% of the training time span, the figure of
a run is the trainer's validation next-item HR@50 at its best epoch (the
early-stopping monitor, optimistic by the same selection for every
variant). The eval split is never read.

Variants (VARIANTS) change the seed's settings (SEED_SETTINGS: dim 128,
window 64, 2 negatives per positive, sessions >= 5, unigram^0.75
negatives): same-city and same-category negatives (58.com; half of each
row's negatives from the positive's city / category, the rest unigram) for
the roles the dataset's feature config sets, the narrower widths the
profiles and the old bench used (dim 32, dim 64), and the user vector's
history: the mean of the last 1 or 20 known clicks instead of the config's
5 (recent_1, recent_20; 20 was the default before the first ablation chose
5 on validation). Each variant runs the same
seeds as `seed_unigram`; its figure is the paired difference to it by seed
with a 95% Student-t interval (bench.stats.paired_difference); an interval
containing 0 is a tie.

Coverage (issue 13 item 3): for every run, the validation queries are also
scored with the trained vectors only ("trained_only") and with the imputed
vectors of every other catalogue item added ("with_imputed"):
catalogue_coverage@50 (share of the catalogue in at least one query's top
50), reach (share of the catalogue with a vector) and HR@50 on the queries
whose last click has a vector in that set (and, with the imputed vectors,
also on the trained-only queries: what the imputed candidates cost).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from beam_jobs import datasets  # noqa: E402
from bench import parallel, stats  # noqa: E402
from bench.ranking_bench import child_args  # noqa: E402
from feature_contract import feature_config as fc  # noqa: E402
from models import inputs  # noqa: E402
from models.item2vec import train as i2v_train  # noqa: E402
from models.item2vec.config import Item2VecConfig  # noqa: E402
from models.layers.feature_embedding import load_vocabularies  # noqa: E402
from models.recall import data, metrics, training  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "item2vec_ablation.json")
BASELINE = "seed_unigram"
# Meitu's / 58.com's published Item2vec settings (sessions >= 5 is the
# feature configs' min_session_len, which sessionize applies too).
SEED_SETTINGS: dict[str, Any] = {"dim": 128, "window": 64, "negatives_per_positive": 2,
                                 "min_session_len": 5, "attribute_role": None}
# Variant -> its change to SEED_SETTINGS, in run order (a run cut short keeps
# the first ones).
VARIANTS: dict[str, dict[str, Any]] = {
    BASELINE: {},
    "seed_category": {"attribute_role": fc.ROLE_ITEM_CATEGORY},
    "seed_city": {"attribute_role": fc.ROLE_ITEM_CITY},
    "dim_32": {"dim": 32},  # pipelines/profiles.py's default profile before this ablation
    "dim_64": {"dim": 64},  # the config's default d0a5222..acf7c57 (a tie there)
    # The user vector's history: the mean of the last N known clicks (the
    # config's default 5) against the last one and the old default 20.
    "recent_1": {"recent_clicks": 1},
    "recent_20": {"recent_clicks": 20},
}
K = training.VALIDATION_K
DEFAULT_SEEDS, QUICK_SEEDS = 5, 2
# Bounds each epoch's cost, the same for every variant: MovieLens' long
# sessions give 2.4M window-64 pairs; with 200k a seed's run takes ~25 s
# there (its validation HR@50 peaked after the first epoch in a trial run).
DEFAULT_MAX_PAIRS, QUICK_MAX_PAIRS = 200_000, 20_000
DEFAULT_MAX_EPOCHS, QUICK_MAX_EPOCHS = 20, 2


def variant_hparams(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Item2VecConfig hparams of a variant: SEED_SETTINGS + its change + the run's schedule.

    Raises:
      KeyError: an unknown variant.
    """
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; known: {list(VARIANTS)}")
    return {**SEED_SETTINGS, **VARIANTS[name], "seed": seed, "max_epochs": args.max_epochs,
            "max_pairs_per_epoch": args.max_pairs_per_epoch}


def applicable(name: str, config: fc.FeatureConfig) -> str | None:
    """None when the variant can run on the dataset, else why not (a role it lacks)."""
    role = VARIANTS[name].get("attribute_role")
    if role and config.role(role) is None:
        return f"the feature config sets no {role} role (roles: {dict(config.roles)})"
    return None


def coverage_record(result: i2v_train.Item2VecResult, validation_sessions: Sequence,
                    catalogue_size: int) -> dict[str, Any]:
    """Validation top-K coverage and HR of the trained vectors alone and with the imputed ones.

    Trained rows come first in result.item_vectors, so the trained-only set is
    a prefix of the exported one.
    """
    trained = result.stats["trained_items"]
    out = {}
    for label, count in (("trained_only", trained), ("with_imputed", len(result.item_ids))):
        # Fit-period prior: the served one counts the validation clicks scored here.
        ids, vectors = result.item_ids[:count], result.validation_vectors[:count]
        # The trainer's own validation queries (every click after a session's first).
        queries = i2v_train.next_item_queries(validation_sessions, ids,
                                              result.config.recent_clicks, every_position=True)
        top = i2v_train.next_item_top_k(queries, vectors, K, result.prior_column)
        out[label] = {"items": count, "reach": count / catalogue_size,
                      "queries": len(queries),
                      f"hr@{K}": i2v_train.next_item_hit_rate(queries, vectors, K,
                                                              result.prior_column),
                      f"catalogue_coverage@{K}": metrics.catalogue_coverage(
                          top, catalogue_size, K)}
    # The trained-only queries again with the imputed candidates competing:
    # what imputation costs the hits the trained vectors had (their rows are
    # the same: trained items are a prefix).
    queries = i2v_train.next_item_queries(validation_sessions, result.item_ids[:trained],
                                          result.config.recent_clicks, every_position=True)
    out["with_imputed"][f"hr@{K}_on_trained_only_queries"] = i2v_train.next_item_hit_rate(
        queries, result.validation_vectors, K, result.prior_column)
    return out


class DatasetAblation:
    """Every variant and seed on one dataset's item2vec sessions (eval never loaded)."""

    def __init__(self, spec: str, args: argparse.Namespace, log: Callable[[str], None]):
        self.args, self.log = args, log
        self.name = parallel.dataset_key(spec)
        config_path, out, _ = parallel.sessionize_once(
            spec, args.data_dir, args.num_events, os.path.join(args.work_dir, "sessionized"))
        self.config = fc.load(config_path)
        self.catalogue = data.load_catalogue(os.path.join(out, "items", "*.gz"), self.config)
        item_name = self.config.item_id_feature.name
        self.vocabulary = load_vocabularies(self.config, os.path.join(out, "vocab"))[item_name]
        self.sessions = data.load_examples(
            inputs.split_pattern(os.path.join(out, fc.ITEM2VEC), fc.TRAIN), self.config,
            fc.ITEM2VEC)
        # The trainer's own carve (same sessions, same fraction): only its
        # validation sessions are scored here.
        carve = training.carve_validation(self.sessions,
                                          Item2VecConfig().validation_fraction, self.name)
        self.validation_sessions = carve.validation[fc.SESSION_ITEMS_KEY]
        self.meta = {"sessionized": out, "catalogue": len(self.catalogue),
                     "vocabulary": len(self.vocabulary),
                     "train_sessions": data.num_rows(self.sessions), **carve.summary(),
                     "roles": dict(self.config.roles)}

    def run(self, names: Sequence[str]) -> dict[str, Any]:
        runs: dict[str, list[dict[str, Any]]] = {}
        skipped = {}
        for name in names:
            why = applicable(name, self.config)
            if why:
                skipped[name] = why
                self.log(f"[{self.name}] {name}: skipped, {why}")
                continue
            for seed in self.args.seed_list:
                runs.setdefault(name, []).append(self.run_one(name, seed))
        return {"meta": self.meta, "skipped": skipped, "variants": summarize(runs)}

    def run_one(self, name: str, seed: int) -> dict[str, Any]:
        started = time.perf_counter()
        config = Item2VecConfig.from_hparams(variant_hparams(name, seed, self.args))
        result = i2v_train.fit(self.config, self.sessions, self.vocabulary, self.catalogue,
                               config)
        s = result.stats["early_stopping"]
        run = {"seed": seed, f"val_hr@{K}": s["best_value"], "best_epoch": s["best_epoch"],
               "epochs_run": s["epochs_run"], "pairs": result.stats["pairs"],
               "trained_items": result.stats["trained_items"],
               "imputed_items": result.stats["imputed_items"],
               "imputed_by": result.stats["imputed_by"],
               "validation_queries": result.stats["validation"]["validation_queries"],
               "coverage": coverage_record(result, self.validation_sessions,
                                           len(self.catalogue)),
               "seconds": time.perf_counter() - started}
        self.log(f"[{self.name}] {name} seed {seed}: val hr@{K} {run[f'val_hr@{K}']:.4f} "
                 f"best epoch {run['best_epoch']}/{run['epochs_run']} "
                 f"({run['seconds']:.0f}s)")
        return run


def summarize(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Per variant: mean validation HR@50, coverage means and the paired difference to BASELINE.

    Args:
      runs: variant -> per-seed records (BASELINE among them for a difference).
    Returns:
      variant -> {"hparams", "seeds", "val_hr@50_runs", "val_hr@50_mean",
      "coverage" (means of the coverage records), "vs_baseline"
      (stats.paired_difference over the seeds both ran, None for BASELINE or
      without it), "runs"}.
    """
    metric = f"val_hr@{K}"
    base = {r["seed"]: r[metric] for r in runs.get(BASELINE, [])}
    out = {}
    for name, cand in runs.items():
        common = [r for r in cand if r["seed"] in base]
        diff = None
        if name != BASELINE and common:
            diff = stats.paired_difference([r[metric] for r in common],
                                           [base[r["seed"]] for r in common])
        coverage = {label: {key: float(np.mean([r["coverage"][label][key] for r in cand]))
                            for key in cand[0]["coverage"][label]}
                    for label in cand[0]["coverage"]}
        out[name] = {"hparams": VARIANTS[name], "seeds": [r["seed"] for r in cand],
                     f"{metric}_runs": [r[metric] for r in cand],
                     f"{metric}_mean": float(np.mean([r[metric] for r in cand])),
                     "coverage": coverage, "vs_baseline": diff, "runs": list(cand)}
    return out


def conclusions(report: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """Per variant: its verdict per dataset against BASELINE and overall.

    Overall: "better" when it wins somewhere and loses nowhere, "worse" when it
    loses somewhere, "tie" otherwise (a dataset where it could not run counts
    for neither).
    """
    out = {}
    dataset_names = [d for d in report if not d.startswith("_")]
    for name in names:
        if name == BASELINE:
            continue
        per = {}
        for d in dataset_names:
            v = report[d]["variants"].get(name)
            diff = v and v["vs_baseline"]
            per[d] = ({"mean": diff["mean"], "ci": [diff["ci_low"], diff["ci_high"]],
                       "n": diff["n"], "verdict": diff["verdict"]} if diff else
                      {"skipped": report[d]["skipped"].get(name, "not run")})
        verdicts = [p["verdict"] for p in per.values() if "verdict" in p]
        overall = ("worse" if stats.LOSS in verdicts else
                   "better" if stats.WIN in verdicts else "tie")
        out[name] = {"overall": overall, "vs_baseline": per}
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SEEDS} seeds, {QUICK_MAX_EPOCHS} epochs of "
                             f"{QUICK_MAX_PAIRS} pairs (a smoke run, not a result)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--datasets", default=",".join(datasets.DATASETS))
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated names of VARIANTS ({BASELINE} always included)")
    parser.add_argument("--max_epochs", type=int, default=None)
    parser.add_argument("--max_pairs_per_epoch", type=int, default=None)
    parser.add_argument("--num_events", type=int, default=datasets.DEFAULT_NUM_EVENTS,
                        help="synthetic events (bench.recall_bench's)")
    parser.add_argument("--data_dir", default=os.path.join("work", "bench_recall"),
                        help="where the built-in raw datasets are prepared (shared with "
                             "bench.recall_bench)")
    parser.add_argument("--work_dir", default=os.path.join("work", "item2vec_ablation"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    quick = args.quick
    args.seeds = args.seeds or (QUICK_SEEDS if quick else DEFAULT_SEEDS)
    args.max_epochs = args.max_epochs or (QUICK_MAX_EPOCHS if quick else DEFAULT_MAX_EPOCHS)
    args.max_pairs_per_epoch = args.max_pairs_per_epoch or (
        QUICK_MAX_PAIRS if quick else DEFAULT_MAX_PAIRS)
    args.seed_list = list(range(args.seeds))
    args.variant_list = list(dict.fromkeys([BASELINE] + [n for n in args.variants.split(",")
                                                          if n]))
    for name in args.variant_list:
        variant_hparams(name, 0, args)  # unknown names fail before any training
    args.dataset_list = [d for d in args.datasets.split(",") if d]
    args.out = args.out or parallel.default_out(
        args.dataset_list, RESULTS if not quick else os.path.join(
            args.work_dir, "item2vec_ablation-quick.json"), args.work_dir, "item2vec_ablation")
    return args


def protocol_record(args: argparse.Namespace) -> dict[str, Any]:
    """How every figure was obtained (the JSON's `_protocol`)."""
    return {
        "data": "bench.recall_bench's datasets through the sessionize job; Item2vec trains "
                "on the item2vec Split-train sessions; the eval split is never read",
        "validation": f"the trainer's carve: sessions starting in the last "
                      f"{Item2VecConfig().validation_fraction:.0%} of the training time span "
                      f"(models.recall.training.carve_validation)",
        "figure": f"validation next-item HR@{K} at the best epoch (the early-stopping "
                  f"monitor; optimistic by the same selection for every variant)",
        "training": f"early stopping (patience {Item2VecConfig().patience}), cap "
                    f"{args.max_epochs} epochs of at most {args.max_pairs_per_epoch} "
                    f"skip-gram pairs each (a fresh random subset per epoch)",
        "baseline": {"name": BASELINE, "hparams": SEED_SETTINGS},
        "variants": {n: VARIANTS[n] for n in args.variant_list},
        "comparison": "variant - baseline paired by seed, 95% Student-t interval "
                      "(bench.stats.paired_difference); an interval containing 0 is a tie",
        "coverage": f"per run, the validation queries scored with the trained vectors only "
                    f"and with the imputed vectors added (models.item2vec.train."
                    f"impute_vectors): catalogue_coverage@{K} (models.recall.metrics), "
                    f"reach = share of the catalogue with a vector, HR@{K} on the queries "
                    f"whose last click has a vector in that set",
        "seeds": args.seed_list,
        "quick": args.quick,
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    parallel.set_tf_threads(args.threads)
    started = time.perf_counter()
    run_info = stats.provenance(["python", "-m", "bench.item2vec_ablation", *argv])

    def log(message: str) -> None:
        print(f"{time.perf_counter() - started:7.1f}s {message}", flush=True)

    if args.jobs > 1 and len(args.dataset_list) > 1:
        threads = args.threads or parallel.thread_share(len(args.dataset_list))
        with tempfile.TemporaryDirectory() as tmp:
            commands = {}
            for spec in args.dataset_list:
                out = os.path.join(tmp, f"{parallel.dataset_key(spec)}.json")
                commands[parallel.dataset_key(spec)] = (
                    [sys.executable, "-m", "bench.item2vec_ablation", *child_args(argv),
                     "--datasets", spec, "--out", out, "--jobs", "1", "--threads",
                     str(threads)], out)
            report = parallel.run_children(commands, log)
    else:
        report = {}
        for spec in args.dataset_list:
            report[parallel.dataset_key(spec)] = DatasetAblation(spec, args, log).run(
                args.variant_list)
    report["_conclusions"] = conclusions(report, args.variant_list)
    report["_protocol"] = protocol_record(args)
    report["_run"] = {**run_info, "total_seconds": time.perf_counter() - started,
                      "jobs": args.jobs}
    stats.write_report(args.out, report)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(parallel.guarded(main))
