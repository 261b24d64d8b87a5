"""Feature config: the one module that names columns, fields and example keys.

Every stage (Beam jobs, models, components, serving) reads a dataset's feature
config through this module; none of them hard-codes a column name. A new
dataset needs only its raw files and a YAML file in the format below (see the
README, "Feature config", for the full reference and a worked example).

The config declares:
  * how to read the raw event log (column names, timestamp unit, event names);
  * the side tables' key columns;
  * every feature: the field it belongs to (user, item, context), its type
    (categorical id, multi-valued tags, numeric with bucket boundaries, or the
    clicked-item history sequence), where its value comes from (events, users,
    items, derived from the timestamp, or the click history) and its
    vocabulary size or hash buckets;
  * sessionization settings (idle gap, minimum item2vec session length,
    history length, eval fraction) and label attribution (the window in
    which a click labels an impression, or an impression id column to join
    on exactly);
  * optional roles (which item feature is the category, the city, ...) used by
    attribute-aware negative sampling and cold-start fallbacks.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

# Fields of the field-wise models (NFwFM): every feature belongs to one.
USER, ITEM, CONTEXT = "user", "item", "context"
FIELDS: tuple[str, ...] = (USER, ITEM, CONTEXT)

# Feature types.
CATEGORICAL = "categorical"  # one string id per example
TAGS = "tags"  # zero or more string ids per example (multi-valued)
NUMERIC = "numeric"  # one float per example, bucketized by `boundaries`
SEQUENCE = "sequence"  # the clicked-item history (ids of another feature)
FEATURE_TYPES: tuple[str, ...] = (CATEGORICAL, TAGS, NUMERIC, SEQUENCE)

# Where a feature's value comes from.
SOURCE_EVENTS = "events"
SOURCE_USERS = "users"
SOURCE_ITEMS = "items"
SOURCE_DERIVED = "derived"  # computed from the event timestamp (+ item row)
SOURCE_HISTORY = "history"  # the user's earlier clicks
SOURCES: tuple[str, ...] = (
    SOURCE_EVENTS, SOURCE_USERS, SOURCE_ITEMS, SOURCE_DERIVED, SOURCE_HISTORY)

# Derivations available to `source: derived` features.
DERIVE_HOUR = "hour_of_day"  # 0..23 (UTC) of the event timestamp
DERIVE_WEEKDAY = "day_of_week"  # 0=Monday..6 of the event timestamp
DERIVE_ITEM_AGE_HOURS = "item_age_hours"  # event ts - item created ts
DERIVATIONS: tuple[str, ...] = (DERIVE_HOUR, DERIVE_WEEKDAY, DERIVE_ITEM_AGE_HOURS)

# Canonical event types.
IMPRESSION, CLICK, FOLLOW = "impression", "click", "follow"
EVENT_TYPES: tuple[str, ...] = (IMPRESSION, CLICK, FOLLOW)

TIMESTAMP_UNITS: tuple[str, ...] = ("s", "ms", "iso8601")
# Any other timestamp_unit is a datetime.strptime format ("%m/%d/%Y %I:%M:%S %p"
# for MIND's "11/11/2019 9:05:58 AM"): a log's own time text, read as is.


def is_time_format(unit: str) -> bool:
    """Whether a timestamp_unit is a strptime format (it holds a % directive)."""
    return unit not in TIMESTAMP_UNITS and "%" in unit


def _check_time_format(unit: str) -> None:
    """Raises FeatureConfigError unless `unit` is a strptime format that reads back
    a time it wrote (a format without a directive, or with an unknown one, fails)."""
    sample = datetime.datetime(2019, 11, 11, 21, 5, 58)
    try:
        ok = is_time_format(unit) and bool(datetime.datetime.strptime(
            sample.strftime(unit), unit))
    except ValueError:
        ok = False
    if not ok:
        raise FeatureConfigError(
            f"timestamp_unit {unit!r} is neither one of {TIMESTAMP_UNITS} nor a strptime "
            "format that reads back what it writes (e.g. '%m/%d/%Y %I:%M:%S %p' for "
            "'11/11/2019 9:05:58 PM')")

# Train / eval split modes (the `split:` section).
SPLIT_TIME_SPAN = "time_span"  # the last eval_fraction of the time span
SPLIT_EVENT_FRACTION = "event_fraction"  # the last eval_fraction of events, by time
SPLIT_TIMESTAMP = "timestamp"  # events at or after an explicit time
SPLIT_RANDOM_USERS = "random_users"  # a seeded random eval_fraction of the users
SPLIT_MODES: tuple[str, ...] = (
    SPLIT_TIME_SPAN, SPLIT_EVENT_FRACTION, SPLIT_TIMESTAMP, SPLIT_RANDOM_USERS)

# A feature name becomes a tf.Example key, a Keras layer name and a file name
# (vocab/<name>.txt): no path separators, no dots, nothing a shell quotes.
_FEATURE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")

# ---- Example keys shared by the data job and the models -------------------
# Labels of ranking examples (int64 0/1).
CLICK_LABEL = "click"
FOLLOW_LABEL = "follow"
LABEL_KEYS: tuple[str, ...] = (CLICK_LABEL, FOLLOW_LABEL)
# Event time of the example (int64 unix seconds).
TIMESTAMP_KEY = "timestamp"
# 1 when the user has no accepted event before the train/eval split time
# (a user new in the eval period, Meitu's cold-start slice), else 0 (int64).
NEW_USER_KEY = "is_new_user"
# Raw user id, always written (string), for per-user metrics (gAUC) and slicing
# even when user_id is not a model feature.
USER_KEY = "user_key"
# Item2vec examples: one click session, chronological (bytes list).
SESSION_ITEMS_KEY = "session_items"
# Item catalogue examples (items/): click and impression counts (int64).
ITEM_CLICKS_KEY = "item_clicks"
ITEM_IMPRESSIONS_KEY = "item_impressions"

# Example kinds written by beam_jobs.sessionize, each under <out>/<kind>/.
ITEM2VEC, RETRIEVAL, RANKING = "item2vec", "retrieval", "ranking"
EXAMPLE_KINDS: tuple[str, ...] = (ITEM2VEC, RETRIEVAL, RANKING)
TRAIN, EVAL = "train", "eval"
SPLITS: tuple[str, ...] = (TRAIN, EVAL)

# Roles: optional pointers from a purpose to a feature name.
ROLE_ITEM_CATEGORY = "item_category"
ROLE_ITEM_CITY = "item_city"
ROLE_USER_CITY = "user_city"
ROLE_USER_TAGS = "user_tags"
ROLES: tuple[str, ...] = (
    ROLE_ITEM_CATEGORY, ROLE_ITEM_CITY, ROLE_USER_CITY, ROLE_USER_TAGS)


class FeatureConfigError(ValueError):
    """A feature config file is malformed; the message names the bad value."""


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One feature.

    Attributes:
      name: key in tf.Example and in vocabulary file names.
      field: user, item or context.
      type: categorical, tags, numeric or sequence.
      source: events, users, items, derived or history.
      column: raw column in the source table (defaults to `name`).
      vocab_size: keep at most this many most frequent values (train split);
        other values map to one OOV bucket. Exclusive with hash_buckets.
        Optional: without it (and without hash_buckets) the vocabulary keeps
        every value seen at least `min_count` times, up to the config's
        `vocab_max_size`.
      min_count: keep only values seen at least this often in the train
        split; default: the config's `vocab_min_count` when vocab_size is
        not given, else 1 (vocab_size alone keeps the top N, as before).
      hash_buckets: hash the string into this many buckets instead of a
        vocabulary (for ids too many to enumerate).
      boundaries: bucket boundaries of a numeric feature (ascending).
      max_len: tags and sequences keep at most this many values (sequences
        keep the most recent ones).
      separator: tags given as one string are split on it ("a|b|c").
      derive: for source=derived: hour_of_day, day_of_week, item_age_hours.
      of: for a sequence: the categorical feature whose ids it holds; models
        share that feature's embedding table with the sequence.
      default: value used when the raw value is missing or empty.
    """

    name: str
    field: str
    type: str
    source: str
    column: str | None = None
    vocab_size: int | None = None
    hash_buckets: int | None = None
    min_count: int | None = None
    boundaries: tuple[float, ...] = ()
    max_len: int = 1
    separator: str = "|"
    derive: str | None = None
    of: str | None = None
    default: str = ""

    @property
    def raw_column(self) -> str:
        return self.column or self.name

    @property
    def is_string(self) -> bool:
        """Whether tf.Example stores this feature as bytes (else float)."""
        return self.type != NUMERIC

    @property
    def num_buckets(self) -> int:
        """Embedding rows a model needs: ids + 1 OOV/padding bucket.

        Index 0 is reserved for OOV / missing / padding in every lookup, so a
        vocabulary of V values needs V + 1 rows and numeric features with B
        boundaries need B + 2 (B + 1 buckets plus the reserved 0). Without a
        `vocab_size` the size is only known from the vocabulary file (models
        size their tables from it); this returns 1 then.
        """
        if self.type == NUMERIC:
            return len(self.boundaries) + 2
        if self.hash_buckets:
            return self.hash_buckets + 1
        return int(self.vocab_size or 0) + 1


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """How events are split into train and eval (the `split:` section).

    Attributes:
      mode: time_span (default): eval is the last `eval_fraction` of the
          accepted events' time span, split = min + (1 - f) * (max - min);
        event_fraction: eval is the last `eval_fraction` of the accepted
          events in time order (split = the time of the event at 0-based
          position floor((1 - f) * N); ties at that second go to eval);
        timestamp: eval is every event at or after `timestamp`;
        random_users: a seeded random `eval_fraction` of the *users* is eval
          with all their events (for logs whose time carries no meaning).
          By user, not by event, so a user's sessions, history and click
          labels stay whole in one split and no eval click is labelled from
          a train impression; eval users are then all new users.
      eval_fraction: share held out for eval, in (0, 1) (not timestamp mode).
      timestamp: unix seconds (or a date / ISO time in YAML), timestamp mode.
      seed: random_users only: the same seed and users give the same split.
      validation_fraction: the share of the train time span the trainers
        carve as validation (models.validation); only reported in
        summary.json here, the carve itself happens in the trainer.
    """

    mode: str = SPLIT_TIME_SPAN
    eval_fraction: float = 0.2
    timestamp: float | None = None
    seed: int = 0
    validation_fraction: float = 0.1


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """A dataset's raw-log format and feature declarations."""

    name: str
    features: tuple[FeatureSpec, ...]
    timestamp_column: str = "timestamp"
    user_column: str = "user_id"
    item_column: str = "item_id"
    event_column: str = "event"
    timestamp_unit: str = "s"
    # Raw event value -> canonical event type; unmapped values are
    # dead-lettered as unknown_event.
    event_values: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {e: e for e in EVENT_TYPES})
    users_key: str = "user_id"
    items_key: str = "item_id"
    item_created_column: str | None = None
    session_gap_seconds: int = 1800
    # A click (follow) labels the latest impression of its item at most this
    # many seconds before it; None: session_gap_seconds.
    attribution_window_seconds: int | None = None
    # Event column holding a request / impression id; when set, a click or
    # follow labels the impression row with its id instead (exact join).
    impression_id_column: str | None = None
    min_session_len: int = 5
    history_max_len: int = 50
    split: SplitSpec = SplitSpec()
    # Accepted timestamp range (unix seconds, [min, max)); others dead-letter.
    # YAML may give a date or ISO time (UTC if naive); stored as unix seconds.
    min_timestamp: int = 946684800  # 2000-01-01
    max_timestamp: int = 4102444800  # 2100-01-01
    # The run fails when more than this share of the raw rows (events,
    # users and items together) is dead-lettered.
    max_dead_letter_fraction: float = 0.01
    # Vocabularies of features without vocab_size keep values seen at least
    # vocab_min_count times in the train split, at most vocab_max_size.
    vocab_min_count: int = 2
    vocab_max_size: int = 100_000
    roles: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def eval_fraction(self) -> float:
        """The split's eval fraction (top-level `eval_fraction` in older YAMLs)."""
        return self.split.eval_fraction

    # ---- lookups ---------------------------------------------------------
    @property
    def attribution_window(self) -> int:
        """Seconds a click or follow may follow the impression it labels."""
        if self.attribution_window_seconds is None:
            return self.session_gap_seconds
        return self.attribution_window_seconds

    def feature(self, name: str) -> FeatureSpec:
        for spec in self.features:
            if spec.name == name:
                return spec
        raise KeyError(f"no feature {name!r} in config {self.name!r}; "
                       f"have {[f.name for f in self.features]}")

    def field_features(self, field: str) -> tuple[FeatureSpec, ...]:
        """Features of one field, in config order."""
        if field not in FIELDS:
            raise FeatureConfigError(f"unknown field {field!r}; want one of {FIELDS}")
        return tuple(f for f in self.features if f.field == field)

    def by_source(self, source: str) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.features if f.source == source)

    @property
    def item_id_feature(self) -> FeatureSpec:
        """The item feature holding the item id (the candidate id)."""
        for spec in self.features:
            if spec.source == SOURCE_ITEMS and spec.raw_column == self.items_key:
                return spec
        for spec in self.features:
            if spec.field == ITEM and spec.raw_column == self.item_column:
                return spec
        raise FeatureConfigError(
            f"config {self.name!r} declares no item feature on column "
            f"{self.items_key!r} (the item id)")

    @property
    def history_feature(self) -> FeatureSpec | None:
        """The clicked-item history sequence feature, if declared."""
        seq = [f for f in self.features if f.type == SEQUENCE]
        return seq[0] if seq else None

    def role(self, role: str) -> FeatureSpec | None:
        name = self.roles.get(role)
        return self.feature(name) if name else None

    @property
    def vocab_features(self) -> tuple[FeatureSpec, ...]:
        """Features that need a vocabulary file (string, not hashed, not seq)."""
        return tuple(f for f in self.features
                     if f.type in (CATEGORICAL, TAGS) and not f.hash_buckets)

    def vocab_rule(self, spec: FeatureSpec) -> tuple[int, int]:
        """(min_count, max size) of a vocabulary feature's vocabulary."""
        if spec.vocab_size:
            return (spec.min_count or 1), spec.vocab_size
        return (spec.min_count or self.vocab_min_count), self.vocab_max_size

    def side_table_columns(self, source: str) -> tuple[str, ...]:
        """Columns a users / items table must supply beyond its key.

        Features of the table's source that read only the key column (the
        id features) need no table: the job fills them from the event's id.
        The items table also supplies `item_created_column`.
        """
        key = self.users_key if source == SOURCE_USERS else self.items_key
        columns = [f.raw_column for f in self.by_source(source) if f.raw_column != key]
        if source == SOURCE_ITEMS and self.item_created_column:
            columns.append(self.item_created_column)
        return tuple(dict.fromkeys(columns))

    # ---- (de)serialization ----------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["split"] = {k: v for k, v in dataclasses.asdict(self.split).items()
                        if v is not None}
        out["event_values"] = dict(self.event_values)
        out["roles"] = dict(self.roles)
        out["features"] = [
            {k: (list(v) if isinstance(v, tuple) else v)
             for k, v in dataclasses.asdict(f).items()
             if v not in (None, ()) and not (k == "max_len" and v == 1)
             and not (k == "separator" and v == "|")
             and not (k == "default" and v == "")}
            for f in self.features]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _type_error(where: str, value: Any, want: str) -> FeatureConfigError:
    return FeatureConfigError(
        f"{where} must be {want}, got {value!r} ({type(value).__name__})")


def _check_type(where: str, value: Any, hint: Any) -> None:
    """Raises when `value` does not fit a field's type hint (int, float, str, X | None).

    A YAML typo like `eval_fraction: "0.2"` otherwise surfaces far from the
    file as a bare TypeError in arithmetic; here it names the key.
    """
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return
        hint = next(a for a in args if a is not type(None))
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _type_error(where, value, "an integer")
    if hint is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise _type_error(where, value, "a number")
    if hint is str and not isinstance(value, str):
        raise _type_error(where, value, "a string")


def _check_types(cls: type, raw: Mapping[str, Any], where: str) -> None:
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        if key in hints:
            _check_type(f"{where}{key}", value, hints[key])


def _timestamp_seconds(where: str, value: Any) -> Any:
    """A date / datetime / ISO string / number -> unix seconds (UTC if naive).

    YAML parses `2020-01-01` to a date and `2020-01-01T12:00:00` to a
    datetime; both, and the same as quoted strings, are accepted.
    """
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            raise _type_error(where, value, "unix seconds or an ISO date / time") from None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        seconds = value.timestamp()
        return int(seconds) if seconds.is_integer() else seconds
    if isinstance(value, datetime.date):
        return int(datetime.datetime(value.year, value.month, value.day,
                                     tzinfo=datetime.timezone.utc).timestamp())
    return value


def _spec_from_dict(raw: Mapping[str, Any], index: int) -> FeatureSpec:
    if not isinstance(raw, Mapping):
        raise FeatureConfigError(f"features[{index}] must be a mapping, got {raw!r}")
    known = {f.name for f in dataclasses.fields(FeatureSpec)}
    unknown = set(raw) - known
    if unknown:
        raise FeatureConfigError(
            f"features[{index}] ({raw.get('name')!r}) has unknown keys {sorted(unknown)}")
    for key in ("name", "field", "type", "source"):
        if key not in raw:
            raise FeatureConfigError(f"features[{index}] is missing {key!r}: {dict(raw)!r}")
    kwargs = dict(raw)
    if isinstance(kwargs.get("default"), (int, float)) and not isinstance(
            kwargs["default"], bool):
        kwargs["default"] = str(kwargs["default"])  # `default: 0` of a numeric feature
    _check_types(FeatureSpec, {k: v for k, v in kwargs.items() if k != "boundaries"},
                 f"features[{index}] ({raw.get('name')!r}) ")
    if "boundaries" in kwargs:
        bounds = kwargs["boundaries"]
        if not isinstance(bounds, (list, tuple)):
            raise _type_error(f"features[{index}] ({raw.get('name')!r}) boundaries", bounds,
                              "a list of numbers")
        for b in bounds:
            _check_type(f"features[{index}] ({raw.get('name')!r}) boundaries", b, float)
        kwargs["boundaries"] = tuple(float(b) for b in bounds)
    return FeatureSpec(**kwargs)


def _split_from_dict(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The FeatureConfig kwargs of a raw config, with `split` a SplitSpec.

    A top-level `eval_fraction` (the older spelling) is the time_span mode's
    fraction; it may not be given next to a `split:` section.
    """
    kwargs = dict(raw)
    split = kwargs.pop("split", None)
    legacy = kwargs.pop("eval_fraction", None)
    if split is None:
        split = {} if legacy is None else {"eval_fraction": legacy}
        where = "eval_fraction" if legacy is not None else "split."
    else:
        where = "split."
        if legacy is not None:
            raise FeatureConfigError(
                "give eval_fraction inside the split: section, not also at the top level")
    if not isinstance(split, Mapping):
        raise _type_error("split", split, "a mapping")
    known = {f.name for f in dataclasses.fields(SplitSpec)}
    unknown = set(split) - known
    if unknown:
        raise FeatureConfigError(f"split has unknown keys {sorted(unknown)}")
    split = dict(split)
    if split.get("timestamp") is not None:
        split["timestamp"] = _timestamp_seconds("split.timestamp", split["timestamp"])
    if where == "eval_fraction":
        _check_type("eval_fraction", split["eval_fraction"], float)
    _check_types(SplitSpec, split, "split.")
    kwargs["split"] = SplitSpec(**split)
    return kwargs


def _validate_split(split: SplitSpec) -> None:
    if split.mode not in SPLIT_MODES:
        raise FeatureConfigError(f"split.mode {split.mode!r} not in {SPLIT_MODES}")
    if split.mode == SPLIT_TIMESTAMP:
        if split.timestamp is None:
            raise FeatureConfigError("split.mode timestamp needs split.timestamp")
    elif not 0.0 < split.eval_fraction < 1.0:
        raise FeatureConfigError(f"eval_fraction {split.eval_fraction} not in (0, 1)")
    if split.mode != SPLIT_TIMESTAMP and split.timestamp is not None:
        raise FeatureConfigError(
            f"split.timestamp is only read by split.mode timestamp (mode is {split.mode!r})")
    if not 0.0 < split.validation_fraction < 1.0:
        raise FeatureConfigError(
            f"split.validation_fraction {split.validation_fraction} not in (0, 1)")


def validate(config: FeatureConfig) -> FeatureConfig:
    """Checks cross-field consistency; returns the config or raises."""
    names = [f.name for f in config.features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FeatureConfigError(f"duplicate feature names {dupes}")
    reserved = set(LABEL_KEYS) | {TIMESTAMP_KEY, NEW_USER_KEY, USER_KEY,
                                  SESSION_ITEMS_KEY, ITEM_CLICKS_KEY,
                                  ITEM_IMPRESSIONS_KEY}
    clash = sorted(set(names) & reserved)
    if clash:
        raise FeatureConfigError(f"feature names {clash} are reserved example keys")
    for f in config.features:
        where = f"feature {f.name!r}"
        if not _FEATURE_NAME.fullmatch(f.name):
            raise FeatureConfigError(
                f"{where}: a name is letters, digits, '_' and '-' (it names files and "
                "example keys)")
        for key in ("vocab_size", "hash_buckets", "min_count"):
            value = getattr(f, key)
            if value is not None and value < 1:
                raise FeatureConfigError(
                    f"{where}: {key} must be a positive integer, got {value!r}")
        if f.field not in FIELDS:
            raise FeatureConfigError(f"{where}: field {f.field!r} not in {FIELDS}")
        if f.type not in FEATURE_TYPES:
            raise FeatureConfigError(f"{where}: type {f.type!r} not in {FEATURE_TYPES}")
        if f.source not in SOURCES:
            raise FeatureConfigError(f"{where}: source {f.source!r} not in {SOURCES}")
        if f.vocab_size and f.hash_buckets:
            raise FeatureConfigError(f"{where}: give vocab_size or hash_buckets, not both")
        if f.type == NUMERIC:
            if not f.boundaries:
                raise FeatureConfigError(f"{where}: numeric needs boundaries")
            if list(f.boundaries) != sorted(set(f.boundaries)):
                raise FeatureConfigError(
                    f"{where}: boundaries {list(f.boundaries)} must be strictly ascending")
        if f.source == SOURCE_DERIVED and f.derive not in DERIVATIONS:
            raise FeatureConfigError(f"{where}: derive {f.derive!r} not in {DERIVATIONS}")
        if f.derive == DERIVE_ITEM_AGE_HOURS and not config.item_created_column:
            raise FeatureConfigError(f"{where}: item_age_hours needs item_created_column")
        if (f.type == SEQUENCE) != (f.source == SOURCE_HISTORY):
            raise FeatureConfigError(f"{where}: type sequence goes with source history")
        if f.type == SEQUENCE:
            if f.of not in names:
                raise FeatureConfigError(f"{where}: of={f.of!r} is not a feature")
            if f.field != USER:
                raise FeatureConfigError(f"{where}: the click history is a user feature")
        if f.max_len < 1:
            raise FeatureConfigError(f"{where}: max_len must be >= 1, got {f.max_len}")
    if len([f for f in config.features if f.type == SEQUENCE]) > 1:
        raise FeatureConfigError("at most one sequence (history) feature")
    for field in FIELDS:
        if not config.field_features(field):
            raise FeatureConfigError(f"field {field!r} has no features")
    for role, name in config.roles.items():
        if role not in ROLES:
            raise FeatureConfigError(f"unknown role {role!r}; want one of {ROLES}")
        if name not in names:
            raise FeatureConfigError(f"role {role!r} names unknown feature {name!r}")
    bad_events = sorted(set(config.event_values.values()) - set(EVENT_TYPES))
    if bad_events:
        raise FeatureConfigError(f"event_values map to {bad_events}; want {EVENT_TYPES}")
    if config.timestamp_unit not in TIMESTAMP_UNITS:
        _check_time_format(config.timestamp_unit)
    _validate_split(config.split)
    if not config.min_timestamp < config.max_timestamp:
        raise FeatureConfigError(
            f"min_timestamp {config.min_timestamp} is not before max_timestamp "
            f"{config.max_timestamp}: no event could be accepted")
    if not 0.0 <= config.max_dead_letter_fraction <= 1.0:
        raise FeatureConfigError(
            f"max_dead_letter_fraction {config.max_dead_letter_fraction} not in [0, 1]")
    for key in ("vocab_min_count", "vocab_max_size"):
        if getattr(config, key) < 1:
            raise FeatureConfigError(
                f"{key} must be a positive integer, got {getattr(config, key)!r}")
    if config.session_gap_seconds <= 0:
        raise FeatureConfigError(f"session_gap_seconds must be > 0")
    window = config.attribution_window_seconds
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                               or window < 0):
        raise FeatureConfigError(
            f"attribution_window_seconds must be an integer >= 0, got {window!r}")
    id_column = config.impression_id_column
    if id_column is not None:
        event_columns = (config.timestamp_column, config.user_column, config.item_column,
                         config.event_column)
        if not isinstance(id_column, str) or not id_column:
            raise FeatureConfigError(
                f"impression_id_column must be a non-empty string, got {id_column!r}")
        if id_column in event_columns:
            raise FeatureConfigError(
                f"impression_id_column {id_column!r} is already one of the event "
                f"columns {list(event_columns)}")
    config.item_id_feature  # raises when missing
    return config


# Top-level keys read by other parts of the project from the same YAML:
# `data:` names a dataset's raw tables, `validation:` the data checks' thresholds
# (feature_contract.dataset).
IGNORED_TOP_LEVEL_KEYS: tuple[str, ...] = ("data", "validation")


def from_dict(raw: Mapping[str, Any]) -> FeatureConfig:
    """Builds and validates a FeatureConfig from a parsed YAML/JSON mapping.

    Raises:
      FeatureConfigError: naming the bad key and value.
    """
    if not isinstance(raw, Mapping):
        raise FeatureConfigError(f"feature config must be a mapping, got {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if k not in IGNORED_TOP_LEVEL_KEYS}
    known = {f.name for f in dataclasses.fields(FeatureConfig)} | {"eval_fraction"}
    unknown = set(raw) - known
    if unknown:
        raise FeatureConfigError(f"unknown top-level keys {sorted(unknown)}")
    if "features" not in raw or not raw["features"]:
        raise FeatureConfigError("feature config needs a non-empty 'features' list")
    if not isinstance(raw["features"], (list, tuple)):
        raise _type_error("features", raw["features"], "a list of feature mappings")
    kwargs = _split_from_dict(raw)
    for key in ("min_timestamp", "max_timestamp"):
        if key in kwargs:
            kwargs[key] = _timestamp_seconds(key, kwargs[key])
    for key in ("event_values", "roles"):
        if key in kwargs and not isinstance(kwargs[key], Mapping):
            raise _type_error(key, kwargs[key], "a mapping")
    # attribution_window_seconds and impression_id_column have their own
    # checks in `validate` (it also sees configs built in code).
    _check_types(FeatureConfig, {k: v for k, v in kwargs.items() if k not in (
        "features", "split", "event_values", "roles", "attribution_window_seconds",
        "impression_id_column")}, "")
    kwargs["features"] = tuple(_spec_from_dict(f, i) for i, f in enumerate(raw["features"]))
    if "event_values" in kwargs:
        kwargs["event_values"] = {str(k): str(v) for k, v in kwargs["event_values"].items()}
    try:
        config = FeatureConfig(**kwargs)
    except TypeError as err:
        raise FeatureConfigError(str(err)) from err
    return validate(config)


def load(path: str | os.PathLike[str]) -> FeatureConfig:
    """Loads a YAML (or JSON, a YAML subset) feature config file."""
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise FeatureConfigError(f"{path}: not valid YAML: {err}") from err
    try:
        return from_dict(raw)
    except FeatureConfigError as err:
        raise FeatureConfigError(f"{path}: {err}") from err


def builtin_config_path(name: str) -> str:
    """Path of a config shipped with the package (synthetic, movielens)."""
    path = os.path.join(os.path.dirname(__file__), "configs", f"{name}.yaml")
    if not os.path.exists(path):
        raise FeatureConfigError(f"no built-in feature config {name!r} at {path}")
    return path


def feature_names(specs: Sequence[FeatureSpec]) -> list[str]:
    return [s.name for s in specs]
