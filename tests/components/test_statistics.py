"""DataValidator: distances on hand-made distributions, the checks, and the
component over tiny hand-written examples across runs (drift blocks, no drift
passes, a wrong vocabulary is OOV)."""

import json
import math
import os

import apache_beam as beam
import pytest
import tensorflow as tf
import yaml
from tfx.types.channel import Channel
from tfx.types import artifact_utils, standard_artifacts

from components import statistics as cs
from components.artifacts import DataAnomalies, DataStatistics, FeatureVocabulary
from feature_contract import feature_config as fc
from tests.beam_jobs.test_statistics import TINY_CONFIG, VOCABULARIES, example
from tests.components.helpers import executor_fn, new_artifact

# Every check on, whatever the sample size (the tiny sets are far below the default).
CHECK_ALL = cs.ValidationConfig(min_examples_for_distances=0)


# ---- distances ---------------------------------------------------------------
def test_l_infinity_hand_values():
    # p = (a .75, b .25), q = (a .25, b .25, c .5): |.75-.25| = |0-.5| = .5.
    assert cs.l_infinity_distance({"a": 3, "b": 1}, {"a": 1, "b": 1, "c": 2}) == 0.5
    assert cs.l_infinity_distance({"a": 3, "b": 1}, {"b": 2, "a": 6}) == 0.0
    # Truncated counts divide by all values: a is 2/4 vs 1/4.
    assert cs.l_infinity_distance({"a": 2}, {"a": 1}, p_total=4, q_total=4) == 0.25
    assert cs.l_infinity_distance({}, {"a": 1}) == 0.0


def test_jensen_shannon_hand_values():
    assert cs.jensen_shannon_divergence([1, 0], [0, 1]) == 1.0  # disjoint: 1 bit
    assert cs.jensen_shannon_divergence([2, 6], [1, 3]) == 0.0
    # p = (.5, .5), q = (1, 0), m = (.75, .25):
    # KL(p||m) = .5 log2(2/3) + .5 log2(2), KL(q||m) = log2(4/3).
    expected = (0.5 * math.log2(2 / 3) + 0.5 + math.log2(4 / 3)) / 2
    assert cs.jensen_shannon_divergence([1, 1], [1, 0]) == pytest.approx(expected)
    assert expected == pytest.approx(0.3112781244591328)
    with pytest.raises(ValueError, match="histograms have 2 and 3 buckets"):
        cs.jensen_shannon_divergence([1, 1], [1, 1, 1])


def _string(counts: dict, total: int | None = None) -> dict:
    n = total or sum(counts.values())
    return {"type": "categorical", "num_values": n, "value_counts": counts}


def _numeric(counts: list) -> dict:
    return {"type": "numeric", "num_values": sum(counts),
            "histogram": {"boundaries": [1.0, 10.0], "counts": counts}}


def test_feature_distance_picks_the_metric_by_type():
    assert cs.feature_distance(_string({"a": 3, "b": 1}), _string({"a": 1, "b": 3})) == (
        "l_infinity", 0.5)
    # (.25, .5, .25) vs (0, 0, 1), m = (.125, .25, .625).
    js = (0.25 + 0.5 + 0.25 * math.log2(0.25 / 0.625) + math.log2(1 / 0.625)) / 2
    metric, value = cs.feature_distance(_numeric([2, 4, 2]), _numeric([0, 0, 8]))
    assert metric == "jensen_shannon" and value == pytest.approx(js)
    assert js == pytest.approx(0.5487949406953985)
    assert cs.feature_distance(_string({}), _string({"a": 1})) is None


# ---- checks on hand-made statistics ---------------------------------------------
def _split(n=100, oov_rate=0.0, count=100, click_rate=0.1, network=None) -> dict:
    return {"num_examples": n,
            "features": {"item_id": {**_string({"i1": 50, "i2": 50}), "count": count,
                                     "missing_fraction": (n - count) / n if n else 0.0,
                                     "oov_rate": oov_rate},
                         "network": {**_string(network or {"wifi": 50, "4g": 50}),
                                     "count": n, "missing_fraction": 0.0, "oov_rate": None}},
            "labels": {"click": {"count": n, "positives": int(n * click_rate),
                                 "rate": click_rate}}}


def _descriptions(anomalies):
    return [a["description"] for a in anomalies]


def test_oov_above_the_bound_is_flagged_in_train_and_eval_only_when_asked():
    current = {"train": _split(oov_rate=0.3), "eval": _split(oov_rate=0.6)}
    assert _descriptions(cs.find_anomalies(current, None, CHECK_ALL)) == [
        "train.item_id: OOV rate 0.300 > 0.25"]
    strict = cs.ValidationConfig(min_examples_for_distances=0, max_eval_oov_rate=0.5)
    assert _descriptions(cs.find_anomalies(current, None, strict)) == [
        "train.item_id: OOV rate 0.300 > 0.25", "eval.item_id: OOV rate 0.600 > 0.5"]
    per_feature = cs.ValidationConfig(min_examples_for_distances=0,
                                      oov_rate_bounds={"item_id": 0.7})
    assert cs.find_anomalies(current, None, per_feature) == []


def test_missing_empty_split_and_label_rate():
    current = {"train": _split(count=0, click_rate=0.0), "eval": _split(n=0, count=0)}
    found = cs.find_anomalies(current, None, CHECK_ALL)
    assert _descriptions(found) == [
        "train.item_id: no value in any of 100 examples",
        "train.click: label rate 0.0000 outside [0.001, 0.999]",
        "eval: no examples"]
    assert [a["kind"] for a in found] == ["feature_missing", "label_rate", "split_empty"]
    bounded = cs.ValidationConfig(min_examples_for_distances=0,
                                  max_missing_fraction={"item_id": 0.1})
    assert _descriptions(cs.find_anomalies({"train": _split(count=80)}, None, bounded)) == [
        "train.item_id: missing in 0.200 of examples > 0.1"]


def test_skew_is_checked_only_on_enough_examples():
    current = {"train": _split(network={"wifi": 90, "4g": 10}), "eval": _split()}
    assert _descriptions(cs.find_anomalies(current, None, CHECK_ALL)) == [
        "train-vs-eval.network: skew l-infinity 0.400 > 0.2"]
    # 100 examples < the default 5000: noise, not checked, and said so.
    assert cs.find_anomalies(current, None, cs.ValidationConfig()) == []
    assert cs.skipped_checks(current, None, cs.ValidationConfig()) == [
        "drift: no previous statistics (first run)",
        "skew train-vs-eval: not checked, 100 examples < min_examples_for_distances 5000"]
    # A per-feature threshold of 1.0 turns the check off.
    off = cs.ValidationConfig(min_examples_for_distances=0, feature_thresholds={"network": 1.0})
    assert cs.find_anomalies(current, None, off) == []


def test_a_time_splits_weekday_and_hour_skew_is_not_checked_but_their_drift_is():
    """A week of log, eval = its last day: eval's weekday differs from train's by
    construction (the trial log's l-infinity 0.685 blocked every push)."""
    config = fc.from_dict({**TINY_CONFIG, "features": [*TINY_CONFIG["features"],
        {"name": "weekday", "field": "context", "type": "categorical", "source": "derived",
         "derive": "day_of_week", "vocab_size": 7},
        {"name": "hour", "field": "context", "type": "categorical", "source": "derived",
         "derive": "hour_of_day", "vocab_size": 24}]})
    exempt = cs.time_split_features(config)
    assert exempt == ("weekday", "hour")
    assert cs.time_split_features(fc.from_dict(
        {**TINY_CONFIG, "split": {"mode": "random_users", "eval_fraction": 0.2}})) == ()
    train, eval_ = _split(), _split()
    train["features"]["weekday"] = {**_string({"0": 20, "1": 20, "2": 20, "3": 20, "4": 20}),
                                    "count": 100, "missing_fraction": 0.0, "oov_rate": None}
    eval_["features"]["weekday"] = {**_string({"6": 100}), "count": 100,
                                    "missing_fraction": 0.0, "oov_rate": None}
    current = {"train": train, "eval": eval_}
    assert _descriptions(cs.find_anomalies(current, None, CHECK_ALL)) == [
        "train-vs-eval.weekday: skew l-infinity 1.000 > 0.2"]
    assert cs.find_anomalies(current, None, CHECK_ALL, exempt) == []
    assert cs.skipped_checks(current, None, CHECK_ALL, skew_exempt=exempt) == [
        "drift: no previous statistics (first run)",
        "skew train-vs-eval of weekday, hour: not checked, derived from the event time, whose "
        "train and eval periods a time split separates (drift still compares them with the "
        "previous data)"]
    # Drift of the same feature against the previous data is still checked.
    previous = {"train": train, "eval": train}
    assert _descriptions(cs.find_anomalies(current, previous, CHECK_ALL, exempt)) == [
        "eval.weekday: drift l-infinity 1.000 > 0.1"]


def test_validation_config_round_trip_and_errors():
    config = cs.ValidationConfig(max_oov_rate=0.5, label_rate_bounds={"click": (0.01, 0.5)},
                                 allowed_anomalies=("drift",), min_examples_for_distances=10)
    assert cs.ValidationConfig.from_json(config.to_json()) == config
    assert cs.ValidationConfig.from_json("{}") == cs.ValidationConfig()
    with pytest.raises(cs.ValidationConfigError, match=r"unknown validation keys \['max_oov'\]"):
        cs.ValidationConfig.from_dict({"max_oov": 0.1})
    with pytest.raises(cs.ValidationConfigError, match=r"allowed_anomalies \['drfit'\] are not"):
        cs.ValidationConfig.from_dict({"allowed_anomalies": ["drfit"]})
    with pytest.raises(cs.ValidationConfigError,
                       match=r"drift_l_infinity must be a number in \[0, 1\], got 1.5"):
        cs.ValidationConfig.from_dict({"drift_l_infinity": 1.5})
    with pytest.raises(cs.ValidationConfigError,
                       match=r"label_rate_bounds.click must be \[low, high\] with low <= high"):
        cs.ValidationConfig.from_dict({"label_rate_bounds": {"click": [0.5, 0.1]}})
    with pytest.raises(cs.ValidationConfigError, match="min_examples_for_distances must be"):
        cs.ValidationConfig.from_dict({"min_examples_for_distances": -1})


# ---- the component across runs ----------------------------------------------------
def _examples(network_wifi: int) -> list[bytes]:
    """8 examples: network wifi in the first `network_wifi`, else 4g; clicks 1 of 2."""
    ages = [0.5, 2.0, 4.0, 20.0] * 2
    return [example(user_id=f"u{1 + i % 2}", tags=["a"], item_id=f"i{1 + i % 2}",
                    age_hours=ages[i], network="wifi" if i < network_wifi else "4g",
                    click=i % 2, follow=0) for i in range(8)]


def _examples_artifact(root: str, name: str, records: list[bytes]):
    artifact = new_artifact(standard_artifacts.Examples, root, name)
    for split in ("train", "eval"):
        os.makedirs(os.path.join(artifact.uri, f"Split-{split}"))
        path = os.path.join(artifact.uri, f"Split-{split}", "data-00000-of-00001.gz")
        with tf.io.TFRecordWriter(path, options="GZIP") as writer:
            for record in records:
                writer.write(record)
    artifact.split_names = artifact_utils.encode_split_names(["train", "eval"])
    return artifact


def _vocabulary_artifact(root: str, name: str, vocabularies: dict):
    artifact = new_artifact(FeatureVocabulary, root, name)
    with open(os.path.join(artifact.uri, "feature_config.yaml"), "w") as f:
        yaml.safe_dump(TINY_CONFIG, f)
    os.makedirs(os.path.join(artifact.uri, "vocab"))
    for feature, values in vocabularies.items():
        with open(os.path.join(artifact.uri, "vocab", f"{feature}.txt"), "w") as f:
            f.write("".join(v + "\n" for v in values))
    return artifact


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("statistics"))


def _run(root: str, name: str, records: list[bytes], baseline=None,
         config: cs.ValidationConfig = CHECK_ALL, vocabularies=VOCABULARIES):
    statistics = new_artifact(DataStatistics, root, f"{name}/statistics")
    anomalies = new_artifact(DataAnomalies, root, f"{name}/anomalies")
    executor_fn(cs.DataValidator)(
        examples=_examples_artifact(root, f"{name}/examples", records),
        vocabulary=_vocabulary_artifact(root, f"{name}/vocabulary", vocabularies),
        statistics=statistics, anomalies=anomalies, baseline_statistics=baseline,
        validation_config=config.to_json(),
        beam_pipeline=beam.Pipeline(runner="FnApiRunner"))  # DirectRunner would try Prism first
    return statistics, anomalies


@pytest.fixture(scope="module")
def first_run(root):
    return _run(root, "run1", _examples(network_wifi=4))


def test_first_run_statistics_and_no_anomalies(first_run):
    statistics, anomalies = first_run
    stats = cs.read_statistics(statistics.uri)
    assert list(stats) == ["eval", "train"]
    assert list(cs.read_statistics(statistics.uri, ["train", "eval"])) == ["train", "eval"]
    # Features in config order, then the labels.
    assert list(stats["train"]["features"]) == [
        "user_id", "tags", "item_id", "age_hours", "network"]
    network = stats["train"]["features"]["network"]
    assert network["top_values"] == [["4g", 4], ["wifi", 4]]
    assert stats["train"]["features"]["age_hours"]["histogram"]["counts"] == [2, 4, 2]
    assert stats["eval"]["labels"]["click"] == {"count": 8, "positives": 4, "rate": 0.5}
    assert statistics.get_int_custom_property("num_examples_train") == 8
    assert json.loads(statistics.get_string_custom_property("split_names")) == ["train", "eval"]
    assert cs.pushes_allowed(anomalies) == (True, "")
    assert anomalies.get_int_custom_property("num_anomalies") == 0
    written = cs.read_anomalies(anomalies.uri)
    assert written["anomalies"] == [] and written["blessed"] is True
    assert written["notes"] == ["drift: no previous statistics (first run)"]


def test_injected_drift_is_flagged_and_blocks_the_pushes(root, first_run):
    # network goes from half wifi to all wifi in both splits: L-inf 0.5 > 0.1.
    _, anomalies = _run(root, "drifted", _examples(network_wifi=8), baseline=first_run[0])
    reason = ("train.network: drift l-infinity 0.500 > 0.1; "
              "eval.network: drift l-infinity 0.500 > 0.1 (to push anyway: "
              "--allow_data_anomalies drift, or allowed_anomalies: [drift] in the dataset "
              "YAML's validation: section)")
    assert cs.pushes_allowed(anomalies) == (False, reason)
    assert anomalies.get_int_custom_property("blessed") == 0
    assert anomalies.get_int_custom_property("num_blocking") == 2
    assert anomalies.get_string_custom_property("baseline_statistics") == first_run[0].uri
    found = cs.read_anomalies(anomalies.uri)["anomalies"]
    assert [(a["kind"], a["split"], a["feature"], a["value"], a["threshold"], a["blocking"])
            for a in found] == [("drift", "train", "network", 0.5, 0.1, True),
                                ("drift", "eval", "network", 0.5, 0.1, True)]


def test_the_report_section_of_a_drifted_run(root, first_run):
    from components import report
    _, anomalies = _run(root, "drifted_report", _examples(network_wifi=8), baseline=first_run[0])
    section = cs.markdown_section(cs.read_anomalies(anomalies.uri))
    assert section == [
        "## Data checks", "",
        f"Pushes: **blocked** by 2 anomalies (2 anomalies found). Previous run's statistics: "
        f"{first_run[0].uri}.", "",
        "| check | where | feature | value | threshold | blocks |",
        "| --- | --- | --- | --- | --- | --- |",
        "| drift | train | network | 0.5 | 0.1 | yes |",
        "| drift | eval | network | 0.5 | 0.1 | yes |", ""]
    text = report.render({"generated": "now", "data_checks": section})
    assert "\n".join(section) in text


def test_the_report_section_of_a_first_run(first_run):
    assert cs.markdown_section(cs.read_anomalies(first_run[1].uri)) == [
        "## Data checks", "",
        "Pushes: allowed (0 anomalies found). Previous run's statistics: none.", "",
        "- drift: no previous statistics (first run)", ""]


def test_same_data_again_is_no_drift(root, first_run):
    _, anomalies = _run(root, "same", _examples(network_wifi=4), baseline=first_run[0])
    assert cs.pushes_allowed(anomalies) == (True, "")
    assert cs.read_anomalies(anomalies.uri)["notes"] == []


def test_allowed_drift_is_reported_but_does_not_block(root, first_run):
    config = cs.ValidationConfig(min_examples_for_distances=0, allowed_anomalies=("drift",))
    _, anomalies = _run(root, "allowed", _examples(network_wifi=8), baseline=first_run[0],
                        config=config)
    assert cs.pushes_allowed(anomalies) == (True, "")
    assert anomalies.get_int_custom_property("num_anomalies") == 2
    assert [a["blocking"] for a in cs.read_anomalies(anomalies.uri)["anomalies"]] == [False] * 2


def test_statistics_of_another_dataset_are_no_baseline(root, first_run):
    other = new_artifact(DataStatistics, root, "other_dataset")
    other.set_string_custom_property(cs.DATASET_KEY, "movielens")
    _, anomalies = _run(root, "other_baseline", _examples(network_wifi=8), baseline=other)
    assert cs.pushes_allowed(anomalies) == (True, "")
    assert cs.read_anomalies(anomalies.uri)["notes"] == [
        f"drift: the previous statistics ({other.uri}) are of dataset 'movielens', not 'tiny'"]
    assert first_run[0].get_string_custom_property(cs.DATASET_KEY) == "tiny"


def test_a_wrong_vocabulary_is_out_of_vocabulary_and_blocks(root):
    wrong = {"user_id": ["x"], "tags": ["x"], "item_id": ["x"]}
    _, anomalies = _run(root, "wrong_vocab", _examples(network_wifi=4), vocabularies=wrong)
    ok, reason = cs.pushes_allowed(anomalies)
    assert not ok
    assert reason == ("train.user_id: OOV rate 1.000 > 0.25; train.tags: OOV rate 1.000 > 0.25; "
                      "train.item_id: OOV rate 1.000 > 0.25 (to push anyway: "
                      "--allow_data_anomalies oov_rate, or allowed_anomalies: [oov_rate] in the "
                      "dataset YAML's validation: section)")


class _Stub:
    def __init__(self, id_, uri, examples_uri=""):
        self.id, self.uri, self._examples_uri = id_, uri, examples_uri

    def get_string_custom_property(self, key):
        assert key == cs.EXAMPLES_URI_KEY
        return self._examples_uri


def test_the_baseline_is_the_latest_statistics_of_other_examples():
    strategy = cs.PreviousDataStatisticsStrategy()
    a, b = _Stub(1, "ex/a"), _Stub(5, "ex/b")
    stats = [_Stub(2, "st/1", "ex/a"), _Stub(3, "st/2", "ex/a"), _Stub(6, "st/3", "ex/b")]
    # Current data b: the latest statistics of a (id 3), not b's own (id 6).
    out = strategy.resolve_artifacts(None, {"examples": [a, b], "statistics": stats})
    assert [s.uri for s in out["statistics"]] == ["st/2"]
    assert [e.uri for e in out["examples"]] == ["ex/b"]
    # Only statistics of the current data, or none at all: no baseline.
    for only_current in (stats[:2], []):
        out = strategy.resolve_artifacts(None, {"examples": [a], "statistics": only_current})
        assert out["statistics"] == []


def test_previous_statistics_resolver_reads_this_components_statistics():
    examples = Channel(type=standard_artifacts.Examples)
    resolver = cs.previous_statistics_resolver(examples)
    assert resolver.id == "DataValidator.previous_statistics"
    assert resolver.exec_properties["resolver_class"] is cs.PreviousDataStatisticsStrategy
    assert resolver.outputs[cs.STATISTICS_KEY].type is DataStatistics


def _pipeline(root: str, examples_uri: str, vocabulary_uri: str):
    from tfx.dsl.components.common import importer
    from tfx.orchestration import metadata
    from tfx.orchestration import pipeline as tfx_pipeline
    examples = importer.Importer(
        source_uri=examples_uri, artifact_type=standard_artifacts.Examples,
        properties={"split_names": artifact_utils.encode_split_names(["train", "eval"])},
        reimport=True).with_id("examples")
    vocabulary = importer.Importer(source_uri=vocabulary_uri, artifact_type=FeatureVocabulary,
                                   reimport=True).with_id("vocabulary")
    resolver = cs.previous_statistics_resolver(examples.outputs["result"])
    validator = cs.DataValidator(examples=examples.outputs["result"],
                                 vocabulary=vocabulary.outputs["result"],
                                 baseline_statistics=resolver.outputs[cs.STATISTICS_KEY],
                                 validation_config=CHECK_ALL.to_json()).with_id(cs.COMPONENT_ID)
    return tfx_pipeline.Pipeline(
        pipeline_name="statistics", pipeline_root=os.path.join(root, "pipeline"),
        components=[examples, vocabulary, resolver, validator], enable_cache=False,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.sqlite")))


def test_the_resolver_feeds_the_previous_datas_statistics_and_drift_blocks(root):
    """Four LocalDagRunner runs over base, base, drifted, drifted data: the
    baseline is the latest statistics of OTHER data than the current, so the
    repeated base run has none, the drifted runs both get the base statistics
    (a re-run on unchanged data resolves the same input: the cache holds),
    and the injected drift is flagged."""
    from ml_metadata.metadata_store import metadata_store
    from tfx.orchestration import metadata
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    base = _examples_artifact(root, "pipeline_in/base", _examples(network_wifi=4)).uri
    drifted = _examples_artifact(root, "pipeline_in/drifted", _examples(network_wifi=8)).uri
    vocabulary = _vocabulary_artifact(root, "pipeline_in/vocabulary", VOCABULARIES).uri
    for examples_uri in (base, base, drifted, drifted):
        LocalDagRunner().run(_pipeline(root, examples_uri, vocabulary))
    store = metadata_store.MetadataStore(
        metadata.sqlite_metadata_connection_config(os.path.join(root, "metadata.sqlite")))
    statistics = sorted(store.get_artifacts_by_type(DataStatistics.TYPE_NAME), key=lambda a: a.id)
    anomalies = sorted(store.get_artifacts_by_type(DataAnomalies.TYPE_NAME), key=lambda a: a.id)
    assert len(statistics) == len(anomalies) == 4
    runs = [a.custom_properties for a in anomalies]
    assert [(r["blessed"].int_value, r["baseline_statistics"].string_value) for r in runs] == [
        (1, ""), (1, ""), (0, statistics[1].uri), (0, statistics[1].uri)]
    assert runs[2]["reason"].string_value == (
        "train.network: drift l-infinity 0.500 > 0.1; eval.network: drift l-infinity 0.500 > "
        "0.1 (to push anyway: --allow_data_anomalies drift, or allowed_anomalies: [drift] in "
        "the dataset YAML's validation: section)")