"""PipelineReport: a Markdown summary of the run with PNG plots.

Collects what the run decided and measured: the trainers' own metrics, how
each model's early stopping went (best epoch / epochs run / stopped early /
monitored validation metric), per-head calibration (mean prediction vs label
rate), each gate's verdict with, per head, candidate and baseline AUC, their
difference and its 95% confidence interval against the tolerance (or "not
evaluable" for a head whose eval split has one class), the Evaluator's AUC
per model and slice and, when a gate failed, why; the serving checks; where
models and indexes were pushed. Plots (matplotlib, Agg backend): AUC per
model, ROC curves of the ranking models on the eval split, recall@K per
recall model, learned task uncertainties of the multi-task model, per-head
calibration, one learning curve per trained model (train loss and the
monitored validation metric per epoch, best epoch marked), and, when a
funnel replay's JSON is given (`funnel_results`, bench.funnel_bench's
bench/results/funnel.json), HR@10 of the final list next to each channel's
own list and the popularity / ALS references, for the dataset
`funnel_dataset` names (every dataset in the JSON when it names none). Trainer metrics
written before early stopping existed simply leave those parts out. The
report is written to the artifact and copied to <publish_dir>/<unix time>/
(next to the pushed models).
"""

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from feature_contract import feature_config as fc
from components import eval_config
from components import statistics
from components.blend_fitter import FIT_FILE
from components.artifacts import (DataAnomalies, FinalBlend, PipelineReport, PushedIndex,
                                  SessionizeSummary, TrainingMetrics)
from components.example_gen import SUMMARY_FILE
from components.serving_validator import read_serialized_examples
from components.trainer import read_metrics

REPORT_FILE = "report.md"
RANKING_ROLES = ("baseline", "candidate", "multitask")
RECALL_NAMES = ("item2vec", "youtubenet", "two_tower")


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score, from (0,0) to (1,1).

    Args:
      labels: [N] 0/1; scores: [N].
    Returns:
      (fpr [M], tpr [M]).
    """
    labels = np.asarray(labels, np.float64).reshape(-1) > 0.5
    scores = np.asarray(scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="mergesort")
    labels, scores = labels[order], scores[order]
    # Cut only where the score changes, so ties move the curve diagonally.
    cuts = np.r_[np.flatnonzero(np.diff(scores)), labels.size - 1]
    tps = np.cumsum(labels)[cuts]
    fps = (cuts + 1) - tps
    pos, neg = max(labels.sum(), 1), max((~labels).sum(), 1)
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos]


def score_examples(model_dir: str, serialized: np.ndarray, batch_size: int = 2048
                   ) -> dict[str, np.ndarray]:
    """Runs serving_default over serialized examples; output name -> [N]."""
    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(serialized), batch_size):
        out = fn(examples=tf.constant(list(serialized[start:start + batch_size])))
        for key, value in out.items():
            parts.setdefault(key, []).append(value.numpy().reshape(-1))
    return {k: np.concatenate(v) for k, v in parts.items()}


def labels_of(serialized: np.ndarray, keys: tuple[str, ...] = fc.LABEL_KEYS
              ) -> dict[str, np.ndarray]:
    spec = {k: tf.io.FixedLenFeature([], tf.int64, default_value=0) for k in keys}
    parsed = tf.io.parse_example(tf.constant(list(serialized)), spec)
    return {k: v.numpy() for k, v in parsed.items()}


@dataclasses.dataclass(frozen=True)
class LearningCurve:
    """One model's per-epoch figures, from metrics.json's "learning_curve".

    Attributes:
      epochs: 1-based epoch numbers [E].
      train_loss: [E] (None where not recorded).
      monitor: the validation metric early stopping watched (e.g. val_click_auc).
      monitored: [E] its values (None where not recorded).
      best_epoch: the epoch whose weights were kept (None if unknown).
    """

    epochs: list[int]
    train_loss: list[float | None]
    monitor: str | None
    monitored: list[float | None]
    best_epoch: int | None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and np.isfinite(value) else None


def learning_curve(metrics: Mapping[str, Any]) -> LearningCurve | None:
    """The curve of one model's metrics, or None when metrics.json has none.

    The monitored series is early_stopping["monitor"] as the epochs record it:
    under its own name, with a "val_" prefix, or as "val_monitor" (the value
    early stopping actually compared, e.g. the mean of click and follow
    AUC); else the first "val_" figure.
    """
    rows = [r for r in metrics.get("learning_curve") or [] if isinstance(r, Mapping)]
    if not rows:
        return None
    stopping = metrics.get("early_stopping") if isinstance(metrics.get("early_stopping"),
                                                           Mapping) else {}
    keys = {k for r in rows for k in r}
    monitor = stopping.get("monitor")
    candidates = [monitor, f"val_{monitor}", "val_monitor"] if monitor else []
    series = next((k for k in candidates if k in keys),
                  next((k for r in rows for k in r if str(k).startswith("val_")), None))
    best = stopping.get("best_epoch")
    return LearningCurve(
        epochs=[int(r.get("epoch", i + 1)) for i, r in enumerate(rows)],
        train_loss=[_number(r.get("train_loss")) for r in rows],
        monitor=(f"val_{monitor}" if series == "val_monitor" and monitor else series),
        monitored=[_number(r.get(series)) if series else None for r in rows],
        best_epoch=int(best) if isinstance(best, int) and best > 0 else None)


def training_row(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """best epoch / epochs run / stopped early / monitor / best value and the
    validation split's size, or None when metrics.json has no early stopping."""
    stopping = metrics.get("early_stopping")
    if not isinstance(stopping, Mapping):
        return None
    validation = metrics.get("validation") if isinstance(metrics.get("validation"),
                                                         Mapping) else {}
    monitor = stopping.get("monitor")
    if monitor and stopping.get("monitor_fallback"):
        # e.g. the click + follow mean fell back to click AUC on epochs whose
        # validation split had no follow positives.
        monitor = f"{monitor} (fallback {stopping['monitor_fallback']})"
    return {"best_epoch": stopping.get("best_epoch"), "epochs_run": stopping.get("epochs_run"),
            "stopped_early": stopping.get("stopped_early"), "monitor": monitor,
            "best_value": _number(stopping.get("best_value")),
            "fit_examples": validation.get("fit_examples"),
            "validation_examples": validation.get("validation_examples")}


def calibration_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per head: mean prediction vs label rate on the trainer's eval split.

    The trainer records calibration = mean prediction / label rate and the
    label counts; mean prediction is taken as recorded when it is, else
    derived from those. A head without positives has no ratio: it is
    reported as not evaluable.
    """
    rows = []
    for head in fc.LABEL_KEYS:
        task = metrics.get(head)
        if not isinstance(task, Mapping) or not task.get("examples"):
            continue
        examples, positives = int(task["examples"]), int(task.get("positives") or 0)
        rate = positives / examples
        ratio = _number(task.get("calibration"))
        mean = _number(task.get("mean_prediction"))
        if mean is None and ratio is not None:
            mean = ratio * rate
        rows.append({"head": head, "mean_prediction": mean, "label_rate": rate,
                     "calibration": ratio, "examples": examples, "positives": positives,
                     "not_evaluable": eval_config.not_evaluable_reason(examples, positives)})
    return rows


FUNNEL_METRICS = ("hr@10", "ndcg@10", "hr@50")


def _replayed(results: Mapping[str, Any], only: str = "") -> list[tuple[str, Mapping]]:
    """(dataset, figures) of a funnel replay's JSON, all datasets or the one named `only`."""
    return [(dataset, figures) for dataset, figures in results.items()
            if not dataset.startswith("_") and isinstance(figures, Mapping)
            and (not only or dataset == only)]


def funnel_rows(results: Mapping[str, Any], only: str = ""
                ) -> dict[str, list[dict[str, Any]]]:
    """A funnel replay's JSON as table rows: dataset -> one row per list.

    Lists, in this order: the final list, the merged candidates before
    ranking, each channel's own list, the references (popularity, ALS). A row
    holds FUNNEL_METRICS over all requests and, for a channel, its share of
    the final top 10. `only`: that dataset's rows alone ("" every dataset).
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for dataset, figures in _replayed(results, only):
        lists = [("final", "final", figures.get("final")),
                 ("merged candidates", "merged", figures.get("merged_candidates"))]
        lists += [(name, "channel", f) for name, f in (figures.get("channels") or {}).items()]
        lists += [(name, "reference", f) for name, f in (figures.get("references") or {}).items()]
        rows = []
        for name, kind, f in lists:
            if not isinstance(f, Mapping):
                continue
            row = {"list": name, "kind": kind,
                   **{m: (f.get("all") or {}).get(m) for m in FUNNEL_METRICS}}
            row["share"] = f.get("share_of_final@10")
            rows.append(row)
        out[dataset] = rows
    return out


BLEND_DATASET = "this run (validation requests)"


def blend_rows(fit: Mapping[str, Any]) -> list[dict[str, Any]]:
    """BlendFitter's fit.json as funnel rows: validation HR@10 of each order it replayed.

    The served order ("final") is the blend or, when the blend's held-out
    HR@10 did not beat every channel's, the best channel's order; the
    blend's in-sample figure is flattered (its weights were fitted on these
    requests), its held-out one is cross-validated; the ranker's order, the
    merge order and each channel's list are not fitted to them.
    """
    figures = fit.get("validation_hr@10") or {}
    # Since the held-out check (serving.replay.choose_final_order) the served
    # order is "chosen" and the blend's own figures are rows of their own;
    # an older fit.json has the blend only, which was served.
    chosen = fit.get("chosen", "blend")
    named = ([(f"final ({'blend, in sample' if chosen == 'blend' else chosen})", "final",
               "chosen"),
              ("blend, in sample", "blend", "blend_in_sample"),
              ("blend, held out", "blend", "blend_held_out")] if "chosen" in figures else
             [("final (blend, in sample)", "final", "blend_in_sample")])
    named += [("merged, ranker order", "merged", "ranker_only"),
             ("merged, merge order", "merged", "merge_order")]
    named += [(key.split(":", 1)[1], "channel", key) for key in sorted(figures)
              if key.startswith("channel:")]
    return [{"list": name, "kind": kind, "hr@10": figures.get(key), "ndcg@10": None,
             "hr@50": None, "share": None} for name, kind, key in named if key in figures]


def read_fit(blend: Any) -> Mapping[str, Any] | None:
    """A FinalBlend's fit.json, or None when nothing was published."""
    if blend.get_int_custom_property("published") != 1:
        return None
    with tf.io.gfile.GFile(os.path.join(blend.uri, FIT_FILE)) as f:
        return json.load(f)


def blend_lines(blend: Any, fit: Mapping[str, Any] | None) -> list[str]:
    """What BlendFitter did: published where with which weights (fit), or why not."""
    if fit is None:
        return [f"not published: {blend.get_string_custom_property('reason')}"]
    def listed(weights: Mapping[str, float]) -> str:
        return ", ".join(f"{name} {_fmt(w)}" for name, w in sorted(weights.items()))

    lines = [f"published to {blend.get_string_custom_property('published_path')}",
             f"fitted on {fit.get('requests_used')} of {fit.get('requests')} validation requests "
             f"(mean log-likelihood {_fmt(fit.get('mean_log_likelihood'))} vs uniform "
             f"{_fmt(fit.get('uniform_log_likelihood'))})"]
    if "chosen" in fit:  # written since the held-out check (serving.replay.choose_final_order)
        lines.append(f"serving: {fit['chosen']} (the blend is served only when its held-out "
                     "validation HR@10 beats every channel's order)")
        if fit["chosen"] != "blend":
            lines.append(f"fitted blend (not served): {listed(fit.get('fitted_weights', {}))}")
    return lines + [f"weights: {listed(fit.get('weights', {}))}"]


def funnel_targets(results: Mapping[str, Any], only: str = "") -> list[str]:
    """One line per target a funnel replay checked, met or not, with its figures."""
    lines = []
    for dataset, figures in _replayed(results, only):
        for name, t in (figures.get("_targets") or {}).items():
            lines.append(f"{dataset} {name}: {'met' if t['met'] else 'NOT met'} (final "
                         f"{_fmt(t.get('final_hr@10'))} vs {t['b']} {_fmt(t.get('b_hr@10'))}, "
                         f"paired over requests: {t.get('verdict', '-')})")
    return lines


def _plot_learning_curve(ax, curve: LearningCurve) -> None:
    ax.plot(curve.epochs, [np.nan if v is None else v for v in curve.train_loss], marker="o",
            color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss", color="tab:blue")
    ax.set_xticks(curve.epochs)
    if curve.monitor and any(v is not None for v in curve.monitored):
        right = ax.twinx()
        right.plot(curve.epochs, [np.nan if v is None else v for v in curve.monitored],
                   marker="s", color="tab:orange", label=curve.monitor)
        right.set_ylabel(curve.monitor, color="tab:orange")
        if curve.best_epoch in curve.epochs:
            best = curve.monitored[curve.epochs.index(curve.best_epoch)]
            if best is not None:
                right.plot([curve.best_epoch], [best], marker="*", markersize=14,
                           color="tab:red", linestyle="none", label="best epoch")
    if curve.best_epoch is not None:
        ax.axvline(curve.best_epoch, color="tab:red", linestyle=":", lw=1)


def _plots(directory: str, ranking: Mapping[str, dict], rocs: Mapping[str, tuple],
           recall: Mapping[str, dict], sigmas: Mapping[str, float],
           funnel: Mapping[str, list[dict[str, Any]]] | None = None) -> list[tuple[str, str]]:
    """Writes the PNGs; returns (title, file name) pairs."""
    import matplotlib
    matplotlib.use("Agg")  # no display in pipelines
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(os.path.join(directory, name), dpi=100)
        plt.close(fig)
        written.append((title, name))

    aucs = {f"{name} ({task})": values[task]["auc"] for name, values in ranking.items()
            for task in fc.LABEL_KEYS
            if isinstance(values.get(task), dict) and values[task].get("auc") is not None}
    if aucs:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.barh(list(aucs), list(aucs.values()), color="tab:blue")
        ax.set_xlim(max(0.0, min(aucs.values()) - 0.05), min(1.0, max(aucs.values()) + 0.02))
        ax.set_xlabel("eval AUC (trainer)")
        save(fig, "auc_per_model.png", "AUC per ranking model")
    if rocs:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for name, (fpr, tpr) in rocs.items():
            ax.plot(fpr, tpr, label=name)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7)
        save(fig, "roc_curves.png", "ROC curves (eval split)")
    curves = {name: sorted((int(k.split("@")[1]), v) for k, v in values.items()
                           if k.startswith("recall@") and isinstance(v, (int, float)))
              for name, values in recall.items()}
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, points in curves.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_ylabel("recall@K (time split)")
        ax.legend(fontsize=7)
        save(fig, "recall_at_k.png", "Recall@K per recall model")
    if sigmas:
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.bar(list(sigmas), list(sigmas.values()), color="tab:orange")
        ax.set_ylabel("learned sigma (task uncertainty)")
        save(fig, "task_uncertainty.png", "Learned task uncertainties (multi-task NFwFM)")
    calibration = [(f"{name} ({row['head']})", row) for name, values in ranking.items()
                   for row in calibration_rows(values)
                   if row["mean_prediction"] is not None and not row["not_evaluable"]]
    if calibration:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        where = np.arange(len(calibration))
        ax.barh(where - 0.2, [r["mean_prediction"] for _, r in calibration], height=0.4,
                label="mean prediction", color="tab:blue")
        ax.barh(where + 0.2, [r["label_rate"] for _, r in calibration], height=0.4,
                label="label rate", color="tab:green")
        ax.set_yticks(where, [n for n, _ in calibration], fontsize=7)
        # Log scale: follow rates are ~1/50 of click rates and vanish on a linear axis.
        ax.set_xscale("log")
        ax.set_xlabel("rate (trainer eval split, log scale)")
        ax.legend(fontsize=7, loc="best")
        save(fig, "calibration.png", "Calibration per head: mean prediction vs label rate")
    funnel = {d: [r for r in rows if r["hr@10"] is not None] for d, rows in (funnel or {}).items()}
    funnel = {d: rows for d, rows in funnel.items() if rows}
    if funnel:
        colors = {"final": "tab:red", "blend": "tab:orange", "merged": "tab:gray",
                  "channel": "tab:blue", "reference": "tab:green"}
        fig, axes = plt.subplots(1, len(funnel), figsize=(4.5 * len(funnel), 3.5), squeeze=False)
        for ax, (dataset, rows) in zip(axes[0], funnel.items()):
            where = np.arange(len(rows))
            ax.barh(where, [r["hr@10"] for r in rows], color=[colors[r["kind"]] for r in rows])
            ax.set_yticks(where, [r["list"] for r in rows], fontsize=7)
            ax.invert_yaxis()  # the final list on top
            ax.set_xlabel("HR@10 (replayed requests)")
            ax.set_title(dataset, fontsize=9)
        save(fig, "funnel_hr_at_10.png",
             "Funnel replay: HR@10 of the final list, each channel's own list and references")
    for name, values in {**ranking, **recall}.items():
        curve = learning_curve(values)
        if curve is None:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        _plot_learning_curve(ax, curve)
        ax.set_title(name, fontsize=9)
        save(fig, f"learning_curve_{name}.png",
             f"Learning curve: {name} (best epoch {curve.best_epoch or '?'})")
    return written


def data_rows(counts: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens summary.json into "events.accepted" -> 4000 rows; zero dead-letter
    counts are dropped (only the reasons that happened are worth a line), and
    the reconciliation checks become one row."""
    out: dict[str, Any] = {}
    for key, value in counts.items():
        name = f"{prefix}{key}"
        if key == "checks" and isinstance(value, Mapping):
            failed = sorted(k for k, ok in value.items() if not ok)
            out[name] = "all pass" if not failed else "FAILED: " + ", ".join(failed)
        elif isinstance(value, Mapping):
            out.update(data_rows(value, f"{name}."))
        elif "dead_letter" in name and value == 0:
            continue
        else:
            out[name] = value
    return out


def constant_logloss(examples: int | None, positives: int | None) -> float | None:
    """Log loss of predicting the eval click rate p for every example: the entropy
    -(p ln p + (1 - p) ln(1 - p)); None without both classes (or counts)."""
    if not examples or positives is None or not 0 < positives < examples:
        return None
    p = positives / examples
    return float(-(p * math.log(p) + (1 - p) * math.log(1 - p)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _auc_cell(row: Mapping[str, Any]) -> str:
    if row.get("not_evaluable"):
        return f"not evaluable ({row['not_evaluable']})"
    return f"{row['value']:+.4f}" if row["is_diff"] else f"{row['value']:.4f}"


def _ci_cell(row: Mapping[str, Any]) -> str:
    if row.get("not_evaluable") or row.get("lower") is None or row.get("upper") is None:
        return "-"
    sign = "+" if row["is_diff"] else ""
    return f"[{row['lower']:{sign}.4f}, {row['upper']:{sign}.4f}]"


def render(sections: Mapping[str, Any]) -> str:
    """The Markdown text of the report (pure: tested on its own)."""
    lines = ["# feedrec pipeline report", "", f"Generated {sections['generated']}.", ""]
    if sections.get("data"):
        lines += ["## Data", "", "| count | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in sections["data"].items()]
        lines.append("")
    lines += sections.get("data_checks", [])
    if sections.get("ranking"):
        lines += ["## Ranking models (trainer eval split)", "",
                  "| model | role | click AUC | click gAUC | click logloss | base-rate logloss "
                  "| follow AUC |", "| --- | --- | --- | --- | --- | --- | --- |"]
        worse = []
        for role, (name, m) in sections["ranking"].items():
            click, follow = m.get(fc.CLICK_LABEL) or {}, m.get(fc.FOLLOW_LABEL) or {}
            constant = constant_logloss(click.get("examples"), click.get("positives"))
            lines.append(f"| {name} | {role} | {_fmt(click.get('auc'))} | {_fmt(click.get('gauc'))}"
                         f" | {_fmt(click.get('logloss'))} | {_fmt(constant)} "
                         f"| {_fmt(follow.get('auc'))} |")
            if constant is not None and isinstance(click.get("logloss"), float) and \
                    click["logloss"] > constant:
                worse.append(f"- {name}: click logloss {click['logloss']:.4f} is worse than "
                             f"predicting the eval click rate for every impression "
                             f"({constant:.4f}): its probabilities are miscalibrated (the gate "
                             "checks the order, AUC, not the probabilities)")
        lines += ["", *worse] if worse else []
        lines.append("")
    if sections.get("training"):
        lines += ["## Training (early stopping on validation carved from the train split)", "",
                  "| model | best epoch | epochs run | stopped early | monitor | best value "
                  "| fit / validation examples |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, row in sections["training"].items():
            stopped = {True: "yes", False: "no"}.get(row["stopped_early"], "-")
            lines.append(f"| {name} | {_fmt(row['best_epoch'])} | {_fmt(row['epochs_run'])} | "
                         f"{stopped} | {_fmt(row['monitor'])} | {_fmt(row['best_value'])} | "
                         f"{_fmt(row['fit_examples'])} / {_fmt(row['validation_examples'])} |")
        lines.append("")
    if sections.get("calibration"):
        lines += ["## Calibration per head (trainer eval split)", "",
                  "| model | head | mean prediction | label rate | ratio | positives / examples |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, rows in sections["calibration"].items():
            for r in rows:
                ratio = (f"not evaluable ({r['not_evaluable']})" if r["not_evaluable"]
                         else _fmt(r["calibration"]))
                lines.append(f"| {name} | {r['head']} | {_fmt(r['mean_prediction'])} | "
                             f"{_fmt(r['label_rate'])} | {ratio} | "
                             f"{r['positives']} / {r['examples']} |")
        lines.append("")
    for gate in sections.get("gates", []):
        lines += [f"## Gate: {gate['title']}", "",
                  f"**{'BLESSED' if gate['blessed'] else 'NOT BLESSED'}**"
                  + ("" if gate["blessed"] else ": " + "; ".join(gate["reasons"])), ""]
        if gate.get("heads"):
            lines += [f"- {text}" for text in gate["heads"]] + [""]
        lines += ["| head | slice | model | AUC | 95% CI |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['output'] or '-'} | {r['slice']} | "
                  f"{r['model']}{' (diff vs baseline)' if r['is_diff'] else ''} | "
                  f"{_auc_cell(r)} | {_ci_cell(r)} |" for r in gate["rows"]]
        lines.append("")
    if sections.get("recall"):
        keys = sorted({k for m in sections["recall"].values() for k in m
                       if "@" in k and isinstance(m[k], (int, float))},
                      key=lambda k: (k.split("@")[0], int(k.split("@")[1])))
        lines += ["## Recall models (time split)", "", "| model | " + " | ".join(keys) + " |",
                  "| --- |" + " --- |" * len(keys)]
        lines += [f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |"
                  for name, m in sections["recall"].items() if any(k in m for k in keys)]
        lines.append("")
        # A trainer's warnings on its data (Item2vec on few sessions) sit
        # beside its figures, where a reader of those figures looks.
        warned = [f"- {name}: {w}" for name, m in sections["recall"].items()
                  for w in m.get("warnings") or ()]
        if warned:
            lines += ["Warnings:", "", *warned, ""]
    if sections.get("blend"):
        lines += ["## Final-list blend (BlendFitter)", ""]
        lines += [f"- {text}" for text in sections["blend"]]
        lines.append("")
    if sections.get("funnel"):
        lines += ["## Funnel replay (requests through the Recommender)", "",
                  "| dataset | list | " + " | ".join(FUNNEL_METRICS) + " | share of final top 10 |",
                  "| --- | --- |" + " --- |" * (len(FUNNEL_METRICS) + 1)]
        lines += [f"| {dataset} | {r['list']} | " + " | ".join(_fmt(r[m]) for m in FUNNEL_METRICS)
                  + f" | {_fmt(r['share'])} |"
                  for dataset, rows in sections["funnel"].items() for r in rows]
        lines.append("")
        lines += [f"- {text}" for text in sections.get("funnel_targets", [])]
        lines.append("")
    if sections.get("serving"):
        lines += ["## Serving checks (model server, real Predict)", "",
                  "| model | blessed | detail |", "| --- | --- | --- |"]
        lines += [f"| {n} | {'yes' if ok else 'no'} | {why} |"
                  for n, (ok, why) in sections["serving"].items()]
        lines.append("")
    lines += ["## Pushed", ""]
    if sections.get("pushed"):
        lines += [f"- {name}: {where}" for name, where in sections["pushed"].items()]
    else:
        lines.append("- nothing")
    lines.append("")
    if sections.get("plots"):
        lines += ["## Plots", ""]
        lines += [f"### {title}\n\n![{title}]({name})\n" for title, name in sections["plots"]]
    return "\n".join(lines)


def gate_section(title: str, evaluation_uris: list[str], blessing) -> dict[str, Any]:
    """One gate of the report from its evaluations and its (RankingGate) blessing.

    Heads are named by the EvalConfig each Evaluator stored; for evaluations
    without one (older artifacts) the multi-task order click, follow is assumed.
    """
    rows, heads, failing = [], [], []
    for default_head, uri in zip(fc.LABEL_KEYS, evaluation_uris):
        figures = eval_config.gate_figures(uri)
        head = figures.head or default_head
        heads.append(dataclasses.replace(figures, head=head).describe())
        failing += eval_config.failing_reasons(uri)
        for row in eval_config.metric_rows(uri):
            rows.append({**row, "model": row["model"] or "candidate",
                         "output": row["output"] or head})
    rows.sort(key=lambda r: (r["output"], r["slice"] != eval_config.OVERALL, r["slice"],
                             r["is_diff"]))
    blessed = blessing.get_int_custom_property("blessed") == 1
    # RankingGate says why in one place (not evaluable heads included); a
    # bare Evaluator blessing only has TFMA's failures.
    reason = (blessing.get_string_custom_property("reason")
              if blessing.has_custom_property("reason") else "")
    return {"title": title, "blessed": blessed, "reasons": [reason] if reason else failing,
            "heads": heads, "rows": rows}


def _pushed_where(artifact) -> str:
    if artifact.get_int_custom_property("pushed") == 1:
        return artifact.get_string_custom_property("pushed_destination")
    reason = artifact.get_string_custom_property("reason")
    return "not pushed" + (f" ({reason})" if reason else " (not blessed)")


@component
def PipelineReporter(  # noqa: N802
        report: OutputArtifact[PipelineReport],
        publish_dir: Parameter[str],
        summary: InputArtifact[SessionizeSummary] = None,
        ranking_examples: InputArtifact[standard_artifacts.Examples] = None,
        baseline_model: InputArtifact[standard_artifacts.Model] = None,
        baseline_metrics: InputArtifact[TrainingMetrics] = None,
        candidate_model: InputArtifact[standard_artifacts.Model] = None,
        candidate_metrics: InputArtifact[TrainingMetrics] = None,
        multitask_model: InputArtifact[standard_artifacts.Model] = None,
        multitask_metrics: InputArtifact[TrainingMetrics] = None,
        candidate_evaluation: InputArtifact[standard_artifacts.ModelEvaluation] = None,
        candidate_blessing: InputArtifact[standard_artifacts.ModelBlessing] = None,
        multitask_evaluation: InputArtifact[standard_artifacts.ModelEvaluation] = None,
        multitask_second_evaluation: InputArtifact[standard_artifacts.ModelEvaluation] = None,
        multitask_blessing: InputArtifact[standard_artifacts.ModelBlessing] = None,
        candidate_infra: InputArtifact[standard_artifacts.InfraBlessing] = None,
        multitask_infra: InputArtifact[standard_artifacts.InfraBlessing] = None,
        item2vec_infra: InputArtifact[standard_artifacts.InfraBlessing] = None,
        youtubenet_infra: InputArtifact[standard_artifacts.InfraBlessing] = None,
        two_tower_infra: InputArtifact[standard_artifacts.InfraBlessing] = None,
        candidate_pushed: InputArtifact[standard_artifacts.PushedModel] = None,
        multitask_pushed: InputArtifact[standard_artifacts.PushedModel] = None,
        item2vec_metrics: InputArtifact[TrainingMetrics] = None,
        youtubenet_metrics: InputArtifact[TrainingMetrics] = None,
        two_tower_metrics: InputArtifact[TrainingMetrics] = None,
        item2vec_pushed: InputArtifact[standard_artifacts.PushedModel] = None,
        youtubenet_pushed: InputArtifact[standard_artifacts.PushedModel] = None,
        two_tower_pushed: InputArtifact[standard_artifacts.PushedModel] = None,
        item2vec_index: InputArtifact[PushedIndex] = None,
        youtubenet_index: InputArtifact[PushedIndex] = None,
        two_tower_index: InputArtifact[PushedIndex] = None,
        data_anomalies: InputArtifact[DataAnomalies] = None,
        final_blend: InputArtifact[FinalBlend] = None,
        max_roc_examples: Parameter[int] = 20000,
        funnel_results: Parameter[str] = "",
        funnel_dataset: Parameter[str] = "",
        funnel_sha256: Parameter[str] = ""):
    """Writes report.md + PNGs to the artifact and to <publish_dir>/<unix time>/.

    Every input is optional: the report covers the steps the pipeline enabled.
    `funnel_results` is a funnel replay's JSON (bench.funnel_bench); a path
    that does not exist adds no replay rows, and neither does a JSON without
    the dataset `funnel_dataset` names (when it names one: the replay of the
    data this pipeline runs on, not of every benched dataset). The section
    names the file, the commit it was written at and `funnel_sha256` (the
    runner's hash of it, which is there for the cache key): its figures
    come from the bench's own models, not this run's. `final_blend` adds
    what BlendFitter published and, as the funnel's "this run" panel, the
    validation HR@10 of each order it replayed.
    """
    sections: dict[str, Any] = {"generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if summary is not None and tf.io.gfile.exists(os.path.join(summary.uri, SUMMARY_FILE)):
        with tf.io.gfile.GFile(os.path.join(summary.uri, SUMMARY_FILE)) as f:
            counts = json.load(f)
        sections["data"] = data_rows(counts)
    if data_anomalies is not None:
        sections["data_checks"] = statistics.markdown_section(
            statistics.read_anomalies(data_anomalies.uri))
    ranking = {}
    for role, metrics in zip(RANKING_ROLES, (baseline_metrics, candidate_metrics, multitask_metrics)):
        if metrics is not None:
            content = read_metrics(metrics.uri)
            ranking[role] = (content["model_name"], content["metrics"])
    sections["ranking"] = ranking
    sections["calibration"] = {name: rows for name, m in ranking.values()
                               if (rows := calibration_rows(m))}
    rocs = {}
    models = dict(zip(RANKING_ROLES, (baseline_model, candidate_model, multitask_model)))
    if ranking_examples is not None and any(m is not None for m in models.values()):
        serialized = read_serialized_examples(ranking_examples.uri, fc.EVAL, max_roc_examples)
        labels = labels_of(serialized)
        for role, model in models.items():
            if model is None:
                continue
            name = ranking.get(role, (role,))[0]
            scores = score_examples(path_utils.serving_model_dir(model.uri), serialized)
            for task, values in scores.items():
                if task in labels and labels[task].any():
                    rocs[f"{name} ({task})"] = roc_curve(labels[task], values)
    gates = []
    for title, evaluations, bl in (
            ("ranking candidate vs baseline", [candidate_evaluation], candidate_blessing),
            ("multi-task (click vs baseline, follow floor)",
             [multitask_evaluation, multitask_second_evaluation], multitask_blessing)):
        evaluations = [e for e in evaluations if e is not None]
        if evaluations and bl is not None:
            gates.append(gate_section(title, [e.uri for e in evaluations], bl))
    sections["gates"] = gates
    recall = {}
    for metrics in (item2vec_metrics, youtubenet_metrics, two_tower_metrics):
        if metrics is not None:
            content = read_metrics(metrics.uri)
            recall[content["model_name"]] = content["metrics"]
    sections["recall"] = recall
    sections["training"] = {name: row for name, m in [*ranking.values(), *recall.items()]
                            if (row := training_row(m)) is not None}
    sections["serving"] = {
        name: (infra.get_int_custom_property("blessed") == 1,
               infra.get_string_custom_property("reason"))
        for name, infra in (("candidate", candidate_infra), ("multitask", multitask_infra),
                            ("item2vec user tower", item2vec_infra),
                            ("youtubenet user tower", youtubenet_infra),
                            ("two_tower user tower", two_tower_infra))
        if infra is not None}
    pushed = {}
    for name, artifact in (("ranking candidate", candidate_pushed),
                           ("ranking multitask", multitask_pushed),
                           ("item2vec user tower", item2vec_pushed),
                           ("youtubenet user tower", youtubenet_pushed),
                           ("two_tower user tower", two_tower_pushed),
                           ("item2vec index", item2vec_index),
                           ("youtubenet index", youtubenet_index),
                           ("two_tower index", two_tower_index)):
        if artifact is not None:
            pushed[name] = _pushed_where(artifact)
    sections["pushed"] = pushed
    sigmas = {}
    if multitask_metrics is not None:
        sigmas = {k: float(v) for k, v in (ranking["multitask"][1].get("sigma") or {}).items()
                  if isinstance(v, (int, float))}
    funnel: dict[str, list[dict[str, Any]]] = {}
    if funnel_results and tf.io.gfile.exists(funnel_results):
        with tf.io.gfile.GFile(funnel_results) as f:
            replay = json.load(f)
        funnel = funnel_rows(replay, funnel_dataset)
        sections["funnel"] = funnel
        if funnel:
            commit = (replay.get("_run") or {}).get("commit", "unknown")
            digest = f", sha256 {funnel_sha256[:12]}" if funnel_sha256 else ""
            sections["funnel_targets"] = [
                f"replay figures from {funnel_results} (written at commit {commit}{digest}): "
                f"the bench's own trained models, not this run's"
            ] + funnel_targets(replay, funnel_dataset)
        else:
            logging.warning("PipelineReporter: %s holds no funnel replay of %r; the report has "
                            "no replay rows", funnel_results, funnel_dataset)
    if final_blend is not None:
        fit = read_fit(final_blend)
        sections["blend"] = blend_lines(final_blend, fit)
        if fit is not None:
            funnel = {BLEND_DATASET: blend_rows(fit), **funnel}
            sections["funnel"] = funnel
    sections["plots"] = _plots(report.uri, {n: m for n, m in ranking.values()}, rocs, recall,
                               sigmas, funnel)
    with tf.io.gfile.GFile(os.path.join(report.uri, REPORT_FILE), "w") as f:
        f.write(render(sections))
    destination = os.path.join(publish_dir, str(int(time.time())))
    tf.io.gfile.makedirs(destination)
    for name in tf.io.gfile.listdir(report.uri):
        tf.io.gfile.copy(os.path.join(report.uri, name), os.path.join(destination, name),
                         overwrite=True)
    report.set_string_custom_property("published_path", os.path.join(destination, REPORT_FILE))
    report.set_int_custom_property("gates_failed", sum(not g["blessed"] for g in gates))
