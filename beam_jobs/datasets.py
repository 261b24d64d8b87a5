"""Datasets by name or by file: the built-in ones on first use, any other as a YAML.

`resolve(data, work_dir)` is what every runner and bench calls: `data` is a
built-in name (synthetic, movielens) or the path of a dataset YAML
(feature_contract.dataset: the feature config plus a `data:` section naming
the tables). Either way the result is a feature_contract.dataset.Dataset.

`prepare(name, work_dir)` returns where a built-in dataset's raw tables are,
producing them once under `work_dir/raw/`: the synthetic log is generated into
`raw/synthetic-<num_events>-<seed>/`, MovieLens-100k fetched (pip, at build
time) and converted into `raw/movielens/`. A `_SUCCESS` marker is written last,
so an interrupted run is redone rather than half-used.

`fingerprint(tables)` describes what the tables' globs match right now (files,
sizes, modification times, a content hash of small files), as TFX's own
ExampleGen fingerprints its input: ClickLogExampleGen's cache key carries it,
so new data at the same path is never served from the cache.

CLI (`make data`): `python -m beam_jobs.datasets --data synthetic|movielens|FILE.yaml
--work_dir work [--num_events N] [--seed S]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

from beam_jobs import movielens, synthetic
from feature_contract import dataset as dataset_file
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


def resolve(data: str, work_dir: str, num_events: int = DEFAULT_NUM_EVENTS,
            seed: int = 0) -> dataset_file.Dataset:
    """The dataset `data` names: a built-in one (prepared under work_dir) or a YAML.

    Args:
      data: "synthetic", "movielens" or the path of a dataset YAML.
      work_dir: where built-in datasets are generated / fetched (prepare()).
      num_events, seed: synthetic generator settings (ignored otherwise).

    Raises:
      ValueError: neither a built-in name nor a dataset file; the file's
        errors (feature_contract.dataset.DatasetError, FeatureConfigError)
        name the file and the key.
      movielens.MovieLensError: MovieLens could not be fetched or read.
    """
    if data in DATASETS:
        raw = prepare(data, work_dir, num_events=num_events, seed=seed)
        return dataset_file.builtin(raw.name, raw.events, raw.users, raw.items)
    if dataset_file.is_dataset_file(data) or os.path.exists(data):
        return dataset_file.load(data)
    raise ValueError(f"unknown dataset {data!r}; want one of {DATASETS} or a dataset YAML "
                     f"(a feature config with a 'data:' section)")


# Files up to this size are hashed too: a rewrite within the filesystem's
# mtime resolution that keeps the size would otherwise look unchanged.
SMALL_FILE_BYTES = 1 << 20


def _file_digest(path: str) -> str:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    digest = hashlib.sha256()
    # The stored bytes, not the decompressed stream: cheaper, and as telling.
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(tables: dict[str, str | None]) -> str:
    """What the tables' globs match now, as one line per table.

    For each glob: the matched files in path order with size and
    modification time, plus a content hash of files up to SMALL_FILE_BYTES
    (TFX's ExampleGen uses the same file list, sizes and mtimes). A table
    with no glob is "none"; a glob matching nothing is "0 files" (the
    sessionize job, not this, reports it as an error).

    Args:
      tables: table name -> glob or None, e.g. Dataset.tables.
    Returns:
      e.g. "events: 2 files, 10412 bytes, sha256 3f2a...; users: none; ...",
      the digest covering every path, size, mtime and small-file hash.
    """
    from apache_beam.io.filesystems import FileSystems
    parts = []
    for table, glob in sorted(tables.items()):
        if not glob:
            parts.append(f"{table}: none")
            continue
        files = sorted(FileSystems.match([glob])[0].metadata_list, key=lambda m: m.path)
        digest = hashlib.sha256(glob.encode())
        for meta in files:
            digest.update(f"\n{meta.path}\t{meta.size_in_bytes}\t"
                          f"{meta.last_updated_in_seconds!r}".encode())
            if meta.size_in_bytes <= SMALL_FILE_BYTES:
                digest.update(_file_digest(meta.path).encode())
        parts.append(f"{table}: {len(files)} files, {sum(m.size_in_bytes for m in files)} "
                     f"bytes, sha256 {digest.hexdigest()}")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=SYNTHETIC,
                        help=f"one of {', '.join(DATASETS)} or a dataset YAML")
    parser.add_argument("--work_dir", default="work")
    parser.add_argument("--num_events", type=int, default=DEFAULT_NUM_EVENTS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        dataset = resolve(args.data, args.work_dir, num_events=args.num_events, seed=args.seed)
    except (movielens.MovieLensError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    # `make data` checks a dataset: a glob matching nothing (or a file of no
    # known format) is the error the sessionize job would stop on, so say it here.
    from beam_jobs import raw_io  # Beam: imported only when a dataset is checked
    for table, glob in sorted(dataset.tables.items()):
        if glob:
            try:
                raw_io.check_table_matches(table, glob)
            except raw_io.RawTableError as err:
                print(f"error: {args.data}: {err}", file=sys.stderr)
                return 1
    shown = {k: v for k, v in dataclasses.asdict(dataset).items() if k != "config_yaml"}
    json.dump({**shown, "fingerprint": fingerprint(dataset.tables)}, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
