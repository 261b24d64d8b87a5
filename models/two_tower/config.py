"""Two-tower hyperparameters."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from models.recall.schedule import check_schedule, reject_epochs
from models.validation import DEFAULT_VALIDATION_FRACTION


class TwoTowerConfigError(ValueError):
    """Bad two-tower settings; the message names the bad value."""


def _set_choices(config: "TwoTowerConfig", name: str, valid: Callable[[Any], bool],
                 wanted: str) -> None:
    """Stores field `name` as a tuple of distinct valid choices (one value: a 1-tuple).

    Raises:
      TwoTowerConfigError: no choice, an invalid or repeated one; names `wanted`.
    """
    value = getattr(config, name)
    choices = (value,) if valid(value) else value
    try:
        choices = tuple(choices)
    except TypeError:
        choices = ()
    if not choices or not all(valid(c) for c in choices) or len(set(choices)) != len(choices):
        raise TwoTowerConfigError(f"{name} must be {wanted}, got {value!r}")
    object.__setattr__(config, name, choices)


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
      extra_negatives: negatives drawn uniformly over the catalogue and
        appended to each batch's in-batch candidates (shared by all queries;
        logQ 1/N), as in mixed negative sampling. 0 by default: on validation
        the uniform part cost HR@50 on both built-in datasets, the more of it
        the more (1,024 < 128 < 32 <= 0; 0 beat 128 on three of four
        protocol / dataset pairs and tied the fourth, 5 seeds; README), so
        the in-batch and per-query hard negatives stand alone. Set it for a
        log whose validation says otherwise.
      hard_negatives: per-query hard negatives, uniform over the query
        positive's same-city, other-category items (other category when the
        config has no item_city role; none without an item_category role);
        each is scored against its own query only (logQ 1/pool size).
      recent_clicks: the choices, tried one model each and chosen by
        validation HR@50, for how many of the latest history clicks the user
        tower also reads as their mean (0: the history's own pooling only,
        attention or mean). Whether the next click follows the latest ones
        differs by log, so the validation split decides; one value: no choice.
      use_user_id: feed the user-id feature to the user tower (off: new users
        would hit an untrained row).
      history_positions: the history's attention pooling also scores each
        click's distance from the latest (a learned vector per position,
        `AttentionPooling(positions=...)`), so it can weigh recency itself.
        Off: on validation it tied the grid without it (mean best HR@50
        +0.006 / +0.004 on MovieLens' time split / leave-last-out, -0.004 /
        +0.003 on synthetic, every 95% interval across zero, 3 seeds;
        README), so the simpler tower stays the default.
      share_item_embedding: the choices, tried one model each with every
        recent_clicks choice and chosen by validation HR@50, for one item-id
        embedding table serving the user tower's click history and the item
        tower's candidate id (as YouTube's DNN shares its video embeddings)
        instead of one table per tower: a clicked item and a candidate are
        then the same vector before the MLPs, so what the item tower learns
        about an item also shapes every history holding it. It measured
        better on validation on three of four protocol / dataset pairs and
        worse on one (README), so the validation split decides.
      future_targets: each training example's target is drawn, every epoch,
        uniformly from its own clicked item and the same user's next
        future_targets - 1 clicks (fit period only), so one history learns to
        point at the user's coming clicks rather than at one next click
        (PinnerFormer's dense future-action objective, Pancha et al. 2022).
        1 = the next click only, the default: validation scores the next
        click, and there 5 lost on three of four protocol / dataset pairs and
        20 on all four (5 seeds, paired; README).
      batch_size, learning_rate, seed: training loop.
      weight_decay: decoupled weight decay (AdamW, Loshchilov & Hutter 2019)
        on every trainable weight, embedding tables included; 0 = plain Adam.
      dropout: Dropout rate in both towers' MLPs (their input and each hidden
        layer's output), in training only; 0 = none. 0.2 by default: on
        validation (5 seeds, paired) it beat none on both synthetic protocols
        (+0.016 / +0.015 HR@50) and tied MovieLens (-0.0001 / +0.0006); 0.4
        lost on MovieLens (-0.011 / -0.017) and tied synthetic (README).
      max_epochs: cap on passes over the fit examples (training stops
        earlier when the validation HR@50 stops improving).
      patience: epochs without a validation improvement before stopping.
      min_delta: smallest validation HR@50 gain that counts as improvement.
      validation_fraction: share of the training time span (the latest)
        held out as validation (models.validation).
    """

    dim: int = 64
    embedding_dim: int = 32
    hidden_units: tuple[int, ...] = (128,)
    attention_units: int = 32
    temperature: float = 0.05
    extra_negatives: int = 0
    hard_negatives: int = 1
    recent_clicks: tuple[int, ...] = (0, 5)
    use_user_id: bool = False
    history_positions: bool = False
    share_item_embedding: tuple[bool, ...] = (False, True)
    future_targets: int = 1
    batch_size: int = 512
    learning_rate: float = 0.003
    weight_decay: float = 0.0
    dropout: float = 0.2
    max_epochs: int = 20
    # 2: with patience 5 no epoch after the patience-2 stop improved validation
    # in any of 20 trainings (bench/results/recall_patience5.json; see
    # models/item2vec/config.py).
    patience: int = 2
    min_delta: float = 1e-4
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.future_targets, int) or isinstance(self.future_targets, bool):
            raise TwoTowerConfigError(f"future_targets must be an integer >= 1, got "
                                      f"{self.future_targets!r}")
        for name in ("dim", "embedding_dim", "batch_size", "future_targets"):
            if getattr(self, name) < 1:
                raise TwoTowerConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if any(u < 1 for u in self.hidden_units):
            raise TwoTowerConfigError(f"hidden_units {self.hidden_units!r} must be >= 1")
        if self.attention_units < 0:
            raise TwoTowerConfigError(
                f"attention_units must be >= 0, got {self.attention_units!r}")
        if self.temperature <= 0:
            raise TwoTowerConfigError(f"temperature must be > 0, got {self.temperature!r}")
        # hparams arrive as JSON lists (or one value); a tuple keeps the config hashable.
        _set_choices(self, "recent_clicks",
                     lambda c: isinstance(c, int) and not isinstance(c, bool) and c >= 0,
                     "distinct integers >= 0 (one or a list to choose from)")
        for name in ("use_user_id", "history_positions"):
            if not isinstance(getattr(self, name), bool):  # "false" from a YAML would be truthy
                raise TwoTowerConfigError(f"{name} must be true or false, got "
                                          f"{getattr(self, name)!r}")
        if self.history_positions and not self.attention_units:
            raise TwoTowerConfigError("history_positions needs attention_units > 0 (the "
                                      "positions are scored by the history's attention)")
        _set_choices(self, "share_item_embedding", lambda c: isinstance(c, bool),
                     "true, false or a list of distinct booleans to choose from")
        for name in ("extra_negatives", "hard_negatives"):
            if getattr(self, name) < 0:
                raise TwoTowerConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.learning_rate <= 0:
            raise TwoTowerConfigError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise TwoTowerConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.weight_decay < 0:
            raise TwoTowerConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        check_schedule(self, TwoTowerConfigError)

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any] | None) -> "TwoTowerConfig":
        """The defaults overridden by `hparams`.

        Raises:
          TwoTowerConfigError: `epochs` (use max_epochs), an unknown name, or a bad value.
        """
        reject_epochs(hparams or {}, "two-tower", TwoTowerConfigError)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(hparams or {}) - known
        if unknown:
            raise TwoTowerConfigError(
                f"unknown two-tower hparams {sorted(unknown)}; known {sorted(known)}")
        kwargs = dict(hparams or {})
        if "hidden_units" in kwargs:
            kwargs["hidden_units"] = tuple(int(u) for u in kwargs["hidden_units"])
        return cls(**kwargs)
