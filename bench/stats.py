"""Statistics and provenance shared by the benchmarks.

A comparison between two models is the paired difference over seeds (seed k
of model A against seed k of model B: same data, same split), with a 95%
Student-t confidence interval. A difference whose interval contains 0 is a
tie and is reported as one: with 5 seeds and a seed spread of ~0.002 AUC, a
mean difference of 0.001 says nothing.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from models.json_safe import json_safe

WIN, LOSS, TIE = "win", "loss", "tie"


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95
                      ) -> dict[str, Any]:
    """Mean of a_i - b_i with its Student-t confidence interval.

    Args:
      a, b: one value per seed, same seeds in the same order.
      confidence: two-sided confidence level.
    Returns:
      {"mean", "ci_low", "ci_high", "std", "n", "confidence", "verdict"}:
      verdict "win" when the interval lies above 0, "loss" below, "tie" when
      it contains 0 (or there are fewer than 2 pairs).
    Raises:
      ValueError: different lengths, no pairs, or a NaN value.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need equal 1-D shapes, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no pairs")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("NaN in paired values")
    d = a - b
    n = int(d.size)
    mean = float(d.mean())
    if n < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None, "std": None, "n": n,
                "confidence": confidence, "verdict": TIE}
    std = float(d.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = WIN if low > 0 else LOSS if high < 0 else TIE
    return {"mean": mean, "ci_low": low, "ci_high": high, "std": std, "n": n,
            "confidence": confidence, "verdict": verdict}


def git_commit(repo_dir: str | None = None) -> str | None:
    """HEAD's commit hash (with "-dirty" when tracked files differ), or None outside git."""
    cwd = repo_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def provenance(command: Sequence[str]) -> dict[str, Any]:
    """What a results JSON records about the run: commit, date, machine, command."""
    return {"commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(command), "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def write_report(path: str, report: Mapping[str, Any]) -> None:
    """Writes a bench's results JSON (strict JSON: NaN as null; another
    type as its text), creating its folder.

    Written to a temporary file and renamed: an interrupted or failed write
    never leaves a half JSON where the previous result was.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(json_safe(report), f, indent=1, default=str, allow_nan=False)
    os.replace(tmp, path)
