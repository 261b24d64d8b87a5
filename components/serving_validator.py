"""ServingValidator: the model must load in the model server and answer a real request.

Our InfraValidator: the candidate SavedModel is loaded into
serving.model_server (TF Serving's gRPC API), sent one Predict built from real
eval examples, and the answer is checked (every output has one row per
example, is finite, and ranking probabilities are in [0, 1]). The result is a
standard InfraBlessing (custom property blessed = 1/0 and a `reason`), which
the Pusher requires; a model that cannot load or answer is never pushed, and
the failure is recorded instead of crashing the run.

It is also where the data checks stop the pushes: every Pusher and the FAISS
index builder require this blessing, so with DataValidator's `anomalies`
given and blocking (components.statistics.pushes_allowed) the model is
refused before any request, with the anomalies as the reason.
"""

import os
import time
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from feature_contract import feature_config as fc
from components import adapters
from components.artifacts import DataAnomalies, FeatureVocabulary
from components.example_gen import CONFIG_FILE
from components.statistics import pushes_allowed

RANKING, USER_TOWER = "ranking", "user_tower"
MODEL_KINDS = (RANKING, USER_TOWER)
BLESSED_KEY, REASON_KEY = "blessed", "reason"


def read_serialized_examples(examples_dir: str, split: str, num_examples: int) -> np.ndarray:
    """Up to num_examples serialized tf.Examples of one split, object array [N]."""
    files = sorted(tf.io.gfile.glob(os.path.join(examples_dir, f"Split-{split}", "*.gz")))
    if not files:
        raise FileNotFoundError(f"no examples under {examples_dir}/Split-{split}")
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").take(num_examples)
    return np.array([record.numpy() for record in dataset], dtype=object)


def check_outputs(outputs: dict[str, np.ndarray], num_rows: int, kind: str) -> list[str]:
    """Problems with a Predict answer ([] when it is fine)."""
    problems = []
    if not outputs:
        return ["the response has no outputs"]
    for name, value in outputs.items():
        value = np.asarray(value)
        if value.ndim == 0 or value.shape[0] != num_rows:
            problems.append(f"output {name!r} has shape {list(value.shape)}, want {num_rows} rows")
            continue
        if value.dtype.kind not in "fiu":
            continue
        if not np.all(np.isfinite(value)):
            problems.append(f"output {name!r} has NaN or inf")
        elif kind == RANKING and (value.min() < 0.0 or value.max() > 1.0):
            problems.append(f"output {name!r} is not a probability: "
                            f"range [{value.min():.4g}, {value.max():.4g}]")
    return problems


def build_request(kind: str, examples_dir: str, config_path: str, num_examples: int
                  ) -> dict[str, Any]:
    """A Predict request's inputs from real eval examples.

    Raises:
      ValueError: unknown model kind.
    """
    if kind == RANKING:
        return {"examples": read_serialized_examples(examples_dir, fc.EVAL, num_examples)}
    if kind == USER_TOWER:
        return adapters.user_tower_request(config_path, examples_dir, fc.EVAL, num_examples)
    raise ValueError(f"model kind {kind!r} not in {MODEL_KINDS}")


def validate(model_dir: str, model_name: str, kind: str, examples_dir: str, config_path: str,
             num_examples: int) -> tuple[bool, str, dict[str, Any]]:
    """Serves model_dir and checks one Predict; returns (ok, reason, stats)."""
    request = build_request(kind, examples_dir, config_path, num_examples)
    rows = len(next(iter(request.values())))
    start = time.perf_counter()
    try:
        outputs = adapters.serve_and_predict(model_dir, model_name, request)
    except (RuntimeError, grpc.RpcError, OSError) as err:
        detail = err.details() if isinstance(err, grpc.RpcError) else str(err)
        return False, f"serving failed: {detail}", {"examples": rows}
    stats = {"examples": rows, "seconds": time.perf_counter() - start,
             "outputs": sorted(outputs)}
    problems = check_outputs(outputs, rows, kind)
    if problems:
        return False, "; ".join(problems), stats
    return True, f"served {rows} real eval examples, outputs {sorted(outputs)} valid", stats


@component
def ServingValidator(  # noqa: N802
        model: InputArtifact[standard_artifacts.Model],
        examples: InputArtifact[standard_artifacts.Examples],
        vocabulary: InputArtifact[FeatureVocabulary],
        blessing: OutputArtifact[standard_artifacts.InfraBlessing],
        model_name: Parameter[str],
        model_kind: Parameter[str] = RANKING,
        num_examples: Parameter[int] = 64,
        data_anomalies: InputArtifact[DataAnomalies] = None):
    """Loads the model into the model server and sends a real Predict request.

    Args:
      model: Model artifact (Format-Serving/ SavedModel).
      examples: Examples whose Split-eval builds the request (ranking examples
        for a ranking model, retrieval examples for a user tower).
      vocabulary: carries the feature config (user-tower requests).
      blessing: InfraBlessing with custom properties blessed (1/0) and reason.
      model_name: the name the model is served under.
      model_kind: "ranking" (serialized tf.Example input) or "user_tower"
        (raw user + context features).
      num_examples: request batch size.
      data_anomalies: DataValidator's verdict; blocking anomalies refuse the model.
    """
    if model_kind not in MODEL_KINDS:
        raise ValueError(f"model_kind {model_kind!r} not in {MODEL_KINDS}")
    data_ok, data_why = pushes_allowed(data_anomalies) if data_anomalies is not None else (True, "")
    if not data_ok:
        ok, reason, stats = False, f"data checks block the push: {data_why}", {}
    else:
        ok, reason, stats = validate(path_utils.serving_model_dir(model.uri), model_name, model_kind,
                                     examples.uri, os.path.join(vocabulary.uri, CONFIG_FILE),
                                     num_examples)
    blessing.set_int_custom_property(BLESSED_KEY, int(ok))
    blessing.set_string_custom_property(REASON_KEY, reason)
    blessing.set_int_custom_property("request_examples", int(stats.get("examples", 0)))
    if "seconds" in stats:
        blessing.set_float_custom_property("predict_seconds", float(stats["seconds"]))
    # The Pusher reads only the custom property; the marker file mirrors
    # TFX's InfraValidator for tools that look at the URI.
    with tf.io.gfile.GFile(os.path.join(blessing.uri, "INFRA_BLESSED" if ok else
                                        "INFRA_NOT_BLESSED"), "w") as f:
        f.write(reason + "\n")
