"""Reads a pipeline run back from MLMD: executions, their outputs, lineage.

Used by the runners to print what a run did and by the tests to assert on
what MLMD recorded (not on what the code meant to do).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

PIPELINE_CONTEXT, RUN_CONTEXT, NODE_CONTEXT = "pipeline", "pipeline_run", "node"


def _props(message) -> dict[str, Any]:
    out = {}
    for key, value in message.custom_properties.items():
        kind = value.WhichOneof("value")
        out[key] = getattr(value, kind) if kind in ("int_value", "double_value",
                                                    "string_value") else str(value)
    return out


@dataclasses.dataclass
class ArtifactInfo:
    id: int
    type: str
    uri: str
    properties: dict[str, Any]


@dataclasses.dataclass
class ExecutionInfo:
    id: int
    node_id: str
    state: str
    inputs: dict[str, list[ArtifactInfo]]
    outputs: dict[str, list[ArtifactInfo]]


@dataclasses.dataclass
class RunSummary:
    run_id: str
    executions: dict[str, ExecutionInfo]  # node id -> execution

    def output(self, node_id: str, key: str) -> ArtifactInfo | None:
        execution = self.executions.get(node_id)
        found = execution.outputs.get(key) if execution else None
        return found[0] if found else None


def _store(connection_config: metadata_store_pb2.ConnectionConfig) -> metadata_store.MetadataStore:
    return metadata_store.MetadataStore(connection_config)


def run_ids(connection_config, pipeline_name: str) -> list[str]:
    """Run ids of the pipeline, oldest first."""
    store = _store(connection_config)
    pipeline = store.get_context_by_type_and_name(PIPELINE_CONTEXT, pipeline_name)
    if pipeline is None:
        return []
    ours = {e.id for e in store.get_executions_by_context(pipeline.id)}
    runs = [c for c in store.get_contexts_by_type(RUN_CONTEXT)
            if ours & {e.id for e in store.get_executions_by_context(c.id)}]
    return [c.name for c in sorted(runs, key=lambda c: (c.create_time_since_epoch, c.id))]


def _execution_infos(store: metadata_store.MetadataStore, executions, pipeline_name: str
                     ) -> list[ExecutionInfo]:
    """Executions with their input and output artifacts, read from `store`."""
    types = {t.id: t.name for t in store.get_artifact_types()}
    events = store.get_events_by_execution_ids([e.id for e in executions])
    artifacts = {a.id: a for a in store.get_artifacts_by_id(list({ev.artifact_id for ev in events}))}
    out = []
    prefix = f"{pipeline_name}." if pipeline_name else ""
    for execution in executions:
        nodes = [c.name for c in store.get_contexts_by_execution(execution.id)
                 if store.get_context_types_by_id([c.type_id])[0].name == NODE_CONTEXT]
        node_id = nodes[0][len(prefix):] if nodes and nodes[0].startswith(prefix) else str(execution.id)
        info = ExecutionInfo(execution.id, node_id,
                             metadata_store_pb2.Execution.State.Name(execution.last_known_state),
                             {}, {})
        for event in events:
            if event.execution_id != execution.id or event.artifact_id not in artifacts:
                continue
            artifact = artifacts[event.artifact_id]
            key = event.path.steps[0].key if event.path.steps else "?"
            side = info.outputs if event.type in (metadata_store_pb2.Event.OUTPUT,
                                                  metadata_store_pb2.Event.DECLARED_OUTPUT) \
                else info.inputs
            side.setdefault(key, []).append(ArtifactInfo(artifact.id, types.get(artifact.type_id, "?"),
                                                        artifact.uri, _props(artifact)))
        out.append(info)
    return out


def load_run(connection_config, pipeline_name: str, run_id: str) -> RunSummary:
    """Every execution of one run with its input and output artifacts."""
    store = _store(connection_config)
    run = store.get_context_by_type_and_name(RUN_CONTEXT, run_id)
    if run is None:
        raise KeyError(f"no run {run_id!r} in MLMD")
    out: dict[str, ExecutionInfo] = {}
    for info in _execution_infos(store, store.get_executions_by_context(run.id), pipeline_name):
        # A retried node can appear twice; the latest execution wins.
        if info.node_id not in out or out[info.node_id].id < info.id:
            out[info.node_id] = info
    return RunSummary(run_id, out)


def load_execution(connection_config, execution_id: int) -> ExecutionInfo:
    """One execution with its artifacts (node_id: the node context's full name).

    Raises:
      KeyError: no such execution.
    """
    store = _store(connection_config)
    executions = store.get_executions_by_id([execution_id])
    if not executions:
        raise KeyError(f"no execution {execution_id} in MLMD")
    return _execution_infos(store, executions, "")[0]


def latest_run(connection_config, pipeline_name: str) -> RunSummary | None:
    ids = run_ids(connection_config, pipeline_name)
    return load_run(connection_config, pipeline_name, ids[-1]) if ids else None


def early_stopping_text(properties: dict[str, Any]) -> str:
    """"best epoch 2 of 3 (stopped early, learning rate 0.001 chosen of 3)" from
    a TrainingMetrics' properties;
    "" when the trainer recorded no early stopping (older artifacts)."""
    best, run = properties.get("best_epoch"), properties.get("epochs_run")
    if best is None or run is None:
        return ""
    text = f"best epoch {best} of {run}"
    notes = ["stopped early"] if properties.get("stopped_early") == 1 else []
    if properties.get("early_stopping_monitor"):
        notes.append(f"monitor {properties['early_stopping_monitor']}")
    if properties.get("learning_rates_tried"):
        notes.append(f"learning rate {properties['learning_rate']:g} chosen of "
                     f"{properties['learning_rates_tried']}")
    return text + (f" ({', '.join(notes)})" if notes else "")


def _not_evaluable_tasks(properties: dict[str, Any]) -> list[str]:
    """Tasks whose trainer eval split had one class: "follow: not evaluable (0 positives in eval)"."""
    out = []
    for key in sorted(properties):
        if not key.endswith("_eval_positives"):
            continue
        task = key[:-len("_eval_positives")]
        positives, examples = properties[key], properties.get(f"{task}_eval_examples")
        if positives == 0:
            out.append(f"{task}: not evaluable (0 positives in eval)")
        elif examples is not None and positives == examples:
            out.append(f"{task}: not evaluable (0 negatives in eval)")
    return out


def _gate_lines(node_id: str, execution: ExecutionInfo) -> list[str]:
    blessing = execution.outputs["blessing"][0].properties
    blessed = blessing.get("blessed") == 1
    why = blessing.get("reason", "")
    if node_id.startswith("Evaluator") and not blessed:
        from components.eval_config import failing_reasons
        why = "; ".join(failing_reasons(execution.outputs["evaluation"][0].uri))
    lines = [f"  {node_id}: {'BLESSED' if blessed else 'NOT BLESSED'}" + (f" ({why})" if why else "")]
    # RankingGate records one line per head: AUCs, the diff with its 95% CI
    # and the tolerance, or "not evaluable".
    for head in (blessing.get("heads") or "").split(","):
        if blessing.get(f"{head}_summary"):
            lines.append(f"    {blessing[f'{head}_summary']}")
    return lines


def headline_figures(properties: dict[str, Any]) -> dict[str, float]:
    """A trainer's headline figures: AUCs and the @50 retrieval rates, by name."""
    return {k: v for k, v in sorted(properties.items())
            if isinstance(v, float) and (k.endswith("auc") or k.endswith("_at_50"))
            and not k.startswith(("coverage", "ndcg"))}


def format_summary(summary: RunSummary | None) -> str:
    """The text the runners print after a run."""
    if summary is None:
        return "no run recorded"
    lines = [f"run {summary.run_id}: " + ", ".join(
        f"{n}={e.state}" for n, e in sorted(summary.executions.items()))]
    lines.append("models:")
    for node_id, execution in sorted(summary.executions.items()):
        metrics = execution.outputs.get("metrics")
        if metrics:
            properties = metrics[0].properties
            figures = {k: round(v, 4) for k, v in headline_figures(properties).items()}
            extra = _not_evaluable_tasks(properties)
            if early_stopping_text(properties):
                extra.append(early_stopping_text(properties))
            lines.append(f"  {node_id}: {figures}" + "".join(f"; {t}" for t in extra))
    lines.append("gates:")
    for node_id, execution in sorted(summary.executions.items()):
        if execution.outputs.get("blessing"):
            lines.extend(_gate_lines(node_id, execution))
    lines.append("pushed:")
    for node_id, execution in sorted(summary.executions.items()):
        for key in ("pushed_model", "pushed_index"):
            for artifact in execution.outputs.get(key, []):
                if artifact.properties.get("pushed") == 1:
                    where = artifact.properties.get("pushed_destination")
                else:
                    where = "NOT pushed" + (f": {artifact.properties['reason']}"
                                            if artifact.properties.get("reason") else
                                            " (a required blessing is missing)")
                lines.append(f"  {node_id}: {where}")
    for execution in summary.executions.values():
        for artifact in execution.outputs.get("report", []):
            lines.append(f"report: {artifact.properties.get('published_path', artifact.uri)}")
    return "\n".join(lines)
