"""pipelines.progress: the key figure of each kind of step, and the wrapper's lines."""

import io
import re

import pytest

from pipelines import progress
from pipelines.mlmd_summary import ArtifactInfo


def _art(**props) -> list[ArtifactInfo]:
    return [ArtifactInfo(1, "T", "/uri", props)]


@pytest.mark.parametrize("outputs, expected", [
    ({"summary": _art(**{"examples.ranking.train": 12000, "examples.ranking.eval": 3001,
                         "examples.retrieval.train": 900, "examples.retrieval.eval": 200,
                         "dead_letter.malformed": 3, "dead_letter.out_of_range": 4})},
     "ranking 12,000 / 3,001, retrieval 900 / 200 examples (train / eval), "
     "7 rows dead-lettered"),
    ({"metrics": _art(click_auc=0.712345, follow_auc=0.6, click_logloss=0.3, epochs_run=2)},
     "click_auc 0.7123, follow_auc 0.6000"),
    ({"blessing": _art(blessed=1)}, "BLESSED"),
    ({"evaluation": _art(), "blessing": _art(blessed=0)}, "NOT BLESSED"),
    ({"pushed_model": _art(pushed=1, pushed_destination="/s/models/ranking/1700000001")},
     "pushed version 1700000001 (/s/models/ranking/1700000001)"),
    ({"pushed_model": _art(pushed=0)}, "NOT pushed"),
    ({"pushed_index": _art(pushed=0, reason="no blessing")}, "NOT pushed: no blessing"),
    ({"report": _art(published_path="/s/reports/1/report.md")}, "report /s/reports/1/report.md"),
    ({"anomalies": _art(num_anomalies=2, num_blocking=1, reason="click rate 0.9 > 0.5")},
     "2 data anomalies, 1 blocking (click rate 0.9 > 0.5)"),
    ({"anomalies": _art(num_anomalies=0, num_blocking=0, reason="")},
     "0 data anomalies, 0 blocking"),
    ({"model": _art()}, ""),
])
def test_key_figure(outputs, expected):
    assert progress.key_figure(outputs) == expected


def test_reporting_wraps_the_launcher_and_restores_it(monkeypatch):
    from tfx.orchestration.portable import launcher

    class Node:
        class node_info:  # noqa: N801 - mimics the proto's field
            id = "Step"

    class Info:
        execution_id = 7

    monkeypatch.setattr(progress.mlmd_summary, "load_execution",
                        lambda config, execution_id: type("E", (), {
                            "state": "CACHED" if execution_id == 7 else "COMPLETE",
                            "outputs": {"blessing": _art(blessed=1)}})())
    fake = type("FakeLauncher", (), {"_pipeline_node": Node})()
    out = io.StringIO()
    monkeypatch.setattr(launcher.Launcher, "launch", lambda self: Info())
    wrapped_from = launcher.Launcher.launch
    with progress.reporting(None, out):
        assert launcher.Launcher.launch(fake).execution_id == 7
    assert launcher.Launcher.launch is wrapped_from
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"\[ +0:00:00\] Step started", lines[0])
    assert re.fullmatch(r"\[ +0:00:00\] Step cached: BLESSED", lines[1])


def test_reporting_names_a_failed_step(monkeypatch):
    from tfx.orchestration.portable import launcher

    class Node:
        class node_info:  # noqa: N801
            id = "Broken"

    def boom(self):
        raise RuntimeError("no")

    monkeypatch.setattr(launcher.Launcher, "launch", boom)
    out = io.StringIO()
    with progress.reporting(None, out), pytest.raises(RuntimeError, match="no"):
        launcher.Launcher.launch(type("L", (), {"_pipeline_node": Node})())
    assert re.search(r"\] Broken FAILED after \d+\.\d s$", out.getvalue(), re.M)


def test_reporting_a_step_missing_from_mlmd(monkeypatch):
    from tfx.orchestration.portable import launcher

    class Node:
        class node_info:  # noqa: N801
            id = "Resolver"

    def missing(config, execution_id):
        raise KeyError(execution_id)

    monkeypatch.setattr(progress.mlmd_summary, "load_execution", missing)
    monkeypatch.setattr(launcher.Launcher, "launch",
                        lambda self: type("I", (), {"execution_id": 3})())
    out = io.StringIO()
    with progress.reporting(None, out):
        launcher.Launcher.launch(type("L", (), {"_pipeline_node": Node})())
    assert re.search(r"\] Resolver done in \d+\.\d s$", out.getvalue(), re.M)
