"""bench.nfwfm_ablation: candidate configs, paired summaries, verdicts, merge (no training)."""
import json
import math

import pytest

from bench import nfwfm_ablation as ab
from bench import stats
from feature_contract import feature_config as fc
from models.layers.feature_embedding import FeatureIds, ordered_feature_names
from models.ranking import config as rc


def _runs(values):
    return [{"seed": s, "val_auc": v} for s, v in enumerate(values)]


def test_candidate_hparams_layer_the_chosen_learning_rate_under_the_change():
    assert ab.candidate_hparams("default", 0.01) == {"learning_rate": 0.01}
    assert ab.candidate_hparams("keep_prob_0.6", None) == {"keep_prob": 0.6}
    assert ab.candidate_hparams("lookup_l2_1e-3", 0.003) == {"learning_rate": 0.003,
                                                             "lookup_l2": 1e-3}
    with pytest.raises(KeyError, match="unknown candidate 'wider'"):
        ab.candidate_hparams("wider", None)
    # Every candidate is a valid NFwFM config.
    for name in ab.CANDIDATES:
        rc.make_config(rc.NFWFM, ab.candidate_hparams(name, 0.003))


def test_summarize_pairs_by_seed_with_a_t_interval():
    out = ab.summarize({"default": _runs([0.70, 0.71, 0.72]),
                        "x": _runs([0.72, 0.74, 0.745])})
    assert out["default"]["vs_default"] is None
    assert out["x"]["val_auc_mean"] == pytest.approx(0.735)
    diff = out["x"]["vs_default"]
    # Differences 0.02, 0.03, 0.025: mean 0.025, sd 0.005, t(0.975, 2) = 4.302653,
    # half-width 0.012421 -> [0.012579, 0.037421], above 0: a win.
    half = 4.302653 * 0.005 / math.sqrt(3)
    assert diff["mean"] == pytest.approx(0.025)
    assert diff["ci_low"] == pytest.approx(0.025 - half, rel=1e-5)
    assert diff["ci_high"] == pytest.approx(0.025 + half, rel=1e-5)
    assert diff["verdict"] == stats.WIN and diff["n"] == 3
    # Differences 0.01, 0.02, 0.01: half-width 0.014343 > mean 0.013333: a tie.
    tie = ab.summarize({"default": _runs([0.70, 0.71, 0.72]), "x": _runs([0.71, 0.73, 0.73])})
    assert tie["x"]["vs_default"]["verdict"] == stats.TIE


def test_summarize_pairs_only_the_seeds_both_have():
    # A candidate cut short after 2 seeds is compared on those 2.
    out = ab.summarize({"default": _runs([0.70, 0.71, 0.72]), "x": _runs([0.69, 0.70])})
    assert out["x"]["vs_default"]["n"] == 2
    assert out["x"]["vs_default"]["mean"] == pytest.approx(-0.01)


def _diff(verdict):
    return {"verdict": verdict, "mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 3}


@pytest.mark.parametrize("verdicts,expected", [
    ((stats.WIN, stats.TIE), ab.HELPS),
    ((stats.WIN, stats.WIN), ab.HELPS),
    ((stats.TIE, stats.TIE), ab.NEUTRAL),
    ((stats.WIN, stats.LOSS), ab.HURTS),
    ((stats.WIN, None), ab.NEUTRAL),  # a dataset not measured cannot support "helps"
    ((stats.LOSS, None), ab.HURTS),
])
def test_verdict_needs_a_win_and_no_loss(verdicts, expected):
    per = {f"d{i}": None if v is None else _diff(v) for i, v in enumerate(verdicts)}
    assert ab.verdict(per) == expected


def test_best_epoch_metrics_reads_the_best_epochs_point():
    record = {"early_stopping": {"best_epoch": 2, "best_value": 0.71, "epochs_run": 4},
              "learning_curve": [{"epoch": e, "val_click_logloss": 0.5 - e / 100}
                                 for e in (1, 2, 3, 4)]}
    assert ab.best_epoch_metrics(record) == {"val_auc": 0.71, "val_logloss": 0.48,
                                             "best_epoch": 2, "epochs_run": 4}


def test_chosen_learning_rates_and_merge_of_partials(tmp_path):
    ranking = tmp_path / "ranking.json"
    ranking.write_text(json.dumps({
        "synthetic": {"_tuning": {"chosen": {"nfwfm": {"learning_rate": 0.003}}}},
        "movielens": {"_tuning": {"chosen": {"nfm": {"learning_rate": 0.01}}}},
        "_run": {"commit": "x"}}))
    assert ab.chosen_learning_rates(str(ranking)) == {"synthetic": 0.003}
    part = tmp_path / "synthetic.json"
    part.write_text(json.dumps({"synthetic": {"candidates": {}}}))
    merged = ab.merge({"synthetic": str(part), "movielens": str(tmp_path / "none.json")},
                      ["synthetic", "movielens"])
    assert merged == {"synthetic": {"candidates": {}}}


def test_conclusions_per_candidate_over_the_datasets():
    report = {d: {"candidates": ab.summarize({"default": _runs([0.70, 0.71, 0.72]),
                                              "x": _runs(values)})}
              for d, values in (("a", [0.72, 0.74, 0.745]), ("b", [0.70, 0.72, 0.71]))}
    for d in report:
        report[d]["candidates"]["x"]["within_budget"] = True
    out = ab.conclusions(report, ["a", "b"])
    assert list(out) == ["x"]
    assert out["x"]["verdict"] == ab.HELPS and out["x"]["within_budget"] is True
    assert out["x"]["val_auc_diff"]["b"]["verdict"] == stats.TIE
    assert out["x"]["val_auc_diff"]["b"]["mean"] == pytest.approx(0.0)


def test_cost_ratios_against_nfm_200_on_the_same_vocabularies():
    features = fc.load(fc.builtin_config_path("movielens"))
    vocabs = {"user_id": [f"u{i}" for i in range(900)], "item_id": [f"i{i}" for i in range(1600)]}
    lookup = FeatureIds(features.to_dict(), vocabs, ordered_feature_names(features))
    rows = {n: lookup.num_rows(n) for n in lookup.feature_names}
    default = ab.cost_ratios(rc.make_config(rc.NFWFM), features, rows)
    assert default["within_budget"] is True
    assert 0.12 < default["params_ratio_to_nfm"] < 1 / 6
    # Width 64 is far over a sixth of NFM-200 (params go as (d + 1) / 201).
    wide = ab.cost_ratios(rc.make_config(rc.NFWFM, {"embedding_dim": 64}), features, rows)
    assert wide["within_budget"] is False and wide["params_ratio_to_nfm"] > 0.3
