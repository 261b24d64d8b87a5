"""Runner plumbing and the Kubeflow V2 compile, without running the pipeline."""

import argparse
import json
import os

import pytest
from absl.testing import parameterized

from pipelines import kubeflow_v2_runner, runner_common
from pipelines.pipeline import RankingSettings, RecallSettings, create_pipeline


class HparamOverridesTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ("none", [], {}),
        ("two_models", ['nfwfm={"epochs": 1}', 'two_tower={"dim": 8}'],
         {"nfwfm": {"epochs": 1}, "two_tower": {"dim": 8}}),
        ("json_with_equals", ['nfm={"loss_mode": "a=b"}'], {"nfm": {"loss_mode": "a=b"}}),
    )
    def test_parsed(self, values, expected):
        self.assertEqual(runner_common.parse_hparam_overrides(values), expected)

    @parameterized.named_parameters(
        ("no_equals", ['nfwfm{"epochs": 1}'], "MODEL=JSON"),
        ("not_object", ["nfwfm=[1]"], "JSON object"),
    )
    def test_rejected(self, values, message):
        with self.assertRaisesRegex(ValueError, message):
            runner_common.parse_hparam_overrides(values)


def test_flags_default_from_environment(monkeypatch):
    # The tfx CLI runs a runner file without arguments: FEEDREC_* carry the settings.
    monkeypatch.setenv("FEEDREC_WORK_DIR", "/somewhere")
    monkeypatch.setenv("FEEDREC_PROFILE", "tiny")
    monkeypatch.setenv("FEEDREC_NO_MULTITASK", "1")
    monkeypatch.setenv("FEEDREC_HPARAMS", 'nfwfm={"epochs": 3};nfm={"epochs": 2}')
    parser = argparse.ArgumentParser()
    runner_common.add_flags(parser)
    args, beam = parser.parse_known_args(["--direct_num_workers=2"])
    assert (args.work_dir, args.profile, args.no_multitask) == ("/somewhere", "tiny", True)
    assert args.hparams == ['nfwfm={"epochs": 3}', 'nfm={"epochs": 2}']
    assert beam == ["--direct_num_workers=2"]


def test_build_passes_beam_args_and_owns_paths(tmp_path):
    parser = argparse.ArgumentParser()
    runner_common.add_flags(parser)
    args, beam = parser.parse_known_args(
        ["--work_dir", str(tmp_path), "--profile", "tiny", "--num_events", "500",
         "--recall_models", "two_tower", "--hparams", 'nfwfm={"epochs": 5}',
         "--runner=DirectRunner", "--direct_num_workers=2"])
    built = runner_common.build(args, beam)
    assert built.pipeline.beam_pipeline_args == ["--runner=DirectRunner", "--direct_num_workers=2"]
    assert built.metadata_path == os.path.join(str(tmp_path), "tfx", "feedrec", "metadata.sqlite")
    ids = {c.id for c in built.pipeline.components}
    assert {"RecallTrainer.two_tower", "Evaluator.multitask_nfwfm.follow"} <= ids
    assert "RecallTrainer.item2vec" not in ids
    trainer = next(c for c in built.pipeline.components if c.id == "RankingTrainer.nfwfm")
    # The override is merged over the profile's hparams, keys sorted for caching.
    assert json.loads(trainer.exec_properties["hparams"]) == {
        "batch_size": 128, "embedding_dim": 8, "epochs": 5}


@pytest.mark.parametrize("kwargs, message", [
    ({"recall": RecallSettings(models=("item2vec", "knn"))}, "unknown recall models"),
    ({"ranking": RankingSettings(candidate="nfm", baseline="nfm")}, "both 'nfm'"),
])
def test_create_pipeline_rejects(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        create_pipeline("p", str(tmp_path), "c.yaml", "e", "u", "i", str(tmp_path), **kwargs)


def test_kubeflow_v2_compiles_to_a_valid_job_spec(tmp_path):
    path = kubeflow_v2_runner.compile_pipeline(
        str(tmp_path), "feedrec", "gs://bucket/root", "synthetic", "gs://bucket/raw",
        "gs://bucket/serving", "gcr.io/project/feedrec:1", recall_models=["two_tower"],
        beam_pipeline_args=["--direct_num_workers=2"])
    with open(path) as f:
        job = json.load(f)
    spec = job["pipelineSpec"]
    assert spec["pipelineInfo"]["name"] == "feedrec"
    tasks = spec["root"]["dag"]["tasks"]
    assert {"ClickLogExampleGen", "RankingTrainer.nfm", "RankingTrainer.nfwfm", "Evaluator.nfwfm",
            "ServingValidator.nfwfm", "Pusher.nfwfm", "AllBlessed.multitask_nfwfm",
            "RecallTrainer.two_tower", "FaissIndexBuilder.two_tower",
            "PipelineReporter"} <= set(tasks)
    # The DAG encodes the gate: the Pusher waits for the Evaluator and the serving check.
    assert {"Evaluator.nfwfm", "ServingValidator.nfwfm", "RankingTrainer.nfwfm"} <= set(
        tasks["Pusher.nfwfm"]["dependentTasks"])
    for task in tasks.values():
        assert task["componentRef"]["name"] in spec["components"]
    executors = spec["deploymentSpec"]["executors"]
    assert all(e["container"]["image"] == "gcr.io/project/feedrec:1" for e in executors.values())
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/root"
