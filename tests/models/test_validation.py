"""models.validation: the time carve of validation from train, and EarlyStopping, by hand."""
import math

import numpy as np
import pytest
import tensorflow as tf

from feature_contract import feature_config as fc
from models import validation


def _write_timestamps(path, timestamps):
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for ts in timestamps:
            example = tf.train.Example(features=tf.train.Features(feature={
                fc.TIMESTAMP_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[ts]))}))
            writer.write(example.SerializeToString())


def test_cutoff_of_0_to_99_at_a_tenth_is_89_1():
    # max - fraction * (max - min) = 99 - 0.1 * 99.
    cutoff = validation.validation_cutoff(np.arange(100), 0.1)
    assert cutoff == pytest.approx(89.1)
    # Order does not matter; 90 rows (0..89) fall before it.
    shuffled = np.random.default_rng(0).permutation(100)
    assert validation.validation_cutoff(shuffled, 0.1) == cutoff
    assert int((shuffled < cutoff).sum()) == 90
    # A span not starting at 0: 10 + 0.75 * (30 - 10) = 25.
    assert validation.validation_cutoff([30, 10, 20], 0.25) == pytest.approx(25.0)


@pytest.mark.parametrize("timestamps,fraction,message", [
    ([1, 2], 0.0, "validation_fraction must be in \\(0, 1\\), got 0.0"),
    ([1, 2], 1.0, "validation_fraction must be in \\(0, 1\\), got 1.0"),
    ([], 0.1, "no training examples"),
    ([5, 5, 5], 0.1, "every training example has timestamp 5.0"),
])
def test_cutoff_errors_name_the_problem(timestamps, fraction, message):
    with pytest.raises(validation.ValidationError, match=message):
        validation.validation_cutoff(timestamps, fraction)


def test_read_timestamps_and_record_filter_split_files_at_the_cutoff(tmp_path):
    order = np.random.default_rng(1).permutation(100).tolist()
    _write_timestamps(tmp_path / "a.tfrecord.gz", order[:60])
    _write_timestamps(tmp_path / "b.tfrecord.gz", order[60:])
    pattern = str(tmp_path / "*.gz")
    timestamps = validation.read_timestamps(pattern)
    assert sorted(timestamps.tolist()) == list(range(100))
    cutoff = validation.validation_cutoff(timestamps, 0.1)
    is_validation = validation.is_validation_record(cutoff)
    records = tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern)), compression_type="GZIP")
    spec = {fc.TIMESTAMP_KEY: tf.io.FixedLenFeature([], tf.int64)}

    def kept(predicate):
        return sorted(int(tf.io.parse_single_example(r, spec)[fc.TIMESTAMP_KEY])
                      for r in records.filter(predicate))

    assert kept(is_validation) == list(range(90, 100))
    assert kept(lambda r: tf.logical_not(is_validation(r))) == list(range(90))
    with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
        validation.read_timestamps(str(tmp_path / "missing-*.gz"))


def test_split_arrays_keeps_rows_whole_and_in_order():
    arrays = {fc.TIMESTAMP_KEY: np.array([5, 1, 9, 3]), "x": np.array([[0, 1], [2, 3], [4, 5], [6, 7]])}
    fit, val = validation.split_arrays(arrays, 4.0)
    assert fit[fc.TIMESTAMP_KEY].tolist() == [1, 3]
    assert fit["x"].tolist() == [[2, 3], [6, 7]]
    assert val[fc.TIMESTAMP_KEY].tolist() == [5, 9]
    assert val["x"].tolist() == [[0, 1], [4, 5]]


def test_early_stopping_stops_patience_epochs_after_the_best():
    stop = validation.EarlyStopping(patience=2, max_epochs=10, min_delta=1e-4)
    assert [stop.update(v) for v in (0.50, 0.60)] == [True, True]
    assert not stop.should_stop
    assert stop.update(0.60) is False  # equal is no improvement
    assert not stop.should_stop
    assert stop.update(0.59) is False
    assert stop.should_stop
    assert stop.summary() == {"best_epoch": 2, "best_value": 0.60, "epochs_run": 4,
                              "stopped_early": True}


def test_early_stopping_min_delta_and_the_cap():
    stop = validation.EarlyStopping(patience=1, max_epochs=3, min_delta=0.01)
    assert stop.update(0.500) is True
    assert stop.update(0.505) is False  # +0.005 < min_delta
    assert stop.should_stop and stop.best_epoch == 1
    capped = validation.EarlyStopping(patience=5, max_epochs=3)
    for value in (0.1, 0.2, 0.3):
        assert not capped.should_stop
        assert capped.update(value)
    assert capped.should_stop
    assert capped.summary() == {"best_epoch": 3, "best_value": 0.3, "epochs_run": 3,
                                "stopped_early": False}


def test_early_stopping_nan_never_improves():
    stop = validation.EarlyStopping(patience=2, max_epochs=10)
    assert stop.update(float("nan")) is False
    assert stop.best_epoch == 0 and not stop.should_stop
    assert stop.update(0.4) is True and stop.best_epoch == 2
    assert stop.update(float("nan")) is False and stop.best_value == 0.4
    only_nan = validation.EarlyStopping(patience=2, max_epochs=10)
    only_nan.update(float("nan"))
    only_nan.update(float("nan"))
    assert only_nan.should_stop
    assert only_nan.summary()["best_value"] is None and only_nan.summary()["best_epoch"] == 0
    assert math.isnan(only_nan.values[0])


@pytest.mark.parametrize("kwargs,message", [
    ({"patience": 0}, "patience must be >= 1, got 0"),
    ({"max_epochs": 0}, "max_epochs must be >= 1, got 0"),
    ({"min_delta": -0.1}, "min_delta must be >= 0, got -0.1"),
])
def test_early_stopping_errors_name_the_value(kwargs, message):
    with pytest.raises(validation.ValidationError, match=message):
        validation.EarlyStopping(**kwargs)
