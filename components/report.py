"""PipelineReport: a Markdown summary of the run with PNG plots.

Collects what the run decided and measured: the trainers' own metrics, the
Evaluator's AUC per model and slice with the blessing and, when a gate
failed, why; the serving checks; where models and indexes were pushed. Plots
(matplotlib, Agg backend): AUC per model, ROC curves of the ranking models on
the eval split, recall@K per recall model, learned task uncertainties of the
multi-task model. The report is written to the artifact and copied to
<publish_dir>/<unix time>/ (next to the pushed models).
"""

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from beam_jobs import feature_config as fc
from components import eval_config
from components.artifacts import (PipelineReport, PushedIndex, SessionizeSummary,
                                  TrainingMetrics)
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


def _plots(directory: str, ranking: Mapping[str, dict], rocs: Mapping[str, tuple],
           recall: Mapping[str, dict], sigmas: Mapping[str, float]) -> list[tuple[str, str]]:
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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def render(sections: Mapping[str, Any]) -> str:
    """The Markdown text of the report (pure: tested on its own)."""
    lines = ["# feedrec pipeline report", "", f"Generated {sections['generated']}.", ""]
    if sections.get("data"):
        lines += ["## Data", "", "| count | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in sections["data"].items()]
        lines.append("")
    if sections.get("ranking"):
        lines += ["## Ranking models (trainer eval split)", "",
                  "| model | role | click AUC | click gAUC | click logloss | follow AUC |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for role, (name, m) in sections["ranking"].items():
            click, follow = m.get(fc.CLICK_LABEL) or {}, m.get(fc.FOLLOW_LABEL) or {}
            lines.append(f"| {name} | {role} | {_fmt(click.get('auc'))} | {_fmt(click.get('gauc'))}"
                         f" | {_fmt(click.get('logloss'))} | {_fmt(follow.get('auc'))} |")
        lines.append("")
    for gate in sections.get("gates", []):
        lines += [f"## Gate: {gate['title']}", "",
                  f"**{'BLESSED' if gate['blessed'] else 'NOT BLESSED'}**"
                  + ("" if gate["blessed"] else ": " + "; ".join(gate["reasons"])), "",
                  "| head | slice | model | AUC |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['output'] or '-'} | {r['slice']} | "
                  f"{r['model']}{' (diff vs baseline)' if r['is_diff'] else ''} | {r['value']:.4f} |"
                  for r in gate["rows"]]
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
        max_roc_examples: Parameter[int] = 20000):
    """Writes report.md + PNGs to the artifact and to <publish_dir>/<unix time>/.

    Every input is optional: the report covers the steps the pipeline enabled.
    """
    sections: dict[str, Any] = {"generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if summary is not None and tf.io.gfile.exists(os.path.join(summary.uri, SUMMARY_FILE)):
        with tf.io.gfile.GFile(os.path.join(summary.uri, SUMMARY_FILE)) as f:
            counts = json.load(f)
        sections["data"] = data_rows(counts)
    ranking = {}
    for role, metrics in zip(RANKING_ROLES, (baseline_metrics, candidate_metrics, multitask_metrics)):
        if metrics is not None:
            content = read_metrics(metrics.uri)
            ranking[role] = (content["model_name"], content["metrics"])
    sections["ranking"] = ranking
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
        # The multi-task gate's evaluations are, in order, the click and follow heads.
        evaluations = [(head, e) for head, e in zip(fc.LABEL_KEYS, evaluations) if e is not None]
        if not evaluations or bl is None:
            continue
        rows = []
        for head, e in evaluations:
            for row in eval_config.metric_rows(e.uri):
                rows.append({**row, "model": row["model"] or "candidate",
                             "output": row["output"] or head})
        rows.sort(key=lambda r: (r["output"], r["slice"] != "overall", r["slice"]))
        gates.append({"title": title, "blessed": bl.get_int_custom_property("blessed") == 1,
                      "reasons": [r for _, e in evaluations for r in eval_config.failing_reasons(e.uri)],
                      "rows": rows})
    sections["gates"] = gates
    recall = {}
    for metrics in (item2vec_metrics, youtubenet_metrics, two_tower_metrics):
        if metrics is not None:
            content = read_metrics(metrics.uri)
            recall[content["model_name"]] = content["metrics"]
    sections["recall"] = recall
    sections["serving"] = {
        name: (infra.get_int_custom_property("blessed") == 1,
               infra.get_string_custom_property("reason"))
        for name, infra in (("candidate", candidate_infra), ("multitask", multitask_infra))
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
    sections["plots"] = _plots(report.uri, {n: m for n, m in ranking.values()}, rocs, recall,
                               sigmas)
    with tf.io.gfile.GFile(os.path.join(report.uri, REPORT_FILE), "w") as f:
        f.write(render(sections))
    destination = os.path.join(publish_dir, str(int(time.time())))
    tf.io.gfile.makedirs(destination)
    for name in tf.io.gfile.listdir(report.uri):
        tf.io.gfile.copy(os.path.join(report.uri, name), os.path.join(destination, name),
                         overwrite=True)
    report.set_string_custom_property("published_path", os.path.join(destination, REPORT_FILE))
    report.set_int_custom_property("gates_failed", sum(not g["blessed"] for g in gates))
