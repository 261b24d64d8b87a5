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
     context features batch 1, item features batch N), then top-k by the
     click score, or, when settings.blend is set, by the blend of the
     ranker's logits with each channel's rank and the item's popularity
     (serving.blend: weights fitted on validation requests). With no ranking
     model served (NOT_FOUND) the request is still answered: by the blend
     without the ranker's features, or in merge order with score
     1 / (1 + merge rank); `stats["ranking_missing"]` counts it and
     readiness reports the model. A blend that weighs no ranker output
     (fitted while no ranker was served) makes no ranking Predict at all:
     the ranker's scores could not change its order (`stats["ranking_skipped"]`);
  5. cold start: with no click history the towers still give a demographic
     vector (empty history), and popular items in the user's city and
     overall are added as channels `popular_city` / `popular`.

ingest(click) appends to the user's recent clicks, so the next recommend uses
the new history in the towers, the item2vec mean and the seen-filter.

Failures are typed, so the HTTP layer answers each with its status:
`request_checks.BadRequest` (400: a bad k, id, context or profile, an unknown
item), `store.StoreUnavailable` (503), grpc.RpcError from the model server
(503 when it is unavailable or the model not loaded, else 500) and
`ModelIncompatible` (500: a pushed model whose signature the recommender
cannot feed or read). `readiness()` reports the store, models and indexes.

The request path works on catalogue row numbers, not id strings: index rows
map to catalogue rows through an array built once per index version, the
merge is vectorized (`merge_rows`), item features are gathered from columns
the catalogue encodes once (ItemCatalogue.encoded), and the tower Predicts
overlap (one on a small pool, one on the request's thread). Every model call
still goes through the model server's standard PredictionService API.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2

from feature_contract import feature_config as fc
from serving.blend import Blend, candidate_features
from serving.catalogue import ItemCatalogue, encode_column, raw_to_feature
from serving.client import ModelServerClient, TensorInfo
from serving.indexes import IndexSet
from serving.request_checks import (BadRequest, RequestRules, check_context, check_id, check_k,
                                    check_profile, check_timestamp)
from serving.store import InMemoryStore, RedisStore, StoreUnavailable
from serving.tensors import to_tensor_proto

log = logging.getLogger(__name__)

POPULAR_CITY, POPULAR = "popular_city", "popular"


class ModelIncompatible(RuntimeError):
    """A served model the recommender cannot use: a missing signature, input or output."""


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
      follow_weight: score = click + follow_weight * follow (multitask only;
        ignored when `blend` is set).
      blend: final score = the blend over the ranker's logits, the channels'
        ranks and popularity (serving.blend); None ranks by the ranker alone.
      popular_fallback: popular items added per cold-start channel.
      channels: recall channels.
      rules: caps on a request's k, ids and values (request_checks).
    """

    num_candidates: int = 500
    per_channel: int = 500
    ranking_model: str = "ranking"
    ranking_signature: str = "score_candidates"
    follow_weight: float = 0.0
    popular_fallback: int = 100
    channels: tuple[Channel, ...] = DEFAULT_CHANNELS
    rules: RequestRules = RequestRules()
    blend: Blend | None = None


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
    return encode_column(spec, values).values


class RowProtos:
    """One request's user + context features as batch-1 TensorProtos, each built once.

    Both user towers and the ranking call take the same user and context
    features; encoding them once per request instead of once per call saves
    a third of that work. Safe to share between the request's threads: at
    worst two of them build the same (identical) proto.
    """

    def __init__(self, specs: Mapping[str, fc.FeatureSpec], row: Mapping[str, Any]):
        self._specs, self._row = specs, row
        self._protos: dict[str, tensor_pb2.TensorProto] = {}

    def __getitem__(self, name: str) -> tensor_pb2.TensorProto:
        proto = self._protos.get(name)
        if proto is None:
            proto = self._protos[name] = to_tensor_proto(_column(self._specs[name], [self._row[name]]))
        return proto


@dataclasses.dataclass(frozen=True)
class MergedRows:
    """Merged candidates as catalogue rows.

    Attributes:
      rows: int64 [M] admitted rows in merge order.
      pair_rows, pair_channels: int64 [P] every (row, channel index) pair of
        the admitted rows, in the order the round robin met it.
      names: channel name per channel index.
      pair_ranks: int64 [P] the row's 0-based rank in that channel's list
        (the blend's log_rank features).
    """

    rows: np.ndarray
    pair_rows: np.ndarray
    pair_channels: np.ndarray
    names: tuple[str, ...]
    pair_ranks: np.ndarray

    def channels_of(self, rows: Sequence[int]) -> list[tuple[str, ...]]:
        """Channels that retrieved each of `rows`, in the order they met it."""
        wanted = np.asarray(rows, dtype=np.int64)
        keep = np.isin(self.pair_rows, wanted)
        found: dict[int, list[str]] = {int(r): [] for r in wanted}
        for row, channel in zip(self.pair_rows[keep].tolist(), self.pair_channels[keep].tolist()):
            found[row].append(self.names[channel])
        return [tuple(found[int(r)]) for r in wanted]


def merge_rows(lists: Sequence[tuple[str, np.ndarray]], seen_rows: np.ndarray, limit: int
               ) -> MergedRows:
    """Merges ranked channel lists of rows by rank (vectorized round robin).

    Rank r of every channel comes before rank r + 1 of any (channel scores are
    not comparable); rows < 0 (unknown items) and seen rows are dropped; at
    most `limit` rows are admitted, but channels keep accruing to admitted rows
    from every rank.

    Args:
      lists: (channel name, int rows [n_c] best first) per channel.
      seen_rows: rows to drop.
      limit: rows to admit at most.
    Returns:
      MergedRows.
    """
    names = tuple(name for name, _ in lists)
    depth = max((len(rows) for _, rows in lists), default=0)
    grid = np.full((depth, len(lists)), -1, dtype=np.int64)  # [rank, channel]
    for c, (_, rows) in enumerate(lists):
        grid[:len(rows), c] = rows
    sequence = grid.ravel()  # rank-major: the round-robin visiting order
    channels = np.tile(np.arange(len(lists), dtype=np.int64), depth)
    ranks = np.repeat(np.arange(depth, dtype=np.int64), len(lists))
    valid = sequence >= 0
    if len(seen_rows):
        valid &= ~np.isin(sequence, seen_rows)
    sequence, channels, ranks = sequence[valid], channels[valid], ranks[valid]
    _, first = np.unique(sequence, return_index=True)
    admitted = sequence[np.sort(first)[:limit]]
    keep = np.isin(sequence, admitted)
    sequence, channels, ranks = sequence[keep], channels[keep], ranks[keep]
    # First meeting of each (row, channel) pair, in visiting order.
    _, first_pair = np.unique(sequence * max(1, len(lists)) + channels, return_index=True)
    first_pair.sort()
    return MergedRows(admitted, sequence[first_pair], channels[first_pair], names,
                      ranks[first_pair])


def merge_round_robin(lists: Sequence[tuple[str, Sequence[str]]], seen: set[str], limit: int,
                      known: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """Merges ranked channel lists of ids by rank: item -> channels that retrieved it.

    The id form of `merge_rows` (same rules): seen items and items missing
    from `known` are dropped; at most `limit` items, but channels keep
    accruing to admitted items.
    """
    codes: dict[str, int] = {}
    as_rows = [(name, np.array([codes.setdefault(i, len(codes)) if known is None or i in known
                                else -1 for i in ids], dtype=np.int64)) for name, ids in lists]
    ids_of = list(codes)
    seen_rows = np.array([codes[i] for i in seen if i in codes], dtype=np.int64)
    merged = merge_rows(as_rows, seen_rows, limit)
    return {ids_of[r]: list(channels) for r, channels in
            zip(merged.rows.tolist(), merged.channels_of(merged.rows))}


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
        # Each request in flight hands all but one tower call to the pool: room
        # for a few concurrent requests without queueing behind each other.
        self._pool = ThreadPoolExecutor(max_workers=4 * max(1, len(settings.channels) - 1),
                                        thread_name_prefix="recall")
        history = config.history_feature
        self._history_len = history.max_len if history else config.history_max_len
        self._specs = {f.name: f for f in config.features}
        city = config.role(fc.ROLE_USER_CITY)
        item_city = config.role(fc.ROLE_ITEM_CITY)
        self._city = (city.name, item_city.name) if city and item_city else None
        # What a client may send: context keys user_features reads, profile features ingest stores.
        readable = [f for f in config.features if f.field != fc.ITEM and f.type != fc.SEQUENCE
                    and f.source != fc.SOURCE_DERIVED and not self._is_user_key(f)]
        self._context_specs = {key: f for f in readable for key in (f.raw_column, f.name)}
        self._profile_specs = {f.name: f for f in config.by_source(fc.SOURCE_USERS)
                               if not self._is_user_key(f)}
        # A blend that weighs no ranker output never needs the ranker's scores.
        self._calls_ranker = settings.blend is None or settings.blend.uses_ranker
        if not self._calls_ranker:
            log.info("the blend weighs no ranker output: /recommend makes no ranking Predict")

    def _is_user_key(self, spec: fc.FeatureSpec) -> bool:
        return spec.source == fc.SOURCE_USERS and spec.raw_column == self.config.users_key

    # ---- requests to the model server ------------------------------------
    def _signature_inputs(self, model: str, signature: str, refresh: bool = False
                          ) -> dict[str, TensorInfo]:
        key = (model, signature)
        if refresh or key not in self._signatures:
            try:
                version, inputs = self.client.signature_inputs(model, signature)
            except KeyError as err:  # the model has no such signature
                raise ModelIncompatible(str(err).strip("'\"")) from err
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
            try:
                result = self.client.predict_full(model, build(inputs), signature)
            except grpc.RpcError as again:
                if again.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                raise ModelIncompatible(f"model {model!r} rejects the inputs built for its "
                                        f"signature {signature!r}: {again.details()}") from again
        if result.model_version != self._signatures[(model, signature)][0]:
            self._signature_inputs(model, signature, refresh=True)
        return result.outputs

    @staticmethod
    def _output(outputs: Mapping[str, np.ndarray], name: str, model: str) -> np.ndarray:
        if name not in outputs:
            raise ModelIncompatible(f"model {model!r} has no output {name!r}; it has "
                                    f"{sorted(outputs)}")
        return outputs[name]

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

    def _row_inputs(self, row: Mapping[str, Any], wanted: Mapping[str, TensorInfo],
                    protos: RowProtos | None = None) -> dict[str, np.ndarray | tensor_pb2.TensorProto]:
        """Tower inputs (batch 1): arrays, or the request's shared protos when given."""
        missing = sorted(set(wanted) - set(row))
        if missing:
            raise ModelIncompatible(f"signature wants inputs {missing} that are not user/context "
                                    f"features of config {self.config.name!r}")
        if protos is not None:
            return {name: protos[name] for name in wanted}
        return {name: _column(self._specs[name], [row[name]]) for name in wanted}

    def _item_inputs(self, items: Sequence[str], row: Mapping[str, Any],
                     wanted: Mapping[str, TensorInfo], ts: float) -> dict[str, np.ndarray]:
        """Ranking inputs for item ids (see _item_inputs_rows).

        Raises:
          ValueError: an id is not in the catalogue, or see _item_inputs_rows.
        """
        rows = self.catalogue.rows(items)
        if len(rows) and rows.min() < 0:
            unknown = [i for i, r in zip(items, rows.tolist()) if r < 0][:5]
            raise ValueError(f"items {unknown} are not in the catalogue")
        return self._item_inputs_rows(rows, row, wanted, ts)

    def _item_inputs_rows(self, rows: np.ndarray, row: Mapping[str, Any],
                          wanted: Mapping[str, TensorInfo], ts: float,
                          protos: RowProtos | None = None
                          ) -> dict[str, np.ndarray | tensor_pb2.TensorProto]:
        """Ranking inputs: user/context features [1] or [1, L], item features [N] or [N, L].

        Item columns are gathered by catalogue row from ItemCatalogue.encoded;
        user/context features come from `protos` when given.

        Raises:
          ModelIncompatible: the signature wants a feature the config or catalogue lacks.
        """
        out = {}
        for name in wanted:
            spec = self._specs.get(name)
            if spec is None:
                raise ModelIncompatible(f"ranking signature input {name!r} is not a feature of "
                                        f"config {self.config.name!r}")
            if spec.field != fc.ITEM:
                out[name] = protos[name] if protos is not None else _column(spec, [row[name]])
            elif spec.derive == fc.DERIVE_ITEM_AGE_HOURS:
                created = self.catalogue.created_ts
                if created is None:
                    raise ModelIncompatible(f"{name!r} needs item creation times in the catalogue")
                out[name] = np.maximum(ts - created[rows], 0.0).astype(np.float32) / 3600.0
            elif spec.raw_column == self.config.items_key:
                out[name] = self.catalogue.encoded_ids[rows]
            elif name in self.catalogue.features:
                out[name] = self.catalogue.encoded(spec).take(rows)
            else:
                raise ModelIncompatible(f"ranking signature input {name!r} is not in the item "
                                        "catalogue")
        return out

    # ---- recall -------------------------------------------------------------
    def _tower_vector(self, channel: Channel, row: Mapping[str, Any],
                      protos: RowProtos | None = None) -> np.ndarray | None:
        """The tower's user vector [1, dim]; None when the model server lacks the tower."""
        try:
            outputs = self._predict(channel.tower, "serving_default",
                                    lambda wanted: self._row_inputs(row, wanted, protos))
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            self.stats[f"tower_missing_{channel.tower}"] += 1
            return None
        return np.asarray(self._output(outputs, "user_embedding", channel.tower),
                          dtype=np.float32).reshape(1, -1)

    def _recall(self, row: Mapping[str, Any], history: Sequence[str],
                profile: Mapping[str, Any], protos: RowProtos | None = None) -> MergedRows:
        """Merged candidates as catalogue rows, seen items removed."""
        lists, seen_rows = self._channel_lists(row, history, profile, protos)
        return merge_rows(lists, seen_rows, self.settings.num_candidates)

    def _channel_lists(self, row: Mapping[str, Any], history: Sequence[str],
                       profile: Mapping[str, Any], protos: RowProtos | None = None
                       ) -> tuple[list[tuple[str, np.ndarray]], np.ndarray]:
        """Each channel's ranked catalogue rows (cold-start channels included) and the seen rows.

        Separate from the merge so the offline funnel replay (bench.funnel_bench)
        can read each channel's own list of the very request it replays.
        """
        seen_rows = np.array(sorted({self.catalogue.row[i] for i in history
                                     if i in self.catalogue.row}), dtype=np.int64)
        depth = self.settings.per_channel + len(set(history))
        # Tower Predicts are independent round trips: the pool sends all but the
        # last while this thread sends the last one, then searches in channel order.
        indexes = [(channel, self.indexes.get(channel.name)) for channel in self.settings.channels]
        towers = [channel for channel, index in indexes if index is not None and channel.tower]
        vectors = {channel.name: self._pool.submit(self._tower_vector, channel, row, protos)
                   for channel in towers[:-1]}
        if towers:
            vectors[towers[-1].name] = self._tower_vector(towers[-1], row, protos)
        lists: list[tuple[str, np.ndarray]] = []
        for channel, index in indexes:  # one read per channel: vector and search use one version
            if index is None:
                self.stats[f"channel_missing_{channel.name}"] += 1
                continue
            vector = vectors.get(channel.name) if channel.tower else index.mean_vector(history)
            if isinstance(vector, Future):
                vector = vector.result()
            if vector is None:
                continue
            if vector.shape[-1] != index.dim:
                raise ModelIncompatible(f"channel {channel.name!r}: the user vector has width "
                                        f"{vector.shape[-1]}, its index dim {index.dim}")
            rows = index.search_rows(vector, depth)
            lists.append((channel.name, index.catalogue_rows(self.catalogue.row)[rows]))
        if not history or not lists:  # cold start, or no recall model yet
            self.stats["cold_start"] += 1
            limit = self.settings.popular_fallback
            if self._city is not None:
                city = row.get(self._city[0]) or profile.get(self._city[0])
                if city:
                    lists.append((POPULAR_CITY, self.catalogue.popular_rows(
                        self._city[1], city, limit, seen_rows)))
            lists.append((POPULAR, self.catalogue.popular_rows(None, None, limit, seen_rows)))
        return lists, seen_rows

    def candidates(self, user_id: str, row: Mapping[str, Any], history: Sequence[str],
                   profile: Mapping[str, Any]) -> dict[str, list[str]]:
        """Merged candidates: item id -> channels, in merge order, seen items removed."""
        merged = self._recall(row, history, profile)
        return {self.catalogue.ids[r]: list(channels)
                for r, channels in zip(merged.rows.tolist(), merged.channels_of(merged.rows))}

    # ---- public API ---------------------------------------------------------
    def recommend(self, user_id: str, context: Mapping[str, Any] | None = None,
                  k: int = 10) -> list[Recommendation]:
        """Top-k items for a user: [(item_id, score, channels)], best first.

        Args:
          user_id: raw user id (unknown users are served as cold-start).
          context: request context: events-sourced context features (network,
            os, ...), optional `timestamp` (unix s, default now) and, for a
            user the store does not know, profile features (city, age, ...).
          k: items to return (1..settings.rules.max_k).
        Raises:
          BadRequest: a bad k, user id or context value (request_checks).
          StoreUnavailable: the user store cannot be read.
          ModelIncompatible: a served model the recommender cannot use.
          grpc.RpcError: the model server failed the call.
        """
        rules = self.settings.rules
        k = check_k(k, rules)
        user_id = check_id(user_id, "user_id", rules)
        context = dict(check_context(context, self._context_specs, self.config, rules))
        timestamp = context.get(fc.TIMESTAMP_KEY)
        ts = check_timestamp(timestamp, self.config) if timestamp is not None else self.clock()
        profile, clicks = self.store.user_state(user_id)
        profile = profile or {}
        history = clicks[-self._history_len:]
        row = self.user_features(user_id, profile, history, context, ts)
        protos = RowProtos(self._specs, row)
        merged = self._recall(row, history, profile, protos)
        self.stats["requests"] += 1
        if not len(merged.rows):
            return []
        rows = merged.rows
        model = self.settings.ranking_model
        outputs = None
        if not self._calls_ranker:
            # Scores the blend weighs at 0 cannot change the list: skip the
            # ranker's Predict (about half of a request's CPU with one served).
            self.stats["ranking_skipped"] += 1
        else:
            try:
                outputs = self._predict(
                    model, self.settings.ranking_signature,
                    lambda wanted: self._item_inputs_rows(rows, row, wanted, ts, protos))
            except grpc.RpcError as err:
                # No ranker served (none pushed yet, e.g. a first run whose gate
                # refused the candidate): the recall result is still worth
                # serving. Readiness reports the missing model.
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                self.stats["ranking_missing"] += 1
        click = None
        if outputs is not None:
            click = np.asarray(self._output(outputs, "click", model), np.float64).reshape(-1)
            if click.shape[0] != len(rows):
                raise ModelIncompatible(f"model {model!r} returned {click.shape[0]} scores for "
                                        f"{len(rows)} candidates")
        if self.settings.blend is not None:
            scores = self.settings.blend.score(self.blend_features(merged, click, outputs or {}))
        elif click is None:
            scores = 1.0 / (1.0 + np.arange(len(rows)))  # merge order
        elif self.settings.follow_weight and "follow" in outputs:
            scores = click + self.settings.follow_weight * np.asarray(outputs["follow"]).reshape(-1)
        else:
            scores = click
        order = np.argsort(-scores, kind="stable")[:k]
        top = rows[order]
        return [Recommendation(self.catalogue.ids[r], float(scores[i]), channels)
                for r, i, channels in zip(top.tolist(), order.tolist(), merged.channels_of(top))]

    def blend_features(self, merged: MergedRows, click: np.ndarray | None,
                       outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The blend's features of the merged candidates (serving.blend.candidate_features).

        click is None when no ranker is served: the blend then scores without
        the ranker's features."""
        follow = outputs.get("follow")
        return candidate_features(
            merged.pair_rows, merged.pair_channels, merged.pair_ranks, merged.names, merged.rows,
            click, np.asarray(self.catalogue.clicks)[merged.rows],
            None if follow is None else np.asarray(follow, np.float64).reshape(-1))

    def ingest(self, event: Mapping[str, Any]) -> bool:
        """Applies one real-time event; returns whether it changed the history.

        Everything is checked before anything is written, so no event can
        store a value that breaks the user's later requests.

        Args:
          event: {"user_id", "item_id" (in the catalogue), "event":
            click|follow|impression (default click), optional "profile":
            {user feature: value}, checked against the feature config}.
        Raises:
          BadRequest: a missing or bad id, an item not in the catalogue (also
            counted in stats["ingest_unknown_item"]), an unknown event type,
            or a profile value that is not of its feature's type.
          StoreUnavailable: the store cannot be written.
        """
        if not isinstance(event, Mapping):
            raise BadRequest(f"event must be an object, got {str(event)[:40]}")
        rules = self.settings.rules
        if not event.get("user_id") or not event.get("item_id"):
            raise BadRequest(f"event needs user_id and item_id: {str(dict(event))[:200]}")
        user_id = check_id(event.get("user_id"), "user_id", rules)
        item_id = check_id(event.get("item_id"), "item_id", rules)
        kind = event.get("event") or fc.CLICK
        if kind not in fc.EVENT_TYPES:
            raise BadRequest(f"event {str(kind)[:40]!r} not in {fc.EVENT_TYPES}")
        if item_id not in self.catalogue.row:
            self.stats["ingest_unknown_item"] += 1
            raise BadRequest(f"item {item_id[:60]!r} is not in the catalogue")
        profile = event.get("profile")
        if profile is not None:
            check_profile(profile, self._profile_specs, rules)
            merged = {**(self.store.get_profile(user_id) or {}), **profile}
            self.store.put_profile(user_id, merged)
        if kind == fc.IMPRESSION:
            self.stats["ingest_impressions"] += 1
            return False
        # A follow implies the click that led to it; both enter the history once.
        self.store.add_click(user_id, item_id)
        self.stats["ingest_clicks"] += 1
        return True

    # ---- readiness ------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, str]]:
        """Whether a request can be served as intended now, check by check.

        Checks: the store answers and holds its seeded state (a store that
        lost it, e.g. a Redis restarted without persistence, would silently
        serve seeded users as cold-start users); the ranking model and every
        channel's tower have a loaded version; every channel's index is loaded.
        A blend that weighs no ranker output never calls the ranking model,
        so it is not checked then (`make serve` after a gate that refused the
        candidate is ready without one).

        Returns:
          (ready, check name -> "ok" or what is wrong).
        """
        checks: dict[str, str] = {}
        try:
            self.store.ping()
            checks["store"] = "ok" if self.store.seed_info() is not None else (
                "the store has lost its seeded state (restarted without persistence?): "
                "re-seed it with `python -m serving.serve --reseed_only ...` (README, Serving)")
        except StoreUnavailable as err:
            checks["store"] = str(err)
        towers = [c.tower for c in self.settings.channels if c.tower]
        ranker = [self.settings.ranking_model] if self._calls_ranker else []
        models = [*ranker, *towers]
        for model in models:
            try:
                loaded = self.client.available_versions(model)
                checks[f"model:{model}"] = "ok" if loaded else "no loaded version"
            except grpc.RpcError as err:
                checks[f"model:{model}"] = f"model server: {err.code().name}: {err.details()}"
        for channel in self.settings.channels:
            checks[f"index:{channel.name}"] = "ok" if self.indexes.get(channel.name) else "missing"
        return all(v == "ok" for v in checks.values()), checks
