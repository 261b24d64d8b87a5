"""The ranking benchmark's selection protocol: validation split, choice, inheritance."""
import argparse
import json

import numpy as np
import pytest
import tensorflow as tf

from bench import ranking_bench as rb
from beam_jobs import feature_config as fc


def _data(timestamps):
    n = len(timestamps)
    return {fc.TIMESTAMP_KEY: tf.constant(timestamps, tf.int64),
            fc.USER_KEY: tf.constant([f"u{i}" for i in range(n)]),
            "tags": tf.reshape(tf.range(2 * n), [n, 2])}


def test_validation_is_the_latest_tenth_of_train_by_time():
    # File order is not time order: the 2 latest (ts 90, 95) go to validation.
    ts = [10, 95, 20, 30, 90, 40, 50, 60, 70, 80, 15, 25, 35, 45, 55, 65, 75, 85, 5, 1]
    fit, val = rb.split_validation(_data(ts))
    assert val[fc.TIMESTAMP_KEY].numpy().tolist() == [95, 90]
    assert val[fc.USER_KEY].numpy().tolist() == [b"u1", b"u4"]
    # Rows stay whole (multi-valued features follow their example) and in file order.
    assert val["tags"].numpy().tolist() == [[2, 3], [8, 9]]
    assert fit[fc.TIMESTAMP_KEY].shape == (18,)
    assert max(fit[fc.TIMESTAMP_KEY].numpy()) < min(val[fc.TIMESTAMP_KEY].numpy())
    assert fit[fc.TIMESTAMP_KEY].numpy().tolist()[:3] == [10, 20, 30]


def test_validation_split_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="fraction must be in"):
        rb.split_validation(_data([1, 2, 3]), 1.0)
    with pytest.raises(ValueError, match="3 examples cannot give a validation fraction 0.1"):
        rb.split_validation(_data([1, 2, 3]), 0.1)


def test_choose_takes_the_best_validation_auc_first_on_ties():
    grid = {"a": {"val_auc": 0.70}, "b": {"val_auc": 0.71}, "c": {"val_auc": 0.71}}
    assert rb.choose(grid) == "b"
    with pytest.raises(ValueError, match="empty"):
        rb.choose({})


def test_tuned_hparams_inherit_from_their_parent(tmp_path):
    tuning = {"movielens": {"nfwfm": {"chosen": {"learning_rate": 0.01}},
                            "multitask_uncertainty": {"chosen": {"click_weight": 4.0}}}}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(tuning))
    loaded = rb.load_tuning(str(path))
    assert rb.tuned_hparams(loaded, "movielens", "nfwfm_no_fm") == {"learning_rate": 0.01}
    assert rb.tuned_hparams(loaded, "movielens", "multitask_sum") == {"click_weight": 4.0}
    # Untuned models and datasets run with their defaults.
    assert rb.tuned_hparams(loaded, "movielens", "deepfm") == {}
    assert rb.tuned_hparams(loaded, "synthetic", "nfwfm") == {}
    assert rb.load_tuning(str(tmp_path / "missing.json")) == {}
    assert rb.load_tuning("") == {}


def test_protocol_records_grid_choice_and_validation_aucs():
    tuning = {"synthetic": {"_meta": {"fit_examples": 9},
                            "nfm": {"chosen": {"learning_rate": 0.02},
                                    "grid": {"base lr=0.02": {"val_auc": 0.68}}}}}
    args = argparse.Namespace(tuning="t.json", epochs=1)
    out = rb.protocol(tuning, args)
    assert out["chosen"] == {"synthetic": {"nfm": {"learning_rate": 0.02}}}
    assert out["validation_auc"] == {"synthetic": {"nfm": {"base lr=0.02": 0.68}}}
    assert out["grid"]["learning_rate"] == list(rb.LR_GRID)
    assert "deepfm" in out["untuned"] and "nfwfm" not in out["untuned"]
    # Every tuned model is an existing benchmark entry with the same grid size.
    assert set(rb.TUNE_VARIANTS) <= set(rb.OUR_MODELS) | set(rb.PEERS)
    assert {len(rb.TUNE_VARIANTS[n]) for n in ("nfm", "nfwfm", "deepctr_nfm")} == {2}


def test_peer_rejects_settings_it_cannot_take():
    with pytest.raises(ValueError, match="only learning_rate .* got \\['embedding_dim'\\]"):
        rb.run_peer("deepctr_nfm", None, None, None, None, 0, 1, {"embedding_dim": 8})
    with pytest.raises(ValueError, match="got \\['bi_dropout'\\]"):
        rb.run_peer("deepctr_fwfm", None, None, None, None, 0, 1, {"bi_dropout": 0.2})
    assert np.isclose(rb.VALIDATION_FRACTION, 0.1)
