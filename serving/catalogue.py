"""Item catalogue, popularity and user profiles for online serving.

The recommender needs, per candidate, the raw item features the ranking model
reads, and per user the raw profile features the towers read. Both come from
the raw side tables (README, "Raw click-log format"), read through the
feature config; popularity comes from the sessionize job's
item_frequencies.tsv (clicks in the train split).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from feature_contract import feature_config as fc

log = logging.getLogger(__name__)


Table = str | Sequence[str]  # one file, or a table's files (a dataset YAML's glob, matched)


def read_table(path: Table) -> Iterable[dict[str, Any]]:
    """Rows of a .jsonl / .csv table, optionally .gz (format from the name).

    `path` may list several files (a table split into parts), read in order.

    Raises:
      ValueError: the extension is neither, or a JSON line is malformed.
    """
    if not isinstance(path, str):
        for part in path:
            yield from read_table(part)
        return
    name = path[:-3] if path.endswith(".gz") else path
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        if name.endswith(".jsonl"):
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{number}: bad JSON: {err}") from err
        elif name.endswith(".csv"):
            yield from csv.DictReader(io.StringIO(f.read()))
        else:
            raise ValueError(f"{path}: want .jsonl[.gz] or .csv[.gz]")


def raw_to_feature(spec: fc.FeatureSpec, value: Any) -> Any:
    """A raw column value in the serving dense convention of its feature.

    categorical -> str; tags -> list[str] (JSON list or `separator`-joined);
    numeric -> float (missing, unreadable or not finite -> 0.0). Total: any
    value a table row or the store holds maps to something (a scalar where a
    list belongs is a one-value list), so a bad stored value degrades one
    feature instead of failing every request of its user.
    """
    if spec.type == fc.NUMERIC:
        try:
            number = float(value) if value not in (None, "") else 0.0
        except (TypeError, ValueError, OverflowError):
            return 0.0
        return number if math.isfinite(number) else 0.0
    if spec.type in (fc.TAGS, fc.SEQUENCE):
        if value is None or value == "":
            return []
        if isinstance(value, str):
            value = value.split(spec.separator)
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [str(v) for v in value if str(v)][:spec.max_len]
    return spec.default if value is None or value == "" else str(value)


def read_item_frequencies(path: str) -> dict[str, int]:
    """item_frequencies.tsv (item_id, impressions, clicks) -> clicks; header optional."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3 and parts[2].strip().isdigit():
                out[parts[0]] = int(parts[2])
    return out


@dataclasses.dataclass(frozen=True)
class EncodedColumn:
    """One item feature in the serving dense convention, for all catalogue rows.

    Attributes:
      values: categorical: object bytes [N]; tags: object bytes [N, L] padded
        with b"" (L = the longest row, at least 1); numeric: float32 [N].
      lengths: tags only: values per row [N] (int64), None otherwise.
    """

    values: np.ndarray
    lengths: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows of the column; tags cut to the longest selected row (at least 1),
        as a request built from those rows alone would be."""
        if self.lengths is None:
            return self.values[rows]
        width = max(1, int(self.lengths[rows].max())) if len(rows) else 1
        return self.values[rows, :width]


def encode_column(spec: fc.FeatureSpec, values: Sequence[Any]) -> EncodedColumn:
    """Raw feature values -> EncodedColumn (the dense convention of models.inputs)."""
    if spec.type == fc.NUMERIC:
        return EncodedColumn(np.asarray(values, dtype=np.float32))
    if spec.type == fc.CATEGORICAL:
        out = np.empty(len(values), dtype=object)
        out[:] = [str(v).encode() for v in values]
        return EncodedColumn(out)
    lengths = np.array([len(v) for v in values], dtype=np.int64)
    width = max(1, int(lengths.max()) if len(values) else 1)
    out = np.full((len(values), width), b"", dtype=object)
    for i, row in enumerate(values):
        out[i, :len(row)] = [str(v).encode() for v in row]
    return EncodedColumn(out, lengths)


@dataclasses.dataclass
class ItemCatalogue:
    """Items and their raw features, row-aligned.

    The request path reads whole columns by row index: `encoded(spec)` and
    `encoded_ids` are built once per catalogue (lazily, then cached), so a
    500-candidate request gathers arrays instead of converting values.

    Attributes:
      ids: item ids [N].
      features: item feature name -> [N] values (str / float) or [N] lists (tags).
      created_ts: item creation time (unix s) [N] or None when the config has none.
      clicks: popularity [N] (train clicks).
    """

    ids: list[str]
    features: dict[str, list]
    created_ts: np.ndarray | None
    clicks: np.ndarray

    def __post_init__(self):
        self.row = {item: i for i, item in enumerate(self.ids)}
        # Most clicked first; ties keep catalogue order.
        self.popularity_rows = np.argsort(-np.asarray(self.clicks), kind="stable")
        self.by_popularity = [self.ids[i] for i in self.popularity_rows]
        self.encoded_ids = np.empty(len(self.ids), dtype=object)
        self.encoded_ids[:] = [i.encode() for i in self.ids]
        # Caches filled on first use; a lost race only computes a value twice.
        self._encoded: dict[str, EncodedColumn] = {}
        self._codes_by_popularity: dict[str, tuple[dict[Any, int], np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row of each id; -1 for unknown ids."""
        return np.array([self.row.get(i, -1) for i in item_ids], dtype=np.int64)

    def encoded(self, spec: fc.FeatureSpec) -> EncodedColumn:
        """The feature's column for every item (built on first use).

        Raises:
          KeyError: the catalogue has no such feature.
        """
        column = self._encoded.get(spec.name)
        if column is None:
            column = self._encoded[spec.name] = encode_column(spec, self.features[spec.name])
        return column

    def popular_rows(self, feature: str | None, value: Any, limit: int,
                     exclude_rows: np.ndarray | None = None) -> np.ndarray:
        """Rows of the most clicked items whose `feature` equals value (all when feature is None).

        Args:
          feature: item feature name, or None for no filter.
          value: the raw value to match.
          limit: rows wanted at most.
          exclude_rows: rows to leave out (e.g. the user's clicks).
        Returns:
          int64 rows [<= limit], most clicked first.
        """
        order = self.popularity_rows
        if feature:
            codes = self._codes_by_popularity.get(feature)
            if codes is None:
                # Integer codes of the raw values, aligned with popularity order,
                # so a filter is one vector compare, not a loop over the catalogue.
                vocab: dict[Any, int] = {}
                values = self.features[feature]
                aligned = np.array([vocab.setdefault(values[r], len(vocab)) for r in order],
                                   dtype=np.int64)
                codes = self._codes_by_popularity[feature] = (vocab, aligned)
            vocab, aligned = codes
            if value not in vocab:
                return np.zeros(0, dtype=np.int64)
            order = order[aligned == vocab[value]]
        if exclude_rows is not None and len(exclude_rows):
            order = order[:limit + len(exclude_rows)]  # enough to survive the exclusions
            order = order[~np.isin(order, exclude_rows)]
        return order[:limit]

    def popular_where(self, feature: str, value: Any, limit: int,
                      exclude: set[str] = frozenset()) -> list[str]:
        """Most clicked items whose `feature` equals value (all items when feature is None)."""
        excluded = np.array([self.row[i] for i in exclude if i in self.row], dtype=np.int64)
        return [self.ids[r] for r in self.popular_rows(feature, value, limit, excluded)]

    @classmethod
    def from_table(cls, path: Table, config: fc.FeatureConfig,
                   frequencies: Mapping[str, int] | None = None) -> "ItemCatalogue":
        """Reads the raw items table; duplicate ids keep the first row."""
        specs = [f for f in config.field_features(fc.ITEM) if f.source == fc.SOURCE_ITEMS]
        ids, features, created = [], {s.name: [] for s in specs}, []
        seen = set()
        for row in read_table(path):
            item = str(row.get(config.items_key, ""))
            if not item or item in seen:
                continue
            seen.add(item)
            ids.append(item)
            for spec in specs:
                features[spec.name].append(raw_to_feature(spec, row.get(spec.raw_column)))
            if config.item_created_column:
                created.append(float(row.get(config.item_created_column) or 0))
        if not ids:
            raise ValueError(f"item table {path} has no rows with {config.items_key!r}")
        freq = frequencies or {}
        return cls(ids, features, np.array(created) if config.item_created_column else None,
                   np.array([freq.get(i, 0) for i in ids], dtype=np.int64))


def read_user_profiles(path: Table, config: fc.FeatureConfig) -> dict[str, dict[str, Any]]:
    """Raw users table -> user id -> {feature name: value} for `source: users` features."""
    specs = config.by_source(fc.SOURCE_USERS)
    out = {}
    for row in read_table(path):
        user = str(row.get(config.users_key, ""))
        if user:
            out[user] = {s.name: raw_to_feature(s, row.get(s.raw_column)) for s in specs}
    return out


def read_recent_clicks(path: Table, config: fc.FeatureConfig, max_clicks: int
                       ) -> tuple[dict[str, list[str]], int]:
    """Events table -> user id -> the last `max_clicks` clicked item ids, oldest first.

    Seeds the real-time store when serving starts from a log (production feeds
    it from the click stream via `ingest`). Rows that are not clicks are
    skipped; click rows without a user, an item or a parseable timestamp are
    counted, not guessed.

    Returns:
      (clicks per user, number of unusable click rows).
    """
    from beam_jobs.event_parsing import parse_timestamp

    click_values = {raw for raw, kind in config.event_values.items() if kind == fc.CLICK}
    per_user: dict[str, list[tuple[float, str]]] = {}
    bad = 0
    for row in read_table(path):
        if str(row.get(config.event_column, "")) not in click_values:
            continue
        user, item = row.get(config.user_column), row.get(config.item_column)
        try:
            ts = parse_timestamp(row.get(config.timestamp_column), config.timestamp_unit)
        except (TypeError, ValueError):
            ts = None
        if not user or not item or ts is None:
            bad += 1
            continue
        per_user.setdefault(str(user), []).append((ts, str(item)))
    return ({user: [item for _, item in sorted(clicks)[-max_clicks:]]
             for user, clicks in per_user.items()}, bad)
