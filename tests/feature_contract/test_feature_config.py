"""Feature config: loading, validation errors that name the bad value, round trip."""

import pytest
import yaml

from feature_contract import feature_config as fc


@pytest.mark.parametrize("name", ["synthetic", "movielens"])
def test_builtin_configs_load_and_round_trip(name, tmp_path):
    config = fc.load(fc.builtin_config_path(name))
    assert {f.field for f in config.features} == set(fc.FIELDS)
    assert config.item_id_feature.name == "item_id"
    assert config.history_feature.of == "item_id"
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert fc.load(path) == config


def test_synthetic_roles_and_lookups():
    config = fc.load(fc.builtin_config_path("synthetic"))
    assert config.role(fc.ROLE_ITEM_CITY).raw_column == "city"
    assert config.role(fc.ROLE_ITEM_CITY).field == fc.ITEM
    assert config.feature("user_id").num_buckets == 100001  # hashed + reserved 0
    assert config.feature("item_age_hours").num_buckets == 12  # 10 boundaries
    assert [f.name for f in config.field_features(fc.CONTEXT)] == ["network", "os", "tab", "hour"]
    names = {f.name for f in config.vocab_features}
    assert "user_id" not in names and "clicked_item_list" not in names and "item_tags" in names


def _minimal(**overrides):
    raw = {
        "name": "t",
        "features": [
            {"name": "user_id", "field": "user", "type": "categorical", "source": "users",
             "vocab_size": 10},
            {"name": "item_id", "field": "item", "type": "categorical", "source": "items",
             "vocab_size": 10},
            {"name": "hour", "field": "context", "type": "categorical", "source": "derived",
             "derive": "hour_of_day", "vocab_size": 24},
        ],
    }
    raw.update(overrides)
    return raw


def test_minimal_config_is_valid():
    config = fc.from_dict(_minimal())
    assert config.session_gap_seconds == 1800 and config.min_session_len == 5
    assert config.history_feature is None


def test_a_strptime_timestamp_unit_loads_and_round_trips(tmp_path):
    config = fc.from_dict(_minimal(timestamp_unit="%m/%d/%Y %I:%M:%S %p"))
    assert fc.is_time_format(config.timestamp_unit) and not fc.is_time_format("iso8601")
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert fc.load(path).timestamp_unit == "%m/%d/%Y %I:%M:%S %p"


def test_attribution_window_defaults_to_the_session_gap_and_round_trips(tmp_path):
    config = fc.from_dict(_minimal(session_gap_seconds=600))
    assert config.attribution_window_seconds is None and config.attribution_window == 600
    assert config.impression_id_column is None
    config = fc.from_dict(_minimal(session_gap_seconds=600, attribution_window_seconds=0,
                                   impression_id_column="request_id"))
    assert config.attribution_window == 0  # 0 is a window (same second), not "unset"
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    loaded = fc.load(path)
    assert loaded == config
    assert (loaded.attribution_window_seconds, loaded.impression_id_column) == (0, "request_id")


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["features"][0].update(field="person"), "field 'person'"),
    (lambda r: r["features"][0].update(type="blob"), "type 'blob'"),
    (lambda r: r["features"][0].update(vocab_size=0),
     "feature 'user_id': vocab_size must be a positive integer, got 0"),
    (lambda r: r["features"][0].update(vocab_size="10"),
     "features[0] ('user_id') vocab_size must be an integer, got '10' (str)"),
    (lambda r: r["features"][0].update(vocab_size=2.5),
     "features[0] ('user_id') vocab_size must be an integer, got 2.5 (float)"),
    (lambda r: r["features"][0].update(min_count=0),
     "feature 'user_id': min_count must be a positive integer, got 0"),
    (lambda r: r["features"][1].update(boundaries="1,2"),
     "features[1] ('item_id') boundaries must be a list of numbers, got '1,2' (str)"),
    (lambda r: r["features"][0].update(name="../../gender"),
     "feature '../../gender': a name is letters, digits, '_' and '-'"),
    (lambda r: r["features"][0].update(name="a.b"), "feature 'a.b': a name is"),
    (lambda r: r.update(eval_fraction="0.2"), "eval_fraction must be a number, got '0.2' (str)"),
    (lambda r: r.update(session_gap_seconds="30m"),
     "session_gap_seconds must be an integer, got '30m' (str)"),
    (lambda r: r.update(timestamp_unit=1), "timestamp_unit must be a string, got 1 (int)"),
    (lambda r: r.update(timestamp_unit="seconds"),
     "timestamp_unit 'seconds' is neither one of ('s', 'ms', 'iso8601') nor a strptime format "
     "that reads back what it writes (e.g. '%m/%d/%Y %I:%M:%S %p' for '11/11/2019 9:05:58 PM')"),
    (lambda r: r.update(timestamp_unit="%Y-%Q"), "timestamp_unit '%Y-%Q' is neither"),
    (lambda r: r.update(min_timestamp="2030-01-01", max_timestamp="2020-01-01"),
     "min_timestamp 1893456000 is not before max_timestamp 1577836800"),
    (lambda r: r.update(min_timestamp="last year"),
     "min_timestamp must be unix seconds or an ISO date / time, got 'last year' (str)"),
    (lambda r: r.update(max_dead_letter_fraction=1.5), "max_dead_letter_fraction 1.5 not in [0, 1]"),
    (lambda r: r.update(vocab_min_count=0), "vocab_min_count must be a positive integer, got 0"),
    (lambda r: r.update(split={"mode": "shuffle"}), "split.mode 'shuffle' not in ("),
    (lambda r: r.update(split={"mode": "timestamp"}), "split.mode timestamp needs split.timestamp"),
    (lambda r: r.update(split={"eval_fraction": "0.2"}),
     "split.eval_fraction must be a number, got '0.2' (str)"),
    (lambda r: r.update(split={"eval_fraction": 0.0}), "eval_fraction 0.0 not in (0, 1)"),
    (lambda r: r.update(split={"timestamp": 5}), "split.timestamp is only read by split.mode"),
    (lambda r: r.update(split={"colour": 1}), "split has unknown keys ['colour']"),
    (lambda r: r.update(split={"eval_fraction": 0.1}, eval_fraction=0.1),
     "give eval_fraction inside the split: section, not also at the top level"),
    (lambda r: r.update(split=0.2), "split must be a mapping, got 0.2 (float)"),
    (lambda r: r["features"][0].update(hash_buckets=5), "not both"),
    (lambda r: r["features"][2].update(derive="minute"), "derive 'minute'"),
    (lambda r: r["features"].append(dict(r["features"][0])), "duplicate feature names"),
    (lambda r: r["features"].append({"name": "click", "field": "user", "type": "categorical",
                                     "source": "users", "vocab_size": 2}), "reserved"),
    (lambda r: r["features"].append({"name": "x", "field": "user", "type": "numeric",
                                     "source": "users", "boundaries": [3, 1]}), "ascending"),
    (lambda r: r["features"].append({"name": "h", "field": "user", "type": "sequence",
                                     "source": "history", "of": "nope"}), "of='nope'"),
    (lambda r: r["features"].pop(2), "field 'context' has no features"),
    (lambda r: r.update(roles={"item_city": "ghost"}), "unknown feature 'ghost'"),
    (lambda r: r.update(event_values={"view": "watch"}), "event_values map to ['watch']"),
    (lambda r: r.update(eval_fraction=1.5), "eval_fraction"),
    (lambda r: r.update(colour="red"), "unknown top-level keys ['colour']"),
    (lambda r: r["features"][0].update(size=3), "unknown keys ['size']"),
    (lambda r: r.update(attribution_window_seconds=-1),
     "attribution_window_seconds must be an integer >= 0, got -1"),
    (lambda r: r.update(attribution_window_seconds=True),
     "attribution_window_seconds must be an integer >= 0, got True"),
    (lambda r: r.update(attribution_window_seconds="1h"),
     "attribution_window_seconds must be an integer >= 0, got '1h'"),
    (lambda r: r.update(impression_id_column=""),
     "impression_id_column must be a non-empty string, got ''"),
    (lambda r: r.update(impression_id_column="item_id"),
     "impression_id_column 'item_id' is already one of the event columns "
     "['timestamp', 'user_id', 'item_id', 'event']"),
])
def test_invalid_configs_name_the_bad_value(mutate, message):
    raw = _minimal()
    mutate(raw)
    with pytest.raises(fc.FeatureConfigError, match=_escape(message)):
        fc.from_dict(raw)


def _escape(text):
    import re
    return re.escape(text)


def test_load_reports_path_and_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("features: [unclosed")
    with pytest.raises(fc.FeatureConfigError, match="not valid YAML"):
        fc.load(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text(yaml.safe_dump({"name": "x", "features": []}))
    with pytest.raises(fc.FeatureConfigError, match="empty.yaml: feature config needs"):
        fc.load(empty)


def test_type_error_names_file_and_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(_minimal(eval_fraction="0.2")))
    with pytest.raises(fc.FeatureConfigError) as err:
        fc.load(path)
    assert str(err.value) == f"{path}: eval_fraction must be a number, got '0.2' (str)"


def test_data_section_is_ignored_and_dates_are_accepted(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(_minimal()) + (
        "data: {events: events/*.csv}\n"
        "min_timestamp: 2020-01-01\n"  # YAML: a date
        "max_timestamp: '2020-01-02T12:00:00+01:00'\n"))
    config = fc.load(path)
    assert config.min_timestamp == 1577836800  # 2020-01-01T00:00:00Z
    assert config.max_timestamp == 1577836800 + 86400 + 11 * 3600
    assert "data" not in config.to_dict()


def test_split_section_defaults_legacy_eval_fraction_and_round_trip(tmp_path):
    assert fc.from_dict(_minimal()).split == fc.SplitSpec(
        mode="time_span", eval_fraction=0.2, timestamp=None, seed=0, validation_fraction=0.1)
    legacy = fc.from_dict(_minimal(eval_fraction=0.3))
    assert legacy.split.mode == fc.SPLIT_TIME_SPAN and legacy.eval_fraction == 0.3
    config = fc.from_dict(_minimal(split={"mode": "timestamp", "timestamp": "2020-06-01"}))
    assert config.split.timestamp == 1590969600
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert fc.load(path) == config
    random = fc.from_dict(_minimal(split={"mode": "random_users", "eval_fraction": 0.5,
                                          "seed": 7}))
    assert (random.split.seed, random.eval_fraction) == (7, 0.5)


def test_vocab_size_is_optional_with_min_count_and_cap():
    raw = _minimal(vocab_min_count=3, vocab_max_size=500)
    raw["features"][0].pop("vocab_size")
    raw["features"][1]["min_count"] = 4
    config = fc.from_dict(raw)
    assert config.vocab_rule(config.feature("user_id")) == (3, 500)  # config defaults
    assert config.vocab_rule(config.feature("item_id")) == (4, 10)  # explicit size + min
    assert config.vocab_rule(config.feature("hour")) == (1, 24)  # size alone: top N
    assert fc.from_dict(_minimal()).vocab_min_count == 2
    assert fc.from_dict(_minimal()).vocab_max_size == 100_000


def test_side_table_columns_beyond_the_key():
    config = fc.load(fc.builtin_config_path("movielens"))
    assert config.side_table_columns(fc.SOURCE_USERS) == (
        "age", "gender", "occupation", "zip_prefix")
    config = fc.from_dict(_minimal())  # only the id features read the side tables
    assert config.side_table_columns(fc.SOURCE_USERS) == ()
    assert config.side_table_columns(fc.SOURCE_ITEMS) == ()
    config = fc.from_dict(_minimal(item_created_column="created"))
    assert config.side_table_columns(fc.SOURCE_ITEMS) == ("created",)


def test_unknown_builtin_config():
    with pytest.raises(fc.FeatureConfigError, match="no built-in feature config 'nope'"):
        fc.builtin_config_path("nope")
