"""TFMA EvalConfigs of the ranking gates, for TFX's standard Evaluator, and
readers of what the Evaluator wrote.

Gate 1 (single task): the candidate (NFwFM) against the baseline (NFM) on the
click label. The candidate is blessed only if its overall AUC clears an
absolute floor AND is not worse than the baseline's by more than a tolerance:

    AUC(candidate) - AUC(baseline) >= -auc_tolerance    (default 0.001)

(TFMA 0.52's change threshold with direction HIGHER_IS_BETTER passes when
diff >= absolute, so the threshold is exactly -auc_tolerance.) Why a
tolerance and not "not worse": on a few thousand eval examples two equally
good models differ by a few 1e-4 of AUC from noise alone; a gate that
demands >= 0 refuses an equal candidate half the time. The difference is
reported with a 95% confidence interval (TFMA's jackknife over 20 buckets of
the eval examples: a paired interval, candidate and baseline are scored on
the same buckets), so a reader sees whether a refusal or a blessing is
within the noise. The gate decides on the point estimate; the interval is
evidence for the reader, not a second threshold.

Metrics are also sliced by is_new_user (Meitu's cold-start slice) for the
report; thresholds apply to the overall slice.

Gate 2 (multi-task): the multi-task NFwFM on both heads, one Evaluator per
head: click against the NFM baseline as above, and follow against an
absolute AUC floor (the baseline has no follow head). The blessings are
joined by components.blessing.RankingGate.

A head whose eval split has no positives (or no negatives) has no AUC; TFMA
then reports AUC 0.0, which a floor of 0 would bless. `gate_figures` reads
the label counts (ExampleCount x MeanLabel) so that RankingGate can call the
head "not evaluable" and refuse it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from tensorflow_model_analysis.api import model_eval_lib
from tensorflow_model_analysis.proto import config_pb2
from tensorflow_model_analysis.writers import eval_config_writer

from feature_contract import feature_config as fc

CANDIDATE, BASELINE = "candidate", "baseline"
DEFAULT_AUC_TOLERANCE = 0.001
OVERALL = "overall"


def _auc(lower_bound: float, tolerance: float | None) -> config_pb2.MetricConfig:
    """AUC with a floor, and with a change threshold when `tolerance` is set."""
    threshold = config_pb2.MetricThreshold(
        value_threshold=config_pb2.GenericValueThreshold(lower_bound={"value": lower_bound}))
    if tolerance is not None:
        threshold.change_threshold.CopyFrom(config_pb2.GenericChangeThreshold(
            direction=config_pb2.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -tolerance}))
    # Gate on the overall slice only: the is_new_user slices are small and
    # noisy, so they are reported, not gated.
    return config_pb2.MetricConfig(class_name="AUC", per_slice_thresholds=[
        config_pb2.PerSliceMetricThreshold(slicing_specs=[config_pb2.SlicingSpec()], threshold=threshold)])


def _reporting_metrics() -> list[config_pb2.MetricConfig]:
    # ExampleCount and MeanLabel give the label counts that tell an
    # evaluable head from one with a single class.
    return [config_pb2.MetricConfig(class_name="ExampleCount"),
            config_pb2.MetricConfig(class_name="BinaryCrossentropy"),
            config_pb2.MetricConfig(class_name="MeanLabel"),
            config_pb2.MetricConfig(class_name="MeanPrediction")]


def _slices(slice_features: Sequence[str]) -> list[config_pb2.SlicingSpec]:
    return [config_pb2.SlicingSpec()] + [config_pb2.SlicingSpec(feature_keys=[f]) for f in slice_features]


def _options(confidence_intervals: bool) -> config_pb2.Options:
    options = config_pb2.Options()
    if confidence_intervals:
        # Jackknife (20 buckets) rather than Poisson bootstrap: it reuses the
        # per-bucket accumulators, so it costs little over the plain run.
        options.compute_confidence_intervals.value = True
        options.confidence_intervals.method = config_pb2.ConfidenceIntervalOptions.JACKKNIFE
    return options


def _check_tolerance(auc_tolerance: float) -> None:
    if not (isinstance(auc_tolerance, (int, float)) and math.isfinite(auc_tolerance)
            and auc_tolerance >= 0):
        raise ValueError(f"auc_tolerance must be a finite number >= 0, got {auc_tolerance!r}")


def ranking_gate(min_auc: float, label_key: str = fc.CLICK_LABEL,
                 slice_features: Sequence[str] = (fc.NEW_USER_KEY,),
                 auc_tolerance: float = DEFAULT_AUC_TOLERANCE,
                 confidence_intervals: bool = True) -> config_pb2.EvalConfig:
    """Candidate vs baseline on one label (the models output {label: prob [B]}).

    Args:
      min_auc: absolute AUC floor of the candidate.
      label_key: label feature and output name.
      slice_features: extra slices (overall is always there).
      auc_tolerance: how much lower than the baseline's the candidate's AUC
        may be (>= 0): blessed when AUC_c - AUC_b >= -auc_tolerance.
      confidence_intervals: compute 95% jackknife intervals.
    Raises:
      ValueError: a negative or non-finite auc_tolerance.
    """
    _check_tolerance(auc_tolerance)
    specs = [config_pb2.ModelSpec(name=name, signature_name="serving_default", label_key=label_key,
                                  prediction_key=label_key, is_baseline=name == BASELINE)
             for name in (CANDIDATE, BASELINE)]
    metrics = config_pb2.MetricsSpec(metrics=_reporting_metrics() + [_auc(min_auc, auc_tolerance)],
                                     model_names=[CANDIDATE, BASELINE])
    return config_pb2.EvalConfig(model_specs=specs, metrics_specs=[metrics],
                                 slicing_specs=_slices(slice_features),
                                 options=_options(confidence_intervals))


def head_gate(min_auc: float, label_key: str,
              slice_features: Sequence[str] = (fc.NEW_USER_KEY,),
              confidence_intervals: bool = True) -> config_pb2.EvalConfig:
    """One head of a multi-head model against an absolute AUC floor (no baseline)."""
    spec = config_pb2.ModelSpec(signature_name="serving_default", label_key=label_key,
                                prediction_key=label_key)
    metrics = config_pb2.MetricsSpec(metrics=_reporting_metrics() + [_auc(min_auc, None)])
    return config_pb2.EvalConfig(model_specs=[spec], metrics_specs=[metrics],
                                 slicing_specs=_slices(slice_features),
                                 options=_options(confidence_intervals))


def multitask_gates(min_auc: dict[str, float], baseline_task: str = fc.CLICK_LABEL,
                    slice_features: Sequence[str] = (fc.NEW_USER_KEY,),
                    auc_tolerance: float = DEFAULT_AUC_TOLERANCE,
                    confidence_intervals: bool = True
                    ) -> dict[str, tuple[config_pb2.EvalConfig, bool]]:
    """One Evaluator config per head of the multi-task model.

    `baseline_task` is gated like the single-task candidate (floor and within
    `auc_tolerance` of the baseline); other heads get their floor only, since
    the single-task baseline has no such head. One Evaluator per head because
    TFMA 0.52 hands a single-output baseline's predictions to metrics as a
    bare array (extractors/inference_base.py), so a per-output diff between a
    two-head candidate and a one-head baseline cannot be configured.

    Args:
      min_auc: head -> absolute AUC floor (its keys are the candidate's heads).
      baseline_task: the head the single-task baseline also predicts.
      slice_features: extra slices.
      auc_tolerance: see ranking_gate.
      confidence_intervals: compute 95% jackknife intervals.
    Returns:
      head -> (EvalConfig, whether the Evaluator needs the baseline model).
    Raises:
      ValueError: baseline_task is not a head, or a bad auc_tolerance.
    """
    if baseline_task not in min_auc:
        raise ValueError(f"baseline task {baseline_task!r} not among heads {sorted(min_auc)}")
    return {task: ((ranking_gate(floor, task, slice_features, auc_tolerance, confidence_intervals),
                    True) if task == baseline_task
                   else (head_gate(floor, task, slice_features, confidence_intervals), False))
            for task, floor in sorted(min_auc.items())}


def _threshold_text(threshold) -> str:
    parts = []
    if threshold.HasField("value_threshold"):
        bound = threshold.value_threshold.lower_bound
        if bound.ByteSize():
            parts.append(f"must be >= {bound.value:g}")
    if threshold.HasField("change_threshold"):
        parts.append(f"change vs baseline must be >= {threshold.change_threshold.absolute.value:g}")
    return " and ".join(parts) or "threshold"


def failing_reasons(evaluation_uri: str) -> list[str]:
    """Human-readable reasons a validation failed ([] when it passed).

    E.g. "auc diff vs baseline (overall) = -0.0318: change vs baseline must be >= -0.001".
    On a slice whose labels are all one class TFMA still judges an AUC (0.0);
    that value is no figure, so the reason says why the slice has none:
    "auc (overall): not evaluable (0 positives in eval); must be >= 0.5".
    """
    result = model_eval_lib.load_validation_result(evaluation_uri)
    if result.validation_ok:
        return []
    unevaluable = {row["slice"]: row["not_evaluable"] for row in metric_rows(evaluation_uri)
                   if row["not_evaluable"] and not row["is_diff"]}
    reasons = []
    for per_slice in result.metric_validations_per_slice:
        where = ",".join(f"{c.column}={_slice_value(c)}"
                         for c in per_slice.slice_key.single_slice_keys) or OVERALL
        for failure in per_slice.failures:
            key = failure.metric_key
            what = key.name + (f"[{key.output_name}]" if key.output_name else "")
            what += " diff vs baseline" if key.is_diff else ""
            threshold = _threshold_text(failure.metric_threshold)
            if where in unevaluable:
                reasons.append(f"{what} ({where}): not evaluable ({unevaluable[where]}); "
                               f"{threshold}")
                continue
            value = failure.metric_value.double_value.value
            reasons.append(f"{what} ({where}) = {value:.4f}: {threshold}")
    return reasons or ["validation failed (see the evaluation artifact)"]


def _slice_value(key) -> str:
    kind = key.WhichOneof("kind")
    value = getattr(key, kind) if kind else ""
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class MetricValue:
    """One metric of one (slice, model, output); lower/upper: the 95% interval
    when the Evaluator computed intervals, else None."""

    value: float
    lower: float | None = None
    upper: float | None = None

    @property
    def ci(self) -> tuple[float, float] | None:
        return None if self.lower is None or self.upper is None else (self.lower, self.upper)


# (slice name, model name, output name, is_diff) -> metric name -> MetricValue
MetricTable = dict[tuple[str, str, str, bool], dict[str, MetricValue]]


def _double(metric_value) -> float | None:
    return float(metric_value.double_value.value) if metric_value.HasField("double_value") else None


def metric_table(evaluation_uri: str) -> MetricTable:
    """Every scalar metric of a TFMA evaluation, with its interval when there is one."""
    table: MetricTable = {}
    for per_slice in model_eval_lib.load_metrics(evaluation_uri):
        name = ",".join(f"{c.column}={_slice_value(c)}"
                        for c in per_slice.slice_key.single_slice_keys) or OVERALL
        for item in per_slice.metric_keys_and_values:
            value = _double(item.value)
            if value is None:
                continue
            ci = item.confidence_interval if item.HasField("confidence_interval") else None
            lower = _double(ci.lower_bound) if ci is not None else None
            upper = _double(ci.upper_bound) if ci is not None else None
            key = (name, item.key.model_name, item.key.output_name, bool(item.key.is_diff))
            table.setdefault(key, {})[item.key.name] = MetricValue(value, lower, upper)
    return table


def label_counts(values: dict[str, MetricValue]) -> tuple[int | None, int | None]:
    """(examples, positives) from ExampleCount and MeanLabel; None when missing.

    MeanLabel is the (unweighted: the Examples carry no weights) positive rate,
    so positives = mean_label * example_count, rounded to undo float error.
    """
    count, mean = values.get("example_count"), values.get("mean_label")
    if count is None or mean is None or not math.isfinite(count.value) \
            or not math.isfinite(mean.value):
        return None, None
    examples = int(round(count.value))
    return examples, int(round(mean.value * count.value))


def not_evaluable_reason(examples: int | None, positives: int | None) -> str | None:
    """Why a head has no AUC on these counts ("0 positives in eval"), None if it has one."""
    if examples is None or positives is None:
        return "no label counts in the evaluation"
    if positives == 0:
        return "0 positives in eval"
    if positives == examples:
        return "0 negatives in eval"
    return None


def metric_rows(evaluation_uri: str, metric: str = "auc") -> list[dict]:
    """One row per (slice, model, output) of a TFMA evaluation's `metric`.

    Args:
      evaluation_uri: the Evaluator's ModelEvaluation URI.
      metric: TFMA metric key name (AUC is recorded as "auc").

    Returns:
      [{"slice": "overall" | "is_new_user=1", "model": "candidate", "output": "click",
        "value": 0.71, "lower": 0.69 | None, "upper": 0.73 | None, "is_diff": False,
        "not_evaluable": None | "0 positives in eval"}, ...]; for a diff row
      not_evaluable is the candidate's.
    """
    table = metric_table(evaluation_uri)
    rows = []
    for (name, model, output, is_diff), values in table.items():
        if metric not in values:
            continue
        counts = table.get((name, model, output, False), {})
        found = values[metric]
        rows.append({"slice": name, "model": model, "output": output, "value": found.value,
                     "lower": found.lower, "upper": found.upper, "is_diff": is_diff,
                     "not_evaluable": not_evaluable_reason(*label_counts(counts))})
    return rows


@dataclasses.dataclass(frozen=True)
class GateFigures:
    """What one Evaluator measured for its head on the overall slice.

    Attributes:
      head: the label (and output) gated.
      examples, positives: label counts of the eval split (None: not recorded).
      not_evaluable: why the head has no AUC (e.g. "0 positives in eval"), or None.
      auc: the candidate's AUC and its interval.
      baseline_auc: the baseline's (None without a baseline).
      diff: AUC(candidate) - AUC(baseline) and its interval (None without a baseline).
      tolerance: the gate's auc_tolerance (None without a change threshold).
      min_auc: the AUC floor (None if none).
      validation_ok: what TFMA's validation decided.
    """

    head: str
    examples: int | None
    positives: int | None
    not_evaluable: str | None
    auc: MetricValue | None
    baseline_auc: MetricValue | None
    diff: MetricValue | None
    tolerance: float | None
    min_auc: float | None
    validation_ok: bool

    def describe(self) -> str:
        """One line: "click: candidate AUC 0.6512 vs baseline 0.6490, diff +0.0022
        (95% CI -0.0011 to +0.0055), tolerance 0.001, floor 0.5; 103 positives in
        400 eval examples" or "follow: not evaluable (0 positives in eval)"."""
        if self.not_evaluable:
            return f"{self.head}: not evaluable ({self.not_evaluable})"
        if self.auc is None:
            return f"{self.head}: no AUC recorded"
        text = f"{self.head}: candidate AUC {self.auc.value:.4f}"
        if self.baseline_auc is not None:
            text += f" vs baseline {self.baseline_auc.value:.4f}"
        if self.diff is not None:
            text += f", diff {self.diff.value:+.4f}"
            if self.diff.ci is not None:
                text += f" (95% CI {self.diff.lower:+.4f} to {self.diff.upper:+.4f})"
        elif self.auc.ci is not None:
            text += f" (95% CI {self.auc.lower:.4f} to {self.auc.upper:.4f})"
        if self.tolerance is not None:
            text += f", tolerance {self.tolerance:g}"
        if self.min_auc is not None:
            text += f", floor {self.min_auc:g}"
        if self.examples is not None:
            # A wide interval on a handful of positives reads differently.
            text += f"; {self.positives} positives in {self.examples} eval examples"
        return text


def _thresholds(eval_config: config_pb2.EvalConfig | None) -> tuple[float | None, float | None]:
    """(min_auc, tolerance) of the AUC threshold on the overall slice."""
    floor = tolerance = None
    for spec in eval_config.metrics_specs if eval_config is not None else ():
        for metric in spec.metrics:
            if metric.class_name != "AUC":
                continue
            for per_slice in metric.per_slice_thresholds:
                threshold = per_slice.threshold
                if threshold.value_threshold.HasField("lower_bound"):
                    floor = threshold.value_threshold.lower_bound.value
                if threshold.change_threshold.HasField("absolute"):
                    tolerance = -threshold.change_threshold.absolute.value
    return floor, tolerance


def gate_figures(evaluation_uri: str) -> GateFigures:
    """The gated head's figures from a ModelEvaluation written by the Evaluator.

    The head, floor and tolerance come from the EvalConfig the Evaluator stored
    next to its metrics, so an artifact explains itself.
    """
    eval_config = eval_config_writer.load_eval_run(evaluation_uri)[0]
    specs = list(eval_config.model_specs) if eval_config is not None else []
    candidate = next((s for s in specs if not s.is_baseline), None)
    head = candidate.label_key if candidate is not None else ""
    candidate_name = candidate.name if candidate is not None else ""
    baseline_name = next((s.name for s in specs if s.is_baseline), None)
    floor, tolerance = _thresholds(eval_config)
    table = metric_table(evaluation_uri)
    values = table.get((OVERALL, candidate_name, "", False), {})
    examples, positives = label_counts(values)
    baseline = (table.get((OVERALL, baseline_name, "", False), {}).get("auc")
                if baseline_name is not None else None)
    diff = (table.get((OVERALL, candidate_name, "", True), {}).get("auc")
            if baseline_name is not None else None)
    validation_ok = model_eval_lib.load_validation_result(evaluation_uri).validation_ok
    return GateFigures(head=head, examples=examples, positives=positives,
                       not_evaluable=not_evaluable_reason(examples, positives),
                       auc=values.get("auc"), baseline_auc=baseline, diff=diff,
                       tolerance=tolerance if baseline_name is not None else None,
                       min_auc=floor, validation_ok=bool(validation_ok))
