"""TFMA EvalConfigs of the ranking gates, for TFX's standard Evaluator.

Gate 1 (single task): the candidate (NFwFM) against the baseline (NFM) on the
click label. The candidate is blessed only if its overall AUC clears an
absolute floor AND is not below the baseline's (a change threshold of
-1e-10: equal is fine, worse is not). Metrics are also sliced by
is_new_user (Meitu's cold-start slice) for the report; thresholds apply to
the overall slice.

Gate 2 (multi-task): the multi-task NFwFM on both heads, one Evaluator per
head: click against the NFM baseline as above, and follow against an
absolute AUC floor (the baseline has no follow head). The blessings are
joined by components.blessing.AllBlessed.
"""

from __future__ import annotations

from collections.abc import Sequence

from tensorflow_model_analysis.api import model_eval_lib
from tensorflow_model_analysis.proto import config_pb2

from beam_jobs import feature_config as fc

CANDIDATE, BASELINE = "candidate", "baseline"
# Not worse than the baseline; TFMA's change threshold needs a strict bound,
# so "not worse" is "difference > -1e-10".
NOT_WORSE = -1e-10


def _auc(lower_bound: float, against_baseline: bool) -> config_pb2.MetricConfig:
    threshold = config_pb2.MetricThreshold(
        value_threshold=config_pb2.GenericValueThreshold(lower_bound={"value": lower_bound}))
    if against_baseline:
        threshold.change_threshold.CopyFrom(config_pb2.GenericChangeThreshold(
            direction=config_pb2.MetricDirection.HIGHER_IS_BETTER, absolute={"value": NOT_WORSE}))
    # Gate on the overall slice only: the is_new_user slices are small and
    # noisy, so they are reported, not gated.
    return config_pb2.MetricConfig(class_name="AUC", per_slice_thresholds=[
        config_pb2.PerSliceMetricThreshold(slicing_specs=[config_pb2.SlicingSpec()], threshold=threshold)])


def _reporting_metrics() -> list[config_pb2.MetricConfig]:
    return [config_pb2.MetricConfig(class_name="ExampleCount"),
            config_pb2.MetricConfig(class_name="BinaryCrossentropy"),
            config_pb2.MetricConfig(class_name="MeanLabel"),
            config_pb2.MetricConfig(class_name="MeanPrediction")]


def _slices(slice_features: Sequence[str]) -> list[config_pb2.SlicingSpec]:
    return [config_pb2.SlicingSpec()] + [config_pb2.SlicingSpec(feature_keys=[f]) for f in slice_features]


def ranking_gate(min_auc: float, label_key: str = fc.CLICK_LABEL,
                 slice_features: Sequence[str] = (fc.NEW_USER_KEY,)) -> config_pb2.EvalConfig:
    """Candidate vs baseline on one label (the models output {label: prob [B]}).

    Args:
      min_auc: absolute AUC floor of the candidate.
      label_key: label feature and output name.
      slice_features: extra slices (overall is always there).
    """
    specs = [config_pb2.ModelSpec(name=name, signature_name="serving_default", label_key=label_key,
                            prediction_key=label_key, is_baseline=name == BASELINE)
             for name in (CANDIDATE, BASELINE)]
    metrics = config_pb2.MetricsSpec(metrics=_reporting_metrics() + [_auc(min_auc, True)],
                               model_names=[CANDIDATE, BASELINE])
    return config_pb2.EvalConfig(model_specs=specs, metrics_specs=[metrics],
                           slicing_specs=_slices(slice_features))


def head_gate(min_auc: float, label_key: str,
              slice_features: Sequence[str] = (fc.NEW_USER_KEY,)) -> config_pb2.EvalConfig:
    """One head of a multi-head model against an absolute AUC floor (no baseline)."""
    spec = config_pb2.ModelSpec(signature_name="serving_default", label_key=label_key,
                          prediction_key=label_key)
    metrics = config_pb2.MetricsSpec(metrics=_reporting_metrics() + [_auc(min_auc, False)])
    return config_pb2.EvalConfig(model_specs=[spec], metrics_specs=[metrics],
                           slicing_specs=_slices(slice_features))


def multitask_gates(min_auc: dict[str, float], baseline_task: str = fc.CLICK_LABEL,
                    slice_features: Sequence[str] = (fc.NEW_USER_KEY,)
                    ) -> dict[str, tuple[config_pb2.EvalConfig, bool]]:
    """One Evaluator config per head of the multi-task model.

    `baseline_task` is gated like the single-task candidate (floor and not
    worse than the baseline); other heads get their floor only, since the
    single-task baseline has no such head. One Evaluator per head because
    TFMA 0.52 hands a single-output baseline's predictions to metrics as a
    bare array (extractors/inference_base.py), so a per-output diff between a
    two-head candidate and a one-head baseline cannot be configured.

    Args:
      min_auc: head -> absolute AUC floor (its keys are the candidate's heads).
      baseline_task: the head the single-task baseline also predicts.
      slice_features: extra slices.
    Returns:
      head -> (EvalConfig, whether the Evaluator needs the baseline model).
    Raises:
      ValueError: baseline_task is not a head.
    """
    if baseline_task not in min_auc:
        raise ValueError(f"baseline task {baseline_task!r} not among heads {sorted(min_auc)}")
    return {task: ((ranking_gate(floor, task, slice_features), True) if task == baseline_task
                   else (head_gate(floor, task, slice_features), False))
            for task, floor in sorted(min_auc.items())}


def _threshold_text(threshold) -> str:
    parts = []
    if threshold.HasField("value_threshold"):
        bound = threshold.value_threshold.lower_bound
        if bound.ByteSize():
            parts.append(f"must be >= {bound.value:g}")
    if threshold.HasField("change_threshold"):
        parts.append(f"change vs baseline must be > {threshold.change_threshold.absolute.value:g}")
    return " and ".join(parts) or "threshold"


def failing_reasons(evaluation_uri: str) -> list[str]:
    """Human-readable reasons a validation failed ([] when it passed).

    E.g. "auc diff vs baseline (overall) = -0.0318: change vs baseline must be > -1e-10".
    """
    result = model_eval_lib.load_validation_result(evaluation_uri)
    if result.validation_ok:
        return []
    reasons = []
    for per_slice in result.metric_validations_per_slice:
        where = ",".join(f"{c.column}={_slice_value(c)}"
                         for c in per_slice.slice_key.single_slice_keys) or "overall"
        for failure in per_slice.failures:
            key = failure.metric_key
            what = key.name + (f"[{key.output_name}]" if key.output_name else "")
            what += " diff vs baseline" if key.is_diff else ""
            value = failure.metric_value.double_value.value
            reasons.append(f"{what} ({where}) = {value:.4f}: "
                           f"{_threshold_text(failure.metric_threshold)}")
    return reasons or ["validation failed (see the evaluation artifact)"]


def _slice_value(key) -> str:
    kind = key.WhichOneof("kind")
    value = getattr(key, kind) if kind else ""
    return value.decode() if isinstance(value, bytes) else str(value)


def metric_rows(evaluation_uri: str, metric: str = "auc") -> list[dict]:
    """One row per (slice, model, output) of a TFMA evaluation's `metric`.

    Args:
      evaluation_uri: the Evaluator's ModelEvaluation URI.
      metric: TFMA metric key name (AUC is recorded as "auc").

    Returns:
      [{"slice": "overall" | "is_new_user=1", "model": "candidate", "output": "click",
        "value": 0.71, "is_diff": False}, ...]
    """
    rows = []
    for per_slice in model_eval_lib.load_metrics(evaluation_uri):
        parts = [f"{c.column}={_slice_value(c)}" for c in per_slice.slice_key.single_slice_keys]
        name = ",".join(parts) or "overall"
        for item in per_slice.metric_keys_and_values:
            if item.key.name != metric or not item.value.HasField("double_value"):
                continue
            rows.append({"slice": name, "model": item.key.model_name,
                         "output": item.key.output_name,
                         "value": float(item.value.double_value.value),
                         "is_diff": bool(item.key.is_diff)})
    return rows
