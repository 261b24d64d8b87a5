"""bench.parallel: children run at once, their reports are read, a failure is named."""
import json
import re
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
    assert parallel.default_out(["movielens", "synthetic"], "bench/results/r.json", "work/b",
                                "ranking") == "bench/results/r.json"
    assert parallel.default_out(["synthetic", my_clicks], "bench/results/r.json", "work/b",
                                "ranking") == "work/b/ranking-synthetic+my_clicks.json"
    # One of the two built-in datasets does not replace the record of both, nor does a run
    # the bench calls partial.
    assert parallel.default_out(["movielens"], "bench/results/r.json", "work/b",
                                "ranking") == "work/b/ranking-movielens.json"
    assert parallel.default_out(["synthetic", "movielens"], "bench/results/r.json", "work/b",
                                "ranking", "quick") == (
        "work/b/ranking-quick-synthetic+movielens.json")


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


def test_a_failed_sessionize_is_its_own_reason_and_is_never_reused(my_clicks, tmp_path):
    """The job writes summary.json before its stop rules fail it: that output
    must not serve the next run (it did: the rerun exited 0 on refused data)."""
    import os
    import shutil

    import yaml

    folder = tmp_path / "dirty"
    shutil.copytree(os.path.dirname(my_clicks), folder)
    dirty = folder / os.path.basename(my_clicks)
    raw = yaml.safe_load(dirty.read_text())
    dirty.write_text(yaml.safe_dump({**raw, "timestamp_unit": "ms"}))  # ISO times: every row bad
    examples = tmp_path / "examples"
    for _ in range(2):  # the second run fails the same way
        with pytest.raises(parallel.DataError) as err:
            parallel.sessionize_once(str(dirty), str(tmp_path), 0, str(examples))
        message = str(err.value)
        # (1500 rows, or 1501 after test_sessionize_once_on_a_dataset_yaml appended one)
        assert re.match(re.escape(f"{dirty}: the sessionize job failed: sessionize: 100.0% of "
                                  "the events rows were dead-lettered (") + r"(\d+) of \1\)",
                        message), message
        assert re.search(r"bad_timestamp 150[01]\.", message), message
        # The dead letters the message points at stay; the output is unmarked.
        (out_dir,) = [examples / d for d in os.listdir(examples)]
        assert os.listdir(out_dir / "dead_letter")
        assert not os.path.exists(out_dir / parallel.SESSIONIZED_MARKER)
    # A completed run is marked, and only a marked run is reused.
    _, out_dir, _ = parallel.sessionize_once(my_clicks, str(tmp_path), 0, str(examples))
    assert os.path.exists(os.path.join(out_dir, parallel.SESSIONIZED_MARKER))


def test_dataset_spec_errors_say_what_is_wrong(tmp_path, capsys):
    assert parallel.dataset_spec_error("movielens") is None
    assert parallel.dataset_spec_error("mine") == (
        "unknown dataset 'mine': want one of ['synthetic', 'movielens'] or a dataset YAML path")
    missing = str(tmp_path / "nope.yaml")
    assert "no such dataset file" in parallel.dataset_spec_error(missing)

    def failing() -> int:
        raise parallel.DataError(f"{missing}: no such dataset file")

    assert parallel.guarded(failing) == 2
    assert capsys.readouterr().err == f"error: {missing}: no such dataset file\n"
