"""bench.sessionize_bench on a tiny log: the JSON's counts reconcile, --pairs runs
the compiled and the pure-Python job alternately in fresh processes on one
generated log, and the headline figures are the compiled runs' medians."""

import json
import os

import numpy as np

from beam_jobs import compiled
from bench import sessionize_bench


def _reconciles(result):
    return result["read"] == (result["accepted"] + sum(result["dead_letter"].values())
                              + sum(result["filtered"].values()))


def test_the_headline_is_the_median_of_fresh_compiled_runs_on_one_log(tmp_path):
    out = tmp_path / "sessionize.json"
    work = tmp_path / "work"
    sessionize_bench.main(["--events", "3000", "--pairs", "2", "--output", str(out),
                           "--work_dir", str(work)])
    result = json.loads(out.read_text())
    assert result["read"] == result["generated_events"] == 3000
    assert _reconciles(result) and all(result["checks"].values())
    pairs = result["compiled_vs_pure"]
    mode = "compiled" if compiled.available() else "pure"
    # One log for every run: the children read the parent's data dir (and
    # their own output dirs are gone once their JSON is read).
    modes = ["compiled", "pure"] if compiled.available() else ["pure"]
    assert sorted(os.listdir(work)) == sorted(
        ["data"] + [f"{m}_{i}.json" for m in modes for i in range(2)])
    children = [json.loads((work / f"{m}_{i}.json").read_text()) for m in modes for i in range(2)]
    assert all(child["generated_events"] is None and child["read"] == 3000 for child in children)
    runs = pairs["runs"][mode]
    assert len(runs) == 2
    speeds = [r["events_per_s"] for r in runs]
    assert result["events_per_s"] == np.median(speeds)
    assert result["events_per_s_range"] == [min(speeds), max(speeds)]
    assert result["runs_at_or_above_target"] == sum(
        v >= sessionize_bench.TARGET_EVENTS_PER_S for v in speeds)
    assert result["compiled_loops"] is compiled.available()
    if not compiled.available():
        assert "skipped" in pairs
        return
    assert [len(pairs["runs"][m]) for m in ("compiled", "pure")] == [2, 2]
    assert pairs["compiled_minus_pure_events_per_s"]["n"] == 2
    assert pairs["median_events_per_s"]["compiled"] == result["events_per_s"]
    assert pairs["compiled_runs_at_or_above_target"] == result["runs_at_or_above_target"]


def test_pairs_0_is_one_run_in_this_process(tmp_path):
    out = tmp_path / "one.json"
    sessionize_bench.main(["--events", "2000", "--pairs", "0", "--output", str(out)])
    result = json.loads(out.read_text())
    assert result["read"] == result["generated_events"] == 2000
    assert _reconciles(result) and "compiled_vs_pure" not in result
    # seconds is rounded to 0.01 s in the JSON, events_per_s is not
    assert abs(result["events_per_s"] - 2000 / result["seconds"]) <= 0.01 * result["events_per_s"]
