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
