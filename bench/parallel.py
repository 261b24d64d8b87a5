"""What both training benches share: their datasets, and one child process per dataset.

A `--datasets` entry is a built-in name (synthetic, movielens) or the path of
a dataset YAML (feature_contract.dataset); `sessionize_once` writes its
examples once per distinct input, `default_out` keeps a run on other data out
of bench/results/, and `run_children` runs one process per dataset so the
2 cores work at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from beam_jobs import datasets
from feature_contract import dataset as dataset_file

CONFIG_FILE = "feature_config.yaml"


class DataError(RuntimeError):
    """A bench cannot use a dataset; the message says why (the sessionize
    job's own reason, a missing file) and is all a user needs to see."""


SESSIONIZED_MARKER = "_SESSIONIZED"


def dataset_spec_error(spec: str) -> str | None:
    """Why a `--datasets` entry is unusable, or None: a built-in name, or a
    dataset YAML that exists and loads."""
    if spec in datasets.DATASETS:
        return None
    if not dataset_file.is_dataset_file(spec):
        return (f"unknown dataset {spec!r}: want one of {list(datasets.DATASETS)} or a "
                f"dataset YAML path")
    try:
        dataset_file.load(spec)
    except (OSError, ValueError) as err:  # DatasetError is a ValueError
        return str(err)
    return None


def guarded(main: Callable[[], int]) -> int:
    """Runs a bench's main; a DataError is one `error:` line and exit 2, not a traceback."""
    try:
        return main()
    except DataError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2


def dataset_key(spec: str) -> str:
    """A `--datasets` entry's key in the report: the built-in name, or the YAML's `name`."""
    return spec if spec in datasets.DATASETS else dataset_file.load(spec).name


def default_out(specs: Sequence[str], results_json: str, work_dir: str, bench: str,
                partial: str = "") -> str:
    """Where a bench writes its JSON when --out is not given.

    A full run of every built-in dataset is the recorded result (results_json,
    under bench/results/). Anything less goes under work_dir, outside the
    tracked files, named after its datasets, so it never replaces the record:
    some of the built-in datasets (`--datasets movielens` would otherwise
    replace both datasets' record with one), other data, or a run the bench
    calls `partial` (e.g. "quick", "models", "hparams": part of the name).
    """
    if not partial and sorted(set(specs)) == sorted(datasets.DATASETS):
        return results_json
    tag = f"{partial}-" if partial else ""
    return os.path.join(work_dir, f"{bench}-{tag}{'+'.join(dataset_key(s) for s in specs)}.json")


def job_digest() -> str:
    """A digest of the code that writes examples (beam_jobs, feature_contract).

    Part of every examples directory's name: examples written by an older
    version of the job (other labels, another layout) are never reused.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for package in ("beam_jobs", "feature_contract"):
        for folder, dirs, files in os.walk(os.path.join(root, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(f for f in files if f.endswith((".py", ".yaml"))):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


def _examples_dir_name(data: dataset_file.Dataset) -> str:
    """Built-in: the raw directory's name (synthetic-<events>-<seed>, movielens);
    a dataset YAML: its name. Either way plus a digest of the config, of what
    the globs match now and of the job's code, so new data, a new config or a
    new version of the job is sessionized again."""
    digest = hashlib.sha256((data.config_yaml + datasets.fingerprint(data.tables)
                             + job_digest()).encode()).hexdigest()[:12]
    if data.source in datasets.DATASETS:
        return f"{os.path.basename(os.path.dirname(data.events))}-{digest}"
    return f"{data.name}-{digest}"


def sessionize_once(spec: str, work_dir: str, num_events: int, out_root: str
                    ) -> tuple[str, str, dict[str, Any]]:
    """Runs `python -m beam_jobs.sessionize` on a dataset unless a completed run's output exists.

    Completed: the job exited 0, marked by SESSIONIZED_MARKER written after
    it. The job writes summary.json before its stop rules can fail it, so
    summary.json alone would let a rerun use data the job refused. A failed
    run's output stays for its dead letters, unmarked: the next run removes
    it, reruns the job and fails the same way.

    Args:
      spec: built-in name or dataset YAML.
      work_dir: where built-in datasets are prepared.
      num_events: synthetic log size.
      out_root: parent of the per-dataset examples directories.
    Returns:
      (feature config path, sessionize output dir, summary.json).
    Raises:
      DataError: the dataset cannot be resolved, or the job failed (its own
        last message, e.g. the dead-letter stop rule's reasons, is the
        error's): a benchmark never falls back to other data.
    """
    try:
        data = datasets.resolve(spec, work_dir, num_events=num_events)
    except (OSError, ValueError) as err:  # DatasetError, MovieLensError are ValueErrors
        raise DataError(str(err)) from None
    out_dir = os.path.join(out_root, _examples_dir_name(data))
    config_path = os.path.join(out_dir, CONFIG_FILE)
    summary = os.path.join(out_dir, "summary.json")
    marker = os.path.join(out_dir, SESSIONIZED_MARKER)
    if not os.path.exists(marker):
        shutil.rmtree(out_dir, ignore_errors=True)  # an interrupted or failed run's files
        os.makedirs(out_dir, exist_ok=True)
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(data.config_yaml)
        # An explicit runner: Beam's default DirectRunner first tries to
        # download the Prism runner binary.
        cmd = [sys.executable, "-m", "beam_jobs.sessionize", "--config", config_path,
               "--events", data.events, "--output_dir", out_dir, "--runner=FnApiRunner"]
        for table in ("users", "items"):
            if data.tables[table]:
                cmd += [f"--{table}", data.tables[table]]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            # The output stays (the message may point at its dead letters)
            # but unmarked: the next run starts over and fails the same way.
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit code {done.returncode}"
            raise DataError(f"{spec}: the sessionize job failed: {reason}")
        with open(marker, "w", encoding="utf-8") as f:
            f.write(" ".join(cmd) + "\n")
    with open(summary, encoding="utf-8") as f:
        return config_path, out_dir, json.load(f)


def set_tf_threads(threads: int) -> None:
    """TensorFlow's intra- and inter-op pools at `threads` each (0: TensorFlow's default).

    A child of run_children gets its share of the cores this way; it must run
    before TensorFlow executes its first op.
    """
    if threads:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


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
