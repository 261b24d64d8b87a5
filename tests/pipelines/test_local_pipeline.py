"""End to end on a tiny synthetic log with LocalDagRunner, read back from MLMD.

Run A trains every model; the NFM baseline is left untrained (learning rate
1e-9), so the NFwFM candidate must beat it and be pushed. Run B, in the same
MLMD, flips it: a trained baseline and an untrained candidate, which must be
refused (its AUC deficit is far beyond the 0.001 tolerance). Run C repeats
B: every execution must come from the cache. The tfx CLI then creates and
runs the same pipeline (cached as well).
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tfx.orchestration import metadata

from components import eval_config
from components.trainer import read_metrics
from pipelines import local_runner, mlmd_summary

# Not fewer: at 4000 events the trained models' eval AUC (~0.48) fell to the
# untrained ones' (~0.50) and run A's gate refused the candidate (measured).
NUM_EVENTS = 6000
# Learning rate 1e-9: the model stays at its initialisation. One epoch: the
# untrained models' validation never improves (patience 1 stopped them after
# the second epoch anyway), and a second epoch only costs a fit and a scoring.
UNTRAINED = '{"learning_rate": 1e-9, "max_epochs": 1}'
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# DataValidator's baseline resolver (components.statistics.previous_statistics_resolver).
RESOLVER = "DataValidator.previous_statistics"


def _flags(work_dir: str, *extra: str) -> list[str]:
    return ["--work_dir", work_dir, "--profile", "tiny", "--num_events", str(NUM_EVENTS), *extra]


RUN_B = ("--recall_models", "", "--no_multitask", "--hparams", f"nfwfm={UNTRAINED}")


def _summary(work_dir: str) -> mlmd_summary.RunSummary:
    path = os.path.join(work_dir, "tfx", "feedrec", "metadata.sqlite")
    return mlmd_summary.latest_run(metadata.sqlite_metadata_connection_config(path), "feedrec")


def _run(work_dir: str, *extra: str) -> tuple[mlmd_summary.RunSummary, str]:
    """Runs the local runner in-process; returns MLMD's view and the summary text
    the runner printed (format_summary of that same view)."""
    assert local_runner.main(_flags(work_dir, *extra)) == 0
    summary = _summary(work_dir)
    return summary, mlmd_summary.format_summary(summary)


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def run_a(work_dir):
    return _run(work_dir, "--hparams", f"nfm={UNTRAINED}")


@pytest.fixture(scope="module")
def run_b(run_a, work_dir):
    return _run(work_dir, *RUN_B)


def test_run_a_completes_with_lineage(run_a):
    summary, _ = run_a
    states = {n: e.state for n, e in summary.executions.items()}
    assert set(states.values()) == {"COMPLETE"}, states
    for node in ("ClickLogExampleGen", "RankingTrainer.nfm", "RankingTrainer.nfwfm",
                 "Evaluator.nfwfm", "ServingValidator.nfwfm", "Pusher.nfwfm",
                 "RankingTrainer.multitask_nfwfm", "Evaluator.multitask_nfwfm.click",
                 "Evaluator.multitask_nfwfm.follow", "RankingGate.multitask_nfwfm",
                 "RankingGate.nfwfm",
                 "RecallTrainer.two_tower", "FaissIndexBuilder.two_tower", "PipelineReporter"):
        assert node in states, node
    ex = summary.executions
    # Lineage recorded in MLMD: the examples the trainer read are ExampleGen's,
    # the model the Pusher pushed is the one the trainer wrote and the
    # Evaluator judged.
    examples_id = ex["ClickLogExampleGen"].outputs["ranking_examples"][0].id
    assert ex["RankingTrainer.nfwfm"].inputs["examples"][0].id == examples_id
    model_id = ex["RankingTrainer.nfwfm"].outputs["model"][0].id
    assert ex["Evaluator.nfwfm"].inputs["model"][0].id == model_id
    assert ex["Evaluator.nfwfm"].inputs["baseline_model"][0].id == \
        ex["RankingTrainer.nfm"].outputs["model"][0].id
    assert ex["Pusher.nfwfm"].inputs["model"][0].id == model_id
    # The Pusher's blessing is RankingGate's, made from the Evaluator's.
    assert ex["RankingGate.nfwfm"].inputs["evaluation"][0].id == \
        ex["Evaluator.nfwfm"].outputs["evaluation"][0].id
    assert ex["RankingGate.nfwfm"].inputs["evaluator_blessing"][0].id == \
        ex["Evaluator.nfwfm"].outputs["blessing"][0].id
    assert ex["Pusher.nfwfm"].inputs["model_blessing"][0].id == \
        ex["RankingGate.nfwfm"].outputs["blessing"][0].id


def test_run_a_blessing_matches_recorded_metrics(run_a):
    summary, _ = run_a
    evaluator = summary.executions["Evaluator.nfwfm"]
    rows = eval_config.metric_rows(evaluator.outputs["evaluation"][0].uri)
    overall = {(r["model"], r["is_diff"]): r["value"] for r in rows if r["slice"] == "overall"}
    candidate, baseline = overall[("candidate", False)], overall[("baseline", False)]
    assert overall[("candidate", True)] == pytest.approx(candidate - baseline, abs=1e-6)
    # Tiny profile: floor 0, default tolerance 0.001.
    should_bless = candidate >= 0.0 and candidate - baseline >= -0.001
    blessed = evaluator.outputs["blessing"][0].properties["blessed"] == 1
    assert blessed == should_bless
    # The untrained baseline is beaten in this run.
    assert blessed, (candidate, baseline)
    sliced = {r["slice"] for r in rows}
    assert {"overall", "is_new_user=0", "is_new_user=1"} <= sliced
    # RankingGate records the same figures (the tiny profile computes no
    # intervals: test_gate.py checks those).
    gate = summary.executions["RankingGate.nfwfm"].outputs["blessing"][0].properties
    assert gate["blessed"] == 1 and gate["auc_tolerance"] == 0.001
    assert gate["click_auc_diff"] == pytest.approx(candidate - baseline, abs=1e-6)
    assert gate["click_auc"] == pytest.approx(candidate, abs=1e-6)
    assert "click_auc_diff_lower" not in gate


def test_run_a_pushed_models_load_and_score(run_a, work_dir):
    summary, out = run_a
    pushed = summary.executions["Pusher.nfwfm"].outputs["pushed_model"][0]
    assert pushed.properties["pushed"] == 1
    destination = pushed.properties["pushed_destination"]
    assert os.path.dirname(destination) == os.path.join(work_dir, "serving", "models", "ranking")
    examples = summary.executions["ClickLogExampleGen"].outputs["ranking_examples"][0].uri
    files = tf.io.gfile.glob(os.path.join(examples, "Split-eval", "*.gz"))
    batch = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(4)]
    click = tf.saved_model.load(destination).signatures["serving_default"](
        examples=tf.constant(batch))["click"].numpy()
    assert click.shape == (4,) and np.all((click > 0) & (click < 1))
    assert destination in out  # the runner says where it pushed


def test_run_a_faiss_index_answers_a_user_tower_query(run_a, work_dir):
    from components import adapters
    from models.faiss_index.index import load_index
    summary, _ = run_a
    index_info = summary.executions["FaissIndexBuilder.two_tower"].outputs["pushed_index"][0]
    assert index_info.properties["pushed"] == 1
    index = load_index(index_info.properties["pushed_destination"])
    tower_dir = summary.executions["Pusher.two_tower"].outputs["pushed_model"][0].properties[
        "pushed_destination"]
    tower = tf.saved_model.load(tower_dir).signatures["serving_default"]
    vocabulary = summary.executions["ClickLogExampleGen"].outputs["vocabulary"][0].uri
    retrieval = summary.executions["ClickLogExampleGen"].outputs["retrieval_examples"][0].uri
    request = adapters.user_tower_request(os.path.join(vocabulary, "feature_config.yaml"),
                                          retrieval, "eval", 3)
    vectors = tower(**{k: tf.constant(v) for k, v in request.items()})["user_embedding"].numpy()
    ids, scores = index.search(vectors, 5)
    assert len(ids) == 3 and all(len(row) == 5 for row in ids)
    assert all(i in index.row for row in ids for i in row)
    # The index's best item is the exact inner-product best over its vectors.
    exact = np.argmax(vectors @ index.embeddings.T, axis=1)
    assert [row[0] for row in ids] == [index.ids[j] for j in exact]


def test_run_a_blend_fitter_replayed_the_validation_requests(run_a, work_dir):
    summary, _ = run_a
    blend = summary.executions["BlendFitter"].outputs["blend"][0].properties
    # 6,000 events leave a few dozen validation requests: fewer than the 100
    # a published blend needs, so the ranker's order stays and no blend.json.
    assert blend["published"] == 0
    found = re.fullmatch(r"only (\d+) validation requests have their click among the candidates "
                         r"\(min_requests 100\): too few to fit the blend's weights on",
                         blend["reason"])
    assert found and 0 < int(found.group(1)) < 100, blend["reason"]
    assert not os.path.exists(os.path.join(work_dir, "serving", "blend.json"))
    report = summary.executions["PipelineReporter"].outputs["report"][0].properties
    assert f"- not published: {blend['reason']}" in open(report["published_path"]).read()


def test_run_a_report_published(run_a, work_dir):
    summary, out = run_a
    report = summary.executions["PipelineReporter"].outputs["report"][0]
    path = report.properties["published_path"]
    assert path.startswith(os.path.join(work_dir, "serving", "reports"))
    text = open(path).read()
    assert "## Gate: ranking candidate vs baseline\n\n**BLESSED**" in text
    gate = summary.executions["RankingGate.nfwfm"].outputs["blessing"][0].properties
    assert f"- {gate['click_summary']}" in text
    assert gate["click_summary"].startswith(f"click: candidate AUC {gate['click_auc']:.4f} vs ")
    assert gate["click_summary"] in out  # the runner prints the same line
    for png in ("task_uncertainty.png", "calibration.png", "learning_curve_nfwfm.png",
                "learning_curve_multitask_nfwfm.png", "learning_curve_two_tower.png"):
        assert os.path.exists(os.path.join(os.path.dirname(path), png)), png
    assert "## Training (early stopping" in text
    assert f"report: {path}" in out
    # Every serving check of the run has its row: the ranking models' and the user towers'.
    validators = {node.split(".", 1)[1]: execution.outputs["blessing"][0].properties
                  for node, execution in summary.executions.items()
                  if node.startswith("ServingValidator.")}
    assert {"nfwfm", "multitask_nfwfm", "two_tower"} <= set(validators), validators
    rows = {"nfwfm": "candidate", "multitask_nfwfm": "multitask"}
    for model, infra in validators.items():
        blessed = "yes" if infra["blessed"] == 1 else "no"
        row = f"| {rows.get(model, model + ' user tower')} | {blessed} | {infra.get('reason', '')} |"
        assert row in text, row


def test_run_a_trainers_report_early_stopping(run_a):
    summary, out = run_a
    for node in ("RankingTrainer.nfwfm", "RankingTrainer.multitask_nfwfm",
                 "RecallTrainer.two_tower"):
        metrics = summary.executions[node].outputs["metrics"][0]
        props = metrics.properties
        content = read_metrics(metrics.uri)["metrics"]
        stopping = content["early_stopping"]
        assert (props["best_epoch"], props["epochs_run"], props["stopped_early"]) == (
            stopping["best_epoch"], stopping["epochs_run"], int(stopping["stopped_early"]))
        assert len(content["learning_curve"]) == stopping["epochs_run"]
        assert f"  {node}: " in out
        line = next(l for l in out.splitlines() if l.startswith(f"  {node}: "))
        assert f"best epoch {stopping['best_epoch']} of {stopping['epochs_run']}" in line


def test_run_a_multitask_gate_and_the_follow_label_counts(run_a):
    summary, out = run_a
    ex = summary.executions
    gate = ex["RankingGate.multitask_nfwfm"].outputs["blessing"][0].properties
    follow = eval_config.gate_figures(
        ex["Evaluator.multitask_nfwfm.follow"].outputs["evaluation"][0].uri)
    assert (gate["follow_eval_positives"], gate["follow_eval_examples"]) == (
        follow.positives, follow.examples)
    evaluators = [ex[f"Evaluator.multitask_nfwfm.{h}"].outputs["blessing"][0].properties[
        "blessed"] == 1 for h in ("click", "follow")]
    evaluable = 0 < follow.positives < follow.examples
    assert gate["blessed"] == int(all(evaluators) and evaluable)
    if not evaluable:
        assert "follow: not evaluable (0 positives in eval)" in out


def test_run_b_worse_candidate_is_not_pushed(run_a, run_b, work_dir):
    summary, out = run_b
    ex = summary.executions
    # ExampleGen was served from the cache: same data, same examples.
    assert ex["ClickLogExampleGen"].state == "CACHED"
    assert ex["Evaluator.nfwfm"].outputs["blessing"][0].properties["blessed"] == 0
    pushed = ex["Pusher.nfwfm"].outputs["pushed_model"][0]
    assert pushed.properties["pushed"] == 0
    ranking_dir = os.path.join(work_dir, "serving", "models", "ranking")
    assert os.listdir(ranking_dir) == [os.path.basename(
        run_a[0].executions["Pusher.nfwfm"].outputs["pushed_model"][0].properties[
            "pushed_destination"])]
    assert "Evaluator.nfwfm: NOT BLESSED (auc diff vs baseline (overall)" in out
    assert "RankingGate.nfwfm: NOT BLESSED (click: auc diff vs baseline (overall)" in out
    assert "change vs baseline must be >= -0.001" in out
    gate = ex["RankingGate.nfwfm"].outputs["blessing"][0].properties
    assert gate["click_auc_diff"] < -0.001
    assert f"    {gate['click_summary']}" in out and ", tolerance 0.001" in gate["click_summary"]
    assert "Pusher.nfwfm: NOT pushed" in out


def test_run_c_unchanged_rerun_is_cached(run_b, work_dir):
    summary, _ = _run(work_dir, *RUN_B)
    assert summary.run_id != run_b[0].run_id
    states = {n: e.state for n, e in summary.executions.items()}
    # A resolver queries MLMD on every run (never cached); what it resolved is
    # unchanged, so every step behind it is served from the cache.
    assert states.pop(RESOLVER) == "COMPLETE"
    assert set(states.values()) == {"CACHED"}, states


def test_tfx_cli_create_and_run_local(run_b, work_dir, tmp_path):
    """`tfx pipeline create` + `tfx run create` on the local engine (cached run)."""
    env = dict(os.environ, HOME=str(tmp_path), FEEDREC_WORK_DIR=work_dir,
               FEEDREC_PROFILE="tiny", FEEDREC_NUM_EVENTS=str(NUM_EVENTS),
               FEEDREC_RECALL_MODELS="", FEEDREC_NO_MULTITASK="1",
               FEEDREC_HPARAMS=f"nfwfm={UNTRAINED}", PYTHONPATH=REPO)
    tfx = os.path.join(os.path.dirname(sys.executable), "tfx")
    runs_before = len(mlmd_summary.run_ids(metadata.sqlite_metadata_connection_config(
        os.path.join(work_dir, "tfx", "feedrec", "metadata.sqlite")), "feedrec"))
    create = subprocess.run([tfx, "pipeline", "create", "--engine", "local", "--pipeline_path",
                             os.path.join(REPO, "pipelines", "local_runner.py")],
                            env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert create.returncode == 0, create.stderr[-3000:]
    assert "Pipeline \"feedrec\" created successfully." in create.stdout, create.stdout[-2000:]
    assert os.path.exists(os.path.join(str(tmp_path), "tfx", "local", "feedrec",
                                       "pipeline_args.json"))
    run = subprocess.run([tfx, "run", "create", "--engine", "local", "--pipeline_name", "feedrec"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = _summary(work_dir)
    runs_after = len(mlmd_summary.run_ids(metadata.sqlite_metadata_connection_config(
        os.path.join(work_dir, "tfx", "feedrec", "metadata.sqlite")), "feedrec"))
    assert runs_after == runs_before + 1
    states = {n: e.state for n, e in summary.executions.items()}
    assert states.pop(RESOLVER) == "COMPLETE"
    assert set(states.values()) == {"CACHED"}, states
