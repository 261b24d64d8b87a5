"""RankingGate: the one ModelBlessing the ranking Pusher takes.

It ANDs the Evaluator blessings of a model (one per head: the multi-task
model has two) with a check TFMA cannot make: every gated head must be
evaluable, i.e. its eval split holds both classes. Without positives TFMA
reports AUC 0.0, which an AUC floor of 0 blesses; here such a head is "not
evaluable (0 positives in eval)" and refuses the model unless
`allow_unevaluable_heads` is set (then that head's Evaluator verdict, made
on a meaningless AUC, is ignored).

The output carries, per head, the figures the summary and the report print
(AUCs, the difference with the baseline and its 95% interval, label counts)
as custom properties, so an MLMD query sees why a model was or was not
pushed.
"""

import os
from collections.abc import Sequence

import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components import eval_config

BLESSED_KEY = "blessed"


def decide(figures: Sequence[eval_config.GateFigures], evaluator_blessed: Sequence[bool],
           evaluation_reasons: Sequence[Sequence[str]], allow_unevaluable_heads: bool
           ) -> tuple[bool, list[str]]:
    """The gate's verdict over its heads.

    Args:
      figures: one per Evaluator (head).
      evaluator_blessed: that Evaluator's blessing.
      evaluation_reasons: that Evaluator's failing reasons ([] when blessed).
      allow_unevaluable_heads: a head without both classes does not refuse.
    Returns:
      (blessed, reasons it is not; [] when blessed).
    """
    reasons: list[str] = []
    for head, blessed, why in zip(figures, evaluator_blessed, evaluation_reasons):
        if head.not_evaluable:
            if not allow_unevaluable_heads:
                reasons.append(f"{head.head}: not evaluable ({head.not_evaluable}); "
                               "allow_unevaluable_heads is off")
            # Allowed: the Evaluator judged an AUC that does not exist; ignore it.
            continue
        if not blessed:
            reasons.extend(f"{head.head}: {r}" for r in why)
    return not reasons, reasons


def _set_float(artifact, key: str, value: float | None) -> None:
    if value is not None:
        artifact.set_float_custom_property(key, float(value))


def record_figures(artifact, figures: eval_config.GateFigures) -> None:
    """Per-head custom properties: <head>_auc[_lower|_upper], <head>_baseline_auc,
    <head>_auc_diff[_lower|_upper], <head>_eval_examples / _eval_positives,
    <head>_summary (GateFigures.describe) and auc_tolerance."""
    head = figures.head
    for name, value in (("auc", figures.auc), ("baseline_auc", figures.baseline_auc),
                        ("auc_diff", figures.diff)):
        if value is not None:
            _set_float(artifact, f"{head}_{name}", value.value)
            _set_float(artifact, f"{head}_{name}_lower", value.lower)
            _set_float(artifact, f"{head}_{name}_upper", value.upper)
    if figures.examples is not None:
        artifact.set_int_custom_property(f"{head}_eval_examples", figures.examples)
        artifact.set_int_custom_property(f"{head}_eval_positives", figures.positives)
    if figures.tolerance is not None:
        artifact.set_float_custom_property("auc_tolerance", figures.tolerance)
    artifact.set_string_custom_property(f"{head}_summary", figures.describe())


@component
def RankingGate(  # noqa: N802
        evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
        evaluator_blessing: InputArtifact[standard_artifacts.ModelBlessing],
        blessing: OutputArtifact[standard_artifacts.ModelBlessing],
        second_evaluation: InputArtifact[standard_artifacts.ModelEvaluation] = None,
        second_blessing: InputArtifact[standard_artifacts.ModelBlessing] = None,
        allow_unevaluable_heads: Parameter[bool] = False):
    """Blesses a ranking model when every Evaluator did and every head is evaluable.

    Args:
      evaluation, evaluator_blessing: the (first) Evaluator's outputs.
      blessing: blessed = 1 or 0; `heads` (comma-separated), `reason` (why
        not), `not_evaluable`, `sources` / `not_blessed_by` (blessing URIs)
        and the per-head figures of record_figures.
      second_evaluation, second_blessing: a second head's Evaluator (multi-task).
      allow_unevaluable_heads: bless although a head's eval split has one class.
    """
    pairs = [(evaluation, evaluator_blessing)]
    if second_evaluation is not None or second_blessing is not None:
        if second_evaluation is None or second_blessing is None:
            raise ValueError("second_evaluation and second_blessing go together")
        pairs.append((second_evaluation, second_blessing))
    figures = [eval_config.gate_figures(e.uri) for e, _ in pairs]
    evaluator_blessed = [b.get_int_custom_property(BLESSED_KEY) == 1 for _, b in pairs]
    why = [eval_config.failing_reasons(e.uri) if not ok else []
           for (e, _), ok in zip(pairs, evaluator_blessed)]
    ok, reasons = decide(figures, evaluator_blessed, why, allow_unevaluable_heads)
    blessing.set_int_custom_property(BLESSED_KEY, int(ok))
    blessing.set_string_custom_property("heads", ",".join(f.head for f in figures))
    blessing.set_string_custom_property("reason", "; ".join(reasons))
    blessing.set_string_custom_property("not_evaluable", "; ".join(
        f"{f.head}: {f.not_evaluable}" for f in figures if f.not_evaluable))
    blessing.set_string_custom_property("sources", ",".join(b.uri for _, b in pairs))
    blessing.set_string_custom_property("not_blessed_by", ",".join(
        b.uri for (_, b), blessed in zip(pairs, evaluator_blessed) if not blessed))
    for head in figures:
        record_figures(blessing, head)
    # The model the Evaluator blessed, as it records it (for Resolver strategies).
    first = evaluator_blessing
    if first.has_custom_property("current_model"):
        blessing.set_string_custom_property(
            "current_model", first.get_string_custom_property("current_model"))
    if first.has_custom_property("current_model_id"):
        blessing.set_int_custom_property(
            "current_model_id", first.get_int_custom_property("current_model_id"))
    with tf.io.gfile.GFile(os.path.join(blessing.uri, "BLESSED" if ok else "NOT_BLESSED"),
                           "w") as f:
        f.write("\n".join(reasons) + "\n")
