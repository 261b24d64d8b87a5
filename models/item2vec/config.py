"""Item2vec hyperparameters."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from feature_contract import feature_config as fc
from models.recall.schedule import check_schedule, reject_epochs
from models.validation import DEFAULT_VALIDATION_FRACTION


# The item roles an item attribute can come from (negatives, imputation).
ITEM_ROLES: tuple[str, ...] = (fc.ROLE_ITEM_CITY, fc.ROLE_ITEM_CATEGORY)


class Item2VecConfigError(ValueError):
    """Bad Item2vec settings; the message names the bad value."""


@dataclasses.dataclass(frozen=True)
class Item2VecConfig:
    """Skip-gram settings; defaults follow Meitu's item2vec.

    bench/results/item2vec_ablation.json (at acf7c57) measures the published
    settings against dim 32 and 64, 58.com's same-category / same-city
    negatives (attribute_role) and 1 or 20 recent clicks on the trainer's
    validation HR@50 (5 seeds, 95% intervals, both built-in datasets): no
    change wins anywhere without losing, so every default is the published
    one. (Its run at d0a5222, before the vocabulary fix and with patience 2,
    had dim 64 winning on synthetic, and 64 was the default until this re-run
    turned that into a tie.)

    Attributes:
      dim: embedding width (Meitu: 128).
      window: max distance between center and context in a session (Meitu: 64).
      negatives_per_positive: negatives per (center, context) pair (Meitu: 2).
      min_session_len: sessions shorter than this are dropped (None: the
        feature config's min_session_len, Meitu: 5).
      unigram_alpha: negatives ~ clicks**alpha (word2vec: 0.75).
      attribute_role: None, or a role (item_city / item_category) whose value
        the attribute-aware negatives share with the positive (58.com).
      attribute_negative_ratio: share of negatives drawn attribute-aware.
      batch_size, learning_rate: training loop.
      max_epochs: cap on passes over the fit sessions (training stops
        earlier when the validation next-item HR@50 stops improving).
      patience: epochs without a validation improvement before stopping.
      min_delta: smallest validation HR@50 gain that counts as improvement.
      validation_fraction: share of the training time span (the latest
        sessions by start time) held out as validation (models.validation).
      max_pairs_per_epoch: when set, each epoch trains on a fresh random
        subset of this many pairs (long sessions with window 64 give
        O(64 x clicks) pairs: 2.4M on MovieLens; the subset bounds the epoch
        cost and lets early stopping look more often). None: every pair.
      recent_clicks: the user vector averages this many most recent clicks
        (5: 1 and 20 both lose to it on MovieLens and tie on synthetic,
        bench/results/item2vec_ablation.json).
      impute_untrained: give every catalogue item without a trained vector
        (never in a fit session of >= min_session_len clicks, or seen only
        after the fit period) an imputed one, so the exported candidates
        cover the whole catalogue (models.item2vec.train.impute_vectors).
      impute_roles: item roles tried in order for the imputation: the mean
        vector of the trained items sharing the item's value; roles the
        feature config does not set are skipped; the global mean of the
        trained vectors is the last resort.
      prior_weights: weights beta tried for the popularity prior, chosen on
        the validation queries (ties: the first listed; each epoch is validated at
        its best weight, and the weight is chosen again on the kept epoch;
        16 ranks nearly by popularity, similarity breaking ties). SGNS
        learns center . context ~ PMI(i, j) - log k (Levy & Goldberg 2014),
        which leaves out log P(j): the next click's own popularity. The served
        score is cos(user, item) + beta * log(1 + clicks) / log(1 + max clicks),
        an extra vector column, so FAISS inner product and the user tower
        apply it unchanged. (0.0,) turns the prior off.
      seed: pair shuffling and negative sampling.
    """

    dim: int = 128
    window: int = 64
    negatives_per_positive: int = 2
    min_session_len: int | None = None
    unigram_alpha: float = 0.75
    attribute_role: str | None = None
    attribute_negative_ratio: float = 0.5
    batch_size: int = 4096
    learning_rate: float = 0.005
    max_pairs_per_epoch: int | None = 200_000
    recent_clicks: int = 5
    impute_untrained: bool = True
    impute_roles: tuple[str, ...] = (fc.ROLE_ITEM_CATEGORY, fc.ROLE_ITEM_CITY)
    max_epochs: int = 20
    # 5, chosen on validation as YouTubeNet's (bench/results/recall_patience5.json):
    # small gains (MovieLens leave-last-out best validation HR@50 0.460 -> 0.466:
    # three seeds peak at epochs 16-19 where patience 2 had stopped them after
    # epochs 7-13) for epochs of 1-3 s. The two-tower model keeps 2: in all 20
    # of its trainings no epoch after the patience-2 stop improved validation,
    # and its epochs cost most.
    patience: int = 5
    min_delta: float = 1e-4
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    prior_weights: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    seed: int = 0

    def __post_init__(self):
        for name in ("dim", "window", "negatives_per_positive", "batch_size", "recent_clicks"):
            if getattr(self, name) < 1:
                raise Item2VecConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.learning_rate <= 0:
            raise Item2VecConfigError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.attribute_role not in (None, *ITEM_ROLES):
            raise Item2VecConfigError(f"attribute_role {self.attribute_role!r} not in "
                                      f"{(None, *ITEM_ROLES)}")
        # hparams arrive as JSON lists; a tuple keeps the frozen config hashable.
        object.__setattr__(self, "impute_roles", tuple(self.impute_roles))
        try:
            weights = tuple(float(w) for w in self.prior_weights)
        except (TypeError, ValueError):
            weights = ()
        object.__setattr__(self, "prior_weights", weights or self.prior_weights)
        if not weights or any(not (0 <= w < float("inf")) for w in weights):
            raise Item2VecConfigError(
                f"prior_weights must be a non-empty list of finite weights >= 0, got "
                f"{self.prior_weights!r}")
        unknown_roles = [r for r in self.impute_roles if r not in ITEM_ROLES]
        if unknown_roles:
            raise Item2VecConfigError(f"impute_roles {unknown_roles!r} not in {ITEM_ROLES}")
        if self.max_pairs_per_epoch is not None and self.max_pairs_per_epoch < 1:
            raise Item2VecConfigError(
                f"max_pairs_per_epoch must be >= 1, got {self.max_pairs_per_epoch!r}")
        if not 0.0 <= self.attribute_negative_ratio <= 1.0:
            raise Item2VecConfigError(
                f"attribute_negative_ratio {self.attribute_negative_ratio!r} not in [0, 1]")
        check_schedule(self, Item2VecConfigError)

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any] | None) -> "Item2VecConfig":
        """The defaults overridden by `hparams`.

        Raises:
          Item2VecConfigError: `epochs` (use max_epochs), an unknown name, or a bad value.
        """
        reject_epochs(hparams or {}, "Item2vec", Item2VecConfigError)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(hparams or {}) - known
        if unknown:
            raise Item2VecConfigError(
                f"unknown Item2vec hparams {sorted(unknown)}; known {sorted(known)}")
        return cls(**dict(hparams or {}))
