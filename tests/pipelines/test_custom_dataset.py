"""Issue 12's acceptance: a user's own dataset YAML runs end to end; the cache follows the data.

1. A tiny dataset unlike the built-in ones (tests/pipelines/custom_dataset.py:
   renamed columns and event names, ISO-8601 times, CSV events, no users
   table, no vocab_size anywhere) goes through `pipelines.local_runner --data
   it.yaml` into pushed ranking and recall models, printing a progress line
   per component.
2. New raw events at the same path re-run ClickLogExampleGen and what
   follows it, where an unchanged input is served from the cache.
"""

import contextlib
import csv
import io
import os
import re
import shutil

import pytest
import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputDict
from tfx.dsl.component.experimental.decorators import component
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.types import standard_artifacts

from beam_jobs import datasets, synthetic
from components.example_gen import CONFIG_FILE, ClickLogExampleGen
from feature_contract import feature_config as fc
from pipelines import local_runner, mlmd_summary, runner_common
from tests.pipelines import custom_dataset

NUM_EVENTS = 6000
# An untrained baseline (the candidate must beat it to be pushed); one epoch of it is enough.
UNTRAINED_ONE_EPOCH = '{"learning_rate": 1e-9, "max_epochs": 1}'


def _latest(work_dir: str, name: str = "feedrec") -> mlmd_summary.RunSummary:
    path = os.path.join(work_dir, "tfx", name, "metadata.sqlite")
    return mlmd_summary.latest_run(metadata.sqlite_metadata_connection_config(path), name)


def _csv_counts(path: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            counts[row["action"]] = counts.get(row["action"], 0) + 1
    return counts


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("my_clicks"))
    yaml_path = custom_dataset.write(os.path.join(folder, "dataset"), NUM_EVENTS)
    work_dir = os.path.join(folder, "work")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = local_runner.main([
            "--data", yaml_path, "--work_dir", work_dir, "--profile", "tiny",
            "--recall_models", "two_tower", "--no_multitask",
            "--hparams", f"nfm={UNTRAINED_ONE_EPOCH}"])
    printed = out.getvalue()
    return code, yaml_path, work_dir, printed, _latest(work_dir)


def test_custom_dataset_runs_into_pushed_models(custom_run):
    code, yaml_path, work_dir, printed, summary = custom_run
    assert code == 0, printed
    states = {n: e.state for n, e in summary.executions.items()}
    assert set(states.values()) == {"COMPLETE"}, states
    # Needs H1 (#12 part 2): no users table, no vocab_size.
    gen = summary.executions["ClickLogExampleGen"]
    counts = gen.outputs["summary"][0].properties
    by_action = _csv_counts(os.path.join(os.path.dirname(yaml_path), custom_dataset.EVENTS_FILE))
    assert counts["events.read"] == NUM_EVENTS
    # One ranking example per impression ("view"), one retrieval example per click ("tap").
    assert counts["examples.ranking.train"] + counts["examples.ranking.eval"] == by_action["view"]
    assert counts["examples.retrieval.train"] + counts["examples.retrieval.eval"] == \
        by_action["tap"]
    # The vocabulary artifact holds the config the examples were made with, minus data:.
    config = fc.load(os.path.join(gen.outputs["vocabulary"][0].uri, CONFIG_FILE))
    assert config.name == "my_clicks" and config.timestamp_unit == "iso8601"
    for key in ("Pusher.nfwfm", "Pusher.two_tower", "FaissIndexBuilder.two_tower"):
        artifact = summary.output(key, "pushed_index" if key.startswith("Faiss")
                                  else "pushed_model")
        assert artifact.properties["pushed"] == 1, (key, artifact.properties)
        destination = artifact.properties["pushed_destination"]
        assert destination.startswith(os.path.join(work_dir, "serving"))
        assert os.listdir(destination)


def test_custom_run_prints_progress_per_component(custom_run):
    code, _, _, printed, summary = custom_run
    counts = summary.executions["ClickLogExampleGen"].outputs["summary"][0].properties
    ranking = f"ranking {counts['examples.ranking.train']:,} / {counts['examples.ranking.eval']:,}"
    assert re.search(r"^\[ *\d+:\d\d:\d\d\] ClickLogExampleGen started$", printed, re.M)
    assert re.search(r"^\[ *\d+:\d\d:\d\d\] ClickLogExampleGen done in \d+\.\d s: "
                     + re.escape(ranking), printed, re.M), printed
    pushed = summary.output("Pusher.nfwfm", "pushed_model").properties["pushed_destination"]
    version = os.path.basename(pushed.rstrip("/"))
    assert "Pusher.nfwfm done in " in printed
    assert f": pushed version {version} ({pushed})" in printed
    auc = summary.output("RankingTrainer.nfwfm", "metrics").properties["click_auc"]
    assert "RankingTrainer.nfwfm done in " in printed and f"click_auc {auc:.4f}" in printed
    assert re.search(r"RankingGate\.nfwfm done in \d+\.\d s: BLESSED$", printed, re.M)
    for node in summary.executions:
        assert printed.count(f"] {node} started\n") == 1, node


def test_a_click_only_log_runs_the_recall_stage_alone(tmp_path):
    yaml_path = custom_dataset.write(str(tmp_path / "dataset"), NUM_EVENTS, click_only=True)
    work_dir = str(tmp_path / "work")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = local_runner.main(["--data", yaml_path, "--work_dir", work_dir,
                                  "--profile", "tiny", "--recall_models", "two_tower"])
    printed = out.getvalue()
    assert code == 0, printed
    assert (f"{yaml_path}: no event value maps to 'impression' (event_values {{'tap': 'click'}}):"
            " recall only.") in printed
    summary = _latest(work_dir)
    assert set(summary.executions) == {
        "ClickLogExampleGen", "RecallTrainer.two_tower", "ServingValidator.two_tower",
        "Pusher.two_tower", "FaissIndexBuilder.two_tower", "BlendFitter", "PipelineReporter"}
    assert {e.state for e in summary.executions.values()} == {"COMPLETE"}
    counts = summary.executions["ClickLogExampleGen"].outputs["summary"][0].properties
    assert counts["examples.ranking.train"] + counts["examples.ranking.eval"] == 0
    assert counts["examples.retrieval.train"] > 0
    assert summary.output("Pusher.two_tower", "pushed_model").properties["pushed"] == 1


# ---- the cache follows the data ------------------------------------------------

@component
def CountRankingExamples(  # noqa: N802 - TFX component names are CamelCase
        examples: InputArtifact[standard_artifacts.Examples]) -> OutputDict(count=int):
    """A cheap step after ExampleGen: counts the ranking train examples."""
    pattern = os.path.join(examples.uri, "Split-train", "*")
    files = tf.io.gfile.glob(pattern)
    return {"count": sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))}


def _tiny_pipeline(dataset, root: str) -> tfx_pipeline.Pipeline:
    gen = ClickLogExampleGen(feature_config=dataset.config_yaml, events=dataset.events,
                             users=dataset.users, items=dataset.items)
    count = CountRankingExamples(examples=gen.outputs["ranking_examples"])
    return tfx_pipeline.Pipeline(
        pipeline_name="cache_test", pipeline_root=os.path.join(root, "pipeline_root"),
        components=[gen, count], enable_cache=True,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            os.path.join(root, "tfx", "cache_test", "metadata.sqlite")),
        beam_pipeline_args=runner_common.with_beam_runner([]))


def test_new_events_at_the_same_path_rerun_example_gen_and_after(tmp_path):
    work = str(tmp_path)
    dataset = datasets.resolve("synthetic", work, num_events=1500, seed=0)

    def run() -> dict[str, mlmd_summary.ExecutionInfo]:
        LocalDagRunner().run(_tiny_pipeline(dataset, work))
        return _latest(work, "cache_test").executions

    first = run()
    assert {e.state for e in first.values()} == {"COMPLETE"}
    again = run()
    # Unchanged data: both steps come from the cache (so caching is on).
    assert {n: e.state for n, e in again.items()} == {
        "ClickLogExampleGen": "CACHED", "CountRankingExamples": "CACHED"}
    # Other events of the same size class, written over the same file.
    other = os.path.join(work, "other")
    synthetic.generate(other, 1500, seed=1)
    shutil.copyfile(os.path.join(other, synthetic.EVENTS_FILE), dataset.events)
    changed = run()
    assert {n: e.state for n, e in changed.items()} == {
        "ClickLogExampleGen": "COMPLETE", "CountRankingExamples": "COMPLETE"}
    before = first["ClickLogExampleGen"].outputs["summary"][0].properties
    after = changed["ClickLogExampleGen"].outputs["summary"][0].properties
    assert after["input_fingerprint"] != before["input_fingerprint"]
    assert after["input_fingerprint"] == datasets.fingerprint(dataset.tables)
    assert after["input_fingerprint"].startswith("events: 1 files, ")
    # The new examples come from the new events, and the step after counted them.
    assert changed["ClickLogExampleGen"].outputs["ranking_examples"][0].id != \
        first["ClickLogExampleGen"].outputs["ranking_examples"][0].id
    assert changed["CountRankingExamples"].inputs["examples"][0].id == \
        changed["ClickLogExampleGen"].outputs["ranking_examples"][0].id
