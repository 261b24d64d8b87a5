"""Compiles the feedrec pipeline to a Kubeflow Pipelines v2 / Vertex AI JSON spec.

    python -m pipelines.kubeflow_v2_runner --output_dir build \
        --pipeline_root gs://BUCKET/feedrec --data_root gs://BUCKET/raw/synthetic \
        --serving_dir gs://BUCKET/serving --image gcr.io/PROJECT/feedrec:latest

Nothing is submitted: the JSON (`<output_dir>/<pipeline_name>.json`) is what
`gcloud ai` / the KFP client submits. The image must contain this repository
(the components are Python functions imported by module path).
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
from feature_contract import feature_config  # noqa: E402
from pipelines import profiles  # noqa: E402
from pipelines.pipeline import RECALL_MODELS, create_pipeline  # noqa: E402

def compile_pipeline(output_dir: str, pipeline_name: str, pipeline_root: str, data: str,
                     data_root: str, serving_dir: str, image: str, profile: str = profiles.DEFAULT,
                     config_path: str | None = None, recall_models: Sequence[str] = RECALL_MODELS,
                     beam_pipeline_args: Sequence[str] = ()) -> str:
    """Writes <output_dir>/<pipeline_name>.json; returns its path.

    Args:
      data_root: directory holding the raw tables (events/users/items).
      config_path: the feature config as the container sees it (default: the
        built-in config of `data` inside the installed package).
    """
    settings = profiles.get(profile, data)
    # Raw tables are named events.*, users.*, items.* (README "Raw click-log format").
    events, users, items = (os.path.join(data_root, f"{name}.*")
                            for name in ("events", "users", "items"))
    pipeline = create_pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root,
        config_path=config_path or feature_config.builtin_config_path(data),
        events=events, users=users, items=items, serving_dir=serving_dir,
        ranking=settings.ranking,
        recall=dataclasses.replace(settings.recall, models=tuple(recall_models)),
        beam_pipeline_args=beam_pipeline_args)
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
    parser.add_argument("--data", choices=datasets.DATASETS, default=datasets.SYNTHETIC)
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--serving_dir", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--profile", choices=profiles.PROFILES, default=profiles.DEFAULT)
    parser.add_argument("--config_path", default=None)
    parser.add_argument("--recall_models", default=",".join(RECALL_MODELS))
    args, beam_args = parser.parse_known_args(argv)
    path = compile_pipeline(args.output_dir, args.pipeline_name, args.pipeline_root, args.data,
                            args.data_root, args.serving_dir, args.image, args.profile,
                            args.config_path, [m for m in args.recall_models.split(",") if m],
                            beam_args)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
