"""Epoch-schedule settings every recall config carries, checked in one place.

Each recall config (Item2vec, YouTubeNet, two-tower) has the fields
max_epochs, patience, min_delta and validation_fraction of
validation-driven training (models.recall.training.fit_epochs); the checks
and the message for the retired `epochs` hparam live here so the three
configs say the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

SCHEDULE_FIELDS: tuple[str, ...] = ("max_epochs", "patience", "min_delta", "validation_fraction")


def check_schedule(config: Any, error: type[ValueError]) -> None:
    """Raises `error` naming the bad value when a schedule field is out of range.

    Args:
      config: a recall config with the SCHEDULE_FIELDS attributes.
      error: the config's own error class.
    """
    for name in ("max_epochs", "patience"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise error(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(config.min_delta, bool) or not 0.0 <= config.min_delta < math.inf:
        raise error(f"min_delta must be finite and >= 0, got {config.min_delta!r}")
    if isinstance(config.validation_fraction, bool) or \
            not 0.0 < config.validation_fraction < 1.0:
        raise error(f"validation_fraction must be in (0, 1), got "
                    f"{config.validation_fraction!r}")


def reject_epochs(hparams: Mapping[str, Any], model: str, error: type[ValueError]) -> None:
    """Raises `error` when hparams still pass the retired fixed `epochs`.

    Old profiles and --hparams overrides say `epochs`; silently ignoring it
    would train a different schedule than asked, so the message says what
    replaced it.
    """
    if "epochs" in hparams:
        raise error(f"{model} hparam 'epochs' ({hparams['epochs']!r}) is no longer accepted: "
                    f"use 'max_epochs' (a cap; training stops early when the validation "
                    f"HR@50 stops improving, see 'patience' and 'min_delta')")
