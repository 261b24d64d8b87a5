"""Two-tower hyperparameters."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig:
    """Two-tower settings.

    Attributes:
      dim: output vector width (both towers).
      embedding_dim: per-feature embedding width.
      hidden_units: MLP widths of each tower before the output layer.
      attention_units: hidden width of the attention pooling of the history
        and the interest tags.
      temperature: cosine similarities are divided by it before the softmax.
      extra_negatives: negatives appended to each batch's in-batch candidates.
      hard_negative_ratio: share of the extra negatives that are hard (same
        city as the positive, other category; other category when the
        config has no item_city role); the rest are drawn by click frequency.
      use_user_id: feed the user-id feature to the user tower (off: new users
        would hit an untrained row).
      epochs, batch_size, learning_rate, seed: training loop.
    """

    dim: int = 64
    embedding_dim: int = 32
    hidden_units: tuple[int, ...] = (128,)
    attention_units: int = 32
    temperature: float = 0.05
    extra_negatives: int = 128
    hard_negative_ratio: float = 0.5
    use_user_id: bool = False
    epochs: int = 5
    batch_size: int = 512
    learning_rate: float = 0.003
    seed: int = 0

    def __post_init__(self):
        if self.dim < 1 or self.embedding_dim < 1:
            raise ValueError(f"dim and embedding_dim must be >= 1: {self}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.hard_negative_ratio <= 1.0:
            raise ValueError(f"hard_negative_ratio {self.hard_negative_ratio} not in [0, 1]")
        if self.extra_negatives < 0:
            raise ValueError(f"extra_negatives must be >= 0, got {self.extra_negatives}")

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any] | None) -> "TwoTowerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(hparams or {}) - known
        if unknown:
            raise ValueError(f"unknown two-tower hparams {sorted(unknown)}; known {sorted(known)}")
        kwargs = dict(hparams or {})
        if "hidden_units" in kwargs:
            kwargs["hidden_units"] = tuple(int(u) for u in kwargs["hidden_units"])
        return cls(**kwargs)
