"""Runs the feedrec pipeline with TFX's LocalDagRunner (`make run`).

    python -m pipelines.local_runner --data synthetic|movielens --work_dir work

Prepares the raw data (beam_jobs.datasets) on first use, runs the pipeline
with MLMD in <work_dir>/tfx/metadata.sqlite (unchanged steps are served from
the cache on a re-run), then prints models, metrics, blessings, pushed paths
and the report path.

Also usable through the tfx CLI, which executes this file as a script with
no arguments (settings then come from FEEDREC_* environment variables):

    tfx pipeline create --engine local --pipeline_path pipelines/local_runner.py
    tfx run create --engine local --pipeline_name feedrec
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from absl import logging as absl_logging  # noqa: E402
from tfx.orchestration.local.local_dag_runner import LocalDagRunner  # noqa: E402

from pipelines import runner_common  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    runner_common.add_flags(parser)
    args, beam_args = parser.parse_known_args(argv)
    # ERROR by default: ml-metadata 1.17 under tfx 1.21 warns on every resolver
    # query ("property_predicate is not supported"), drowning the summary.
    absl_logging.set_verbosity(absl_logging.INFO if args.verbose else absl_logging.ERROR)
    built = runner_common.build(args, beam_args)
    before = runner_common.run_count(built)
    LocalDagRunner().run(built.pipeline)
    return runner_common.print_summary(built, before)


if __name__ == "__main__":
    sys.exit(main())
