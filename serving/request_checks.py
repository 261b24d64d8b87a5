"""Checks of the recommender's requests against the feature config, before anything is read
or written.

Everything a client sends to /recommend or /ingest is checked here first, so a
bad value is a 400 naming it instead of a dropped connection (`k=Infinity`,
`context.timestamp=1e300`) or, worse, a stored value that breaks every later
request of the user (an `interest_tags: 12345` profile made each /recommend
fail with `'int' object is not iterable`). Values that pass are exactly those
`catalogue.raw_to_feature` reads as the feature's type.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from feature_contract import feature_config as fc


class BadRequest(ValueError):
    """A request the recommender refuses: HTTP 400 with this message."""


@dataclasses.dataclass(frozen=True)
class RequestRules:
    """Caps on what one request may carry.

    Attributes:
      max_k: largest k of /recommend (a feed page; 200 is 40% of the 500
        candidates ranked per request).
      max_id_chars: longest user or item id.
      max_value_chars: longest string feature value (one tag, one category).
      max_context_keys: most keys in a context object.
    """

    max_k: int = 200
    max_id_chars: int = 256
    max_value_chars: int = 256
    max_context_keys: int = 64


def _finite_number(value: Any) -> bool:
    """A JSON number that is finite (ints always are; math.isfinite overflows on huge ones)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def check_k(value: Any, rules: RequestRules) -> int:
    """k as an int in 1..max_k (an integral float such as 10.0 is accepted as 10).

    Raises:
      BadRequest: anything else (2.7, "10", Infinity, 10**6, true).
    """
    if _finite_number(value) and value == int(value) and 1 <= value <= rules.max_k:
        return int(value)
    raise BadRequest(f"k must be an integer in 1..{rules.max_k}, got {str(value)[:40]}")


def check_id(value: Any, what: str, rules: RequestRules) -> str:
    """A user or item id: a non-empty string (or integer) of at most max_id_chars.

    Raises:
      BadRequest: missing, another type, or too long.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{what} is required: a non-empty string, got {str(value)[:40]}")
    if len(value) > rules.max_id_chars:
        raise BadRequest(f"{what} is {len(value):,} characters; at most {rules.max_id_chars}")
    return value


def check_timestamp(value: Any, config: fc.FeatureConfig) -> float:
    """A request time in unix seconds, inside the config's accepted range.

    Raises:
      BadRequest: not a finite number in [min_timestamp, max_timestamp].
    """
    if _finite_number(value) and config.min_timestamp <= value <= config.max_timestamp:
        return float(value)
    raise BadRequest(f"context.timestamp must be unix seconds in {config.min_timestamp}.."
                     f"{config.max_timestamp}, got {str(value)[:40]}")


def _check_string(value: Any, where: str, rules: RequestRules) -> None:
    if isinstance(value, str):
        if len(value) > rules.max_value_chars:
            raise BadRequest(f"{where} is {len(value):,} characters; at most "
                             f"{rules.max_value_chars}")
    elif not _finite_number(value):
        raise BadRequest(f"{where} must be a string, got {str(value)[:40]}")


def check_feature_value(spec: fc.FeatureSpec, value: Any, where: str, rules: RequestRules) -> Any:
    """A raw value of `spec` as a client may send it; returned unchanged (None = missing).

    categorical: a string (or number); numeric: a finite number (or a string
    of one); tags: a list of at most max_len strings, or one string joined by
    the feature's separator.

    Raises:
      BadRequest: naming `where`, the expected form and the value.
    """
    if value is None:
        return None
    if spec.type == fc.NUMERIC:
        readable = _finite_number(value) or (isinstance(value, str)
                                             and len(value) <= rules.max_value_chars)
        try:
            number = float(value) if readable else math.nan
        except (ValueError, OverflowError):  # "abc", an int past float's range
            number = math.nan
        if math.isfinite(number):
            return value
        raise BadRequest(f"{where} must be a finite number, got {str(value)[:40]}")
    if spec.type in (fc.TAGS, fc.SEQUENCE):
        items = value
        if isinstance(value, str):
            _check_string(value, where, RequestRules(
                max_value_chars=rules.max_value_chars * max(1, spec.max_len)))
            items = [v for v in value.split(spec.separator) if v]
        if not isinstance(items, list):
            raise BadRequest(f"{where} must be a list of strings (at most {spec.max_len}) or a "
                             f"{spec.separator!r}-joined string, got {str(value)[:40]}")
        if len(items) > spec.max_len:
            raise BadRequest(f"{where} has {len(items):,} values; at most {spec.max_len}")
        for i, item in enumerate(items):
            _check_string(item, f"{where}[{i}]", rules)
        return value
    _check_string(value, where, rules)
    return value


def check_context(context: Any, specs: Mapping[str, fc.FeatureSpec], config: fc.FeatureConfig,
                  rules: RequestRules) -> dict[str, Any]:
    """The /recommend context: an object whose feature keys hold valid values.

    Args:
      context: the request's "context" (None = {}).
      specs: context key (a feature's name or raw column) -> its spec.
      config: the feature config (timestamp range).
      rules: caps.
    Returns:
      The context, unchanged. Keys that are neither features nor "timestamp"
      are never read, and are ignored.
    Raises:
      BadRequest: not an object, too many keys, or a bad value.
    """
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise BadRequest(f"context must be an object, got {str(context)[:40]}")
    if len(context) > rules.max_context_keys:
        raise BadRequest(f"context has {len(context)} keys; at most {rules.max_context_keys}")
    for key, value in context.items():
        if key == fc.TIMESTAMP_KEY:
            if value is not None:
                check_timestamp(value, config)
        elif key in specs:
            check_feature_value(specs[key], value, f"context.{key}", rules)
    return context


def check_profile(profile: Any, specs: Mapping[str, fc.FeatureSpec], rules: RequestRules
                  ) -> dict[str, Any]:
    """An /ingest profile: an object of user features (by name) with valid values.

    Args:
      profile: the event's "profile".
      specs: feature name -> spec of the profile features a user may set.
      rules: caps.
    Raises:
      BadRequest: not an object, an unknown key, or a bad value.
    """
    if not isinstance(profile, dict):
        raise BadRequest(f"profile must be an object, got {str(profile)[:40]}")
    for key, value in profile.items():
        if key not in specs:
            raise BadRequest(f"profile key {key[:60]!r} is not a profile feature; "
                             f"profile features are {sorted(specs)}")
        check_feature_value(specs[key], value, f"profile.{key}", rules)
    return profile
