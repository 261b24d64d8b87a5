"""Vectorized negative sampling: unigram^alpha, optionally within an attribute group.

One sampler serves Item2vec (word2vec's unigram^0.75 table, and 58.com's
attribute-aware negatives: same city or same category as the positive) and the
two-tower hard negatives (same city, other category).
"""

from __future__ import annotations

import numpy as np


class GroupedSampler:
    """Draws item rows with probability proportional to weight**alpha within a group.

    Items are sorted by group and a global cumulative weight array is kept;
    a draw within group g is `searchsorted(cum, start_g + u * total_g)`, so a
    batch of draws with different groups is one vectorized call.

    Args:
      weights: [N] non-negative item weights (e.g. click counts).
      groups: [N] int group code per item (None: one group).
      alpha: exponent on the weights (0.75 for word2vec).
      smoothing: added to every weight before the exponent, so unseen items
        can still be drawn.
    """

    def __init__(self, weights: np.ndarray, groups: np.ndarray | None = None,
                 alpha: float = 0.75, smoothing: float = 1.0):
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or len(weights) == 0:
            raise ValueError(f"weights must be a non-empty 1-d array, got shape {weights.shape}")
        if np.any(weights < 0):
            raise ValueError("weights must be non-negative")
        groups = (np.zeros(len(weights), np.int64) if groups is None
                  else np.asarray(groups, np.int64))
        if groups.shape != weights.shape:
            raise ValueError(f"groups shape {groups.shape} != weights shape {weights.shape}")
        self.probs_unnormalized = (weights + smoothing) ** alpha
        self.order = np.argsort(groups, kind="stable")
        self.groups = groups
        sorted_groups = groups[self.order]
        self.cum = np.cumsum(self.probs_unnormalized[self.order])
        uniq, first, counts = np.unique(sorted_groups, return_index=True, return_counts=True)
        self.group_codes = uniq
        before = np.concatenate([[0.0], self.cum])
        self.group_start = before[first]
        self.group_total = before[first + counts] - before[first]
        self.group_size = counts

    def _group_index(self, group: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.group_codes, group)
        pos = np.clip(pos, 0, len(self.group_codes) - 1)
        if np.any(self.group_codes[pos] != group):
            raise ValueError("sampling from a group with no items")
        return pos

    def sample(self, rng: np.random.Generator, size: int | tuple[int, ...],
               group: np.ndarray | None = None) -> np.ndarray:
        """Item rows, shape `size`; with `group` ([size[0]] codes) each row
        draws within its group."""
        shape = (size,) if isinstance(size, int) else tuple(size)
        u = rng.random(shape)
        if group is None:
            target = u * self.cum[-1]
        else:
            g = self._group_index(np.asarray(group, np.int64))
            g = g.reshape(g.shape + (1,) * (len(shape) - g.ndim))
            target = self.group_start[g] + u * self.group_total[g]
        pos = np.searchsorted(self.cum, target, side="right")
        return self.order[np.minimum(pos, len(self.order) - 1)]

    def group_sizes_of(self, group: np.ndarray) -> np.ndarray:
        """Number of items in each given group (0 when absent)."""
        group = np.asarray(group, np.int64)
        pos = np.clip(np.searchsorted(self.group_codes, group), 0, len(self.group_codes) - 1)
        return np.where(self.group_codes[pos] == group, self.group_size[pos], 0)

    def probability(self, rows: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
        """Per-draw probability of drawing `rows` (within `group` when given)."""
        p = self.probs_unnormalized[rows]
        if group is None:
            return p / self.cum[-1]
        return p / self.group_total[self._group_index(np.asarray(group, np.int64))]
