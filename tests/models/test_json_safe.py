"""The one JSON-safety helper every report writer uses."""
import json
import math

import numpy as np

from models.json_safe import json_safe


def test_non_finite_floats_become_null_and_numpy_becomes_python():
    value = {"auc": float("nan"), 3: (np.float32("inf"), -math.inf, np.int64(7)),
             "vec": np.array([[1.5, np.nan]]), "ok": [0.25, True, None, "x"]}
    out = json_safe(value)
    assert out == {"auc": None, "3": [None, None, 7], "vec": [[1.5, None]],
                   "ok": [0.25, True, None, "x"]}
    assert type(out["3"][2]) is int
    # Strict JSON round trip: no NaN / Infinity tokens.
    assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_other_types_pass_through_for_json_dumps_default():
    marker = object()
    assert json_safe({"x": marker})["x"] is marker
