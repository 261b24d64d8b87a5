"""ClickLogExampleGen: the sessionize job's output lands in the right artifacts."""

import json
import os

import pytest
import tensorflow as tf
from absl.testing import parameterized
from tfx.types import artifact_utils, standard_artifacts

from feature_contract import feature_config as fc
from components.artifacts import FeatureVocabulary, ItemCatalogue, SessionizeSummary
from components.example_gen import CONFIG_FILE, distribute_outputs
from tests.components.helpers import count_records, new_artifact, temp_dir


@pytest.mark.parametrize("kind", fc.EXAMPLE_KINDS)
def test_examples_per_kind_match_summary_counts(sessionized, kind):
    artifact = sessionized[f"{kind}_examples"]
    assert artifact_utils.decode_split_names(artifact.split_names) == ["train", "eval"]
    assert artifact.get_string_custom_property("example_kind") == kind
    with open(os.path.join(sessionized["summary"].uri, "summary.json")) as f:
        summary = json.load(f)
    for split in fc.SPLITS:
        got = count_records(os.path.join(artifact.uri, f"Split-{split}", "*.gz"))
        # The artifact holds exactly what the job says it wrote.
        assert got == summary["examples"][kind][split], (kind, split)
    assert summary["examples"]["ranking"]["train"] > 0


def test_side_artifacts(sessionized):
    vocab = sessionized["vocabulary"].uri
    config = fc.load(os.path.join(vocab, CONFIG_FILE))
    assert config.name == "synthetic"
    for spec in config.vocab_features:
        assert os.path.exists(os.path.join(vocab, "vocab", f"{spec.name}.txt")), spec.name
    catalogue = sessionized["catalogue"].uri
    assert count_records(os.path.join(catalogue, "items", "*.gz")) > 0
    assert os.path.exists(os.path.join(catalogue, "item_frequencies.tsv"))
    summary = sessionized["summary"]
    # Counts are queryable in MLMD as custom properties.
    assert summary.get_int_custom_property("events.read") == 3000
    assert not os.path.exists(os.path.join(summary.uri, "_staging"))


class DistributeErrorsTest(parameterized.TestCase):
    """A sessionize output missing a part fails loudly, naming the part."""

    @parameterized.named_parameters(
        ("missing_eval_split", os.path.join("ranking", "Split-eval")),
        ("missing_vocab", "vocab"),
        ("missing_items", "items"),
        ("missing_summary", "summary.json"),
    )
    def test_missing_part(self, missing):
        root = temp_dir(self)
        staging = os.path.join(root, "staging")
        for kind in fc.EXAMPLE_KINDS:
            for split in fc.SPLITS:
                os.makedirs(os.path.join(staging, kind, f"Split-{split}"))
        os.makedirs(os.path.join(staging, "vocab"))
        os.makedirs(os.path.join(staging, "items"))
        for name in ("item_frequencies.tsv", "summary.json"):
            with open(os.path.join(staging, name), "w") as f:
                f.write("{}")
        target = os.path.join(staging, missing)
        tf.io.gfile.rmtree(target) if os.path.isdir(target) else os.remove(target)
        examples = {k: new_artifact(standard_artifacts.Examples, root, k)
                    for k in fc.EXAMPLE_KINDS}
        with self.assertRaisesRegex(FileNotFoundError, missing.split(os.sep)[-1]):
            distribute_outputs(staging, examples, new_artifact(FeatureVocabulary, root, "v"),
                               new_artifact(ItemCatalogue, root, "c"),
                               new_artifact(SessionizeSummary, root, "s"),
                               fc.builtin_config_path("synthetic"))


def test_side_artifacts_record_the_input_fingerprint(sessionized, raw_dataset):
    from beam_jobs import datasets
    # Called directly (no orchestrator, so no driver): the executor computes it.
    assert sessionized["summary"].get_string_custom_property("input_fingerprint") == \
        datasets.fingerprint({"events": raw_dataset.events, "users": raw_dataset.users,
                              "items": raw_dataset.items})


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


class FingerprintTest(parameterized.TestCase):
    """What beam_jobs.datasets.fingerprint sees, and what it makes of changes."""

    def setUp(self):
        super().setUp()
        self.root = temp_dir(self)
        _write(os.path.join(self.root, "ev", "a.csv"), b"ts,u\n1,x\n")
        _write(os.path.join(self.root, "ev", "b.csv"), b"ts,u\n2,y\n")
        self.tables = {"events": os.path.join(self.root, "ev", "*.csv"), "users": None}

    def _fingerprint(self) -> str:
        from beam_jobs import datasets
        return datasets.fingerprint(self.tables)

    def test_describes_each_table(self):
        text = self._fingerprint()
        self.assertRegex(text, r"^events: 2 files, 18 bytes, sha256 [0-9a-f]{64}; users: none$")
        self.assertEqual(text, self._fingerprint())  # stable while nothing changes

    def test_a_glob_matching_nothing(self):
        self.tables["events"] = os.path.join(self.root, "nothing", "*.csv")
        self.assertRegex(self._fingerprint(), r"^events: 0 files, 0 bytes, sha256 ")

    def test_same_size_same_mtime_new_content_changes_it(self):
        path = os.path.join(self.root, "ev", "a.csv")
        before, stat = self._fingerprint(), os.stat(path)
        _write(path, b"ts,u\n9,z\n")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime as it was
        self.assertNotEqual(self._fingerprint(), before)

    def test_touch_changes_it(self):
        before = self._fingerprint()
        path = os.path.join(self.root, "ev", "a.csv")
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        self.assertNotEqual(self._fingerprint(), before)

    def test_a_new_file_changes_it(self):
        before = self._fingerprint()
        _write(os.path.join(self.root, "ev", "c.csv"), b"ts,u\n")
        self.assertRegex(self._fingerprint(), r"^events: 3 files, 23 bytes")
        self.assertNotEqual(self._fingerprint(), before)


def test_driver_sets_the_fingerprint_exec_property(tmp_path):
    from tfx.orchestration.portable import data_types

    from beam_jobs import datasets
    from components.example_gen import InputFingerprintDriver
    events = tmp_path / "events.jsonl"
    events.write_text('{"x": 1}\n')
    info = data_types.ExecutionInfo(exec_properties={"events": str(events), "users": None,
                                                     "feature_config": "name: x"})
    output = InputFingerprintDriver(None).run(info)
    assert dict(output.exec_properties).keys() == {"input_fingerprint"}
    assert output.exec_properties["input_fingerprint"].string_value == datasets.fingerprint(
        {"events": str(events), "users": None, "items": None})


def test_example_gen_declares_the_driver():
    from components.example_gen import ClickLogExampleGen, InputFingerprintDriver
    gen = ClickLogExampleGen(feature_config="name: x", events="e")
    assert gen.driver_class is InputFingerprintDriver


class ConfigTextTest(parameterized.TestCase):

    @parameterized.named_parameters(("neither", None, None), ("both", "name: x", "c.yaml"))
    def test_exactly_one(self, text, path):
        from components.example_gen import config_text
        with self.assertRaisesRegex(ValueError, "exactly one of feature_config"):
            config_text(text, path)

    def test_text_is_validated(self):
        from components.example_gen import config_text
        with self.assertRaisesRegex(fc.FeatureConfigError, "features"):
            config_text("name: x\n", None)

    def test_file_text_is_returned_verbatim(self):
        from components.example_gen import config_text
        path = fc.builtin_config_path("movielens")
        with open(path, encoding="utf-8") as f:
            self.assertEqual(config_text(None, path), f.read())


def test_a_failed_runs_dead_letters_are_kept_outside_its_outputs(tmp_path):
    from components.example_gen import FAILED_RUNS_DIR, keep_dead_letters
    summary_uri = tmp_path / "ClickLogExampleGen" / "summary" / "7"
    staging = summary_uri / "_staging"
    (staging / "dead_letter").mkdir(parents=True)
    (staging / "dead_letter" / "dead_letter-00000-of-00001.jsonl").write_text('{"reason": "x"}\n')
    message = f"events: 55% dead-lettered. The records and reasons are in {staging}/dead_letter/; fix"
    kept = tmp_path / "ClickLogExampleGen" / FAILED_RUNS_DIR / "7"
    assert keep_dead_letters(message, str(staging), str(summary_uri)) == (
        f"events: 55% dead-lettered. The records and reasons are in {kept}/; fix")
    assert (kept / "dead_letter-00000-of-00001.jsonl").read_text() == '{"reason": "x"}\n'
    # Nothing written (e.g. an empty events table): the message stays as it is.
    assert keep_dead_letters("events table 'x' has no rows", str(tmp_path / "none"),
                             str(summary_uri)) == "events table 'x' has no rows"


def test_a_config_mapping_impressions_on_a_log_without_any_stops_with_the_fixes(tmp_path):
    """The ranking stage is built from the config; a log with no impression would stop at its
    first trainer with 'no training examples': the job's check says why, and what to change."""
    import apache_beam as beam
    import yaml
    from beam_jobs.run_report import DataQualityError
    from components.example_gen import ClickLogExampleGen
    from tests.components.helpers import executor_fn
    config = {"name": "clicks", "split": {"mode": "random_users", "eval_fraction": 0.5, "seed": 0},
              "features": [
                  {"name": "user_id", "field": "user", "type": "categorical", "source": "users"},
                  {"name": "item_id", "field": "item", "type": "categorical", "source": "items"},
                  {"name": "hour", "field": "context", "type": "categorical", "source": "derived",
                   "derive": "hour_of_day", "vocab_size": 24}],
              # "view" is the log's impression, but the mapping forgot it.
              "event_values": {"impression": "impression", "click": "click"},
              "max_dead_letter_fraction": 0.5}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"timestamp": 1_700_000_000 + 60 * i, "user_id": f"u{i % 3}", "item_id": f"i{i % 5}",
             "event": "click" if i % 4 else "view"} for i in range(12)]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    root = str(tmp_path / "out")
    outputs = {name: new_artifact(cls, root, name) for name, cls in [
        ("ranking_examples", standard_artifacts.Examples),
        ("retrieval_examples", standard_artifacts.Examples),
        ("item2vec_examples", standard_artifacts.Examples),
        ("vocabulary", FeatureVocabulary), ("catalogue", ItemCatalogue),
        ("summary", SessionizeSummary)]}
    with pytest.raises(DataQualityError) as err:
        executor_fn(ClickLogExampleGen)(
            **outputs, config_path=str(tmp_path / "config.yaml"),
            events=str(tmp_path / "events.jsonl"), beam_pipeline=beam.Pipeline(runner="FnApiRunner"))
    message = str(err.value)
    # 9 clicks accepted, the 3 views dead-lettered; their records were kept for the message.
    assert message.startswith(
        "none of the 9 accepted events is an impression (click 9), though event_values maps "
        "['impression'] to impression: the ranking stage would have no example. 3 events were "
        "dead-lettered as unknown_event (their raw values are in ")
    assert message.endswith(
        "): map the log's impression value in event_values. For a log without impressions "
        "(views or clicks only), map no value to impression in event_values: the run then "
        "trains the recall stage alone")
    folder = message.split("(their raw values are in ", 1)[1].split(")", 1)[0]
    assert "dead_letter_of_failed_runs" in folder and os.path.isdir(folder), folder
    dead = [json.loads(line) for p in tf.io.gfile.glob(os.path.join(folder, "*.jsonl"))
            for line in tf.io.gfile.GFile(p).read().splitlines()]
    assert sorted(json.loads(d["record"])["timestamp"] for d in dead) == [
        1_700_000_000, 1_700_000_240, 1_700_000_480]
    assert {(d["reason"], json.loads(d["record"])["event"]) for d in dead} == {
        ("unknown_event", "view")}
