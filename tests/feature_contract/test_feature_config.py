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
    (lambda r: r["features"][0].pop("vocab_size"), "needs vocab_size or hash_buckets"),
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


def test_unknown_builtin_config():
    with pytest.raises(fc.FeatureConfigError, match="no built-in feature config 'nope'"):
        fc.builtin_config_path("nope")
