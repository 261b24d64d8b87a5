"""Validation-driven recall training: schedule settings, the time carve, fit_epochs."""

import numpy as np
import pytest
import tf_keras as keras

from feature_contract import feature_config as fc
from models import validation
from models.item2vec.config import Item2VecConfig, Item2VecConfigError
from models.recall import training
from models.two_tower.config import TwoTowerConfig, TwoTowerConfigError
from models.youtubenet.config import YouTubeNetConfig, YouTubeNetConfigError

CONFIGS = [(Item2VecConfig, Item2VecConfigError, "Item2vec"),
           (YouTubeNetConfig, YouTubeNetConfigError, "YouTubeNet"),
           (TwoTowerConfig, TwoTowerConfigError, "two-tower")]
# Patience chosen on validation per model (bench/results/recall_patience5.json).
DEFAULT_PATIENCE = {Item2VecConfig: 5, YouTubeNetConfig: 5, TwoTowerConfig: 2}


@pytest.mark.parametrize("cls,error,label", CONFIGS)
def test_schedule_defaults_and_hparams(cls, error, label):
    config = cls()
    assert (config.max_epochs, config.patience, config.min_delta) == (
        20, DEFAULT_PATIENCE[cls], 1e-4)
    assert config.validation_fraction == validation.DEFAULT_VALIDATION_FRACTION == 0.1
    assert not hasattr(config, "epochs")
    tuned = cls.from_hparams({"max_epochs": 7, "patience": 3, "min_delta": 0.0,
                              "validation_fraction": 0.2})
    assert (tuned.max_epochs, tuned.patience, tuned.min_delta, tuned.validation_fraction) == (
        7, 3, 0.0, 0.2)


@pytest.mark.parametrize("cls,error,label", CONFIGS)
@pytest.mark.parametrize("field,value,message", [
    ("max_epochs", 0, "max_epochs must be an integer >= 1, got 0"),
    ("max_epochs", True, "max_epochs must be an integer >= 1, got True"),
    ("patience", 1.5, "patience must be an integer >= 1, got 1.5"),
    ("min_delta", -0.1, "min_delta must be finite and >= 0, got -0.1"),
    ("min_delta", float("inf"), "min_delta must be finite and >= 0, got inf"),
    ("validation_fraction", 1.0, "validation_fraction must be in (0, 1), got 1.0"),
    ("validation_fraction", 0.0, "validation_fraction must be in (0, 1), got 0.0"),
])
def test_schedule_rejects_bad_values_with_the_config_error(cls, error, label, field, value,
                                                           message):
    with pytest.raises(error) as info:
        cls(**{field: value})
    assert str(info.value) == message


@pytest.mark.parametrize("cls,error,label", CONFIGS)
def test_epochs_hparam_says_use_max_epochs(cls, error, label):
    with pytest.raises(error) as info:
        cls.from_hparams({"epochs": 3, "dim": 8})
    assert str(info.value).startswith(
        f"{label} hparam 'epochs' (3) is no longer accepted: use 'max_epochs' (a cap; ")


def test_carve_validation_on_hand_known_timestamps():
    # span 100..190, fraction 0.25: cutoff = 190 - 0.25 * 90 = 167.5
    arrays = {fc.TIMESTAMP_KEY: np.array([100, 190, 110, 180, 120, 170, 130, 160, 140, 150]),
              "row": np.arange(10)}
    carve = training.carve_validation(arrays, 0.25, "two_tower")
    assert carve.cutoff == 167.5
    assert carve.validation["row"].tolist() == [1, 3, 5]  # timestamps 190, 180, 170
    assert carve.fit["row"].tolist() == [0, 2, 4, 6, 7, 8, 9]
    assert carve.summary() == {"cutoff": 167.5, "fit_examples": 7, "validation_examples": 3}


def test_carve_validation_too_small_names_model_and_counts():
    same_time = {fc.TIMESTAMP_KEY: np.array([5, 5, 5]), "row": np.arange(3)}
    with pytest.raises(validation.ValidationError) as info:
        training.carve_validation(same_time, 0.1, "youtubenet")
    assert str(info.value) == (
        "youtubenet: cannot carve a validation split from 3 training examples "
        "(validation_fraction 0.1): every training example has timestamp 5.0: cannot carve "
        "a validation split by time")
    with pytest.raises(validation.ValidationError, match="item2vec: training examples have no "
                                                         "'timestamp' column"):
        training.carve_validation({"row": np.arange(3)}, 0.1, "item2vec")


def test_no_validation_query_names_model_and_counts():
    # cutoff = 40 - 0.3 * 40 = 28: timestamps 30 and 40 are validation
    carve = training.carve_validation(
        {fc.TIMESTAMP_KEY: np.array([0, 10, 20, 30, 40]), "row": np.arange(5)}, 0.3, "two_tower")
    training.check_validation_queries(1, carve, "two_tower")  # one query is enough
    with pytest.raises(validation.ValidationError) as info:
        training.check_validation_queries(0, carve, "two_tower")
    assert str(info.value) == (
        "two_tower: the 2 validation examples (timestamp >= 28.0; 3 fit examples before it) "
        "give no validation query with a target: too little training data to validate on")


class _Schedule:
    """A scripted run: epoch e sets the weight to e and reports values[e - 1]."""

    def __init__(self, values):
        self.values = list(values)
        self.layer = keras.layers.Dense(1, use_bias=False)
        self.layer.build((None, 2))
        self.epoch = 0

    def train_epoch(self) -> float:
        self.epoch += 1
        # In-place assign, as an optimizer step does: a snapshot that only
        # referenced the variable's buffer would follow it.
        self.layer.kernel.assign(np.full((2, 1), float(self.epoch), np.float32))
        return 10.0 - self.epoch

    def validate(self) -> float:
        return self.values[self.epoch - 1]


def _settings(max_epochs, patience=2, min_delta=1e-4):
    return TwoTowerConfig(max_epochs=max_epochs, patience=patience, min_delta=min_delta)


def test_fit_epochs_runs_to_the_cap_while_improving():
    run = _Schedule([0.1, 0.2, 0.3, 0.4])
    out = training.fit_epochs(run.layer, run.train_epoch, run.validate, _settings(max_epochs=4))
    assert out["learning_curve"] == [
        {"epoch": e, "train_loss": 10.0 - e, "val_hr@50": v}
        for e, v in zip(range(1, 5), [0.1, 0.2, 0.3, 0.4])]
    assert out["early_stopping"] == {"best_epoch": 4, "best_value": 0.4, "epochs_run": 4,
                                     "stopped_early": False, "monitor": "val_hr@50"}
    np.testing.assert_array_equal(run.layer.get_weights()[0], np.full((2, 1), 4.0))


def test_fit_epochs_stops_after_patience_and_restores_the_best_epoch():
    # epoch 3 gains 5e-5 < min_delta: not an improvement; epoch 4 is worse -> stop
    run = _Schedule([0.2, 0.5, 0.5 + 5e-5, 0.4, 0.9, 0.9])
    out = training.fit_epochs(run.layer, run.train_epoch, run.validate, _settings(max_epochs=10))
    assert run.epoch == 4  # epoch 5's 0.9 is never reached
    assert [c["val_hr@50"] for c in out["learning_curve"]] == [0.2, 0.5, 0.5 + 5e-5, 0.4]
    assert out["early_stopping"] == {"best_epoch": 2, "best_value": 0.5, "epochs_run": 4,
                                     "stopped_early": True, "monitor": "val_hr@50"}
    np.testing.assert_array_equal(run.layer.get_weights()[0], np.full((2, 1), 2.0))


def test_fit_epochs_patience_one_stops_at_the_first_miss():
    run = _Schedule([0.3, 0.6, 0.6, 0.9])
    out = training.fit_epochs(run.layer, run.train_epoch, run.validate,
                              _settings(max_epochs=10, patience=1))
    assert out["early_stopping"]["best_epoch"] == 2 and out["early_stopping"]["epochs_run"] == 3
    np.testing.assert_array_equal(run.layer.get_weights()[0], np.full((2, 1), 2.0))
