"""Replaying logged requests through the served Recommender, and fitting its final-list blend.

Offline replay serves recorded requests exactly as `make serve` does: the
embedded model server over a serving layout (`<serving_dir>/models`, named by
serving_configs/models.config), the FAISS indexes of `<serving_dir>/indexes`,
the raw items / users tables, and `Recommender.recommend` per request with
the user's history as of the request written to an in-memory store first.
`ReplayRecommender` keeps each request's channel lists and blend features so
every stage can be scored on the very same request.

Two users: bench.funnel_bench (the offline funnel figures) and the
pipeline's BlendFitter component; both fit the final-list blend
(serving.blend) with `fit_validation_blend` on requests from the validation
period only.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from feature_contract import feature_config as fc
from models import validation
from models.recall import data, protocols, training as recall_training
from models.recall.evaluate import take_queries
from serving import config_files, model_server
from serving.blend import CLICK_LOGIT, Blend, Group, channel_order, fit_blend
from serving.catalogue import ItemCatalogue, Table, read_item_frequencies, read_user_profiles
from serving.client import ModelServerClient
from serving.indexes import IndexSet
from serving.recommender import Recommender, RecommenderSettings, RowProtos, merge_rows
from serving.servables import ModelManager
from serving.store import InMemoryStore

MODELS_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "serving_configs", "models.config")
FINAL_K = 50  # the final list's length: HR@50 needs 50
TOP = 10  # the blend's validation figures are HR@10
# Validation requests the blend is fitted on: a few thousand listwise groups
# pin ~10 weights; more only lengthens the replay.
BLEND_REQUESTS = 3000
# Folds of the blend's cross-validation on the validation requests: the
# blend is served only when its held-out HR@10 beats every channel's.
BLEND_FOLDS = 5
# The served names of the ranking models (serving_configs/models.config).
RANKING_SERVED_NAMES = ("ranking", "ranking_multitask")
RANKER_ONLY = Blend(((CLICK_LOGIT, 1.0),))  # the ranker's order, with the features recorded


class ReplayRecommender(Recommender):
    """The serving Recommender, unchanged, keeping each request's channel lists.

    `last_lists` is (lists, seen rows) of the latest request:
    [(channel name, catalogue rows best first)] as `_recall` merges them;
    `last_features` the blend features of its merged candidates (set when
    the settings carry a blend). Not for concurrent requests (one replay thread).
    """

    last_lists: tuple[list[tuple[str, np.ndarray]], np.ndarray] | None = None
    last_features: dict[str, np.ndarray] | None = None

    def _channel_lists(self, row: Mapping[str, Any], history: Sequence[str],
                       profile: Mapping[str, Any], protos: RowProtos | None = None
                       ) -> tuple[list[tuple[str, np.ndarray]], np.ndarray]:
        self.last_lists = super()._channel_lists(row, history, profile, protos)
        return self.last_lists

    def blend_features(self, merged: Any, click: np.ndarray,
                       outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.last_features = super().blend_features(merged, click, outputs)
        return self.last_features


def serving_client(serving_dir: str, leave_out: Sequence[str] = ()
                   ) -> tuple[ModelServerClient, ModelManager]:
    """An in-process client of the embedded model server over serving_dir/models.

    serving_configs/models.config names the models, as for `make serve`; the
    models this bench does not train (ranking_multitask) have no version and
    are simply not loaded. Models named in `leave_out` are not served even
    when pushed: asked for, they are NOT_FOUND, as a model never pushed.
    """
    entries = [e for e in config_files.read_model_config(
        MODELS_CONFIG, os.path.join(serving_dir, "models")) if e.name not in set(leave_out)]
    manager = ModelManager(entries)
    manager.poll_once()
    core = model_server.ModelServerCore(manager)
    return ModelServerClient.from_stub(model_server.InProcessStub(core)), manager


def build_recommender(config: fc.FeatureConfig, serving_dir: str, items_table: Table,
                      users_table: Table | None, frequencies_tsv: str | None,
                      settings: RecommenderSettings = RecommenderSettings(),
                      leave_out: Sequence[str] = ()) -> ReplayRecommender:
    """The Recommender `make serve` builds, over serving_dir and the raw tables
    (`leave_out`: pushed models it must not call, see serving_client)."""
    client, _ = serving_client(serving_dir, leave_out)
    catalogue = ItemCatalogue.from_table(
        items_table, config, read_item_frequencies(frequencies_tsv) if frequencies_tsv else None)
    history = config.history_feature
    store = InMemoryStore(max_clicks=history.max_len if history else config.history_max_len)
    if users_table:
        store.put_profiles(read_user_profiles(users_table, config))
    indexes = IndexSet(os.path.join(serving_dir, "indexes"), [c.name for c in settings.channels])
    return ReplayRecommender(config, client, store, indexes, catalogue, settings)


@dataclasses.dataclass(frozen=True)
class Request:
    """One replayed /recommend: who, with what history, in which context."""

    user_id: str
    history: tuple[str, ...]
    context: dict[str, Any]


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def requests_of(queries: protocols.Queries, config: fc.FeatureConfig) -> list[Request]:
    """The requests of time-split queries: user, history as of the request, context.

    The context holds the events-sourced context features the example
    recorded and its timestamp; profile features come from the store (the
    users table), derived ones (hour, weekday) from the timestamp, as online.
    """
    context_specs = [f for f in config.features if f.field == fc.CONTEXT
                     and f.source == fc.SOURCE_EVENTS]
    feats = queries.features
    out = []
    for q in range(len(queries)):
        context: dict[str, Any] = {spec.name: _text(feats[spec.name][q])
                                   for spec in context_specs if spec.name in feats}
        context[fc.TIMESTAMP_KEY] = int(feats[fc.TIMESTAMP_KEY][q])
        out.append(Request(_text(feats[fc.USER_KEY][q]), tuple(queries.history[q]), context))
    return out


@dataclasses.dataclass
class Replayed:
    """What one request produced, as catalogue rows (best first).

    Attributes:
      final: the recommended rows [<= k].
      final_channels: the channels of each final row.
      channels: channel name -> its own list, seen items removed, [<= depth].
      merged: the merged candidates in merge order (what ranking scored).
      features: the blend features of `merged` (None without a blend).
    """

    final: np.ndarray
    final_channels: list[tuple[str, ...]]
    channels: dict[str, np.ndarray]
    merged: np.ndarray
    features: dict[str, np.ndarray] | None = None

    def ranked_by(self, blend: Blend, k: int = FINAL_K) -> np.ndarray:
        """The top-k merged rows by another blend of the same features (stable, as recommend)."""
        if self.features is None or not len(self.merged):
            return self.merged[:0]
        return self.merged[np.argsort(-blend.score(self.features), kind="stable")[:k]]


def replay(recommender: ReplayRecommender, request: Request, k: int = FINAL_K,
           depth: int = FINAL_K) -> Replayed:
    """Serves one request through Recommender.recommend and keeps every stage.

    The user's history as of the request is written to the store first (what
    the click stream would have put there); recommend then reads it as it does
    online.

    Args:
      recommender: the served recommender.
      request: the request.
      k: final list length.
      depth: rows kept of each channel's own list.
    """
    recommender.store.set_clicks(request.user_id, list(request.history))
    recommender.last_lists = recommender.last_features = None
    recs = recommender.recommend(request.user_id, request.context, k)
    final = recommender.catalogue.rows([r.item_id for r in recs])
    lists, seen_rows = recommender.last_lists or ([], np.zeros(0, np.int64))
    merged = merge_rows(lists, seen_rows, recommender.settings.num_candidates).rows
    own = {}
    for name, rows in lists:
        keep = rows[(rows >= 0) & ~np.isin(rows, seen_rows)]
        own[name] = keep[:depth]
    return Replayed(final, [r.channels for r in recs], own, merged, recommender.last_features)


def target_rows(queries: protocols.Queries, item_ids: Sequence[str]) -> list[np.ndarray]:
    """Each query's target rows; targets outside the catalogue get rows past it (always missed)."""
    index = {x: i for i, x in enumerate(item_ids)}
    return [np.array([index.get(t, len(item_ids) + j) for j, t in enumerate(ts)], np.int64)
            for ts in queries.targets]


def subsample(queries: protocols.Queries, limit: int | None, seed: int) -> protocols.Queries:
    """Queries with a target, at most `limit` of them (a seeded sample, in order)."""
    rows = np.flatnonzero([len(t) > 0 for t in queries.targets])
    if limit and len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    return take_queries(queries, rows)


def write_click_counts(arrays: data.Arrays, config: fc.FeatureConfig, path: str) -> str:
    """item_frequencies.tsv's layout (item_id, impressions, clicks) counted from retrieval examples.

    Retrieval examples are clicks, one each; impressions are not known here
    and written as 0 (the catalogue reads the clicks column only).
    """
    ids, counts = np.unique([_text(x) for x in arrays[config.item_id_feature.name]],
                            return_counts=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("item_id\timpressions\tclicks\n")
        f.writelines(f"{i}\t0\t{int(c)}\n" for i, c in zip(ids.tolist(), counts.tolist()))
    return path


def hr_at(lists: Sequence[np.ndarray], targets: Sequence[np.ndarray], k: int = TOP) -> float:
    """Share of requests with a target in the first k rows of its list."""
    return float(np.mean([bool(np.isin(rows[:k], t).any()) for rows, t in zip(lists, targets)]))


def cross_validated_lists(replayed: Sequence[Replayed], groups: Sequence[Group],
                          names: Sequence[str], folds: int, seed: int) -> list[np.ndarray]:
    """Each request's final list by a blend fitted on the other folds' requests.

    Requests go to `folds` folds at random (seeded); a fold whose complement
    leaves no usable request keeps the merge order (no fit to rank by).

    Args:
      replayed: the replayed requests, features recorded.
      groups: their blend groups (same order).
      names: the feature names fitted.
    """
    if folds < 2:
        raise ValueError(f"cross-validation needs folds >= 2, got {folds}")
    fold_of = np.random.default_rng(seed).permutation(len(replayed)) % folds
    lists: list[np.ndarray] = [r.merged for r in replayed]
    for fold in range(folds):
        held = np.flatnonzero(fold_of == fold)
        try:
            blend = fit_blend([g for g, f in zip(groups, fold_of) if f != fold], names)
        except ValueError:  # nothing usable outside this fold: merge order
            continue
        for i in held:
            lists[i] = replayed[i].ranked_by(blend)
    return lists


def choose_final_order(blend: Blend, blend_held_out: float, channel_hr: Mapping[str, float],
                       own_hr: Mapping[str, float] | None = None) -> tuple[Blend, str]:
    """The fitted blend when its held-out HR@10 beats every channel order's,
    else the best channel's order (serving.blend.channel_order; tied channel
    orders: the channel whose own list scores higher in own_hr, then the
    first name in sorted order).

    channel_hr: HR@10 of each channel's order as it would be served (the
    merged candidates ranked by channel_order: the channel's own list, then,
    where it has fewer than 10 rows, the other candidates in merge order).
    own_hr: HR@10 of each channel's own list alone. It breaks ties because a
    channel that returns rows for few requests (popularity for new users
    only) is served mostly in merge order, and would otherwise be chosen,
    by its name, over a channel that ranks every request as well.

    Why: the blend's weights are fitted to the validation requests, so its
    in-sample HR@10 flatters it; a blend that cannot beat a single channel
    on requests it was not fitted to adds weights and noise, and the funnel
    would serve a list no better than that channel's at best.

    Returns:
      (the blend to serve, "blend" or "channel:<name>").
    """
    if not channel_hr:
        return blend, "blend"
    own = own_hr or {}
    best = max(sorted(channel_hr), key=lambda c: (channel_hr[c], own.get(c, 0.0)))
    if blend_held_out > channel_hr[best]:
        return blend, "blend"
    return channel_order(best, blend.fitted), f"channel:{best}"


def fit_validation_blend(train: data.Arrays, config: fc.FeatureConfig, serving_dir: str,
                         items_table: Table, users_table: Table | None, work: str,
                         requests: int = BLEND_REQUESTS, seed: int = 0, log=print,
                         folds: int = BLEND_FOLDS, use_ranker: bool = True
                         ) -> tuple[Blend, dict[str, Any]]:
    """Fits the final-list blend on requests replayed from the validation period.

    The validation period is the recall trainers' own carve (the latest
    models.validation.DEFAULT_VALIDATION_FRACTION of Split-train's time span):
    the served models did not train on it, and the eval split is not read.
    Its requests are served exactly as eval ones, with the ranker's order
    (RANKER_ONLY) and every candidate's blend features recorded; the item
    popularity the features see is counted from the clicks before the
    validation period, so no validation click inflates its own item's count.
    The blend is then cross-validated over `folds` folds of those requests
    and served only when its held-out HR@10 beats each channel's order as
    served (serving.blend.channel_order); otherwise the best channel's order
    is (choose_final_order). With use_ranker False the ranking models are not
    called even when pushed (a recall-only run: a ranker left in serving_dir
    by an earlier run was trained on other data): the blend is fitted without
    their features, as when none is served.

    Returns:
      (the blend to serve, its record: the chosen order, the fitted weights,
      likelihoods, validation HR@10 of the ranker's order, the blend's (in
      sample and held out) and each channel's).
    """
    carve = recall_training.carve_validation(train, validation.DEFAULT_VALIDATION_FRACTION,
                                             "funnel blend")
    queries = subsample(protocols.time_split(carve.validation, config), requests, seed)
    counts = write_click_counts(carve.fit, config, os.path.join(work, "fit_item_frequencies.tsv"))
    leave_out = () if use_ranker else RANKING_SERVED_NAMES
    recommender = build_recommender(config, serving_dir, items_table, users_table, counts,
                                    RecommenderSettings(blend=RANKER_ONLY), leave_out)
    t0 = time.time()
    replayed = [replay(recommender, request) for request in requests_of(queries, config)]
    targets = target_rows(queries, recommender.catalogue.ids)
    kept = [i for i, r in enumerate(replayed) if r.features is not None]
    groups = [Group(replayed[i].features, np.isin(replayed[i].merged, targets[i])) for i in kept]
    names = sorted({name for g in groups for name in g.features})
    fitted = fit_blend(groups, names, provenance={
        "validation_cutoff": carve.cutoff, "popularity": "clicks before the validation cutoff"})
    channels = sorted({name for r in replayed for name in r.channels})
    channel_hr = {c: hr_at([r.channels.get(c, np.zeros(0, np.int64)) for r in replayed], targets)
                  for c in channels}
    # What serving a channel's order would give: its own list first, then
    # (for a request it returns few or no rows for) the rest in merge order.
    served_hr = {c: hr_at([r.ranked_by(channel_order(c)) for r in replayed], targets)
                 for c in channels}
    # Scored on every replayed request, as the channels are (one without
    # recorded features has an empty list, as ranked_by gives it).
    held_lists = [r.merged[:0] for r in replayed]
    for i, rows in zip(kept, cross_validated_lists([replayed[i] for i in kept], groups, names,
                                                   folds, seed)):
        held_lists[i] = rows
    held_out = hr_at(held_lists, targets)
    blend, chosen = choose_final_order(fitted, held_out, served_hr, channel_hr)
    blend = Blend(blend.weights, {**blend.fitted, "chosen": chosen})
    in_sample = hr_at([r.ranked_by(fitted) for r in replayed], targets)
    record = {
        "weights": dict(blend.weights), "chosen": chosen, "fitted_weights": dict(fitted.weights),
        **fitted.fitted, "folds": folds,
        # Requests the ranker scored: 0 when none is served or use_ranker is False.
        "ranker_scored_requests": sum(r.features is not None and CLICK_LOGIT in r.features
                                      for r in replayed),
        "use_ranker": bool(use_ranker),
        "replay_seconds": time.time() - t0,
        f"validation_hr@{TOP}": {
            "ranker_only": hr_at([r.final for r in replayed], targets),
            "blend_in_sample": in_sample,
            "blend_held_out": held_out,
            # The served order's figure: the blend's in sample, or the channel order's.
            "chosen": in_sample if chosen == "blend" else served_hr[chosen.split(":", 1)[1]],
            "merge_order": hr_at([r.merged for r in replayed], targets),
            **{f"channel:{c}": v for c, v in channel_hr.items()},
            **{f"channel_order:{c}": v for c, v in served_hr.items()}}}
    log(f"blend fitted on {len(groups)} validation requests, serving {chosen}: validation "
        f"HR@{TOP} {record[f'validation_hr@{TOP}']}")
    return blend, record
