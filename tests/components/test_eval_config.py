"""The TFMA gates: what is thresholded, on which slice, against what."""

import pytest

from components import eval_config


def _auc_threshold(metrics_spec):
    (auc,) = [m for m in metrics_spec.metrics if m.class_name == "AUC"]
    (per_slice,) = auc.per_slice_thresholds
    return per_slice


def test_ranking_gate_floor_and_not_worse_on_overall():
    config = eval_config.ranking_gate(0.55)
    assert [(s.name, s.is_baseline, s.label_key) for s in config.model_specs] == [
        ("candidate", False, "click"), ("baseline", True, "click")]
    per_slice = _auc_threshold(config.metrics_specs[0])
    # Gated on the overall slice (an empty SlicingSpec) only.
    assert [s.ByteSize() for s in per_slice.slicing_specs] == [0]
    assert per_slice.threshold.value_threshold.lower_bound.value == 0.55
    change = per_slice.threshold.change_threshold
    assert change.absolute.value == -1e-10 and change.direction == 2  # HIGHER_IS_BETTER
    assert [list(s.feature_keys) for s in config.slicing_specs] == [[], ["is_new_user"]]


def test_multitask_gates_click_vs_baseline_follow_floor_only():
    gates = eval_config.multitask_gates({"click": 0.6, "follow": 0.52})
    click, click_needs_baseline = gates["click"]
    follow, follow_needs_baseline = gates["follow"]
    assert click_needs_baseline and not follow_needs_baseline
    assert _auc_threshold(click.metrics_specs[0]).threshold.HasField("change_threshold")
    follow_threshold = _auc_threshold(follow.metrics_specs[0]).threshold
    assert not follow_threshold.HasField("change_threshold")
    assert follow_threshold.value_threshold.lower_bound.value == 0.52
    assert [s.label_key for s in follow.model_specs] == ["follow"]


def test_multitask_gates_need_the_baseline_head():
    with pytest.raises(ValueError, match="'click' not among heads"):
        eval_config.multitask_gates({"follow": 0.5})
