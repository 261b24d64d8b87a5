"""Ranking evaluation metrics in numpy: AUC, log loss, gAUC, calibration.

gAUC (group AUC, as used for feed ranking at Alibaba / Meitu) averages the
per-user AUC weighted by the user's impressions; users whose examples are
all of one class have no AUC and are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def auc(labels: Sequence[float] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve; ties count one half (Mann-Whitney U).

    Returns:
      AUC in [0, 1], or nan when only one class is present.
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1) > 0.5
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # Average 1-based ranks over runs of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels, probs, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), eps, 1.0 - eps)
    if y.size == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def gauc(labels, scores, groups) -> float:
    """Impression-weighted mean of per-group AUC over groups with both classes.

    Returns:
      gAUC, or nan when no group has both classes.
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    g = np.asarray(groups).reshape(-1)
    if not (y.size == s.size == g.size):
        raise ValueError(f"labels {y.size}, scores {s.size} and groups {g.size} differ in length")
    _, inverse = np.unique(g, return_inverse=True)
    order = np.argsort(inverse, kind="mergesort")
    bounds = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0, True])
    total, weight = 0.0, 0
    for start, end in zip(bounds[:-1], bounds[1:]):
        idx = order[start:end]
        value = auc(y[idx], s[idx])
        if not np.isnan(value):
            total += value * idx.size
            weight += idx.size
    return float(total / weight) if weight else float("nan")


def calibration(labels, probs) -> float:
    """Mean predicted probability / observed rate (1 = calibrated); nan if no positives."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    observed = y.mean() if y.size else 0.0
    return float(p.mean() / observed) if observed > 0 else float("nan")


def task_metrics(labels, probs, groups) -> dict[str, float]:
    """auc, logloss, gauc, calibration and counts for one task."""
    y = np.asarray(labels).reshape(-1)
    return {"auc": auc(y, probs), "logloss": logloss(y, probs), "gauc": gauc(y, probs, groups),
            "calibration": calibration(y, probs), "examples": int(y.size),
            "positives": int((y > 0.5).sum())}


def evaluate(labels: Mapping[str, Any], probs: Mapping[str, Any], groups) -> dict[str, dict[str, float]]:
    """task -> task_metrics for every task in `probs`."""
    return {task: task_metrics(labels[task], p, groups) for task, p in probs.items()}
