"""Report pieces: ROC by hand, Markdown rendering, summary flattening, plots,
learning curves, early-stopping lines and calibration per head."""

import os

import numpy as np
import pytest

from components.artifacts import PipelineReport, TrainingMetrics
from components.report import (LearningCurve, PipelineReporter, calibration_rows, data_rows,
                               learning_curve, render, roc_curve, training_row)
from components.trainer import write_metrics
from tests.components.helpers import executor_fn, new_artifact


def test_roc_curve_by_hand():
    # scores 0.9(+) 0.8(-) 0.7(+) 0.1(-): thresholds walk down one example at a time.
    fpr, tpr = roc_curve(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]))
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 0.5, 1.0, 1.0])
    # AUC by the trapezoid rule = 0.75, the Mann-Whitney value (3 of 4 pairs ordered).
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


def test_roc_curve_ties_move_diagonally():
    fpr, tpr = roc_curve(np.array([1, 0]), np.array([0.5, 0.5]))
    np.testing.assert_allclose(fpr, [0.0, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 1.0])


def test_data_rows_flattens_and_drops_zero_dead_letters():
    counts = {"events": {"read": 10, "dead_letter": {"malformed": 2, "unknown_user": 0}},
              "checks": {"a": True, "b": False}, "config": "synthetic"}
    assert data_rows(counts) == {"events.read": 10, "events.dead_letter.malformed": 2,
                                 "checks": "FAILED: b", "config": "synthetic"}


def test_render_says_why_nothing_was_pushed():
    text = render({"generated": "now", "gates": [{
        "title": "ranking candidate vs baseline", "blessed": False,
        "reasons": ["auc diff vs baseline (overall) = -0.0300: change vs baseline must be >= -0.001"],
        "rows": [{"slice": "overall", "model": "candidate", "output": "", "value": 0.61,
                  "is_diff": False}]}],
        "pushed": {"ranking candidate": "not pushed (not blessed)"}})
    assert "**NOT BLESSED**: auc diff vs baseline (overall) = -0.0300" in text
    assert "| - | overall | candidate | 0.6100 | - |" in text
    assert "- ranking candidate: not pushed (not blessed)" in text


def test_render_lists_a_recall_trainers_warnings_under_its_table():
    text = render({"generated": "now", "recall": {
        "item2vec": {"hr@50": 0.2, "warnings": ["only 37 fit sessions"]},
        "two_tower": {"hr@50": 0.4, "warnings": []}}})
    assert "| item2vec | 0.2000 |" in text
    assert "Warnings:\n\n- item2vec: only 37 fit sessions\n" in text
    assert "- two_tower:" not in text
    assert "Warnings:" not in render({"generated": "now", "recall": {"two_tower": {"hr@50": 0.4}}})


def test_reporter_with_real_models_writes_plots_and_publishes(ranking_model, recall_model,
                                                               sessionized, tmp_path):
    model, metrics = ranking_model
    report = new_artifact(PipelineReport, str(tmp_path), "report")
    publish = str(tmp_path / "serving" / "reports")
    executor_fn(PipelineReporter)(
        report=report, publish_dir=publish, summary=sessionized["summary"],
        ranking_examples=sessionized["ranking_examples"], candidate_model=model,
        candidate_metrics=metrics, two_tower_metrics=recall_model[2], max_roc_examples=500)
    text = open(os.path.join(report.uri, "report.md")).read()
    assert "| nfwfm | candidate |" in text
    assert "| two_tower |" in text
    for png in ("auc_per_model.png", "roc_curves.png", "recall_at_k.png"):
        with open(os.path.join(report.uri, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
    published = report.get_string_custom_property("published_path")
    assert published.startswith(publish) and os.path.exists(published)
    assert open(published).read() == text


# Contract-shaped trainer metrics (components.trainer writes them to metrics.json).
RANKING_METRICS = {
    "click": {"auc": 0.66, "gauc": 0.6, "logloss": 0.25, "calibration": 1.2, "examples": 200,
              "positives": 10},
    "follow": {"auc": None, "calibration": None, "examples": 200, "positives": 0},
    "learning_curve": [
        {"epoch": 1, "train_loss": 0.40, "val_click_auc": 0.61, "val_click_logloss": 0.30},
        {"epoch": 2, "train_loss": 0.30, "val_click_auc": 0.64, "val_click_logloss": 0.28},
        {"epoch": 3, "train_loss": 0.25, "val_click_auc": 0.63, "val_click_logloss": 0.29}],
    "early_stopping": {"best_epoch": 2, "best_value": 0.64, "epochs_run": 3,
                       "stopped_early": True, "monitor": "click_auc"},
    "validation": {"cutoff": 1700000000.0, "fit_examples": 900, "validation_examples": 100},
}
RECALL_METRICS = {
    "hr@50": 0.3, "recall@10": 0.1, "recall@50": 0.3,
    "learning_curve": [{"epoch": 1, "train_loss": 5.0, "val_hr@50": 0.2}],
    "early_stopping": {"best_epoch": 1, "best_value": 0.2, "epochs_run": 1,
                       "stopped_early": False, "monitor": "val_hr@50"},
}


def test_learning_curve_reads_the_monitored_series():
    curve = learning_curve(RANKING_METRICS)
    # The ranking trainers name the monitor "click_auc"; the epochs record "val_click_auc".
    assert curve == LearningCurve(epochs=[1, 2, 3], train_loss=[0.40, 0.30, 0.25],
                                  monitor="val_click_auc", monitored=[0.61, 0.64, 0.63],
                                  best_epoch=2)
    # The recall trainers name the monitor as the epoch rows do.
    recall = learning_curve(RECALL_METRICS)
    assert (recall.monitor, recall.monitored, recall.best_epoch) == ("val_hr@50", [0.2], 1)


def test_learning_curve_of_a_combined_monitor_reads_val_monitor():
    metrics = {"learning_curve": [
        {"epoch": 1, "train_loss": 0.5, "val_click_auc": 0.60, "val_follow_auc": 0.70,
         "val_monitor": 0.65},
        {"epoch": 2, "train_loss": 0.4, "val_click_auc": 0.62, "val_follow_auc": None,
         "val_monitor": 0.62}],
        "early_stopping": {"best_epoch": 1, "best_value": 0.65, "epochs_run": 2,
                           "stopped_early": True, "monitor": "mean_click_follow_auc",
                           "monitor_fallback": "click_auc"}}
    curve = learning_curve(metrics)
    assert (curve.monitor, curve.monitored) == ("val_mean_click_follow_auc", [0.65, 0.62])
    assert training_row(metrics)["monitor"] == "mean_click_follow_auc (fallback click_auc)"


def test_learning_curve_absent_in_old_metrics():
    assert learning_curve({"click": {"auc": 0.6}}) is None
    assert training_row({"click": {"auc": 0.6}}) is None


def test_training_row():
    assert training_row(RANKING_METRICS) == {
        "best_epoch": 2, "epochs_run": 3, "stopped_early": True, "monitor": "click_auc",
        "best_value": 0.64, "fit_examples": 900, "validation_examples": 100}


def test_calibration_rows_by_hand():
    click, follow = calibration_rows(RANKING_METRICS)
    # label rate 10 / 200 = 0.05; mean prediction = 1.2 x 0.05 = 0.06.
    assert click["head"] == "click" and click["label_rate"] == 0.05
    assert click["mean_prediction"] == pytest.approx(0.06)
    assert click["not_evaluable"] is None
    assert follow == {"head": "follow", "mean_prediction": None, "label_rate": 0.0,
                      "calibration": None, "examples": 200, "positives": 0,
                      "not_evaluable": "0 positives in eval"}


def test_render_training_calibration_and_gate_interval():
    text = render({
        "generated": "now",
        "training": {"nfwfm": training_row(RANKING_METRICS)},
        "calibration": {"multitask_nfwfm": calibration_rows(RANKING_METRICS)},
        "gates": [{"title": "ranking candidate vs baseline", "blessed": True, "reasons": [],
                   "heads": ["click: candidate AUC 0.6600 vs baseline 0.6500, diff +0.0100 "
                             "(95% CI -0.0020 to +0.0220), tolerance 0.001"],
                   "rows": [{"slice": "overall", "model": "candidate", "output": "click",
                             "value": 0.01, "lower": -0.002, "upper": 0.022, "is_diff": True,
                             "not_evaluable": None},
                            {"slice": "is_new_user=1", "model": "candidate", "output": "click",
                             "value": 0.0, "lower": 0.0, "upper": 0.0, "is_diff": False,
                             "not_evaluable": "0 positives in eval"}]}]})
    assert "| nfwfm | 2 | 3 | yes | click_auc | 0.6400 | 900 / 100 |" in text
    assert "| multitask_nfwfm | click | 0.0600 | 0.0500 | 1.2000 | 10 / 200 |" in text
    assert ("| multitask_nfwfm | follow | - | 0.0000 | not evaluable (0 positives in eval) "
            "| 0 / 200 |") in text
    assert "- click: candidate AUC 0.6600 vs baseline 0.6500, diff +0.0100 (95% CI" in text
    assert "| click | overall | candidate (diff vs baseline) | +0.0100 | [-0.0020, +0.0220] |" \
        in text
    assert "| click | is_new_user=1 | candidate | not evaluable (0 positives in eval) | - |" in text


def test_reporter_plots_learning_curves_and_tolerates_old_metrics(tmp_path):
    root = str(tmp_path)
    new = new_artifact(TrainingMetrics, root, "new")
    write_metrics(new, "multitask_nfwfm", RANKING_METRICS)
    recall = new_artifact(TrainingMetrics, root, "recall")
    write_metrics(recall, "two_tower", RECALL_METRICS)
    old = new_artifact(TrainingMetrics, root, "old")  # written before early stopping existed
    write_metrics(old, "nfm", {"click": {"auc": 0.6, "logloss": 0.3}})
    report = new_artifact(PipelineReport, root, "report")
    executor_fn(PipelineReporter)(report=report, publish_dir=os.path.join(root, "published"),
                                  baseline_metrics=old, multitask_metrics=new,
                                  two_tower_metrics=recall)
    files = set(os.listdir(report.uri))
    assert {"learning_curve_multitask_nfwfm.png", "learning_curve_two_tower.png",
            "calibration.png"} <= files
    assert "learning_curve_nfm.png" not in files
    for png in ("learning_curve_multitask_nfwfm.png", "calibration.png"):
        with open(os.path.join(report.uri, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
    text = open(os.path.join(report.uri, "report.md")).read()
    assert "| multitask_nfwfm | 2 | 3 | yes | click_auc | 0.6400 | 900 / 100 |" in text
    assert "| two_tower | 1 | 1 | no | val_hr@50 | 0.2000 | - / - |" in text
    assert "| nfm | baseline | 0.6000 |" in text
    assert "![Learning curve: multitask_nfwfm (best epoch 2)](learning_curve_multitask_nfwfm.png)" \
        in text


def test_ranking_table_shows_the_base_rate_logloss_and_flags_a_model_worse_than_it():
    from components.report import constant_logloss
    # 10 clicks in 200 eval impressions: p = 0.05, -(0.05 ln 0.05 + 0.95 ln 0.95) = 0.198515.
    assert constant_logloss(200, 10) == pytest.approx(0.1985152, abs=1e-6)
    assert constant_logloss(200, 0) is None and constant_logloss(None, 3) is None
    better = {"click": {**RANKING_METRICS["click"], "logloss": 0.1500}}
    text = render({"generated": "now", "ranking": {"baseline": ("nfm", better),
                                                   "candidate": ("nfwfm", RANKING_METRICS)}})
    assert "| nfm | baseline | 0.6600 | 0.6000 | 0.1500 | 0.1985 | - |" in text
    assert "| nfwfm | candidate | 0.6600 | 0.6000 | 0.2500 | 0.1985 | - |" in text
    assert ("- nfwfm: click logloss 0.2500 is worse than predicting the eval click rate for "
            "every impression (0.1985): its probabilities are miscalibrated (the gate checks "
            "the order, AUC, not the probabilities)") in text
    assert "- nfm: click logloss" not in text
