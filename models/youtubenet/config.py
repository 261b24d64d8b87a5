"""YouTubeNet hyperparameters."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class YouTubeNetConfig:
    """YouTubeNet settings.

    Attributes:
      dim: user vector / candidate embedding width.
      embedding_dim: per-feature input embedding width.
      hidden_units: ReLU tower widths (Covington: 1024-512-256, smaller here).
      num_sampled: negatives of the sampled softmax per batch.
      sampling_alpha: negatives ~ clicks**alpha (the logQ correction uses the
        same distribution).
      use_user_id: feed the user-id feature (off: new users are served by
        demographics and context).
      epochs, batch_size, learning_rate, seed: training loop.
    """

    dim: int = 64
    embedding_dim: int = 32
    hidden_units: tuple[int, ...] = (256, 128)
    num_sampled: int = 512
    sampling_alpha: float = 0.75
    use_user_id: bool = False
    epochs: int = 5
    batch_size: int = 512
    learning_rate: float = 0.002
    seed: int = 0

    def __post_init__(self):
        if self.dim < 1 or self.embedding_dim < 1 or self.num_sampled < 1:
            raise ValueError(f"dim, embedding_dim and num_sampled must be >= 1: {self}")

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any] | None) -> "YouTubeNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(hparams or {}) - known
        if unknown:
            raise ValueError(f"unknown YouTubeNet hparams {sorted(unknown)}; known {sorted(known)}")
        kwargs = dict(hparams or {})
        if "hidden_units" in kwargs:
            kwargs["hidden_units"] = tuple(int(u) for u in kwargs["hidden_units"])
        return cls(**kwargs)
