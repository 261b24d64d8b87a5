"""The two offline recall protocols, on in-memory retrieval examples.

* Time split: every retrieval eval example is a query (user, context and
  the clicks before it -> the clicked item); a user new in the eval period
  starts with an empty history. Optionally (per_user=True) one query per user,
  the first eval example, with every item the user clicked in the eval period
  as targets (HR then saturates with active users, Recall does not).
* Leave-last-out on clicks: each user's latest retrieval example is the query
  (target = the last click, history = the earlier clicks); every other example
  trains. Users with fewer than 3 clicks are not targets (their examples all
  train).

In both, items already in the query's history are excluded from the top-K,
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


def leave_last_out(arrays: Mapping[str, np.ndarray], config: fc.FeatureConfig,
                   min_clicks: int = 3) -> tuple[data.Arrays, Queries]:
    """Splits all retrieval examples into (train examples, last-click queries)."""
    order, users = _order_by_user_time(arrays)
    ends = np.flatnonzero(np.r_[users[1:] != users[:-1], True]) if len(order) else np.zeros(0, int)
    starts = np.r_[0, ends[:-1] + 1] if len(order) else np.zeros(0, int)
    counts = ends - starts + 1
    last = order[ends[counts >= min_clicks]]
    train_mask = np.ones(len(order), bool)
    train_mask[last] = False
    item_name = config.item_id_feature.name
    targets = [[_text(arrays[item_name][r])] for r in last]
    return data.take(arrays, np.flatnonzero(train_mask)), _queries(arrays, last, targets, config)


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
