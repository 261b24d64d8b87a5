"""Compiles the feedrec pipeline to a Kubeflow Pipelines v2 / Vertex AI JSON spec.

    python -m pipelines.kubeflow_v2_runner --output_dir build \
        --pipeline_root gs://BUCKET/feedrec --data_root gs://BUCKET/raw/synthetic \
        --serving_dir gs://BUCKET/serving --image gcr.io/PROJECT/feedrec:latest

Nothing is submitted: the JSON (`<output_dir>/<pipeline_name>.json`) is what
`gcloud ai` / the KFP client submits. The image must contain this repository
(the components are Python functions imported by module path).

`--data` is a built-in dataset (its tables `events.*`, `users.*`, `items.*`
under --data_root) or a dataset YAML on this machine, whose relative globs
are resolved against --data_root instead of the YAML's folder. Either way the
spec carries the feature config itself (ClickLogExampleGen's
`feature_config`), never a path of the compiling machine.

Caching is off by default here: Vertex / KFP decide from the spec alone and
run no driver before the cache lookup, so ClickLogExampleGen's input
fingerprint (the local and beam runners' way of noticing new data at the same
path) cannot take part. `--enable_cache` is safe when each run reads a new
data root (e.g. dated directories).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from tfx.orchestration.kubeflow.v2.kubeflow_v2_dag_runner import (  # noqa: E402
    KubeflowV2DagRunner, KubeflowV2DagRunnerConfig)

from beam_jobs import datasets  # noqa: E402
from feature_contract import dataset as dataset_file  # noqa: E402
from pipelines import profiles, runner_common  # noqa: E402
from components.statistics import ValidationConfig  # noqa: E402
from pipelines.pipeline import PREVIOUS_RUN, RECALL_MODELS, create_pipeline  # noqa: E402


def cluster_dataset(data: str, data_root: str) -> dataset_file.Dataset:
    """The dataset as the cluster sees it: tables under data_root, config inline.

    Args:
      data: a built-in name (tables data_root/{events,users,items}.*) or a
        dataset YAML whose relative globs are taken relative to data_root.
      data_root: the raw tables' root as the cluster sees it (gs://...).
    """
    if data in datasets.DATASETS:
        # Raw tables are named events.*, users.*, items.* (README "Raw click-log format").
        return dataset_file.builtin(data, *(dataset_file.resolve_glob(f"{table}.*", data_root)
                                            for table in dataset_file.TABLES))
    return dataset_file.load(data, base_dir=data_root)


def compile_pipeline(output_dir: str, pipeline_name: str, pipeline_root: str, data: str,
                     data_root: str, serving_dir: str, image: str, profile: str = profiles.DEFAULT,
                     recall_models: Sequence[str] = RECALL_MODELS,
                     beam_pipeline_args: Sequence[str] = (), enable_cache: bool = False) -> str:
    """Writes <output_dir>/<pipeline_name>.json; returns its path.

    Args:
      data: built-in dataset name or dataset YAML (see cluster_dataset).
      data_root: directory holding the raw tables, as the cluster sees it.
      enable_cache: let KFP reuse a step with an identical spec (off: see
        the module docstring).
    """
    dataset = cluster_dataset(data, data_root)
    settings = profiles.get(profile, dataset.name)
    pipeline = create_pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root, dataset=dataset,
        serving_dir=serving_dir,
        # A log without impressions compiles the recall stage alone, one without follows no
        # multi-task model, as the local runners run them.
        ranking=runner_common.ranking_settings(settings.ranking, dataset.config),
        recall=dataclasses.replace(settings.recall, models=tuple(recall_models)),
        beam_pipeline_args=runner_common.with_beam_runner(beam_pipeline_args),
        enable_cache=enable_cache,
        data_checks=ValidationConfig.from_dict(dataset.validation),
        # The V2 compiler takes only TFX's Latest* resolver strategies.
        drift_baseline=PREVIOUS_RUN)
    filename = f"{pipeline_name}.json"
    runner = KubeflowV2DagRunner(config=KubeflowV2DagRunnerConfig(default_image=image),
                                 output_dir=output_dir, output_filename=filename)
    runner.run(pipeline, write_out=True)
    return os.path.join(output_dir, filename)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="build")
    parser.add_argument("--pipeline_name", default="feedrec")
    parser.add_argument("--pipeline_root", required=True)
    parser.add_argument("--data", default=datasets.SYNTHETIC,
                        help=f"{' or '.join(datasets.DATASETS)}, or a dataset YAML (relative "
                             "globs are taken relative to --data_root)")
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--serving_dir", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--profile", choices=profiles.PROFILES, default=profiles.DEFAULT)
    parser.add_argument("--recall_models", default=",".join(RECALL_MODELS))
    parser.add_argument("--enable_cache", action="store_true",
                        help="let KFP reuse steps with an identical spec (it cannot see new "
                             "data at the same path)")
    args, beam_args = parser.parse_known_args(argv)
    runner_common.quiet_logs(verbose=False)
    path = compile_pipeline(args.output_dir, args.pipeline_name, args.pipeline_root, args.data,
                            args.data_root, args.serving_dir, args.image, args.profile,
                            [m for m in args.recall_models.split(",") if m], beam_args,
                            args.enable_cache)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
