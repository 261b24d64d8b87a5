"""Runs the feedrec pipeline with TFX's BeamDagRunner.

    python -m pipelines.beam_runner --data synthetic --work_dir work \
        --direct_num_workers=2 --direct_running_mode=multi_processing

The orchestration itself is a Beam job (one DoFn per component, run in DAG
order). Flags this runner does not know (`--runner`, `--direct_num_workers`,
Flink/Spark/Dataflow options) are the pipeline's beam_pipeline_args, used by
every Beam-powered component (ClickLogExampleGen's sessionize job, the
Evaluators); the orchestrating job keeps the default runner, since passing it
options selects TFX's deprecated legacy BeamDagRunner. Same flags, paths, MLMD and summary as pipelines.local_runner;
usable from the tfx CLI with `--engine beam`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner  # noqa: E402

from pipelines import runner_common  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    return runner_common.run_main(BeamDagRunner, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    sys.exit(main())
