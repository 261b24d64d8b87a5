"""One child process per dataset: how both training benches use the 2 cores."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def thread_share(num_children: int) -> int:
    """TensorFlow threads per child: an even share of the cores, at least 1."""
    return max(1, (os.cpu_count() or 1) // max(1, num_children))


def run_children(commands: Mapping[str, tuple[Sequence[str], str]],
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs every dataset's (command, output JSON) at once; returns {dataset: its report}.

    Raises:
      SystemExit: a child exited non-zero (named with its exit code).
    """
    procs = {}
    for dataset, (cmd, out) in commands.items():
        log(f"started {' '.join(cmd)}")
        procs[dataset] = (subprocess.Popen(list(cmd)), out)
    results = {}
    for dataset, (proc, out) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"[{dataset}] benchmark process failed (exit {proc.returncode})")
        with open(out, encoding="utf-8") as f:
            results[dataset] = json.load(f)[dataset]
    return results
