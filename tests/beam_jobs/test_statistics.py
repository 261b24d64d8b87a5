"""beam_jobs.statistics: hand-computed statistics of four tiny examples."""

import math

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from tfx_bsl.coders import example_coder

from beam_jobs import statistics as st
from feature_contract import feature_config as fc

TINY_CONFIG = {
    "name": "tiny",
    "item_created_column": "created",
    "features": [
        {"name": "user_id", "field": "user", "type": "categorical", "source": "users",
         "vocab_size": 10},
        {"name": "tags", "field": "user", "type": "tags", "source": "users", "vocab_size": 10,
         "max_len": 3},
        {"name": "item_id", "field": "item", "type": "categorical", "source": "items",
         "vocab_size": 10},
        {"name": "age_hours", "field": "item", "type": "numeric", "source": "derived",
         "derive": "item_age_hours", "boundaries": [1, 10]},
        {"name": "network", "field": "context", "type": "categorical", "source": "events",
         "hash_buckets": 5},
    ],
}
VOCABULARIES = {"user_id": ["u1", "u2"], "tags": ["a"], "item_id": ["i1", "i2"]}


def tiny_config() -> fc.FeatureConfig:
    return fc.from_dict(TINY_CONFIG)


def example(**features) -> bytes:
    """A serialized tf.Example: str / list[str] -> bytes, float -> float, int -> int64."""
    out = {}
    for key, value in features.items():
        values = value if isinstance(value, list) else [value]
        if all(isinstance(v, str) for v in values):
            out[key] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[v.encode() for v in values]))
        elif all(isinstance(v, float) for v in values):
            out[key] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        else:
            out[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Example(features=tf.train.Features(feature=out)).SerializeToString()


# u1 twice, u2 once, one empty user id; tags a,b / a / [] / absent; i9 is OOV;
# network is hashed (no OOV rate) and absent in the last example.
EXAMPLES = [
    example(user_id="u1", tags=["a", "b"], item_id="i1", age_hours=0.5, network="wifi",
            click=1, follow=0),
    example(user_id="u1", tags=["a"], item_id="i2", age_hours=2.0, network="4g",
            click=0, follow=0),
    example(user_id="u2", tags=[], item_id="i9", age_hours=20.0, network="wifi",
            click=0, follow=0),
    example(user_id="", item_id="i1", age_hours=4.0, click=1, follow=1),
]

# Hand-computed: age_hours values 0.5, 2, 20, 4.
_MEAN = 26.5 / 4
EXPECTED = {
    "num_examples": 4,
    "features": {
        "user_id": {"type": "categorical", "count": 3, "missing": 1, "missing_fraction": 0.25,
                    "num_values": 3, "avg_num_values": 1.0, "distinct": 2,
                    "top_values": [["u1", 2], ["u2", 1]], "value_counts": {"u1": 2, "u2": 1},
                    "oov": 0, "oov_rate": 0.0},
        "tags": {"type": "tags", "count": 2, "missing": 2, "missing_fraction": 0.5,
                 "num_values": 3, "avg_num_values": 1.5, "distinct": 2,
                 "top_values": [["a", 2], ["b", 1]], "value_counts": {"a": 2, "b": 1},
                 "oov": 1, "oov_rate": 1 / 3},
        "item_id": {"type": "categorical", "count": 4, "missing": 0, "missing_fraction": 0.0,
                    "num_values": 4, "avg_num_values": 1.0, "distinct": 3,
                    "top_values": [["i1", 2], ["i2", 1], ["i9", 1]],
                    "value_counts": {"i1": 2, "i2": 1, "i9": 1}, "oov": 1, "oov_rate": 0.25},
        "age_hours": {"type": "numeric", "count": 4, "missing": 0, "missing_fraction": 0.0,
                      "num_values": 4, "min": 0.5, "max": 20.0, "mean": _MEAN,
                      "std": math.sqrt(420.25 / 4 - _MEAN ** 2),
                      "quantiles": [0.5, 2.0, 20.0],
                      # (-inf, 1): 0.5; [1, 10): 2, 4; [10, inf): 20.
                      "histogram": {"boundaries": [1.0, 10.0], "counts": [1, 2, 1]}},
        "network": {"type": "categorical", "count": 3, "missing": 1, "missing_fraction": 0.25,
                    "num_values": 3, "avg_num_values": 1.0, "distinct": 2,
                    "top_values": [["wifi", 2], ["4g", 1]], "value_counts": {"wifi": 2, "4g": 1},
                    "oov": None, "oov_rate": None},
    },
    "labels": {"click": {"count": 4, "positives": 2, "rate": 0.5},
               "follow": {"count": 4, "positives": 1, "rate": 0.25}},
}


def combine_directly(records, columns, batches=2, num_quantiles=3) -> dict:
    """The CombineFn without Beam: `batches` accumulators merged, then finalized."""
    fn = st.StatisticsCombineFn(columns, num_quantiles=num_quantiles)
    decoder = example_coder.ExamplesToRecordBatchDecoder()
    size = -(-len(records) // batches)
    accumulators = [fn.add_input(fn.create_accumulator(), decoder.DecodeBatch(records[i:i + size]))
                    for i in range(0, len(records), size)]
    return st.finalize(fn.extract_output(fn.merge_accumulators(accumulators)), columns,
                       VOCABULARIES)


def test_columns_and_vocabulary_sources():
    config = tiny_config()
    assert [(c.name, c.kind) for c in st.columns_of(config)] == [
        ("user_id", "string"), ("tags", "string"), ("item_id", "string"),
        ("age_hours", "numeric"), ("network", "string"), ("click", "label"),
        ("follow", "label")]
    # network is hashed: no vocabulary file, no OOV rate.
    assert st.vocabulary_sources(config) == {"user_id": "user_id", "tags": "tags",
                                             "item_id": "item_id"}


@pytest.mark.parametrize("batches", [1, 2, 4])
def test_hand_computed_statistics(batches):
    # However the examples are batched, merged accumulators give the same numbers.
    got = combine_directly(EXAMPLES, st.columns_of(tiny_config()), batches=batches)
    assert got["features"]["age_hours"].pop("std") == pytest.approx(
        EXPECTED["features"]["age_hours"]["std"])
    expected = {**EXPECTED, "features": {**EXPECTED["features"], "age_hours": {
        k: v for k, v in EXPECTED["features"]["age_hours"].items() if k != "std"}}}
    assert got == expected


def test_top_k_and_stored_values_truncate_but_distinct_and_oov_count_all():
    columns = st.columns_of(tiny_config())
    fn = st.StatisticsCombineFn(columns)
    acc = fn.add_input(fn.create_accumulator(),
                       example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(EXAMPLES))
    got = st.finalize(fn.extract_output(acc), columns, VOCABULARIES, top_k=1,
                      max_stored_values=2)["features"]["item_id"]
    assert got["top_values"] == [["i1", 2]]
    assert got["value_counts"] == {"i1": 2, "i2": 1}
    assert (got["distinct"], got["oov"]) == (3, 1)


def test_the_transform_matches_the_hand_computed_statistics():
    columns = st.columns_of(tiny_config())
    expected = combine_directly(EXAMPLES, columns, num_quantiles=st.DEFAULT_NUM_QUANTILES)
    with TestPipeline() as p:
        out = (p | beam.Create(EXAMPLES)
               | st.ComputeStatistics(columns, VOCABULARIES))
        assert_that(out, equal_to([expected]))


def test_an_empty_split_has_every_feature_missing():
    columns = st.columns_of(tiny_config())
    with TestPipeline() as p:
        out = p | beam.Create([]) | st.ComputeStatistics(columns, VOCABULARIES)
        assert_that(out | beam.Map(lambda s: (
            s["num_examples"], sorted((k, f["count"]) for k, f in s["features"].items()),
            s["labels"]["click"])), equal_to([(
                0, [("age_hours", 0), ("item_id", 0), ("network", 0), ("tags", 0),
                    ("user_id", 0)], {"count": 0, "positives": 0, "rate": None})]))
