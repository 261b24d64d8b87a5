"""Ranking benchmark: NFwFM vs the NFM baseline, the DeepCTR NFM peer and ablations.

    python -m bench.ranking_bench [--quick] [--seeds 5] [--datasets synthetic,movielens]
        [--models core|all|name,...] [--jobs 2] [--out bench/results/ranking.json]

Data: the real pipeline. A `--datasets` entry is a built-in dataset
(`beam_jobs.datasets.prepare` makes the synthetic log or MovieLens-100k) or a
dataset YAML (feature config + `data:` globs); `python -m beam_jobs.sessionize`
writes the ranking examples and vocabularies (bench.parallel.sessionize_once);
every model, ours and DeepCTR's, sees the same examples. The JSON goes to
bench/results/ranking.json for the built-in datasets and under --work_dir for
any other, unless --out says where.

Protocol (the JSON's `_protocol` records all of it):
  * Validation is carved from TRAIN with the trainers' own rule
    (models.validation: the last 10% of the train time span). Every model
    trains on the rest ("fit") epoch by epoch, is scored on validation after
    each epoch and stops `patience` epochs after its best epoch (cap
    `max_epochs`); the best epoch's weights are kept. The eval split is
    scored once per trained model, for the reported figure.
  * Hyperparameters are chosen on validation only: the learning rate of
    NFM, NFwFM and the DeepCTR NFM peer from LR_GRID; the multi-task model's
    form (MULTITASK_VARIANTS, on NFwFM's learning rate) by the mean of click
    and follow validation AUC, so the follow head is not ignored. Tuning uses
    seed 0; the chosen point's seed-0 model is that model's seed-0 run
    (retraining it would repeat the same computation).
  * Every model then runs `--seeds` seeds (init and shuffling). Comparisons
    are paired by seed: mean difference with a 95% Student-t interval
    (bench.stats); an interval containing 0 is a tie.

`--models core` (default) runs what the targets compare: nfm, nfm_28 (NFM at
NFwFM's width: the key ablation), nfwfm, deepctr_nfm, multitask and
follow_single. `--models all` adds the other ablations and baselines.
`--jobs 2` benchmarks the datasets in parallel processes (one per dataset).

DeepCTR 0.9.3 imports `tensorflow.python.keras`, which TF 2.16+ no longer
ships; `_import_deepctr` points those module names at tf_keras first.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
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
import tf_keras as keras  # noqa: E402

from feature_contract import feature_config as fc  # noqa: E402
from bench import parallel, stats  # noqa: E402
from models import inputs, validation  # noqa: E402
from models.layers.feature_embedding import FeatureIds, load_vocabularies  # noqa: E402
from models.layers.feature_embedding import ordered_feature_names  # noqa: E402
from models.ranking import config as rc  # noqa: E402
from models.ranking import export, metrics, train  # noqa: E402

# name -> (model, hparams) of our models.
OUR_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "nfm": (rc.NFM, {}),
    # NFM at NFwFM's width: is NFwFM's edge (or loss) the interaction or the width?
    "nfm_28": (rc.NFM, {"embedding_dim": rc.make_config(rc.NFWFM).embedding_dim}),
    "nfwfm": (rc.NFWFM, {}),
    "nfwfm_no_fm": (rc.NFWFM, {"use_fm_module": False}),
    "nfwfm_no_dropout": (rc.NFWFM, {"use_interaction_dropout": False}),
    "multitask": (rc.MULTITASK_NFWFM, {}),
    "multitask_sum": (rc.MULTITASK_NFWFM, {"loss_mode": rc.LOSS_SUM}),
    "multitask_reweight": (rc.MULTITASK_NFWFM, {"loss_mode": rc.LOSS_REWEIGHT}),
    "follow_single": (rc.NFWFM, {"tasks": (fc.FOLLOW_LABEL,)}),
    "lr": (rc.LR, {}),
    "deepfm": (rc.DEEPFM, {}),
    "dcn": (rc.DCN, {}),
}
PEERS = ("deepctr_nfm", "deepctr_fwfm")
CORE = ("nfm", "nfm_28", "nfwfm", "deepctr_nfm", "multitask", "follow_single")
ALL = tuple(OUR_MODELS) + PEERS

# ---- hyperparameter selection (validation only) ------------------------------------
LR_GRID = rc.TUNED_LEARNING_RATES
LR_TUNED = ("nfm", "nfwfm", "deepctr_nfm")
# The multi-task model's form, on top of NFwFM's learning rate: uncertainty
# weighting with one shared MLP or one MLP per task, and the ESMM follow head
# (p(follow) = p(click) * p(follow | click)) with either.
MULTITASK_VARIANTS: dict[str, dict[str, Any]] = {
    "uncertainty": {"loss_mode": rc.LOSS_UNCERTAINTY},
    "uncertainty_task_towers": {"loss_mode": rc.LOSS_UNCERTAINTY, "task_towers": True},
    "esmm_sum": {"loss_mode": rc.LOSS_SUM, "follow_mode": rc.FOLLOW_ESMM},
    "esmm_uncertainty": {"loss_mode": rc.LOSS_UNCERTAINTY, "follow_mode": rc.FOLLOW_ESMM},
}
# Which tuned entry an untuned model takes its learning rate (and, for the
# other multi-task losses, its form) from.
TUNED_FROM = {"nfm_28": "nfm", "nfwfm_no_fm": "nfwfm", "nfwfm_no_dropout": "nfwfm",
              "follow_single": "nfwfm", "multitask_sum": "multitask",
              "multitask_reweight": "multitask", "deepctr_fwfm": "nfwfm"}
TIMED_SCORING = ("nfm", "nfwfm", "multitask")
NUM_CANDIDATES = 500
SCORE_WARMUP, SCORE_REPEATS = 20, 200

# The comparisons the targets name: (name, model a, task a, model b, task b).
COMPARISONS = (
    ("nfwfm_vs_nfm", "nfwfm", fc.CLICK_LABEL, "nfm", fc.CLICK_LABEL),
    ("nfwfm_vs_deepctr_nfm", "nfwfm", fc.CLICK_LABEL, "deepctr_nfm", fc.CLICK_LABEL),
    ("nfwfm_vs_nfm_28", "nfwfm", fc.CLICK_LABEL, "nfm_28", fc.CLICK_LABEL),
    ("multitask_follow_vs_follow_single", "multitask", fc.FOLLOW_LABEL, "follow_single",
     fc.FOLLOW_LABEL),
    ("multitask_click_vs_nfwfm", "multitask", fc.CLICK_LABEL, "nfwfm", fc.CLICK_LABEL),
    ("nfwfm_vs_nfwfm_no_fm", "nfwfm", fc.CLICK_LABEL, "nfwfm_no_fm", fc.CLICK_LABEL),
    ("nfwfm_vs_nfwfm_no_dropout", "nfwfm", fc.CLICK_LABEL, "nfwfm_no_dropout", fc.CLICK_LABEL),
)
MULTITASK_CLICK_TOLERANCE = 0.002
# A target read off fewer eval positives than this is flagged `few_positives`:
# one positive more or less moves its AUC by 1/positives.
MIN_TARGET_POSITIVES = 30


# ---- data ------------------------------------------------------------------
def prepare_data(dataset: str, work_dir: str, num_events: int) -> dict[str, Any]:
    """Train/eval patterns, vocab dir and config path of one dataset.

    Args:
      dataset: a built-in name or a dataset YAML.

    Raises:
      bench.parallel.DataError: the sessionize job failed (its reason is the
        error's): a benchmark never falls back to other data.
    """
    config_path, out_dir, summary = parallel.sessionize_once(
        dataset, work_dir, num_events, os.path.join(work_dir, "examples"))
    ranking = os.path.join(out_dir, fc.RANKING)
    return {"config_path": config_path, "vocab_dir": os.path.join(out_dir, "vocab"),
            "train_pattern": inputs.split_pattern(ranking, fc.TRAIN),
            "eval_pattern": inputs.split_pattern(ranking, fc.EVAL),
            "summary": summary, "examples_dir": out_dir}


def load_split(pattern: str, features: fc.FeatureConfig, limit: int | None
               ) -> dict[str, np.ndarray]:
    """All examples of a split as one dict of dense numpy arrays (parsed once)."""
    ds = inputs.make_dataset(pattern, features, fc.RANKING, 4096)
    parts: dict[str, list[np.ndarray]] = {}
    count = 0
    for batch in ds:
        for k, v in batch.items():
            parts.setdefault(k, []).append(v.numpy())
        count += int(batch[fc.USER_KEY].shape[0])
        if limit and count >= limit:
            break
    out = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
    return {k: v[:limit] for k, v in out.items()} if limit else out


def carve_validation(data: Mapping[str, np.ndarray], fraction: float
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """(fit, validation, cutoff) by the trainers' rule (models.validation)."""
    cutoff = validation.validation_cutoff(data[fc.TIMESTAMP_KEY], fraction)
    fit, val = validation.split_arrays(data, cutoff)
    return fit, val, cutoff


def _num_rows(data: Mapping[str, np.ndarray]) -> int:
    return int(data[fc.USER_KEY].shape[0])


def _batches(data: Mapping[str, np.ndarray], batch_size: int) -> tf.data.Dataset:
    """Raw feature dicts (labels included), in order: for scoring."""
    return tf.data.Dataset.from_tensor_slices(dict(data)).batch(batch_size).prefetch(
        tf.data.AUTOTUNE)


def _to_ids(feature_ids: FeatureIds, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {}
    n = _num_rows(data)
    for start in range(0, n, 8192):
        ids = feature_ids({k: data[k][start:start + 8192] for k in feature_ids.feature_names})
        for k, v in ids.items():
            out.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _id_batches(model, data: Mapping[str, np.ndarray], batch_size: int,
                seed: int) -> tf.data.Dataset:
    """(ids, labels) batches, ids mapped once by the model's own FeatureIds,
    reshuffled every epoch."""
    ids = _to_ids(model.feature_ids, data)
    ds = tf.data.Dataset.from_tensor_slices((ids, {k: data[k] for k in fc.LABEL_KEYS}))
    ds = ds.shuffle(200_000, seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)


# ---- our models ---------------------------------------------------------------
def _p50_score_ms(model, eval_data: Mapping[str, np.ndarray], features: fc.FeatureConfig,
                  repeats: int) -> float:
    item_names = {f.name for f in features.field_features(fc.ITEM)}
    n = min(NUM_CANDIDATES, _num_rows(eval_data))
    raw = {f.name: tf.constant(eval_data[f.name][:n] if f.name in item_names
                               else eval_data[f.name][:1])
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


def model_hparams(name: str, tuned: Mapping[str, Any] | None, seed: int,
                  max_epochs: int | None = None) -> rc.RankingConfig:
    """The config of benchmark entry `name`: its own hparams over the tuned ones."""
    model_name, hparams = OUR_MODELS[name]
    extra = {"seed": seed, **({"max_epochs": max_epochs} if max_epochs else {})}
    return rc.make_config(model_name, {**(tuned or {}), **hparams, **extra})


def train_ours(name: str, features: fc.FeatureConfig, vocabs, fit_data, val_data, seed: int,
               tuned: Mapping[str, Any] | None = None, max_epochs: int | None = None):
    """Trains entry `name` on fit_data, early-stopped on val_data.

    Returns:
      (model with the best epoch's weights, fit_with_early_stopping's record).
    """
    config = model_hparams(name, tuned, seed, max_epochs)
    first = {k: v[:8] for k, v in fit_data.items()}
    model = train.build_model(config, features, vocabs, example_batch=first)
    model.train_on_ids = True
    record = train.fit_with_early_stopping(
        model, _id_batches(model, fit_data, config.batch_size, seed),
        _batches(val_data, 4096), train.early_stopping(config),
        train.default_monitor(config.tasks), _num_rows(fit_data))
    model.train_on_ids = False
    return model, record


def evaluate_ours(model, record: Mapping[str, Any], eval_data: Mapping[str, np.ndarray],
                  features: fc.FeatureConfig, timed: bool, repeats: int) -> dict[str, Any]:
    """The eval-split figures of one trained model (the split's only use)."""
    result = train.evaluate_model(model, _batches(eval_data, 4096))
    result.update(train.model_complexity(model))
    result["sigma"] = model.task_loss.sigmas()
    result.update(_training_record(record))
    if timed:
        result["score_500_p50_ms"] = _p50_score_ms(model, eval_data, features, repeats)
    return result


def _training_record(record: Mapping[str, Any]) -> dict[str, Any]:
    stopping = record["early_stopping"]
    return {"best_epoch": stopping["best_epoch"], "epochs_run": stopping["epochs_run"],
            "best_validation": stopping["best_value"], "monitor": stopping["monitor"],
            "train_examples_per_s": record["train_examples_per_s"],
            "learning_curve": record["learning_curve"]}


# ---- DeepCTR peers ----------------------------------------------------------------
def _import_deepctr():
    """deepctr.models and feature_column, tensorflow.python.keras aliased to
    tf_keras, without deepctr's version check (_quiet_deepctr_version_check)."""
    for sub in ("", ".layers", ".models", ".regularizers", ".initializers", ".optimizers",
                ".callbacks", ".losses", ".metrics", ".utils"):
        # TF still ships a stub tensorflow.python.keras package, so overwrite.
        sys.modules["tensorflow.python.keras" + sub] = importlib.import_module("tf_keras" + sub)
    sys.modules["tensorflow.python.keras.backend"] = keras.backend
    _quiet_deepctr_version_check()
    models = importlib.import_module("deepctr.models")
    # The package attribute a normal submodule import would have bound.
    sys.modules["deepctr"].utils = sys.modules["deepctr.utils"]
    return models, importlib.import_module("deepctr.feature_column")


def _quiet_deepctr_version_check() -> None:
    """Loads deepctr.utils ahead of the package with its version check off.

    `import deepctr` calls utils.check_version, which asks pypi.python.org for
    the latest release in a thread and prints a line when it cannot (always,
    offline): a bench must not phone home. With deepctr.utils already in
    sys.modules, the package's `from .utils import check_version` takes ours.
    """
    if "deepctr.utils" in sys.modules:
        return
    spec = importlib.util.find_spec("deepctr")
    if spec is None or not spec.submodule_search_locations:
        return  # not installed: the import after this says so
    # Found on the package's path without importing the package itself.
    utils_spec = importlib.machinery.PathFinder.find_spec("deepctr.utils",
                                                          spec.submodule_search_locations)
    utils = importlib.util.module_from_spec(utils_spec)
    sys.modules["deepctr.utils"] = utils
    try:
        utils_spec.loader.exec_module(utils)
    except BaseException:
        del sys.modules["deepctr.utils"]
        raise
    utils.check_version = _no_version_check


def _no_version_check(version: str) -> None:
    """deepctr.utils.check_version without the pypi request."""


class PeerModel:
    """A trained DeepCTR model with the FeatureIds that feed it."""

    def __init__(self, model, feature_ids: FeatureIds):
        self.model, self.feature_ids = model, feature_ids

    def predict(self, data: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.model.predict(_to_ids(self.feature_ids, data), batch_size=4096,
                                  verbose=0).reshape(-1)


def _peer_config(name: str, tuned: Mapping[str, Any] | None, seed: int,
                 max_epochs: int | None) -> rc.RankingConfig:
    tuned = dict(tuned or {})
    unknown = sorted(set(tuned) - {"learning_rate"})
    if unknown:
        raise ValueError(f"{name}: only learning_rate can be tuned, got {unknown}")
    # Same width, MLP, optimizer, batch size and stopping rule as our model
    # of the same family.
    return rc.make_config(rc.NFM if name == "deepctr_nfm" else rc.NFWFM, {
        **tuned, "seed": seed, **({"max_epochs": max_epochs} if max_epochs else {})})


def train_peer(name: str, features: fc.FeatureConfig, vocabs, fit_data, val_data, seed: int,
               tuned: Mapping[str, Any] | None = None, max_epochs: int | None = None):
    """Trains DeepCTR's `name` (click only) epoch by epoch, early-stopped on val_data.

    Returns:
      (PeerModel with the best epoch's weights, record as fit_with_early_stopping's).
    """
    base = _peer_config(name, tuned, seed, max_epochs)
    dc_models, dc_fc = _import_deepctr()
    names = ordered_feature_names(features)
    feature_ids = FeatureIds(features.to_dict(), vocabs, names)
    x_fit = _to_ids(feature_ids, fit_data)
    columns = []
    for n in names:
        spec = features.feature(n)
        table = spec.of if spec.type == fc.SEQUENCE else n
        sparse = dc_fc.SparseFeat(n, feature_ids.num_rows(n), embedding_dim=base.embedding_dim,
                                  embedding_name=table)
        if spec.type in (fc.TAGS, fc.SEQUENCE):
            columns.append(dc_fc.VarLenSparseFeat(sparse, maxlen=spec.max_len, combiner="mean"))
        else:
            columns.append(sparse)
    keras.utils.set_random_seed(seed)
    # The peer gets our family config's L2 (0 by default) instead of
    # DeepCTR's 1e-5. DeepCTR attaches the regularizer even at 0, and its
    # loss makes every step's gradient dense over whole embedding tables
    # (5x slower per epoch here), so at 0 the (zero) losses are dropped.
    l2 = {"l2_reg_embedding": base.l2, "l2_reg_linear": base.l2}
    if name == "deepctr_nfm":
        model = dc_models.NFM(columns, columns, dnn_hidden_units=base.hidden_units, seed=seed,
                              **l2)
    else:
        model = dc_models.FwFM(columns, columns, dnn_hidden_units=base.hidden_units, seed=seed,
                               l2_reg_field_strength=base.l2, **l2)
    if base.l2 == 0.0:
        for layer in model._flatten_layers():
            layer._callable_losses = []
    model.compile(train.make_optimizer(base), "binary_crossentropy")
    peer = PeerModel(model, feature_ids)
    y_fit, y_val = fit_data[fc.CLICK_LABEL], val_data[fc.CLICK_LABEL]
    stopping = train.early_stopping(base)
    curve, best_weights, seconds = [], None, 0.0
    while not stopping.should_stop:
        start = time.perf_counter()
        history = model.fit(x_fit, y_fit, batch_size=base.batch_size, epochs=1, verbose=0,
                            shuffle=True)
        seconds += time.perf_counter() - start
        probs = peer.predict(val_data)
        auc = metrics.auc(y_val, probs)
        curve.append({"epoch": stopping.epochs + 1,
                      "train_loss": float(history.history["loss"][-1]),
                      "val_click_auc": auc, "val_click_logloss": metrics.logloss(y_val, probs),
                      "val_monitor": auc})
        if stopping.update(auc):
            best_weights = model.get_weights()
    if best_weights is not None:
        model.set_weights(best_weights)
    record = {"learning_curve": curve,
              "early_stopping": {**stopping.summary(), "monitor": "click_auc"},
              "train_examples_per_s": y_fit.size * stopping.epochs / max(seconds, 1e-9)}
    return peer, record


def evaluate_peer(peer: PeerModel, record: Mapping[str, Any],
                  eval_data: Mapping[str, np.ndarray]) -> dict[str, Any]:
    start = time.perf_counter()
    probs = peer.predict(eval_data)
    seconds = time.perf_counter() - start
    labels = eval_data[fc.CLICK_LABEL]
    result: dict[str, Any] = {fc.CLICK_LABEL: metrics.task_metrics(
        labels, probs, eval_data[fc.USER_KEY])}
    result["params"] = int(peer.model.count_params())
    result["flops_per_example"] = None  # no analytic count for DeepCTR's graph
    result["score_examples_per_s"] = labels.size / max(seconds, 1e-9)
    result.update(_training_record(record))
    return result


# ---- one dataset ------------------------------------------------------------------
def _monitor_value(record: Mapping[str, Any]) -> float:
    value = record["early_stopping"]["best_value"]
    return float("nan") if value is None else float(value)


def choose(grid: Mapping[str, Mapping[str, Any]]) -> str:
    """Key of the grid point with the highest validation figure (first on ties).

    Raises:
      ValueError: an empty grid.
    """
    if not grid:
        raise ValueError("empty tuning grid")
    keys = list(grid)
    return max(keys, key=lambda k: (np.nan_to_num(grid[k]["validation"], nan=-1.0),
                                    -keys.index(k)))


def tuned_from(name: str) -> str | None:
    """The tuned entry whose choice `name` takes (itself when tuned)."""
    if name in LR_TUNED or name == "multitask":
        return name
    return TUNED_FROM.get(name)


class DatasetBench:
    """Tunes, trains and evaluates every requested model on one dataset."""

    def __init__(self, dataset: str, args: argparse.Namespace, log: Callable[[str], None]):
        # The report's key (a dataset YAML's `name`), also in the log lines.
        self.dataset, self.args, self.log = parallel.dataset_key(dataset), args, log
        data = prepare_data(dataset, args.work_dir, args.num_events)
        self.features = fc.load(data["config_path"])
        self.vocabs = load_vocabularies(self.features, data["vocab_dir"])
        limit = args.max_train if args.quick else None
        train_data = load_split(data["train_pattern"], self.features, limit)
        self.eval_data = load_split(data["eval_pattern"], self.features,
                                    limit // 3 if limit else None)
        self.fit_data, self.val_data, cutoff = carve_validation(
            train_data, validation.DEFAULT_VALIDATION_FRACTION)
        self.chosen: dict[str, dict[str, Any]] = {}
        self.grids: dict[str, dict[str, Any]] = {}
        self.seed0: dict[str, Any] = {}  # tuned name -> (model, record) of the chosen point
        summary = data["summary"]
        self.meta = {
            "examples_dir": data["examples_dir"],
            "sessionize_summary": {k: summary.get(k) for k in ("events", "examples", "labels")
                                   if k in summary},
            "validation_cutoff": cutoff,
            **{f"{part}_examples": _num_rows(d) for part, d in (
                ("fit", self.fit_data), ("validation", self.val_data),
                ("eval", self.eval_data))},
            **{f"{part}_{label}_positives": int(d[label].sum())
               for part, d in (("fit", self.fit_data), ("validation", self.val_data),
                               ("eval", self.eval_data)) for label in fc.LABEL_KEYS},
        }
        log(f"[{dataset}] {self.meta}")

    def _train(self, name: str, seed: int, tuned: Mapping[str, Any]):
        if name in OUR_MODELS:
            return train_ours(name, self.features, self.vocabs, self.fit_data, self.val_data,
                              seed, tuned, self.args.max_epochs)
        return train_peer(name, self.features, self.vocabs, self.fit_data, self.val_data, seed,
                          tuned, self.args.max_epochs)

    def _evaluate(self, name: str, trained, timed: bool) -> dict[str, Any]:
        model, record = trained
        if name in OUR_MODELS:
            return evaluate_ours(model, record, self.eval_data, self.features, timed,
                                 50 if self.args.quick else SCORE_REPEATS)
        return evaluate_peer(model, record, self.eval_data)

    def _untrainable(self, name: str) -> str | None:
        """Why a model whose only task has no fit positives is not trained, else None."""
        tasks = OUR_MODELS[name][1].get("tasks") if name in OUR_MODELS else None
        if tasks and len(tasks) == 1 and not self.meta.get(f"fit_{tasks[0]}_positives", 1):
            return f"no {tasks[0]} positives in the fit split"
        return None

    def tune(self, name: str, points: Mapping[str, Mapping[str, Any]]) -> None:
        """Trains seed 0 at every grid point; keeps the best on validation."""
        grid: dict[str, Any] = {}
        best_key, best = None, None
        for key, hparams in points.items():
            t0 = time.perf_counter()
            trained = self._train(name, 0, hparams)
            value = _monitor_value(trained[1])
            grid[key] = {"hparams": dict(hparams), "validation": value,
                         "monitor": trained[1]["early_stopping"]["monitor"],
                         "best_epoch": trained[1]["early_stopping"]["best_epoch"]}
            self.log(f"[{self.dataset}] tune {name} {key}: validation {value:.4f} at epoch "
                     f"{grid[key]['best_epoch']} ({time.perf_counter() - t0:.0f}s)")
            if best_key is None or choose({best_key: grid[best_key], key: grid[key]}) == key:
                best_key, best = key, trained
        self.grids[name] = grid
        self.chosen[name] = dict(grid[best_key]["hparams"])
        self.seed0[name] = best

    def tuning_points(self, name: str) -> dict[str, dict[str, Any]]:
        if name in LR_TUNED:
            return {f"lr={lr}": {"learning_rate": lr} for lr in LR_GRID}
        if name == "multitask":
            lr = self.chosen.get("nfwfm", {}).get("learning_rate")
            base = {"learning_rate": lr} if lr else {}
            return {k: {**base, **v} for k, v in MULTITASK_VARIANTS.items()}
        raise ValueError(f"{name} is not tuned")

    def run(self, names: Sequence[str]) -> dict[str, Any]:
        start = time.perf_counter()
        # Tuned entries first (and the parents of the requested ones).
        needed = [n for n in ("nfm", "nfwfm", "deepctr_nfm", "multitask")
                  if n in names or any(tuned_from(m) == n for m in names)]
        for name in needed:
            self.tune(name, self.tuning_points(name))
        results: dict[str, Any] = {}
        for name in names:
            if (why := self._untrainable(name)) is not None:
                results[name] = {"skipped": why}
                self.log(f"[{self.dataset}] {name}: skipped, {why}")
                continue
            source = tuned_from(name)
            tuned = dict(self.chosen.get(source, {})) if source else {}
            if name in PEERS:
                tuned = {k: v for k, v in tuned.items() if k == "learning_rate"}
            runs = []
            for seed in range(self.args.seeds):
                t0 = time.perf_counter()
                trained = (self.seed0[name] if seed == 0 and name in self.seed0
                           else self._train(name, seed, tuned))
                run = self._evaluate(name, trained, timed=seed == 0 and name in TIMED_SCORING)
                run["seed"] = seed
                runs.append(run)
                self.log(f"[{self.dataset}] {name} seed {seed}: " + ", ".join(
                    f"{t} auc {run[t]['auc']:.4f}" for t in fc.LABEL_KEYS if t in run)
                    + f" best epoch {run['best_epoch']}/{run['epochs_run']} "
                      f"({time.perf_counter() - t0:.0f}s)")
            results[name] = aggregate(runs)
            results[name]["hparams"] = tuned
        comparisons = compare(results)
        self.meta["wall_seconds"] = time.perf_counter() - start
        return {**results, "_comparisons": comparisons,
                "_targets": targets(results, comparisons, self.meta),
                "_tuning": {"chosen": self.chosen, "grids": self.grids}, "_meta": self.meta}


# ---- aggregation ----------------------------------------------------------------
def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else None


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-task means and per-seed values of one model's runs."""
    out: dict[str, Any] = {"seeds": len(runs), "runs": list(runs)}
    for task in fc.LABEL_KEYS:
        if task not in runs[0]:
            continue
        for key in ("auc", "gauc", "logloss", "calibration"):
            values = [r[task][key] for r in runs]
            out[f"{task}_{key}_mean"] = _mean(values)
            out[f"{task}_{key}_runs"] = values
        out[f"{task}_auc_std"] = float(np.std(out[f"{task}_auc_runs"], ddof=1)) if len(
            runs) > 1 else None
    for key in ("params", "flops_per_example", "score_500_p50_ms"):
        if key in runs[0]:
            out[key] = runs[0][key]
    out["best_epochs"] = [r["best_epoch"] for r in runs]
    out["epochs_run"] = [r["epochs_run"] for r in runs]
    out["train_examples_per_s_mean"] = _mean([r["train_examples_per_s"] for r in runs])
    sigmas = [r.get("sigma") for r in runs if r.get("sigma")]
    if sigmas:
        out["sigma_mean"] = {t: _mean([s[t] for s in sigmas]) for t in sigmas[0]}
    return out


def compare(results: Mapping[str, Any]) -> dict[str, Any]:
    """COMPARISONS present in `results`: AUC and gAUC paired differences over seeds."""
    out: dict[str, Any] = {}
    for key, a, task_a, b, task_b in COMPARISONS:
        if a not in results or b not in results:
            continue
        out[key] = {"a": f"{a}.{task_a}", "b": f"{b}.{task_b}"}
        skipped = [f"{m}: {results[m]['skipped']}" for m in (a, b) if "skipped" in results[m]]
        if skipped:
            out[key].update(auc=None, gauc=None, not_evaluable="; ".join(skipped))
            continue
        n = min(results[a]["seeds"], results[b]["seeds"])
        for metric in ("auc", "gauc"):
            va = results[a][f"{task_a}_{metric}_runs"][:n]
            vb = results[b][f"{task_b}_{metric}_runs"][:n]
            if any(v is None or np.isnan(v) for v in list(va) + list(vb)):
                out[key][metric] = None
                out[key].setdefault("not_evaluable", (
                    f"{metric} undefined on some seed: an eval split without {task_a} / "
                    f"{task_b} positives or negatives"))
                continue
            out[key][metric] = stats.paired_difference(va, vb)
    return out


def targets(results: Mapping[str, Any], comparisons: Mapping[str, Any],
            meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The issue's targets against the measured numbers (mean difference and CI verdict).

    A target whose comparison is not evaluable is {"met": None, "not_evaluable":
    why}, not left out; one read off fewer than MIN_TARGET_POSITIVES eval
    positives of its task (meta's eval_<task>_positives) carries
    `few_positives` with the count.
    """
    meta = meta or {}
    out: dict[str, Any] = {}
    nfm, nfwfm = results.get("nfm", {}), results.get("nfwfm", {})
    if nfm.get("params") and nfwfm.get("params"):
        out["nfwfm_params_ratio"] = nfwfm["params"] / nfm["params"]
        out["nfwfm_flops_ratio"] = nfwfm["flops_per_example"] / nfm["flops_per_example"]
        out["nfwfm_le_sixth_of_nfm"] = (out["nfwfm_params_ratio"] <= 1 / 6
                                        and out["nfwfm_flops_ratio"] <= 1 / 6)

    tasks = {k: task for k, _, task, _, _ in COMPARISONS}

    def mean_ge(key: str, bound: float = 0.0) -> dict[str, Any] | None:
        comparison = comparisons.get(key)
        if comparison is None:
            return None
        auc = comparison.get("auc")
        if not auc:
            return {"met": None, "not_evaluable": comparison.get("not_evaluable", "no AUC")}
        out = {"met": auc["mean"] >= bound, "mean": auc["mean"], "verdict": auc["verdict"],
               "ci": [auc["ci_low"], auc["ci_high"]]}
        positives = meta.get(f"eval_{tasks[key]}_positives")
        if positives is not None and positives < MIN_TARGET_POSITIVES:
            out["few_positives"] = (f"{positives} eval {tasks[key]} positives (< "
                                    f"{MIN_TARGET_POSITIVES}): one more or less moves the AUC "
                                    f"by about 1/{positives}")
        return out

    for key in ("nfwfm_vs_nfm", "nfwfm_vs_deepctr_nfm", "multitask_follow_vs_follow_single"):
        value = mean_ge(key)
        if value is not None:
            out[f"{key}_mean_ge_0"] = value
    value = mean_ge("multitask_click_vs_nfwfm", -MULTITASK_CLICK_TOLERANCE)
    if value is not None:
        out[f"multitask_click_within_{MULTITASK_CLICK_TOLERANCE}_of_nfwfm"] = value
    return out


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    """How every figure was obtained (the JSON's `_protocol`)."""
    default = rc.make_config(rc.NFWFM)
    return {
        "validation_split": f"last {validation.DEFAULT_VALIDATION_FRACTION:.0%} of the train "
                            "time span (models.validation, the trainers' rule); the eval "
                            "split is scored once per trained model",
        "training": f"every model epoch by epoch on the fit part, validation after each "
                    f"epoch, stop {default.patience} epochs after the best (min_delta "
                    f"{default.min_delta}), cap {args.max_epochs or default.max_epochs} "
                    f"epochs, best epoch's weights kept; batch {default.batch_size}, "
                    f"{default.optimizer}",
        "monitor": "validation click AUC; follow-only: follow AUC; multi-task: mean of click "
                   "and follow AUC (click AUC when validation has no follow positives)",
        "selection": {"learning_rate": {"grid": list(LR_GRID), "tuned": list(LR_TUNED)},
                      "multitask_variants": MULTITASK_VARIANTS,
                      "inherits": TUNED_FROM,
                      "seed": "tuning uses seed 0; the chosen point's seed-0 model is that "
                              "model's seed-0 run"},
        "seeds": args.seeds,
        "comparisons": "paired by seed: mean difference with a 95% Student-t interval "
                       "(bench.stats.paired_difference); an interval containing 0 is a tie",
        "score_500_p50_ms": f"exported SavedModel's score_candidates, {NUM_CANDIDATES} "
                            f"candidates, p50 of {SCORE_REPEATS} calls after "
                            f"{SCORE_WARMUP} warm-up calls, in-process, seed 0's model"
                            + (" (datasets ran in parallel processes: timing shares the "
                               "cores)" if args.jobs > 1 else ""),
        "synthetic_data_note": "the synthetic generator's hidden click model has exactly the "
                               "user x item, user x context and item x context terms NFwFM "
                               "models; MovieLens-100k is the real-data check",
    }


def _model_names(spec: str) -> list[str]:
    if spec in ("", "core"):
        return list(CORE)
    if spec == "all":
        return list(ALL)
    names = [m for m in spec.split(",") if m]
    unknown = sorted(set(names) - set(ALL))
    if unknown:
        raise SystemExit(f"unknown models {unknown}; known: {list(ALL)}")
    return names


def child_args(argv: Sequence[str], drop: Sequence[str] = ("--datasets", "--out", "--jobs",
                                                             "--threads")) -> list[str]:
    """argv without the flags a per-dataset child gets its own values of
    (both `--flag value` and `--flag=value`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in drop:
            skip = True
        elif not arg.startswith(tuple(f"{d}=" for d in drop)):
            out.append(arg)
    return out


def _run_parallel(datasets: Sequence[str], argv: Sequence[str], out_dir: str,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """One child process per dataset (each with an even share of the cores)."""
    threads = parallel.thread_share(len(datasets))
    commands = {}
    for dataset in datasets:
        key = parallel.dataset_key(dataset)
        out = os.path.join(out_dir, f"{key}.json")
        commands[key] = ([sys.executable, "-m", "bench.ranking_bench", *child_args(argv),
                          "--datasets", dataset, "--out", out, "--jobs", "1",
                          "--threads", str(threads)], out)
    return parallel.run_children(commands, log)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="60k events, 30k training examples, 2 seeds, 4 epochs at most")
    parser.add_argument("--seeds", type=int, default=None, help="default 5 (quick: 2)")
    parser.add_argument("--num_events", type=int, default=None,
                        help="synthetic events (default 100000; quick 60000)")
    parser.add_argument("--max_train", type=int, default=30_000,
                        help="--quick: training examples kept per dataset")
    parser.add_argument("--max_epochs", type=int, default=None,
                        help="cap on epochs (default: the models' own; quick: 4)")
    parser.add_argument("--datasets", default="synthetic,movielens",
                        help="comma-separated built-in names and/or dataset YAMLs")
    parser.add_argument("--models", default="core",
                        help=f"core ({','.join(CORE)}), all, or a comma-separated list")
    parser.add_argument("--jobs", type=int, default=1,
                        help="datasets benchmarked in parallel processes")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra/inter-op threads (0: TensorFlow's default)")
    parser.add_argument("--work_dir", default=os.path.join("work", "bench_ranking"))
    parser.add_argument("--out", default=None,
                        help="the JSON (default: bench/results/ranking.json for a full run of "
                             "both built-in datasets and the core models; otherwise "
                             "<work_dir>/ranking-[quick-|models-]<names>.json)")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (2 if args.quick else 5)
    args.num_events = args.num_events or (60_000 if args.quick else 100_000)
    args.max_epochs = args.max_epochs or (4 if args.quick else None)
    names = _model_names(args.models)
    datasets = [d for d in args.datasets.split(",") if d]
    for dataset in datasets:
        if (problem := parallel.dataset_spec_error(dataset)) is not None:
            parser.error(problem)
    # A smoke run or a run without every core model must not replace the recorded JSON.
    partial = "quick" if args.quick else "" if set(CORE) <= set(names) else "models"
    args.out = args.out or parallel.default_out(
        datasets, os.path.join("bench", "results", "ranking.json"), args.work_dir, "ranking",
        partial)
    parallel.set_tf_threads(args.threads)
    tf.get_logger().setLevel("ERROR")
    started = time.perf_counter()
    run_info = stats.provenance(["python", "-m", "bench.ranking_bench", *argv])

    def log(message: str) -> None:
        print(f"{time.perf_counter() - started:7.1f}s {message}", flush=True)

    if args.jobs > 1 and len(datasets) > 1:
        with tempfile.TemporaryDirectory() as tmp:
            report = _run_parallel(datasets, argv, tmp, log)
    else:
        report = {parallel.dataset_key(d): DatasetBench(d, args, log).run(names)
                  for d in datasets}
    for dataset in datasets:
        key = parallel.dataset_key(dataset)
        log(f"[{key}] targets {json.dumps(report[key]['_targets'])}")
    report["_protocol"] = protocol(args)
    report["_run"] = {**run_info, "total_seconds": time.perf_counter() - started,
                      "models": names}
    stats.write_report(args.out, report)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(parallel.guarded(main))
