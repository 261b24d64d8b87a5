"""bench.stats: paired differences with Student-t intervals, by hand."""
import math

import pytest

from bench import stats


def test_paired_difference_matches_a_hand_computation():
    # d = [0.01, 0.01, 0.02]: mean 0.013333, sd (ddof 1) 0.0057735, se 0.0033333,
    # t(0.975, 2) = 4.302653 -> half-width 0.0143422: the interval holds 0, a tie.
    out = stats.paired_difference([0.70, 0.71, 0.72], [0.69, 0.70, 0.70])
    assert out["n"] == 3
    assert math.isclose(out["mean"], 0.0133333, abs_tol=1e-6)
    assert math.isclose(out["std"], 0.0057735, abs_tol=1e-6)
    assert math.isclose(out["ci_low"], 0.0133333 - 0.0143422, abs_tol=1e-6)
    assert math.isclose(out["ci_high"], 0.0133333 + 0.0143422, abs_tol=1e-6)
    assert out["verdict"] == stats.TIE


def test_verdicts_win_and_loss_when_the_interval_excludes_zero():
    a = [0.71, 0.72, 0.71, 0.72, 0.715]
    b = [0.70, 0.71, 0.70, 0.71, 0.705]  # d = 0.01 every seed: std 0, interval [0.01, 0.01]
    win = stats.paired_difference(a, b)
    assert win["verdict"] == stats.WIN
    assert math.isclose(win["ci_low"], 0.01, abs_tol=1e-12)
    assert stats.paired_difference(b, a)["verdict"] == stats.LOSS


def test_one_pair_is_a_tie_without_an_interval():
    out = stats.paired_difference([0.8], [0.7])
    assert (out["verdict"], out["ci_low"], out["ci_high"]) == (stats.TIE, None, None)
    assert math.isclose(out["mean"], 0.1)


def test_paired_difference_rejects_unpaired_or_nan_values():
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        stats.paired_difference([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="no pairs"):
        stats.paired_difference([], [])
    with pytest.raises(ValueError, match="NaN"):
        stats.paired_difference([0.1, float("nan")], [0.1, 0.2])


def test_provenance_records_the_commit_of_this_checkout():
    out = stats.provenance(["python", "-m", "bench.x"])
    assert out["command"] == "python -m bench.x"
    assert out["commit"] is not None and len(out["commit"].split("-")[0]) == 40


def test_reports_are_strict_json_with_nan_as_null(tmp_path):
    # A head with no positives has AUC NaN; json.dump wrote a bare NaN that
    # JSON.parse, jq and Python's strict parse reject.
    import json as json_module

    import numpy as np

    from bench import stats as bench_stats
    path = tmp_path / "r.json"
    bench_stats.write_report(str(path), {"auc": float("nan"), "runs": [0.5, np.float32("inf")],
                                         "n": np.int64(3), "nested": {"x": (1.0, -np.inf)}})

    def reject(constant):
        raise ValueError(constant)

    assert json_module.loads(path.read_text(), parse_constant=reject) == {
        "auc": None, "runs": [0.5, None], "n": 3, "nested": {"x": [1.0, None]}}


def test_a_report_replaces_the_previous_one_whole_or_not_at_all(tmp_path):
    import json as json_module

    from bench import stats as bench_stats
    path = tmp_path / "sub" / "r.json"
    bench_stats.write_report(str(path), {"run": 1, "where": tmp_path})
    assert json_module.loads(path.read_text()) == {"run": 1, "where": str(tmp_path)}

    class Unwritable:
        def __str__(self):
            raise RuntimeError("cannot write this")
    with pytest.raises(RuntimeError, match="cannot write this"):
        bench_stats.write_report(str(path), {"run": 2, "bad": Unwritable()})
    # The failed write left the previous report intact.
    assert json_module.loads(path.read_text()) == {"run": 1, "where": str(tmp_path)}
