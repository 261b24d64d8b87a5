"""Per-user example building: sessions, history, labels, every example kind.

`UserExampleBuilder` is pure Python so the hot loop is testable without a
pipeline; the sessionize job's BuildExamples DoFn only feeds it one user's
accepted, sorted events and forwards what it appends.

Labels come from attribution: each click and each follow is attributed to at
most one impression (`attribute_by_time`, or `attribute_by_id` when the log
carries impression ids), and an impression is labelled click=1 (follow=1)
when at least one click (follow) is attributed to it. So labelled positives
never outnumber clicks, however often an item was shown.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from typing import Any

from feature_contract import feature_config as fc
from beam_jobs import compiled as compiled_loops
from beam_jobs.event_parsing import (
    _CLICK, _DERIVED_ON_EVENT, _EVENT_NAME, _FOLLOW, _IMPRESSION, SideRowInfo, _derive,
    _numeric_default, _vocab_values)
from beam_jobs.example_encoding import (
    _bytes_entry_from_pieces, _bytes_piece, _varint, bytes_entry, encode_value, example_bytes,
    float_entry, float_entry_maker, int64_entry, int64_entry_maker)


# b"\n" + varint(n): the head of a serialized tf.Example whose body is n bytes.
_HEADS_MAX = 1 << 14
_EXAMPLE_HEADS = tuple(example_bytes((b"",))[:1] + _varint(n) for n in range(_HEADS_MAX))


def _example_tag(kind: str, split: str) -> str:
    return f"{kind}_{split}"


# Summary count names, by split index (0 = train) and event code: built once,
# not formatted per user.
_ACCEPTED_KEYS = {(i, code): f"accepted.{split}.{name}"
                  for i, split in enumerate(fc.SPLITS) for code, name in _EVENT_NAME.items()}
_EXAMPLE_KEYS = {(i, kind): f"examples.{kind}.{split}"
                 for i, split in enumerate(fc.SPLITS)
                 for kind in (fc.RETRIEVAL, fc.RANKING, fc.ITEM2VEC)}
_LABEL_KEYS = {(i, code): tuple(f"labels.{split}.{_EVENT_NAME[code]}.{name}" for name in (
                   "attributed", "without_impression", "impressions_labelled"))
               for i, split in enumerate(fc.SPLITS) for code in (_CLICK, _FOLLOW)}


class UserExampleBuilder:
    """Builds every example of one user from the user's accepted events.

    Pure Python so the hot loop can be tested without a pipeline; the DoFn
    below only feeds it and forwards its outputs. `compiled` picks the
    per-event loop as `EventParser` does (None = the compiled one when
    built); both write the same bytes.
    """

    def __init__(self, config: fc.FeatureConfig, compiled: bool | None = None):
        self._config = config
        self._compiled = compiled_loops.wanted(compiled)
        self._consts: tuple | None = None
        self._gap = float(config.session_gap_seconds)
        self._window = float(config.attribution_window)
        self._with_ids = config.impression_id_column is not None
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
        # int64 timestamps of the train item2vec examples written (session
        # starts), for the job's validation sizes; the caller empties it.
        self.train_session_starts: list[int] = []
        self._timestamp_entry = int64_entry_maker(fc.TIMESTAMP_KEY.encode())
        only_age = self._age_makers[0] if len(self._age_makers) == 1 else (None, None)
        self._age_fast = ((only_age[1], _numeric_default(only_age[0]))
                          if only_age[1] is not None else None)

    @property
    def compiled(self) -> bool:
        """Whether this builder runs the compiled loop (see `beam_jobs.compiled`)."""
        return self._compiled

    def _compiled_consts(self) -> tuple:
        """What the compiled loop reads from the builder (made on first use)."""
        if self._consts is None:
            ts_key = fc.TIMESTAMP_KEY.encode()
            # The timestamp entry before its varint, per varint length (1..9 bytes).
            ts_prefixes = (b"",) + tuple(
                int64_entry(ts_key, [v])[:-length] for length, v in enumerate(
                    [0] + [1 << (7 * k) for k in range(1, 9)], start=1))
            age_prefix, age_default = None, 0.0
            if self._age_fast is not None:
                spec = self._age_makers[0][0]
                age_prefix = float_entry(spec.name.encode(), [0.0])[:-4]
                age_default = float(self._age_fast[1])
            self._consts = (self._gap, self._history_key, self._history_len,
                            self._context_cache, self._context_entries, self._derived_values,
                            self._derived_cache, self._labels[(0, 0)], age_prefix, age_default,
                            ts_prefixes, self._close_session, b"")
        return self._consts

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
          events: accepted events in `event_parsing.sort_and_dedupe` order:
            (ts, code, item, context) tuples, with the impression id as a
            fifth field when the config has `impression_id_column`.
          split_ts: eval = ts >= split_ts (None: everything is train).
          items: item id -> parsed item row (every event's item is present).
          outputs: example tag -> list, appended to.
          counts: summary counts, updated.
          vocab: feature -> Counter of train values, updated (one per train
            exposure, see `exposure` below).
          item_stats: item -> [train impressions, train clicks, train events,
            all events, train exposures], updated.

        An exposure is an impression, or a click with no impression
        attributed to it (its own exposure, e.g. in a click-only log); a
        click attributed to an impression and a follow are not. Vocabularies
        count exposures, not events, so whether an impression was clicked
        never decides whether its user, item or context values reach
        min_count: counting events, an item shown once got into the
        vocabulary exactly when it was clicked (impression + click = 2), and
        the models learned "out of vocabulary means no click" from train
        data that eval's new items contradict.
        """
        split_at = math.inf if split_ts is None else split_ts
        user_key = bytes_entry(fc.USER_KEY.encode(), [user.encode()])
        new_user = self._new_user[1 if events[0][0] >= split_at else 0]
        per_user = user_key + new_user
        if self._with_ids:
            target = attribute_by_id(events, [e[4] for e in events], split_at)
            events = [e[:4] for e in events]
        else:
            target = None
            if self._compiled and events.__class__ is list:
                target = compiled_loops.module().attribute_by_time(events, split_at,
                                                                   self._window)
            if target is None:
                target = attribute_by_time(events, split_at, self._window)
        label_of = self._impression_labels(events, target, split_at, counts)
        clicks = [e for e in events if e[1] == _CLICK]  # one pass over all events
        click_ts = [e[0] for e in clicks]
        item_piece = self._item_piece
        click_pieces = [item_piece(e[2]) for e in clicks]

        context_counter: collections.Counter = collections.Counter()
        age_values: list[Any] = []
        tags = self._tags
        retrieval_out = (outputs[tags[(fc.RETRIEVAL, fc.TRAIN)]],
                         outputs[tags[(fc.RETRIEVAL, fc.EVAL)]])
        ranking_out = (outputs[tags[(fc.RANKING, fc.TRAIN)]],
                       outputs[tags[(fc.RANKING, fc.EVAL)]])
        args = (events if events.__class__ is list else list(events), split_at, target,
                label_of, click_ts, click_pieces, items, user_info.entries, per_user, outputs,
                retrieval_out, ranking_out, counts, item_stats, context_counter)
        result = None
        # The compiled loop covers no item_age_hours feature or one numeric
        # one (the usual setups); it returns None, touching nothing, for any
        # input outside the shapes it handles.
        if self._compiled and (self._age_fast or not self._age_specs):
            result = compiled_loops.module().event_loop(self._compiled_consts(), *args)
        if result is None:
            result = self._event_loop(*args, age_values)
        train_exposures, accepted = result
        for split_index in (0, 1):
            for code in _EVENT_NAME:
                if accepted[split_index][code]:
                    counts[_ACCEPTED_KEYS[(split_index, code)]] += accepted[split_index][code]
            if accepted[split_index][_CLICK]:
                counts[_EXAMPLE_KEYS[(split_index, fc.RETRIEVAL)]] += accepted[split_index][_CLICK]
            if accepted[split_index][_IMPRESSION]:
                counts[_EXAMPLE_KEYS[(split_index, fc.RANKING)]] += (
                    accepted[split_index][_IMPRESSION])
        counts["users.with_events"] += 1
        if events[0][0] >= split_at:
            counts["users.new_in_eval"] += 1
        # Vocabulary counts, train split, one per exposure (tags: one per tag).
        if train_exposures:
            for name, values in user_info.vocab:
                counter = vocab[name]
                for value in values:
                    counter[value] += train_exposures
        for (context, derived), n in context_counter.items():
            for i, name in self._context_vocab:
                for value in _vocab_values(context[i]):
                    vocab[name][value] += n
            for i, name in self._derived_vocab:
                vocab[name][derived[i]] += n
        for name, value in age_values:
            vocab[name][value] += 1

    def _event_loop(self, events: list[tuple], split_at: float, target: Sequence[int],
                    label_of: Mapping[int, bytes], click_ts: Sequence[float],
                    click_pieces: Sequence[bytes], items: Mapping[str, SideRowInfo],
                    user_entries: bytes, per_user: bytes, outputs: Mapping[str, list],
                    retrieval_out: tuple[list, list], ranking_out: tuple[list, list],
                    counts: collections.Counter, item_stats: dict[str, list[int]],
                    context_counter: collections.Counter, age_values: list[Any]
                    ) -> tuple[int, list[list[int]]]:
        """The per-event loop of `build`: sessions, item stats and one example per
        impression / click, appended to ranking_out / retrieval_out[is_eval].

        beam_jobs/_fastloops.c (event_loop) is its compiled twin and must
        stay byte-for-byte equal to it (tests/beam_jobs/test_compiled_loops.py).

        Returns:
          (train exposures, accepted[split][event code]); split 0 = train.
        """
        gap = self._gap
        no_label = self._labels[(0, 0)]

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
        train_exposures = 0
        age_specs = self._age_specs
        # One numeric item_age_hours feature (the usual case) is encoded
        # inline; other age setups take the general `_append_age`.
        age_make, age_default = self._age_fast if self._age_fast else (None, 0.0)
        context_cache = self._context_cache
        context_entries = self._context_entries
        derived_values = self._derived_values
        derived_cache = self._derived_cache
        timestamp_entry = self._timestamp_entry
        heads = _EXAMPLE_HEADS
        for index, (ts, code, item, context) in enumerate(events):
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
                stats = item_stats[item] = [0, 0, 0, 0, 0]
            stats[3] += 1
            accepted[is_eval][code] += 1
            if not is_eval:
                stats[2] += 1
            if code == _FOLLOW:
                continue
            if code == _CLICK:
                session_items.append(item)
                exposure = target[index] < 0
                if not is_eval:
                    stats[1] += 1
                label = b""
            else:
                exposure = True
                if not is_eval:
                    stats[0] += 1
                label = label_of.get(index, no_label)
            counted = exposure and not is_eval
            if counted:
                stats[4] += 1
                train_exposures += 1
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
            context_key = (context, derived)
            context_bytes = context_cache.get(context_key)
            if context_bytes is None:
                context_bytes = context_entries(context, derived)
            if counted:
                context_counter[context_key] += 1
            item_info = items[item]
            if age_make is not None:
                created = item_info.created_ts
                body = b"".join((
                    user_entries, history_entry, item_info.entries, context_bytes,
                    age_make(age_default if created is None
                             else (ts - created) / 3600.0 if ts > created else 0.0),
                    timestamp_entry(int(ts)), per_user, label))
            else:
                entries = [user_entries, history_entry, item_info.entries, context_bytes]
                if age_specs:
                    self._append_age(entries, age_values, item_info, ts, counted)
                entries += (timestamp_entry(int(ts)), per_user, label)
                body = b"".join(entries)
            n = len(body)
            example = heads[n] + body if n < _HEADS_MAX else example_bytes((body,))
            if code == _CLICK:
                retrieval_out[is_eval].append(example)
            else:
                ranking_out[is_eval].append(example)
        self._close_session(session_items, session_start, prev_eval, per_user, outputs, counts)
        return train_exposures, accepted

    def _impression_labels(self, events: Sequence[tuple], target: Sequence[int],
                           split_at: float, counts: collections.Counter) -> dict[int, bytes]:
        """Label entries of the labelled impressions; counts the attribution.

        Args:
          events: the user's events (four-field tuples).
          target: per event, the index of the impression it is attributed to
            or -1 (`attribute_by_time` / `attribute_by_id`).
          split_at: eval = ts >= split_at.
          counts: summary counts, updated with labels.<split>.<click|follow>.
            {attributed, without_impression, impressions_labelled}.

        Returns:
          impression index -> encoded click/follow label entries, for the
          impressions with at least one label 1 (the others get (0, 0)).
        """
        result = None
        if self._compiled and events.__class__ is list and target.__class__ is list:
            result = compiled_loops.module().impression_labels(events, target, split_at,
                                                               self._labels)
        if result is None:
            result = impression_labels(events, target, split_at, self._labels)
        label_of, attributed, without, labelled = result
        for split_index in (0, 1):
            for code in (_CLICK, _FOLLOW):
                for key, table in zip(_LABEL_KEYS[(split_index, code)],
                                      (attributed, without, labelled)):
                    if table[split_index][code]:
                        counts[key] += table[split_index][code]
        return label_of

    def _append_age(self, entries: list[bytes], age_values: list[Any],
                    item_info: SideRowInfo, ts: float, counted: bool) -> None:
        """item_age_hours entries: (ts - created) / 3600 clipped at 0; a
        categorical one's value joins age_values when `counted` (a train
        exposure)."""
        created = item_info.created_ts
        age_hours = None if created is None else max(0.0, (ts - created) / 3600.0)
        for spec, make in self._age_makers:
            value = _numeric_default(spec) if age_hours is None else age_hours
            if make is not None:
                entries.append(make(value))
                continue
            value = str(int(value))
            entries.append(encode_value(spec, value))
            if counted and spec in self._age_vocab:
                age_values.append((spec.name, value))

    def _close_session(self, session_items: list[str], start: float, is_eval: bool,
                       per_user: bytes, outputs: Mapping[str, list],
                       counts: collections.Counter) -> None:
        if not session_items:
            return
        split = fc.EVAL if is_eval else fc.TRAIN
        counts[f"sessions.{split}"] += 1
        if len(session_items) < self._config.min_session_len:
            return
        start_ts = int(math.floor(start))
        outputs[_example_tag(fc.ITEM2VEC, split)].append(example_bytes([
            bytes_entry(self._session_key, [i.encode() for i in session_items]),
            int64_entry(self._ts_key, [start_ts]),
            per_user]))
        if not is_eval:
            self.train_session_starts.append(start_ts)
        counts[_EXAMPLE_KEYS[(int(is_eval), fc.ITEM2VEC)]] += 1


def impression_labels(events: Sequence[tuple], target: Sequence[int], split_at: float,
                      labels: Mapping[tuple[bool, bool], bytes]
                      ) -> tuple[dict[int, bytes], list[list[int]], list[list[int]],
                                 list[list[int]]]:
    """Which impressions a user's clicks and follows label, and the tallies.

    Args:
      events: the user's events (four-field tuples).
      target: per event, the impression it is attributed to or -1.
      split_at: eval = ts >= split_at.
      labels: (clicked, followed) -> the encoded label entries.

    Returns:
      (impression index -> label entries for the impressions with a label 1,
      attributed, without_impression, impressions_labelled), each tally
      indexed [split][event code] with split 0 = train.
      `_fastloops.impression_labels` is its compiled twin.
    """
    clicked: set[int] = set()
    followed: set[int] = set()
    attributed = [[0, 0, 0], [0, 0, 0]]
    without = [[0, 0, 0], [0, 0, 0]]
    for (ts, code, _, _), impression in zip(events, target):
        if code == _IMPRESSION:
            continue
        is_eval = ts >= split_at
        if impression < 0:
            without[is_eval][code] += 1
            continue
        attributed[is_eval][code] += 1
        (clicked if code == _CLICK else followed).add(impression)
    labelled = [[0, 0, 0], [0, 0, 0]]
    for code, indices in ((_CLICK, clicked), (_FOLLOW, followed)):
        for index in indices:
            labelled[events[index][0] >= split_at][code] += 1
    label_of = {index: labels[(index in clicked, index in followed)]
                for index in clicked | followed}
    return label_of, attributed, without, labelled


def attribute_by_time(events: Sequence[tuple], split_at: float, window: float) -> list[int]:
    """The impression each click and follow of one user is attributed to.

    A click is attributed to the latest impression of its item at or before
    it (in event order, so a same-second impression counts: it sorts first),
    when that impression is at most `window` seconds earlier; else to none.
    Only the latest one is a candidate: a click never reaches past a newer
    impression of the same item to an older one, so repeated impressions of
    an item do not multiply its positives.

    A follow is attributed to the impression its click was: its click is the
    latest click of its item at or before it, at most `window` seconds
    earlier. A follow with no such click, or whose click was attributed to
    none, is attributed like a click.

    Attribution never crosses the train/eval split time (the state is reset
    there), the way sessions are cut there: a train impression is never
    labelled by an eval-period click, and per split, labelled impressions
    never outnumber clicks.

    Args:
      events: one user's (ts, code, item, context) tuples, sorted by
        (ts, code, item, ...).
      split_at: eval = ts >= split_at (math.inf: no split).
      window: the attribution window in seconds (inclusive).

    Returns:
      A list aligned with events: for a click or follow, the index of the
      impression it is attributed to, or -1; -1 for every impression.
    """
    target = [-1] * len(events)
    last_impression: dict[str, int] = {}  # item -> index of its latest impression
    last_click: dict[str, int] = {}  # item -> index of its latest click
    in_eval = False
    for index, (ts, code, item, _) in enumerate(events):
        if ts >= split_at and not in_eval:
            in_eval = True
            last_impression.clear()
            last_click.clear()
        if code == _IMPRESSION:
            last_impression[item] = index
            continue
        impression = -1
        if code == _FOLLOW:
            click = last_click.get(item)
            if click is not None and ts - events[click][0] <= window:
                impression = target[click]
        if impression < 0:
            candidate = last_impression.get(item)
            if candidate is not None and ts - events[candidate][0] <= window:
                impression = candidate
        target[index] = impression
        if code == _CLICK:
            last_click[item] = index
    return target


def attribute_by_id(events: Sequence[tuple], impression_ids: Sequence[str],
                    split_at: float) -> list[int]:
    """The impression each click and follow of one user is attributed to, by id.

    The exact join of a log that carries a request / impression id: a click
    or follow with id X is attributed to the impression of the same item
    with id X, whatever the time between them (no window: the id decides,
    and logging clocks may disagree). An event with an empty id, or whose
    id names no impression of its item in its own split, is attributed to
    none. When several impressions of the item share the id, the latest at
    or before the event wins, else the earliest after it.

    Args:
      events: one user's (ts, code, item, context[, id]) tuples, sorted
        (`event_parsing.sort_and_dedupe`).
      impression_ids: the id of each event, aligned with events.
      split_at: eval = ts >= split_at (math.inf: no split).

    Returns:
      As `attribute_by_time`: per event, the impression index or -1.
    """
    by_key: dict[tuple[str, str], list[int]] = {}
    for index, event in enumerate(events):
        if event[1] == _IMPRESSION and impression_ids[index]:
            by_key.setdefault((event[2], impression_ids[index]), []).append(index)
    target = [-1] * len(events)
    for index, event in enumerate(events):
        if event[1] == _IMPRESSION or not impression_ids[index]:
            continue
        is_eval = event[0] >= split_at
        candidates = [i for i in by_key.get((event[2], impression_ids[index]), ())
                      if (events[i][0] >= split_at) == is_eval]
        if candidates:
            before = [i for i in candidates if i < index]
            target[index] = before[-1] if before else candidates[0]
    return target

