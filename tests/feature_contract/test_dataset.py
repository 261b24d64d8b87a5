"""feature_contract.dataset: a dataset YAML is the feature config plus `data:`."""

import os
import shutil
import tempfile

import pytest
import yaml
from absl.testing import parameterized

from feature_contract import dataset
from feature_contract import feature_config as fc


def _config() -> dict:
    with open(fc.builtin_config_path("synthetic"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def _write(folder, raw) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "mine.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    return path


def test_globs_resolve_against_the_yaml_folder(tmp_path):
    folder = str(tmp_path / "ds")
    path = _write(folder, {**_config(), "data": {
        "events": "logs/ev-*.csv.gz", "users": "/abs/users.jsonl",
        "items": "gs://bucket/items.jsonl"}})
    ds = dataset.load(path)
    assert ds.events == os.path.join(folder, "logs", "ev-*.csv.gz")
    assert ds.users == "/abs/users.jsonl"
    assert ds.items == "gs://bucket/items.jsonl"
    assert ds.name == "synthetic" and ds.source == path
    # The config text has no data: section and round-trips to the same config.
    assert "data" not in yaml.safe_load(ds.config_yaml)
    assert ds.config == fc.from_dict(_config())


def test_relative_dirs_and_parent_globs(tmp_path):
    path = _write(str(tmp_path / "a" / "b"), {**_config(), "data": {"events": "../ev.jsonl"}})
    assert dataset.load(path).events == os.path.join(str(tmp_path), "a", "ev.jsonl")


def test_side_tables_optional(tmp_path):
    ds = dataset.load(_write(str(tmp_path), {**_config(), "data": {"events": "e.jsonl"}}))
    assert (ds.users, ds.items) == (None, None)
    assert ds.tables == {"events": os.path.join(str(tmp_path), "e.jsonl"), "users": None,
                         "items": None}


def test_base_dir_override_for_a_remote_data_root(tmp_path):
    path = _write(str(tmp_path), {**_config(), "data": {"events": "ev/*.gz", "users": "u.csv"}})
    ds = dataset.load(path, base_dir="gs://bucket/raw/")
    assert (ds.events, ds.users) == ("gs://bucket/raw/ev/*.gz", "gs://bucket/raw/u.csv")


@pytest.mark.parametrize("glob, base, expected", [
    ("x/*.gz", "/data", "/data/x/*.gz"),
    ("/abs/x.gz", "/data", "/abs/x.gz"),
    ("s3://b/x.gz", "/data", "s3://b/x.gz"),
    ("x.gz", "gs://b/root", "gs://b/root/x.gz"),
    ("./x.gz", "/data/", "/data/x.gz"),
])
def test_resolve_glob(glob, base, expected):
    assert dataset.resolve_glob(glob, base) == expected


def test_builtin_keeps_the_shipped_text():
    ds = dataset.builtin("movielens", "/r/events.*", "/r/users.*", "/r/items.*")
    with open(fc.builtin_config_path("movielens"), encoding="utf-8") as f:
        assert ds.config_yaml == f.read()
    assert (ds.name, ds.source, ds.events) == ("movielens", "movielens", "/r/events.*")


@pytest.mark.parametrize("data, expected", [
    ("synthetic", False), ("movielens", False), ("mine.yaml", True), ("x.yml", True),
    (os.path.join("datasets", "mine"), True)])
def test_is_dataset_file(data, expected):
    assert dataset.is_dataset_file(data) is expected


class ErrorsTest(parameterized.TestCase):
    """Each malformed dataset names the file and the key."""

    def _folder(self) -> str:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        return folder

    @parameterized.named_parameters(
        ("no_data", None, "no 'data:' section"),
        ("data_not_mapping", ["e.csv"], "'data' must be a mapping"),
        ("no_events", {"users": "u.csv"}, "'data.events' is required"),
        ("unknown_table", {"events": "e.csv", "clicks": "c.csv"}, r"unknown keys \['clicks'\]"),
        ("empty_events", {"events": "  "}, "'data.events' must be a non-empty string"),
        ("users_not_string", {"events": "e.csv", "users": 3},
         "'data.users' must be a non-empty string .a glob., got 3"),
    )
    def test_bad_data_section(self, data, message):
        folder = self._folder()
        raw = _config() if data is None else {**_config(), "data": data}
        path = _write(folder, raw)
        with self.assertRaisesRegex(dataset.DatasetError, f"^{path}: .*{message}"):
            dataset.load(path)

    def test_bad_feature_config_names_the_file(self):
        folder = self._folder()
        path = _write(folder, {**_config(), "colour": 1, "data": {"events": "e.csv"}})
        with self.assertRaisesRegex(fc.FeatureConfigError, f"^{path}: .*colour"):
            dataset.load(path)

    def test_missing_file(self):
        with self.assertRaisesRegex(dataset.DatasetError, "nowhere.yaml: no such dataset file"):
            dataset.load("/nowhere.yaml")

    def test_not_yaml(self):
        path = os.path.join(self._folder(), "bad.yaml")
        with open(path, "w") as f:
            f.write("data: [unclosed\n")
        with self.assertRaisesRegex(dataset.DatasetError, "bad.yaml: not valid YAML"):
            dataset.load(path)
