"""Item2vec's shipped defaults are the settings bench/results/item2vec_ablation.json measured."""

import json
import os

from bench import item2vec_ablation as ab
from models.item2vec.config import Item2VecConfig
from pipelines import profiles


def _default_profile_config(data: str) -> Item2VecConfig:
    return Item2VecConfig.from_hparams(profiles.get(profiles.DEFAULT, data).recall.hparams[
        "item2vec"])


def test_config_defaults_are_the_seed_settings_the_ablation_measured():
    config = Item2VecConfig()
    assert (config.dim, config.window, config.negatives_per_positive) == (128, 64, 2)
    assert config.attribute_role is None and config.unigram_alpha == 0.75
    assert config.max_pairs_per_epoch == ab.DEFAULT_MAX_PAIRS == 200_000
    # sessions >= 5: min_session_len None defers to the feature config's (5 in both)
    assert {k: getattr(config, k) for k in ab.SEED_SETTINGS if k != "min_session_len"} == {
        k: v for k, v in ab.SEED_SETTINGS.items() if k != "min_session_len"}


def test_default_profile_trains_the_seed_settings_on_both_datasets():
    for data in ("synthetic", "movielens"):
        config = _default_profile_config(data)
        assert (config.dim, config.window, config.negatives_per_positive) == (128, 64, 2)
        assert config.attribute_role is None and config.max_pairs_per_epoch == 200_000
        assert (config.max_epochs, config.patience) == (3, 1)


def test_the_recorded_ablation_found_no_variant_better_than_the_seed_settings():
    path = os.path.join(os.path.dirname(ab.RESULTS), "item2vec_ablation.json")
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    assert report["_protocol"]["baseline"]["hparams"] == ab.SEED_SETTINGS
    assert not report["_protocol"]["quick"] and len(report["_protocol"]["seeds"]) >= 5
    # A default would have to change if a variant had won somewhere and lost nowhere.
    assert {name: c["overall"] for name, c in report["_conclusions"].items()} == {
        "seed_category": "tie", "seed_city": "tie", "dim_32": "tie", "dim_64": "tie"}


def test_recent_clicks_default_is_the_variant_that_won_on_validation():
    path = os.path.join(os.path.dirname(ab.RESULTS), "item2vec_ablation_recent.json")
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    assert not report["_protocol"]["quick"] and len(report["_protocol"]["seeds"]) >= 5
    conclusions = {name: c["overall"] for name, c in report["_conclusions"].items()}
    assert conclusions == {"recent_1": "tie", "recent_5": "better"}
    assert Item2VecConfig().recent_clicks == 5
    for data in ("synthetic", "movielens"):
        assert _default_profile_config(data).recent_clicks == 5
