"""bench.item2vec_ablation: variants, coverage records, paired summaries, verdicts (no training)."""
import math

import numpy as np
import pytest

from bench import item2vec_ablation as ab
from feature_contract import feature_config as fc
from models.item2vec import train as i2v_train
from models.item2vec.config import Item2VecConfig


def _runs(values, coverage=0.5):
    cov = {"trained_only": {"hr@50": 0.1, "catalogue_coverage@50": coverage},
           "with_imputed": {"hr@50": 0.2, "catalogue_coverage@50": 2 * coverage}}
    return [{"seed": s, "val_hr@50": v, "coverage": cov} for s, v in enumerate(values)]


def test_variants_layer_their_change_over_the_seed_settings_and_the_schedule():
    args = ab.parse_args(["--quick"])
    assert (args.seed_list, args.max_epochs, args.max_pairs_per_epoch) == (
        [0, 1], ab.QUICK_MAX_EPOCHS, ab.QUICK_MAX_PAIRS)
    assert ab.variant_hparams("seed_city", 3, args) == {
        "dim": 128, "window": 64, "negatives_per_positive": 2, "min_session_len": 5,
        "attribute_role": "item_city", "seed": 3, "max_epochs": 2, "max_pairs_per_epoch": 20_000}
    assert ab.variant_hparams("dim_32", 0, args)["dim"] == 32
    assert ab.variant_hparams(ab.BASELINE, 0, args)["attribute_role"] is None
    for name in ab.VARIANTS:  # every variant is a valid config
        Item2VecConfig.from_hparams(ab.variant_hparams(name, 0, args))
    with pytest.raises(KeyError, match="unknown variant 'wider'"):
        ab.variant_hparams("wider", 0, args)
    full = ab.parse_args(["--variants", "dim_64"])
    assert full.variant_list == [ab.BASELINE, "dim_64"] and full.seed_list == [0, 1, 2, 3, 4]
    assert full.out == ab.RESULTS


def test_a_role_the_dataset_lacks_is_skipped_with_the_reason():
    movielens = fc.load(fc.builtin_config_path("movielens"))
    synthetic = fc.load(fc.builtin_config_path("synthetic"))
    assert ab.applicable("seed_city", synthetic) is None
    assert ab.applicable("seed_category", movielens) is None
    assert ab.applicable("seed_city", movielens).startswith(
        "the feature config sets no item_city role")


def test_coverage_record_scores_trained_only_then_with_imputed(monkeypatch):
    # Top 1 instead of 50, so that a hit can be lost on 3 items.
    monkeypatch.setattr(ab, "K", 1)
    # a, b trained (unit vectors), c imputed; 4 catalogue items (one never reachable)
    result = i2v_train.Item2VecResult(
        feature_config=None, config=Item2VecConfig(), vocabulary=["a", "b", "c"],
        item_ids=["a", "b", "c"],
        item_vectors=np.array([[1, 0], [0, 1], [0.5, 0.5]], np.float32), tower=None,
        stats={"trained_items": 2})
    sessions = [[b"a", b"b"], [b"b", b"c"], [b"a", b"c"]]
    out = ab.coverage_record(result, sessions, catalogue_size=4)
    # trained only: one query, a -> b; without the history a the top 1 is b: a hit
    assert out["trained_only"] == {"items": 2, "reach": 0.5, "queries": 1, "hr@1": 1.0,
                                   "catalogue_coverage@1": 0.25}
    # with c: a -> b, b -> c, a -> c; every top 1 is c (0.5 beats 0): 2 of 3
    # hit, and a -> b, the trained-only query, now misses
    assert out["with_imputed"] == {"items": 3, "reach": 0.75, "queries": 3,
                                   "hr@1": pytest.approx(2 / 3), "catalogue_coverage@1": 0.25,
                                   "hr@1_on_trained_only_queries": 0.0}


def test_summarize_pairs_each_variant_with_the_baseline_by_seed():
    out = ab.summarize({ab.BASELINE: _runs([0.10, 0.20]),
                        "seed_category": _runs([0.15, 0.30], coverage=0.25)})
    assert out[ab.BASELINE]["vs_baseline"] is None
    cat = out["seed_category"]
    assert cat["val_hr@50_mean"] == pytest.approx(0.225)
    assert cat["coverage"]["with_imputed"]["catalogue_coverage@50"] == pytest.approx(0.5)
    # differences 0.05, 0.10: mean 0.075, sd 0.0353553, t(0.975, 1) = 12.706205
    half = 12.706205 * 0.05 / math.sqrt(2) / math.sqrt(2)
    diff = cat["vs_baseline"]
    assert diff["mean"] == pytest.approx(0.075) and diff["n"] == 2
    assert diff["ci_low"] == pytest.approx(0.075 - half, rel=1e-5)
    assert diff["verdict"] == "tie"


def test_conclusions_name_skipped_datasets_and_an_overall_verdict():
    win = {"mean": 0.02, "ci_low": 0.01, "ci_high": 0.03, "n": 5, "verdict": "win"}
    tie = {"mean": 0.0, "ci_low": -0.01, "ci_high": 0.01, "n": 5, "verdict": "tie"}
    report = {
        "synthetic": {"skipped": {}, "variants": {"seed_city": {"vs_baseline": win},
                                                  "dim_32": {"vs_baseline": tie}}},
        "movielens": {"skipped": {"seed_city": "no item_city"},
                      "variants": {"dim_32": {"vs_baseline": {**win, "verdict": "loss",
                                                              "mean": -0.02}}}},
        "_protocol": {}}
    out = ab.conclusions(report, [ab.BASELINE, "seed_city", "dim_32"])
    assert out["seed_city"] == {"overall": "better", "vs_baseline": {
        "synthetic": {"mean": 0.02, "ci": [0.01, 0.03], "n": 5, "verdict": "win"},
        "movielens": {"skipped": "no item_city"}}}
    assert out["dim_32"]["overall"] == "worse"
