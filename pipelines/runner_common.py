"""What the local and Beam runners share: flags, paths, the run summary.

Runners own every path: <work_dir>/raw (datasets), <work_dir>/tfx/<name>/
(pipeline root), <work_dir>/tfx/<name>/metadata.sqlite (MLMD) and
<work_dir>/serving (pushed models, indexes, reports).

Each flag's default can come from a FEEDREC_* environment variable, because
the tfx CLI runs a runner file with no arguments.

`--data` is a built-in dataset (synthetic, movielens: generated or fetched
under <work_dir>/raw) or the path of a dataset YAML (feature_contract.dataset:
the feature config plus a `data:` section naming the tables).

Every run prints a line per component as it starts and ends
(pipelines.progress), keeps Beam's and TensorFlow's INFO / WARNING logs off
unless --verbose, and runs Beam on FnApiRunner unless told otherwise: the
DirectRunner's default first tries to download the Prism runner binary.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from absl import logging as absl_logging
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline

from beam_jobs import datasets, raw_io
from beam_jobs.run_report import DataQualityError
from components.statistics import ValidationConfig, ValidationConfigError
from feature_contract import dataset as dataset_file
from feature_contract import feature_config as fc
from models.validation import ValidationError
from pipelines import interruption, mlmd_summary, profiles, progress
from pipelines.pipeline import RECALL_MODELS, RankingSettings, create_pipeline
from serving import serving_dirs

DEFAULT_PIPELINE_NAME = "feedrec"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where `make bench-funnel` records the built-in datasets' replay; a replay of
# other data is written under the bench's work_dir and given by the flag.
FUNNEL_RESULTS = os.path.join(REPO, "bench", "results", "funnel.json")
AUTO = "auto"


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"FEEDREC_{name.upper()}", default)


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=_env("data", datasets.SYNTHETIC),
                        help=f"{' or '.join(datasets.DATASETS)} (built in), or a dataset YAML: "
                             "a feature config with a 'data:' section naming the events / "
                             "users / items globs")
    parser.add_argument("--work_dir", default=_env("work_dir", "work"))
    parser.add_argument("--profile", choices=profiles.PROFILES, default=_env("profile", "default"))
    parser.add_argument("--num_events", type=int, default=_env("num_events", None),
                        help="synthetic log size (default: the profile's; other datasets: "
                             "ignored)")
    parser.add_argument("--pipeline_name", default=_env("pipeline_name", DEFAULT_PIPELINE_NAME))
    parser.add_argument("--recall_models", default=_env("recall_models", ",".join(RECALL_MODELS)),
                        help="comma-separated subset of %s ('' for none)" % (RECALL_MODELS,))
    parser.add_argument("--no_multitask", action="store_true",
                        default=_env("no_multitask", "") == "1")
    parser.add_argument("--no_cache", action="store_true", default=_env("no_cache", "") == "1")
    parser.add_argument("--hparams", action="append",
                        default=[v for v in (_env("hparams", "") or "").split(";") if v],
                        metavar="MODEL=JSON",
                        help="override a model's hparams, e.g. nfwfm='{\"max_epochs\": 1}' "
                             "(FEEDREC_HPARAMS: several joined by ';')")
    parser.add_argument("--auc_tolerance", type=float, default=_env("auc_tolerance", None),
                        help="the ranking gate blesses a candidate whose click AUC is at most "
                             "this much below the baseline's (default: the profile's, 0.001)")
    parser.add_argument("--allow_unevaluable_heads", action="store_true",
                        default=_env("allow_unevaluable_heads", "") == "1",
                        help="bless although a gated head's eval split has no positives "
                             "(or no negatives); by default such a head refuses the model")
    parser.add_argument("--allow_data_anomalies", default=_env("allow_data_anomalies", ""),
                        help="comma-separated anomaly kinds the data checks report without "
                             "blocking the pushes (components.statistics.ANOMALY_KINDS)")
    parser.add_argument("--no_data_checks", action="store_true",
                        default=_env("no_data_checks", "") == "1",
                        help="no DataValidator: statistics and anomalies are not computed")
    parser.add_argument("--training_cluster", default=_env("training_cluster", ""),
                        help="train the ranking models and two_tower under "
                             "ParameterServerStrategy (item2vec and youtubenet stay in process): "
                             "'local:workers=2,ps=2' starts the servers on this machine, "
                             "'tf_config' joins the cluster in TF_CONFIG (default: in process)")
    parser.add_argument("--funnel_results", default=_env("funnel_results", AUTO),
                        help="an offline funnel replay's JSON (make bench-funnel) whose "
                             "figures for this dataset the pipeline report draws; "
                             f"'{AUTO}' (default): for a built-in dataset "
                             f"{os.path.relpath(FUNNEL_RESULTS, REPO)} when it exists; '' "
                             "for none")
    parser.add_argument("--verbose", action="store_true")


@dataclasses.dataclass(frozen=True)
class Built:
    pipeline: tfx_pipeline.Pipeline
    metadata_path: str
    pipeline_name: str
    serving_dir: str
    # What the run reads: its table globs are checked and its config's events
    # announced (recall only) before the run.
    dataset: dataset_file.Dataset | None = None


# Raised from inside a component when the data, not the code, is at fault.
DATA_ERRORS = (DataQualityError, ValidationError)


def has_impressions(config: fc.FeatureConfig) -> bool:
    """Whether some raw event value of the config maps to an impression.

    The ranking stage trains one example per impression (clicks and follows
    are its labels); a log without them (views or clicks only) runs the
    recall stage alone (RankingSettings.enabled False).
    """
    return fc.IMPRESSION in set(config.event_values.values())


def has_follows(config: fc.FeatureConfig) -> bool:
    """Whether some raw event value of the config maps to a follow: the multi-task
    model's second head learns follows, so without them it is left out."""
    return fc.FOLLOW in set(config.event_values.values())


def ranking_settings(ranking: RankingSettings, config: fc.FeatureConfig,
                     no_multitask: bool = False) -> RankingSettings:
    """The profile's ranking settings for this log: no ranking stage without
    impressions, no multi-task model without follows (or with --no_multitask)."""
    keep = not no_multitask and has_follows(config)
    return dataclasses.replace(ranking, enabled=has_impressions(config),
                               multitask=ranking.multitask if keep else None)


def no_follows_notice(config: fc.FeatureConfig, source: str) -> str:
    """The line the runner prints when it leaves the multi-task model out."""
    return (f"{source}: no event value maps to {fc.FOLLOW!r} (event_values "
            f"{dict(config.event_values)}): the multi-task model (click and follow heads) is "
            "left out, its follow head would have nothing to learn; the ranking candidate is "
            "gated and pushed alone.")


def recall_only_notice(config: fc.FeatureConfig, source: str) -> str:
    """The line the runner prints when it leaves the ranking stage out."""
    return (f"{source}: no event value maps to {fc.IMPRESSION!r} (event_values "
            f"{dict(config.event_values)}): recall only. The ranking models train on "
            "impressions, so their trainers, gates and pushes and the data checks (which read "
            "the ranking examples) are left out; serving orders by the recall channels. If the "
            "log records what was shown (e.g. a 'show' event), map that to impression.")


def check_local_tables(tables: Mapping[str, str | None], source: str) -> None:
    """Every local table glob matches a readable file, before anything runs.

    A glob over a remote filesystem (scheme://) is left to the job, whose
    reader checks it where the data lives (the building machine may not be
    able to list it).

    Raises:
      ValueError: a local glob matches no file or a file of no known format;
        the message names the dataset, the table and the glob.
    """
    for table, pattern in tables.items():
        if pattern is None or dataset_file.is_url(pattern):
            continue
        try:
            raw_io.check_table_matches(table, pattern)
        except raw_io.RawTableError as err:
            raise ValueError(f"{source}: {err}") from err


# FnApiRunner is what DirectRunner ends up using for a batch pipeline, after
# first trying to download the Prism runner binary from GitHub (Beam >= 2.6x).
LOCAL_BEAM_RUNNER = "FnApiRunner"


def with_beam_runner(beam_args: Sequence[str]) -> list[str]:
    """beam_args with an explicit --runner (LOCAL_BEAM_RUNNER unless one is given)."""
    args = list(beam_args) or ["--direct_num_workers=1"]
    if any(a == "--runner" or a.startswith("--runner=") for a in args):
        return args
    return [f"--runner={LOCAL_BEAM_RUNNER}", *args]


def quiet_logs(verbose: bool) -> None:
    """Keeps library chatter out of the run's output unless verbose.

    absl at ERROR: ml-metadata 1.17 under tfx 1.21 warns on every resolver
    query ("property_predicate is not supported"), and TFX logs each step at
    INFO. Beam and TensorFlow log through Python logging; TF's C++ side is
    TF_CPP_MIN_LOG_LEVEL, set by every runner module before TF loads. Beam
    pipelines the process builds without a runner (BeamDagRunner's own
    orchestration job) get LOCAL_BEAM_RUNNER too, for the reason above.
    """
    from apache_beam.options.pipeline_options import StandardOptions
    StandardOptions.DEFAULT_RUNNER = LOCAL_BEAM_RUNNER
    level = logging.INFO if verbose else logging.ERROR
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.ERROR)
    for name in ("apache_beam", "tensorflow", "tensorflow_model_analysis", "tfx", "absl"):
        logging.getLogger(name).setLevel(level)


def parse_hparam_overrides(values: list[str]) -> dict[str, dict[str, Any]]:
    """["nfwfm={...}", ...] -> {"nfwfm": {...}}.

    Raises:
      ValueError: no '=' or the value is not a JSON object.
    """
    out = {}
    for value in values:
        model, sep, text = value.partition("=")
        if not sep:
            raise ValueError(f"--hparams wants MODEL=JSON, got {value!r}")
        parsed = json.loads(text)
        if not isinstance(parsed, dict):
            raise ValueError(f"--hparams {model}: want a JSON object, got {text!r}")
        out[model] = parsed
    return out


def _merge(base: dict, overrides: dict) -> dict:
    """Per model, the overrides over the profile's hparams.

    A fixed `learning_rate` in the overrides also drops the profile's
    `learning_rates` grid (a ranking config with a grid ignores its
    learning_rate): the user's fixed rate is the more specific request.
    """
    merged = {}
    for k in set(base) | set(overrides):
        profile, user = dict(base.get(k, {})), overrides.get(k, {})
        if "learning_rate" in user and "learning_rates" not in user:
            profile.pop("learning_rates", None)
        merged[k] = {**profile, **user}
    return merged


def checked_training_cluster(flag: str) -> str:
    """--training_cluster, checked before anything runs ("": in process).

    Raises:
      ValueError: neither "", 'tf_config' nor local:workers=<n>,ps=<m>.
    """
    from models.distributed import cluster, train as distributed_train
    if flag and flag != distributed_train.FROM_TF_CONFIG:
        try:
            cluster.parse_cluster_flag(flag)
        except cluster.ClusterError as err:
            raise ValueError(f"--training_cluster: {err}, or "
                             f"'{distributed_train.FROM_TF_CONFIG}'") from err
    return flag


def data_checks(args: argparse.Namespace, validation: Mapping[str, Any] | None = None,
                source: str = "") -> ValidationConfig | None:
    """The DataValidator thresholds (None: no data checks).

    Args:
      args: --no_data_checks, --allow_data_anomalies (added to the YAML's).
      validation: the dataset YAML's `validation:` section.
      source: the dataset YAML, named in errors.
    Raises:
      ValidationConfigError: an unknown key or kind, or a bad threshold.
    """
    if args.no_data_checks:
        return None
    raw = dict(validation or {})
    flagged = [k for k in (args.allow_data_anomalies or "").split(",") if k]
    raw["allowed_anomalies"] = list(dict.fromkeys([*raw.get("allowed_anomalies", []), *flagged]))
    try:
        return ValidationConfig.from_dict(raw)
    except ValidationConfigError as err:
        raise ValidationConfigError(f"{source}: validation: {err}" if source else str(err)) from err


def funnel_results(flag: str, data: str) -> tuple[str, str]:
    """(path, sha256 of its bytes) of the funnel replay the report draws; ("", "") for none.

    AUTO means FUNNEL_RESULTS when `data` is a built-in dataset and that JSON
    holds its replay: the recorded JSON replays the built-in data only, and a
    dataset YAML may reuse a built-in config's `name` for other logs. The
    hash goes into the report step's parameters, so a re-run after the JSON
    changed is not served the old report from the cache.

    Raises:
      ValueError: a path given explicitly that is not a readable JSON holding
        a replay of this dataset (its `name`), or an unknown `data`; raised
        before any data is prepared. A default that does not fit is no error:
        the report then has no replay rows.
    """
    if not flag:
        return "", ""
    explicit = flag != AUTO
    if not explicit and data not in datasets.DATASETS:
        return "", ""
    path = os.path.abspath(flag) if explicit else FUNNEL_RESULTS
    # A dataset YAML is only read here (nothing is prepared for it).
    name = data if data in datasets.DATASETS else datasets.resolve(data, "").name
    try:
        with open(path, "rb") as f:
            raw = f.read()
        replay = json.loads(raw)
    except (OSError, ValueError) as err:
        if explicit:
            raise ValueError(f"--funnel_results: cannot read {flag!r} as JSON: {err}") from err
        return "", ""
    if not isinstance(replay, dict) or not isinstance(replay.get(name), dict):
        if explicit:
            held = sorted(k for k in replay if not k.startswith("_")) if isinstance(
                replay, dict) else []
            raise ValueError(f"--funnel_results: {flag!r} holds no funnel replay of dataset "
                             f"{name!r} (it holds {held})")
        return "", ""
    return path, hashlib.sha256(raw).hexdigest()


def build(args: argparse.Namespace, beam_args: list[str]) -> Built:
    """Prepares the data and builds the pipeline from parsed flags."""
    # A bad replay fails before any data is prepared.
    replay, replay_sha256 = funnel_results(args.funnel_results, args.data)
    work_dir = os.path.abspath(args.work_dir)
    profile = profiles.get(args.profile, args.data)
    num_events = int(args.num_events or profile.num_events)
    dataset = datasets.resolve(args.data, work_dir, num_events=num_events)
    overrides = parse_hparam_overrides(args.hparams)
    gate = {}
    if args.auc_tolerance is not None:
        gate["auc_tolerance"] = float(args.auc_tolerance)
    if args.allow_unevaluable_heads:
        gate["allow_unevaluable_heads"] = True
    training_cluster = checked_training_cluster(args.training_cluster)
    ranking = ranking_settings(
        dataclasses.replace(profile.ranking, hparams=_merge(dict(profile.ranking.hparams),
                                                            overrides), **gate),
        dataset.config, args.no_multitask)
    models = tuple(m for m in args.recall_models.split(",") if m)
    recall = dataclasses.replace(profile.recall, models=models,
                                 hparams=_merge(dict(profile.recall.hparams), overrides))
    root = os.path.join(work_dir, "tfx", args.pipeline_name)
    metadata_path = os.path.join(root, "metadata.sqlite")
    serving_dir = os.path.join(work_dir, "serving")
    pipeline = create_pipeline(
        pipeline_name=args.pipeline_name, pipeline_root=os.path.join(root, "pipeline_root"),
        dataset=dataset, serving_dir=serving_dir, ranking=ranking, recall=recall,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(metadata_path),
        beam_pipeline_args=with_beam_runner(beam_args),
        enable_cache=not args.no_cache,
        data_checks=data_checks(args, dataset.validation, dataset.source),
        training_cluster=training_cluster,
        funnel_results=replay, funnel_sha256=replay_sha256)
    return Built(pipeline, metadata_path, args.pipeline_name, serving_dir, dataset)


def _connection(built: Built):
    return metadata.sqlite_metadata_connection_config(built.metadata_path)


def run_count(built: Built) -> int:
    """Runs of the pipeline recorded in MLMD so far."""
    if not os.path.exists(built.metadata_path):
        return 0
    return len(mlmd_summary.run_ids(_connection(built), built.pipeline_name))


def print_summary(built: Built, runs_before: int) -> int:
    """Prints the run's summary; returns the process exit code.

    The tfx CLI's `pipeline create` executes a runner with run() patched out;
    no new run is recorded then, and nothing is printed but that.
    """
    if run_count(built) <= runs_before:
        print(f"pipeline {built.pipeline_name} compiled; not run")
        return 0
    summary = mlmd_summary.latest_run(_connection(built), built.pipeline_name)
    print(mlmd_summary.format_summary(summary))
    return 0


def run_main(runner_factory: Callable[[], Any], description: str,
             argv: Sequence[str] | None = None) -> int:
    """Shared main of the local and beam runners: flags -> pipeline -> run -> summary.

    Args:
      runner_factory: builds the TFX DAG runner (LocalDagRunner, BeamDagRunner).
      description: --help text.
      argv: command-line flags; unknown ones are the pipeline's Beam args.
    Returns:
      the process exit code from print_summary, 2 when the flags or the
      dataset are invalid; a SIGTERM / SIGINT ends the process with 143 /
      130 instead (pipelines.interruption).
    """
    parser = argparse.ArgumentParser(description=description)
    add_flags(parser)
    args, beam_args = parser.parse_known_args(argv)
    quiet_logs(args.verbose)
    with interruption.stop_on_signals():
        try:
            built = build(args, beam_args)
            # Before the first component starts: an empty glob would otherwise
            # surface as a traceback from inside ClickLogExampleGen.
            check_local_tables(built.dataset.tables, built.dataset.source)
        except ValueError as err:
            # A bad --data, dataset YAML or flag value: the message names it
            # (file and key); a traceback would only bury it.
            print(f"error: {err}", file=sys.stderr)
            return 2
    config = built.dataset.config
    if not has_impressions(config):
        print(recall_only_notice(config, built.dataset.source))
    elif not has_follows(config) and not args.no_multitask:
        print(no_follows_notice(config, built.dataset.source))
    with interruption.stop_on_signals(
            lambda: interruption.running_steps(built.metadata_path, built.pipeline_name)):
        lock = interruption.run_lock(built.metadata_path)
        serving_lock = None
        try:
            runner = runner_factory()
            try:
                serving_lock = claim_serving_dir(built, args.data, runner)
            except serving_dirs.ServingDirError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            clean_interrupted_runs(built, lock is not None)
            before = run_count(built)
            with progress.reporting(_connection(built)):
                runner.run(built.pipeline)
        except DATA_ERRORS as err:
            # The data cannot train what the pipeline builds (the sessionize
            # job's stop rules, too few examples to carve a validation split):
            # the message says what and where; a traceback from inside a
            # component would only bury it.
            print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
            return 2
        finally:
            for held in (lock, serving_lock):
                if held is not None:
                    held.close()
    return print_summary(built, before)


def claim_serving_dir(built: Built, data: str, runner: Any) -> IO[str] | None:
    """Makes <work_dir>/serving this dataset's before anything is pushed (serving.serving_dirs).

    Another dataset's serving dir is parked beside it and this one's taken
    back, with one line saying so. Returns the serving dirs' lock, held
    (shared) until the caller closes it at the end of the run: no other
    dataset's run moves the dir while this one pushes, whatever its pipeline
    name. None under the tfx CLI's `pipeline create / update / compile`,
    which call the runner with its run() patched out: nothing will be pushed,
    so nothing is moved (`tfx run create` runs this file unpatched).
    """
    if hasattr(type(runner).run, "__wrapped__"):  # the CLI's DagRunnerPatcher
        return None
    stamp = serving_dirs.Stamp(built.dataset.name, os.path.abspath(data)
                               if dataset_file.is_dataset_file(data) else data)
    moves, lock = serving_dirs.claim(built.serving_dir, stamp)
    for move in moves:
        print(move)
    return lock


def clean_interrupted_runs(built: Built, holds_lock: bool) -> None:
    """Cancels what an interrupted earlier run left RUNNING (see pipelines.interruption).

    Args:
      built: the pipeline about to run.
      holds_lock: whether this process holds the pipeline's run lock; without
        it another runner is alive and its RUNNING executions are not stale.
    """
    if not holds_lock:
        print(f"another run of {built.pipeline_name} is in progress (lock beside "
              f"{built.metadata_path}); its unfinished executions are left alone", file=sys.stderr)
        return
    cleaned = interruption.reconcile(built.metadata_path, built.pipeline_name,
                                     built.pipeline.pipeline_info.pipeline_root)
    if cleaned:
        print(interruption.cleaned_message(cleaned))
