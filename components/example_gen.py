"""ClickLogExampleGen: raw click logs -> sessionized example artifacts.

Runs the beam_jobs.sessionize graph inside the component's own Beam pipeline
(so `beam_pipeline_args` of the TFX pipeline choose the runner), writes into a
staging directory under the summary artifact, then moves each part into the
artifact that owns it:

  ranking / retrieval / item2vec   Examples, split_names ["train", "eval"],
                                   <uri>/Split-{train,eval}/*.gz
  vocabulary                       FeatureVocabulary: vocab/*.txt + feature_config.yaml
  catalogue                        ItemCatalogue: items/*.gz + item_frequencies.tsv
  summary                          SessionizeSummary: summary.json + dead_letter/
"""

import json
import os

import apache_beam as beam
import tensorflow as tf
from tfx.dsl.component.experimental.annotations import (BeamComponentParameter, OutputArtifact,
                                                        Parameter)
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

from feature_contract import feature_config as fc
from components import adapters
from components.artifacts import FeatureVocabulary, ItemCatalogue, SessionizeSummary

STAGING_DIR = "_staging"
CONFIG_FILE = "feature_config.yaml"
VOCAB_DIR, ITEMS_DIR = "vocab", "items"
FREQUENCIES_FILE, SUMMARY_FILE, DEAD_LETTER_DIR = "item_frequencies.tsv", "summary.json", "dead_letter"


def _move(src: str, dst: str) -> None:
    """Moves a file or directory (dst's parent is created; an empty dst is replaced)."""
    if not tf.io.gfile.exists(src):
        raise FileNotFoundError(f"sessionize output {src!r} is missing")
    tf.io.gfile.makedirs(os.path.dirname(dst.rstrip("/")))
    if tf.io.gfile.isdir(dst) and not tf.io.gfile.listdir(dst):
        tf.io.gfile.rmtree(dst)
    tf.io.gfile.rename(src, dst, overwrite=False)


def distribute_outputs(staging: str, examples: dict[str, standard_artifacts.Examples],
                       vocabulary: FeatureVocabulary, catalogue: ItemCatalogue,
                       summary: SessionizeSummary, config_path: str) -> dict:
    """Moves a finished sessionize output dir into the artifacts; returns summary.json.

    Raises:
      FileNotFoundError: a part the sessionize job must write is absent.
    """
    for kind, artifact in examples.items():
        for split in fc.SPLITS:
            _move(os.path.join(staging, kind, f"Split-{split}"),
                  os.path.join(artifact.uri, f"Split-{split}"))
        artifact.split_names = artifact_utils.encode_split_names(list(fc.SPLITS))
        artifact.set_string_custom_property("example_kind", kind)
        # What TFX's tfxio (the Evaluator) reads the files as.
        artifact.set_string_custom_property("payload_format", "FORMAT_TF_EXAMPLE")
    _move(os.path.join(staging, VOCAB_DIR), os.path.join(vocabulary.uri, VOCAB_DIR))
    tf.io.gfile.copy(config_path, os.path.join(vocabulary.uri, CONFIG_FILE), overwrite=True)
    _move(os.path.join(staging, ITEMS_DIR), os.path.join(catalogue.uri, ITEMS_DIR))
    _move(os.path.join(staging, FREQUENCIES_FILE), os.path.join(catalogue.uri, FREQUENCIES_FILE))
    _move(os.path.join(staging, SUMMARY_FILE), os.path.join(summary.uri, SUMMARY_FILE))
    if tf.io.gfile.exists(os.path.join(staging, DEAD_LETTER_DIR)):
        _move(os.path.join(staging, DEAD_LETTER_DIR), os.path.join(summary.uri, DEAD_LETTER_DIR))
    tf.io.gfile.rmtree(staging)
    with tf.io.gfile.GFile(os.path.join(summary.uri, SUMMARY_FILE)) as f:
        counts = json.load(f)
    # Flat numeric counts become custom properties, queryable in MLMD.
    for key, value in _flatten(counts).items():
        summary.set_int_custom_property(key, value)
    return counts


def _flatten(tree, prefix: str = "") -> dict[str, int]:
    out = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    elif isinstance(tree, int) and not isinstance(tree, bool):
        out[prefix.rstrip(".")] = int(tree)
    return out


@component(use_beam=True)
def ClickLogExampleGen(  # noqa: N802 - TFX component names are CamelCase
        ranking_examples: OutputArtifact[standard_artifacts.Examples],
        retrieval_examples: OutputArtifact[standard_artifacts.Examples],
        item2vec_examples: OutputArtifact[standard_artifacts.Examples],
        vocabulary: OutputArtifact[FeatureVocabulary],
        catalogue: OutputArtifact[ItemCatalogue],
        summary: OutputArtifact[SessionizeSummary],
        config_path: Parameter[str],
        events: Parameter[str],
        users: Parameter[str],
        items: Parameter[str],
        beam_pipeline: BeamComponentParameter[beam.Pipeline] = None):
    """Sessionizes the raw click log (beam_jobs.sessionize) into example artifacts.

    Args:
      ranking_examples, retrieval_examples, item2vec_examples: Examples per kind.
      vocabulary: vocabularies + a copy of the feature config.
      catalogue: item catalogue examples + item frequencies.
      summary: the job's counts (custom properties too) and dead letters.
      config_path: feature config YAML.
      events, users, items: raw table globs.
      beam_pipeline: provided by TFX from beam_pipeline_args.
    """
    fc.load(config_path)  # fail fast, naming the bad value, before any Beam work
    staging = os.path.join(summary.uri, STAGING_DIR)
    with beam_pipeline as pipeline:
        adapters.sessionize(pipeline, config_path, events, users, items, staging)
    distribute_outputs(staging, {fc.RANKING: ranking_examples, fc.RETRIEVAL: retrieval_examples,
                                 fc.ITEM2VEC: item2vec_examples},
                       vocabulary, catalogue, summary, config_path)
