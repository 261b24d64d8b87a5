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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from beam_jobs import feature_config as fc

log = logging.getLogger(__name__)


def read_table(path: str) -> Iterable[dict[str, Any]]:
    """Rows of a .jsonl / .csv table, optionally .gz (format from the name).

    Raises:
      ValueError: the extension is neither, or a JSON line is malformed.
    """
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
    numeric -> float (missing -> 0.0).
    """
    if spec.type == fc.NUMERIC:
        try:
            return float(value) if value not in (None, "") else 0.0
        except (TypeError, ValueError):
            return 0.0
    if spec.type in (fc.TAGS, fc.SEQUENCE):
        if value in (None, ""):
            return []
        if isinstance(value, str):
            value = value.split(spec.separator)
        return [str(v) for v in value if str(v)][:spec.max_len]
    return spec.default if value in (None, "") else str(value)


def read_item_frequencies(path: str) -> dict[str, int]:
    """item_frequencies.tsv (item_id, impressions, clicks) -> clicks; header optional."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3 and parts[2].strip().isdigit():
                out[parts[0]] = int(parts[2])
    return out


@dataclasses.dataclass
class ItemCatalogue:
    """Items and their raw features, row-aligned.

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
        order = np.argsort(-self.clicks, kind="stable")
        self.by_popularity = [self.ids[i] for i in order]

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Row of each id; -1 for unknown ids."""
        return np.array([self.row.get(i, -1) for i in item_ids], dtype=np.int64)

    def popular_where(self, feature: str, value: Any, limit: int,
                      exclude: set[str] = frozenset()) -> list[str]:
        """Most clicked items whose `feature` equals value (all items when feature is None)."""
        values = self.features.get(feature) if feature else None
        out = []
        for item in self.by_popularity:
            if item in exclude:
                continue
            if values is not None and values[self.row[item]] != value:
                continue
            out.append(item)
            if len(out) >= limit:
                break
        return out

    @classmethod
    def from_table(cls, path: str, config: fc.FeatureConfig,
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


def read_user_profiles(path: str, config: fc.FeatureConfig) -> dict[str, dict[str, Any]]:
    """Raw users table -> user id -> {feature name: value} for `source: users` features."""
    specs = config.by_source(fc.SOURCE_USERS)
    out = {}
    for row in read_table(path):
        user = str(row.get(config.users_key, ""))
        if user:
            out[user] = {s.name: raw_to_feature(s, row.get(s.raw_column)) for s in specs}
    return out
