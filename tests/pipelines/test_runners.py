"""Runner plumbing and the Kubeflow V2 compile, without running the pipeline."""

import argparse
import hashlib
import json
import os
import re

import pytest
from absl.testing import parameterized

from feature_contract import dataset as dataset_file
from feature_contract import feature_config as fc
from pipelines import kubeflow_v2_runner, runner_common
from pipelines.pipeline import RankingSettings, RecallSettings, create_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_DATASET = dataset_file.builtin("synthetic", "e", "u", "i")


class HparamOverridesTest(parameterized.TestCase):

    @parameterized.named_parameters(
        ("none", [], {}),
        ("two_models", ['nfwfm={"max_epochs": 1}', 'two_tower={"dim": 8}'],
         {"nfwfm": {"max_epochs": 1}, "two_tower": {"dim": 8}}),
        ("json_with_equals", ['nfm={"loss_mode": "a=b"}'], {"nfm": {"loss_mode": "a=b"}}),
    )
    def test_parsed(self, values, expected):
        self.assertEqual(runner_common.parse_hparam_overrides(values), expected)

    @parameterized.named_parameters(
        ("no_equals", ['nfwfm{"max_epochs": 1}'], "MODEL=JSON"),
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
    monkeypatch.setenv("FEEDREC_HPARAMS", 'nfwfm={"max_epochs": 3};nfm={"max_epochs": 2}')
    monkeypatch.setenv("FEEDREC_AUC_TOLERANCE", "0.005")
    monkeypatch.setenv("FEEDREC_ALLOW_UNEVALUABLE_HEADS", "1")
    monkeypatch.setenv("FEEDREC_DATA", "/data/mine.yaml")
    parser = argparse.ArgumentParser()
    runner_common.add_flags(parser)
    args, beam = parser.parse_known_args(["--direct_num_workers=2"])
    assert args.data == "/data/mine.yaml"
    assert (args.work_dir, args.profile, args.no_multitask) == ("/somewhere", "tiny", True)
    assert args.hparams == ['nfwfm={"max_epochs": 3}', 'nfm={"max_epochs": 2}']
    assert (args.auc_tolerance, args.allow_unevaluable_heads) == (0.005, True)
    assert beam == ["--direct_num_workers=2"]


def test_build_passes_beam_args_and_owns_paths(tmp_path):
    parser = argparse.ArgumentParser()
    runner_common.add_flags(parser)
    args, beam = parser.parse_known_args(
        ["--work_dir", str(tmp_path), "--profile", "tiny", "--num_events", "500",
         "--recall_models", "two_tower", "--hparams", 'nfwfm={"max_epochs": 5}',
         "--runner=DirectRunner", "--direct_num_workers=2"])
    built = runner_common.build(args, beam)
    assert built.pipeline.beam_pipeline_args == ["--runner=DirectRunner", "--direct_num_workers=2"]
    # The feature config travels as text; the globs are the prepared tables.
    example_gen = next(c for c in built.pipeline.components if c.id == "ClickLogExampleGen")
    with open(fc.builtin_config_path("synthetic"), encoding="utf-8") as f:
        assert example_gen.exec_properties["feature_config"] == f.read()
    assert example_gen.exec_properties["events"] == os.path.join(
        str(tmp_path), "raw", "synthetic-500-0", "events.jsonl.gz")
    assert "config_path" not in example_gen.exec_properties
    assert built.metadata_path == os.path.join(str(tmp_path), "tfx", "feedrec", "metadata.sqlite")
    ids = {c.id for c in built.pipeline.components}
    assert {"RecallTrainer.two_tower", "Evaluator.multitask_nfwfm.follow"} <= ids
    assert "RecallTrainer.item2vec" not in ids
    trainer = next(c for c in built.pipeline.components if c.id == "RankingTrainer.nfwfm")
    # The override is merged over the profile's hparams, keys sorted for caching.
    assert json.loads(trainer.exec_properties["hparams"]) == {
        "batch_size": 128, "embedding_dim": 8, "max_epochs": 5, "patience": 1}
    # The profile's gate: default tolerance, unevaluable heads refused.
    components = {c.id: c for c in built.pipeline.components}
    assert _change_threshold(components["Evaluator.nfwfm"]) == -0.001
    assert components["RankingGate.nfwfm"].exec_properties["allow_unevaluable_heads"] is False
    assert components["Pusher.nfwfm"].inputs["model_blessing"].producer_component_id == \
        "RankingGate.nfwfm"


def _eval_config(evaluator):
    from tensorflow_model_analysis.proto import config_pb2
    from tfx.utils import proto_utils
    return proto_utils.json_to_proto(evaluator.exec_properties["eval_config"],
                                     config_pb2.EvalConfig())


def _change_threshold(evaluator) -> float:
    config = _eval_config(evaluator)
    (auc,) = [m for m in config.metrics_specs[0].metrics if m.class_name == "AUC"]
    return auc.per_slice_thresholds[0].threshold.change_threshold.absolute.value


@pytest.mark.parametrize("profile, intervals", [("default", True), ("tiny", False)])
def test_profiles_confidence_intervals(profile, intervals, tmp_path):
    from pipelines import profiles
    built = create_pipeline("p", str(tmp_path), TINY_DATASET, str(tmp_path),
                            ranking=profiles.get(profile, "synthetic").ranking,
                            recall=RecallSettings(models=()))
    for component in built.components:
        if component.id.startswith("Evaluator."):
            config = _eval_config(component)
            assert config.options.compute_confidence_intervals.value is intervals, component.id


def test_build_gate_flags(tmp_path):
    parser = argparse.ArgumentParser()
    runner_common.add_flags(parser)
    args, beam = parser.parse_known_args(
        ["--work_dir", str(tmp_path), "--profile", "tiny", "--num_events", "500",
         "--recall_models", "", "--auc_tolerance", "0.02", "--allow_unevaluable_heads"])
    components = {c.id: c for c in runner_common.build(args, beam).pipeline.components}
    assert _change_threshold(components["Evaluator.nfwfm"]) == -0.02
    assert _change_threshold(components["Evaluator.multitask_nfwfm.click"]) == -0.02
    assert components["RankingGate.multitask_nfwfm"].exec_properties[
        "allow_unevaluable_heads"] is True


@pytest.mark.parametrize("kwargs, message", [
    ({"recall": RecallSettings(models=("item2vec", "knn"))}, "unknown recall models"),
    ({"ranking": RankingSettings(candidate="nfm", baseline="nfm")}, "both 'nfm'"),
])
def test_create_pipeline_rejects(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        create_pipeline("p", str(tmp_path), TINY_DATASET, str(tmp_path), **kwargs)


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
            "ServingValidator.nfwfm", "Pusher.nfwfm", "RankingGate.nfwfm",
            "RankingGate.multitask_nfwfm",
            "RecallTrainer.two_tower", "FaissIndexBuilder.two_tower",
            "PipelineReporter"} <= set(tasks)
    # The DAG encodes the gate: the Pusher waits for the Evaluator and the serving check.
    assert {"RankingGate.nfwfm", "ServingValidator.nfwfm", "RankingTrainer.nfwfm"} <= set(
        tasks["Pusher.nfwfm"]["dependentTasks"])
    assert {"Evaluator.nfwfm"} <= set(tasks["RankingGate.nfwfm"]["dependentTasks"])
    for task in tasks.values():
        assert task["componentRef"]["name"] in spec["components"]
    executors = spec["deploymentSpec"]["executors"]
    # Every step runs in the image, but the drift-baseline resolver, which KFP runs itself.
    resolvers = {k for k, e in executors.items() if "resolver" in e}
    assert len(resolvers) == 1 and "DataValidator" in tasks
    assert all(e["container"]["image"] == "gcr.io/project/feedrec:1"
               for k, e in executors.items() if k not in resolvers)
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/root"
    # No step reuses a cached result by default (KFP cannot see new data).
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())


def test_beam_runner_is_explicit():
    assert runner_common.with_beam_runner([]) == ["--runner=FnApiRunner",
                                                  "--direct_num_workers=1"]
    assert runner_common.with_beam_runner(["--direct_num_workers=2"]) == [
        "--runner=FnApiRunner", "--direct_num_workers=2"]
    assert runner_common.with_beam_runner(["--runner", "DataflowRunner", "--project=p"]) == [
        "--runner", "DataflowRunner", "--project=p"]


def _write_dataset_yaml(folder, events: str = "logs/events-*.csv", extra: str = "") -> str:
    with open(fc.builtin_config_path("synthetic"), encoding="utf-8") as f:
        text = f.read()
    os.makedirs(str(folder), exist_ok=True)
    path = os.path.join(str(folder), "mine.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + f"data:\n  events: {events}\n  users: users.jsonl\n"
                       "  items: gs://other/items.jsonl\n" + extra)
    return path


def test_kubeflow_v2_spec_carries_no_path_of_the_compiling_machine(tmp_path):
    yaml_path = _write_dataset_yaml(tmp_path / "datasets")
    out = tmp_path / "build"
    path = kubeflow_v2_runner.compile_pipeline(
        str(out), "feedrec", "gs://bucket/root", yaml_path, "gs://bucket/raw",
        "gs://bucket/serving", "gcr.io/project/feedrec:1", recall_models=["two_tower"])
    with open(path) as f:
        text = f.read()
    for host_path in (REPO, str(tmp_path)):
        assert host_path not in text, host_path
    # Relative globs resolve against the data root; URLs stay as written.
    assert "gs://bucket/raw/logs/events-*.csv" in text
    assert "gs://bucket/raw/users.jsonl" in text and "gs://other/items.jsonl" in text
    # The config itself is in the spec.
    assert "interest_tags" in text


def test_kubeflow_v2_builtin_tables_under_data_root(tmp_path):
    path = kubeflow_v2_runner.compile_pipeline(
        str(tmp_path), "feedrec", "gs://bucket/root", "movielens", "gs://bucket/ml/",
        "gs://bucket/serving", "img", recall_models=[])
    with open(path) as f:
        text = f.read()
    assert REPO not in text
    for table in ("events", "users", "items"):
        assert f"gs://bucket/ml/{table}.*" in text


@pytest.mark.parametrize("data, message", [
    ("mine", "error: unknown dataset 'mine'; want one of ('synthetic', 'movielens') or a "
             "dataset YAML (a feature config with a 'data:' section)"),
    ("/nowhere/mine.yaml", "error: /nowhere/mine.yaml: no such dataset file"),
])
def test_runner_names_a_bad_dataset(data, message, tmp_path, capsys):
    class NeverRun:
        def run(self, pipeline):
            raise AssertionError("must not run")

    code = runner_common.run_main(NeverRun, "test", ["--data", data, "--work_dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == message


def test_a_glob_matching_no_file_is_one_error_line_before_anything_runs(tmp_path, capsys):
    class NeverRun:
        def run(self, pipeline):
            raise AssertionError("must not run")

    yaml_path = _write_dataset_yaml(tmp_path / "ds")
    code = runner_common.run_main(NeverRun, "test", ["--data", yaml_path,
                                                     "--work_dir", str(tmp_path / "w")])
    assert code == 2
    glob = str(tmp_path / "ds" / "logs" / "events-*.csv")
    assert capsys.readouterr().err.strip() == (
        f"error: {yaml_path}: events table: no file matches {glob!r}")


def test_only_local_table_globs_are_checked_before_the_run(tmp_path):
    (tmp_path / "events-1.csv").write_text("a\n1\n")
    tables = {"events": str(tmp_path / "events-*.csv"), "users": None,
              "items": "gs://other/items.jsonl"}
    runner_common.check_local_tables(tables, "mine.yaml")  # gs:// is the job's to check
    with pytest.raises(ValueError, match=r"^mine\.yaml: users table: no file matches"):
        runner_common.check_local_tables({**tables, "users": str(tmp_path / "u*.jsonl")},
                                         "mine.yaml")


@pytest.mark.parametrize("error", [
    "DataQualityError: events: 55.1% of the events rows were dead-lettered",
    "ValidationError: no training examples to carve a validation split from",
])
def test_a_data_error_inside_the_run_is_one_error_line(error, tmp_path, capsys):
    from beam_jobs.run_report import DataQualityError
    from models.validation import ValidationError
    kind, message = error.split(": ", 1)
    exception = {"DataQualityError": DataQualityError, "ValidationError": ValidationError}[kind]

    class FailingRun:
        def run(self, pipeline):
            raise exception(message)

    code = runner_common.run_main(FailingRun, "test", [
        "--data", "synthetic", "--num_events", "300", "--profile", "tiny",
        "--work_dir", str(tmp_path), "--funnel_results", ""])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {error}"


def test_a_bug_inside_the_run_still_raises(tmp_path):
    class Broken:
        def run(self, pipeline):
            raise KeyError("a bug")

    with pytest.raises(KeyError):
        runner_common.run_main(Broken, "test", [
            "--data", "synthetic", "--num_events", "300", "--profile", "tiny",
            "--work_dir", str(tmp_path), "--funnel_results", ""])


def test_a_config_without_impressions_builds_the_recall_stage_alone(tmp_path):
    assert runner_common.has_impressions(fc.load(fc.builtin_config_path("synthetic")))
    click_only = fc.from_dict({**_config_dict("synthetic"), "event_values": {"view": "click"}})
    assert not runner_common.has_impressions(click_only)
    yaml_path = _write_dataset_yaml(tmp_path / "ds")
    with open(yaml_path, encoding="utf-8") as f:
        text = f.read()
    with open(yaml_path, "w", encoding="utf-8") as f:
        f.write(re.sub(r"(?m)^event_values: .*$", "event_values: {view: click}", text))
    built = _build(yaml_path, tmp_path / "w", "--recall_models", "two_tower")
    ids = set(built)
    assert not {i for i in ids if i.startswith(("Ranking", "Evaluator", "DataValidator"))}, ids
    assert {"RecallTrainer.two_tower", "Pusher.two_tower", "BlendFitter"} <= ids
    # No ranker of an earlier run is called to fit its blend.
    assert built["BlendFitter"].exec_properties["use_ranker"] == 0
    # With impressions the ranking stage is there, and the blend uses its ranker.
    built = _build(_write_dataset_yaml(tmp_path / "ds2"), tmp_path / "w2", "--recall_models",
                   "two_tower")
    assert "RankingGate.nfwfm" in built and built["BlendFitter"].exec_properties["use_ranker"] == 1


def test_kubeflow_compiles_a_click_only_log_to_the_recall_stage_alone(tmp_path):
    yaml_path = _write_dataset_yaml(tmp_path / "ds")
    with open(yaml_path, encoding="utf-8") as f:
        text = f.read()
    with open(yaml_path, "w", encoding="utf-8") as f:
        f.write(re.sub(r"(?m)^event_values: .*$", "event_values: {view: click}", text))
    path = kubeflow_v2_runner.compile_pipeline(
        str(tmp_path / "build"), "feedrec", "gs://bucket/root", yaml_path, "gs://bucket/raw",
        "gs://bucket/serving", "img", recall_models=["two_tower"])
    with open(path) as f:
        spec = f.read()
    assert "RecallTrainer.two_tower" in spec and "Pusher.two_tower" in spec
    for absent in ("RankingTrainer", "Evaluator", "DataValidator", "RankingGate"):
        assert absent not in spec, absent


def test_no_ranking_and_no_recall_model_is_nothing_to_train(tmp_path):
    with pytest.raises(ValueError, match="^nothing to train"):
        create_pipeline("p", str(tmp_path), dataset_file.builtin(
            "synthetic", "e.jsonl", None, "i.jsonl"), str(tmp_path / "s"),
            RankingSettings(enabled=False), RecallSettings(models=()))


def _config_dict(name: str) -> dict:
    import yaml
    with open(fc.builtin_config_path(name), encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_build_from_a_dataset_yaml(tmp_path):
    yaml_path = _write_dataset_yaml(tmp_path / "ds")
    parser = argparse.ArgumentParser()
    runner_common.add_flags(parser)
    args, beam = parser.parse_known_args(["--data", yaml_path, "--work_dir", str(tmp_path / "w"),
                                          "--profile", "tiny", "--recall_models", ""])
    built = runner_common.build(args, beam)
    gen = next(c for c in built.pipeline.components if c.id == "ClickLogExampleGen")
    assert gen.exec_properties["events"] == str(tmp_path / "ds" / "logs" / "events-*.csv")
    assert gen.exec_properties["users"] == str(tmp_path / "ds" / "users.jsonl")
    assert gen.exec_properties["items"] == "gs://other/items.jsonl"
    assert "data:" not in gen.exec_properties["feature_config"]
    # Nothing was generated for a dataset given by file.
    assert not os.path.exists(tmp_path / "w" / "raw")


def _build(yaml_path, work_dir, *flags):
    """The components built from a dataset YAML (None: --data comes with `flags`)."""
    parser = argparse.ArgumentParser()
    runner_common.add_flags(parser)
    data = ["--data", yaml_path] if yaml_path else []
    args, beam = parser.parse_known_args([*data, "--work_dir", str(work_dir),
                                          "--profile", "tiny", "--recall_models", "", *flags])
    return {c.id: c for c in runner_common.build(args, beam).pipeline.components}


def test_the_dataset_yamls_validation_section_and_the_flags_set_the_data_checks(tmp_path):
    yaml_path = _write_dataset_yaml(tmp_path / "ds", extra=(
        "validation:\n  max_oov_rate: 0.5\n  allowed_anomalies: [drift]\n"))
    components = _build(yaml_path, tmp_path / "w", "--allow_data_anomalies", "skew,drift")
    config = json.loads(components["DataValidator"].exec_properties["validation_config"])
    assert (config["max_oov_rate"], config["allowed_anomalies"]) == (0.5, ["drift", "skew"])
    # Every serving check (hence every push) waits on the data checks.
    validator = components["ServingValidator.nfwfm"]
    assert "data_anomalies" in validator.inputs
    assert "DataValidator" not in _build(yaml_path, tmp_path / "w2", "--no_data_checks")


def test_a_bad_validation_section_is_one_error_line(tmp_path, capsys):
    yaml_path = _write_dataset_yaml(tmp_path / "ds", extra="validation:\n  max_oov: 0.5\n")
    code = runner_common.run_main(None, "test", ["--data", yaml_path, "--work_dir",
                                                 str(tmp_path / "w")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {yaml_path}: validation: unknown validation keys ['max_oov']; "
                          "want [")


def _training_clusters(components):
    return {k: c.exec_properties["training_cluster"] for k, c in components.items()
            if k.startswith(("RankingTrainer.", "RecallTrainer."))}


def test_the_training_cluster_flag_reaches_every_ranking_trainer_and_two_tower(tmp_path):
    components = _build(_write_dataset_yaml(tmp_path / "ds"), tmp_path / "w",
                        "--training_cluster", "local:workers=2,ps=1",
                        "--recall_models", "item2vec,youtubenet,two_tower")
    # item2vec and youtubenet have no cluster trainer: they stay in process.
    assert _training_clusters(components) == {
        "RankingTrainer.nfm": "local:workers=2,ps=1",
        "RankingTrainer.nfwfm": "local:workers=2,ps=1",
        "RankingTrainer.multitask_nfwfm": "local:workers=2,ps=1",
        "RecallTrainer.item2vec": "",
        "RecallTrainer.youtubenet": "",
        "RecallTrainer.two_tower": "local:workers=2,ps=1"}
    default = _build(_write_dataset_yaml(tmp_path / "ds"), tmp_path / "w2",
                     "--recall_models", "item2vec,youtubenet,two_tower")
    assert set(_training_clusters(default).values()) == {""}
    assert len(_training_clusters(default)) == 6


def test_a_bad_training_cluster_is_one_error_line(tmp_path, capsys):
    code = runner_common.run_main(None, "test", ["--training_cluster", "local:2",
                                                 "--work_dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: --training_cluster: training cluster 'local:2' is not of the form "
        "'local:workers=<n>,ps=<m>', or 'tf_config'")


def _reporter(components):
    return components["PipelineReporter"].exec_properties


def _replay_file(path, *datasets_in_it) -> str:
    text = json.dumps({**{d: {"final": {}} for d in datasets_in_it}, "_run": {"commit": "c"}})
    path.write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_report_draws_the_recorded_funnel_replay_of_its_own_dataset(tmp_path, monkeypatch):
    monkeypatch.delenv("FEEDREC_FUNNEL_RESULTS", raising=False)
    recorded = tmp_path / "recorded.json"
    digest = _replay_file(recorded, "synthetic", "movielens")
    monkeypatch.setattr(runner_common, "FUNNEL_RESULTS", str(recorded))
    builtin = ("--data", "synthetic", "--num_events", "500")
    # auto: the recorded replay of the built-in data, for the dataset the pipeline runs on;
    # its hash is a parameter of the report step, so a changed file is not served from cache.
    auto = _reporter(_build(None, tmp_path / "w", *builtin))
    assert (auto["funnel_results"], auto["funnel_dataset"], auto["funnel_sha256"]) == (
        str(recorded), "synthetic", digest)
    # Not for a dataset YAML, even one whose config is named like a built-in one (as here).
    yaml_path = _write_dataset_yaml(tmp_path / "ds")
    yaml_run = _reporter(_build(yaml_path, tmp_path / "w2"))
    assert (yaml_run["funnel_results"], yaml_run["funnel_sha256"]) == ("", "")
    assert yaml_run["funnel_dataset"] == "synthetic"
    # A recorded file without this dataset's replay, or none at all: no rows, no error.
    _replay_file(recorded, "movielens")
    assert _reporter(_build(None, tmp_path / "w", *builtin))["funnel_results"] == ""
    monkeypatch.setattr(runner_common, "FUNNEL_RESULTS", str(tmp_path / "absent.json"))
    assert _reporter(_build(None, tmp_path / "w", *builtin))["funnel_results"] == ""
    # A path of the user's (relative to where the runner starts; also by the environment,
    # as the tfx CLI passes settings) and '' for none.
    mine = tmp_path / "replay.json"
    mine_digest = _replay_file(mine, "synthetic")
    monkeypatch.chdir(tmp_path)
    given = _reporter(_build(yaml_path, tmp_path / "w2", "--funnel_results", "replay.json"))
    assert (given["funnel_results"], given["funnel_sha256"]) == (str(mine), mine_digest)
    monkeypatch.setenv("FEEDREC_FUNNEL_RESULTS", "replay.json")
    assert _reporter(_build(None, tmp_path / "w", *builtin))["funnel_results"] == str(mine)
    assert _reporter(_build(None, tmp_path / "w", *builtin, "--funnel_results", ""))[
        "funnel_results"] == ""


def test_the_runner_default_is_where_the_funnel_bench_records():
    from bench import funnel_bench
    assert runner_common.FUNNEL_RESULTS == funnel_bench.RESULTS


@pytest.mark.parametrize("content, message", [
    (None, "error: --funnel_results: cannot read 'replay.json' as JSON: [Errno 2] No such file "
           "or directory: '{tmp}/replay.json'"),
    ("not json", "error: --funnel_results: cannot read 'replay.json' as JSON: Expecting value: "
                 "line 1 column 1 (char 0)"),
    ('{"movielens": {}, "_run": {}}', "error: --funnel_results: 'replay.json' holds no funnel "
                                      "replay of dataset 'synthetic' (it holds ['movielens'])"),
])
def test_a_replay_that_does_not_fit_is_one_error_line(content, message, tmp_path, monkeypatch,
                                                      capsys):
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / "replay.json").write_text(content)
    code = runner_common.run_main(None, "test", ["--funnel_results", "replay.json",
                                                 "--work_dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == message.format(tmp=tmp_path)
    assert not os.path.exists(tmp_path / "raw")  # refused before any data was prepared


def test_default_profile_tunes_every_rankers_learning_rate_and_hparams_can_fix_it(tmp_path):
    from models.ranking import config as rc
    parser = argparse.ArgumentParser()
    runner_common.add_flags(parser)
    args, beam = parser.parse_known_args(
        ["--work_dir", str(tmp_path), "--profile", "default", "--recall_models", "",
         "--hparams", 'nfm={"learning_rate": 0.02}'])
    components = {c.id: c for c in runner_common.build(args, beam).pipeline.components}

    def hparams(model):
        return json.loads(components[f"RankingTrainer.{model}"].exec_properties["hparams"])
    # Candidate and baseline get the same grid and the same schedule.
    for model in ("nfwfm", "multitask_nfwfm"):
        assert hparams(model) == {"batch_size": 512, "max_epochs": 10, "patience": 2,
                                  "learning_rates": [0.001, 0.003, 0.01]}, model
    # The user's fixed rate drops the profile's grid for that model only.
    assert hparams("nfm") == {"batch_size": 512, "max_epochs": 10, "patience": 2,
                              "learning_rate": 0.02}
    assert rc.make_config("nfm", hparams("nfm")).learning_rates == ()
    assert rc.make_config("nfwfm", hparams("nfwfm")).learning_rates == (0.001, 0.003, 0.01)
    # A user grid replaces the profile's.
    assert runner_common._merge({"nfm": {"learning_rates": [0.1, 0.2], "patience": 2}},
                                {"nfm": {"learning_rate": 0.5, "learning_rates": [0.3]}}) == {
        "nfm": {"learning_rates": [0.3], "learning_rate": 0.5, "patience": 2}}


def test_a_run_on_another_dataset_parks_the_served_models_first(tmp_path, capsys):
    """<work_dir>/serving holds movielens's models: a synthetic run keeps them aside before it
    pushes anything (serving.serving_dirs), and says so."""
    from serving import serving_dirs
    serving = tmp_path / "serving"
    serving_dirs.write_stamp(str(serving), serving_dirs.Stamp("movielens", "movielens"))
    (serving / "models" / "ranking" / "5").mkdir(parents=True)
    seen = {}

    class Run:
        def run(self, pipeline):
            seen["stamp"] = serving_dirs.read_stamp(str(serving))
            seen["served"] = sorted(os.listdir(serving))

    code = runner_common.run_main(Run, "test", [
        "--data", "synthetic", "--num_events", "300", "--profile", "tiny",
        "--work_dir", str(tmp_path), "--funnel_results", ""])
    assert code == 0
    assert seen == {"stamp": serving_dirs.Stamp("synthetic", "synthetic"),
                    "served": ["dataset.json"]}
    assert (tmp_path / "serving.movielens" / "models" / "ranking" / "5").is_dir()
    assert f"{serving} held the models of 'movielens': kept aside as {serving}.movielens" in \
        capsys.readouterr().out.splitlines()


def test_no_dataset_switch_while_the_serving_dirs_are_held(tmp_path, capsys):
    """Another run (any pipeline name) or `make serve` holds <work_dir>/serving.lock."""
    from serving import serving_dirs
    serving = tmp_path / "serving"
    serving_dirs.write_stamp(str(serving), serving_dirs.Stamp("movielens", "movielens"))
    (serving / "models" / "ranking" / "5").mkdir(parents=True)
    held = serving_dirs.hold(str(serving))

    class NeverRun:
        def run(self, pipeline):
            raise AssertionError("must not run")

    code = runner_common.run_main(NeverRun, "test", [
        "--data", "synthetic", "--num_events", "300", "--profile", "tiny",
        "--work_dir", str(tmp_path), "--funnel_results", "", "--pipeline_name", "other"])
    held.close()
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {serving} serves 'movielens' and is in use (`make serve` or another run holds "
        f"{serving}.lock): switching it to 'synthetic' would pull its models from under them. "
        "Stop them first, or run in another --work_dir")
    assert serving_dirs.read_stamp(str(serving)).dataset == "movielens"


def test_the_tfx_clis_compile_moves_nothing(tmp_path):
    """`tfx pipeline create` runs the runner with run() patched out: nothing is pushed."""
    from tfx.tools.cli.handler import local_dag_runner_patcher
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from serving import serving_dirs
    serving = tmp_path / "serving"
    serving_dirs.write_stamp(str(serving), serving_dirs.Stamp("movielens", "movielens"))
    (serving / "models" / "ranking" / "5").mkdir(parents=True)
    patcher = local_dag_runner_patcher.LocalDagRunnerPatcher()
    with patcher.patch():
        code = runner_common.run_main(LocalDagRunner, "test", [
            "--data", "synthetic", "--num_events", "300", "--profile", "tiny",
            "--work_dir", str(tmp_path), "--funnel_results", ""])
    assert code == 0 and patcher.run_called
    assert serving_dirs.read_stamp(str(serving)).dataset == "movielens"
    assert (serving / "models" / "ranking" / "5").is_dir()


def test_a_log_without_follows_leaves_the_multitask_model_out(tmp_path, capsys):
    no_follow = fc.from_dict({**_config_dict("synthetic"),
                              "event_values": {"shown": "impression", "clicked": "click"}})
    assert not runner_common.has_follows(no_follow)
    assert runner_common.has_follows(fc.load(fc.builtin_config_path("synthetic")))
    yaml_path = _write_dataset_yaml(tmp_path / "ds")
    with open(yaml_path, encoding="utf-8") as f:
        text = f.read()
    with open(yaml_path, "w", encoding="utf-8") as f:
        f.write(re.sub(r"(?m)^event_values: .*$",
                       "event_values: {view: impression, click: click}", text))
    ids = set(_build(yaml_path, tmp_path / "w"))
    assert "RankingGate.nfwfm" in ids and not {i for i in ids if "multitask" in i}, ids
    # The built-in config maps follows: the multi-task model is built.
    assert "RankingGate.multitask_nfwfm" in _build(None, tmp_path / "w2", "--data", "synthetic",
                                                  "--num_events", "300")

    (tmp_path / "ds" / "logs").mkdir()
    (tmp_path / "ds" / "logs" / "events-1.csv").write_text("timestamp,user_id,item_id,event\n")
    (tmp_path / "ds" / "users.jsonl").write_text("")

    class Run:
        def run(self, pipeline):
            pass

    assert runner_common.run_main(Run, "test", [
        "--data", yaml_path, "--profile", "tiny", "--work_dir", str(tmp_path / "w3"),
        "--funnel_results", ""]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{yaml_path}: no event value maps to 'follow' (event_values {{'view': 'impression', "
        "'click': 'click'}): the multi-task model (click and follow heads) is left out, its "
        "follow head would have nothing to learn; the ranking candidate is gated and pushed "
        "alone.")
