"""Raw record parsing for the sessionize job: events and side-table rows.

Pure Python (no Beam) so every rule is unit-testable: `EventParser` turns a
raw event into (user, compact event tuple), `SideTableParser` a users / items
row into (key, SideRowInfo) with its feature entries already encoded. Bad
records raise `Reject`, whose reason names the dead-letter counter.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from feature_contract import feature_config as fc
from beam_jobs import compiled as compiled_loops
from beam_jobs import raw_io
from beam_jobs.example_encoding import (
    _bytes_piece, bytes_value_entry_maker, encode_value, packed_bytes_entry_maker)

try:  # orjson is pinned in requirements.lock; json keeps the job importable without it
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    _loads = json.loads

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


# ---- value parsing -----------------------------------------------------------
def parse_timestamp(value: Any, unit: str) -> float:
    """Unix seconds (float) from a raw timestamp.

    Raises:
      ValueError: missing, unparseable or non-finite value.
    """
    if value is None or isinstance(value, bool) or value == "":
        raise ValueError(f"missing timestamp {value!r}")
    if unit == "iso8601" or fc.is_time_format(unit):
        if not isinstance(value, str):
            raise ValueError(f"want a time string ({unit}), got {value!r}")
        parsed = (datetime.datetime.fromisoformat(value.strip()) if unit == "iso8601"
                  else datetime.datetime.strptime(value.strip(), unit))
        if parsed.tzinfo is None:  # a time without an offset is UTC
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
        elif (listed := _json_list(raw)) is not None:
            values = [_to_str(v) for v in listed]  # a JSON list in a CSV cell
        else:
            values = _to_str(raw).split(spec.separator)
        return tuple([t for v in values if v and (t := v.strip())][:spec.max_len])
    value = _to_str(raw)
    return value if value else spec.default


def _json_list(raw: Any) -> list | None:
    """The list a str holding a JSON list of scalars ('["a", "b"]') encodes, else None.

    README: tags are "a JSON list or one string joined by `separator`"; a
    CSV cell can only hold the list as text.
    """
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(
            v is None or isinstance(v, (str, int, float)) for v in value):
        return value
    return None


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


_MAX_INTERNED_CONTEXTS = 100_000


class EventParser:
    """Raw event record -> (user, (ts, event_code, item, context_values)).

    context_values holds the normalized `source: events` features in config
    order; ts is unix seconds (float). With `impression_id_column` set the
    event carries a fifth field, the impression id as a str ("" when
    missing): (ts, event_code, item, context_values, impression_id). The
    four-field shape stays the default so the common case pays nothing.

    `compiled` picks `parse_batch`'s loop: None = the compiled one when built
    (beam_jobs.compiled), False = the Python one, True = the compiled one
    or ImportError. Both give the same results.
    """

    def __init__(self, config: fc.FeatureConfig, compiled: bool | None = None):
        self._config = config
        self._compiled = compiled_loops.wanted(compiled)
        # Records the compiled path's flat-line scanner read itself (the rest
        # went to orjson): for tests and profiling.
        self.scanned_lines = 0
        self._event_codes = {raw: _EVENT_CODE[canon]
                             for raw, canon in config.event_values.items()}
        self._context = config.by_source(fc.SOURCE_EVENTS)
        self._context_norms = [(s.raw_column, s.default, s.type == fc.CATEGORICAL,
                                normalizer(s)) for s in self._context]
        self._unit_seconds = config.timestamp_unit == "s"
        self._id_column = config.impression_id_column
        # One tuple object per distinct context value (see parse_batch).
        self._contexts: dict[tuple, tuple] = {}

    def parse(self, record: Any) -> tuple[str, tuple]:
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
        # Event names are stripped like ids ("a, b, click" from a CSV writer).
        code = self._event_codes.get(_to_str(raw_event))
        if code is None:
            raise Reject(UNKNOWN_EVENT, repr(raw_event))
        raw_ts = row.get(config.timestamp_column)
        if raw_ts.__class__ is int and self._unit_seconds:
            ts = float(raw_ts)
        else:
            try:
                # Whole seconds, as the examples write them: events of one
                # second then order impression < click < follow whatever
                # their milliseconds (README), and a history never holds a
                # click stamped with its own example's second.
                ts = float(math.floor(parse_timestamp(raw_ts, config.timestamp_unit)))
            except (TypeError, ValueError, OverflowError) as err:
                raise Reject(BAD_TIMESTAMP, str(err)) from None
        if not config.min_timestamp <= ts < config.max_timestamp:
            raise Reject(OUT_OF_RANGE, str(ts))
        context = tuple([(v.strip() or default) if (v := row.get(col)).__class__ is str
                         and categorical else norm(v)
                         for col, default, categorical, norm in self._context_norms])
        if self._id_column is not None:
            return user, (ts, code, item, context, _to_str(row.get(self._id_column)))
        return user, (ts, code, item, context)

    def parse_batch(self, records: Iterable[Any]) -> tuple[list[tuple], list[tuple]]:
        """Parses many records: ([(user, event)], [(Reject, record)]), in order.

        The same results as `parse` per record; the common shape (a JSON line
        with str ids, a known str event and int seconds in range) is handled
        inline, which saves most of the per-record cost, and anything else
        goes through `parse`.
        """
        if self._unit_seconds and self._compiled:
            parsed = []
            return parsed, self._parse_compiled(records, parsed)
        config = self._config
        user_col, item_col = config.user_column, config.item_column
        event_col, ts_col = config.event_column, config.timestamp_column
        lo, hi = config.min_timestamp, config.max_timestamp
        codes = self._event_codes
        norms = self._context_norms
        fast = self._unit_seconds
        id_col = self._id_column
        loads = _loads
        # Equal contexts share one tuple object: marshal then writes a
        # user's repeated context once and refers back to it (~40% smaller
        # event blobs in the shuffle, the job's largest memory), and the
        # unmarshalled events share it too. Capped: a log of ever-new
        # contexts stops adding once the table is full.
        contexts = self._contexts
        intern_context = contexts.setdefault if len(contexts) < _MAX_INTERNED_CONTEXTS else None
        parsed: list[tuple] = []
        rejected: list[tuple] = []
        for record in records:
            if fast and record.__class__ is bytes:
                try:
                    row = loads(record)
                except ValueError:
                    row = None
                if row.__class__ is dict:
                    user, item = row.get(user_col), row.get(item_col)
                    raw_event, raw_ts = row.get(event_col), row.get(ts_col)
                    if (user.__class__ is str and item.__class__ is str
                            and raw_event.__class__ is str and raw_ts.__class__ is int):
                        user, item = user.strip(), item.strip()
                        code = codes.get(raw_event)
                        ts = float(raw_ts)
                        if user and item and code is not None and lo <= ts < hi:
                            context = tuple([
                                (v.strip() or default)
                                if (v := row.get(col)).__class__ is str and categorical
                                else norm(v) for col, default, categorical, norm in norms])
                            if intern_context is not None:
                                context = intern_context(context, context)
                            if id_col is None:
                                parsed.append((user, (ts, code, item, context)))
                            else:
                                parsed.append((user, (ts, code, item, context,
                                                      _to_str(row.get(id_col)))))
                            continue
            try:
                parsed.append(self.parse(record))
            except Reject as rej:
                rejected.append((rej, record))
        return parsed, rejected

    def parse_into(self, records: Iterable[Any], pending: dict[str, list]
                   ) -> list[tuple]:
        """`parse_batch`, each parsed event appended to pending[user] instead.

        pending maps user -> list of events (new users are added in the order
        they first appear, as `parse_batch` would list them); the sessionize
        job collects its events per user this way without the (user, event)
        pairs. Returns the rejects [(Reject, record)], in order.
        """
        if self._unit_seconds and self._compiled:
            return self._parse_compiled(records, pending)
        parsed, rejected = self.parse_batch(records)
        for user, event in parsed:
            events = pending.get(user)
            if events is None:
                events = pending[user] = []
            events.append(event)
        return rejected

    def _parse_compiled(self, records: Iterable[Any], sink: list | dict) -> list[tuple]:
        """`parse_batch`'s loop, compiled (beam_jobs/_fastloops.c: parse_events).

        sink: a list of (user, event) pairs or a dict user -> events, appended to.
        """
        config = self._config
        contexts = self._contexts
        rejected: list[tuple] = []
        parse = self.parse
        if sink.__class__ is list:
            def slow(record: Any) -> None:
                try:
                    sink.append(parse(record))
                except Reject as rej:
                    rejected.append((rej, record))
        else:
            def slow(record: Any) -> None:
                try:
                    user, event = parse(record)
                except Reject as rej:
                    rejected.append((rej, record))
                    return
                events = sink.get(user)
                if events is None:
                    events = sink[user] = []
                events.append(event)

        self.scanned_lines += compiled_loops.module().parse_events(
            records, _loads, config.user_column, config.item_column, config.event_column,
            config.timestamp_column, config.min_timestamp, config.max_timestamp,
            self._event_codes, self._context_norms,
            contexts if len(contexts) < _MAX_INTERNED_CONTEXTS else None,
            self._id_column, _to_str, slow, sink)
        return rejected

    @property
    def compiled(self) -> bool:
        """Whether this parser runs the compiled loops (see `beam_jobs.compiled`)."""
        return self._compiled

    def event_record(self, user: str, event: tuple) -> dict[str, Any]:
        """A parsed event back as a row (for join-failure dead letters)."""
        config = self._config
        ts, code, item, context = event[:4]
        row = {config.user_column: user, config.item_column: item,
               config.event_column: _EVENT_NAME[code], config.timestamp_column: ts}
        if self._id_column is not None:
            row[self._id_column] = event[4]
        for spec, value in zip(self._context, context):
            row[spec.raw_column] = list(value) if isinstance(value, tuple) else value
        return row


def known_times(events: list[tuple], items: Any, keep: bool) -> tuple | None:
    """The timestamps of the events whose item is in `items` (all when None).

    Returns (smallest, largest, the timestamps in event order if `keep` else
    None, how many events are known), or None when no event's item is
    known. `_fastloops.known_times` is its compiled twin.
    """
    known = ([event[0] for event in events] if items is None
             else [event[0] for event in events if event[2] in items])
    if not known:
        return None
    return min(known), max(known), (known if keep else None), len(known)


def _id_order(event: tuple) -> tuple:
    """Sort key of an event with an impression id: the id before the context."""
    return (event[0], event[1], event[2], event[4], event[3])


def sort_and_dedupe(events: list[tuple], with_ids: bool) -> tuple[list[tuple], int]:
    """Sorts one user's events in place and drops exact duplicates.

    Two events are duplicates when they agree in timestamp, event type and
    item and, when events carry an impression id (`with_ids`), in the id:
    two clicks in the same second on two impressions of one item are two
    clicks. The first in sort order is kept (the smallest context, so reruns
    agree). The order is (ts, code, item, context), or (ts, code, item, id,
    context) with ids, which puts every duplicate next to the event it
    repeats and orders same-second events impression < click < follow.

    Args:
      events: parsed event tuples of one user (`EventParser` shapes).
      with_ids: whether the events carry the impression id (fifth field).

    Returns:
      (the unique events in order, the number of duplicates dropped).
    """
    if with_ids:
        events.sort(key=_id_order)
    else:
        events.sort()
    unique = []
    prev_ts = prev_code = prev_item = prev_id = None
    if not with_ids:
        for event in events:
            ts, code, item, _ = event
            if ts == prev_ts and item == prev_item and code == prev_code:
                continue
            prev_ts, prev_code, prev_item = ts, code, item
            unique.append(event)
    else:
        for event in events:
            ts, code, item, _, impression_id = event
            if (ts == prev_ts and item == prev_item and code == prev_code
                    and impression_id == prev_id):
                continue
            prev_ts, prev_code, prev_item, prev_id = ts, code, item, impression_id
            unique.append(event)
    return unique, len(events) - len(unique)


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


_MAX_CACHED_ENTRIES = 20_000  # per side-table feature


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
        self._created = config.item_created_column if source == ITEMS else None
        # Per feature: (spec, raw column, raw value -> (entry, vocab values), its cache).
        self._columns = []
        for spec in self._specs:
            cache: dict[Any, Any] = {}
            self._columns.append((spec, spec.raw_column, self._encoder(spec, cache), cache))
        self._vocab_index = [(i, s.name) for i, s in enumerate(self._specs)
                             if s.name in vocab_names]

    @staticmethod
    def _encoder(spec: fc.FeatureSpec, cache: dict[Any, Any]
                 ) -> Callable[[Any], tuple[bytes, tuple[str, ...]]]:
        """raw value -> (encode_value entry, `_vocab_values`), for one feature.

        Each feature caches at most _MAX_CACHED_ENTRIES values, so a column of
        unique values (an id, a price) cannot crowd out the others; a miss
        still costs one prefix lookup and concatenation
        (`bytes_value_entry_maker`), not a full `encode_value`.
        """
        limit = _MAX_CACHED_ENTRIES
        norm = normalizer(spec)
        if spec.type == fc.CATEGORICAL:
            make = bytes_value_entry_maker(spec.name.encode())

            # Keyed on the raw value, so a repeat skips its normalization too:
            # a str as itself, any other hashable raw value (a JSON int, a
            # missing column's None) with its type, since 7, 7.0 and True are
            # equal keys with different strings. Unhashable values (a list)
            # are normalized every time.
            def categorical(raw: Any) -> tuple[bytes, tuple[str, ...]]:
                key = raw if raw.__class__ is str else (raw.__class__, raw)
                try:
                    hit = cache.get(key)
                except TypeError:
                    key = hit = None
                if hit is None:
                    value = norm(raw)
                    hit = (make(value.encode()), (value,) if value else ())
                    if key is not None and raw == raw and len(cache) < limit:  # NaN: never hit
                        cache[key] = hit
                return hit

            return categorical
        if spec.type == fc.TAGS:
            make = packed_bytes_entry_maker(spec.name.encode())

            # Tag lists are mostly unique (15,714 of 25,000 synthetic users),
            # their tags are not: the cache holds one packed piece per tag.
            def piece(tag: str) -> bytes:
                packed = cache.get(tag)
                if packed is None:
                    packed = _bytes_piece(tag.encode())
                    if len(cache) < limit:
                        cache[tag] = packed
                return packed

            def tags(raw: Any) -> tuple[bytes, tuple[str, ...]]:
                values = norm(raw)
                return make(b"".join([piece(t) for t in values])), values

            return tags

        # The rest are numeric (a sequence is a history feature), keyed on
        # the normalized value. A zero is not cached
        # (0.0 == -0.0 would share an entry), nor a NaN (a "nan" default:
        # never equal to itself, it would only fill the cache).
        def numeric(raw: Any) -> tuple[bytes, tuple[str, ...]]:
            value = norm(raw)
            entry = cache.get(value)
            if entry is None:
                entry = encode_value(spec, value)
                if len(cache) < limit and value and value == value:
                    cache[value] = entry
            return entry, ()

        return numeric

    def parse(self, record: Any) -> tuple[str, SideRowInfo]:
        """Raises Reject on a bad record."""
        row = _record_dict(record)
        key = _to_str(row.get(self._key))
        if not key:
            raise Reject(MISSING_KEY, f"no {self._key!r}")
        get = row.get
        encoded = [encode(get(column)) for _, column, encode, _ in self._columns]
        entries = b"".join([entry for entry, _ in encoded])
        vocab = tuple([(name, encoded[i][1]) for i, name in self._vocab_index])
        created = None
        if self._created:
            try:
                created = parse_timestamp(row.get(self._created), self._config.timestamp_unit)
            except (TypeError, ValueError, OverflowError):
                created = None
        return key, SideRowInfo(entries, vocab, created)
