"""Offline retrieval metrics (numpy): HitRate, Recall, NDCG, coverage, hit position.

Two protocols feed these (see models.recall.protocols): the time split (a user's
state at the split as query, the items clicked in the eval period as targets)
and leave-last-out on clicks (the last click as target, earlier clicks as
history). Items in the query's history are excluded from the top-K because
recall serves new content, as in 58.com's evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def top_k(user_vectors: np.ndarray, item_vectors: np.ndarray, k: int,
          exclude: Sequence[np.ndarray] | None = None, batch_size: int = 1024) -> np.ndarray:
    """Exact inner-product top-K with per-user exclusions.

    Args:
      user_vectors: [U, d].
      item_vectors: [N, d].
      k: list length.
      exclude: per user, item rows never to return (e.g. history), or None.
      batch_size: users scored per matmul.
    Returns:
      int64 [U, k] item rows, best first; -1 where fewer than k items remain.
    """
    user_vectors = np.asarray(user_vectors, np.float32)
    item_vectors = np.asarray(item_vectors, np.float32)
    return top_k_from_scores(lambda a, b: user_vectors[a:b] @ item_vectors.T,
                             len(user_vectors), len(item_vectors), k, exclude, batch_size)


def top_k_from_scores(score_fn: Callable[[int, int], np.ndarray], num_users: int,
                      num_items: int, k: int, exclude: Sequence[np.ndarray] | None = None,
                      batch_size: int = 1024) -> np.ndarray:
    """Top-K of any scorer: score_fn(start, stop) -> scores [stop - start, N].

    Same output as top_k; used by baselines that are not inner products.
    Equal scores rank by item row, lowest first, at the top-K boundary too:
    np.argpartition picks among ties by a CPU-dependent code path (numpy's
    AVX-512 selection orders them differently), so a peer with many equal
    scores (popularity's click counts) would score differently per machine.
    """
    out = np.full((num_users, k), -1, np.int64)
    kk = min(k, num_items)
    if kk == 0:
        return out
    for start in range(0, num_users, batch_size):
        stop = min(start + batch_size, num_users)
        scores = np.array(score_fn(start, stop), dtype=np.float32, copy=True)
        if exclude is not None:
            chunk = [np.asarray(e, np.int64) for e in exclude[start:stop]]
            r = np.concatenate([np.full(len(e), i, np.int64) for i, e in enumerate(chunk)] +
                               [np.zeros(0, np.int64)])
            c = np.concatenate(chunk + [np.zeros(0, np.int64)])
            valid = (c >= 0) & (c < num_items)
            scores[r[valid], c[valid]] = -np.inf
        # NaN would break the >= / == tie rule (np.partition sorts it above
        # every number, then no comparison holds): rank it as an excluded item,
        # as np.argpartition(-scores) effectively did (returned as -1).
        np.copyto(scores, -np.inf, where=np.isnan(scores))
        part = _top_rows_lowest_on_ties(scores, kk)
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        best = np.take_along_axis(part, order, axis=1)
        best[~np.isfinite(np.take_along_axis(part_scores, order, axis=1))] = -1
        out[start:stop, :kk] = best
    return out


def _top_rows_lowest_on_ties(scores: np.ndarray, kk: int) -> np.ndarray:
    """[b, kk] rows of each row's kk largest scores, ascending row order; of the
    items tied at the kk-th score, the lowest rows (a machine-independent set).

    Memory: one partitioned copy of `scores` while the kk-th scores are read
    (freed at once) and one bool mask; rows with more ties at the boundary
    than places left drop their surplus one row at a time (O(N) each).
    """
    n = scores.shape[1]
    kth = np.partition(scores, n - kk, axis=1)[:, n - kk].copy()  # kk-th largest; frees the copy
    take = scores >= kth[:, None]
    for r in np.flatnonzero(take.sum(axis=1) > kk):
        row, at = scores[r], kth[r]
        tied = np.flatnonzero(row == at)
        need = kk - np.count_nonzero(row > at)  # >= 1, <= len(tied)
        take[r, tied[need:]] = False
    return np.nonzero(take)[1].reshape(len(scores), kk)


def hit_matrix(topk: np.ndarray, targets: Sequence[np.ndarray]) -> np.ndarray:
    """[U, K] bool: whether topk[u, j] is one of user u's targets (vectorized)."""
    num_users, _ = topk.shape
    width = int(max(topk.max(initial=0), max((t.max(initial=0) for t in targets), default=0))) + 2
    user_of = np.concatenate([np.full(len(t), u, np.int64) for u, t in enumerate(targets)]) \
        if num_users else np.zeros(0, np.int64)
    target_keys = user_of * width + (np.concatenate(targets).astype(np.int64) + 1 if num_users
                                     else np.zeros(0, np.int64))
    keys = np.arange(num_users, dtype=np.int64)[:, None] * width + (topk + 1)
    return np.isin(keys, target_keys) & (topk >= 0)


def catalogue_coverage(topk: np.ndarray, catalogue_size: int, k: int | None = None) -> float:
    """Share of the catalogue that appears in at least one query's top-K.

    A channel that can only return a part of the catalogue (Item2vec without
    vectors for items outside its sessions) shows it here however good its
    hit rate is.

    Args:
      topk: int [U, K] item rows best first (-1 = empty slot), rows into a
        catalogue of `catalogue_size` items.
      catalogue_size: the denominator: every item a channel should reach.
      k: count only the first k columns (None: all K).
    Returns:
      distinct item rows >= 0 in topk[:, :k] / catalogue_size (0.0 for an
      empty catalogue).
    """
    if catalogue_size <= 0:
        return 0.0
    recommended = np.asarray(topk)[:, :k]
    return float(len(np.unique(recommended[recommended >= 0])) / catalogue_size)


def evaluate(topk: np.ndarray, targets: Sequence[np.ndarray], num_items: int,
             ks: Sequence[int] = (50, 500), is_new: np.ndarray | None = None,
             slice_k: int = 50) -> dict[str, float]:
    """Retrieval metrics of top-K lists against target sets.

    Args:
      topk: int [U, K] item rows best first (-1 = empty slot), K >= max(ks).
      targets: per user, the distinct target item rows (users with none are
        skipped and counted in `skipped_users`).
      num_items: catalogue size (coverage denominator).
      ks: cutoffs.
      is_new: optional bool [U]; adds new_user_* and returning_user_* HR@slice_k.
      slice_k: cutoff of the per-slice hit rates.
    Returns:
      hr@k (any target in the top k), recall@k (share of targets found),
      ndcg@k (binary relevance, ideal = min(|T|, k) hits on top),
      coverage@k (distinct recommended items / catalogue), avg_position (mean
      1-based rank of the first hit within max(ks), over users with a hit),
      num_users, skipped_users (+ slices).
    Raises:
      ValueError: topk narrower than max(ks) or lengths disagree.
    """
    if topk.shape[1] < max(ks):
        raise ValueError(f"topk has {topk.shape[1]} columns, need {max(ks)}")
    if len(targets) != len(topk):
        raise ValueError(f"{len(targets)} target sets for {len(topk)} top-K lists")
    targets = [np.unique(np.asarray(t, np.int64)) for t in targets]
    keep = np.array([len(t) > 0 for t in targets], bool)
    topk = topk[keep]
    targets = [t for t, k in zip(targets, keep) if k]
    out: dict[str, float] = {"num_users": int(keep.sum()), "skipped_users": int((~keep).sum())}
    if not targets:
        return out
    hits = hit_matrix(topk[:, :max(ks)], targets)
    sizes = np.array([len(t) for t in targets], np.float64)
    discounts = 1.0 / np.log2(np.arange(max(ks)) + 2.0)
    cum_discounts = np.concatenate([[0.0], np.cumsum(discounts)])
    for k in ks:
        h = hits[:, :k]
        found = h.sum(axis=1)
        out[f"hr@{k}"] = float(np.mean(found > 0))
        out[f"recall@{k}"] = float(np.mean(found / sizes))
        ideal = cum_discounts[np.minimum(sizes, k).astype(np.int64)]
        out[f"ndcg@{k}"] = float(np.mean((h * discounts[:k]).sum(axis=1) / ideal))
        out[f"coverage@{k}"] = catalogue_coverage(topk, num_items, k)
    any_hit = hits.any(axis=1)
    first = np.argmax(hits, axis=1) + 1
    out["avg_position"] = float(first[any_hit].mean()) if any_hit.any() else float("nan")
    if is_new is not None:
        is_new = np.asarray(is_new, bool)[keep]
        h = hits[:, :slice_k].any(axis=1)
        out["num_new_users"] = int(is_new.sum())
        out[f"new_user_hr@{slice_k}"] = float(h[is_new].mean()) if is_new.any() else float("nan")
        out[f"returning_user_hr@{slice_k}"] = (float(h[~is_new].mean()) if (~is_new).any()
                                               else float("nan"))
    return out
