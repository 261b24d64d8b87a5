"""Values as strict JSON writes them: one helper for every JSON the project writes.

Kept free of TensorFlow so a benchmark's or a component's report writer can
import it without paying for the framework.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """`value` with numpy scalars / arrays as Python values, every non-finite
    float (NaN, +-inf) as None and mapping keys as str.

    json.dump writes NaN / Infinity, which JSON does not have: a strict
    parser (JSON.parse, jq, Go, Python's own with parse_constant) rejects the
    file. A head with no positives has no AUC; null says so. Other types pass
    through unchanged (json.dump's `default` decides about them).
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value
