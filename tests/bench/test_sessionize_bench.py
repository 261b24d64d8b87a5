"""bench.sessionize_bench on a tiny log: the JSON's counts reconcile and --pairs
runs the compiled and the pure-Python job alternately, each reporting its mode."""

import json

from beam_jobs import compiled
from bench import sessionize_bench


def test_the_bench_records_the_run_and_compiled_vs_pure_pairs(tmp_path):
    out = tmp_path / "sessionize.json"
    sessionize_bench.main(["--events", "3000", "--pairs", "1", "--output", str(out),
                           "--work_dir", str(tmp_path / "work")])
    result = json.loads(out.read_text())
    assert result["read"] == 3000
    assert result["read"] == (result["accepted"] + sum(result["dead_letter"].values())
                              + sum(result["filtered"].values()))
    assert all(result["checks"].values())
    assert result["compiled_loops"] is compiled.available()
    pairs = result["compiled_vs_pure"]
    if not compiled.available():
        assert "skipped" in pairs
        return
    assert [len(pairs["runs"][m]) for m in ("compiled", "pure")] == [1, 1]
    assert pairs["compiled_minus_pure_events_per_s"]["n"] == 1
    assert pairs["median_events_per_s"]["compiled"] == pairs["runs"]["compiled"][0]["events_per_s"]
    assert pairs["compiled_runs_at_or_above_target"] == sum(
        r["events_per_s"] >= sessionize_bench.TARGET_EVENTS_PER_S for r in pairs["runs"]["compiled"])
