"""Train / eval split rules of the sessionize job, and the validation sizes it reports.

Pure functions plus two CombineFns, so each rule is testable by hand. The
modes are the feature config's `split.mode` (feature_contract.feature_config
.SplitSpec): time_span, event_fraction and timestamp give one split time for
everyone (eval = ts >= split time); random_users puts whole users in eval.

The trainers carve validation from the train split themselves
(models.validation: validation = the last `validation_fraction` of the train
examples' time span, per example kind). The job reports what that carve will
give, computed the same way from the train examples' int64 timestamps, so
summary.json shows train / validation / eval sizes per kind.
"""

from __future__ import annotations

import array
import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam

from feature_contract import feature_config as fc


def split_time(span: tuple[float, float] | None, eval_fraction: float) -> float | None:
    """time_span: min + (1 - eval_fraction) * (max - min); None when nothing was accepted."""
    if span is None:
        return None
    lo, hi = span
    return lo + (1.0 - eval_fraction) * (hi - lo)


def event_fraction_split_time(times: Iterable[float], eval_fraction: float) -> float | None:
    """event_fraction: the time of the event at 0-based position floor((1 - f) * N).

    Events at or after it are eval, so eval holds at least ceil(f * N) events
    (more when several events share that second). None without events.
    """
    ordered = sorted(times)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, math.floor((1.0 - eval_fraction) * len(ordered)))]


def is_random_eval_user(user: str, eval_fraction: float, seed: int) -> bool:
    """random_users: whether a user is in eval; a seeded hash, the same on every run."""
    digest = hashlib.blake2b(f"{seed}\x00{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < eval_fraction


def user_split_time(split: fc.SplitSpec, user: str, split_ts: float | None) -> float | None:
    """The split time applied to one user's events (eval = ts >= it).

    random_users: -inf (every event eval) or +inf (every event train); the
    other modes share `split_ts`.
    """
    if split.mode != fc.SPLIT_RANDOM_USERS:
        return split_ts
    return -math.inf if is_random_eval_user(user, split.eval_fraction, split.seed) else math.inf


def validation_cutoff(lo: int, hi: int, fraction: float) -> float | None:
    """models.validation's cutoff over train timestamps in [lo, hi]; None if lo == hi.

    validation = timestamp >= hi - fraction * (hi - lo).
    """
    if not hi > lo:
        return None
    return hi - fraction * (hi - lo)


class EventTimesFn(beam.CombineFn):
    """Packed float64 event times (bytes) -> the event_fraction split time."""

    def __init__(self, eval_fraction: float):
        self._fraction = eval_fraction

    def create_accumulator(self) -> array.array:
        return array.array("d")

    def add_input(self, acc: array.array, blob: bytes) -> array.array:
        acc.frombytes(blob)
        return acc

    def merge_accumulators(self, accumulators: Iterable[array.array]) -> array.array:
        out = array.array("d")
        for acc in accumulators:
            out.extend(acc)
        return out

    def extract_output(self, acc: array.array) -> float | None:
        return event_fraction_split_time(acc, self._fraction)


def pack_times(times: Iterable[float]) -> bytes:
    return array.array("d", times).tobytes()


def pack_int_times(times: Iterable[int]) -> bytes:
    return array.array("q", times).tobytes()


def unpack_int_times(blob: bytes) -> array.array:
    out = array.array("q")
    out.frombytes(blob)
    return out


def int_times_span(blobs: Iterable[bytes]) -> tuple[int, int] | None:
    """(min, max) over packed int64 timestamps; None when there are none."""
    lo = hi = None
    for blob in blobs:
        times = unpack_int_times(blob)
        if times:
            lo = min(times) if lo is None else min(lo, min(times))
            hi = max(times) if hi is None else max(hi, max(times))
    return None if lo is None else (lo, hi)


def count_at_or_after(blob: bytes, cutoff: float | None) -> int:
    if cutoff is None:
        return 0
    return sum(1 for t in unpack_int_times(blob) if t >= cutoff)


def split_sizes(split: fc.SplitSpec, examples: Mapping[str, Mapping[str, int]],
                validation: Mapping[str, int],
                cutoffs: Mapping[str, float | None]) -> dict[str, Any]:
    """The summary's `split` block: mode, settings and per-kind sizes.

    Args:
      split: the config's split settings.
      examples: kind -> {"train": n, "eval": n} (examples written).
      validation: kind -> train examples at or after the validation cutoff.
      cutoffs: kind -> the validation cutoff (None: no span to carve from).

    Returns:
      {"mode", "eval_fraction", "seed", "validation_fraction", "sizes":
      {kind: {"train", "validation", "eval"}}, "validation_cutoff": {kind}};
      "train" is what the trainer fits on (the train split minus validation).
    """
    sizes = {}
    for kind in fc.EXAMPLE_KINDS:
        held = validation.get(kind, 0)
        sizes[kind] = {"train": examples[kind][fc.TRAIN] - held, "validation": held,
                       "eval": examples[kind][fc.EVAL]}
    return {
        "mode": split.mode,
        "eval_fraction": None if split.mode == fc.SPLIT_TIMESTAMP else split.eval_fraction,
        "seed": split.seed if split.mode == fc.SPLIT_RANDOM_USERS else None,
        "validation_fraction": split.validation_fraction,
        "sizes": sizes,
        "validation_cutoff": {kind: cutoffs.get(kind) for kind in fc.EXAMPLE_KINDS},
    }
