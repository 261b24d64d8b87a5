"""The TFMA gates: what is thresholded, on which slice, against what; label
counts and the not-evaluable rule. (Real Evaluator runs: test_gate.py.)"""

import pytest
from tensorflow_model_analysis.proto import config_pb2

from components import eval_config


def _auc_threshold(metrics_spec):
    (auc,) = [m for m in metrics_spec.metrics if m.class_name == "AUC"]
    (per_slice,) = auc.per_slice_thresholds
    return per_slice


def test_ranking_gate_floor_and_tolerance_on_overall():
    config = eval_config.ranking_gate(0.55)
    assert [(s.name, s.is_baseline, s.label_key) for s in config.model_specs] == [
        ("candidate", False, "click"), ("baseline", True, "click")]
    per_slice = _auc_threshold(config.metrics_specs[0])
    # Gated on the overall slice (an empty SlicingSpec) only.
    assert [s.ByteSize() for s in per_slice.slicing_specs] == [0]
    assert per_slice.threshold.value_threshold.lower_bound.value == 0.55
    change = per_slice.threshold.change_threshold
    # The documented default tolerance: AUC_c - AUC_b >= -0.001 (TFMA 0.52
    # passes a HIGHER_IS_BETTER change when diff >= absolute).
    assert eval_config.DEFAULT_AUC_TOLERANCE == 0.001
    assert change.absolute.value == -0.001 and change.direction == 2  # HIGHER_IS_BETTER
    assert [list(s.feature_keys) for s in config.slicing_specs] == [[], ["is_new_user"]]
    # 95% intervals by jackknife.
    assert config.options.compute_confidence_intervals.value
    assert config.options.confidence_intervals.method == \
        config_pb2.ConfidenceIntervalOptions.JACKKNIFE


def test_ranking_gate_tolerance_is_configurable_and_intervals_optional():
    config = eval_config.ranking_gate(0.5, auc_tolerance=0.02, confidence_intervals=False)
    change = _auc_threshold(config.metrics_specs[0]).threshold.change_threshold
    assert change.absolute.value == -0.02
    assert not config.options.compute_confidence_intervals.value
    # Zero tolerance is "not worse": diff >= 0.
    zero = eval_config.ranking_gate(0.5, auc_tolerance=0.0)
    assert _auc_threshold(zero.metrics_specs[0]).threshold.change_threshold.absolute.value == 0.0


@pytest.mark.parametrize("tolerance", [-0.001, float("nan"), float("inf")])
def test_ranking_gate_rejects_a_bad_tolerance(tolerance):
    with pytest.raises(ValueError, match=r"auc_tolerance must be a finite number >= 0, got"):
        eval_config.ranking_gate(0.5, auc_tolerance=tolerance)


def test_multitask_gates_click_vs_baseline_follow_floor_only():
    gates = eval_config.multitask_gates({"click": 0.6, "follow": 0.52})
    click, click_needs_baseline = gates["click"]
    follow, follow_needs_baseline = gates["follow"]
    assert click_needs_baseline and not follow_needs_baseline
    assert _auc_threshold(click.metrics_specs[0]).threshold.change_threshold.absolute.value \
        == -0.001
    follow_threshold = _auc_threshold(follow.metrics_specs[0]).threshold
    assert not follow_threshold.HasField("change_threshold")
    assert follow_threshold.value_threshold.lower_bound.value == 0.52
    assert [s.label_key for s in follow.model_specs] == ["follow"]


def test_multitask_gates_need_the_baseline_head():
    with pytest.raises(ValueError, match="'click' not among heads"):
        eval_config.multitask_gates({"follow": 0.5})


def test_multitask_gates_pass_the_tolerance_to_the_click_head():
    gates = eval_config.multitask_gates({"click": 0.6, "follow": 0.52}, auc_tolerance=0.005)
    click = _auc_threshold(gates["click"][0].metrics_specs[0]).threshold
    assert click.change_threshold.absolute.value == -0.005
    assert gates["follow"][0].options.compute_confidence_intervals.value


@pytest.mark.parametrize("count, mean, expected", [
    (400.0, 0.2575, (400, 103)),   # 0.2575 * 400 = 103 (float error rounded away)
    (3.0, 1 / 3, (3, 1)),
    (187.0, 0.0, (187, 0)),
])
def test_label_counts_from_example_count_and_mean_label(count, mean, expected):
    values = {"example_count": eval_config.MetricValue(count),
              "mean_label": eval_config.MetricValue(mean)}
    assert eval_config.label_counts(values) == expected


def test_label_counts_missing():
    assert eval_config.label_counts({"auc": eval_config.MetricValue(0.7)}) == (None, None)


@pytest.mark.parametrize("examples, positives, expected", [
    (400, 103, None),
    (400, 0, "0 positives in eval"),
    (400, 400, "0 negatives in eval"),
    (None, None, "no label counts in the evaluation"),
])
def test_not_evaluable_reason(examples, positives, expected):
    assert eval_config.not_evaluable_reason(examples, positives) == expected


def test_gate_figures_describe():
    figures = eval_config.GateFigures(
        head="click", examples=400, positives=103, not_evaluable=None,
        auc=eval_config.MetricValue(0.6512, 0.62, 0.68),
        baseline_auc=eval_config.MetricValue(0.6490),
        diff=eval_config.MetricValue(0.0022, -0.0011, 0.0055), tolerance=0.001, min_auc=0.5,
        validation_ok=True)
    assert figures.describe() == ("click: candidate AUC 0.6512 vs baseline 0.6490, diff +0.0022 "
                                  "(95% CI -0.0011 to +0.0055), tolerance 0.001, floor 0.5; "
                                  "103 positives in 400 eval examples")
    follow = eval_config.GateFigures(
        head="follow", examples=400, positives=0, not_evaluable="0 positives in eval",
        auc=eval_config.MetricValue(0.0), baseline_auc=None, diff=None, tolerance=None,
        min_auc=0.0, validation_ok=True)
    assert follow.describe() == "follow: not evaluable (0 positives in eval)"
