"""Clean interruption of a pipeline run: the signal handler and the re-run's cleanup.

A SIGTERM or SIGINT during a run ends the runner at once with a one-line
message and exit code 128 + signal number; nothing is cleaned up then, so
that the stop is immediate and cannot hang on a busy step. TFX's
LocalDagRunner leaves the step that was executing as a RUNNING execution in
MLMD, with its output directories (<pipeline_root>/<node>/<key>/<execution
id>, not yet registered in MLMD) and its <node>/.system/executor_execution/
<execution id> scratch directory on disk.

The next run calls reconcile() before the DAG runner starts: such executions
are marked CANCELED, their PENDING output artifacts (orchestrators that
register outputs before running do so) ABANDONED, and all those directories
removed. What stays is harmless: the empty <node>/<key>/ parents, which the
next execution writes into, and an empty <node>/.system/stateful_working_dir/
<uuid>, as after any failed execution. The runner holds an exclusive lock on
the pipeline's work directory while it runs, so a RUNNING execution found by
a runner that got the lock belongs to a dead run, never to a live one.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipelines import mlmd_summary

_UNFINISHED = (metadata_store_pb2.Execution.NEW, metadata_store_pb2.Execution.RUNNING)
_OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT,
                  metadata_store_pb2.Event.PENDING_OUTPUT)
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _node_id(store: metadata_store.MetadataStore, execution_id: int, pipeline_name: str) -> str:
    """The pipeline node an execution ran, from its node context "<pipeline>.<node id>"."""
    node_types = {t.id for t in store.get_context_types() if t.name == mlmd_summary.NODE_CONTEXT}
    prefix = f"{pipeline_name}."
    for context in store.get_contexts_by_execution(execution_id):
        if context.type_id in node_types and context.name.startswith(prefix):
            return context.name[len(prefix):]
    return str(execution_id)


def unfinished_executions(store: metadata_store.MetadataStore,
                          pipeline_name: str) -> list[tuple[metadata_store_pb2.Execution, str]]:
    """Executions of the pipeline in state NEW or RUNNING, with their node ids, oldest first."""
    pipeline = store.get_context_by_type_and_name(mlmd_summary.PIPELINE_CONTEXT, pipeline_name)
    if pipeline is None:
        return []
    executions = sorted((e for e in store.get_executions_by_context(pipeline.id)
                         if e.last_known_state in _UNFINISHED), key=lambda e: e.id)
    return [(e, _node_id(store, e.id, pipeline_name)) for e in executions]


def _existing_store(metadata_path: str) -> metadata_store.MetadataStore | None:
    # MetadataStore creates a missing sqlite file; neither the handler nor the
    # cleanup should be what creates the pipeline's MLMD.
    if not os.path.exists(metadata_path):
        return None
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
    return metadata_store.MetadataStore(config)


def running_steps(metadata_path: str, pipeline_name: str) -> list[str]:
    """Node ids of the pipeline's executions now NEW or RUNNING; [] without an MLMD file."""
    store = _existing_store(metadata_path)
    return [node for _, node in unfinished_executions(store, pipeline_name)] if store else []


def _is_under(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root and path != root


def _leftover_dirs(pipeline_root: str, node_id: str, execution_id: int) -> list[str]:
    """Directories TFX names after the execution: <node>/<output key>/<id> and its scratch dir.

    Not <node>/.system/stateful_working_dir/<uuid>: TFX 1.21 does not record
    the uuid in MLMD, keeps that (empty for our executors) directory after
    any failed execution too, and a re-run's new execution gets a new uuid,
    so nothing reads it again.
    """
    node_dir = os.path.join(pipeline_root, node_id)
    return (glob.glob(os.path.join(glob.escape(node_dir), "*", str(execution_id)))
            + [os.path.join(node_dir, ".system", "executor_execution", str(execution_id))])


def reconcile(metadata_path: str, pipeline_name: str, pipeline_root: str) -> list[str]:
    """Cancels what a dead run of the pipeline left unfinished in MLMD and on disk.

    Call only while no other run of the pipeline is alive (see run_lock).

    Args:
      metadata_path: the pipeline's MLMD sqlite file (nothing happens if missing).
      pipeline_name: the pipeline context's name; other pipelines are untouched.
      pipeline_root: only directories under it are removed.
    Returns:
      the node ids of the executions marked CANCELED, oldest execution first.
    """
    store = _existing_store(metadata_path)
    stale = unfinished_executions(store, pipeline_name) if store else []
    if not stale:
        return []
    events = store.get_events_by_execution_ids([e.id for e, _ in stale])
    outputs = store.get_artifacts_by_id(sorted({ev.artifact_id for ev in events
                                                if ev.type in _OUTPUT_EVENTS}))
    pending = [a for a in outputs if a.state == metadata_store_pb2.Artifact.PENDING]
    doomed = [a.uri for a in pending]
    for execution, node_id in stale:
        doomed.extend(_leftover_dirs(pipeline_root, node_id, execution.id))
    for artifact in pending:
        artifact.state = metadata_store_pb2.Artifact.ABANDONED
    for execution, _ in stale:
        execution.last_known_state = metadata_store_pb2.Execution.CANCELED
    # MLMD first: if removing a directory fails, the execution is already out
    # of the RUNNING state and the leftover directory is an orphan nobody reads.
    if pending:
        store.put_artifacts(pending)
    store.put_executions([e for e, _ in stale])
    for path in doomed:
        if os.path.isdir(path) and _is_under(path, pipeline_root):
            shutil.rmtree(path)
    return [node for _, node in stale]


def cleaned_message(node_ids: list[str]) -> str:
    """"cleaned 1 interrupted execution from an earlier run (RankingTrainer.nfm)"."""
    noun = "execution" if len(node_ids) == 1 else "executions"
    return (f"cleaned {len(node_ids)} interrupted {noun} from an earlier run "
            f"({', '.join(node_ids)})")


def interrupted_message(signum: int, steps: list[str]) -> str:
    """The one line the runner prints when a signal stops it."""
    during = f" during {', '.join(steps)}" if steps else ""
    return (f"interrupted by {signal.Signals(signum).name}{during}; "
            "re-run the same command to resume (cached steps are reused)")


def _stop(signum: int, describe: Callable[[], list[str]] | None) -> None:
    try:
        steps = describe() if describe else []
    # Whatever the MLMD lookup raises (a locked or half-written sqlite), the
    # process must still stop at once; the step name is only a courtesy.
    except Exception:  # noqa: BLE001
        steps = []
    sys.stdout.flush()
    sys.stderr.write(interrupted_message(signum, steps) + "\n")
    sys.stderr.flush()
    # os._exit, not SystemExit: an exception raised in the main thread could
    # be caught by a component or wait on Beam and gRPC worker threads.
    os._exit(128 + signum)


@contextlib.contextmanager
def stop_on_signals(describe: Callable[[], list[str]] | None = None) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT print interrupted_message and exit 128 + signum.

    Args:
      describe: returns the steps running now (e.g. running_steps bound to the
        pipeline); None while there is no pipeline yet.
    Outside the main thread, where Python cannot install handlers, signals
    keep their previous behaviour. The previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, lambda signum, _frame: _stop(signum, describe))
                for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_lock(metadata_path: str) -> IO | None:
    """Takes the pipeline's run lock (runner.lock beside MLMD); None if another run holds it.

    The kernel drops the lock when its holder dies, however it dies, so holding
    it proves that no other runner of this pipeline is alive. Keep the returned
    file open for the run.
    """
    os.makedirs(os.path.dirname(metadata_path), exist_ok=True)
    lock = open(os.path.join(os.path.dirname(metadata_path), "runner.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock
