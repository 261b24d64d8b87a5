"""bench.ranking_bench's comparisons and targets on hand-made per-seed results."""

import math

import pytest

from bench import ranking_bench as rb


def _model(click=None, follow=None):
    out = {"seeds": 3}
    for task, values in (("click", click), ("follow", follow)):
        if values is not None:
            out[f"{task}_auc_runs"] = list(values)
            out[f"{task}_gauc_runs"] = list(values)
    return out


def test_targets_hand_computed_and_few_positives_flagged():
    results = {"nfwfm": _model(click=[0.70, 0.72, 0.74]), "nfm": _model(click=[0.69, 0.71, 0.73]),
               "multitask": _model(click=[0.71, 0.72, 0.73], follow=[0.60, 0.62, 0.64]),
               "follow_single": _model(follow=[0.55, 0.56, 0.57])}
    comparisons = rb.compare(results)
    out = rb.targets(results, comparisons, {"eval_click_positives": 500,
                                            "eval_follow_positives": 24})
    # nfwfm - nfm = +0.01 on every seed: mean 0.01, zero spread.
    assert out["nfwfm_vs_nfm_mean_ge_0"]["met"] is True
    assert out["nfwfm_vs_nfm_mean_ge_0"]["mean"] == pytest.approx(0.01)
    assert "few_positives" not in out["nfwfm_vs_nfm_mean_ge_0"]
    # multitask follow - follow-only = 0.05, 0.06, 0.07: mean 0.06, but on 24 positives.
    follow = out["multitask_follow_vs_follow_single_mean_ge_0"]
    assert follow["mean"] == pytest.approx(0.06) and follow["met"] is True
    assert follow["few_positives"].startswith("24 eval follow positives (< 30)")
    # multitask click - nfwfm = +0.01, 0.0, -0.01: mean 0 >= -0.002.
    assert out["multitask_click_within_0.002_of_nfwfm"]["mean"] == pytest.approx(0.0, abs=1e-12)


def test_a_follow_target_without_positives_is_not_evaluable_not_missing():
    # No follow positives: follow-only is skipped (run() records why), the
    # multi-task follow AUC is NaN; the target says so instead of vanishing.
    results = {"nfwfm": _model(click=[0.7] * 3),
               "multitask": _model(click=[0.7] * 3, follow=[math.nan] * 3),
               "follow_single": {"skipped": "no follow positives in the fit split"}}
    comparisons = rb.compare(results)
    assert comparisons["multitask_follow_vs_follow_single"] == {
        "a": "multitask.follow", "b": "follow_single.follow", "auc": None, "gauc": None,
        "not_evaluable": "follow_single: no follow positives in the fit split"}
    out = rb.targets(results, comparisons, {"eval_follow_positives": 0})
    assert out["multitask_follow_vs_follow_single_mean_ge_0"] == {
        "met": None, "not_evaluable": "follow_single: no follow positives in the fit split"}
    # NaN AUCs alone (the model trained, a split had no positives) say so too.
    results["follow_single"] = _model(follow=[math.nan] * 3)
    comparison = rb.compare(results)["multitask_follow_vs_follow_single"]
    assert comparison["auc"] is None and comparison["not_evaluable"].startswith(
        "auc undefined on some seed")
