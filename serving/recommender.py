"""The online recommender: real-time user vectors, multi-channel recall, one ranking call.

recommend(user_id, context, k):
  1. profile features and recent clicks from the real-time store;
  2. a user vector per tower channel (two-tower, YouTubeNet) from the model
     server, on the raw user + context features with the live click history;
     the item2vec channel's user vector is the mean of the clicked items'
     vectors (Meitu);
  3. top `per_channel` from each channel's FAISS index, merged round-robin by
     rank (channel scores are not comparable), deduplicated, already-clicked
     items removed, cut to `num_candidates`; each item keeps every channel that
     retrieved it;
  4. ONE Predict on the ranking model's score_candidates signature (user and
     context features batch 1, item features batch N), then top-k;
  5. cold start: with no click history the towers still give a demographic
     vector (empty history), and popular items in the user's city and
     overall are added as channels `popular_city` / `popular`.

ingest(click) appends to the user's recent clicks, so the next recommend uses
the new history in the towers, the item2vec mean and the seen-filter.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from beam_jobs import feature_config as fc
from serving.catalogue import ItemCatalogue, raw_to_feature
from serving.client import ModelServerClient, TensorInfo
from serving.indexes import IndexSet, RecallIndex
from serving.store import InMemoryStore, RedisStore

log = logging.getLogger(__name__)

POPULAR_CITY, POPULAR = "popular_city", "popular"


@dataclasses.dataclass(frozen=True)
class Channel:
    """A recall channel: an index, and the user tower whose vector queries it.

    `tower=None` means the item2vec rule: mean of the recent clicks' vectors.
    """

    name: str
    tower: str | None


DEFAULT_CHANNELS: tuple[Channel, ...] = (
    Channel("two_tower", "user_tower_two_tower"),
    Channel("youtubenet", "user_tower_youtubenet"),
    Channel("item2vec", None))


@dataclasses.dataclass(frozen=True)
class RecommenderSettings:
    """Knobs of the online path.

    Attributes:
      num_candidates: merged candidates sent to ranking (500 in the papers).
      per_channel: neighbours asked from each index.
      ranking_model: model name of the ranker (ranking or ranking_multitask).
      ranking_signature: its raw-feature candidate-scoring signature.
      follow_weight: score = click + follow_weight * follow (multitask only).
      popular_fallback: popular items added per cold-start channel.
      channels: recall channels.
    """

    num_candidates: int = 500
    per_channel: int = 500
    ranking_model: str = "ranking"
    ranking_signature: str = "score_candidates"
    follow_weight: float = 0.0
    popular_fallback: int = 100
    channels: tuple[Channel, ...] = DEFAULT_CHANNELS


@dataclasses.dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    channels: tuple[str, ...]


def _derive(spec: fc.FeatureSpec, ts: float) -> str | float:
    lt = time.gmtime(ts)
    if spec.derive == fc.DERIVE_HOUR:
        return str(lt.tm_hour)
    if spec.derive == fc.DERIVE_WEEKDAY:
        return str(lt.tm_wday)
    raise ValueError(f"feature {spec.name!r}: derive {spec.derive!r} is not a request-time feature")


def _column(spec: fc.FeatureSpec, values: Sequence[Any]) -> np.ndarray:
    """Raw values -> the dense serving convention (models.inputs): [B] or [B, L]."""
    if spec.type == fc.NUMERIC:
        return np.asarray(values, dtype=np.float32)
    if spec.type == fc.CATEGORICAL:
        return np.array([str(v).encode() for v in values], dtype=object)
    width = max(1, max((len(v) for v in values), default=1))
    out = np.full((len(values), width), b"", dtype=object)
    for i, row in enumerate(values):
        out[i, :len(row)] = [str(v).encode() for v in row]
    return out


def merge_round_robin(lists: Sequence[tuple[str, Sequence[str]]], seen: set[str], limit: int,
                      known: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """Merges ranked channel lists by rank: item -> channels that retrieved it.

    Rank r of every channel comes before rank r + 1 of any (channel scores are
    not comparable); seen items and items missing from `known` are dropped;
    at most `limit` items, but channels keep accruing to admitted items.
    """
    merged: dict[str, list[str]] = {}
    depth = max((len(ids) for _, ids in lists), default=0)
    for rank in range(depth):
        for name, ids in lists:
            if rank >= len(ids):
                continue
            item = ids[rank]
            if item in seen or (known is not None and item not in known):
                continue
            if item in merged:
                if name not in merged[item]:
                    merged[item].append(name)
            elif len(merged) < limit:
                merged[item] = [name]
    return merged


class Recommender:
    """Recall + ranking over a model server (ours or TF Serving).

    Args:
      config: the dataset's feature config.
      client: gRPC client of the model server.
      store: real-time user store.
      indexes: recall indexes per channel.
      catalogue: item features and popularity.
      settings: RecommenderSettings.
      clock: unix-seconds clock (tests pin it).
    """

    def __init__(self, config: fc.FeatureConfig, client: ModelServerClient,
                 store: InMemoryStore | RedisStore, indexes: IndexSet, catalogue: ItemCatalogue,
                 settings: RecommenderSettings = RecommenderSettings(),
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.client = client
        self.store = store
        self.indexes = indexes
        self.catalogue = catalogue
        self.settings = settings
        self.clock = clock
        self.stats: Counter = Counter()
        self._signatures: dict[tuple[str, str], tuple[int, dict[str, TensorInfo]]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(settings.channels)),
                                        thread_name_prefix="recall")
        history = config.history_feature
        self._history_len = history.max_len if history else config.history_max_len
        self._specs = {f.name: f for f in config.features}
        city = config.role(fc.ROLE_USER_CITY)
        item_city = config.role(fc.ROLE_ITEM_CITY)
        self._city = (city.name, item_city.name) if city and item_city else None

    # ---- requests to the model server ------------------------------------
    def _signature_inputs(self, model: str, signature: str, refresh: bool = False
                          ) -> dict[str, TensorInfo]:
        key = (model, signature)
        if refresh or key not in self._signatures:
            version, inputs = self.client.signature_inputs(model, signature)
            with self._lock:
                self._signatures[key] = (version, inputs)
        return self._signatures[key][1]

    def _predict(self, model: str, signature: str,
                 build: Callable[[dict[str, TensorInfo]], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Predict with inputs built for the signature; re-reads it after a version swap."""
        inputs = self._signature_inputs(model, signature)
        try:
            result = self.client.predict_full(model, build(inputs), signature)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            # A new version may take other inputs: re-read its signature once.
            inputs = self._signature_inputs(model, signature, refresh=True)
            result = self.client.predict_full(model, build(inputs), signature)
        if result.model_version != self._signatures[(model, signature)][0]:
            self._signature_inputs(model, signature, refresh=True)
        return result.outputs

    # ---- features ---------------------------------------------------------
    def user_features(self, user_id: str, profile: Mapping[str, Any], history: Sequence[str],
                      context: Mapping[str, Any], ts: float) -> dict[str, Any]:
        """Raw user + context feature values (one row) from profile, context and history."""
        out: dict[str, Any] = {}
        for spec in self.config.features:
            if spec.field == fc.ITEM:
                continue
            if spec.type == fc.SEQUENCE:
                out[spec.name] = list(history)[-spec.max_len:]
            elif spec.source == fc.SOURCE_DERIVED:
                out[spec.name] = _derive(spec, ts)
            elif spec.source == fc.SOURCE_USERS and spec.raw_column == self.config.users_key:
                out[spec.name] = user_id
            elif spec.source == fc.SOURCE_USERS and spec.name in profile:
                out[spec.name] = raw_to_feature(spec, profile[spec.name])
            else:  # events-sourced context, or a profile feature the caller sent
                out[spec.name] = raw_to_feature(spec, context.get(spec.name, context.get(spec.raw_column)))
        return out

    def _row_inputs(self, row: Mapping[str, Any], wanted: Mapping[str, TensorInfo]) -> dict[str, np.ndarray]:
        missing = sorted(set(wanted) - set(row))
        if missing:
            raise ValueError(f"signature wants inputs {missing} that are not user/context "
                             f"features of config {self.config.name!r}")
        return {name: _column(self._specs[name], [row[name]]) for name in wanted}

    def _item_inputs(self, items: Sequence[str], row: Mapping[str, Any],
                     wanted: Mapping[str, TensorInfo], ts: float) -> dict[str, np.ndarray]:
        rows = self.catalogue.rows(items)
        out = {}
        for name in wanted:
            spec = self._specs.get(name)
            if spec is None:
                raise ValueError(f"ranking signature input {name!r} is not a feature of "
                                 f"config {self.config.name!r}")
            if spec.field != fc.ITEM:
                out[name] = _column(spec, [row[name]])
            elif spec.derive == fc.DERIVE_ITEM_AGE_HOURS:
                created = self.catalogue.created_ts
                if created is None:
                    raise ValueError(f"{name!r} needs item creation times in the catalogue")
                out[name] = np.maximum(ts - created[rows], 0.0).astype(np.float32) / 3600.0
            elif spec.raw_column == self.config.items_key:
                out[name] = _column(spec, items)
            else:
                values = self.catalogue.features[name]
                out[name] = _column(spec, [values[r] for r in rows])
        return out

    # ---- recall -------------------------------------------------------------
    def _channel_vector(self, channel: Channel, row: Mapping[str, Any], history: Sequence[str]
                        ) -> tuple[RecallIndex, np.ndarray] | None:
        """(index, user vector [1, dim]) of one channel, None when it cannot serve."""
        index = self.indexes.get(channel.name)  # one read: the vector and search use one version
        if index is None:
            self.stats[f"channel_missing_{channel.name}"] += 1
            return None
        if channel.tower is None:
            vector = index.mean_vector(history)
            return None if vector is None else (index, vector)
        try:
            outputs = self._predict(channel.tower, "serving_default",
                                    lambda wanted: self._row_inputs(row, wanted))
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            self.stats[f"tower_missing_{channel.tower}"] += 1
            return None
        return index, np.asarray(outputs["user_embedding"], dtype=np.float32).reshape(1, -1)

    def candidates(self, user_id: str, row: Mapping[str, Any], history: Sequence[str],
                   profile: Mapping[str, Any]) -> dict[str, list[str]]:
        """Merged candidates: item id -> channels, in merge order, seen items removed."""
        seen = set(history)
        lists: list[tuple[str, list[str]]] = []
        # Tower calls are independent round trips: issue them concurrently.
        futures = [self._pool.submit(self._channel_vector, channel, row, history)
                   for channel in self.settings.channels]
        for channel, future in zip(self.settings.channels, futures):
            found = future.result()
            if found is None:
                continue
            index, vector = found
            ids, _ = index.search(vector, self.settings.per_channel + len(seen))
            lists.append((channel.name, ids[0]))
        if not history or not lists:  # cold start, or no recall model yet
            self.stats["cold_start"] += 1
            if self._city is not None:
                city = row.get(self._city[0]) or profile.get(self._city[0])
                if city:
                    lists.append((POPULAR_CITY, self.catalogue.popular_where(
                        self._city[1], city, self.settings.popular_fallback, seen)))
            lists.append((POPULAR, self.catalogue.popular_where(
                None, None, self.settings.popular_fallback, seen)))
        return merge_round_robin(lists, seen, self.settings.num_candidates, self.catalogue.row)

    # ---- public API ---------------------------------------------------------
    def recommend(self, user_id: str, context: Mapping[str, Any] | None = None,
                  k: int = 10) -> list[Recommendation]:
        """Top-k items for a user: [(item_id, score, channels)], best first.

        Args:
          user_id: raw user id (unknown users are served as cold-start).
          context: request context: events-sourced context features (network,
            os, ...), optional `timestamp` (unix s, default now) and, for a
            user the store does not know, profile features (city, age, ...).
          k: items to return.
        Raises:
          ValueError: k < 1 or a model wants a feature the config lacks.
          grpc.RpcError: the ranking model is unavailable.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        context = dict(context or {})
        ts = float(context.get("timestamp") or self.clock())
        profile = self.store.get_profile(user_id) or {}
        history = self.store.recent_clicks(user_id)[-self._history_len:]
        row = self.user_features(user_id, profile, history, context, ts)
        merged = self.candidates(user_id, row, history, profile)
        self.stats["requests"] += 1
        if not merged:
            return []
        items = list(merged)
        outputs = self._predict(self.settings.ranking_model, self.settings.ranking_signature,
                                lambda wanted: self._item_inputs(items, row, wanted, ts))
        scores = np.asarray(outputs["click"], dtype=np.float64).reshape(-1)
        if self.settings.follow_weight and "follow" in outputs:
            scores = scores + self.settings.follow_weight * np.asarray(outputs["follow"]).reshape(-1)
        if scores.shape[0] != len(items):
            raise ValueError(f"ranking returned {scores.shape[0]} scores for {len(items)} candidates")
        order = np.argsort(-scores, kind="stable")[:k]
        return [Recommendation(items[i], float(scores[i]), tuple(merged[items[i]])) for i in order]

    def ingest(self, event: Mapping[str, Any]) -> bool:
        """Applies one real-time event; returns whether it changed the history.

        Args:
          event: {"user_id", "item_id", "event": click|follow|impression
            (default click), optional "profile": {feature: value}}.
        Raises:
          ValueError: user_id or item_id missing, or an unknown event type.
        """
        user_id, item_id = str(event.get("user_id") or ""), str(event.get("item_id") or "")
        kind = str(event.get("event") or fc.CLICK)
        if not user_id or not item_id:
            raise ValueError(f"event needs user_id and item_id: {dict(event)!r}")
        if kind not in fc.EVENT_TYPES:
            raise ValueError(f"event {kind!r} not in {fc.EVENT_TYPES}")
        if isinstance(event.get("profile"), Mapping):
            merged = {**(self.store.get_profile(user_id) or {}), **event["profile"]}
            self.store.put_profile(user_id, merged)
        if kind == fc.IMPRESSION:
            self.stats["ingest_impressions"] += 1
            return False
        # A follow implies the click that led to it; both enter the history once.
        self.store.add_click(user_id, item_id)
        self.stats["ingest_clicks"] += 1
        return True
