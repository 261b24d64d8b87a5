"""bench.parallel: children run at once, their reports are read, a failure is named."""
import json
import sys

import pytest

from bench import parallel


def _child(tmp_path, dataset, code=0):
    out = tmp_path / f"{dataset}.json"
    script = (f"import json,sys; json.dump({{{dataset!r}: {{'auc': 0.7}}, 'other': 1}}, "
              f"open({str(out)!r}, 'w')); sys.exit({code})")
    return [sys.executable, "-c", script], str(out)


def test_run_children_returns_each_datasets_own_report(tmp_path):
    logged = []
    out = parallel.run_children({"a": _child(tmp_path, "a"), "b": _child(tmp_path, "b")},
                                logged.append)
    assert out == {"a": {"auc": 0.7}, "b": {"auc": 0.7}}
    assert len(logged) == 2 and logged[0].startswith("started ")


def test_a_failed_child_is_named_with_its_exit_code(tmp_path):
    with pytest.raises(SystemExit, match=r"\[b\] benchmark process failed \(exit 3\)"):
        parallel.run_children({"a": _child(tmp_path, "a"), "b": _child(tmp_path, "b", 3)},
                              lambda m: None)


def test_thread_share_splits_the_cores(monkeypatch):
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 2)
    assert [parallel.thread_share(n) for n in (1, 2, 3)] == [2, 1, 1]


@pytest.fixture(scope="module")
def my_clicks(tmp_path_factory) -> str:
    from tests.pipelines import custom_dataset
    return custom_dataset.write(str(tmp_path_factory.mktemp("my_clicks")), 1500)


def test_dataset_key_and_default_out(my_clicks):
    assert parallel.dataset_key("movielens") == "movielens"
    assert parallel.dataset_key(my_clicks) == "my_clicks"
    # Built-in datasets: the recorded results; anything else: under the work dir.
    assert parallel.default_out(["synthetic", "movielens"], "bench/results/r.json", "work/b",
                                "ranking") == "bench/results/r.json"
    assert parallel.default_out(["synthetic", my_clicks], "bench/results/r.json", "work/b",
                                "ranking") == "work/b/ranking-synthetic+my_clicks.json"


def test_sessionize_once_on_a_dataset_yaml(my_clicks, tmp_path):
    """Needs H1's optional side tables: my_clicks has no users table."""
    import os

    from feature_contract import feature_config as fc
    from tests.pipelines import custom_dataset
    config_path, out_dir, summary = parallel.sessionize_once(my_clicks, str(tmp_path), 0,
                                                             str(tmp_path / "examples"))
    assert os.path.basename(out_dir).startswith("my_clicks-")
    assert fc.load(config_path).name == "my_clicks"
    assert summary["events"]["read"] == 1500
    # A second call reuses the output; new events at the same path make a new one.
    assert parallel.sessionize_once(my_clicks, str(tmp_path), 0,
                                    str(tmp_path / "examples"))[1] == out_dir
    folder = os.path.dirname(my_clicks)
    events = os.path.join(folder, custom_dataset.EVENTS_FILE)
    with open(events, "a", encoding="utf-8") as f:
        f.write("2026-01-02T00:00:00+00:00,someone,i0,view,wifi\n")
    _, new_dir, new_summary = parallel.sessionize_once(my_clicks, str(tmp_path), 0,
                                                       str(tmp_path / "examples"))
    assert new_dir != out_dir and new_summary["events"]["read"] == 1501


def test_sessionize_once_reruns_after_the_job_code_changes(monkeypatch, tmp_path):
    """Examples written by an older job version (other labels) are not reused."""
    import os
    real = parallel.job_digest()
    assert real == parallel.job_digest() and len(real) == 64
    raw = tmp_path / "raw"
    names = {}
    for code in ("v1", "v2"):
        monkeypatch.setattr(parallel, "job_digest", lambda code=code: code)
        data = parallel.datasets.resolve("synthetic", str(raw), num_events=500)
        names[code] = parallel._examples_dir_name(data)
    assert names["v1"] != names["v2"]
    assert all(n.startswith("synthetic-500-0-") for n in names.values())
    assert os.path.basename(os.path.dirname(data.events)) == "synthetic-500-0"
