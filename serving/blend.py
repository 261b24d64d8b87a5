"""The final-list blend: the ranker's score with the recall channels' ranks and popularity.

Why: the ranker is trained on impressions to estimate P(click | impression).
A request's next click also follows exposure (what the feed showed, which
tracks popularity) and the recall channels' own evidence (a two-tower rank 1
item is a strong candidate whatever its impression CTR). Ranking the merged
candidates by the ranker alone throws both away, and the offline funnel
replay (bench.funnel_bench) measured the cost: the ranked final list far
below each channel's own list. The blend is the usual last stage of such
funnels: a linear score over per-candidate features,

    score = sum_f w_f * x_f,   x = click_logit, follow_logit (multi-task),
                                   log_clicks (1 + item clicks, log),
                                   in:<channel> (1 if the channel retrieved it),
                                   log_rank:<channel> (log(1 + its rank), 0 if not),

with weights fitted by listwise softmax likelihood (one softmax over each
request's candidates, the clicked item as the label) on requests replayed
from the validation period: data the models did not train on, never the
eval split. Unknown feature names weigh 0, so a blend keeps working when a
channel is added or missing (that channel then only enters through the
ranker's score).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CLICK_LOGIT = "click_logit"
FOLLOW_LOGIT = "follow_logit"
LOG_CLICKS = "log_clicks"
RANKER_FEATURES = (CLICK_LOGIT, FOLLOW_LOGIT)  # what only a ranking Predict can give
BLEND_FILE = "blend.json"  # in the serving dir, beside models/ and indexes/ (serving.serve)
_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] before the logit


def in_channel(name: str) -> str:
    """Feature name: 1 when channel `name` retrieved the candidate."""
    return f"in:{name}"


def log_rank(name: str) -> str:
    """Feature name: log(1 + the candidate's 0-based rank in channel `name`), 0 when absent."""
    return f"log_rank:{name}"


# channel_order's weight on in:<channel>: above any log_rank (log(1 + rank) < 100
# for every rank a list can hold), so the channel's rows all come first.
CHANNEL_ORDER_IN_WEIGHT = 100.0


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def candidate_features(pair_rows: np.ndarray, pair_channels: np.ndarray, pair_ranks: np.ndarray,
                       channel_names: Sequence[str], rows: np.ndarray,
                       click: np.ndarray | None, item_clicks: np.ndarray,
                       follow: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Blend features of candidate `rows` ([M] each).

    Args:
      pair_rows, pair_channels, pair_ranks: [P] each (row, channel index)
        pair of the merge with the row's rank in that channel's list
        (serving.recommender.MergedRows).
      channel_names: name per channel index.
      rows: the candidates, [M] distinct catalogue rows.
      click: [M] the ranker's click probabilities, or None when no ranker is
        served (no click_logit feature: the blend scores without it).
      item_clicks: [M] the candidates' click counts (catalogue popularity).
      follow: [M] follow probabilities of a multi-task ranker, or None.
    Returns:
      feature name -> float64 [M].
    """
    rows = np.asarray(rows, np.int64)
    out = {LOG_CLICKS: np.log1p(np.maximum(np.asarray(item_clicks, np.float64), 0.0))}
    if click is not None:
        out[CLICK_LOGIT] = logit(click)
    if follow is not None:
        out[FOLLOW_LOGIT] = logit(follow)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    for c, name in enumerate(channel_names):
        pick = pair_channels == c
        found = np.zeros(len(rows))
        ranks = np.zeros(len(rows))
        if pick.any() and len(rows):
            where = np.searchsorted(sorted_rows, pair_rows[pick])
            where = np.minimum(where, len(rows) - 1)
            hit = sorted_rows[where] == pair_rows[pick]
            at = order[where[hit]]
            found[at] = 1.0
            ranks[at] = np.log1p(pair_ranks[pick][hit].astype(np.float64))
        out[in_channel(name)] = found
        out[log_rank(name)] = ranks
    return out


@dataclasses.dataclass(frozen=True)
class Blend:
    """Linear blend weights (feature name -> weight) and how they were fitted.

    Attributes:
      weights: (feature name, weight) pairs; absent features weigh 0.
      fitted: provenance (requests, log-likelihoods, the data it came from).
    """

    weights: tuple[tuple[str, float], ...]
    fitted: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        bad = [(n, w) for n, w in self.weights if not isinstance(n, str) or not math.isfinite(w)]
        if bad:
            raise ValueError(f"blend weights must be finite numbers keyed by name, got {bad}")

    @property
    def uses_ranker(self) -> bool:
        """Whether a ranker output (click or follow logit) has a non-zero weight.

        A blend fitted with no ranker served (BlendFitter after a gate refused
        the candidate) has none: the ranker's scores cannot change what it
        ranks, so the recommender makes no ranking Predict for it.
        """
        return any(weight for name, weight in self.weights if name in RANKER_FEATURES)

    def score(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """sum_f w_f x_f over the features present ([M] float64)."""
        size = len(next(iter(features.values()))) if features else 0
        total = np.zeros(size)
        for name, weight in self.weights:
            if name in features and weight:
                total = total + weight * np.asarray(features[name], np.float64)
        return total

    def to_json(self) -> str:
        return json.dumps({"weights": dict(self.weights), "fitted": dict(self.fitted)},
                          indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Blend":
        """Parses to_json's text.

        Raises:
          ValueError: not a JSON object with a `weights` object of numbers.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"blend file is not JSON: {err}") from err
        weights = data.get("weights") if isinstance(data, dict) else None
        if not isinstance(weights, dict) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights.values()):
            raise ValueError("blend file needs {\"weights\": {feature: number, ...}}")
        return cls(tuple(sorted((str(k), float(v)) for k, v in weights.items())),
                   data.get("fitted") or {})

    @classmethod
    def read(cls, path: str) -> "Blend":
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())


def merge_order(reason: str) -> Blend:
    """The blend that weighs nothing: every score 0, so the merged candidates stay in
    merge order (the recommender's sort is stable) and no ranker is called. Served when
    there is nothing else to order by (`reason`, kept in its provenance)."""
    return Blend((), {"chosen": "merge_order", "reason": reason})


def channel_order(name: str, fitted: Mapping[str, Any] | None = None) -> Blend:
    """The blend that ranks the merged candidates in channel `name`'s own order.

    score = 100 * in:<name> - log_rank:<name>: the channel's rows first, by
    their rank there (strictly decreasing), then every other candidate
    (score 0) in merge order (the recommender's sort is stable). What
    fit_validation_blend serves when the fitted blend does not beat the
    channel on held-out validation requests (`fitted`: the provenance of
    the blend it was preferred to).
    """
    return Blend(((in_channel(name), CHANNEL_ORDER_IN_WEIGHT), (log_rank(name), -1.0)),
                 dict(fitted or {}))


@dataclasses.dataclass(frozen=True)
class Group:
    """One fitting request: its candidates' features and which are the targets.

    Attributes:
      features: feature name -> [M].
      targets: bool [M], the request's clicked candidate(s).
    """

    features: Mapping[str, np.ndarray]
    targets: np.ndarray


def _stack(groups: Sequence[Group], names: Sequence[str]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X [N, F], target weight [N] summing to 1 per group, group starts [G])."""
    blocks, weights, starts, at = [], [], [], 0
    for g in groups:
        size = len(g.targets)
        blocks.append(np.stack([np.asarray(g.features.get(n, np.zeros(size)), np.float64)
                                for n in names], axis=1))
        t = np.asarray(g.targets, np.float64)
        weights.append(t / t.sum())
        starts.append(at)
        at += size
    return np.concatenate(blocks), np.concatenate(weights), np.asarray(starts, np.int64)


def softmax_loss(w: np.ndarray, x: np.ndarray, target_weight: np.ndarray, starts: np.ndarray,
                 l2: float) -> tuple[float, np.ndarray]:
    """Mean over groups of -sum_t y_t log softmax(xw)_t, plus l2/2 |w|^2; and its gradient."""
    s = x @ w
    top = np.maximum.reduceat(s, starts)
    sizes = np.diff(np.r_[starts, len(s)])
    e = np.exp(s - np.repeat(top, sizes))
    z = np.add.reduceat(e, starts)
    log_z = top + np.log(z)
    groups = len(starts)
    loss = float((log_z.sum() - target_weight @ s) / groups + 0.5 * l2 * w @ w)
    p = e / np.repeat(z, sizes)
    grad = (x.T @ (p - target_weight)) / groups + l2 * w
    return loss, grad


def fit_blend(groups: Sequence[Group], names: Sequence[str], l2: float = 1e-3,
              provenance: Mapping[str, Any] | None = None) -> Blend:
    """Weights maximizing the listwise softmax likelihood of the targets.

    Features are standardized for the optimizer (L-BFGS) and the weights
    mapped back to raw units; the softmax is shift invariant, so the means do
    not enter. Groups without a target among their candidates, or with one
    candidate, carry no information and are left out (counted in `fitted`).

    Raises:
      ValueError: no usable group.
    """
    from scipy import optimize  # a fitting-time dependency; serving never fits

    usable = [g for g in groups if len(g.targets) > 1 and np.any(g.targets)]
    if not usable:
        raise ValueError(f"no request with its target among >= 2 candidates "
                         f"(of {len(groups)}) to fit the blend on")
    x, y, starts = _stack(usable, names)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    xs = (x - x.mean(axis=0)) / scale
    zero = np.zeros(len(names))
    result = optimize.minimize(softmax_loss, zero, args=(xs, y, starts, l2), jac=True,
                               method="L-BFGS-B")
    weights = result.x / scale
    fitted = {"requests": len(groups), "requests_used": len(usable),
              "candidates": int(len(x)), "l2": l2,
              "mean_log_likelihood": -float(softmax_loss(result.x, xs, y, starts, 0.0)[0]),
              "uniform_log_likelihood": -float(softmax_loss(zero, xs, y, starts, 0.0)[0]),
              "converged": bool(result.success), **dict(provenance or {})}
    return Blend(tuple((n, float(w)) for n, w in zip(names, weights)), fitted)
