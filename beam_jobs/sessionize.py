"""Sessionize job: raw click logs -> validated, sessionized tf.Example TFRecords.

    python -m beam_jobs.sessionize --config CONFIG --events GLOB [--users GLOB] \
        [--items GLOB] --output_dir OUT [--split_timestamp TS] [Beam flags...]

Unknown flags go to Beam (`--runner`, `--direct_num_workers`, Dataflow, Flink
or Spark options). The output layout and the tf.Example encoding are the
README's "Examples written by the sessionize job".

Steps (labelled CamelCase; `Sessionize` chains them and is what a TFX
component calls inside its own pipeline, `build_pipeline` adds reading and
`WriteOutputs` writing):

  ParseUsers / ParseItems (+ PickItemRow)  side rows -> encoded feature
      entries; malformed, missing_key and duplicate_key rows dead-lettered.
      The items table becomes one pickled-dict singleton side input, the
      users' keys one pickled-frozenset singleton (UserKeySet).
  ParseEvents  raw records -> typed events grouped per user within a batch,
      shuffled as one marshal blob per (user, batch); malformed, missing_id,
      unknown_event, bad_timestamp and out_of_range rows dead-lettered.
  TimeSpan / SplitTime  the config's split mode (beam_jobs.splits): time_span
      split_ts = min + (1 - eval_fraction) * (max - min) over accepted events
      (events of known users with known items; exact duplicates never move
      the span); event_fraction the time of the event at floor((1 - f) * N)
      of those events in time order; timestamp the given time (also the
      --split_timestamp flag); random_users none (BuildExamples puts a
      seeded-random share of the users wholly in eval). A singleton side
      input.
  No users / items table  (allowed when only id features read it) every
      user / item of the events is known, its row filled from the id
      (DistinctItems / ItemIdRows for items, inline for users).
  GroupByUser + BuildExamples  one pass per user (one GroupByKey of the
      event blobs and the user's rows, a join): exact duplicates (user, item, event, timestamp, and
      impression id when the config names an id column) filtered, events of users or items without a row dead-lettered
      (unknown_user, unknown_item), then sessions, history, labels and every
      example kind, plus the train-split statistics.
  MergeStats, Vocabularies, ItemFrequencies, ItemCatalogue, SumCounts,
      ValidationCutoff / CountValidation, Summary  from in-pipeline combines
      (not from metrics); WriteOutputs ends with the stop rules
      (beam_jobs.run_report: empty table, too many dead letters).

Semantics decided here (README leaves them open):
  * Sessions are cut by *any* accepted event: a new session starts when the
    idle time since the user's previous event is strictly greater than
    `session_gap_seconds` (a gap of exactly the threshold stays in the session),
    or when the split time falls between the two events. An item2vec example holds the session's
    clicked items (in time order) when there are at least `min_session_len`.
  * Event times are whole seconds (a sub-second part is dropped when a row
    is parsed; examples write int64 seconds). Events at the same time are
    ordered impression < click < follow, then by
    item id, so an impression and its click in the same second pair up and
    the output is deterministic.
  * Labels: each click is attributed to at most one impression, the latest
    of its item at or before it within `attribution_window_seconds`
    (inclusive; default `session_gap_seconds`), or with
    `impression_id_column` the impression row with its id; a follow goes to
    its click's impression. An impression is labelled 1 once however many
    clicks it has; attribution never crosses the split time
    (`example_builder.attribute_by_time` / `attribute_by_id`). summary.json
    counts attributed and unattributed clicks and follows per split.
  * History (`clicked_item_list`) holds clicks strictly before the example's
    timestamp, the most recent last, at most min(max_len, history_max_len).
  * Vocabularies count train-split accepted events: each event adds its
    user's, its item's and its own (context, derived) values; tags count per
    tag; the empty string (missing) is never a vocabulary entry; values seen
    fewer than min_count times are dropped (FeatureConfig.vocab_rule).
  * A missing numeric value is `float(spec.default)` or 0.0; a missing tags
    value is an empty list; a missing or unparseable item creation time gives
    item_age_hours = 0.
  * Dead-letter records hold the raw line / row for parse failures and the
    parsed event (column -> value) for join failures, which happen after the
    raw text is dropped.

Modules: `event_parsing` (raw record -> event tuple / side row),
`example_encoding` (tf.Example wire bytes), `example_builder` (one user's
sessions, history, labels and examples); this module holds the DoFns,
combines, composites and the CLI, and re-exports the public names.

Performance notes (bench/sessionize_bench.py, 1M synthetic events, one
DirectRunner worker): 28.0 -> 21.6 CPU-seconds per 1M events from batch
parsing with an inline fast path, marshal blobs through the shuffle (a
GroupByKey on the Python runners decodes and re-encodes every value),
plain tuples instead of NamedTuples through shuffles (else pickled), the
cyclic GC paused in the hot loops and the run's long-lived objects frozen,
cached tf.Example heads / TFRecord length headers, and gzip on a background
thread. What is left is roughly a third Beam's per-bundle / per-element
machinery and fixed pipeline setup (~2.6 CPU-s at any size), the rest
parsing (~2 us/event) and building (~3.5 us/event). `--direct_num_workers=2`
does not help: multi_processing ships every element over gRPC (30.5 CPU-s,
outputs identical), and multi_threading (Beam 2.77) corrupts the in-memory
data channel at this size: the pre-speed-up job failed with "Unknown type
tag" decoding GroupByUser's input, this one silently lost 0.9% of the events
(summary check events_reconcile false). Do not use multi_threading.
Issue #15: BuildExamples emits a bundle's examples as one list per kind and
split per EXAMPLE_FLUSH_SIZE events (was one per user and kind), and run()
memoizes Beam's get_dofn_specs (_memoized_dofn_specs): 200k events, same
conditions, 11.7-13.9 -> 9.5-9.7 CPU-s, outputs byte-identical (test).
A later round cut Beam steps that carried none of the job's work (counted
per PCollection): GroupByUser is a GroupByKey over the flattened event blobs
and user rows, not a CoGroupByKey (its tag maps and per-user regroup: ~75k
steps per 1M events); the users' key set comes from one key list per parsed
batch; item rows travel in lists (ITEM_ROWS_PER_LIST); bundles' state
samplers sleep 10 ms at most (_short_sampler_period). Paired fresh-process
runs on 1M events: -0.65 s per run (bench/results/sessionize_ab_beam_steps.json).
Second #15 round (1M events on the shared machine, back to back: 42.6 ->
37.4 CPU-s from the first two): the GC's young-generation threshold raised
for the run (`_gc_thresholds`: 1,637 young collections and 2.7 CPU-s of GC
per 1M events -> 18 and 0.6 s, measured with gc.callbacks); Beam's
PipelineOptions.view_as memoized (`_memoized_view_as`); ParseEvents holds
events per user across input batches (GROUP_FLUSH_EVENTS: ~57k -> ~25k
shuffle elements per 1M events); JSON lines batched a read chunk at a time;
TFRecord framing column-wise; the accept pass one C-level check; equal
contexts share one parsed tuple (event blobs ~40% smaller) and train
timestamps are held as int64 arrays (the 10M-event run's peak RSS 4.25 ->
3.06 GB, bench/results/sessionize_10m.json for the latter); the accepted
time span from one blob of per-user spans per ParseEvents bundle filtered by
the users table's key set (was a CoGroupByKey with two elements per user
and four per-user steps after it). Tried and
dropped, no gain measured (min of 5-8 interleaved runs): building the
examples column by column (list comprehensions, map(b"".join, zip(...)),
timestamp varints by table), and parsing a batch column by column
(orjson then dict.get / str.strip maps, or pyarrow.json): orjson.loads alone
is ~40% of the per-record parse cost and the per-event Python work of
both stages was already near the interpreter's floor, so 100k events/s on
one worker needs that work out of Python, not rearranged within it.
"""

from __future__ import annotations

import argparse
import array
import collections
import contextlib
import dataclasses
import gc
import json
import logging
import marshal
import math
import operator
import pickle
import re
import sys
import time
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import AsDict, AsList, AsSingleton, TaggedOutput
from apache_beam.transforms.window import GlobalWindows

from feature_contract import feature_config as fc
from beam_jobs import compiled as compiled_loops
from beam_jobs import raw_io, run_report, splits
# The parsing, encoding and building pieces live in their own modules; their
# public names are re-exported here, the job's historical import path.
from beam_jobs.event_parsing import (
    BAD_TIMESTAMP, DUPLICATE, DUPLICATE_KEY, EVENT_DEAD_LETTER_REASONS, EVENTS, ITEMS,
    MALFORMED, MISSING_ID, MISSING_KEY, OUT_OF_RANGE, SIDE_DEAD_LETTER_REASONS, UNKNOWN_EVENT,
    UNKNOWN_ITEM, UNKNOWN_USER, USERS, _CLICK, _IMPRESSION, EventParser, Reject, SideRowInfo,
    SideTableParser, _as_record, known_times, normalize_value, normalizer, parse_timestamp,
    sort_and_dedupe)
from beam_jobs.example_builder import UserExampleBuilder, _example_tag
from beam_jobs.example_encoding import (
    bytes_entry, encode_value, example_bytes, float_entry, float_entry_maker, int64_entry,
    int64_entry_maker)

__all__ = [
    # this module
    "Sessionize", "SessionizeError", "SessionizeOutputs", "ParseSideTable", "WriteOutputs",
    "build_pipeline", "check_side_tables",
    "parse_args", "parse_split_timestamp", "run", "main", "split_time", "summarize",
    "vocabularies",
    # re-exported from event_parsing / example_builder / example_encoding
    "BAD_TIMESTAMP", "DUPLICATE", "DUPLICATE_KEY", "EVENT_DEAD_LETTER_REASONS", "EVENTS",
    "ITEMS", "MALFORMED", "MISSING_ID", "MISSING_KEY", "OUT_OF_RANGE",
    "SIDE_DEAD_LETTER_REASONS", "UNKNOWN_EVENT", "UNKNOWN_ITEM", "UNKNOWN_USER", "USERS",
    "EventParser", "Reject", "SideRowInfo", "SideTableParser", "UserExampleBuilder",
    "normalize_value", "normalizer", "parse_timestamp", "bytes_entry", "encode_value",
    "example_bytes", "float_entry", "float_entry_maker", "int64_entry", "int64_entry_maker",
]
_METRICS_NAMESPACE = "feedrec.sessionize"
# Per split and click / follow: attributed to an impression, attributed to
# none, and impressions labelled 1 (see example_builder.attribute_by_time).
_LABEL_COUNTS = ("attributed", "without_impression", "impressions_labelled")
COUNTS_TAG, DEAD_LETTER_TAG, STATS_TAG, SPAN_TAG = "counts", "dead_letter", "stats", "span"
TIMES_TAG, ITEM_IDS_TAG, KEYS_TAG = "train_times", "item_ids", "keys"
# BuildExamples holds a bundle's examples until about this many events'
# worth are pending and emits one list per example kind and split: one
# runner element (and one TFRecord framing call) per ~16k examples instead
# of one per user and kind, while bounding the memory held (~5 MB).
EXAMPLE_FLUSH_SIZE = 16_384
# ParseEvents holds parsed events until this many are pending, then emits
# one blob per user (0: after every input batch, the job's earlier path).
# One element per user and input batch was ~57k shuffle elements per 1M
# synthetic events at 4,096 records a batch; 262,144 pending events (on the
# order of 100 MB of tuples held) make it ~25k, about one per user.
GROUP_FLUSH_EVENTS = 262_144
# PickItemRow emits the picked item rows in lists of this many (and the rest
# at the end of its bundle): the item table's combine and the item catalogue
# then take one element per list, not per item (Beam's per-element steps
# cost more than their work there). Output order is unchanged.
ITEM_ROWS_PER_LIST = 4_096


class SessionizeError(ValueError):
    """The job cannot run, or its output is not fit to use (message says why)."""


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


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pauses the cyclic garbage collector around a hot, cycle-free loop.

    Parsing and building allocate millions of short-lived tuples and dicts
    (freed by reference counting); each allocation burst otherwise triggers
    collections that walk the runner's whole heap (measured ~10% of the job's
    CPU). Only re-enables what it disabled, so nested or concurrent uses and
    a caller's own gc.disable() are respected. Never hold it across a yield.
    """
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def _memoized_dofn_specs() -> Iterator[None]:
    """Memoizes Beam's `userstate.get_dofn_specs` per DoFn class while it is on.

    Beam asks for a DoFn's state and timer specs ~2,000 times per run of this
    job (graph construction, proto translation, every bundle processor
    built), and each call takes the signature of every bound method of the
    DoFn: ~1.5-3 CPU-seconds of the job's ~4.7 s fixed cost, measured. The
    answer depends only on the class's methods and any bound methods stored
    on the instance (CallableWrapperDoFn keeps the user's callable as
    `process`), so those are the key; an unhashable key is not cached. Copies
    of the cached sets are returned, as each call built new ones.
    """
    from apache_beam.transforms import userstate  # pylint: disable=import-outside-toplevel

    original = userstate.get_dofn_specs
    cache: dict[tuple, tuple[set, set]] = {}

    def get_dofn_specs(dofn: beam.DoFn) -> tuple[set, set]:
        try:
            bound = tuple(sorted((name, value.__func__) for name, value in vars(dofn).items()
                                 if isinstance(value, types.MethodType)))
            key = (type(dofn), bound)
            specs = cache.get(key)
        except TypeError:  # no __dict__, or an unhashable piece
            return original(dofn)
        if specs is None:
            specs = cache[key] = original(dofn)
        return set(specs[0]), set(specs[1])

    userstate.get_dofn_specs = get_dofn_specs
    try:
        yield
    finally:
        userstate.get_dofn_specs = original


@contextlib.contextmanager
def _memoized_view_as() -> Iterator[None]:
    """Memoizes `PipelineOptions.view_as` per options object and view class while on.

    Beam asks for option views ~1,000 times while building and translating
    this job's graph, and each call builds an argparse parser of the view
    class and re-parses every flag: ~0.7 CPU-seconds of the job's fixed cost,
    measured. A view holds no state of its own (every view of an options
    object reads and writes the object's shared `_all_options` dict), so one
    view per (options, class) answers every later call the same way.
    """
    from apache_beam.options import pipeline_options  # pylint: disable=import-outside-toplevel

    original = pipeline_options.PipelineOptions.view_as
    # id(_all_options) -> (_all_options, {class: view}); the dict is kept so
    # its id cannot be reused while the cache lives.
    cache: dict[int, tuple[dict, dict[type, Any]]] = {}

    def view_as(self: PipelineOptions, cls: type) -> Any:
        shared = self._all_options  # pylint: disable=protected-access
        views = cache.setdefault(id(shared), (shared, {}))[1]
        view = views.get(cls)
        if view is None:
            view = views[cls] = original(self, cls)
        return view

    pipeline_options.PipelineOptions.view_as = view_as
    try:
        yield
    finally:
        pipeline_options.PipelineOptions.view_as = original


@contextlib.contextmanager
def _no_embedded_state_cache() -> Iterator[None]:
    """Turns off the in-process runner's side-input cache while on.

    The FnApiRunner's embedded worker caches side inputs across bundles and
    weighs each one it caches with objsize, which first walks the globals of
    every loaded module: ~2.7 ms per side input fetched, 0.12-0.18 s of
    every run's fixed cost (measured: median 1.02 -> 0.89 s on a 1k-event
    run). This job's side inputs are a few small values and one bytes blob,
    read once per bundle either way (StateBackedSideInputMap keeps them for
    the bundle). Only the embedded worker reads this module constant; other
    runners' workers take --max_cache_memory_usage_mb.
    """
    from apache_beam.runners.portability.fn_api_runner import (  # pylint: disable=import-outside-toplevel
        worker_handlers)

    if not hasattr(worker_handlers, "STATE_CACHE_SIZE_MB"):  # another Beam: nothing to turn off
        yield
        return
    previous = worker_handlers.STATE_CACHE_SIZE_MB
    worker_handlers.STATE_CACHE_SIZE_MB = 0
    try:
        yield
    finally:
        worker_handlers.STATE_CACHE_SIZE_MB = previous


@contextlib.contextmanager
def _short_sampler_period() -> Iterator[None]:
    """Bundles' state samplers wake every `_SAMPLER_PERIOD_MS` at most while on.

    Each bundle starts a thread that samples which step is running (Beam's
    per-step msec metrics); its sleep grows to 200 ms, and ending the bundle
    joins it, so the bundle's thread waits out the rest of that sleep with
    nothing to do: 0.47 s of wall per 1M-event run over its 56 bundles,
    measured (0.08 s at 10 ms). The thread sleeps without the GIL and wakes
    to take one lock, so waking more often costs nothing measurable, and the
    metrics are sampled more finely, not less. Bundle processors look the
    class up on the module at each bundle, so a subclass there is enough;
    it reaches bundles run in this process (the in-process runners), not
    those of worker processes or remote runners, which keep Beam's default.
    """
    from apache_beam.runners.worker import statesampler  # pylint: disable=import-outside-toplevel

    original = statesampler.StateSampler

    class ShortPeriodStateSampler(original):  # type: ignore[misc, valid-type]
        def __init__(self, prefix: str, counter_factory: Any,
                     sampling_period_ms: int = _SAMPLER_PERIOD_MS):
            super().__init__(prefix, counter_factory,
                             min(sampling_period_ms, _SAMPLER_PERIOD_MS))

    statesampler.StateSampler = ShortPeriodStateSampler
    try:
        yield
    finally:
        statesampler.StateSampler = original


# The state sampler's longest sleep during a run (Beam's default 200 ms).
_SAMPLER_PERIOD_MS = 10


@contextlib.contextmanager
def _gc_thresholds(threshold: tuple[int, int, int]) -> Iterator[None]:
    """Sets the collector's thresholds while on (restores the previous ones).

    The job allocates and frees millions of tuples and bytes objects per 1M
    events; at Python's default threshold (700 net allocations) the young
    generation is collected ~450 times per 200k events and the older ones
    follow: ~8% of the job's CPU, measured with gc.callbacks. Garbage here is
    freed by reference counting; the collector is for the rare cycles.
    """
    previous = gc.get_threshold()
    gc.set_threshold(*threshold)
    try:
        yield
    finally:
        gc.set_threshold(*previous)


# Young generation collected every 50k net allocations (default 700).
_RUN_GC_THRESHOLD = (50_000, 20, 100)


def _records(element: Any) -> Iterable[Any]:
    """A batch (list) of raw records or one record."""
    return element if isinstance(element, list) else (element,)


# Events cross the GroupByUser shuffle as one marshal blob per (user, input
# batch), with a flag "every event's item is known": a GroupByKey on the
# Python runners encodes, decodes and re-encodes every value, so one bytes
# value instead of a list of nested tuples cuts the shuffle's cost several
# times (measured). marshal's format 4 is stable from Python 3.4 on, and the
# blob never leaves the job's own workers.
_MARSHAL_VERSION = 4
_ITEM_OF = operator.itemgetter(2)  # an event tuple's item id


class _ParseEventsFn(_CountingDoFn):
    """Batches of raw events -> (user, encoded [events]) per user and flush.

    Parsed events are held per user until GROUP_FLUSH_EVENTS are pending (and
    at the end of the bundle), then emitted as one blob per user: fewer,
    larger elements through the GroupByUser shuffle than one per user and
    input batch. Also emits, once per bundle, one marshal blob of (user, min
    ts, max ts, packed times) over the events whose item is in the items
    table (SPAN_TAG): filtered by the users table's keys (`_accepted_spans`)
    these give the accepted time span (duplicates never move it) without
    waiting for the per-user pass.
    """

    def __init__(self, config: fc.FeatureConfig, emit_item_ids: bool = False):
        self._config = config
        # event_fraction needs every accepted time, not only the span.
        self._keep_times = config.split.mode == fc.SPLIT_EVENT_FRACTION
        # Without an items table the items are the events' item ids (ITEM_IDS_TAG).
        self._emit_item_ids = emit_item_ids

    def setup(self) -> None:
        self._parser = EventParser(self._config)
        self._items = _ItemTable()

    def start_bundle(self) -> None:
        super().start_bundle()
        self._spans: dict[str, list[float]] = {}
        self._times: collections.defaultdict[str, list[float]] = collections.defaultdict(list)
        self._item_ids: set[str] = set()
        # user -> parsed events not emitted yet, in arrival order.
        self._pending: collections.defaultdict[str, list] = collections.defaultdict(list)
        self._pending_events = 0
        self._known_items: Mapping[str, Any] | None = None

    def process(self, element: Any, items_blob: bytes | None = None) -> Iterator[Any]:
        # Without an items table (items_blob None) every item is known.
        items = self._items.get(items_blob) if items_blob is not None else None
        self._known_items = items
        records = _records(element)
        by_user: dict[str, tuple[bool, bytes]] = {}
        with _gc_paused():
            rejected = self._parser.parse_into(records, self._pending)
            self._pending_events += len(records) - len(rejected)
            if self._pending_events >= GROUP_FLUSH_EVENTS:
                by_user = self._group_by_user()
        for rej, record in rejected:
            self._counts[f"events.dead_letter.{rej.reason}"] += 1
            yield TaggedOutput(DEAD_LETTER_TAG, _dead_letter(rej.reason, EVENTS, record))
        self._counts["events.read"] += len(records)
        yield from by_user.items()

    def _group_by_user(self) -> dict[str, tuple[bool, bytes]]:
        """user -> (all items known, encoded pending events), emptying them.

        Also updates the bundle's spans. Users come in the order of their
        first pending event, so the shuffle sees new users in input order
        whatever the flush size. "All items known" (every event's item is in
        the items table, which BuildExamples reads too) comes free with the
        span pass and spares the per-user pass a dict lookup per event.
        """
        by_user, self._pending = self._pending, collections.defaultdict(list)
        self._pending_events = 0
        items = self._known_items
        if self._emit_item_ids:
            self._item_ids.update(event[2] for events in by_user.values() for event in events)
        spans = self._spans
        times_of = (compiled_loops.module().known_times if self._parser.compiled
                    else known_times)
        keep = self._keep_times
        blobs: dict[str, tuple[bool, bytes]] = {}
        for user, events in by_user.items():
            summary = times_of(events, items, keep)
            blobs[user] = (summary is not None and summary[3] == len(events),
                           marshal.dumps(events, _MARSHAL_VERSION))
            if summary is not None:
                lo, hi, known, _ = summary
                if keep:
                    self._times[user] += known
                span = spans.get(user)
                if span is None:
                    spans[user] = [lo, hi]
                else:
                    if lo < span[0]:
                        span[0] = lo
                    if hi > span[1]:
                        span[1] = hi
        return blobs

    def finish_bundle(self) -> Iterator[Any]:
        with _gc_paused():
            by_user = self._group_by_user()
        for user_blob in by_user.items():
            yield _global(user_blob)
        yield from super().finish_bundle()
        if self._spans:
            spans = [(user, lo, hi,
                      splits.pack_times(self._times[user]) if self._keep_times else b"")
                     for user, (lo, hi) in self._spans.items()]
            yield TaggedOutput(SPAN_TAG, _global(marshal.dumps(spans, _MARSHAL_VERSION)))
        self._spans = {}
        self._times = collections.defaultdict(list)
        for item in sorted(self._item_ids):
            yield TaggedOutput(ITEM_IDS_TAG, _global(item))
        self._item_ids = set()


class _ItemTable:
    """The items side input: one pickled dict, unpickled once per DoFn.

    A singleton bytes value keeps the runner's side-input cache from walking
    every item object to size it (measured: seconds per bundle on 10k items).
    """

    def __init__(self) -> None:
        self._blob: bytes | None = None
        self._items: dict[str, SideRowInfo] = {}

    def get(self, blob: bytes) -> dict[str, SideRowInfo]:
        if blob is not self._blob:
            # The runner may hand the same value as a new object per bundle:
            # compare once, then keep the new object for identity checks.
            if blob != self._blob:
                self._items = pickle.loads(blob)
            self._blob = blob
        return self._items


class _ItemTableFn(beam.CombineFn):
    """Lists of (key, tuple(SideRowInfo)) pairs -> one pickled dict of SideRowInfo.

    Item rows, and the accumulators the runner encodes between the lifted
    combine's stages, hold plain tuples, which Beam's fast coder encodes
    natively; a NamedTuple goes through pickle, one by one (~0.25 s per
    10k items each way, measured with py-spy and cProfile). SideRowInfo is
    rebuilt once, for the pickled table.
    """

    def create_accumulator(self) -> dict[str, tuple]:
        return {}

    def add_input(self, acc, pairs):
        acc.update(pairs)
        return acc

    def merge_accumulators(self, accumulators):
        out: dict[str, tuple] = {}
        for acc in accumulators:
            out.update(acc)
        return out

    def extract_output(self, acc):
        table = {key: SideRowInfo(*info) for key, info in acc.items()}
        return pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL)


class _ParseSideTableFn(_CountingDoFn):
    """Batch of raw side-table rows -> (key, pickled (raw record, *SideRowInfo)).

    The raw record rides along only so `_pick_row` can dead-letter a
    duplicate key. One bytes value per row crosses the GroupByUser /
    GroupItemsByKey shuffle, which on the Python runners encodes, decodes and
    re-encodes every value: Beam's coder then copies bytes instead of walking
    a str and a tuple of nested tuples (measured on the 25k synthetic users,
    value built, coded twice and read back: 742 -> 303 ms CPU). pickle, not
    marshal: marshal's dumps + loads take 23% fewer instructions (callgrind,
    662 M vs 855 M per 25k rows) but refuse the non-core types a caller's
    dict record may hold.
    The record stays as read (bytes, not decoded: `_dead_letter` decodes the
    few that are dead-lettered).
    With `emit_keys`, each batch's parsed keys also go to KEYS_TAG as one
    list (the users' key set is built from those lists, not per row).
    """

    def __init__(self, config: fc.FeatureConfig, source: str, emit_keys: bool = False):
        self._config = config
        self._source = source
        self._emit_keys = emit_keys

    def setup(self) -> None:
        self._parser = SideTableParser(self._config, self._source)

    def process(self, element: Any) -> Iterator[Any]:
        records = _records(element)
        self._counts[f"{self._source}.read"] += len(records)
        parse = self._parser.parse
        keys = []
        for record in records:
            try:
                key, info = parse(record)
            except Reject as rej:
                self._counts[f"{self._source}.dead_letter.{rej.reason}"] += 1
                yield TaggedOutput(DEAD_LETTER_TAG, _dead_letter(rej.reason, self._source, record))
                continue
            keys.append(key)
            yield key, pickle.dumps((record, *info), protocol=pickle.HIGHEST_PROTOCOL)
        if self._emit_keys and keys:
            yield TaggedOutput(KEYS_TAG, keys)


def _pick_row(source: str, key: str, blobs: Iterable[bytes],
              counts: collections.Counter) -> tuple[SideRowInfo | None, list[dict]]:
    """Keeps one row per key (the smallest encoding, so reruns agree).

    blobs: `_ParseSideTableFn`'s pickled (raw record, *SideRowInfo) rows.
    """
    rows = [pickle.loads(blob) for blob in blobs]
    if not rows:
        return None, []
    if len(rows) > 1:
        rows.sort(key=lambda r: (r[1], json.dumps(_as_record(r[0]), sort_keys=True,
                                                  default=str)))
    counts[f"{source}.accepted"] += 1
    dead = [_dead_letter(DUPLICATE_KEY, source, row[0]) for row in rows[1:]]
    if dead:
        counts[f"{source}.dead_letter.{DUPLICATE_KEY}"] += len(dead)
    return SideRowInfo(*rows[0][1:]), dead


class _PickItemFn(_CountingDoFn):
    """(key, rows) -> lists of (key, tuple(SideRowInfo)), ITEM_ROWS_PER_LIST at most.

    Plain tuples, see _ItemTableFn. Lists keep the rows' order: the item
    catalogue is written in it.
    """

    def start_bundle(self) -> None:
        super().start_bundle()
        self._picked: list[tuple[str, tuple]] = []

    def process(self, element: tuple[str, Iterable]) -> Iterator[Any]:
        key, rows = element
        info, dead = _pick_row(ITEMS, key, rows, self._counts)
        for record in dead:
            yield TaggedOutput(DEAD_LETTER_TAG, record)
        if info is not None:
            self._picked.append((key, tuple(info)))
            if len(self._picked) >= ITEM_ROWS_PER_LIST:
                yield self._picked
                self._picked = []

    def finish_bundle(self) -> Iterator[Any]:
        if self._picked:
            yield _global(self._picked)
        self._picked = []
        yield from super().finish_bundle()


def _split_grouped(values: Iterable[Any]) -> tuple[list[tuple[bool, bytes]], list[bytes]]:
    """GroupByUser's values -> (ParseEvents' (all known, blob) pairs, the user's pickled rows).

    Both sides of the join go through one GroupByKey: an events value is a
    tuple, a users-table row a bytes value (`_ParseSideTableFn`), so a
    value's type says which side it came from; each side keeps its order.
    """
    blobs: list[tuple[bool, bytes]] = []
    rows: list[bytes] = []
    for value in values:
        (rows if value.__class__ is bytes else blobs).append(value)
    return blobs, rows


class _JoinDedupeFn(_CountingDoFn):
    """Base of the per-user pass: join with the user row, drop duplicates."""

    def __init__(self, config: fc.FeatureConfig, users_table: bool = True):
        self._config = config
        self._users_table = users_table

    def setup(self) -> None:
        self._parser = EventParser(self._config)
        self._items = _ItemTable()
        self._with_ids = self._config.impression_id_column is not None
        self._id_rows = None if self._users_table else SideTableParser(self._config, USERS)

    def join_and_dedupe(self, user: str, blobs: Sequence[tuple[bool, bytes]],
                        rows: Sequence[bytes], items: Mapping[str, Any]
                        ) -> tuple[SideRowInfo | None, list, list]:
        """Returns (user row, sorted accepted events, dead-letter records).

        blobs: ParseEvents' (all items known, marshal blob) per flush; rows:
        the user's pickled users-table rows (`_ParseSideTableFn`). Without a
        users table every user is known: the row holds only the id features,
        filled from the event's user id.
        """
        if self._id_rows is not None:
            info, dead = self._id_rows.parse({self._config.users_key: user})[1], []
        else:
            info, dead = _pick_row(USERS, user, rows, self._counts)
        if len(blobs) == 1:  # the usual case since ParseEvents groups per flush
            all_known, blob = blobs[0]
            events = marshal.loads(blob)
        else:
            all_known = all(known for known, _ in blobs)
            events = [e for _, blob in blobs for e in marshal.loads(blob)]
        if not events:
            return info, [], dead
        events, duplicates = sort_and_dedupe(events, self._with_ids)
        # Every item known (the usual case): ParseEvents checked it against
        # the same items table; otherwise one C-level pass before the
        # per-event Python test.
        if info is not None and (
                all_known or all(map(items.__contains__, map(_ITEM_OF, events)))):
            accepted = events
        else:
            accepted = self._accept(user, info, events, items, dead)
        if duplicates:
            self._counts[f"events.filtered.{DUPLICATE}"] += duplicates
        self._counts["events.accepted"] += len(accepted)
        return info, accepted, dead

    def _accept(self, user: str, info: SideRowInfo | None, events: list, items: Mapping[str, Any],
                dead: list) -> list:
        """The events of a known user with a known item; the others dead-lettered."""
        accepted = []
        for event in events:
            item = event[2]
            if info is not None and item in items:
                accepted.append(event)
                continue
            reason = UNKNOWN_USER if info is None else UNKNOWN_ITEM
            self._counts[f"events.dead_letter.{reason}"] += 1
            dead.append(_dead_letter(reason, EVENTS, self._parser.event_record(user, event)))
        return accepted


split_time = splits.split_time  # re-exported: the job's historical name


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
    impressions, train clicks, train events, all events, train exposures]}}
    (exposures: UserExampleBuilder.build).
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


class _BuildExamplesFn(_JoinDedupeFn):
    """(user, event blobs and user rows) -> example batches per kind and split.

    Joins, deduplicates and builds in one pass so the events are decoded
    once after the GroupByKey; bundle-level train statistics go to STATS_TAG
    and the train examples' timestamps per kind (packed int64) to TIMES_TAG.
    """

    def __init__(self, config: fc.FeatureConfig, users_table: bool = True,
                 flush_examples: int | None = None):
        """Args: config; users_table: whether a users table is read;
        flush_examples: examples buffered across users before they go out
        (default EXAMPLE_FLUSH_SIZE; 0 emits each user's batches at once,
        the per-user path the equality test compares against)."""
        super().__init__(config, users_table)
        self._flush_examples = EXAMPLE_FLUSH_SIZE if flush_examples is None else flush_examples

    def setup(self) -> None:
        super().setup()
        self._builder = UserExampleBuilder(self._config)

    def start_bundle(self) -> None:
        super().start_bundle()
        self._pending: dict[str, list] = collections.defaultdict(list)
        self._pending_count = 0
        self._vocab = collections.defaultdict(collections.Counter)
        self._item_stats: dict[str, list[int]] = {}
        self._train_times = _int64_arrays()

    def process(self, element: tuple[str, Iterable[Any]], split_ts: float | None,
                items_blob: bytes) -> Iterator[Any]:
        user, (blobs, rows) = element[0], _split_grouped(element[1])
        items = self._items.get(items_blob)
        # The builder appends to the bundle's pending lists directly: every
        # user's examples of one tag stay in user order, so a flushed list is
        # the concatenation of the per-user lists and the written files hold
        # the same records in the same order (test_sessionize_equivalence).
        outputs = self._pending
        split_at = splits.user_split_time(self._config.split, user, split_ts)
        with _gc_paused():
            info, events, dead = self.join_and_dedupe(user, blobs, rows, items)
            if events:
                before = self._pending_count
                self._builder.build(user, info, events, split_at, items, outputs, self._counts,
                                    self._vocab, self._item_stats)
                self._add_train_times(events, split_at)
                self._pending_count = before + len(events)
        for record in dead:
            yield TaggedOutput(DEAD_LETTER_TAG, record)
        if self._pending_count >= self._flush_examples:
            yield from self._flush(TaggedOutput)

    def _flush(self, wrap: Any) -> Iterator[Any]:
        """The pending example lists, one element per tag, emptied."""
        pending, self._pending = self._pending, collections.defaultdict(list)
        self._pending_count = 0
        for tag, batch in pending.items():
            if batch:
                yield wrap(tag, batch)

    def _add_train_times(self, events: Sequence[tuple], split_at: float | None) -> None:
        """Timestamps of the user's train examples: impressions, clicks, sessions."""
        limit = math.inf if split_at is None else split_at
        times = self._train_times
        packed = (compiled_loops.module().train_times(events, limit)
                  if self._builder.compiled and events.__class__ is list else None)
        if packed is not None:  # the lists below as int64 bytes, from one C pass
            times[fc.RANKING].frombytes(packed[0])
            times[fc.RETRIEVAL].frombytes(packed[1])
        else:
            times[fc.RANKING].extend([int(e[0]) for e in events
                                      if e[1] == _IMPRESSION and e[0] < limit])
            times[fc.RETRIEVAL].extend([int(e[0]) for e in events
                                        if e[1] == _CLICK and e[0] < limit])
        times[fc.ITEM2VEC].extend(self._builder.train_session_starts)
        self._builder.train_session_starts.clear()

    def finish_bundle(self) -> Iterator[Any]:
        yield from self._flush(lambda tag, batch: TaggedOutput(tag, _global(batch)))
        yield from super().finish_bundle()
        if self._item_stats:
            yield TaggedOutput(STATS_TAG, _global({"vocab": dict(self._vocab),
                                                   "items": self._item_stats}))
        for kind, times in self._train_times.items():
            if times:
                yield TaggedOutput(TIMES_TAG, _global((kind, times.tobytes())))
        self._vocab = collections.defaultdict(collections.Counter)
        self._item_stats = {}
        self._train_times = _int64_arrays()


def _int64_arrays() -> dict[str, array.array]:
    """Example kind -> int64 array of train timestamps (`splits.pack_int_times`' format).

    Arrays, not lists: a bundle holds every train example's timestamp until
    it ends (on the in-process runners one bundle is the whole input), 8
    bytes each instead of an int object and a list slot (~40 bytes).
    """
    return {k: array.array("q") for k in fc.EXAMPLE_KINDS}


class _KeySetFn(beam.CombineFn):
    """Lists of keys -> one pickled frozenset (a bytes singleton side input, see _ItemTable)."""

    def create_accumulator(self) -> set[str]:
        return set()

    def add_input(self, acc, keys):
        acc.update(keys)
        return acc

    def merge_accumulators(self, accumulators):
        out: set[str] = set()
        for acc in accumulators:
            out |= acc
        return out

    def extract_output(self, acc):
        return pickle.dumps(frozenset(acc), protocol=pickle.HIGHEST_PROTOCOL)


def _accepted_spans(blob: bytes, keys_blob: bytes,
                    users_table: bool = True) -> Iterator[tuple[float, float, bytes]]:
    """(min, max, packed times) over one ParseEvents bundle's users that have a row.

    `blob` holds the bundle's (user, min, max, packed times) over events
    with a known item; any user counts without a users table. One element
    per bundle instead of a per-user join with the users table (a
    CoGroupByKey of two rows per user): the span's min / max and the
    event_fraction times are the same over bundles as over users. The
    packed times are empty unless the split mode needs them.
    """
    spans = marshal.loads(blob)
    if users_table:
        keys = pickle.loads(keys_blob)
        spans = [s for s in spans if s[0] in keys]
    if spans:
        yield (min(s[1] for s in spans), max(s[2] for s in spans),
               b"".join(s[3] for s in spans))


def vocabularies(config: fc.FeatureConfig, stats: Mapping[str, Any],
                 items: Mapping[str, SideRowInfo]) -> dict[str, list[str]]:
    """Feature -> vocabulary (most frequent first, ties by value, capped).

    A value is kept when seen in at least min_count train exposures (an
    impression, or a click with no impression; never decided by a label),
    at most max size values (`FeatureConfig.vocab_rule`: vocab_size, or vocab_min_count and
    vocab_max_size when the feature gives no vocab_size).
    """
    counters = collections.defaultdict(collections.Counter)
    for name, counter in stats["vocab"].items():
        counters[name].update(counter)
    for item, counts in stats["items"].items():
        info = items.get(item)
        train_exposures = counts[4]  # not events: see UserExampleBuilder.build
        if info is None or not train_exposures:
            continue
        for name, values in info.vocab:
            for value in values:
                counters[name][value] += train_exposures
    out = {}
    for spec in config.vocab_features:
        counter = counters.get(spec.name, {})
        min_count, max_size = config.vocab_rule(spec)
        ranked = sorted(((v, n) for v, n in counter.items() if v != "" and n >= min_count),
                        key=lambda vn: (-vn[1], vn[0]))
        out[spec.name] = [v for v, _ in ranked[:max_size]]
    return out


def _item_examples(pairs: Sequence[tuple[str, tuple]],
                   stats: Mapping[str, Any]) -> Iterator[list[bytes]]:
    """A list of item rows -> one list of the catalogue's examples (items seen in train)."""
    seen = stats["items"]
    examples = []
    for key, info in pairs:
        counts = seen.get(key)
        if counts is not None:
            examples.append(example_bytes([
                SideRowInfo(*info).entries,
                int64_entry(fc.ITEM_CLICKS_KEY.encode(), [counts[1]]),
                int64_entry(fc.ITEM_IMPRESSIONS_KEY.encode(), [counts[0]])]))
    if examples:
        yield examples


def summarize(config: fc.FeatureConfig, counts: Mapping[str, int],
              span: tuple[float, float] | None, split_ts: float | None,
              num_items_written: int | None = None, *,
              validation: Mapping[str, int] | None = None,
              cutoffs: Mapping[str, float | None] | None = None,
              vocab_sizes: Mapping[str, int] | None = None,
              tables: Sequence[str] = (USERS, ITEMS)) -> dict[str, Any]:
    """The summary.json content from the pipeline's combined counts.

    Args:
      config: the feature config.
      counts: the summed counts of every step.
      span: (min, max) accepted event time, or None.
      split_ts: the split time (None for random_users or without events).
      num_items_written: unused (kept for callers of the old signature).
      validation: kind -> train examples the trainers will carve as
        validation (see `splits`); cutoffs: kind -> that carve's cutoff.
      vocab_sizes: feature -> entries written to its vocabulary file.
      tables: the side tables that were read (users / items); a side table
        not read was filled from the events' ids.
    """

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
    labels = {split: {kind: {name: counts.get(f"labels.{split}.{kind}.{name}", 0)
                             for name in _LABEL_COUNTS}
                      for kind in (fc.CLICK, fc.FOLLOW)}
              for split in fc.SPLITS}

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
        # Every accepted click / follow is attributed to one impression or none.
        "labels_reconcile": all(
            labels[s][k]["attributed"] + labels[s][k]["without_impression"] == by_split[s][k]
            for s in fc.SPLITS for k in (fc.CLICK, fc.FOLLOW)),
        # One click labels at most one impression (follows alike).
        "click_positives_at_most_clicks": all(
            labels[s][fc.CLICK]["impressions_labelled"] <= labels[s][fc.CLICK]["attributed"]
            for s in fc.SPLITS),
        "follow_positives_at_most_follows": all(
            labels[s][fc.FOLLOW]["impressions_labelled"] <= labels[s][fc.FOLLOW]["attributed"]
            for s in fc.SPLITS),
    }
    vocab_sizes = vocab_sizes or {}
    vocab_rules = {}
    for spec in config.vocab_features:
        min_count, max_size = config.vocab_rule(spec)
        vocab_rules[spec.name] = {"size": vocab_sizes.get(spec.name, 0), "min_count": min_count,
                                  "max_size": max_size, "vocab_size_given": bool(spec.vocab_size)}
    return {
        "config": config.name,
        "split": splits.split_sizes(config.split, examples, validation or {}, cutoffs or {}),
        "vocabularies": vocab_rules,
        "max_dead_letter_fraction": config.max_dead_letter_fraction,
        "session_gap_seconds": config.session_gap_seconds,
        "attribution_window_seconds": config.attribution_window,
        "impression_id_column": config.impression_id_column,
        "eval_fraction": config.eval_fraction,
        "min_timestamp": span[0] if span else None,
        "max_timestamp": span[1] if span else None,
        "split_timestamp": split_ts,
        "events": events,
        "users": dict(users, with_events=counts.get("users.with_events", 0),
                      new_in_eval=counts.get("users.new_in_eval", 0), table=USERS in tables),
        "items": dict(items, table=ITEMS in tables),
        "sessions": sessions,
        "labels": labels,
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
    """Raw users/items records -> ((key, pickled (raw, *SideRowInfo)), dead letters, counts
    [, key lists]).

    `_pick_row` reads the rows back (see `_ParseSideTableFn`).
    """

    def __init__(self, config: fc.FeatureConfig, source: str, emit_keys: bool = False):
        """Args: config; source: users / items; emit_keys: also each batch's
        parsed keys as one list (KEYS_TAG)."""
        super().__init__()
        self._config, self._source, self._emit_keys = config, source, emit_keys

    def expand(self, records: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        tags = (DEAD_LETTER_TAG, COUNTS_TAG) + ((KEYS_TAG,) if self._emit_keys else ())
        return records | "Parse" >> beam.ParDo(
            _ParseSideTableFn(self._config, self._source, self._emit_keys)).with_outputs(
                *tags, main="rows")


class Sessionize(beam.PTransform):
    """Raw events/users/items records -> examples, vocabularies, summary.

    Input: {"events": ..., "users": ..., "items": ...}, each a PCollection
    whose elements are raw records or lists of them (a record: a JSON line as
    str/bytes, or a dict row, e.g. a CSV row). Output: `SessionizeOutputs`.
    """

    def __init__(self, config: fc.FeatureConfig, split_timestamp: float | None = None):
        """Args: config; split_timestamp: overrides the config's split (timestamp mode)."""
        super().__init__()
        if split_timestamp is not None:
            config = dataclasses.replace(config, split=dataclasses.replace(
                config.split, mode=fc.SPLIT_TIMESTAMP, timestamp=float(split_timestamp)))
        self._config = config

    def expand(self, inputs: Mapping[str, beam.PCollection]) -> SessionizeOutputs:
        config = self._config
        tables = check_side_tables(config, [t for t in (USERS, ITEMS)
                                            if inputs.get(t) is not None])
        pipeline = inputs[EVENTS].pipeline
        counts, dead = [], []

        if ITEMS in tables:
            items_raw = inputs[ITEMS] | "ParseItems" >> ParseSideTable(config, ITEMS)
            items = (items_raw.rows
                     | "GroupItemsByKey" >> beam.GroupByKey()
                     | "PickItemRow" >> beam.ParDo(_PickItemFn()).with_outputs(
                         DEAD_LETTER_TAG, COUNTS_TAG, main="items"))
            counts += [items_raw[COUNTS_TAG], items[COUNTS_TAG]]
            dead += [items_raw[DEAD_LETTER_TAG], items[DEAD_LETTER_TAG]]
            item_rows = items.items
            items_blob = AsSingleton(item_rows | "ItemTable" >> beam.CombineGlobally(
                _ItemTableFn()))
            events = inputs[EVENTS] | "ParseEvents" >> beam.ParDo(
                _ParseEventsFn(config), items_blob=items_blob).with_outputs(
                    DEAD_LETTER_TAG, COUNTS_TAG, SPAN_TAG, main="events")
        else:
            events = inputs[EVENTS] | "ParseEvents" >> beam.ParDo(
                _ParseEventsFn(config, emit_item_ids=True)).with_outputs(
                    DEAD_LETTER_TAG, COUNTS_TAG, SPAN_TAG, ITEM_IDS_TAG, main="events")
            item_rows = (events[ITEM_IDS_TAG]
                         | "DistinctItems" >> beam.Distinct()
                         | "ItemIdRows" >> beam.ParDo(_IdRowFn(config, ITEMS)))
            items_blob = AsSingleton(item_rows | "ItemTable" >> beam.CombineGlobally(
                _ItemTableFn()))
        counts.append(events[COUNTS_TAG])
        dead.append(events[DEAD_LETTER_TAG])

        if USERS in tables:
            users = inputs[USERS] | "ParseUsers" >> ParseSideTable(config, USERS, emit_keys=True)
            user_rows, user_key_lists = users.rows, users[KEYS_TAG]
            counts.append(users[COUNTS_TAG])
            dead.append(users[DEAD_LETTER_TAG])
        else:
            user_rows = pipeline | "NoUsersTable" >> beam.Create([])
            user_key_lists = user_rows  # empty too: no key lists, an empty key set
        user_keys = user_key_lists | "UserKeySet" >> beam.CombineGlobally(_KeySetFn())
        user_spans = events[SPAN_TAG] | "AcceptedUserSpans" >> beam.FlatMap(
            _accepted_spans, keys_blob=AsSingleton(user_keys), users_table=USERS in tables)
        span = (user_spans
                | "SpanOnly" >> beam.Map(lambda s: s[:2])
                | "TimeSpan" >> beam.CombineGlobally(_SpanFn()))
        split_ts = self._split_time(pipeline, span, user_spans)

        tags = [_example_tag(k, s) for k in fc.EXAMPLE_KINDS for s in fc.SPLITS]
        # A CoGroupByKey without its per-element steps (a tag map on each
        # side, a regroup per user: 75k Beam steps per 1M synthetic events):
        # the two sides' values tell themselves apart (see _split_grouped).
        built = ((events.events, user_rows)
                 | "EventsAndUserRows" >> beam.Flatten()
                 | "GroupByUser" >> beam.GroupByKey()
                 | "BuildExamples" >> beam.ParDo(
                     _BuildExamplesFn(config, USERS in tables), split_ts=AsSingleton(split_ts),
                     items_blob=items_blob).with_outputs(
                         DEAD_LETTER_TAG, COUNTS_TAG, STATS_TAG, TIMES_TAG, *tags))
        counts.append(built[COUNTS_TAG])
        dead.append(built[DEAD_LETTER_TAG])
        stats = built[STATS_TAG] | "MergeStats" >> beam.CombineGlobally(_MergeStatsFn())
        stats_view = AsSingleton(stats)

        item_examples = item_rows | "ItemCatalogue" >> beam.FlatMap(
            _item_examples, stats=stats_view)
        counts.append(item_examples
                      | "ItemExampleListSizes" >> beam.Map(len)
                      | "CountItemExamples" >> beam.CombineGlobally(sum)
                      | "ItemCountDict" >> beam.Map(lambda n: {"examples.items": n}))
        vocab = (stats | "Vocabularies" >> beam.FlatMap(
            lambda s, blob: vocabularies(config, s, pickle.loads(blob)).items(),
            blob=items_blob))
        frequencies = stats | "ItemFrequencies" >> beam.Map(
            lambda s: sorted((item, c[0], c[1]) for item, c in s["items"].items() if c[2]))
        cutoffs, validation = _validation_sizes(built[TIMES_TAG], config.split)

        summed = (tuple(counts)
                  | "FlattenCounts" >> beam.Flatten()
                  | "SumCounts" >> beam.CombineGlobally(_SumCountsFn()))
        summary = summed | "Summary" >> beam.Map(
            lambda c, sp, ts, val, cut, voc: summarize(
                config, c, sp, ts, validation=val, cutoffs=cut,
                vocab_sizes={name: len(values) for name, values in voc}, tables=tables),
            sp=AsSingleton(span), ts=AsSingleton(split_ts), val=AsDict(validation),
            cut=AsDict(cutoffs), voc=AsList(vocab))
        dead_letter = tuple(dead) | "FlattenDeadLetter" >> beam.Flatten()
        return SessionizeOutputs(
            examples={(k, s): built[_example_tag(k, s)]
                      for k in fc.EXAMPLE_KINDS for s in fc.SPLITS},
            items=item_examples, vocab=vocab, item_frequencies=frequencies,
            dead_letter=dead_letter, summary=summary)

    def _split_time(self, pipeline: beam.Pipeline, span: beam.PCollection,
                    user_spans: beam.PCollection) -> beam.PCollection:
        """The singleton split time of the config's split mode (see `splits`)."""
        split = self._config.split
        if split.mode == fc.SPLIT_TIMESTAMP:
            return pipeline | "SplitTime" >> beam.Create([float(split.timestamp)])
        if split.mode == fc.SPLIT_EVENT_FRACTION:
            return (user_spans
                    | "EventTimes" >> beam.Map(lambda s: s[2])
                    | "SplitTime" >> beam.CombineGlobally(
                        splits.EventTimesFn(split.eval_fraction)))
        if split.mode == fc.SPLIT_RANDOM_USERS:  # per user, in BuildExamples
            return pipeline | "SplitTime" >> beam.Create([None])
        return span | "SplitTime" >> beam.Map(split_time, split.eval_fraction)


class _IdRowFn(beam.DoFn):
    """id -> [(id, tuple(SideRowInfo))] of only the id features, for a table not given."""

    def __init__(self, config: fc.FeatureConfig, source: str):
        self._config, self._source = config, source

    def setup(self) -> None:
        self._parser = SideTableParser(self._config, self._source)
        self._key = self._config.items_key if self._source == ITEMS else self._config.users_key

    def process(self, key: str) -> Iterator[list[tuple[str, tuple]]]:
        key, info = self._parser.parse({self._key: key})
        yield [(key, tuple(info))]  # a list of plain tuples, as _PickItemFn's


def _validation_sizes(times: beam.PCollection, split: fc.SplitSpec
                      ) -> tuple[beam.PCollection, beam.PCollection]:
    """(kind -> validation cutoff, kind -> train examples at or after it).

    `times` holds (kind, packed int64 train timestamps) per bundle; the
    cutoff is models.validation's rule over each kind's train timestamps.
    """
    cutoffs = (times
               | "GroupTrainTimes" >> beam.GroupByKey()
               | "ValidationCutoff" >> beam.MapTuple(lambda kind, blobs: (
                   kind, _cutoff(splits.int_times_span(blobs), split.validation_fraction))))
    validation = (times
                  | "CountValidation" >> beam.Map(
                      lambda kind_blob, cut: (kind_blob[0], splits.count_at_or_after(
                          kind_blob[1], cut[kind_blob[0]])),
                      cut=AsDict(cutoffs))
                  | "SumValidation" >> beam.CombinePerKey(sum))
    return cutoffs, validation


def _cutoff(span: tuple[int, int] | None, fraction: float) -> float | None:
    return None if span is None else splits.validation_cutoff(span[0], span[1], fraction)


def check_side_tables(config: fc.FeatureConfig, given: Sequence[str]) -> tuple[str, ...]:
    """The side tables to read; raises when the config needs one not given.

    A users / items table is optional when no feature reads a column of it
    beyond its key (`FeatureConfig.side_table_columns`): its rows are then
    filled from the events' ids, and every user / item in the events is known.

    Raises:
      SessionizeError: a feature reads a column of a table not given.
    """
    for table, source in ((USERS, fc.SOURCE_USERS), (ITEMS, fc.SOURCE_ITEMS)):
        columns = config.side_table_columns(source)
        if table not in given and columns:
            raise SessionizeError(
                f"config {config.name!r} reads {table} columns {list(columns)}: give the "
                f"{table} table (--{table}), or drop those features")
    return tuple(t for t in (USERS, ITEMS) if t in given)


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path, mime_type="text/plain") as handle:
        handle.write(text.encode("utf-8"))


def _dead_letter_json(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, default=str, ensure_ascii=False)


def _write_summary_and_check(summary: Mapping[str, Any], path: str,
                             tables: Mapping[str, str | None], dead_letter_dir: str,
                             dead_letter_files: Sequence[str]) -> None:
    """Writes summary.json, then applies the stop rules (run_report.check_summary).

    Runs after the dead letters are written (their file names are a side
    input), so a stopped run leaves the summary and the dead-letter records
    to look at.
    """
    del dead_letter_files  # only waited for
    _write_text(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    run_report.check_summary(summary, tables, dead_letter_dir)


class WriteOutputs(beam.PTransform):
    """Writes `SessionizeOutputs` under output_dir (README layout).

    The last step applies the stop rules (`run_report.check_summary`): an
    empty table or too many dead letters fails the run after summary.json
    and the dead letters are written.
    """

    def __init__(self, output_dir: str, tables: Mapping[str, str | None] | None = None):
        """Args: output_dir; tables: table -> glob read (named in the errors)."""
        super().__init__()
        self._out = output_dir.rstrip("/")
        self._tables = dict(tables or {})

    def expand(self, outputs: SessionizeOutputs) -> None:
        out = self._out
        join = FileSystems.join
        for (kind, split), pcoll in outputs.examples.items():
            label = f"Write{kind.capitalize()}{split.capitalize()}"
            pcoll | label >> raw_io.WriteTFRecordBatches(
                join(out, kind, f"Split-{split}", "data"))
        outputs.items | "WriteItems" >> raw_io.WriteTFRecordBatches(join(out, ITEMS, "data"))
        dead_letter_files = (outputs.dead_letter
                             | "DeadLetterJson" >> beam.Map(_dead_letter_json)
                             | "WriteDeadLetter" >> beam.io.WriteToText(
                                 join(out, "dead_letter", "dead_letter"),
                                 file_name_suffix=".jsonl"))
        outputs.vocab | "WriteVocabularies" >> beam.Map(
            lambda fv: _write_text(join(out, "vocab", f"{fv[0]}.txt"),
                                   "".join(f"{v}\n" for v in fv[1])))
        outputs.item_frequencies | "WriteItemFrequencies" >> beam.Map(
            lambda rows: _write_text(join(out, "item_frequencies.tsv"),
                                     "item_id\timpressions\tclicks\n"
                                     + "".join(f"{i}\t{n}\t{c}\n" for i, n, c in rows)))
        outputs.summary | "WriteSummary" >> beam.Map(
            _write_summary_and_check, join(out, "summary.json"), self._tables,
            join(out, "dead_letter", ""), AsList(dead_letter_files))


def parse_split_timestamp(value: str | float | None) -> float | None:
    """--split_timestamp: unix seconds or an ISO-8601 time (UTC if naive).

    Raises:
      ValueError: neither (e.g. "tomorrow"), or not finite ("nan").
    """
    if value is None or value == "":
        return None
    try:
        return parse_timestamp(value, "s")
    except ValueError:
        pass
    try:
        return parse_timestamp(value, "iso8601")
    except ValueError:
        raise ValueError(f"split timestamp {value!r} is neither unix seconds nor an ISO-8601 "
                         f"time (e.g. 1700000000 or 2023-11-14T22:13:20Z)") from None


def _split_timestamp_arg(value: str) -> float | None:
    """argparse type of --split_timestamp: a bad value is a usage error (exit 2)."""
    try:
        return parse_split_timestamp(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_pipeline(p: beam.Pipeline, args: argparse.Namespace,
                   config: fc.FeatureConfig | None = None) -> SessionizeOutputs:
    """Reads the raw tables, sessionizes and writes everything under output_dir.

    Args:
      p: the pipeline to add to.
      args: namespace with config, events, output_dir and optionally users,
        items (a table not given, None or "", is filled from the events'
        ids; only allowed when no feature reads its other columns),
        split_timestamp, batch_size.
      config: an already loaded config (else read from args.config).

    Raises:
      SessionizeError: the config needs a side table that is not given.
      raw_io.RawTableError: a table's glob matches no file.
    """
    config = config or fc.load(args.config)
    batch = getattr(args, "batch_size", raw_io.DEFAULT_BATCH_SIZE)
    tables = {EVENTS: args.events, USERS: getattr(args, USERS, None) or None,
              ITEMS: getattr(args, ITEMS, None) or None}
    check_side_tables(config, [t for t in (USERS, ITEMS) if tables[t]])
    inputs = {table: p | f"Read{table.capitalize()}" >> raw_io.ReadRawTable(
        pattern, batch, table) for table, pattern in tables.items() if pattern}
    outputs = inputs | "Sessionize" >> Sessionize(
        config, parse_split_timestamp(getattr(args, "split_timestamp", None)))
    outputs | "WriteOutputs" >> WriteOutputs(args.output_dir, tables)
    return outputs


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="feature config YAML")
    parser.add_argument("--events", required=True, help="events file glob")
    parser.add_argument("--users", default=None,
                        help="users side table glob (optional when only the user id "
                             "features read it)")
    parser.add_argument("--items", default=None,
                        help="items side table glob (optional when only the item id "
                             "features read it)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--split_timestamp", default=None, type=_split_timestamp_arg,
                        help="train/eval split time (unix seconds or ISO-8601); overrides "
                             "the config's split: section (mode timestamp)")
    parser.add_argument("--batch_size", type=int, default=raw_io.DEFAULT_BATCH_SIZE,
                        help="raw records per element when reading")
    return parser.parse_known_args(argv)


# The job's own errors: each message is the whole story (the table, file or
# stop rule and what to do), so a run that fails with one prints it once.
USER_ERRORS: tuple[type[Exception], ...] = (
    fc.FeatureConfigError, raw_io.RawTableError, SessionizeError, run_report.DataQualityError)


class _DropUserErrorTracebacks(logging.Filter):
    """Drops Beam's ERROR record (message + traceback) of a USER_ERRORS failure.

    The runner logs every exception a DoFn raises before re-raising it; for
    the job's own errors that buries the one-line message under a traceback
    of Beam internals. Any other exception is still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        raised = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        return not (isinstance(record.msg, USER_ERRORS) or isinstance(raised, USER_ERRORS))


@contextlib.contextmanager
def quiet_user_error_tracebacks() -> Iterator[None]:
    logger = logging.getLogger("apache_beam.runners.common")
    quiet = _DropUserErrorTracebacks()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def run(argv: Sequence[str] | None = None) -> None:
    """Runs the job; flags this job does not know go to Beam."""
    args, beam_args = parse_args(argv)
    config = fc.load(args.config)
    if not any(a == "--runner" or a.startswith("--runner=") for a in beam_args):
        # Explicit, so Beam never picks a runner that downloads a binary.
        # FnApiRunner, not DirectRunner: Beam >= 2.6x's DirectRunner first tries
        # to download the Prism runner binary, then falls back to FnApiRunner.
        beam_args = ["--runner=FnApiRunner", *beam_args]
    options = PipelineOptions(beam_args)
    started = time.time()
    # Beam's modules and the pipeline graph live for the whole run; frozen,
    # they are skipped by every garbage collection the run triggers (on the
    # in-process runners these full-heap walks cost seconds per 1M events).
    # No gc.collect() first: it walks the whole heap once more (0.15-0.25 s
    # measured, a fixed cost of every run); garbage frozen with the rest is
    # collected after the run, once unfrozen.
    gc.freeze()
    try:
        with (quiet_user_error_tracebacks(), _memoized_dofn_specs(), _memoized_view_as(),
              _no_embedded_state_cache(), _short_sampler_period(),
              _gc_thresholds(_RUN_GC_THRESHOLD),
              beam.Pipeline(options=options) as p):
            build_pipeline(p, args, config)
    finally:
        gc.unfreeze()
        _print_summary(args.output_dir, started)


def _print_summary(output_dir: str, started: float) -> None:
    """Prints the run's key counts (also after a stop rule failed the run).

    Only a summary.json written since `started`: an older one in a reused
    output dir describes another run.
    """
    path = FileSystems.join(output_dir.rstrip("/"), "summary.json")
    matched = FileSystems.match([path])[0].metadata_list
    if not matched or matched[0].last_updated_in_seconds < started - 1:
        return
    with FileSystems.open(path, mime_type="text/plain") as handle:
        summary = json.loads(handle.read().decode("utf-8"))
    print(f"sessionize: {path}\n{run_report.format_summary(summary)}", flush=True)


def main() -> None:
    # Beam's INFO lines (stage plans, worker start-up) bury the summary the
    # job prints at the end; warnings and errors still show.
    logging.getLogger().setLevel(logging.WARNING)
    try:
        run()
    except USER_ERRORS as err:
        # The message is the whole story (it names the file, glob or
        # reasons); exit 1 with it as the last line instead of a traceback,
        # without Beam's " [while running '<step>']" suffix.
        sys.exit(f"sessionize: {strip_beam_step(str(err))}")


def strip_beam_step(message: str) -> str:
    """A DoFn's error message without the " [while running '<step>']" Beam appends."""
    return re.sub(r" \[while running '[^']*'\]$", "", message)


if __name__ == "__main__":
    # Run through the package module so DoFns and row types pickle by their
    # importable name (beam_jobs.sessionize.X), not __main__.X, on any runner.
    from beam_jobs import sessionize as _module

    _module.main()
