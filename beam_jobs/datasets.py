"""Raw datasets on first use: the synthetic log or MovieLens-100k.

`prepare(name, work_dir)` returns where a dataset's raw tables are, producing
them once under `work_dir/raw/`: the synthetic log is generated into
`raw/synthetic-<num_events>-<seed>/`, MovieLens-100k fetched (pip, at build
time) and converted into `raw/movielens/`. A `_SUCCESS` marker is written last,
so an interrupted run is redone rather than half-used.

CLI (`make data`): `python -m beam_jobs.datasets --data synthetic|movielens
--work_dir work [--num_events N] [--seed S]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from beam_jobs import movielens, synthetic
from feature_contract import feature_config

SYNTHETIC, MOVIELENS = "synthetic", "movielens"
DATASETS: tuple[str, ...] = (SYNTHETIC, MOVIELENS)
SUCCESS_MARKER = "_SUCCESS"
DEFAULT_NUM_EVENTS = 200_000


@dataclasses.dataclass(frozen=True)
class RawDataset:
    """A dataset's feature config and the globs of its raw tables."""

    name: str
    config_path: str
    events: str
    users: str
    items: str


def _dataset(name: str, directory: str, events: str, users: str, items: str) -> RawDataset:
    return RawDataset(name=name, config_path=feature_config.builtin_config_path(name),
                      events=os.path.join(directory, events),
                      users=os.path.join(directory, users),
                      items=os.path.join(directory, items))


def _build_once(directory: str, build) -> dict[str, Any] | None:
    """Runs build(directory) unless a complete build is there; returns its summary."""
    marker = os.path.join(directory, SUCCESS_MARKER)
    if os.path.exists(marker):
        return None
    if os.path.isdir(directory):
        shutil.rmtree(directory)  # incomplete earlier attempt
    summary = build(directory)
    with open(marker, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def prepare(data: str, work_dir: str, num_events: int = DEFAULT_NUM_EVENTS,
            seed: int = 0) -> RawDataset:
    """Makes the raw tables of `data` exist under work_dir and says where.

    Args:
      data: "synthetic" or "movielens".
      work_dir: working directory; tables go to work_dir/raw/<dataset dir>/,
        the MovieLens download to work_dir/cache/.
      num_events: synthetic log size (ignored for MovieLens).
      seed: synthetic generator seed (ignored for MovieLens).

    Returns:
      The RawDataset (config path and event/user/item file globs).

    Raises:
      ValueError: unknown dataset name.
      movielens.MovieLensError: MovieLens could not be fetched or read.
    """
    raw = os.path.join(work_dir, "raw")
    if data == SYNTHETIC:
        directory = os.path.join(raw, f"synthetic-{num_events}-{seed}")
        _build_once(directory, lambda d: synthetic.generate(d, num_events, seed=seed))
        return _dataset(SYNTHETIC, directory, synthetic.EVENTS_FILE, synthetic.USERS_FILE,
                        synthetic.ITEMS_FILE)
    if data == MOVIELENS:
        directory = os.path.join(raw, MOVIELENS)
        cache = os.path.join(work_dir, "cache", "recbole")

        def build(d: str) -> dict[str, Any]:
            os.makedirs(cache, exist_ok=True)
            return movielens.convert(movielens.fetch(cache), d)

        _build_once(directory, build)
        return _dataset(MOVIELENS, directory, movielens.EVENTS_FILE, movielens.USERS_FILE,
                        movielens.ITEMS_FILE)
    raise ValueError(f"unknown dataset {data!r}; want one of {DATASETS}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=DATASETS, default=SYNTHETIC)
    parser.add_argument("--work_dir", default="work")
    parser.add_argument("--num_events", type=int, default=DEFAULT_NUM_EVENTS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        dataset = prepare(args.data, args.work_dir, num_events=args.num_events, seed=args.seed)
    except movielens.MovieLensError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    json.dump(dataclasses.asdict(dataset), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
