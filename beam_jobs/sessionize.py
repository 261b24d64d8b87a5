"""Sessionize job: raw click logs -> validated, sessionized tf.Example TFRecords.

    python -m beam_jobs.sessionize --config CONFIG --events GLOB --users GLOB \
        --items GLOB --output_dir OUT [--split_timestamp TS] [Beam flags...]

Unknown flags go to Beam (`--runner`, `--direct_num_workers`, Dataflow, Flink
or Spark options). The output layout and the tf.Example encoding are the
README's "Examples written by the sessionize job".

Steps (labelled CamelCase; `Sessionize` chains them and is what a TFX
component calls inside its own pipeline, `build_pipeline` adds reading and
`WriteOutputs` writing):

  ParseUsers / ParseItems (+ PickItemRow)  side rows -> encoded feature
      entries; malformed, missing_key and duplicate_key rows dead-lettered.
      The items table becomes one pickled-dict singleton side input.
  ParseEvents  raw records -> typed events grouped per user within a batch;
      malformed, missing_id, unknown_event, bad_timestamp and out_of_range
      rows dead-lettered.
  TimeSpan / SplitTime  split_ts = min + (1 - eval_fraction) * (max - min)
      over accepted events (events of known users with known items; exact
      duplicates never move the span), a singleton side input, unless a split
      timestamp is given.
  GroupByUser + BuildExamples  one pass per user (CoGroupByKey of events and
      the user's row): exact duplicates (user, item, event, timestamp)
      filtered, events of users or items without a row dead-lettered
      (unknown_user, unknown_item), then sessions, history, labels and every
      example kind, plus the train-split statistics.
  MergeStats, Vocabularies, ItemFrequencies, ItemCatalogue, SumCounts,
      Summary  from in-pipeline combines (not from metrics).

Semantics decided here (README leaves them open):
  * Sessions are cut by *any* accepted event: a new session starts when the
    idle time since the user's previous event is strictly greater than
    `session_gap_seconds` (a gap of exactly the threshold stays in the session,
    matching the inclusive [t, t + gap] label window), or when the split time
    falls between the two events. An item2vec example holds the session's
    clicked items (in time order) when there are at least `min_session_len`.
  * Events at the same time are ordered impression < click < follow, then by
    item id, so an impression and its click in the same second label
    correctly and the output is deterministic.
  * History (`clicked_item_list`) holds clicks strictly before the example's
    timestamp, the most recent last, at most min(max_len, history_max_len).
  * Vocabularies count train-split accepted events: each event adds its
    user's, its item's and its own (context, derived) values; tags count per
    tag; the empty string (missing) is never a vocabulary entry.
  * A missing numeric value is `float(spec.default)` or 0.0; a missing tags
    value is an empty list; a missing or unparseable item creation time gives
    item_age_hours = 0.
  * Dead-letter records hold the raw line / row for parse failures and the
    parsed event (column -> value) for join failures, which happen after the
    raw text is dropped.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import datetime
import json
import logging
import math
import pickle
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import AsSingleton, TaggedOutput
from apache_beam.transforms.window import GlobalWindows

from beam_jobs import feature_config as fc
from beam_jobs import raw_io

try:  # orjson is pinned in requirements.lock; json keeps the job importable without it
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    _loads = json.loads

_METRICS_NAMESPACE = "feedrec.sessionize"

# ---- reasons ---------------------------------------------------------------
MALFORMED = "malformed"
MISSING_ID = "missing_id"
MISSING_KEY = "missing_key"
UNKNOWN_EVENT = "unknown_event"
BAD_TIMESTAMP = "bad_timestamp"
OUT_OF_RANGE = "out_of_range"
UNKNOWN_USER = "unknown_user"
UNKNOWN_ITEM = "unknown_item"
DUPLICATE_KEY = "duplicate_key"
DUPLICATE = "duplicate"  # a filter, not a dead letter
EVENT_DEAD_LETTER_REASONS = (MALFORMED, MISSING_ID, UNKNOWN_EVENT, BAD_TIMESTAMP,
                             OUT_OF_RANGE, UNKNOWN_USER, UNKNOWN_ITEM)
SIDE_DEAD_LETTER_REASONS = (MALFORMED, MISSING_KEY, DUPLICATE_KEY)
EVENTS, USERS, ITEMS = "events", "users", "items"

# Event type codes; sorting by them orders same-second events.
_IMPRESSION, _CLICK, _FOLLOW = 0, 1, 2
_EVENT_CODE = {fc.IMPRESSION: _IMPRESSION, fc.CLICK: _CLICK, fc.FOLLOW: _FOLLOW}
_EVENT_NAME = {v: k for k, v in _EVENT_CODE.items()}
_DERIVED_ON_EVENT = (fc.DERIVE_HOUR, fc.DERIVE_WEEKDAY)


class Reject(Exception):
    """A raw record fails validation; `reason` names the dead-letter reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ---- tf.Example wire encoding ----------------------------------------------
# tf.Example is written directly in protobuf wire format: a Features map entry
# is self-contained, so the user's and the item's feature entries are encoded
# once and concatenated into every example of that user / item. Round-trips
# through tf.train.Example are checked in the tests.
_VARINT_CACHE = []
for _n in range(1 << 14):
    _VARINT_CACHE.append(bytes([_n]) if _n < 0x80 else bytes([(_n & 0x7F) | 0x80, _n >> 7]))
_VARINT_CACHE = tuple(_VARINT_CACHE)
_MASK64 = (1 << 64) - 1


def _varint(n: int) -> bytes:
    if n < 16384:
        return _VARINT_CACHE[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _bytes_piece(value: bytes) -> bytes:
    """One BytesList.value entry."""
    return b"\n" + _varint(len(value)) + value


def _feature_entry(key: bytes, feature: bytes) -> bytes:
    """One Features.feature map entry {key: feature}."""
    inner = b"\n" + _varint(len(key)) + key + b"\x12" + _varint(len(feature)) + feature
    return b"\n" + _varint(len(inner)) + inner


def bytes_entry(key: bytes, values: Iterable[bytes]) -> bytes:
    inner = b"".join(_bytes_piece(v) for v in values)
    return _feature_entry(key, b"\n" + _varint(len(inner)) + inner)


def _bytes_entry_from_pieces(key: bytes, pieces: Sequence[bytes]) -> bytes:
    inner = b"".join(pieces)
    return _feature_entry(key, b"\n" + _varint(len(inner)) + inner)


def float_entry(key: bytes, values: Sequence[float]) -> bytes:
    payload = struct.pack(f"<{len(values)}f", *values)
    flist = b"\n" + _varint(len(payload)) + payload
    return _feature_entry(key, b"\x12" + _varint(len(flist)) + flist)


def int64_entry(key: bytes, values: Sequence[int]) -> bytes:
    payload = b"".join(_varint(int(v) & _MASK64) for v in values)
    ilist = b"\n" + _varint(len(payload)) + payload
    return _feature_entry(key, b"\x1a" + _varint(len(ilist)) + ilist)


def int64_entry_maker(key: bytes) -> Any:
    """A fast `lambda v: int64_entry(key, [v])` for non-negative ints.

    Everything but the value's varint depends only on the varint's length, so
    the prefix is built once per length.
    """
    prefixes: dict[int, bytes] = {}

    def make(value: int) -> bytes:
        if 268435456 <= value < 34359738368:  # 5-byte varints: every unix second 1978..3058
            payload = bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80,
                             ((value >> 14) & 0x7F) | 0x80, ((value >> 21) & 0x7F) | 0x80,
                             value >> 28))
        else:
            payload = _varint(value)
        prefix = prefixes.get(len(payload))
        if prefix is None:
            prefix = int64_entry(key, [value])[:-len(payload)]
            prefixes[len(payload)] = prefix
        return prefix + payload

    return make


def float_entry_maker(key: bytes) -> Any:
    """A fast `lambda v: float_entry(key, [v])`: a fixed prefix + 4 bytes."""
    prefix = float_entry(key, [0.0])[:-4]
    pack = struct.Struct("<f").pack
    return lambda value: prefix + pack(value)


def example_bytes(entries: Iterable[bytes]) -> bytes:
    """Serialized tf.Example from feature map entries (keys must be unique)."""
    body = b"".join(entries)
    return b"\n" + _varint(len(body)) + body


# ---- value parsing -----------------------------------------------------------
def parse_timestamp(value: Any, unit: str) -> float:
    """Unix seconds (float) from a raw timestamp.

    Raises:
      ValueError: missing, unparseable or non-finite value.
    """
    if value is None or isinstance(value, bool) or value == "":
        raise ValueError(f"missing timestamp {value!r}")
    if unit == "iso8601":
        if not isinstance(value, str):
            raise ValueError(f"want an ISO-8601 string, got {value!r}")
        parsed = datetime.datetime.fromisoformat(value.strip())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.timezone.utc)
        return parsed.timestamp()
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"non-finite timestamp {value!r}")
    return seconds / 1000.0 if unit == "ms" else seconds


def _to_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _numeric_default(spec: fc.FeatureSpec) -> float:
    try:
        return float(spec.default) if spec.default != "" else 0.0
    except ValueError:
        return 0.0


def normalize_value(spec: fc.FeatureSpec, raw: Any) -> Any:
    """Raw column value -> str (categorical), tuple[str] (tags) or float."""
    if spec.type == fc.NUMERIC:
        if raw is None or raw == "" or isinstance(raw, bool):
            return _numeric_default(spec)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            return _numeric_default(spec)
        return value if math.isfinite(value) else _numeric_default(spec)
    if spec.type == fc.TAGS:
        if raw is None or raw == "":
            values: list[str] = []
        elif isinstance(raw, (list, tuple)):
            values = [_to_str(v) for v in raw]
        else:
            values = _to_str(raw).split(spec.separator)
        return tuple(v.strip() for v in values if v and v.strip())[:spec.max_len]
    value = _to_str(raw)
    return value if value else spec.default


def normalizer(spec: fc.FeatureSpec) -> Any:
    """A fast `normalize_value` for one spec (str fast path for categoricals)."""
    if spec.type != fc.CATEGORICAL:
        return lambda raw: normalize_value(spec, raw)
    default = spec.default

    def normalize_categorical(raw: Any) -> str:
        if raw.__class__ is str:
            return raw.strip() or default
        return normalize_value(spec, raw)

    return normalize_categorical


def encode_value(spec: fc.FeatureSpec, value: Any) -> bytes:
    """Feature map entry of a normalized value (see `normalize_value`)."""
    key = spec.name.encode()
    if spec.type == fc.NUMERIC:
        return float_entry(key, [value])
    if spec.type == fc.TAGS:
        return bytes_entry(key, [v.encode() for v in value])
    return bytes_entry(key, [value.encode()])


def _vocab_values(value: Any) -> tuple[str, ...]:
    if isinstance(value, tuple):
        return value
    return (value,) if value else ()


def _derive(spec: fc.FeatureSpec, seconds: float) -> Any:
    """Normalized value of an hour_of_day / day_of_week feature."""
    whole = int(math.floor(seconds))
    if spec.derive == fc.DERIVE_HOUR:
        number = (whole // 3600) % 24
    else:  # 1970-01-01 was a Thursday (Monday = 0)
        number = (whole // 86400 + 3) % 7
    return float(number) if spec.type == fc.NUMERIC else str(number)


def _as_record(record: Any) -> Any:
    """A raw record in a JSON-serializable form for the dead-letter output."""
    if isinstance(record, bytes):
        return record.decode("utf-8", errors="replace")
    if isinstance(record, raw_io.MalformedRecord):
        return record.text
    return record


# ---- parsers (pure Python, unit-testable) -------------------------------------
def _record_dict(record: Any) -> dict[str, Any]:
    if isinstance(record, dict):
        return record
    if isinstance(record, raw_io.MalformedRecord):
        raise Reject(MALFORMED, record.reason)
    if isinstance(record, (bytes, str)):
        try:
            row = _loads(record)
        except ValueError as err:  # orjson.JSONDecodeError and json's are ValueErrors
            raise Reject(MALFORMED, str(err)) from None
        if isinstance(row, dict):
            return row
        raise Reject(MALFORMED, f"not a JSON object: {type(row).__name__}")
    raise Reject(MALFORMED, f"unsupported record type {type(record).__name__}")


class EventParser:
    """Raw event record -> (user, (ts, event_code, item, context_values)).

    context_values holds the normalized `source: events` features in config
    order; ts is unix seconds (float).
    """

    def __init__(self, config: fc.FeatureConfig):
        self._config = config
        self._event_codes = {raw: _EVENT_CODE[canon]
                             for raw, canon in config.event_values.items()}
        self._context = config.by_source(fc.SOURCE_EVENTS)
        self._context_norms = [(s.raw_column, s.default, s.type == fc.CATEGORICAL,
                                normalizer(s)) for s in self._context]
        self._unit_seconds = config.timestamp_unit == "s"

    def parse(self, record: Any) -> tuple[str, tuple[float, int, str, tuple[Any, ...]]]:
        """Raises Reject on a bad record."""
        config = self._config
        row = record if record.__class__ is dict else _record_dict(record)
        # The common case (str ids, int seconds) skips the general helpers:
        # this runs once per raw event.
        user = row.get(config.user_column)
        user = user.strip() if user.__class__ is str else _to_str(user)
        item = row.get(config.item_column)
        item = item.strip() if item.__class__ is str else _to_str(item)
        if not user or not item:
            raise Reject(MISSING_ID, "empty user or item id")
        raw_event = row.get(config.event_column)
        code = self._event_codes.get(raw_event if raw_event.__class__ is str
                                     else _to_str(raw_event))
        if code is None:
            raise Reject(UNKNOWN_EVENT, repr(raw_event))
        raw_ts = row.get(config.timestamp_column)
        if raw_ts.__class__ is int and self._unit_seconds:
            ts = float(raw_ts)
        else:
            try:
                ts = parse_timestamp(raw_ts, config.timestamp_unit)
            except (TypeError, ValueError, OverflowError) as err:
                raise Reject(BAD_TIMESTAMP, str(err)) from None
        if not config.min_timestamp <= ts < config.max_timestamp:
            raise Reject(OUT_OF_RANGE, str(ts))
        context = tuple([(v.strip() or default) if (v := row.get(col)).__class__ is str
                         and categorical else norm(v)
                         for col, default, categorical, norm in self._context_norms])
        return user, (ts, code, item, context)

    def event_record(self, user: str, event: tuple) -> dict[str, Any]:
        """A parsed event back as a row (for join-failure dead letters)."""
        config = self._config
        ts, code, item, context = event
        row = {config.user_column: user, config.item_column: item,
               config.event_column: _EVENT_NAME[code], config.timestamp_column: ts}
        for spec, value in zip(self._context, context):
            row[spec.raw_column] = list(value) if isinstance(value, tuple) else value
        return row


class SideRowInfo(NamedTuple):
    """A parsed users/items row.

    Attributes:
      entries: the encoded feature map entries of the table's features.
      vocab: (feature name, values) of its vocabulary features.
      created_ts: item creation time in unix seconds (items only) or None.
    """

    entries: bytes
    vocab: tuple[tuple[str, tuple[str, ...]], ...]
    created_ts: float | None = None


class SideTableParser:
    """Raw users / items record -> (key, SideRowInfo)."""

    def __init__(self, config: fc.FeatureConfig, source: str):
        if source not in (USERS, ITEMS):
            raise ValueError(f"source must be {USERS!r} or {ITEMS!r}, got {source!r}")
        self._config = config
        self._source = source
        self._key = config.users_key if source == USERS else config.items_key
        self._specs = config.by_source(fc.SOURCE_USERS if source == USERS else fc.SOURCE_ITEMS)
        vocab_names = {s.name for s in config.vocab_features}
        self._vocab_specs = [s for s in self._specs if s.name in vocab_names]
        self._created = config.item_created_column if source == ITEMS else None

    def parse(self, record: Any) -> tuple[str, SideRowInfo]:
        """Raises Reject on a bad record."""
        row = _record_dict(record)
        key = _to_str(row.get(self._key))
        if not key:
            raise Reject(MISSING_KEY, f"no {self._key!r}")
        values = {s.name: normalize_value(s, row.get(s.raw_column)) for s in self._specs}
        entries = b"".join(encode_value(s, values[s.name]) for s in self._specs)
        vocab = tuple((s.name, _vocab_values(values[s.name])) for s in self._vocab_specs)
        created = None
        if self._created:
            try:
                created = parse_timestamp(row.get(self._created), self._config.timestamp_unit)
            except (TypeError, ValueError, OverflowError):
                created = None
        return key, SideRowInfo(entries, vocab, created)


# ---- DoFns ---------------------------------------------------------------------
COUNTS_TAG, DEAD_LETTER_TAG, STATS_TAG, SPAN_TAG = "counts", "dead_letter", "stats", "span"


def _dead_letter(reason: str, source: str, record: Any) -> dict[str, Any]:
    return {"reason": reason, "source": source, "record": _as_record(record)}


def _global(value: Any) -> Any:
    return GlobalWindows.windowed_value(value)


class _CountingDoFn(beam.DoFn):
    """Keeps counts per bundle and emits them once, as Metrics and a dict.

    Per-bundle aggregation keeps the counts output to a handful of elements
    however many rows flow through.
    """

    def start_bundle(self) -> None:
        self._counts: collections.Counter = collections.Counter()

    def finish_bundle(self) -> Iterator[Any]:
        if self._counts:
            for name, value in self._counts.items():
                Metrics.counter(_METRICS_NAMESPACE, name).inc(value)
            yield TaggedOutput(COUNTS_TAG, _global(dict(self._counts)))
        self._counts = collections.Counter()


def _records(element: Any) -> Iterable[Any]:
    """A batch (list) of raw records or one record."""
    return element if isinstance(element, list) else (element,)


class _ParseEventsFn(_CountingDoFn):
    """Batch of raw events -> (user, [events]) per user in the batch.

    Also emits, once per bundle, (user, (min ts, max ts)) over the events whose
    item is in the items table (SPAN_TAG): joined with the users table these
    give the accepted time span (duplicates never move it) without waiting
    for the per-user pass.
    """

    def __init__(self, config: fc.FeatureConfig):
        self._config = config

    def setup(self) -> None:
        self._parser = EventParser(self._config)
        self._items = _ItemTable()

    def start_bundle(self) -> None:
        super().start_bundle()
        self._spans: dict[str, list[float]] = {}

    def process(self, element: Any, items_blob: bytes) -> Iterator[Any]:
        items = self._items.get(items_blob)
        by_user: dict[str, list] = {}
        parse = self._parser.parse
        spans = self._spans
        read = 0
        for record in _records(element):
            read += 1
            try:
                user, event = parse(record)
            except Reject as rej:
                self._counts[f"events.dead_letter.{rej.reason}"] += 1
                yield TaggedOutput(DEAD_LETTER_TAG, _dead_letter(rej.reason, EVENTS, record))
                continue
            events = by_user.get(user)
            if events is None:
                by_user[user] = [event]
            else:
                events.append(event)
            if event[2] in items:
                ts = event[0]
                span = spans.get(user)
                if span is None:
                    spans[user] = [ts, ts]
                elif ts < span[0]:
                    span[0] = ts
                elif ts > span[1]:
                    span[1] = ts
        self._counts["events.read"] += read
        yield from by_user.items()

    def finish_bundle(self) -> Iterator[Any]:
        yield from super().finish_bundle()
        for user, span in self._spans.items():
            yield TaggedOutput(SPAN_TAG, _global((user, tuple(span))))
        self._spans = {}


class _ItemTable:
    """The items side input: one pickled dict, unpickled once per DoFn.

    A singleton bytes value keeps the runner's side-input cache from walking
    every item object to size it (measured: seconds per bundle on 10k items).
    """

    def __init__(self) -> None:
        self._blob: bytes | None = None
        self._items: dict[str, SideRowInfo] = {}

    def get(self, blob: bytes) -> dict[str, SideRowInfo]:
        if blob is not self._blob and blob != self._blob:
            self._items = pickle.loads(blob)
            self._blob = blob
        return self._items


class _ItemTableFn(beam.CombineFn):
    """(key, SideRowInfo) pairs -> one pickled dict."""

    def create_accumulator(self) -> dict[str, SideRowInfo]:
        return {}

    def add_input(self, acc, key_info):
        acc[key_info[0]] = key_info[1]
        return acc

    def merge_accumulators(self, accumulators):
        out: dict[str, SideRowInfo] = {}
        for acc in accumulators:
            out.update(acc)
        return out

    def extract_output(self, acc):
        return pickle.dumps(acc, protocol=pickle.HIGHEST_PROTOCOL)


class _ParseSideTableFn(_CountingDoFn):
    """Batch of raw side-table rows -> (key, (raw record, SideRowInfo))."""

    def __init__(self, config: fc.FeatureConfig, source: str):
        self._config = config
        self._source = source

    def setup(self) -> None:
        self._parser = SideTableParser(self._config, self._source)

    def process(self, element: Any) -> Iterator[Any]:
        for record in _records(element):
            self._counts[f"{self._source}.read"] += 1
            try:
                key, info = self._parser.parse(record)
            except Reject as rej:
                self._counts[f"{self._source}.dead_letter.{rej.reason}"] += 1
                yield TaggedOutput(DEAD_LETTER_TAG, _dead_letter(rej.reason, self._source, record))
                continue
            yield key, (_as_record(record), info)


def _pick_row(source: str, key: str, rows: Iterable[tuple[Any, SideRowInfo]],
              counts: collections.Counter) -> tuple[SideRowInfo | None, list[dict]]:
    """Keeps one row per key (the smallest encoding, so reruns agree)."""
    rows = sorted(rows, key=lambda r: (r[1].entries, json.dumps(r[0], sort_keys=True,
                                                                 default=str)))
    if not rows:
        return None, []
    counts[f"{source}.accepted"] += 1
    dead = [_dead_letter(DUPLICATE_KEY, source, raw) for raw, _ in rows[1:]]
    if dead:
        counts[f"{source}.dead_letter.{DUPLICATE_KEY}"] += len(dead)
    return rows[0][1], dead


class _PickItemFn(_CountingDoFn):
    def process(self, element: tuple[str, Iterable]) -> Iterator[Any]:
        key, rows = element
        info, dead = _pick_row(ITEMS, key, rows, self._counts)
        for record in dead:
            yield TaggedOutput(DEAD_LETTER_TAG, record)
        if info is not None:
            yield key, info


class _JoinDedupeFn(_CountingDoFn):
    """Base of the per-user pass: join with the user row, drop duplicates."""

    def __init__(self, config: fc.FeatureConfig):
        self._config = config

    def setup(self) -> None:
        self._parser = EventParser(self._config)
        self._items = _ItemTable()

    def join_and_dedupe(self, user: str, grouped: Mapping[str, Iterable],
                        items: Mapping[str, Any]) -> tuple[SideRowInfo | None, list, list]:
        """Returns (user row, sorted accepted events, dead-letter records)."""
        info, dead = _pick_row(USERS, user, grouped[USERS], self._counts)
        events = [e for batch in grouped[EVENTS] for e in batch]
        if not events:
            return info, [], dead
        events.sort()
        accepted = []
        seen = set()
        duplicates = 0
        for event in events:
            key = event[:3]
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            if info is None:
                reason = UNKNOWN_USER
            elif event[2] not in items:
                reason = UNKNOWN_ITEM
            else:
                accepted.append(event)
                continue
            self._counts[f"events.dead_letter.{reason}"] += 1
            dead.append(_dead_letter(reason, EVENTS, self._parser.event_record(user, event)))
        if duplicates:
            self._counts[f"events.filtered.{DUPLICATE}"] += duplicates
        self._counts["events.accepted"] += len(accepted)
        return info, accepted, dead


def split_time(span: tuple[float, float] | None, eval_fraction: float) -> float | None:
    """min + (1 - eval_fraction) * (max - min); None when nothing was accepted."""
    if span is None:
        return None
    lo, hi = span
    return lo + (1.0 - eval_fraction) * (hi - lo)


class _SpanFn(beam.CombineFn):
    """(min, max) over (min, max) pairs; None when empty."""

    def create_accumulator(self) -> tuple[float, float] | None:
        return None

    def add_input(self, acc, span):
        return self.merge_accumulators([acc, span])

    def merge_accumulators(self, accumulators):
        spans = [a for a in accumulators if a is not None]
        if not spans:
            return None
        return (min(s[0] for s in spans), max(s[1] for s in spans))

    def extract_output(self, acc):
        return acc


class _SumCountsFn(beam.CombineFn):
    """Sums dicts of counts."""

    def create_accumulator(self) -> collections.Counter:
        return collections.Counter()

    def add_input(self, acc, counts):
        acc.update(counts)
        return acc

    def merge_accumulators(self, accumulators):
        out = collections.Counter()
        for acc in accumulators:
            out.update(acc)
        return out

    def extract_output(self, acc):
        return dict(acc)


class _MergeStatsFn(beam.CombineFn):
    """Merges the train-split statistics emitted by BuildExamples.

    A stats dict is {"vocab": {feature: Counter}, "items": {item: [train
    impressions, train clicks, train events, all events]}}.
    """

    def create_accumulator(self) -> dict[str, Any]:
        return {"vocab": collections.defaultdict(collections.Counter), "items": {}}

    def add_input(self, acc, stats):
        for name, counter in stats["vocab"].items():
            acc["vocab"][name].update(counter)
        items = acc["items"]
        for item, counts in stats["items"].items():
            have = items.get(item)
            if have is None:
                items[item] = list(counts)
            else:
                for i, c in enumerate(counts):
                    have[i] += c
        return acc

    def merge_accumulators(self, accumulators):
        out = self.create_accumulator()
        for acc in accumulators:
            self.add_input(out, acc)
        return out

    def extract_output(self, acc):
        return {"vocab": {k: dict(v) for k, v in acc["vocab"].items()}, "items": acc["items"]}


def _example_tag(kind: str, split: str) -> str:
    return f"{kind}_{split}"


class UserExampleBuilder:
    """Builds every example of one user from the user's accepted events.

    Pure Python so the hot loop can be tested without a pipeline; the DoFn
    below only feeds it and forwards its outputs.
    """

    def __init__(self, config: fc.FeatureConfig):
        self._config = config
        self._gap = float(config.session_gap_seconds)
        self._context = config.by_source(fc.SOURCE_EVENTS)
        derived = config.by_source(fc.SOURCE_DERIVED)
        self._event_derived = [s for s in derived if s.derive in _DERIVED_ON_EVENT]
        self._age_specs = [s for s in derived if s.derive == fc.DERIVE_ITEM_AGE_HOURS]
        vocab_names = {s.name for s in config.vocab_features}
        self._context_vocab = [(i, s.name) for i, s in enumerate(self._context)
                               if s.name in vocab_names]
        self._derived_vocab = [(i, s.name) for i, s in enumerate(self._event_derived)
                               if s.name in vocab_names]
        self._age_vocab = [s for s in self._age_specs if s.name in vocab_names]
        history = config.history_feature
        self._history_key = history.name.encode() if history else None
        self._history_len = (min(history.max_len, config.history_max_len)
                             if history else 0)
        self._ts_key = fc.TIMESTAMP_KEY.encode()
        self._session_key = fc.SESSION_ITEMS_KEY.encode()
        self._labels = {
            (c, f): int64_entry(fc.CLICK_LABEL.encode(), [c])
            + int64_entry(fc.FOLLOW_LABEL.encode(), [f])
            for c in (0, 1) for f in (0, 1)}
        self._new_user = {n: int64_entry(fc.NEW_USER_KEY.encode(), [n]) for n in (0, 1)}
        self._context_cache: dict[tuple, bytes] = {}
        self._item_piece_cache: dict[str, bytes] = {}
        self._derived_cache: dict[int, tuple] = {}
        self._age_makers = [(spec, float_entry_maker(spec.name.encode())
                             if spec.type == fc.NUMERIC else None)
                            for spec in self._age_specs]
        self._tags = {(k, s): _example_tag(k, s) for k in fc.EXAMPLE_KINDS for s in fc.SPLITS}
        self._timestamp_entry = int64_entry_maker(fc.TIMESTAMP_KEY.encode())

    def _context_entries(self, context: tuple, derived: tuple) -> bytes:
        key = (context, derived)
        entries = self._context_cache.get(key)
        if entries is None:
            entries = (b"".join(encode_value(s, v) for s, v in zip(self._context, context))
                       + b"".join(encode_value(s, v)
                                  for s, v in zip(self._event_derived, derived)))
            if len(self._context_cache) < 200_000:
                self._context_cache[key] = entries
        return entries

    def _item_piece(self, item: str) -> bytes:
        piece = self._item_piece_cache.get(item)
        if piece is None:
            piece = _bytes_piece(item.encode())
            if len(self._item_piece_cache) < 500_000:
                self._item_piece_cache[item] = piece
        return piece

    def _derived_values(self, ts: float) -> tuple:
        # hour_of_day and day_of_week depend only on the hour since the epoch.
        hour_index = int(math.floor(ts)) // 3600
        derived = self._derived_cache.get(hour_index)
        if derived is None:
            derived = tuple(_derive(s, hour_index * 3600) for s in self._event_derived)
            self._derived_cache[hour_index] = derived
        return derived

    def build(self, user: str, user_info: SideRowInfo, events: Sequence[tuple],
              split_ts: float | None, items: Mapping[str, SideRowInfo],
              outputs: Mapping[str, list], counts: collections.Counter,
              vocab: Mapping[str, collections.Counter],
              item_stats: dict[str, list[int]]) -> None:
        """Appends serialized examples to outputs[_example_tag(kind, split)].

        Args:
          user: the raw user id.
          user_info: the user's parsed side-table row.
          events: accepted events sorted by (ts, code, item, context).
          split_ts: eval = ts >= split_ts (None: everything is train).
          items: item id -> parsed item row (every event's item is present).
          outputs: example tag -> list, appended to.
          counts: summary counts, updated.
          vocab: feature -> Counter of train values, updated.
          item_stats: item -> [train impressions, train clicks, train events,
            all events], updated.
        """
        split_at = math.inf if split_ts is None else split_ts
        gap = self._gap
        user_key = bytes_entry(fc.USER_KEY.encode(), [user.encode()])
        new_user = self._new_user[1 if events[0][0] >= split_at else 0]
        per_user = user_key + new_user
        clicks_at: dict[str, list[float]] = {}
        follows_at: dict[str, list[float]] = {}
        click_ts: list[float] = []
        click_pieces: list[bytes] = []
        for ts, code, item, _ in events:
            if code == _CLICK:
                clicks_at.setdefault(item, []).append(ts)
                click_ts.append(ts)
                click_pieces.append(self._item_piece(item))
            elif code == _FOLLOW:
                follows_at.setdefault(item, []).append(ts)

        history_key, history_len = self._history_key, self._history_len
        history_entry = b""
        history_end = -1  # click_pieces[:history_end] are in history_entry
        n_clicks = len(click_ts)
        next_click = 0
        session_items: list[str] = []
        session_start = prev_ts = events[0][0]
        prev_eval = prev_ts >= split_at
        # accepted[split][code], examples[split][kind]; split 0 = train.
        accepted = [[0, 0, 0], [0, 0, 0]]
        context_counter: collections.Counter = collections.Counter()
        age_values: list[Any] = []
        tags = self._tags
        labels = self._labels
        age_specs = self._age_specs
        context_entries = self._context_entries
        derived_values = self._derived_values
        derived_cache = self._derived_cache
        timestamp_entry = self._timestamp_entry
        user_entries = user_info.entries
        retrieval_out = (outputs[tags[(fc.RETRIEVAL, fc.TRAIN)]],
                         outputs[tags[(fc.RETRIEVAL, fc.EVAL)]])
        ranking_out = (outputs[tags[(fc.RANKING, fc.TRAIN)]],
                       outputs[tags[(fc.RANKING, fc.EVAL)]])
        for ts, code, item, context in events:
            is_eval = ts >= split_at
            # Sessions: cut on an idle gap > threshold or at the split time.
            if ts - prev_ts > gap or is_eval != prev_eval:
                self._close_session(session_items, session_start, prev_eval, per_user,
                                    outputs, counts)
                session_items = []
                session_start = ts
            prev_ts, prev_eval = ts, is_eval
            stats = item_stats.get(item)
            if stats is None:
                stats = item_stats[item] = [0, 0, 0, 0]
            stats[3] += 1
            accepted[is_eval][code] += 1
            if not is_eval:
                stats[2] += 1
            if code == _FOLLOW:
                continue
            if code == _CLICK:
                session_items.append(item)
                if not is_eval:
                    stats[1] += 1
            elif not is_eval:
                stats[0] += 1
            # History: clicks strictly before ts.
            while next_click < n_clicks and click_ts[next_click] < ts:
                next_click += 1
            if history_key is not None and next_click != history_end:
                history_end = next_click
                history_entry = _bytes_entry_from_pieces(
                    history_key, click_pieces[max(0, next_click - history_len):next_click])
            derived = derived_cache.get(int(ts) // 3600)  # timestamps are > 0
            if derived is None:
                derived = derived_values(ts)
            item_info = items[item]
            entries = [user_entries, history_entry, item_info.entries,
                       context_entries(context, derived)]
            if age_specs:
                self._append_age(entries, age_values, item_info, ts, is_eval)
            entries.append(timestamp_entry(int(ts)))
            entries.append(per_user)
            if not is_eval:
                context_counter[(context, derived)] += 1
            if code == _CLICK:
                retrieval_out[is_eval].append(example_bytes(entries))
            else:
                clicked = clicks_at.get(item)
                followed = follows_at.get(item)
                entries.append(labels[(_within(clicked, ts, gap) if clicked else 0,
                                       _within(followed, ts, gap) if followed else 0)])
                ranking_out[is_eval].append(example_bytes(entries))
        self._close_session(session_items, session_start, prev_eval, per_user, outputs, counts)
        for split_index, split in enumerate(fc.SPLITS):
            for code, name in _EVENT_NAME.items():
                if accepted[split_index][code]:
                    counts[f"accepted.{split}.{name}"] += accepted[split_index][code]
            if accepted[split_index][_CLICK]:
                counts[f"examples.{fc.RETRIEVAL}.{split}"] += accepted[split_index][_CLICK]
            if accepted[split_index][_IMPRESSION]:
                counts[f"examples.{fc.RANKING}.{split}"] += accepted[split_index][_IMPRESSION]
        counts["users.with_events"] += 1
        if events[0][0] >= split_at:
            counts["users.new_in_eval"] += 1
        # Vocabulary counts, train split, one per event (tags: one per tag).
        train_events = sum(accepted[0])
        if train_events:
            for name, values in user_info.vocab:
                counter = vocab[name]
                for value in values:
                    counter[value] += train_events
        for (context, derived), n in context_counter.items():
            for i, name in self._context_vocab:
                for value in _vocab_values(context[i]):
                    vocab[name][value] += n
            for i, name in self._derived_vocab:
                vocab[name][derived[i]] += n
        for name, value in age_values:
            vocab[name][value] += 1

    def _append_age(self, entries: list[bytes], age_values: list[Any],
                    item_info: SideRowInfo, ts: float, is_eval: bool) -> None:
        """item_age_hours entries: (ts - created) / 3600 clipped at 0."""
        created = item_info.created_ts
        age_hours = None if created is None else max(0.0, (ts - created) / 3600.0)
        for spec, make in self._age_makers:
            value = _numeric_default(spec) if age_hours is None else age_hours
            if make is not None:
                entries.append(make(value))
                continue
            value = str(int(value))
            entries.append(encode_value(spec, value))
            if not is_eval and spec in self._age_vocab:
                age_values.append((spec.name, value))

    def _close_session(self, session_items: list[str], start: float, is_eval: bool,
                       per_user: bytes, outputs: Mapping[str, list],
                       counts: collections.Counter) -> None:
        split = fc.EVAL if is_eval else fc.TRAIN
        if not session_items:
            return
        counts[f"sessions.{split}"] += 1
        if len(session_items) < self._config.min_session_len:
            return
        outputs[_example_tag(fc.ITEM2VEC, split)].append(example_bytes([
            bytes_entry(self._session_key, [i.encode() for i in session_items]),
            int64_entry(self._ts_key, [int(math.floor(start))]),
            per_user]))
        counts[f"examples.{fc.ITEM2VEC}.{split}"] += 1


def _within(times: list[float], start: float, gap: float) -> int:
    """1 when some time in the sorted list lies in [start, start + gap]."""
    i = bisect.bisect_left(times, start)
    return 1 if i < len(times) and times[i] <= start + gap else 0


class _BuildExamplesFn(_JoinDedupeFn):
    """(user, {events, users}) -> example batches per kind and split.

    Joins, deduplicates and builds in one pass so the events are decoded
    once after the GroupByKey; bundle-level train statistics go to STATS_TAG.
    """

    def setup(self) -> None:
        super().setup()
        self._builder = UserExampleBuilder(self._config)

    def start_bundle(self) -> None:
        super().start_bundle()
        self._vocab = collections.defaultdict(collections.Counter)
        self._item_stats: dict[str, list[int]] = {}

    def process(self, element: tuple[str, Mapping[str, Iterable]], split_ts: float | None,
                items_blob: bytes) -> Iterator[Any]:
        user, grouped = element
        items = self._items.get(items_blob)
        info, events, dead = self.join_and_dedupe(user, grouped, items)
        for record in dead:
            yield TaggedOutput(DEAD_LETTER_TAG, record)
        if not events:
            return
        outputs: dict[str, list] = collections.defaultdict(list)
        self._builder.build(user, info, events, split_ts, items, outputs, self._counts,
                            self._vocab, self._item_stats)
        for tag, batch in outputs.items():
            if batch:
                yield TaggedOutput(tag, batch)

    def finish_bundle(self) -> Iterator[Any]:
        yield from super().finish_bundle()
        if self._item_stats:
            yield TaggedOutput(STATS_TAG, _global({"vocab": dict(self._vocab),
                                                   "items": self._item_stats}))
        self._vocab = collections.defaultdict(collections.Counter)
        self._item_stats = {}


def _user_span(element: tuple[str, Mapping[str, Iterable]]) -> Iterator[tuple[float, float]]:
    """Span of a user's events with a known item, if the user has a row."""
    _, grouped = element
    spans = list(grouped[SPAN_TAG])
    if spans and any(True for _ in grouped[USERS]):
        yield (min(s[0] for s in spans), max(s[1] for s in spans))


def vocabularies(config: fc.FeatureConfig, stats: Mapping[str, Any],
                 items: Mapping[str, SideRowInfo]) -> dict[str, list[str]]:
    """Feature -> vocabulary (most frequent first, ties by value, capped)."""
    counters = collections.defaultdict(collections.Counter)
    for name, counter in stats["vocab"].items():
        counters[name].update(counter)
    for item, (_, _, train_events, _) in stats["items"].items():
        info = items.get(item)
        if info is None or not train_events:
            continue
        for name, values in info.vocab:
            for value in values:
                counters[name][value] += train_events
    out = {}
    for spec in config.vocab_features:
        counter = counters.get(spec.name, {})
        ranked = sorted(((v, n) for v, n in counter.items() if v != ""),
                        key=lambda vn: (-vn[1], vn[0]))
        out[spec.name] = [v for v, _ in ranked[:spec.vocab_size]]
    return out


def _item_example(key_info: tuple[str, SideRowInfo], stats: Mapping[str, Any]) -> Iterator[list[bytes]]:
    key, info = key_info
    counts = stats["items"].get(key)
    if counts is None:
        return
    yield [example_bytes([info.entries,
                          int64_entry(fc.ITEM_CLICKS_KEY.encode(), [counts[1]]),
                          int64_entry(fc.ITEM_IMPRESSIONS_KEY.encode(), [counts[0]])])]


def summarize(config: fc.FeatureConfig, counts: Mapping[str, int],
              span: tuple[float, float] | None, split_ts: float | None,
              num_items_written: int | None = None) -> dict[str, Any]:
    """The summary.json content from the pipeline's combined counts."""

    def block(source: str, reasons: Sequence[str]) -> dict[str, Any]:
        return {"read": counts.get(f"{source}.read", 0),
                "accepted": counts.get(f"{source}.accepted", 0),
                "dead_letter": {r: counts.get(f"{source}.dead_letter.{r}", 0) for r in reasons}}

    events = block(EVENTS, EVENT_DEAD_LETTER_REASONS)
    events["filtered"] = {DUPLICATE: counts.get(f"events.filtered.{DUPLICATE}", 0)}
    events["accepted_by_split"] = {
        split: {name: counts.get(f"accepted.{split}.{name}", 0) for name in fc.EVENT_TYPES}
        for split in fc.SPLITS}
    users, items = block(USERS, SIDE_DEAD_LETTER_REASONS), block(ITEMS, SIDE_DEAD_LETTER_REASONS)
    examples = {kind: {split: counts.get(f"examples.{kind}.{split}", 0) for split in fc.SPLITS}
                for kind in fc.EXAMPLE_KINDS}
    examples[ITEMS] = counts.get("examples.items", 0)
    sessions = {split: counts.get(f"sessions.{split}", 0) for split in fc.SPLITS}

    def reconciles(block_: Mapping[str, Any]) -> bool:
        return block_["read"] == (block_["accepted"] + sum(block_["dead_letter"].values())
                                  + sum(block_.get("filtered", {}).values()))

    by_split = events["accepted_by_split"]
    checks = {
        "events_reconcile": reconciles(events),
        "users_reconcile": reconciles(users),
        "items_reconcile": reconciles(items),
        "accepted_split_sum": events["accepted"] == sum(
            sum(v.values()) for v in by_split.values()),
        "ranking_is_impressions": all(
            examples[fc.RANKING][s] == by_split[s][fc.IMPRESSION] for s in fc.SPLITS),
        "retrieval_is_clicks": all(
            examples[fc.RETRIEVAL][s] == by_split[s][fc.CLICK] for s in fc.SPLITS),
        "item2vec_at_most_sessions": all(
            examples[fc.ITEM2VEC][s] <= sessions[s] for s in fc.SPLITS),
    }
    return {
        "config": config.name,
        "session_gap_seconds": config.session_gap_seconds,
        "eval_fraction": config.eval_fraction,
        "min_timestamp": span[0] if span else None,
        "max_timestamp": span[1] if span else None,
        "split_timestamp": split_ts,
        "events": events,
        "users": dict(users, with_events=counts.get("users.with_events", 0),
                      new_in_eval=counts.get("users.new_in_eval", 0)),
        "items": items,
        "sessions": sessions,
        "examples": examples,
        "checks": checks,
    }


# ---- composites -----------------------------------------------------------------
class SessionizeOutputs(NamedTuple):
    """PCollections produced by `Sessionize`.

    Attributes:
      examples: (kind, split) -> PCollection of lists of serialized tf.Example.
      items: PCollection of lists of serialized item tf.Examples.
      vocab: PCollection of (feature name, [values, most frequent first]).
      item_frequencies: singleton [(item_id, impressions, clicks)] (train),
        sorted by item id.
      dead_letter: PCollection of {"reason", "source", "record"} dicts.
      summary: singleton summary dict (see `summarize`).
    """

    examples: dict[tuple[str, str], beam.PCollection]
    items: beam.PCollection
    vocab: beam.PCollection
    item_frequencies: beam.PCollection
    dead_letter: beam.PCollection
    summary: beam.PCollection


class ParseSideTable(beam.PTransform):
    """Raw users/items records -> ((key, (raw, SideRowInfo)), dead letters, counts)."""

    def __init__(self, config: fc.FeatureConfig, source: str):
        super().__init__()
        self._config, self._source = config, source

    def expand(self, records: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return records | "Parse" >> beam.ParDo(
            _ParseSideTableFn(self._config, self._source)).with_outputs(
                DEAD_LETTER_TAG, COUNTS_TAG, main="rows")


class Sessionize(beam.PTransform):
    """Raw events/users/items records -> examples, vocabularies, summary.

    Input: {"events": ..., "users": ..., "items": ...}, each a PCollection
    whose elements are raw records or lists of them (a record: a JSON line as
    str/bytes, or a dict row, e.g. a CSV row). Output: `SessionizeOutputs`.
    """

    def __init__(self, config: fc.FeatureConfig, split_timestamp: float | None = None):
        super().__init__()
        self._config = config
        self._split_timestamp = split_timestamp

    def expand(self, inputs: Mapping[str, beam.PCollection]) -> SessionizeOutputs:
        config = self._config
        users = inputs[USERS] | "ParseUsers" >> ParseSideTable(config, USERS)
        items_raw = inputs[ITEMS] | "ParseItems" >> ParseSideTable(config, ITEMS)
        items = (items_raw.rows
                 | "GroupItemsByKey" >> beam.GroupByKey()
                 | "PickItemRow" >> beam.ParDo(_PickItemFn()).with_outputs(
                     DEAD_LETTER_TAG, COUNTS_TAG, main="items"))
        items_blob = AsSingleton(items.items | "ItemTable" >> beam.CombineGlobally(
            _ItemTableFn()))
        events = inputs[EVENTS] | "ParseEvents" >> beam.ParDo(
            _ParseEventsFn(config), items_blob=items_blob).with_outputs(
                DEAD_LETTER_TAG, COUNTS_TAG, SPAN_TAG, main="events")

        user_keys = users.rows | "UserKeys" >> beam.Map(lambda kv: (kv[0], None))
        span = ({SPAN_TAG: events[SPAN_TAG], USERS: user_keys}
                | "GroupSpansByUser" >> beam.CoGroupByKey()
                | "AcceptedUserSpans" >> beam.FlatMap(_user_span)
                | "TimeSpan" >> beam.CombineGlobally(_SpanFn()))
        if self._split_timestamp is None:
            split_ts = span | "SplitTime" >> beam.Map(split_time, config.eval_fraction)
        else:
            split_ts = (inputs[EVENTS].pipeline | "SplitTime" >> beam.Create(
                [float(self._split_timestamp)]))

        tags = [_example_tag(k, s) for k in fc.EXAMPLE_KINDS for s in fc.SPLITS]
        built = ({EVENTS: events.events, USERS: users.rows}
                 | "GroupByUser" >> beam.CoGroupByKey()
                 | "BuildExamples" >> beam.ParDo(
                     _BuildExamplesFn(config), split_ts=AsSingleton(split_ts),
                     items_blob=items_blob).with_outputs(
                         DEAD_LETTER_TAG, COUNTS_TAG, STATS_TAG, *tags))
        stats = built[STATS_TAG] | "MergeStats" >> beam.CombineGlobally(_MergeStatsFn())
        stats_view = AsSingleton(stats)

        item_examples = items.items | "ItemCatalogue" >> beam.FlatMap(
            _item_example, stats=stats_view)
        item_counts = (item_examples
                       | "CountItemExamples" >> beam.combiners.Count.Globally()
                       | "ItemCountDict" >> beam.Map(lambda n: {"examples.items": n}))
        vocab = (stats | "Vocabularies" >> beam.FlatMap(
            lambda s, blob: vocabularies(config, s, pickle.loads(blob)).items(),
            blob=items_blob))
        frequencies = stats | "ItemFrequencies" >> beam.Map(
            lambda s: sorted((item, c[0], c[1]) for item, c in s["items"].items() if c[2]))

        counts = ((events[COUNTS_TAG], users[COUNTS_TAG], items_raw[COUNTS_TAG],
                   items[COUNTS_TAG], built[COUNTS_TAG], item_counts)
                  | "FlattenCounts" >> beam.Flatten()
                  | "SumCounts" >> beam.CombineGlobally(_SumCountsFn()))
        summary = counts | "Summary" >> beam.Map(
            lambda c, sp, ts: summarize(config, c, sp, ts),
            sp=AsSingleton(span), ts=AsSingleton(split_ts))
        dead_letter = ((events[DEAD_LETTER_TAG], users[DEAD_LETTER_TAG],
                        items_raw[DEAD_LETTER_TAG], items[DEAD_LETTER_TAG],
                        built[DEAD_LETTER_TAG])
                       | "FlattenDeadLetter" >> beam.Flatten())
        return SessionizeOutputs(
            examples={(k, s): built[_example_tag(k, s)]
                      for k in fc.EXAMPLE_KINDS for s in fc.SPLITS},
            items=item_examples, vocab=vocab, item_frequencies=frequencies,
            dead_letter=dead_letter, summary=summary)


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path, mime_type="text/plain") as handle:
        handle.write(text.encode("utf-8"))


def _dead_letter_json(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, default=str, ensure_ascii=False)


class WriteOutputs(beam.PTransform):
    """Writes `SessionizeOutputs` under output_dir (README layout)."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._out = output_dir.rstrip("/")

    def expand(self, outputs: SessionizeOutputs) -> None:
        out = self._out
        join = FileSystems.join
        for (kind, split), pcoll in outputs.examples.items():
            label = f"Write{kind.capitalize()}{split.capitalize()}"
            pcoll | label >> raw_io.WriteTFRecordBatches(
                join(out, kind, f"Split-{split}", "data"))
        outputs.items | "WriteItems" >> raw_io.WriteTFRecordBatches(join(out, ITEMS, "data"))
        (outputs.dead_letter
         | "DeadLetterJson" >> beam.Map(_dead_letter_json)
         | "WriteDeadLetter" >> beam.io.WriteToText(
             join(out, "dead_letter", "dead_letter"), file_name_suffix=".jsonl"))
        outputs.vocab | "WriteVocabularies" >> beam.Map(
            lambda fv: _write_text(join(out, "vocab", f"{fv[0]}.txt"),
                                   "".join(f"{v}\n" for v in fv[1])))
        outputs.item_frequencies | "WriteItemFrequencies" >> beam.Map(
            lambda rows: _write_text(join(out, "item_frequencies.tsv"),
                                     "item_id\timpressions\tclicks\n"
                                     + "".join(f"{i}\t{n}\t{c}\n" for i, n, c in rows)))
        outputs.summary | "WriteSummary" >> beam.Map(
            lambda s: _write_text(join(out, "summary.json"),
                                  json.dumps(s, indent=2, sort_keys=True) + "\n"))


def parse_split_timestamp(value: str | None) -> float | None:
    """--split_timestamp: unix seconds or an ISO-8601 time (UTC if naive)."""
    if value is None or value == "":
        return None
    try:
        return parse_timestamp(value, "s")
    except ValueError:
        return parse_timestamp(value, "iso8601")


def build_pipeline(p: beam.Pipeline, args: argparse.Namespace,
                   config: fc.FeatureConfig | None = None) -> SessionizeOutputs:
    """Reads the raw tables, sessionizes and writes everything under output_dir.

    Args:
      p: the pipeline to add to.
      args: namespace with config, events, users, items, output_dir and
        optionally split_timestamp, batch_size.
      config: an already loaded config (else read from args.config).
    """
    config = config or fc.load(args.config)
    batch = getattr(args, "batch_size", raw_io.DEFAULT_BATCH_SIZE)
    inputs = {
        EVENTS: p | "ReadEvents" >> raw_io.ReadRawTable(args.events, batch),
        USERS: p | "ReadUsers" >> raw_io.ReadRawTable(args.users, batch),
        ITEMS: p | "ReadItems" >> raw_io.ReadRawTable(args.items, batch),
    }
    outputs = inputs | "Sessionize" >> Sessionize(
        config, parse_split_timestamp(getattr(args, "split_timestamp", None)))
    outputs | "WriteOutputs" >> WriteOutputs(args.output_dir)
    return outputs


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="feature config YAML")
    parser.add_argument("--events", required=True, help="events file glob")
    parser.add_argument("--users", required=True, help="users side table glob")
    parser.add_argument("--items", required=True, help="items side table glob")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--split_timestamp", default=None,
                        help="train/eval split time (unix seconds or ISO-8601); "
                             "default: from eval_fraction over accepted events")
    parser.add_argument("--batch_size", type=int, default=raw_io.DEFAULT_BATCH_SIZE,
                        help="raw records per element when reading")
    return parser.parse_known_args(argv)


def run(argv: Sequence[str] | None = None) -> None:
    """Runs the job; flags this job does not know go to Beam."""
    args, beam_args = parse_args(argv)
    config = fc.load(args.config)
    options = PipelineOptions(beam_args)
    with beam.Pipeline(options=options) as p:
        build_pipeline(p, args, config)


def main() -> None:
    logging.getLogger().setLevel(logging.INFO)
    run()


if __name__ == "__main__":
    # Run through the package module so DoFns and row types pickle by their
    # importable name (beam_jobs.sessionize.X), not __main__.X, on any runner.
    from beam_jobs import sessionize as _module

    _module.main()
