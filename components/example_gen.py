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
                                   (custom property `input_fingerprint`)

The feature config arrives as YAML text (`feature_config`), not as a path:
the compiled pipeline (a Kubeflow spec, MLMD's exec properties) then carries
the contract itself, with no path of the machine that built it, and the
cache key changes when the config does. `config_path` stays for callers that
have a file.

The cache follows the data: InputFingerprintDriver runs before the cache
lookup (as TFX's own ExampleGen driver does with span and fingerprint) and
sets `input_fingerprint` to what the globs match now (files, sizes, mtimes,
a hash of small files; beam_jobs.datasets.fingerprint). New raw data at the
same path gives a new cache key, so ExampleGen and everything after it run
again.
"""

import json
import os
import tempfile

import apache_beam as beam
import tensorflow as tf
import yaml
from tfx.dsl.component.experimental.annotations import (BeamComponentParameter, OutputArtifact,
                                                        Parameter)
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.components.base import base_driver
from tfx.orchestration import data_types_utils
from tfx.orchestration.portable import base_driver as ir_base_driver
from tfx.orchestration.portable import data_types
from tfx.proto.orchestration import driver_output_pb2
from tfx.types import artifact_utils, standard_artifacts

from beam_jobs import datasets
from beam_jobs import run_report
from beam_jobs.run_report import DataQualityError
from beam_jobs.sessionize import quiet_user_error_tracebacks, strip_beam_step
from feature_contract import feature_config as fc
from components import adapters
from components.artifacts import FeatureVocabulary, ItemCatalogue, SessionizeSummary

STAGING_DIR = "_staging"
CONFIG_FILE = "feature_config.yaml"
VOCAB_DIR, ITEMS_DIR = "vocab", "items"
FREQUENCIES_FILE, SUMMARY_FILE, DEAD_LETTER_DIR = "item_frequencies.tsv", "summary.json", "dead_letter"
FINGERPRINT_KEY = "input_fingerprint"


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


def fingerprint_tables(events: str, users: str | None, items: str | None) -> str:
    """beam_jobs.datasets.fingerprint of the three table globs."""
    return datasets.fingerprint({"events": events, "users": users or None,
                                 "items": items or None})


class InputFingerprintDriver(base_driver.BaseDriver, ir_base_driver.BaseDriver):
    """Sets ClickLogExampleGen's `input_fingerprint` before the cache lookup.

    The launcher runs a component's custom driver after registering the
    execution and before computing the cache key from the exec properties
    (tfx.orchestration.portable.launcher), so the key covers the data the
    globs match at run time, not at pipeline construction. TFX's
    FileBasedDriver does the same for its ExampleGens.
    """

    def __init__(self, metadata_handle):
        base_driver.BaseDriver.__init__(self, metadata_handle)
        ir_base_driver.BaseDriver.__init__(self, metadata_handle)

    def run(self, execution_info: data_types.ExecutionInfo) -> driver_output_pb2.DriverOutput:
        props = execution_info.exec_properties
        result = driver_output_pb2.DriverOutput()
        data_types_utils.set_metadata_value(
            result.exec_properties[FINGERPRINT_KEY],
            fingerprint_tables(props["events"], props.get("users"), props.get("items")))
        return result


def config_text(feature_config: str | None, config_path: str | None) -> str:
    """The feature config YAML text, from the text itself or a file; validated.

    Raises:
      ValueError: neither or both given.
      feature_config.FeatureConfigError: the config is invalid.
    """
    if bool(feature_config) == bool(config_path):
        raise ValueError("ClickLogExampleGen wants exactly one of feature_config (YAML text) "
                         "and config_path")
    if config_path:
        fc.load(config_path)  # names the file in its errors
        with tf.io.gfile.GFile(config_path) as f:
            return f.read()
    fc.from_dict(yaml.safe_load(feature_config))
    return feature_config


@component(use_beam=True)
def ClickLogExampleGen(  # noqa: N802 - TFX component names are CamelCase
        ranking_examples: OutputArtifact[standard_artifacts.Examples],
        retrieval_examples: OutputArtifact[standard_artifacts.Examples],
        item2vec_examples: OutputArtifact[standard_artifacts.Examples],
        vocabulary: OutputArtifact[FeatureVocabulary],
        catalogue: OutputArtifact[ItemCatalogue],
        summary: OutputArtifact[SessionizeSummary],
        events: Parameter[str],
        users: Parameter[str] = None,
        items: Parameter[str] = None,
        feature_config: Parameter[str] = None,
        config_path: Parameter[str] = None,
        input_fingerprint: Parameter[str] = None,
        beam_pipeline: BeamComponentParameter[beam.Pipeline] = None):
    """Sessionizes the raw click log (beam_jobs.sessionize) into example artifacts.

    Args:
      ranking_examples, retrieval_examples, item2vec_examples: Examples per kind.
      vocabulary: vocabularies + the feature config they were built with.
      catalogue: item catalogue examples + item frequencies.
      summary: the job's counts (custom properties too), dead letters and
        the input fingerprint.
      events: events glob.
      users, items: side-table globs; None when the dataset has none.
      feature_config: the feature config, YAML text (or give config_path).
      config_path: a feature config file (or give feature_config).
      input_fingerprint: set by InputFingerprintDriver; computed here when
        the orchestrator ran no driver (a direct call, Kubeflow).
      beam_pipeline: provided by TFX from beam_pipeline_args.
    """
    text = config_text(feature_config, config_path)  # fail fast, before any Beam work
    staging = os.path.join(summary.uri, STAGING_DIR)
    summary.set_string_custom_property(
        FINGERPRINT_KEY, input_fingerprint or fingerprint_tables(events, users, items))
    # A local file: only this process reads it (the job parses it while
    # building the graph), and the pipeline root may be a bucket.
    with tempfile.TemporaryDirectory(prefix="feedrec-config-") as local:
        local_config = os.path.join(local, CONFIG_FILE)
        with open(local_config, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            # A stop rule is the data's fault: its message, not Beam's logged traceback.
            with quiet_user_error_tracebacks(), beam_pipeline as pipeline:
                adapters.sessionize(pipeline, local_config, events, users or None,
                                    items or None, staging)
            with tf.io.gfile.GFile(os.path.join(staging, SUMMARY_FILE)) as f:
                run_report.check_impressions(json.load(f), fc.load(local_config).event_values,
                                             os.path.join(staging, "dead_letter", ""))
        except DataQualityError as err:
            # The orchestrator removes a failed execution's outputs, staging
            # included, so the dead letters the message points at are moved
            # out of it first; Beam's " [while running '<step>']" suffix goes.
            raise DataQualityError(keep_dead_letters(strip_beam_step(str(err)), staging,
                                                     summary.uri)) from None
        distribute_outputs(staging, {fc.RANKING: ranking_examples,
                                     fc.RETRIEVAL: retrieval_examples,
                                     fc.ITEM2VEC: item2vec_examples},
                           vocabulary, catalogue, summary, local_config)


ClickLogExampleGen.DRIVER_CLASS = InputFingerprintDriver

FAILED_RUNS_DIR = "dead_letter_of_failed_runs"


def keep_dead_letters(message: str, staging: str, summary_uri: str) -> str:
    """Copies a failed run's dead letters beside the component's outputs; `message` pointing there.

    The copy goes to <component dir>/dead_letter_of_failed_runs/<execution>/
    (the summary artifact's grandparent holds every output of the component;
    its last path part is the execution id). Returns `message` with the
    staging path replaced by the copy's (unchanged when nothing was written).
    """
    source = os.path.join(staging, "dead_letter")  # where the sessionize job writes them
    if not tf.io.gfile.isdir(source):
        return message
    uri = summary_uri.rstrip("/")
    kept = os.path.join(os.path.dirname(os.path.dirname(uri)), FAILED_RUNS_DIR,
                        os.path.basename(uri))
    for folder, _, files in tf.io.gfile.walk(source):
        target = os.path.join(kept, os.path.relpath(folder, source))
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(folder, name), os.path.join(target, name),
                             overwrite=True)
    return message.replace(source, kept)

