"""The ranking benchmark's protocol: validation carve, choice, inheritance, comparisons."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from feature_contract import feature_config as fc
from bench import ranking_bench as rb
from bench import stats


def _data(timestamps):
    n = len(timestamps)
    return {fc.TIMESTAMP_KEY: np.array(timestamps, np.int64),
            fc.USER_KEY: np.array([f"u{i}".encode() for i in range(n)]),
            "tags": np.arange(2 * n).reshape(n, 2)}


def test_validation_is_the_latest_tenth_of_the_train_time_span():
    # Span 1..95: cutoff 95 - 0.1 * 94 = 85.6, so ts 90 and 95 are validation.
    # File order is not time order; rows stay whole and in file order.
    ts = [10, 95, 20, 30, 90, 40, 50, 60, 70, 80, 15, 25, 35, 45, 55, 65, 75, 85, 5, 1]
    fit, val, cutoff = rb.carve_validation(_data(ts), 0.1)
    assert math.isclose(cutoff, 85.6)
    assert val[fc.TIMESTAMP_KEY].tolist() == [95, 90]
    assert val[fc.USER_KEY].tolist() == [b"u1", b"u4"]
    assert val["tags"].tolist() == [[2, 3], [8, 9]]
    assert fit[fc.TIMESTAMP_KEY].tolist()[:3] == [10, 20, 30] and len(fit["tags"]) == 18


def test_choose_takes_the_best_validation_first_on_ties_and_never_a_nan():
    grid = {"a": {"validation": 0.70}, "b": {"validation": 0.71}, "c": {"validation": 0.71},
            "d": {"validation": float("nan")}}
    assert rb.choose(grid) == "b"
    assert rb.choose({"d": {"validation": float("nan")}, "a": {"validation": 0.6}}) == "a"
    with pytest.raises(ValueError, match="empty"):
        rb.choose({})


def test_untuned_entries_inherit_from_a_tuned_parent():
    assert rb.tuned_from("nfwfm") == "nfwfm" and rb.tuned_from("multitask") == "multitask"
    assert rb.tuned_from("nfm_28") == "nfm"
    assert rb.tuned_from("follow_single") == "nfwfm"
    assert rb.tuned_from("multitask_sum") == "multitask"
    assert rb.tuned_from("lr") is None
    # An entry's own settings win over what it inherits.
    cfg = rb.model_hparams("follow_single", {"learning_rate": 0.01}, seed=3)
    assert (cfg.tasks, cfg.learning_rate, cfg.seed) == ((fc.FOLLOW_LABEL,), 0.01, 3)
    cfg = rb.model_hparams("nfm_28", {"learning_rate": 0.001}, seed=0, max_epochs=4)
    assert (cfg.model, cfg.embedding_dim, cfg.max_epochs) == ("nfm", 28, 4)


def test_peer_takes_only_a_learning_rate():
    with pytest.raises(ValueError, match=r"only learning_rate can be tuned, got \['embedding_dim'\]"):
        rb._peer_config("deepctr_nfm", {"embedding_dim": 8}, 0, None)
    assert rb._peer_config("deepctr_nfm", {"learning_rate": 0.01}, 1, 3).embedding_dim == 200


def _results(click_runs, follow_runs=None):
    out = {"seeds": len(click_runs), "click_auc_runs": click_runs, "click_gauc_runs": click_runs}
    if follow_runs is not None:
        out.update(follow_auc_runs=follow_runs, follow_gauc_runs=follow_runs)
    return out


def test_comparisons_are_paired_by_seed_and_targets_read_the_mean_and_verdict():
    results = {
        "nfm": _results([0.70, 0.71, 0.72]),
        "nfwfm": _results([0.71, 0.72, 0.73]),           # +0.01 every seed: a win
        "multitask": _results([0.705, 0.714, 0.725], [0.60, 0.61, 0.62]),
        "follow_single": {"seeds": 3, "follow_auc_runs": [0.60, 0.60, 0.63],
                          "follow_gauc_runs": [0.60, 0.60, 0.63]},
    }
    comparisons = rb.compare(results)
    assert set(comparisons) == {"nfwfm_vs_nfm", "multitask_follow_vs_follow_single",
                                "multitask_click_vs_nfwfm"}
    win = comparisons["nfwfm_vs_nfm"]["auc"]
    assert win["verdict"] == stats.WIN and math.isclose(win["mean"], 0.01)
    follow = comparisons["multitask_follow_vs_follow_single"]["auc"]
    assert math.isclose(follow["mean"], 0.0, abs_tol=1e-12) and follow["verdict"] == stats.TIE
    out = rb.targets(results, comparisons)
    assert out["nfwfm_vs_nfm_mean_ge_0"]["met"] is True
    assert out["multitask_follow_vs_follow_single_mean_ge_0"]["verdict"] == stats.TIE
    # multitask click - nfwfm = [-0.005, -0.006, -0.005]: within 0.002? no.
    assert out["multitask_click_within_0.002_of_nfwfm"]["met"] is False


def test_a_nan_auc_makes_a_comparison_not_evaluable():
    results = {"nfwfm": _results([0.7, 0.7]), "nfm": _results([0.7, float("nan")])}
    assert rb.compare(results)["nfwfm_vs_nfm"]["auc"] is None


def test_model_names():
    assert rb._model_names("core") == list(rb.CORE)
    assert set(rb._model_names("all")) == set(rb.OUR_MODELS) | set(rb.PEERS)
    with pytest.raises(SystemExit, match="unknown models \\['nfx'\\]"):
        rb._model_names("nfwfm,nfx")


def test_child_args_drop_the_flags_each_dataset_process_sets_itself():
    argv = ["--jobs", "2", "--seeds", "5", "--datasets=a,b", "--out", "x.json", "--quick"]
    assert rb.child_args(argv) == ["--seeds", "5", "--quick"]


def test_deepctr_imports_without_its_pypi_version_check():
    # A fresh interpreter (deepctr not yet imported) with pypi's request
    # stubbed: deepctr's __init__ would ask pypi.python.org for releases in a
    # thread (and print a line when offline).
    code = ("import threading, requests\n"
            "calls = []\n"
            "requests.get = lambda *a, **k: calls.append(a)\n"
            "from bench import ranking_bench as rb\n"
            "models, feature_column = rb._import_deepctr()\n"
            "for t in threading.enumerate():\n"
            "    if t is not threading.main_thread():\n"
            "        t.join(10)\n"
            "import deepctr\n"
            "assert deepctr.utils.check_version is rb._no_version_check\n"
            "assert hasattr(models, 'NFM') and hasattr(feature_column, 'SparseFeat')\n"
            "print('pypi calls', len(calls))\n")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=repo, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "pypi calls 0"
