"""Clean interruption: the re-run's MLMD cleanup and the runner's signal handling."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

from pipelines import interruption

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNING, COMPLETE, CANCELED = pb.Execution.RUNNING, pb.Execution.COMPLETE, pb.Execution.CANCELED
PENDING, LIVE, ABANDONED = pb.Artifact.PENDING, pb.Artifact.LIVE, pb.Artifact.ABANDONED


def _store(path: str) -> metadata_store.MetadataStore:
    config = pb.ConnectionConfig()
    config.sqlite.filename_uri = path
    return metadata_store.MetadataStore(config)


class _Fixture:
    """An MLMD store shaped like TFX's: pipeline / node contexts, executions, output events."""

    def __init__(self, path: str):
        self.store = _store(path)
        self.context_types = {
            name: self.store.put_context_type(pb.ContextType(name=name))
            for name in ("pipeline", "pipeline_run", "node")}
        self.execution_type = self.store.put_execution_type(pb.ExecutionType(name="Trainer"))
        self.artifact_type = self.store.put_artifact_type(pb.ArtifactType(name="Model"))

    def context(self, kind: str, name: str) -> int:
        found = self.store.get_context_by_type_and_name(kind, name)
        if found:
            return found.id
        [cid] = self.store.put_contexts([pb.Context(type_id=self.context_types[kind], name=name)])
        return cid

    def execution(self, pipeline: str, node: str, state: int, output_uris: list[tuple[str, int]]):
        """Puts an execution of pipeline.node with (uri, artifact state) outputs; returns ids."""
        [eid] = self.store.put_executions(
            [pb.Execution(type_id=self.execution_type, last_known_state=state)])
        contexts = [self.context("pipeline", pipeline), self.context("node", f"{pipeline}.{node}")]
        self.store.put_attributions_and_associations(
            [], [pb.Association(context_id=c, execution_id=eid) for c in contexts])
        aids = self.store.put_artifacts(
            [pb.Artifact(type_id=self.artifact_type, uri=uri, state=s) for uri, s in output_uris])
        self.store.put_events([pb.Event(artifact_id=a, execution_id=eid, type=pb.Event.OUTPUT)
                               for a in aids])
        return eid, aids


def _state(store, execution_id):
    return store.get_executions_by_id([execution_id])[0].last_known_state


def _artifact_states(store, ids):
    return [a.state for a in store.get_artifacts_by_id(ids)]


def test_reconcile_cancels_the_dead_runs_execution_and_removes_its_directories(tmp_path):
    root = str(tmp_path / "pipeline_root")
    metadata_path = str(tmp_path / "metadata.sqlite")
    fixture = _Fixture(metadata_path)
    # A finished trainer whose model must survive.
    done_uri = os.path.join(root, "RankingTrainer.nfwfm", "model", "1")
    os.makedirs(done_uri)
    open(os.path.join(done_uri, "saved_model.pb"), "w").close()
    done, done_artifacts = fixture.execution("feedrec", "RankingTrainer.nfwfm", COMPLETE,
                                             [(done_uri, LIVE)])
    # The interrupted trainer: a registered PENDING model dir (empty), and what
    # LocalDagRunner creates without registering: another output key's dir
    # and the executor's scratch dir, all named after the execution id.
    outside = str(tmp_path / "elsewhere" / "model")
    os.makedirs(outside)
    stale, stale_artifacts = fixture.execution("feedrec", "RankingTrainer.nfm", RUNNING,
                                               [("PLACEHOLDER", PENDING), (outside, PENDING)])
    node_dir = os.path.join(root, "RankingTrainer.nfm")
    model_uri = os.path.join(node_dir, "model", str(stale))
    [pending] = fixture.store.get_artifacts_by_id([stale_artifacts[0]])
    pending.uri = model_uri
    fixture.store.put_artifacts([pending])
    unregistered = [os.path.join(node_dir, "metrics", str(stale)),
                    os.path.join(node_dir, ".system", "executor_execution", str(stale), ".temp")]
    # An earlier finished execution of the same node keeps its directory.
    earlier = os.path.join(node_dir, "model", str(done))
    for path in [model_uri, earlier] + unregistered:
        os.makedirs(path)
    # Another pipeline's RUNNING execution in the same store is not ours.
    other, other_artifacts = fixture.execution("other", "RankingTrainer.nfm", RUNNING,
                                               [(str(tmp_path / "other"), PENDING)])

    assert interruption.running_steps(metadata_path, "feedrec") == ["RankingTrainer.nfm"]
    assert interruption.reconcile(metadata_path, "feedrec", root) == ["RankingTrainer.nfm"]

    store = _store(metadata_path)
    assert (_state(store, stale), _state(store, done), _state(store, other)) == (
        CANCELED, COMPLETE, RUNNING)
    assert _artifact_states(store, stale_artifacts) == [ABANDONED, ABANDONED]
    assert _artifact_states(store, done_artifacts) == [LIVE]
    assert _artifact_states(store, other_artifacts) == [PENDING]
    assert not os.path.exists(model_uri)
    assert not any(os.path.exists(p) for p in unregistered)
    assert not os.path.exists(os.path.join(node_dir, ".system", "executor_execution", str(stale)))
    # Outside the pipeline root nothing is deleted, even for an abandoned artifact.
    assert os.path.isdir(outside)
    assert os.path.isfile(os.path.join(done_uri, "saved_model.pb"))
    assert os.path.isdir(earlier)
    # Idempotent: the re-run after that finds nothing left.
    assert interruption.running_steps(metadata_path, "feedrec") == []
    assert interruption.reconcile(metadata_path, "feedrec", root) == []


def test_reconcile_without_mlmd_does_not_create_it(tmp_path):
    metadata_path = str(tmp_path / "metadata.sqlite")
    assert interruption.reconcile(metadata_path, "feedrec", str(tmp_path)) == []
    assert interruption.running_steps(metadata_path, "feedrec") == []
    assert not os.path.exists(metadata_path)


@pytest.mark.parametrize("names, expected", [
    (["RankingTrainer.nfm"], "cleaned 1 interrupted execution from an earlier run "
                             "(RankingTrainer.nfm)"),
    (["A", "B"], "cleaned 2 interrupted executions from an earlier run (A, B)"),
])
def test_cleaned_message(names, expected):
    assert interruption.cleaned_message(names) == expected


def test_run_lock_is_exclusive_and_released(tmp_path):
    metadata_path = str(tmp_path / "feedrec" / "metadata.sqlite")
    held = interruption.run_lock(metadata_path)
    assert held is not None
    # flock locks belong to the open file: a second open in this process conflicts too.
    assert interruption.run_lock(metadata_path) is None
    held.close()
    again = interruption.run_lock(metadata_path)
    assert again is not None
    again.close()


_CHILD = textwrap.dedent("""
    import sys, time
    from pipelines import interruption
    metadata_path = sys.argv[1]
    describe = (lambda: interruption.running_steps(metadata_path, "feedrec")) if metadata_path \\
        else None
    with interruption.stop_on_signals(describe):
        print("ready", flush=True)
        time.sleep(120)
""")


@pytest.mark.parametrize("signum, with_step, code, message", [
    (signal.SIGTERM, True, 143,
     "interrupted by SIGTERM during RankingTrainer.nfm; "
     "re-run the same command to resume (cached steps are reused)\n"),
    (signal.SIGINT, False, 130,
     "interrupted by SIGINT; re-run the same command to resume (cached steps are reused)\n"),
])
def test_signal_stops_the_runner_with_a_message(signum, with_step, code, message, tmp_path):
    metadata_path = ""
    if with_step:
        metadata_path = str(tmp_path / "metadata.sqlite")
        fixture = _Fixture(metadata_path)
        fixture.execution("feedrec", "RankingTrainer.nfwfm", COMPLETE, [])
        fixture.execution("feedrec", "RankingTrainer.nfm", RUNNING, [])
    child = subprocess.Popen([sys.executable, "-c", _CHILD, metadata_path], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        child.send_signal(signum)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == code
    assert err == message
    assert "Traceback" not in out + err


@pytest.mark.parametrize("lock_held_elsewhere", [False, True])
def test_runner_cleans_before_the_dag_runner_starts(lock_held_elsewhere, tmp_path, capsys):
    from pipelines import runner_common
    metadata_path = str(tmp_path / "tfx" / "feedrec" / "metadata.sqlite")
    os.makedirs(os.path.dirname(metadata_path))
    stale, _ = _Fixture(metadata_path).execution("feedrec", "RankingTrainer.nfm", RUNNING, [])
    model_dir = str(tmp_path / "tfx" / "feedrec" / "pipeline_root" / "RankingTrainer.nfm" /
                    "model" / str(stale))
    os.makedirs(model_dir)
    other_runner = interruption.run_lock(metadata_path) if lock_held_elsewhere else None
    seen = []

    class FakeDagRunner:
        def run(self, pipeline):
            seen.append((interruption.running_steps(metadata_path, "feedrec"),
                         os.path.exists(model_dir)))

    try:
        code = runner_common.run_main(FakeDagRunner, "test", [
            "--work_dir", str(tmp_path), "--profile", "tiny", "--num_events", "500",
            "--recall_models", ""])
    finally:
        if other_runner:
            other_runner.close()
    out, err = capsys.readouterr()
    assert code == 0
    if lock_held_elsewhere:
        # A live runner's RUNNING execution is not stale: left as it is.
        assert seen == [(["RankingTrainer.nfm"], True)]
        assert "another run of feedrec is in progress" in err
        assert "cleaned" not in out
    else:
        assert seen == [([], False)]
        assert out.splitlines()[0] == (
            "cleaned 1 interrupted execution from an earlier run (RankingTrainer.nfm)")
    # The runner put the default handlers back when it returned.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
