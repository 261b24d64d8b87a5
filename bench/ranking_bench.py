"""Ranking benchmark: NFM vs NFwFM (+ ablations, multi-task) vs baselines and DeepCTR peers.

    python -m bench.ranking_bench [--quick] [--seeds 3] [--num_events 200000]
        [--datasets synthetic,movielens] [--work_dir work/bench_ranking]
        [--out bench/results/ranking.json]

Data: the real pipeline. `beam_jobs.datasets.prepare` makes the raw tables
(synthetic log or MovieLens-100k) and `python -m beam_jobs.sessionize` writes
the ranking examples and vocabularies; every model, ours and DeepCTR's, sees
the same train / eval examples. If the pipeline fails, the benchmark falls
back to models.ranking.synthetic_examples and says so in `_meta.data_source`.

Settings are chosen on validation data, never on eval (the JSON's
`_protocol` records all of it):

    python -m bench.ranking_bench --tune      # writes bench/results/ranking_tuning.json
    python -m bench.ranking_bench             # reads it

`--tune` carves a validation split from TRAIN (its last 10% by timestamp),
trains each tuned model on the rest with seed 0 and every point of its grid,
and keeps the point with the best validation click AUC. Grid: learning rate
{0.003, 0.01, 0.02} x two variants, the same 6 runs for NFM (batch norm on
the Bi-Interaction vector or not, as in the NFM paper), NFwFM (same) and the
DeepCTR NFM peer (its bi_dropout 0 or 0.2); multi-task uncertainty NFwFM is
tuned on top of NFwFM's choice (click loss weight 1 or 4, or one MLP per
task; 9 runs). Ablations (no FM module, no dropout, follow-only) take
NFwFM's choice and the other multi-task losses multi-task uncertainty's;
LR, DeepFM, DCN and DeepCTR FwFM keep their defaults (not tuned: stated in
`_protocol.untuned`). Every model trains `--epochs` (1) epochs with the same
optimizer (lazy Adam) and batch size; no early stopping (time budget: the
whole benchmark must stay under 30 minutes on 2 shared cores).

Each model is then trained `--seeds` times (different init and shuffling) on
the full train split and evaluated on the eval split (time split, as written
by sessionize). Writes
{dataset: {model: {auc_mean, auc_std, logloss_mean, gauc_mean, params,
flops_per_example, train_examples_per_s, score_examples_per_s,
follow_auc_mean, sigma, ...}, "_meta": {...}, "_targets": {...}}}; NFM, NFwFM
and multi-task NFwFM also get `score_500_p50_ms`: the exported SavedModel's
`score_candidates` signature scoring 500 candidates for one user, in-process,
p50 of 300 calls after 20 warm-up calls.

DeepCTR 0.9.3 imports `tensorflow.python.keras`, which TF 2.16+ no longer
ships; `_import_deepctr` points those module names at tf_keras first.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from beam_jobs import feature_config as fc  # noqa: E402
from models import inputs  # noqa: E402
from models.layers.feature_embedding import FeatureIds, load_vocabularies  # noqa: E402
from models.layers.feature_embedding import ordered_feature_names  # noqa: E402
from models.ranking import config as rc  # noqa: E402
from models.ranking import export, metrics, synthetic_examples, train  # noqa: E402

# name -> (model, hparams) of our models.
OUR_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "nfm": (rc.NFM, {}),
    "nfwfm": (rc.NFWFM, {}),
    "nfwfm_no_fm": (rc.NFWFM, {"use_fm_module": False}),
    "nfwfm_no_dropout": (rc.NFWFM, {"use_interaction_dropout": False}),
    "multitask_sum": (rc.MULTITASK_NFWFM, {"loss_mode": rc.LOSS_SUM}),
    "multitask_reweight": (rc.MULTITASK_NFWFM, {"loss_mode": rc.LOSS_REWEIGHT}),
    "multitask_uncertainty": (rc.MULTITASK_NFWFM, {"loss_mode": rc.LOSS_UNCERTAINTY}),
    "follow_single": (rc.NFWFM, {"tasks": (fc.FOLLOW_LABEL,)}),
    "lr": (rc.LR, {}),
    "deepfm": (rc.DEEPFM, {}),
    "dcn": (rc.DCN, {}),
}
PEERS = ("deepctr_nfm", "deepctr_fwfm")

# ---- hyperparameter selection (on a validation split of TRAIN, never eval) --------
VALIDATION_FRACTION = 0.1
# Every tuned model gets the same learning-rate grid (the default 3e-3 included)
# and one seed per point: the same budget for ours and the DeepCTR peer.
LR_GRID = (0.003, 0.01, 0.02)
# name -> extra grid axes on top of LR_GRID (label, hparams): two variants
# each, so every tuned model (ours and the peer) gets 2 x 3 runs.
TUNE_VARIANTS: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    # Batch norm on the Bi-Interaction vector, as in the NFM paper.
    "nfm": (("base", {}), ("batch_norm", {"interaction_batch_norm": True})),
    "nfwfm": (("base", {}), ("batch_norm", {"interaction_batch_norm": True})),
    # DeepCTR NFM's own knob: dropout on its Bi-Interaction vector.
    "deepctr_nfm": (("base", {}), ("bi_dropout_0.2", {"bi_dropout": 0.2})),
    # On top of NFwFM's chosen settings (same bottom): click loss weight 1
    # vs 4 (uncertainty weighting otherwise favours the rare follow task,
    # see models.ranking.losses) and one MLP per task.
    "multitask_uncertainty": (("shared_mlp", {}), ("click_weight_4", {"click_weight": 4.0}),
                              ("task_towers", {"task_towers": True})),
}
# Tuned after (and on top of the choice of) another entry.
TUNE_ON_TOP_OF = {"multitask_uncertainty": "nfwfm"}
# Which tuned entry a benchmarked model takes its settings from: ablations
# and the other multi-task losses inherit their parent's choice.
TUNED_FROM = {"nfm": "nfm", "nfwfm": "nfwfm", "nfwfm_no_fm": "nfwfm",
              "nfwfm_no_dropout": "nfwfm", "follow_single": "nfwfm",
              "multitask_sum": "multitask_uncertainty",
              "multitask_reweight": "multitask_uncertainty",
              "multitask_uncertainty": "multitask_uncertainty", "deepctr_nfm": "deepctr_nfm"}
TUNING_PATH = os.path.join("bench", "results", "ranking_tuning.json")
TIMED_SCORING = ("nfm", "nfwfm", "multitask_uncertainty")
NUM_CANDIDATES = 500
SCORE_WARMUP, SCORE_REPEATS = 20, 300


# ---- data ------------------------------------------------------------------
def _sessionize(raw, out_dir: str) -> dict[str, Any]:
    summary = os.path.join(out_dir, "summary.json")
    if not os.path.exists(summary):
        cmd = [sys.executable, "-m", "beam_jobs.sessionize", "--config", raw.config_path,
               "--events", raw.events, "--users", raw.users, "--items", raw.items,
               "--output_dir", out_dir]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    with open(summary, encoding="utf-8") as f:
        return json.load(f)


def prepare_data(dataset: str, work_dir: str, num_events: int) -> dict[str, Any]:
    """Train/eval patterns, vocab dir and config path of one dataset."""
    try:
        from beam_jobs import datasets
        raw = datasets.prepare(dataset, work_dir, num_events=num_events)
        # One examples directory per raw directory (synthetic-<events>-<seed>, movielens).
        out_dir = os.path.join(work_dir, "examples", os.path.basename(os.path.dirname(raw.events)))
        _sessionize(raw, out_dir)
        ranking = os.path.join(out_dir, fc.RANKING)
        return {"config_path": raw.config_path, "vocab_dir": os.path.join(out_dir, "vocab"),
                "train_pattern": inputs.split_pattern(ranking, fc.TRAIN),
                "eval_pattern": inputs.split_pattern(ranking, fc.EVAL),
                "data_source": f"beam_jobs.datasets.prepare + beam_jobs.sessionize ({out_dir})"}
    except (ImportError, OSError, subprocess.CalledProcessError, RuntimeError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        print(f"[{dataset}] pipeline unavailable ({type(err).__name__}: {detail[-500:]}); "
              "falling back to generated examples", file=sys.stderr)
        config_path = fc.builtin_config_path(dataset)
        out = synthetic_examples.write_ranking_examples(
            os.path.join(work_dir, "fallback", dataset), fc.load(config_path),
            num_train=num_events // 2, num_eval=num_events // 8, num_users=2000,
            num_items=1000, values_per_feature=8)
        return {"config_path": config_path, **out,
                "data_source": "FALLBACK models.ranking.synthetic_examples (pipeline failed)"}


def load_split(pattern: str, features: fc.FeatureConfig, limit: int | None) -> dict[str, tf.Tensor]:
    """All examples of a split as one dict of dense tensors (parsed once)."""
    ds = inputs.make_dataset(pattern, features, fc.RANKING, 4096)
    parts: dict[str, list[tf.Tensor]] = {}
    count = 0
    for batch in ds:
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
        count += int(tf.shape(batch[fc.USER_KEY])[0])
        if limit and count >= limit:
            break
    out = {k: tf.concat(v, axis=0) for k, v in parts.items()}
    return {k: v[:limit] for k, v in out.items()} if limit else out


def _batches(data: Mapping[str, tf.Tensor], batch_size: int, seed: int | None,
             with_labels: bool) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(dict(data))
    if seed is not None:
        ds = ds.shuffle(200_000, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if with_labels:
        ds = ds.map(lambda d: (d, {k: d[k] for k in fc.LABEL_KEYS}))
    return ds.prefetch(tf.data.AUTOTUNE)


# ---- our models ---------------------------------------------------------------
def _p50_score_ms(model, eval_data: Mapping[str, tf.Tensor], features: fc.FeatureConfig,
                  repeats: int) -> float:
    item_names = {f.name for f in features.field_features(fc.ITEM)}
    n = min(NUM_CANDIDATES, int(eval_data[fc.USER_KEY].shape[0]))
    raw = {f.name: (eval_data[f.name][:n] if f.name in item_names else eval_data[f.name][:1])
           for f in features.features}
    with tempfile.TemporaryDirectory() as tmp:
        score = export.load(export.export(model, tmp)).signatures[export.SCORE_CANDIDATES]
        for _ in range(SCORE_WARMUP):
            score(**raw)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = score(**raw)
            _ = {k: v.numpy() for k, v in out.items()}
            times.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(times, 50))


def _id_batches(model, data: Mapping[str, tf.Tensor], batch_size: int,
                seed: int) -> tf.data.Dataset:
    """(ids, labels) batches, ids mapped once by the model's own FeatureIds."""
    ids = _to_ids(model.feature_ids, data)
    ds = tf.data.Dataset.from_tensor_slices((ids, {k: data[k] for k in fc.LABEL_KEYS}))
    ds = ds.shuffle(200_000, seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)


def run_ours(name: str, features: fc.FeatureConfig, vocabs, train_data, eval_data, seed: int,
             quick: bool, timed: bool, epochs: int,
             tuned: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Trains `name` on train_data, evaluates on eval_data.

    Args:
      tuned: hparams chosen on the validation split (override the defaults).
    """
    model_name, hparams = OUR_MODELS[name]
    config = rc.make_config(model_name, {**hparams, **(tuned or {}), "seed": seed})
    first = {k: v[:8] for k, v in train_data.items()}
    model = train.build_model(config, features, vocabs, example_batch=first)
    n_train = int(train_data[fc.USER_KEY].shape[0])
    model.train_on_ids = True
    fitted = train.fit(model, _id_batches(model, train_data, config.batch_size, seed),
                       epochs, n_train)
    model.train_on_ids = False
    result = train.evaluate_model(model, _batches(eval_data, 4096, None, False))
    result.update(train.model_complexity(model))
    result["train_examples_per_s"] = fitted["train_examples_per_s"]
    result["sigma"] = model.task_loss.sigmas()
    if timed:
        result["score_500_p50_ms"] = _p50_score_ms(model, eval_data, features,
                                                   50 if quick else SCORE_REPEATS)
    return result


# ---- DeepCTR peers ----------------------------------------------------------------
def _import_deepctr():
    """deepctr.models with tensorflow.python.keras aliased to tf_keras."""
    for sub in ("", ".layers", ".models", ".regularizers", ".initializers", ".optimizers",
                ".callbacks", ".losses", ".metrics", ".utils"):
        # TF still ships a stub tensorflow.python.keras package, so overwrite.
        sys.modules["tensorflow.python.keras" + sub] = importlib.import_module("tf_keras" + sub)
    sys.modules["tensorflow.python.keras.backend"] = keras.backend
    return importlib.import_module("deepctr.models"), importlib.import_module(
        "deepctr.feature_column")


def _to_ids(feature_ids: FeatureIds, data: Mapping[str, tf.Tensor]) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {}
    n = int(data[fc.USER_KEY].shape[0])
    for start in range(0, n, 8192):
        ids = feature_ids({k: data[k][start:start + 8192] for k in feature_ids.feature_names})
        for k, v in ids.items():
            out.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def run_peer(name: str, features: fc.FeatureConfig, vocabs, train_data, eval_data, seed: int,
             epochs: int, tuned: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Trains DeepCTR's `name`; `tuned` may set learning_rate and bi_dropout (NFM)."""
    tuned = dict(tuned or {})
    bi_dropout = float(tuned.pop("bi_dropout", 0.0))
    unknown = sorted(set(tuned) - {"learning_rate"})
    if unknown or (bi_dropout and name != "deepctr_nfm"):
        given = sorted(set(tuned) | ({"bi_dropout"} if bi_dropout else set()))
        raise ValueError(f"{name}: only learning_rate (and bi_dropout for deepctr_nfm) can be "
                         f"tuned, got {given}")
    dc_models, dc_fc = _import_deepctr()
    names = ordered_feature_names(features)
    feature_ids = FeatureIds(features.to_dict(), vocabs, names)
    x_train, x_eval = _to_ids(feature_ids, train_data), _to_ids(feature_ids, eval_data)
    base = rc.make_config(rc.NFM if name == "deepctr_nfm" else rc.NFWFM, tuned)
    dim = base.embedding_dim
    columns = []
    for n in names:
        spec = features.feature(n)
        table = spec.of if spec.type == fc.SEQUENCE else n
        sparse = dc_fc.SparseFeat(n, feature_ids.num_rows(n), embedding_dim=dim,
                                  embedding_name=table)
        if spec.type in (fc.TAGS, fc.SEQUENCE):
            columns.append(dc_fc.VarLenSparseFeat(sparse, maxlen=spec.max_len, combiner="mean"))
        else:
            columns.append(sparse)
    keras.utils.set_random_seed(seed)
    if name == "deepctr_nfm":
        model = dc_models.NFM(columns, columns, dnn_hidden_units=base.hidden_units, seed=seed,
                              bi_dropout=bi_dropout)
    else:
        model = dc_models.FwFM(columns, columns, dnn_hidden_units=base.hidden_units, seed=seed)
    # Same optimizer, learning rate, batch size and epochs as our models.
    model.compile(train.make_optimizer(base), "binary_crossentropy")
    y = train_data[fc.CLICK_LABEL].numpy()
    start = time.perf_counter()
    model.fit(x_train, y, batch_size=base.batch_size, epochs=epochs, verbose=0, shuffle=True)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    probs = model.predict(x_eval, batch_size=4096, verbose=0).reshape(-1)
    score_seconds = time.perf_counter() - start
    labels = eval_data[fc.CLICK_LABEL].numpy()
    result: dict[str, Any] = {fc.CLICK_LABEL: metrics.task_metrics(
        labels, probs, eval_data[fc.USER_KEY].numpy())}
    result["params"] = int(model.count_params())
    result["flops_per_example"] = None  # no analytic count for DeepCTR's graph
    result["train_examples_per_s"] = y.size * epochs / train_seconds
    result["score_examples_per_s"] = labels.size / score_seconds
    result["embedding_dim"] = dim
    return result


# ---- validation split and tuning ---------------------------------------------------
def split_validation(data: Mapping[str, tf.Tensor], fraction: float = VALIDATION_FRACTION
                     ) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """(fit, validation): the last `fraction` of TRAIN by timestamp is validation.

    A time split like sessionize's train/eval split, carved from train only,
    so hyperparameters are never chosen on the eval split.

    Raises:
      ValueError: fraction not in (0, 1) or a part would be empty.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = int(data[fc.TIMESTAMP_KEY].shape[0])
    n_val = int(round(n * fraction))
    if n_val < 1 or n_val >= n:
        raise ValueError(f"{n} examples cannot give a validation fraction {fraction}")
    # Stable sort: ties keep file order, so the split is deterministic.
    order = np.argsort(data[fc.TIMESTAMP_KEY].numpy(), kind="stable")
    fit_idx, val_idx = np.sort(order[:n - n_val]), np.sort(order[n - n_val:])
    return ({k: tf.gather(v, fit_idx) for k, v in data.items()},
            {k: tf.gather(v, val_idx) for k, v in data.items()})


def choose(grid: Mapping[str, Mapping[str, Any]]) -> str:
    """Key of the grid point with the highest validation click AUC (first on ties)."""
    if not grid:
        raise ValueError("empty tuning grid")
    return max(grid, key=lambda k: (grid[k]["val_auc"], -list(grid).index(k)))


def tune_dataset(dataset: str, args: argparse.Namespace,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Grid search on the validation split; returns {model: {grid, chosen}}."""
    data = prepare_data(dataset, args.work_dir, args.num_events)
    features = fc.load(data["config_path"])
    vocabs = load_vocabularies(features, data["vocab_dir"])
    limit = args.max_train if args.quick else None
    fit_data, val_data = split_validation(load_split(data["train_pattern"], features, limit))
    out: dict[str, Any] = {"_meta": {"fit_examples": int(fit_data[fc.USER_KEY].shape[0]),
                                     "validation_examples": int(val_data[fc.USER_KEY].shape[0]),
                                     "seed": 0, "epochs": args.epochs}}
    names = [m for m in args.models.split(",") if m] if args.models else list(TUNE_VARIANTS)
    for name in names:
        grid: dict[str, Any] = {}
        parent = TUNE_ON_TOP_OF.get(name)
        if parent and parent not in out:
            raise ValueError(f"tune {parent} before {name} (it is tuned on top of it)")
        below = ({k: v for k, v in out[parent]["chosen"].items() if k != "learning_rate"}
                 if parent else {})
        for label, extra in TUNE_VARIANTS[name]:
            for lr in LR_GRID:
                hparams = {**below, **extra, "learning_rate": lr}
                t0 = time.perf_counter()
                if name in OUR_MODELS:
                    run = run_ours(name, features, vocabs, fit_data, val_data, 0, args.quick,
                                   False, args.epochs, tuned=hparams)
                else:
                    run = run_peer(name, features, vocabs, fit_data, val_data, 0, args.epochs,
                                   tuned=hparams)
                key = f"{label} lr={lr}"
                grid[key] = {"hparams": hparams, "val_auc": run[fc.CLICK_LABEL]["auc"]}
                log(f"[{dataset}] tune {name} {key}: val click auc "
                    f"{grid[key]['val_auc']:.4f} ({time.perf_counter() - t0:.1f}s)")
        best = choose(grid)
        out[name] = {"grid": grid, "chosen": grid[best]["hparams"], "chosen_key": best}
    return out


def load_tuning(path: str) -> dict[str, Any]:
    """The tuning file's {dataset: {model: {...}}}, or {} when absent."""
    if not path or not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tuned_hparams(tuning: Mapping[str, Any], dataset: str, name: str) -> dict[str, Any]:
    """Hparams `name` takes from the tuning of `dataset` ({} if untuned)."""
    source = TUNED_FROM.get(name)
    entry = tuning.get(dataset, {}).get(source) if source else None
    return dict(entry["chosen"]) if entry else {}


def protocol(tuning: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """How the settings of the benchmarked models were chosen (the JSON's `_protocol`)."""
    return {
        "selection": "per-model hyperparameters chosen by `python -m bench.ranking_bench "
                     "--tune` on a validation split carved from TRAIN; the eval split is "
                     "never used for selection; each model is then retrained on the full "
                     "train split with its choice and evaluated once per seed on eval",
        "validation_split": f"last {VALIDATION_FRACTION:.0%} of train by timestamp",
        "criterion": "validation click AUC, 1 seed (seed 0), same epochs as the benchmark",
        "grid": {"learning_rate": list(LR_GRID),
                 "variants": {n: [label for label, _ in v] for n, v in TUNE_VARIANTS.items()},
                 "tuned_on_top_of": TUNE_ON_TOP_OF},
        "budget": "2 variants x 3 learning rates = 6 runs for nfm, nfwfm and deepctr_nfm; "
                  "3 x 3 for multitask_uncertainty (on top of nfwfm's choice)",
        "inherits": {k: v for k, v in TUNED_FROM.items() if k != v},
        "untuned": sorted(n for n in list(OUR_MODELS) + list(PEERS) if n not in TUNED_FROM),
        "chosen": {d: {n: e["chosen"] for n, e in t.items() if not n.startswith("_")}
                   for d, t in tuning.items()},
        "validation_auc": {d: {n: {k: g["val_auc"] for k, g in e["grid"].items()}
                               for n, e in t.items() if not n.startswith("_")}
                           for d, t in tuning.items()},
        "tuning_file": args.tuning,
        "epochs": f"{args.epochs} for every model, no early stopping (time budget)",
        "score_500_p50_ms": f"exported SavedModel's score_candidates, {NUM_CANDIDATES} "
                            f"candidates, p50 of {SCORE_REPEATS} calls after "
                            f"{SCORE_WARMUP} warm-up calls, in-process, seed 0's model",
    }


# ---- aggregation ----------------------------------------------------------------
def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else None


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    main_task = fc.CLICK_LABEL if fc.CLICK_LABEL in runs[0] else fc.FOLLOW_LABEL
    aucs = [r[main_task]["auc"] for r in runs]
    out: dict[str, Any] = {
        "task": main_task,
        "auc_mean": _mean(aucs), "auc_std": float(np.std(aucs)), "auc_runs": aucs,
        "logloss_mean": _mean([r[main_task]["logloss"] for r in runs]),
        "gauc_mean": _mean([r[main_task]["gauc"] for r in runs]),
        "calibration_mean": _mean([r[main_task]["calibration"] for r in runs]),
        "params": runs[0]["params"], "flops_per_example": runs[0]["flops_per_example"],
        "train_examples_per_s": _mean([r["train_examples_per_s"] for r in runs]),
        "score_examples_per_s": _mean([r["score_examples_per_s"] for r in runs]),
        "seeds": len(runs),
    }
    if fc.FOLLOW_LABEL in runs[0]:
        follow = [r[fc.FOLLOW_LABEL]["auc"] for r in runs]
        out["follow_auc_mean"] = _mean(follow)
        out["follow_auc_std"] = float(np.std(follow))
        out["follow_gauc_mean"] = _mean([r[fc.FOLLOW_LABEL]["gauc"] for r in runs])
        out["follow_logloss_mean"] = _mean([r[fc.FOLLOW_LABEL]["logloss"] for r in runs])
    sigmas = [r.get("sigma") for r in runs if r.get("sigma")]
    if sigmas:
        out["sigma"] = {t: _mean([s[t] for s in sigmas]) for t in sigmas[0]}
    if "score_500_p50_ms" in runs[0]:
        out["score_500_p50_ms"] = runs[0]["score_500_p50_ms"]
    return out


def targets(results: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's targets, checked against the measured numbers."""
    def get(model, key):
        return results.get(model, {}).get(key)

    out: dict[str, Any] = {}
    nfm_p, nfw_p = get("nfm", "params"), get("nfwfm", "params")
    nfm_f, nfw_f = get("nfm", "flops_per_example"), get("nfwfm", "flops_per_example")
    if nfm_p and nfw_p:
        out["nfwfm_params_ratio"] = nfw_p / nfm_p
        out["nfwfm_flops_ratio"] = nfw_f / nfm_f
        out["nfwfm_le_sixth_of_nfm"] = nfw_p <= nfm_p / 6 and nfw_f <= nfm_f / 6
    auc = {m: get(m, "auc_mean") for m in ("nfm", "nfwfm", "deepctr_nfm", "follow_single",
                                           "multitask_uncertainty")}
    if auc["nfwfm"] is not None and auc["nfm"] is not None:
        out["nfwfm_auc_ge_nfm"] = auc["nfwfm"] >= auc["nfm"]
    if auc["nfwfm"] is not None and auc["deepctr_nfm"] is not None:
        out["nfwfm_auc_ge_deepctr_nfm"] = auc["nfwfm"] >= auc["deepctr_nfm"]
    mt_follow = get("multitask_uncertainty", "follow_auc_mean")
    if mt_follow is not None and auc["follow_single"] is not None:
        out["multitask_follow_auc_gt_single"] = mt_follow > auc["follow_single"]
    if auc["multitask_uncertainty"] is not None and auc["nfwfm"] is not None:
        out["multitask_click_auc_drop"] = auc["nfwfm"] - auc["multitask_uncertainty"]
        out["multitask_click_within_0.001"] = auc["multitask_uncertainty"] >= auc["nfwfm"] - 0.001
    p50 = get("nfwfm", "score_500_p50_ms")
    if p50 is not None:
        out["score_500_lt_5ms"] = p50 < 5.0
    return out


def bench_dataset(dataset: str, args: argparse.Namespace,
                  log: Callable[[str], None]) -> dict[str, Any]:
    start = time.perf_counter()
    data = prepare_data(dataset, args.work_dir, args.num_events)
    features = fc.load(data["config_path"])
    vocabs = load_vocabularies(features, data["vocab_dir"])
    limit = args.max_train if args.quick else None
    train_data = load_split(data["train_pattern"], features, limit)
    eval_data = load_split(data["eval_pattern"], features, limit // 4 if limit else None)
    meta = {"data_source": data["data_source"],
            "train_examples": int(train_data[fc.USER_KEY].shape[0]),
            "eval_examples": int(eval_data[fc.USER_KEY].shape[0]),
            "eval_click_positives": int(eval_data[fc.CLICK_LABEL].numpy().sum()),
            "eval_follow_positives": int(eval_data[fc.FOLLOW_LABEL].numpy().sum()),
            "train_follow_positives": int(train_data[fc.FOLLOW_LABEL].numpy().sum()),
            "seeds": args.seeds, "quick": args.quick, "epochs": args.epochs,
            "optimizer": f"{rc.make_config(rc.NFWFM).optimizer}, default lr "
                         f"{rc.make_config(rc.NFWFM).learning_rate} (tuned: meta.tuned_hparams)"}
    log(f"[{dataset}] {meta}")
    results: dict[str, Any] = {}
    names = [m for m in args.models.split(",") if m] if args.models else (
        list(OUR_MODELS) + list(PEERS))
    tuning = load_tuning(args.tuning)
    meta["tuned_hparams"] = {n: tuned_hparams(tuning, dataset, n) for n in names
                             if tuned_hparams(tuning, dataset, n)}
    for name in names:
        runs = []
        tuned = tuned_hparams(tuning, dataset, name)
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            try:
                if name in OUR_MODELS:
                    run = run_ours(name, features, vocabs, train_data, eval_data, seed,
                                   args.quick, timed=seed == 0 and name in TIMED_SCORING,
                                   epochs=args.epochs, tuned=tuned)
                else:
                    run = run_peer(name, features, vocabs, train_data, eval_data, seed,
                                   args.epochs, tuned=tuned)
            except ImportError as err:
                results[name] = {"error": f"{type(err).__name__}: {err}"}
                log(f"[{dataset}] {name}: {results[name]['error']}")
                break
            runs.append(run)
            task = fc.CLICK_LABEL if fc.CLICK_LABEL in run else fc.FOLLOW_LABEL
            log(f"[{dataset}] {name} seed {seed}: {task} auc {run[task]['auc']:.4f} "
                + (f"follow auc {run[fc.FOLLOW_LABEL]['auc']:.4f} "
                   if task == fc.CLICK_LABEL and fc.FOLLOW_LABEL in run else "")
                + f"({time.perf_counter() - t0:.1f}s)")
        if runs:
            results[name] = aggregate(runs)
    meta["wall_seconds"] = time.perf_counter() - start
    results["_meta"] = meta
    results["_targets"] = targets(results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer events / examples, 1 seed unless --seeds is given")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--num_events", type=int, default=None)
    parser.add_argument("--max_train", type=int, default=30_000,
                        help="--quick: training examples kept per dataset")
    parser.add_argument("--epochs", type=int, default=1,
                        help="passes over the training data, every model (time budget)")
    parser.add_argument("--datasets", default="synthetic,movielens")
    parser.add_argument("--models", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--work_dir", default=os.path.join("work", "bench_ranking"))
    parser.add_argument("--out", default=os.path.join("bench", "results", "ranking.json"))
    parser.add_argument("--tune", action="store_true",
                        help="grid-search on a validation split of train; writes --tuning")
    parser.add_argument("--tuning", default=TUNING_PATH,
                        help="tuning file: written by --tune, read by the benchmark "
                             "('' runs every model with its defaults)")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (1 if args.quick else 3)
    # 100k events (~65k train impressions): 14 models x 3 seeds x 2 datasets fit
    # in ~30 minutes on 2 shared cores.
    args.num_events = args.num_events or (60_000 if args.quick else 100_000)
    tf.get_logger().setLevel("ERROR")
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"{time.perf_counter() - started:7.1f}s {message}", flush=True)

    if args.tune:
        tuning = load_tuning(args.tuning)
        for dataset in [d for d in args.datasets.split(",") if d]:
            tuning[dataset] = {**tuning.get(dataset, {}), **tune_dataset(dataset, args, log)}
            os.makedirs(os.path.dirname(args.tuning) or ".", exist_ok=True)
            with open(args.tuning, "w", encoding="utf-8") as f:
                json.dump(tuning, f, indent=1)
        log(f"wrote {args.tuning}")
        return 0
    report: dict[str, Any] = {}
    for dataset in [d for d in args.datasets.split(",") if d]:
        report[dataset] = bench_dataset(dataset, args, log)
        log(f"[{dataset}] targets {report[dataset]['_targets']}")
    report["_protocol"] = protocol(load_tuning(args.tuning), args)
    report["_run"] = {"command": "python -m bench.ranking_bench " + " ".join(argv or sys.argv[1:]),
                      "total_seconds": time.perf_counter() - started,
                      "cpu_count": os.cpu_count()}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, sort_keys=False)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
