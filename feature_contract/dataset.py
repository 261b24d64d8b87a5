"""A dataset is one YAML file: the feature config plus a `data:` section.

    name: my_clicks
    timestamp_column: ts
    ...                              # every feature config key (README "Feature config")
    data:
      events: logs/events-*.csv.gz   # required
      users: tables/users.jsonl      # optional: only when a feature has source: users
      items: gs://bucket/items.jsonl # optional: only when a feature has source: items

A glob is relative to the YAML's own folder, absolute, or a URL of any
filesystem Beam reads (gs://, s3://, hdfs://); the folder rule is what lets a
dataset directory be moved or copied as a whole. `load` resolves the globs
and keeps the feature config as YAML text without the `data:` section: that
text is what the pipeline hands to ClickLogExampleGen (and what it writes
into the vocabulary artifact), so no consumer re-reads the user's file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from feature_contract import feature_config as fc

DATA_KEY = "data"
VALIDATION_KEY = "validation"  # optional: the data checks' thresholds
EVENTS, USERS, ITEMS = "events", "users", "items"
TABLES: tuple[str, ...] = (EVENTS, USERS, ITEMS)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class DatasetError(fc.FeatureConfigError):
    """A dataset YAML is malformed; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A feature config and the globs of its raw tables.

    Attributes:
      name: the config's `name`.
      config_yaml: the feature config as YAML text (no `data:` section),
        loadable with feature_config.from_dict(yaml.safe_load(...)).
      events: events glob.
      users: users glob, or None when the dataset has no users table.
      items: items glob, or None when the dataset has no items table.
      source: where the dataset was described (the YAML's path, or the
        built-in name); for messages only.
      validation: the YAML's optional `validation:` section, the data checks'
        thresholds (components.statistics.ValidationConfig.from_dict reads it;
        the contract only carries it, so it imports nothing above itself).
    """

    name: str
    config_yaml: str
    events: str
    users: str | None = None
    items: str | None = None
    source: str = ""
    validation: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def config(self) -> fc.FeatureConfig:
        return fc.from_dict(yaml.safe_load(self.config_yaml))

    @property
    def tables(self) -> dict[str, str | None]:
        return {EVENTS: self.events, USERS: self.users, ITEMS: self.items}


def is_dataset_file(data: str) -> bool:
    """Whether `data` names a dataset YAML (a path) rather than a built-in dataset."""
    return data.endswith((".yaml", ".yml")) or os.sep in data


def is_url(glob: str) -> bool:
    """Whether `glob` names a location on a filesystem with a scheme (gs://, s3://, ...)."""
    return bool(_URL.match(glob))


def resolve_glob(glob: str, base_dir: str) -> str:
    """`glob` as a location any Beam filesystem can read.

    Args:
      glob: absolute path, URL (scheme://...) or a path relative to base_dir.
      base_dir: folder relative globs start from (the YAML's, or a data root
        such as gs://bucket/raw when compiling for a remote cluster).
    """
    if _URL.match(glob) or os.path.isabs(glob):
        return glob
    if _URL.match(base_dir):
        return base_dir.rstrip("/") + "/" + glob
    return os.path.normpath(os.path.join(base_dir, glob))


def _tables(section: Any, where: str, base_dir: str) -> dict[str, str | None]:
    if not isinstance(section, Mapping):
        raise DatasetError(f"{where}: '{DATA_KEY}' must be a mapping of {list(TABLES)} to "
                           f"globs, got {section!r}")
    unknown = sorted(set(section) - set(TABLES))
    if unknown:
        raise DatasetError(f"{where}: unknown keys {unknown} in '{DATA_KEY}'; "
                           f"want {list(TABLES)}")
    if EVENTS not in section:
        raise DatasetError(f"{where}: '{DATA_KEY}.{EVENTS}' is required (the events glob)")
    out: dict[str, str | None] = {}
    for table in TABLES:
        value = section.get(table)
        if value is None and table != EVENTS:
            out[table] = None
            continue
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"{where}: '{DATA_KEY}.{table}' must be a non-empty string "
                               f"(a glob), got {value!r}")
        out[table] = resolve_glob(value.strip(), base_dir)
    return out


def from_dict(raw: Any, where: str, base_dir: str) -> Dataset:
    """Builds a Dataset from a parsed dataset YAML.

    Args:
      raw: the parsed YAML.
      where: the file (or other origin) named in error messages.
      base_dir: folder relative globs resolve against.

    Raises:
      DatasetError: no or a malformed `data:` section.
      feature_config.FeatureConfigError: the feature config part is invalid
        (the message starts with `where`).
    """
    if not isinstance(raw, Mapping):
        raise DatasetError(f"{where}: a dataset YAML must be a mapping, got "
                           f"{type(raw).__name__}")
    if DATA_KEY not in raw:
        raise DatasetError(f"{where}: no '{DATA_KEY}:' section; a dataset YAML names its raw "
                           f"tables there ({EVENTS}: required, {USERS} / {ITEMS}: optional)")
    tables = _tables(raw[DATA_KEY], where, base_dir)
    validation = raw.get(VALIDATION_KEY) or {}
    if not isinstance(validation, Mapping):
        raise DatasetError(f"{where}: '{VALIDATION_KEY}:' must be a mapping of data-check "
                           f"thresholds, got {type(validation).__name__}")
    config_part = {k: v for k, v in raw.items() if k not in (DATA_KEY, VALIDATION_KEY)}
    try:
        config = fc.from_dict(config_part)
    except fc.FeatureConfigError as err:
        raise fc.FeatureConfigError(f"{where}: {err}") from err
    return Dataset(name=config.name, config_yaml=yaml.safe_dump(config_part, sort_keys=False),
                   source=where, validation=dict(validation), **tables)


def load(path: str | os.PathLike[str], base_dir: str | None = None) -> Dataset:
    """Loads a dataset YAML.

    Args:
      path: the YAML file.
      base_dir: folder relative globs resolve against (default: the YAML's
        own folder). The Kubeflow compiler passes the cluster's data root,
        so no path of the compiling machine ends up in the spec.

    Raises:
      DatasetError: the file is missing, not YAML, or its `data:` section is bad.
      feature_config.FeatureConfigError: the feature config part is invalid.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: no such dataset file") from err
    except yaml.YAMLError as err:
        raise DatasetError(f"{path}: not valid YAML: {err}") from err
    folder = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(path))
    return from_dict(raw, path, folder)


def builtin(name: str, events: str, users: str | None, items: str | None) -> Dataset:
    """A built-in dataset (feature_contract/configs/<name>.yaml) over generated tables."""
    path = fc.builtin_config_path(name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    fc.from_dict(yaml.safe_load(text))  # fail here, not inside the pipeline
    return Dataset(name=name, config_yaml=text, events=events, users=users, items=items,
                   source=name)
