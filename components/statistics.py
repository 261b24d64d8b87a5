"""DataValidator: per-split statistics of an Examples artifact and the data checks.

Our stand-in for TFDV's StatisticsGen + ExampleValidator (TFDV is not
installable here). It runs beam_jobs.statistics over every split of the
examples ExampleGen wrote, reading the feature config and vocabularies from
the FeatureVocabulary artifact (the contract ExampleGen resolved), and checks:

  split_empty        a split has no examples
  feature_missing    a feature of the config has no non-empty value in a split
  missing_fraction   a feature is missing in more examples than its bound
                     (`max_missing_fraction`, per feature, none by default)
  oov_rate           out-of-vocabulary values above `max_oov_rate` (or the
                     feature's `oov_rate_bounds` entry); a wrong vocabulary
                     puts every value out of it
  label_rate         a label's rate outside `label_rate_bounds`
  skew               train vs eval distance above the skew threshold
  drift              this run vs the previous run's statistics (same split)
                     above the drift threshold

Distances are TFDV's: L-infinity distance of the value frequencies for
string features (categorical, tags, sequence), Jensen-Shannon divergence
(log base 2, so within [0, 1]) of the histograms over the config's bucket
boundaries for numeric ones. A threshold of 1.0 never fires.

The baseline is the statistics of the previous DATA: a Resolver
(`previous_statistics_resolver`, PreviousDataStatisticsStrategy) picks the
latest statistics this component computed from other examples than the
current ones, or nothing on the first run (then drift is not checked). A
re-run on unchanged data so resolves the same baseline and is served from
the cache, gates and pushers included.

Anomalies block the pushes unless their kind is in `allowed_anomalies`: the
`anomalies` output carries `blessed` (1 / 0) like a blessing, for the gates
before the Pushers to AND in (`pushes_allowed`).
"""

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
import tensorflow as tf
from tfx.dsl.component.experimental.annotations import (BeamComponentParameter, InputArtifact,
                                                        OutputArtifact, Parameter)
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.components.common import resolver as resolver_lib
from tfx.types import artifact_utils, standard_artifacts

from beam_jobs import statistics as stats_job
from feature_contract import feature_config as fc
from components.artifacts import DataAnomalies, DataStatistics, FeatureVocabulary
from components.example_gen import CONFIG_FILE, VOCAB_DIR
from models.inputs import read_vocab

STATISTICS_FILE, ANOMALIES_FILE = "statistics.json", "anomalies.json"
BLESSED_KEY, REASON_KEY = "blessed", "reason"
COMPONENT_ID, STATISTICS_KEY = "DataValidator", "statistics"
DATASET_KEY = "dataset"  # DataStatistics property: the feature config's name
EXAMPLES_URI_KEY = "examples_uri"  # DataStatistics property: the examples it describes
EXAMPLES_KEY = "examples"  # the resolver's channel of ExampleGen's examples

SPLIT_EMPTY, FEATURE_MISSING, MISSING_FRACTION = "split_empty", "feature_missing", "missing_fraction"
OOV_RATE, LABEL_RATE, SKEW, DRIFT = "oov_rate", "label_rate", "skew", "drift"
ANOMALY_KINDS: tuple[str, ...] = (SPLIT_EMPTY, FEATURE_MISSING, MISSING_FRACTION, OOV_RATE,
                                  LABEL_RATE, SKEW, DRIFT)
L_INFINITY, JENSEN_SHANNON = "l_infinity", "jensen_shannon"


class ValidationConfigError(ValueError):
    """A bad validation setting; the message names it."""


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of the data checks (module doc); defaults measured in README.

    Attributes:
      max_oov_rate: OOV share of a string feature's values in the train split
        (the vocabularies are built from it, so only the vocab_size cap or a
        wrong vocabulary puts values out of it).
      max_eval_oov_rate: the same in the eval split, where values first seen
        after the split time (new users, new items) are OOV too: a cold-start
        share, 1.0 (not checked) by default.
      oov_rate_bounds: feature -> its own OOV bound, every split.
      max_missing_fraction: feature -> largest share of examples without it;
        a feature not listed is flagged only when it is missing everywhere.
      label_rate_bounds: label -> [low, high] its rate must lie in, per split.
      skew_l_infinity, skew_jensen_shannon: train vs eval thresholds.
      drift_l_infinity, drift_jensen_shannon: vs the previous run, per split.
      feature_thresholds: feature -> its skew and drift threshold (1.0 = off).
      min_examples_for_distances: skew and drift are checked only when both
        sides have at least this many examples: below it the distances are
        sampling noise (README, "Data statistics and checks").
      allowed_anomalies: kinds that are reported but do not block the pushes.
    """

    max_oov_rate: float = 0.25
    max_eval_oov_rate: float = 1.0
    oov_rate_bounds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    max_missing_fraction: Mapping[str, float] = dataclasses.field(default_factory=dict)
    label_rate_bounds: Mapping[str, tuple[float, float]] = dataclasses.field(
        default_factory=lambda: {fc.CLICK_LABEL: (0.001, 0.999)})
    skew_l_infinity: float = 0.2
    skew_jensen_shannon: float = 0.2
    drift_l_infinity: float = 0.1
    drift_jensen_shannon: float = 0.1
    feature_thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    min_examples_for_distances: int = 5000
    allowed_anomalies: tuple[str, ...] = ()

    def to_json(self) -> str:
        """Sorted keys: equal settings give the equal string TFX caches on."""
        out = dataclasses.asdict(self)
        out["label_rate_bounds"] = {k: list(v) for k, v in self.label_rate_bounds.items()}
        out["allowed_anomalies"] = list(self.allowed_anomalies)
        return json.dumps(out, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "ValidationConfig":
        """Builds and checks a config (e.g. a YAML `validation:` section).

        Raises:
          ValidationConfigError: an unknown key or kind, a rate outside [0, 1],
            or inverted label bounds.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValidationConfigError(f"unknown validation keys {unknown}; want {sorted(known)}")
        kwargs = dict(raw)
        if "label_rate_bounds" in kwargs:
            kwargs["label_rate_bounds"] = {str(k): tuple(float(b) for b in v)
                                           for k, v in kwargs["label_rate_bounds"].items()}
        if "allowed_anomalies" in kwargs:
            kwargs["allowed_anomalies"] = tuple(kwargs["allowed_anomalies"])
        return _checked(cls(**kwargs))

    @classmethod
    def from_json(cls, text: str) -> "ValidationConfig":
        return cls.from_dict(json.loads(text or "{}"))


def _checked(config: ValidationConfig) -> "ValidationConfig":
    bad = sorted(set(config.allowed_anomalies) - set(ANOMALY_KINDS))
    if bad:
        raise ValidationConfigError(f"allowed_anomalies {bad} are not kinds; want {ANOMALY_KINDS}")
    minimum = config.min_examples_for_distances
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 0:
        raise ValidationConfigError(
            f"min_examples_for_distances must be an integer >= 0, got {minimum!r}")
    rates = {"max_oov_rate": config.max_oov_rate,
             "max_eval_oov_rate": config.max_eval_oov_rate, "skew_l_infinity": config.skew_l_infinity,
             "skew_jensen_shannon": config.skew_jensen_shannon,
             "drift_l_infinity": config.drift_l_infinity,
             "drift_jensen_shannon": config.drift_jensen_shannon}
    for group in ("oov_rate_bounds", "max_missing_fraction", "feature_thresholds"):
        rates.update({f"{group}.{k}": v for k, v in getattr(config, group).items()})
    for label, bounds in config.label_rate_bounds.items():
        if len(bounds) != 2 or bounds[0] > bounds[1]:
            raise ValidationConfigError(
                f"label_rate_bounds.{label} must be [low, high] with low <= high, got {bounds}")
        rates.update({f"label_rate_bounds.{label}": b for b in bounds})
    for key, value in rates.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValidationConfigError(f"{key} must be a number in [0, 1], got {value!r}")
    return config


# ---- distances -----------------------------------------------------------------
def l_infinity_distance(p_counts: Mapping[str, float], q_counts: Mapping[str, float],
                        p_total: float | None = None, q_total: float | None = None) -> float:
    """max over values of |p(v) - q(v)|, p and q the counts' frequencies.

    Args:
      p_counts, q_counts: value -> count (may be the most frequent values only).
      p_total, q_total: what the counts are divided by (default their sums);
        the number of all values when the counts are truncated, so a value
        kept on one side only counts as frequency 0 on the other.
    """
    p_total = sum(p_counts.values()) if p_total is None else p_total
    q_total = sum(q_counts.values()) if q_total is None else q_total
    if not p_total or not q_total:
        return 0.0
    return max((abs(p_counts.get(v, 0) / p_total - q_counts.get(v, 0) / q_total)
                for v in set(p_counts) | set(q_counts)), default=0.0)


def jensen_shannon_divergence(p_counts: Sequence[float], q_counts: Sequence[float]) -> float:
    """JS(p, q) = (KL(p || m) + KL(q || m)) / 2, m = (p + q) / 2, in bits ([0, 1]).

    Args:
      p_counts, q_counts: histogram counts over the same buckets.
    Raises:
      ValueError: the histograms have different bucket counts.
    """
    if len(p_counts) != len(q_counts):
        raise ValueError(f"histograms have {len(p_counts)} and {len(q_counts)} buckets")
    p_total, q_total = sum(p_counts), sum(q_counts)
    if not p_total or not q_total:
        return 0.0
    divergence = 0.0
    for a, b in zip(p_counts, q_counts):
        p, q = a / p_total, b / q_total
        m = (p + q) / 2
        if p:
            divergence += p * math.log2(p / m) / 2
        if q:
            divergence += q * math.log2(q / m) / 2
    return divergence


def feature_distance(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[str, float] | None:
    """(metric, distance) of one feature's statistics in two datasets; None when a
    side has no values (feature_missing reports that) or the buckets differ."""
    if not a.get("num_values") or not b.get("num_values"):
        return None
    if a["type"] == fc.NUMERIC:
        pa, pb = a["histogram"], b["histogram"]
        if pa["boundaries"] != pb["boundaries"]:
            return None
        return JENSEN_SHANNON, jensen_shannon_divergence(pa["counts"], pb["counts"])
    return L_INFINITY, l_infinity_distance(a["value_counts"], b["value_counts"],
                                           a["num_values"], b["num_values"])


# ---- checks --------------------------------------------------------------------
def _anomaly(kind: str, split: str, feature: str | None, value: float | None,
             threshold: float | None, description: str) -> dict[str, Any]:
    return {"kind": kind, "split": split, "feature": feature, "value": value,
            "threshold": threshold, "description": description}


def split_anomalies(split: str, stats: Mapping[str, Any], config: ValidationConfig
                    ) -> list[dict[str, Any]]:
    """Checks of one split on its own: empty, missing, OOV and label rates."""
    n = stats["num_examples"]
    if not n:
        return [_anomaly(SPLIT_EMPTY, split, None, 0, None, f"{split}: no examples")]
    out = []
    for name, feature in stats["features"].items():
        if not feature["count"]:
            out.append(_anomaly(FEATURE_MISSING, split, name, 0, None,
                                f"{split}.{name}: no value in any of {n} examples"))
            continue
        bound = config.max_missing_fraction.get(name)
        if bound is not None and feature["missing_fraction"] > bound:
            out.append(_anomaly(MISSING_FRACTION, split, name, feature["missing_fraction"], bound,
                                f"{split}.{name}: missing in {feature['missing_fraction']:.3f} "
                                f"of examples > {bound}"))
        rate = feature.get("oov_rate")
        bound = config.oov_rate_bounds.get(
            name, config.max_oov_rate if split == fc.TRAIN else config.max_eval_oov_rate)
        if rate is not None and rate > bound:
            out.append(_anomaly(OOV_RATE, split, name, rate, bound,
                                f"{split}.{name}: OOV rate {rate:.3f} > {bound}"))
    for label, (low, high) in config.label_rate_bounds.items():
        label_stats = stats["labels"].get(label)
        rate = label_stats["rate"] if label_stats else None
        if rate is None or not low <= rate <= high:
            out.append(_anomaly(LABEL_RATE, split, label, rate, None,
                                f"{split}.{label}: label rate "
                                f"{'absent' if rate is None else f'{rate:.4f}'} "
                                f"outside [{low}, {high}]"))
    return out


def time_split_features(feature_config: fc.FeatureConfig) -> tuple[str, ...]:
    """Features whose train-vs-eval skew a time split makes by construction.

    hour_of_day and day_of_week are derived from the event time, and a time
    split gives eval the latest period: on a log of a week, eval's weekdays
    are not train's (an L-infinity skew of ~0.7 blocked every push of such a
    log), on a log of a day its hours. That measures the split, not a
    training / serving mismatch, so their skew is not checked; drift (this
    run vs the previous data, split by split) still compares them. None under
    random_users, whose eval spans the whole log.
    """
    if feature_config.split.mode == fc.SPLIT_RANDOM_USERS:
        return ()
    return tuple(f.name for f in feature_config.features if f.source == fc.SOURCE_DERIVED
                 and f.derive in (fc.DERIVE_HOUR, fc.DERIVE_WEEKDAY))


def distance_anomalies(kind: str, where: str, a: Mapping[str, Any], b: Mapping[str, Any],
                       config: ValidationConfig, skip: Sequence[str] = ()
                       ) -> list[dict[str, Any]]:
    """Skew or drift checks of every feature the two statistics share.

    Args:
      kind: SKEW or DRIFT (chooses the thresholds).
      where: the split (drift) or "train-vs-eval" (skew), for the report.
      a, b: one split's statistics each.
      skip: features not checked (time_split_features, for skew).
    """
    thresholds = ({L_INFINITY: config.skew_l_infinity, JENSEN_SHANNON: config.skew_jensen_shannon}
                  if kind == SKEW else
                  {L_INFINITY: config.drift_l_infinity, JENSEN_SHANNON: config.drift_jensen_shannon})
    out = []
    for name in a["features"]:
        if name not in b["features"] or name in skip:
            continue
        measured = feature_distance(a["features"][name], b["features"][name])
        if measured is None:
            continue
        metric, value = measured
        threshold = config.feature_thresholds.get(name, thresholds[metric])
        if value > threshold:
            out.append(_anomaly(kind, where, name, value, threshold,
                                f"{where}.{name}: {kind} {metric.replace('_', '-')} "
                                f"{value:.3f} > {threshold}"))
    return out


def comparisons(current: Mapping[str, Mapping[str, Any]],
                previous: Mapping[str, Mapping[str, Any]] | None
                ) -> list[tuple[str, str, Mapping[str, Any], Mapping[str, Any]]]:
    """(kind, where, a, b) of every distance check: train vs eval (skew), then
    each split vs the same split of the previous run (drift)."""
    out = []
    if fc.TRAIN in current and fc.EVAL in current:
        out.append((SKEW, f"{fc.TRAIN}-vs-{fc.EVAL}", current[fc.TRAIN], current[fc.EVAL]))
    for split, stats in current.items():
        if previous and split in previous:
            out.append((DRIFT, split, previous[split], stats))
    return out


def _too_small(a: Mapping[str, Any], b: Mapping[str, Any], config: ValidationConfig) -> bool:
    return min(a["num_examples"], b["num_examples"]) < config.min_examples_for_distances


def find_anomalies(current: Mapping[str, Mapping[str, Any]],
                   previous: Mapping[str, Mapping[str, Any]] | None,
                   config: ValidationConfig, skew_exempt: Sequence[str] = ()
                   ) -> list[dict[str, Any]]:
    """Every check over a run's statistics.

    Args:
      current: split -> statistics of this run.
      previous: split -> statistics of the previous run, or None (no drift check).
      config: thresholds.
      skew_exempt: features left out of the skew check (time_split_features).
    Returns:
      Anomaly dicts (kind, split, feature, value, threshold, description,
      blocking), in split then check order.
    """
    out = []
    for split, stats in current.items():
        out.extend(split_anomalies(split, stats, config))
    for kind, where, a, b in comparisons(current, previous):
        if not _too_small(a, b, config):
            out.extend(distance_anomalies(kind, where, a, b, config,
                                          skew_exempt if kind == SKEW else ()))
    for anomaly in out:
        anomaly["blocking"] = anomaly["kind"] not in config.allowed_anomalies
    return out


def skipped_checks(current: Mapping[str, Mapping[str, Any]],
                   previous: Mapping[str, Mapping[str, Any]] | None,
                   config: ValidationConfig,
                   no_previous: str = "no previous statistics (first run)",
                   skew_exempt: Sequence[str] = ()) -> list[str]:
    """Why a skew or drift check did not run (shown with the anomalies).

    Args:
      no_previous: why `previous` is None.
      skew_exempt: features left out of the skew check (time_split_features).
    """
    out = [] if previous is not None else [f"drift: {no_previous}"]
    for kind, where, a, b in comparisons(current, previous):
        if _too_small(a, b, config):
            out.append(f"{kind} {where}: not checked, "
                       f"{min(a['num_examples'], b['num_examples'])} examples < "
                       f"min_examples_for_distances {config.min_examples_for_distances}")
        elif kind == SKEW and skew_exempt:
            out.append(f"{kind} {where} of {', '.join(skew_exempt)}: not checked, derived from "
                       "the event time, whose train and eval periods a time split separates "
                       "(drift still compares them with the previous data)")
    return out


# ---- artifacts -----------------------------------------------------------------
def statistics_path(uri: str, split: str) -> str:
    return os.path.join(uri, f"Split-{split}", STATISTICS_FILE)


def read_statistics(uri: str, splits: Sequence[str] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """split -> statistics of a DataStatistics artifact directory.

    Args:
      uri: the artifact's directory.
      splits: in this order (default: every Split-* directory, sorted).
    """
    if splits is None:
        splits = sorted(entry.rstrip("/")[len("Split-"):] for entry in tf.io.gfile.listdir(uri)
                        if entry.startswith("Split-"))
    out = {}
    for split in splits:
        if tf.io.gfile.exists(statistics_path(uri, split)):
            with tf.io.gfile.GFile(statistics_path(uri, split)) as f:
                out[split] = json.load(f)
    return out


def read_anomalies(uri: str) -> dict[str, Any]:
    with tf.io.gfile.GFile(os.path.join(uri, ANOMALIES_FILE)) as f:
        return json.load(f)


def baseline_of(baseline_statistics, dataset: str
                ) -> tuple[dict[str, dict[str, Any]] | None, str]:
    """(the previous run's statistics or None, why None).

    Statistics of another dataset (another feature config name, e.g. the same
    pipeline name run on synthetic, then movielens) are not a baseline: every
    feature would "drift".
    """
    if baseline_statistics is None:
        return None, "no previous statistics (first run)"
    previous_dataset = baseline_statistics.get_string_custom_property(DATASET_KEY)
    if previous_dataset != dataset:
        return None, (f"the previous statistics ({baseline_statistics.uri}) are of dataset "
                      f"{previous_dataset!r}, not {dataset!r}")
    return read_statistics(baseline_statistics.uri), ""


def pushes_allowed(anomalies) -> tuple[bool, str]:
    """(the data checks let the pushes go, why not) of a DataAnomalies artifact."""
    ok = anomalies.get_int_custom_property(BLESSED_KEY) == 1
    return ok, "" if ok else anomalies.get_string_custom_property(REASON_KEY)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_section(anomalies: Mapping[str, Any]) -> list[str]:
    """The report's "Data checks" section (lines) from an anomalies.json dict."""
    found = anomalies["anomalies"]
    blocking = sum(a["blocking"] for a in found)
    verdict = f"**blocked** by {blocking} anomalies" if blocking else "allowed"
    lines = ["## Data checks", "",
             f"Pushes: {verdict} ({len(found)} anomalies found). Previous run's statistics: "
             f"{anomalies.get('baseline_statistics') or 'none'}.", ""]
    if found:
        lines += ["| check | where | feature | value | threshold | blocks |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {a['kind']} | {a['split']} | {_cell(a['feature'])} | {_cell(a['value'])} | "
                  f"{_cell(a['threshold'])} | {'yes' if a['blocking'] else 'no (allowed)'} |"
                  for a in found]
        lines.append("")
    if anomalies.get("notes"):
        lines += [f"- {note}" for note in anomalies["notes"]] + [""]
    return lines


def compute_statistics(pipeline: beam.Pipeline, examples_uri: str, splits: Sequence[str],
                       config: fc.FeatureConfig, vocab_dir: str, out_uri: str) -> None:
    """Adds the statistics job of every split to `pipeline` (run by the caller):
    <out_uri>/Split-<split>/statistics.json."""
    columns = stats_job.columns_of(config)
    vocabularies = {name: read_vocab(vocab_dir, source)
                    for name, source in stats_job.vocabulary_sources(config).items()}
    for split in splits:
        pattern = os.path.join(examples_uri, f"Split-{split}", "*")
        records = (pipeline | f"Read[{split}]" >> beam.io.ReadFromTFRecord(pattern)
                   if tf.io.gfile.glob(pattern)
                   # No file: an empty split, reported as split_empty (a read would fail).
                   else pipeline | f"Read[{split}]" >> beam.Create([]))
        _ = (records
             | f"Statistics[{split}]" >> stats_job.ComputeStatistics(columns, vocabularies)
             | f"ToJson[{split}]" >> beam.Map(json.dumps)
             | f"Write[{split}]" >> beam.io.WriteToText(
                 statistics_path(out_uri, split), shard_name_template="", num_shards=1))


def record_verdict(anomalies_artifact, found: Sequence[Mapping[str, Any]], notes: Sequence[str],
                   baseline_uri: str | None, config: ValidationConfig) -> bool:
    """Writes anomalies.json and the custom properties; returns blessed."""
    blocking = [a for a in found if a["blocking"]]
    blessed = not blocking
    reason = "; ".join(a["description"] for a in blocking)
    if blocking:
        kinds = sorted({a["kind"] for a in blocking})
        reason += (f" (to push anyway: --allow_data_anomalies {','.join(kinds)}, or "
                   f"allowed_anomalies: [{', '.join(kinds)}] in the dataset YAML's validation: "
                   "section)")
    with tf.io.gfile.GFile(os.path.join(anomalies_artifact.uri, ANOMALIES_FILE), "w") as f:
        json.dump({"blessed": blessed, "anomalies": list(found), "notes": list(notes),
                   "baseline_statistics": baseline_uri,
                   "config": json.loads(config.to_json())}, f, indent=1, sort_keys=True)
    anomalies_artifact.set_int_custom_property(BLESSED_KEY, int(blessed))
    anomalies_artifact.set_int_custom_property("num_anomalies", len(found))
    anomalies_artifact.set_int_custom_property("num_blocking", len(blocking))
    anomalies_artifact.set_string_custom_property(REASON_KEY, reason)
    anomalies_artifact.set_string_custom_property("baseline_statistics", baseline_uri or "")
    return blessed


@component(use_beam=True)
def DataValidator(  # noqa: N802 - TFX component names are CamelCase
        examples: InputArtifact[standard_artifacts.Examples],
        vocabulary: InputArtifact[FeatureVocabulary],
        statistics: OutputArtifact[DataStatistics],
        anomalies: OutputArtifact[DataAnomalies],
        baseline_statistics: InputArtifact[DataStatistics] = None,
        validation_config: Parameter[str] = "{}",
        beam_pipeline: BeamComponentParameter[beam.Pipeline] = None):
    """Statistics of every split of `examples` and the data checks (module doc).

    Args:
      examples: ExampleGen's examples (ranking: every feature and the labels).
      vocabulary: ExampleGen's vocabularies and feature config.
      statistics: <uri>/Split-<split>/statistics.json; `split_names`,
        `num_examples_<split>`, `dataset` (the feature config's name).
      anomalies: anomalies.json; `blessed` (1: pushes may go), `num_anomalies`,
        `num_blocking`, `reason` (the blocking anomalies), `baseline_statistics`.
      baseline_statistics: the previous data's statistics (previous_statistics_resolver);
        None, or statistics of another dataset: no drift check.
      validation_config: ValidationConfig.to_json() ("{}": the defaults).
      beam_pipeline: provided by TFX from beam_pipeline_args.
    """
    config = ValidationConfig.from_json(validation_config)
    feature_config = fc.load(os.path.join(vocabulary.uri, CONFIG_FILE))
    splits = artifact_utils.decode_split_names(examples.split_names)
    with beam_pipeline as pipeline:
        compute_statistics(pipeline, examples.uri, splits, feature_config,
                           os.path.join(vocabulary.uri, VOCAB_DIR), statistics.uri)
    current = read_statistics(statistics.uri, splits)
    statistics.set_string_custom_property("split_names", json.dumps(list(splits)))
    for split, stats in current.items():
        statistics.set_int_custom_property(f"num_examples_{split}", stats["num_examples"])
    statistics.set_string_custom_property(DATASET_KEY, feature_config.name)
    statistics.set_string_custom_property(EXAMPLES_URI_KEY, examples.uri)
    previous, why_not = baseline_of(baseline_statistics, feature_config.name)
    exempt = time_split_features(feature_config)
    record_verdict(anomalies, find_anomalies(current, previous, config, exempt),
                   skipped_checks(current, previous, config, why_not, exempt),
                   baseline_statistics.uri if previous is not None else None, config)


class PreviousDataStatisticsStrategy(resolver_lib.ResolverStrategy):
    """The latest statistics computed from other examples than the current ones.

    "Previous run" means the previous DATA, not the previous execution: with
    the plain latest statistics, a re-run on unchanged (cached) examples would
    get its own last statistics as a new baseline every time, so DataValidator
    and everything behind it (gates, pushers) would re-run and push an
    unchanged model again. Keyed on the examples instead, the baseline stays
    the same while the data does, and the whole re-run is served from the cache.

    The current examples are the newest artifact of ExampleGen's channel. Data
    switched back to an earlier, still-cached version (A, B, A) is compared
    with the statistics of B's predecessor rather than of B: a rare case
    that costs a drift check against older data, never a wrong push.
    """

    def resolve_artifacts(self, store, input_dict):  # noqa: ARG002 - the ResolverStrategy API
        examples = input_dict.get(EXAMPLES_KEY) or []
        current = max(examples, key=lambda a: a.id).uri if examples else None
        others = [s for s in input_dict.get(STATISTICS_KEY) or []
                  if s.get_string_custom_property(EXAMPLES_URI_KEY) != current]
        # No baseline (the first run, or the data never changed): an empty
        # channel, not None, which the orchestrator treats as a failed resolution.
        return {STATISTICS_KEY: [max(others, key=lambda a: a.id)] if others else [],
                EXAMPLES_KEY: [max(examples, key=lambda a: a.id)] if examples else []}


def previous_statistics_resolver(examples=None, component_id: str = COMPONENT_ID):
    """The Resolver node giving DataValidator its drift baseline.

    Use `resolver.outputs[STATISTICS_KEY]` as `baseline_statistics`. The channel
    names the producer, so a second DataValidator (another example kind) does
    not feed this one.

    Args:
      examples: the channel DataValidator reads (ExampleGen's output): the
        baseline is then the previous DATA's statistics
        (PreviousDataStatisticsStrategy). None: the previous RUN's statistics
        (TFX's LatestArtifactStrategy), the form the Kubeflow V2 compiler
        accepts (it compiles only the Latest* strategies); there a re-run on
        unchanged data re-validates it.
      component_id: the DataValidator's node id.
    """
    from tfx.dsl.components.common.resolver import Resolver
    from tfx.dsl.input_resolution.strategies.latest_artifact_strategy import (
        LatestArtifactStrategy)
    from tfx.types.channel import Channel
    channels = {STATISTICS_KEY: Channel(type=DataStatistics, producer_component_id=component_id,
                                        output_key=STATISTICS_KEY)}
    if examples is None:
        return Resolver(strategy_class=LatestArtifactStrategy, **channels
                        ).with_id(f"{component_id}.previous_statistics")
    return Resolver(strategy_class=PreviousDataStatisticsStrategy,
                    **channels, **{EXAMPLES_KEY: examples}
                    ).with_id(f"{component_id}.previous_statistics")
