"""NFwFM ablation search on VALIDATION only: what measurably helps NFwFM.

    python -m bench.nfwfm_ablation [--seeds 3] [--datasets synthetic,movielens]
        [--candidates default,lookup_l2,...] [--jobs 2] [--threads 1]
        [--out bench/results/nfwfm_ablation.json]

Each candidate is one change to NFwFM's default config (CANDIDATES), trained
exactly as bench.ranking_bench trains NFwFM at its quick size (same data, same
fit/validation carve, same early stopping; the functions are imported from
there). The eval split is never read: the figure of a run is its validation
click AUC at the best epoch (the early-stopping monitor, so it is optimistic
by the same selection for every candidate).

Every candidate runs the same seeds as the default; its figure is the paired
difference to the default (candidate - default, by seed) with a 95% Student-t
interval (bench.stats). A candidate "helps" when it wins on at least one
dataset and loses on none (an interval containing 0 is a tie), and it must
stay within the cost budget: <= 1/6 of NFM-200's params and per-example FLOPs.

The learning rate of every candidate is the one bench.ranking_bench chose for
NFwFM on that dataset (on validation), read from --lr_from; a candidate does
not get its own learning-rate search.

Datasets run in parallel child processes (`--jobs 2`); each child rewrites its
partial JSON under --work_dir after every run, `--resume` keeps the runs a
partial already holds (adding candidates or seeds later), and `--merge_only`
builds the output from whatever partials exist (for a run cut short).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from bench import parallel, stats  # noqa: E402
from bench import ranking_bench as rb  # noqa: E402
from models import validation  # noqa: E402
from models.layers.feature_embedding import load_vocabularies  # noqa: E402
from models.ranking import complexity  # noqa: E402
from models.ranking import config as rc  # noqa: E402
from models.ranking import train  # noqa: E402

DEFAULT = "default"
# Candidate name -> its change to NFwFM's default config, in run order
# (most promising first: a run cut short keeps complete candidates).
CANDIDATES: dict[str, dict[str, Any]] = {
    DEFAULT: {},
    # Embedding regularization on the rows a batch uses (DIN's mini-batch-aware L2).
    "lookup_l2_1e-3": {"lookup_l2": 1e-3},
    "lookup_l2_1e-4": {"lookup_l2": 1e-4},
    # More of the published Bernoulli dropout on the interaction vector.
    "keep_prob_0.6": {"keep_prob": 0.6},
    "no_first_order": {"use_first_order": False},
    # Pooling of tags and history inside their field (default: mean).
    "pooling_sqrtn": {"pooling": "sqrtn"},
    # Batch norm on the interaction vector before the MLP (the NFM paper's).
    "interaction_batch_norm": {"interaction_batch_norm": True},
    "pooling_sum": {"pooling": "sum"},
    # Halve the learning rate after every epoch (start fast, then settle).
    "lr_decay_0.5": {"learning_rate_decay": 0.5},
    # A d-vector weight per field pair instead of a scalar (FvFM, Sun et al.
    # 2021): same FLOPs, (pairs + fields) * (d - 1) more parameters.
    "pair_weights_vector": {"pair_weights": "vector"},
    # Wider embeddings for a narrower MLP, still within 1/6 of NFM-200's cost.
    "width_32_mlp_48": {"embedding_dim": 32, "hidden_units": [48]},
}
COST_BUDGET = 1.0 / 6.0
HELPS, HURTS, NEUTRAL = "helps", "hurts", "no measurable effect"


def chosen_learning_rates(path: str) -> dict[str, float]:
    """dataset -> NFwFM's learning rate chosen on validation by bench.ranking_bench.

    Raises:
      FileNotFoundError: no ranking results at `path`.
    """
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    return {d: float(v["_tuning"]["chosen"]["nfwfm"]["learning_rate"])
            for d, v in report.items()
            if not d.startswith("_") and "nfwfm" in v.get("_tuning", {}).get("chosen", {})}


def candidate_hparams(name: str, learning_rate: float | None) -> dict[str, Any]:
    """The hparams of candidate `name` on top of NFwFM's defaults.

    Raises:
      KeyError: an unknown candidate.
    """
    if name not in CANDIDATES:
        raise KeyError(f"unknown candidate {name!r}; known: {list(CANDIDATES)}")
    lr = {"learning_rate": learning_rate} if learning_rate else {}
    return {**lr, **CANDIDATES[name]}


def cost_ratios(config: rc.RankingConfig, features: fc.FeatureConfig,
                num_rows: Mapping[str, int]) -> dict[str, Any]:
    """Params and FLOPs of `config` and their ratios to NFM-200's on the same vocabularies."""
    nfm = rc.make_config(rc.NFM)
    params = complexity.count_params(config, features, num_rows, include_training_only=False)
    flops = complexity.flops_per_example(config, features)
    nfm_params = complexity.count_params(nfm, features, num_rows, include_training_only=False)
    nfm_flops = complexity.flops_per_example(nfm, features)
    out = {"params": params, "flops_per_example": flops,
           "params_ratio_to_nfm": params / nfm_params, "flops_ratio_to_nfm": flops / nfm_flops}
    out["within_budget"] = bool(out["params_ratio_to_nfm"] <= COST_BUDGET
                                and out["flops_ratio_to_nfm"] <= COST_BUDGET)
    return out


def best_epoch_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    """Validation click AUC and log loss at the early-stopping best epoch."""
    stopping = record["early_stopping"]
    best = stopping["best_epoch"]
    point = next((p for p in record["learning_curve"] if p["epoch"] == best), None)
    return {"val_auc": stopping["best_value"],
            "val_logloss": point.get("val_click_logloss") if point else None,
            "best_epoch": best, "epochs_run": stopping["epochs_run"]}


def summarize(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Per candidate: mean validation AUC and the paired difference to the default.

    Args:
      runs: candidate -> [{"seed", "val_auc", ...}, ...] (the default among them).
    Returns:
      candidate -> {"seeds", "val_auc_mean", "val_auc_runs", "vs_default"
      (stats.paired_difference over the seeds both have, or None)}.
    """
    base = {r["seed"]: r["val_auc"] for r in runs.get(DEFAULT, [])}
    out = {}
    for name, cand in runs.items():
        values = [r["val_auc"] for r in cand]
        common = [r for r in cand if r["seed"] in base]
        diff = None
        if name != DEFAULT and common:
            diff = stats.paired_difference([r["val_auc"] for r in common],
                                           [base[r["seed"]] for r in common])
        out[name] = {"seeds": [r["seed"] for r in cand], "val_auc_runs": values,
                     "val_auc_mean": float(np.mean(values)) if values else None,
                     "vs_default": diff}
    return out


def verdict(per_dataset: Mapping[str, Mapping[str, Any] | None]) -> str:
    """HELPS: a win on one dataset or more and no loss; HURTS: a loss anywhere.

    Args:
      per_dataset: dataset -> that candidate's "vs_default" (None: not run).
    Returns:
      HELPS, HURTS or NEUTRAL (ties everywhere, or a dataset not measured).
    """
    diffs = list(per_dataset.values())
    if any(d is not None and d["verdict"] == stats.LOSS for d in diffs):
        return HURTS
    if any(d is None for d in diffs):
        return NEUTRAL
    return HELPS if any(d["verdict"] == stats.WIN for d in diffs) else NEUTRAL


class DatasetAblation:
    """Runs the candidates on one dataset's fit/validation split (eval never loaded)."""

    def __init__(self, dataset: str, args: argparse.Namespace, log: Callable[[str], None]):
        self.dataset, self.args, self.log = dataset, args, log
        self.commit = stats.git_commit()  # per run: --resume may mix runs of two commits
        data = rb.prepare_data(dataset, args.data_dir, args.num_events)
        self.features = fc.load(data["config_path"])
        self.vocabs = load_vocabularies(self.features, data["vocab_dir"])
        train_data = rb.load_split(data["train_pattern"], self.features, args.max_train)
        self.fit_data, self.val_data, cutoff = rb.carve_validation(
            train_data, validation.DEFAULT_VALIDATION_FRACTION)
        self.meta = {"examples_dir": data["examples_dir"], "validation_cutoff": cutoff,
                     "fit_examples": rb._num_rows(self.fit_data),
                     "validation_examples": rb._num_rows(self.val_data),
                     "validation_click_positives": int(self.val_data[fc.CLICK_LABEL].sum())}

    def run(self, names: Sequence[str], learning_rate: float | None, partial: str
            ) -> dict[str, Any]:
        runs, costs = (previous_runs(partial, self.dataset, learning_rate) if self.args.resume
                       else ({}, {}))
        for name in names:
            hparams = candidate_hparams(name, learning_rate)
            runs.setdefault(name, [])
            done = {r["seed"] for r in runs[name]}
            for seed in range(self.args.seeds):
                if seed in done:
                    continue
                t0 = time.perf_counter()
                model, record = rb.train_ours("nfwfm", self.features, self.vocabs,
                                              self.fit_data, self.val_data, seed, hparams,
                                              self.args.max_epochs)
                if name not in costs:
                    costs[name] = cost_ratios(model.ranking_config, self.features,
                                              model.num_rows)
                run = {"seed": seed, **best_epoch_metrics(record),
                       "seconds": time.perf_counter() - t0, "commit": self.commit}
                runs[name].append(run)
                self.log(f"[{self.dataset}] {name} seed {seed}: val auc {run['val_auc']:.4f} "
                         f"best epoch {run['best_epoch']}/{run['epochs_run']} "
                         f"({run['seconds']:.0f}s)")
                self._write(partial, names, learning_rate, runs, costs)
        return self._report(names, learning_rate, runs, costs)

    def _report(self, names, learning_rate, runs, costs) -> dict[str, Any]:
        summary = summarize(runs)
        return {"learning_rate": learning_rate, "meta": self.meta,
                "requested": list(names), "completed": [n for n in runs if len(
                    runs[n]) >= self.args.seeds],
                "candidates": {n: {"hparams": CANDIDATES[n], **costs.get(n, {}),
                                   **summary[n], "runs": runs[n]} for n in runs}}

    def _write(self, path, names, learning_rate, runs, costs) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({self.dataset: self._report(names, learning_rate, runs, costs)}, f,
                      indent=1)


def previous_runs(path: str, dataset: str, learning_rate: float | None
                  ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """(runs, costs) of a partial JSON from an earlier run of the same dataset, to resume.

    Raises:
      ValueError: the earlier run used another learning rate (not comparable).
    """
    if not os.path.exists(path):
        return {}, {}
    with open(path, encoding="utf-8") as f:
        old = json.load(f)[dataset]
    if old["learning_rate"] != learning_rate:
        raise ValueError(f"{path} used learning rate {old['learning_rate']}, not "
                         f"{learning_rate}: start without --resume")
    cost_keys = ("params", "flops_per_example", "params_ratio_to_nfm", "flops_ratio_to_nfm",
                 "within_budget")
    runs = {n: list(c["runs"]) for n, c in old["candidates"].items()}
    costs = {n: {k: c[k] for k in cost_keys if k in c} for n, c in old["candidates"].items()}
    return runs, costs


def conclusions(report: Mapping[str, Any], datasets: Sequence[str]) -> dict[str, Any]:
    """Per candidate: its verdict over the datasets and the per-dataset AUC difference."""
    names = list(dict.fromkeys(n for d in datasets for n in report[d]["candidates"]))
    out = {}
    for name in names:
        if name == DEFAULT:
            continue
        diffs = {d: report[d]["candidates"].get(name, {}).get("vs_default") for d in datasets}
        within = all(report[d]["candidates"].get(name, {}).get("within_budget", False)
                     for d in datasets if name in report[d]["candidates"])
        out[name] = {"verdict": verdict(diffs), "within_budget": within,
                     "val_auc_diff": {d: None if v is None else {
                         "mean": v["mean"], "ci": [v["ci_low"], v["ci_high"]], "n": v["n"],
                         "verdict": v["verdict"]} for d, v in diffs.items()}}
    return out


def merge(partials: Mapping[str, str], datasets: Sequence[str]) -> dict[str, Any]:
    """{dataset: report} from the children's (possibly partial) JSON files; missing skipped."""
    out = {}
    for dataset in datasets:
        path = partials[dataset]
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                out[dataset] = json.load(f)[dataset]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", default="synthetic,movielens")
    parser.add_argument("--candidates", default=",".join(CANDIDATES),
                        help="comma-separated names of CANDIDATES (default always included)")
    parser.add_argument("--num_events", type=int, default=60_000,
                        help="synthetic events (ranking_bench --quick's 60000)")
    parser.add_argument("--max_train", type=int, default=30_000,
                        help="training examples kept per dataset (ranking_bench --quick's)")
    parser.add_argument("--max_epochs", type=int, default=6)
    parser.add_argument("--lr_from", default=os.path.join("bench", "results", "ranking.json"),
                        help="ranking bench JSON whose NFwFM learning rate each dataset uses")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--data_dir", default=os.path.join("work", "bench_ranking"))
    parser.add_argument("--work_dir", default=os.path.join("work", "nfwfm_ablation"))
    parser.add_argument("--resume", action="store_true",
                        help="keep the (candidate, seed) runs already in --work_dir's partials")
    parser.add_argument("--merge_only", action="store_true",
                        help="write --out from the partial JSONs in --work_dir")
    parser.add_argument("--out", default=os.path.join("bench", "results", "nfwfm_ablation.json"))
    args = parser.parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    names = list(dict.fromkeys([DEFAULT] + [n for n in args.candidates.split(",") if n]))
    for name in names:
        candidate_hparams(name, None)  # unknown names fail before any training
    parallel.set_tf_threads(args.threads)
    tf.get_logger().setLevel("ERROR")
    started = time.perf_counter()
    run_info = stats.provenance(["python", "-m", "bench.nfwfm_ablation", *argv])
    os.makedirs(args.work_dir, exist_ok=True)
    partials = {d: os.path.join(args.work_dir, f"{d}.json") for d in datasets}

    def log(message: str) -> None:
        print(f"{time.perf_counter() - started:7.1f}s {message}", flush=True)

    if args.merge_only:
        report = merge(partials, datasets)
    elif args.jobs > 1 and len(datasets) > 1:
        threads = args.threads or parallel.thread_share(len(datasets))
        commands = {d: ([sys.executable, "-m", "bench.nfwfm_ablation",
                         *rb.child_args(argv), "--datasets", d, "--jobs", "1",
                         "--threads", str(threads), "--out", os.path.join(
                             tempfile.gettempdir(), f"nfwfm_ablation_{d}_{os.getpid()}.json")],
                        partials[d]) for d in datasets}
        report = parallel.run_children(commands, log)
    else:
        rates = chosen_learning_rates(args.lr_from)
        report = {}
        for d in datasets:
            report[d] = DatasetAblation(d, args, log).run(names, rates.get(d), partials[d])
    done = [d for d in datasets if d in report]
    report["_conclusions"] = conclusions(report, done)
    report["_protocol"] = {
        "data": f"bench.ranking_bench's quick size: {args.max_train} training examples per "
                f"dataset (synthetic: {args.num_events} events), its fit/validation carve "
                f"(last {validation.DEFAULT_VALIDATION_FRACTION:.0%} of the train time span); "
                "the eval split is never read",
        "training": f"bench.ranking_bench.train_ours('nfwfm', ...): early stopping on "
                    f"validation click AUC, cap {args.max_epochs} epochs, best epoch's weights",
        "learning_rate": f"NFwFM's, chosen on validation by bench.ranking_bench ({args.lr_from})",
        "figure": "validation click AUC at the best epoch (the early-stopping monitor)",
        "comparison": "candidate - default paired by seed, 95% Student-t interval; an "
                      "interval containing 0 is a tie",
        "helps": "wins on >= 1 dataset and loses on none, within <= 1/6 of NFM-200's params "
                 "and FLOPs",
        "seeds": args.seeds,
        "candidates": {n: CANDIDATES[n] for n in names},
    }
    report["_run"] = {**run_info, "total_seconds": time.perf_counter() - started,
                      "datasets_completed": done}
    stats.write_report(args.out, report)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(parallel.guarded(main))
