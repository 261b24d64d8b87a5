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
