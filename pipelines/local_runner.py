"""Runs the feedrec pipeline with TFX's LocalDagRunner (`make run`).

    python -m pipelines.local_runner --data synthetic|movielens --work_dir work

Prepares the raw data (beam_jobs.datasets) on first use, runs the pipeline
with MLMD in <work_dir>/tfx/metadata.sqlite (unchanged steps are served from
the cache on a re-run), then prints models, metrics, blessings, pushed paths
and the report path. SIGTERM / Ctrl-C stop it with one line and exit code
143 / 130; the re-run cancels what the interrupted step left RUNNING
(pipelines.interruption).

Also usable through the tfx CLI, which executes this file as a script with
no arguments (settings then come from FEEDREC_* environment variables):

    tfx pipeline create --engine local --pipeline_path pipelines/local_runner.py
    tfx run create --engine local --pipeline_name feedrec
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from tfx.orchestration.local.local_dag_runner import LocalDagRunner  # noqa: E402

from pipelines import runner_common  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    return runner_common.run_main(LocalDagRunner, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(main())
