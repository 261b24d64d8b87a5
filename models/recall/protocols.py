"""The offline recall protocols, on in-memory retrieval examples.

* Time split, per click: every retrieval eval example is a query (user,
  context and the clicks before it -> the clicked item); a user new in the
  eval period starts with an empty history.
* Time split, per user (per_user=True): one query per user, the first eval
  example, with every item the user clicked in the eval period as targets
  (HR then saturates with active users, Recall does not).
* Leave-last-out at a cut-off (leave_last_out_at_cutoff, what the recall
  bench trains on): a global cut-off time T is the timestamp of the click at
  position floor((1 - holdout_fraction) * N) of all N clicks sorted by time.
  Queries: the last click of every user with >= min_clicks clicks whose last
  click is at or after T. Training: every click (of any user) strictly before
  T, so no training click is at or after any held-out click. A query user's
  clicks in [T, held-out) neither train nor are targets; they are only the
  query's history, which holds clicks strictly before the held-out one, as
  it would at serving time. A query user without a click before T is new.
* leave_last_out (no cut-off): every click but the held-out ones trains,
  including clicks after them; only for scoring a model trained elsewhere
  (models.recall.evaluate), never to train one.

In all, items already in the query's history are excluded from the top-K,
and targets inside the history are dropped (they can never be returned).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from feature_contract import feature_config as fc
from models.recall import data, metrics

KS: tuple[int, ...] = (50, 500)


@dataclasses.dataclass
class Queries:
    """Evaluation queries.

    Attributes:
      features: one example row per query (user + context + history).
      targets: per query, target item ids.
      history: per query, item ids to exclude.
      is_new: [Q] bool, the user had no event before the split.
    """

    features: data.Arrays
    targets: list[list[str]]
    history: list[list[str]]
    is_new: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _order_by_user_time(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    users = np.array([_text(u) for u in arrays[fc.USER_KEY]], dtype=object)
    order = np.lexsort((np.arange(len(users)), arrays[fc.TIMESTAMP_KEY], users))
    return order, users[order]


def _queries(arrays: Mapping[str, np.ndarray], rows: np.ndarray, targets: list[list[str]],
             config: fc.FeatureConfig) -> Queries:
    features = data.take(arrays, rows)
    hist_name = config.history_feature.name if config.history_feature else None
    history = data.history_lists(features[hist_name]) if hist_name else [[] for _ in rows]
    kept_targets = [[t for t in dict.fromkeys(ts) if t not in set(h)]
                    for ts, h in zip(targets, history)]
    return Queries(features, kept_targets, history,
                   features.get(fc.NEW_USER_KEY, np.zeros(len(rows))).astype(bool))


def time_split(eval_arrays: Mapping[str, np.ndarray], config: fc.FeatureConfig,
               per_user: bool = False) -> Queries:
    """Queries of the time-split protocol (see the module docstring).

    Raises:
      ValueError: no eval example.
    """
    order, users = _order_by_user_time(eval_arrays)
    if len(order) == 0:
        raise ValueError("no eval retrieval examples")
    item_name = config.item_id_feature.name
    items = [_text(x) for x in eval_arrays[item_name][order]]
    if not per_user:
        return _queries(eval_arrays, order, [[x] for x in items], config)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    bounds = np.r_[starts, len(order)]
    targets = [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return _queries(eval_arrays, order[starts], targets, config)


def _last_click_rows(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(row of each user's last click, that user's click count), users in id order.

    The last click is the latest timestamp; among equal timestamps the later
    input row.
    """
    order, users = _order_by_user_time(arrays)
    if not len(order):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ends = np.flatnonzero(np.r_[users[1:] != users[:-1], True])
    counts = np.diff(np.r_[-1, ends])
    return order[ends], counts


def leave_last_out(arrays: Mapping[str, np.ndarray], config: fc.FeatureConfig,
                   min_clicks: int = 3) -> tuple[data.Arrays, Queries]:
    """Splits all retrieval examples into (every other example, last-click queries).

    The first part holds clicks after the held-out ones: a model trained on
    it sees the future (use leave_last_out_at_cutoff to train).
    """
    last, counts = _last_click_rows(arrays)
    last = last[counts >= min_clicks]
    train_mask = np.ones(data.num_rows(arrays), bool)
    train_mask[last] = False
    item_name = config.item_id_feature.name
    targets = [[_text(arrays[item_name][r])] for r in last]
    return data.take(arrays, np.flatnonzero(train_mask)), _queries(arrays, last, targets, config)


@dataclasses.dataclass
class CutoffSplit:
    """Leave-last-out at a global cut-off (leave_last_out_at_cutoff).

    Attributes:
      train: the training examples, every click strictly before `cutoff`.
      queries: one per query user, the last click; is_new = no training click.
      cutoff: the cut-off time T (timestamp units of the examples).
    """

    train: data.Arrays
    queries: Queries
    cutoff: int


def cutoff_time(timestamps: np.ndarray, holdout_fraction: float) -> int:
    """T: the timestamp at position floor((1 - holdout_fraction) * N) of the sorted times.

    At least holdout_fraction of the clicks are at or after T, and every
    click strictly before T trains.

    Raises:
      ValueError: no timestamp, or holdout_fraction outside (0, 1).
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if len(timestamps) == 0:
        raise ValueError("no retrieval examples to cut")
    ordered = np.sort(np.asarray(timestamps, np.int64))
    return int(ordered[int(np.floor((1.0 - holdout_fraction) * len(ordered)))])


def leave_last_out_at_cutoff(arrays: Mapping[str, np.ndarray], config: fc.FeatureConfig,
                             holdout_fraction: float = 0.2, min_clicks: int = 3
                             ) -> CutoffSplit:
    """Leak-free leave-last-out (the rule is in the module docstring).

    Args:
      arrays: every retrieval example (train + eval splits).
      config: the dataset's feature config.
      holdout_fraction: share of the clicks at or after the cut-off.
      min_clicks: a user needs this many clicks (all periods) to be a query.
    Returns:
      CutoffSplit(train, queries, cutoff); the queries' is_new (and their
      is_new_user feature) say whether the user has no click before T.
    Raises:
      ValueError: as cutoff_time.
    """
    ts = np.asarray(arrays[fc.TIMESTAMP_KEY], np.int64)
    cutoff = cutoff_time(ts, holdout_fraction)
    last, counts = _last_click_rows(arrays)
    last = last[(counts >= min_clicks) & (ts[last] >= cutoff)]
    train = data.take(arrays, np.flatnonzero(ts < cutoff))
    item_name = config.item_id_feature.name
    queries = _queries(arrays, last, [[_text(arrays[item_name][r])] for r in last], config)
    trained_users = {_text(u) for u in train[fc.USER_KEY]}
    queries.is_new = np.array([_text(u) not in trained_users
                               for u in queries.features[fc.USER_KEY]], bool)
    queries.features[fc.NEW_USER_KEY] = queries.is_new.astype(np.int64)
    return CutoffSplit(train, queries, cutoff)


def unreachable_share(queries: Queries, vocabulary: Sequence[str]) -> float | None:
    """Share of the queries' (query, target) pairs whose item is outside `vocabulary`.

    Such a target has no trained id embedding: a model that knows items by
    id alone can never return it. None when there is no target.
    """
    known = set(vocabulary)
    targets = [t for ts in queries.targets for t in ts]
    return sum(t not in known for t in targets) / len(targets) if targets else None


def history_leaks(arrays: Mapping[str, np.ndarray], queries: Queries) -> int:
    """Queries whose history holds more items than the user clicked strictly before it.

    Sessionize writes a history of clicks strictly before the example, so
    every query's history length is at most the user's earlier clicks in
    `arrays` (all of them, train and eval); a longer one holds the query's
    own click or a later one. 0 is the check passing. A history cut at the
    feature's max_len can hide a leak from this count, so the check is exact
    for users with fewer earlier clicks than max_len.

    Args:
      arrays: every retrieval example the queries were drawn from.
      queries: queries whose features carry user id and timestamp.
    """
    codes: dict[str, int] = {}
    users = np.array([codes.setdefault(_text(u), len(codes)) for u in arrays[fc.USER_KEY]],
                     np.int64)
    ts = np.asarray(arrays[fc.TIMESTAMP_KEY], np.int64)
    if not len(queries) or not len(ts):
        return 0
    base, span = ts.min(), ts.max() - ts.min() + 2
    keys = np.sort(users * span + (ts - base))
    q_users = np.array([codes.get(_text(u), -1) for u in queries.features[fc.USER_KEY]],
                       np.int64)
    q_ts = np.clip(np.asarray(queries.features[fc.TIMESTAMP_KEY], np.int64) - base, 0, span - 1)
    earlier = (np.searchsorted(keys, q_users * span + q_ts, "left")
               - np.searchsorted(keys, q_users * span, "left"))
    lengths = np.array([len(h) for h in queries.history])
    return int(np.sum(lengths > np.where(q_users >= 0, earlier, 0)))


def _rows(ids: Sequence[str], index: Mapping[str, int], unknown_base: int) -> np.ndarray:
    # Unknown targets get rows past the catalogue: they count, and always miss.
    return np.array([index.get(x, unknown_base + i) for i, x in enumerate(ids)], np.int64)


def evaluate_topk(queries: Queries, item_ids: Sequence[str], topk: np.ndarray,
                  ks: Sequence[int] = KS, catalogue_size: int | None = None
                  ) -> dict[str, float]:
    """Metrics of precomputed top-K rows (into item_ids) for the queries.

    catalogue_size: coverage denominator (default len(item_ids)); pass the
    full catalogue when a model only embeds part of it, so coverages compare.
    """
    index = {x: i for i, x in enumerate(item_ids)}
    targets = [_rows(t, index, len(item_ids)) for t in queries.targets]
    return metrics.evaluate(topk, targets, catalogue_size or len(item_ids), ks=ks,
                            is_new=queries.is_new)


def exclusions(queries: Queries, item_ids: Sequence[str]) -> list[np.ndarray]:
    """History item rows of each query (ids outside item_ids dropped)."""
    index = {x: i for i, x in enumerate(item_ids)}
    return [np.array([index[x] for x in h if x in index], np.int64) for h in queries.history]


def evaluate_embeddings(queries: Queries, user_vectors: np.ndarray, item_ids: Sequence[str],
                        item_vectors: np.ndarray, ks: Sequence[int] = KS,
                        catalogue_size: int | None = None) -> dict[str, float]:
    """Exact inner-product retrieval of every query, then evaluate_topk."""
    top = metrics.top_k(user_vectors, item_vectors, max(ks), exclusions(queries, item_ids))
    return evaluate_topk(queries, item_ids, top, ks, catalogue_size)


def evaluate_scores(queries: Queries, score_fn: Callable[[int, int], np.ndarray],
                    item_ids: Sequence[str], ks: Sequence[int] = KS,
                    catalogue_size: int | None = None) -> dict[str, float]:
    """Retrieval by any scorer (score_fn(start, stop) -> [b, N]) then evaluate_topk."""
    top = metrics.top_k_from_scores(score_fn, len(queries), len(item_ids), max(ks),
                                    exclusions(queries, item_ids))
    return evaluate_topk(queries, item_ids, top, ks, catalogue_size)
