"""One line per component as it starts and ends, while a run is in progress.

`make run` used to be minutes of silence. `reporting()` wraps TFX's portable
Launcher.launch, the one call through which both LocalDagRunner and
BeamDagRunner (DirectRunner: same process) run every node, and prints

    [  0:00:03] ClickLogExampleGen started
    [  0:00:41] ClickLogExampleGen done in 38.2 s: ranking 4,120 / 1,031 examples (train / eval), ...
    [  0:00:41] RankingTrainer.nfm cached: click_auc 0.6412

The figure after the colon comes from what the execution recorded in MLMD
(the same view mlmd_summary prints at the end), so a cached step shows the
figures of the run it reuses.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration.portable import launcher

from pipelines import mlmd_summary

_EXAMPLE_KINDS = ("ranking", "retrieval", "item2vec")


def _examples_figure(props: dict[str, Any]) -> str:
    parts = [f"{kind} {props[f'examples.{kind}.train']:,} / {props[f'examples.{kind}.eval']:,}"
             for kind in _EXAMPLE_KINDS if f"examples.{kind}.train" in props]
    text = ", ".join(parts) + " examples (train / eval)" if parts else ""
    dead = sum(v for k, v in props.items()
               if k.startswith("dead_letter.") and isinstance(v, int))
    return text + (f", {dead:,} rows dead-lettered" if dead else "")


def _pushed_figure(props: dict[str, Any]) -> str:
    if props.get("pushed") == 1:
        destination = str(props.get("pushed_destination", ""))
        return f"pushed version {destination.rstrip('/').rsplit('/', 1)[-1]} ({destination})"
    return "NOT pushed" + (f": {props['reason']}" if props.get("reason") else "")


def key_figure(outputs: dict[str, list[mlmd_summary.ArtifactInfo]]) -> str:
    """The one-line figure of an execution's outputs (examples, AUC, blessing, push)."""
    figures = []
    for key, artifacts in sorted(outputs.items()):
        if not artifacts:
            continue
        props = artifacts[0].properties
        if key == "summary":
            figures.append(_examples_figure(props))
        elif key == "metrics":
            figures.append(", ".join(f"{k} {v:.4f}" for k, v in
                                     mlmd_summary.headline_figures(props).items()))
        elif key == "anomalies" and "num_anomalies" in props:
            figures.append(f"{props['num_anomalies']} data anomalies, "
                           f"{props.get('num_blocking', 0)} blocking"
                           + (f" ({props['reason']})" if props.get("reason") else ""))
        elif key == "blessing":
            figures.append("BLESSED" if props.get("blessed") == 1 else "NOT BLESSED")
        elif key in ("pushed_model", "pushed_index"):
            figures.append(_pushed_figure(props))
        elif key == "report":
            figures.append(f"report {props.get('published_path', artifacts[0].uri)}")
    return "; ".join(f for f in figures if f)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"[{minutes // 60:3d}:{minutes % 60:02d}:{secs:02d}]"


@contextlib.contextmanager
def reporting(connection_config: metadata_store_pb2.ConnectionConfig,
              out: TextIO | None = None) -> Iterator[None]:
    """Prints a line as each node starts and ends while the block runs.

    Args:
      connection_config: the pipeline's MLMD, read for each ended execution.
      out: where the lines go (default: sys.stdout at the time of each line,
        so a redirected stdout gets them).
    """
    original = launcher.Launcher.launch
    run_started = time.monotonic()

    def say(text: str) -> None:
        print(f"{_clock(time.monotonic() - run_started)} {text}", file=out or sys.stdout,
              flush=True)

    def launch(self, *args, **kwargs):
        node = self._pipeline_node.node_info.id
        say(f"{node} started")
        started = time.monotonic()
        try:
            info = original(self, *args, **kwargs)
        except BaseException:
            say(f"{node} FAILED after {time.monotonic() - started:.1f} s")
            raise
        took = time.monotonic() - started
        if info is None or not info.execution_id:
            say(f"{node} skipped ({took:.1f} s)")
            return info
        try:
            execution = mlmd_summary.load_execution(connection_config, info.execution_id)
        except KeyError:  # not recorded (a system node's handler): say so, never fail the run
            say(f"{node} done in {took:.1f} s")
            return info
        verb = "cached" if execution.state == "CACHED" else f"done in {took:.1f} s"
        figure = key_figure(execution.outputs)
        say(f"{node} {verb}" + (f": {figure}" if figure else ""))
        return info

    launcher.Launcher.launch = launch
    try:
        yield
    finally:
        launcher.Launcher.launch = original
