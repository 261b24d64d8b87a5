"""Report pieces: ROC by hand, Markdown rendering, summary flattening, plots."""

import os

import numpy as np
import pytest

from components.artifacts import PipelineReport
from components.report import PipelineReporter, data_rows, render, roc_curve
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
        "reasons": ["auc diff vs baseline (overall) = -0.0300: change vs baseline must be > -1e-10"],
        "rows": [{"slice": "overall", "model": "candidate", "output": "", "value": 0.61,
                  "is_diff": False}]}],
        "pushed": {"ranking candidate": "not pushed (not blessed)"}})
    assert "**NOT BLESSED**: auc diff vs baseline (overall) = -0.0300" in text
    assert "| - | overall | candidate | 0.6100 |" in text
    assert "- ranking candidate: not pushed (not blessed)" in text


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
