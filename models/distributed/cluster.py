"""A training cluster: worker and parameter-server processes, and how the coordinator finds them.

Two ways to get one, one code path after that:

  real cluster   every pod runs `python -m models.distributed.cluster` with its
                 TF_CONFIG (job "worker" or "ps"); the coordinator (job
                 "chief") reads its own TF_CONFIG through cluster_resolver().
  this machine   LocalCluster starts the same entry point as subprocesses on
                 free loopback ports, each with its own TF_CONFIG, and hands
                 the coordinator a resolver of that cluster.

The servers run in processes of their own, never as in-process servers of the
coordinator: in-process clusters (the TF tutorial's
`create_in_process_cluster`) hang here, separate processes do not.

A server process exits when its parent goes away (it polls its parent pid), so
a coordinator killed without cleanup leaves no orphan servers behind.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

WORKER, PS, CHIEF = "worker", "ps", "chief"
LOCAL_PREFIX = "local:"
LOOPBACK = "127.0.0.1"
# How often a server process checks that its parent is still alive.
_PARENT_POLL_SECONDS = 1.0


class ClusterError(RuntimeError):
    """A cluster that cannot be described or started; the message says why."""


@dataclasses.dataclass(frozen=True)
class ClusterShape:
    """How many worker and parameter-server tasks a local cluster has.

    Attributes:
      workers: worker tasks (each runs training steps).
      ps: parameter-server tasks (each holds a share of the variables).
    """

    workers: int
    ps: int

    def __post_init__(self):
        for name in ("workers", "ps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ClusterError(f"{name} must be an integer >= 1, got {value!r}")


def parse_cluster_flag(flag: str) -> ClusterShape:
    """`local:workers=2,ps=2` -> ClusterShape(2, 2).

    Raises:
      ClusterError: not of the form local:workers=<n>,ps=<m>.
    """
    match = re.fullmatch(r"local:workers=(\d+),ps=(\d+)", flag.strip())
    if not match:
        raise ClusterError(f"training cluster {flag!r} is not of the form "
                           f"'local:workers=<n>,ps=<m>'")
    return ClusterShape(workers=int(match.group(1)), ps=int(match.group(2)))


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct ports that were free on `host` a moment ago.

    All sockets stay open until every port is picked, so the kernel cannot hand
    the same port out twice; a port may still be taken by someone else between
    now and the server's bind (the server then fails to start and
    LocalCluster.start says so).
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def local_cluster_spec(shape: ClusterShape, host: str = LOOPBACK) -> dict[str, list[str]]:
    """{"worker": [host:port, ...], "ps": [...]} on free ports of `host`."""
    ports = free_ports(shape.workers + shape.ps, host)
    return {WORKER: [f"{host}:{p}" for p in ports[:shape.workers]],
            PS: [f"{host}:{p}" for p in ports[shape.workers:]]}


def tf_config(cluster_spec: Mapping[str, Sequence[str]], job: str, index: int) -> str:
    """The TF_CONFIG JSON of task `job`:`index` of `cluster_spec`."""
    return json.dumps({"cluster": {k: list(v) for k, v in cluster_spec.items()},
                       "task": {"type": job, "index": index}})


class LocalCluster:
    """Worker and PS servers as subprocesses of this process, on loopback.

    Use as a context manager: the servers are up inside the block and stopped
    (terminated, then killed if they linger) when it exits, also on errors.
    Call start(wait=False) before entering to let them boot meanwhile.

    Args:
      shape: how many workers and parameter servers.
      host: address the servers listen on.
      start_timeout_s: how long start() waits for every server to accept
        connections.
    """

    def __init__(self, shape: ClusterShape, host: str = LOOPBACK, start_timeout_s: float = 120.0):
        self.shape = shape
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.cluster_spec = local_cluster_spec(shape, host)
        self.processes: dict[tuple[str, int], subprocess.Popen] = {}

    def __enter__(self) -> "LocalCluster":
        try:
            if not self.processes:
                self.start(wait=False)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values()]

    def start(self, wait: bool = True) -> None:
        """Starts every server; with `wait`, also wait_ready().

        wait=False returns at once, so the caller can do other work (build
        datasets, train a baseline) while the servers import TensorFlow.
        """
        for job in (PS, WORKER):
            for index, _ in enumerate(self.cluster_spec[job]):
                env = {**os.environ, "TF_CONFIG": tf_config(self.cluster_spec, job, index),
                       "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
                # A session of its own: a Ctrl-C meant for the coordinator
                # reaches the servers only through stop(), in order.
                self.processes[(job, index)] = subprocess.Popen(
                    [sys.executable, "-m", "models.distributed.cluster",
                     "--parent_pid", str(os.getpid())],
                    env=env, stdout=subprocess.DEVNULL, start_new_session=True)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Waits until every server accepts connections.

        Raises:
          ClusterError: a server exited, or did not listen within
            start_timeout_s of this call.
        """
        deadline = time.monotonic() + self.start_timeout_s
        for (job, index), proc in self.processes.items():
            address = self.cluster_spec[job][index]
            while not _accepts_connections(address):
                if proc.poll() is not None:
                    raise ClusterError(f"{job} task {index} ({address}) exited with code "
                                       f"{proc.returncode} before listening")
                if time.monotonic() > deadline:
                    raise ClusterError(f"{job} task {index} ({address}) not listening after "
                                       f"{self.start_timeout_s:.0f} s")
                time.sleep(0.2)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM every server, SIGKILL those still alive after grace_s; reaps them all."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def resolver(self) -> Any:
        """A ClusterResolver of these servers, for the coordinator."""
        import tensorflow as tf  # noqa: PLC0415 (servers and the flag parser need no TF import)
        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(self.cluster_spec), rpc_layer="grpc")


def _accepts_connections(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def cluster_resolver(local: LocalCluster | None = None) -> Any:
    """The coordinator's ClusterResolver: `local`'s, else TF_CONFIG's.

    Raises:
      ClusterError: no local cluster and no TF_CONFIG with worker and ps jobs.
    """
    if local is not None:
        return local.resolver()
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    jobs = set(config.get("cluster", {}))
    if not {WORKER, PS} <= jobs:
        raise ClusterError(f"TF_CONFIG must describe 'worker' and 'ps' jobs, got "
                           f"{sorted(jobs) or 'no TF_CONFIG'}")
    import tensorflow as tf  # noqa: PLC0415
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _exit_when_parent_dies(parent_pid: int) -> None:
    """Background thread body: exits the process once `parent_pid` is gone."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(0)  # noqa: SLF001 (Server.join() never returns; nothing to clean up)
        time.sleep(_PARENT_POLL_SECONDS)


def run_server(argv: Sequence[str] | None = None) -> None:
    """Entry point of a worker or PS process: serves its TF_CONFIG task until killed.

    Flags:
      --parent_pid: exit when this process stops being the parent (set by
        LocalCluster; omitted on a real cluster, where the pod's life is the
        server's).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent_pid", type=int, default=None)
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        threading.Thread(target=_exit_when_parent_dies, args=(args.parent_pid,),
                         daemon=True).start()
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf  # noqa: PLC0415
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    job, index = resolver.task_type, resolver.task_id
    if job not in (WORKER, PS):
        raise ClusterError(f"TF_CONFIG task type must be 'worker' or 'ps', got {job!r}")
    config = tf.compat.v1.ConfigProto()
    if job == WORKER:
        # The TF guide's setting for workers sharing few cores: enough
        # inter-op threads that a step waiting on a PS read does not block the
        # other ops of the same worker.
        config.inter_op_parallelism_threads = len(resolver.cluster_spec().as_dict()[WORKER]) + 1
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=job, task_index=index,
                                  protocol="grpc", config=config, start=True)
    server.join()


if __name__ == "__main__":
    run_server()
