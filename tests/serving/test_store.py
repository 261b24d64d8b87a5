"""User stores: in-process and a real redis-server started on a free loopback port."""
import pytest

from serving.store import InMemoryStore, RedisStore, make_store


def _round_trip(store):
    assert store.get_profile("u1") is None and store.recent_clicks("u1") == []
    store.put_profile("u1", {"city": "c1", "interest_tags": ["a", "b"], "age": 3.0})
    assert store.get_profile("u1") == {"city": "c1", "interest_tags": ["a", "b"], "age": 3.0}
    for item in ["i1", "i2", "i3", "i4"]:
        store.add_click("u1", item)
    assert store.recent_clicks("u1") == ["i2", "i3", "i4"]  # newest last, capped at 3
    assert store.recent_clicks("u2") == []
    store.put_profiles({"u2": {"city": "c2"}})
    assert store.get_profile("u2") == {"city": "c2"}
    # set_clicks replaces the history and keeps only the newest max_clicks.
    store.set_clicks("u1", ["j1", "j2", "j3", "j4", "j5"])
    assert store.recent_clicks("u1") == ["j3", "j4", "j5"]
    store.set_clicks("u1", [])
    assert store.recent_clicks("u1") == []
    store.set_clicks("u1", ["i2", "i3", "i4"])
    # user_state reads both at once (one round trip on Redis).
    assert store.user_state("u1") == ({"city": "c1", "interest_tags": ["a", "b"], "age": 3.0},
                                      ["i2", "i3", "i4"])
    assert store.user_state("nobody") == (None, [])


def test_in_memory_round_trip():
    _round_trip(InMemoryStore(max_clicks=3))
    with pytest.raises(ValueError, match="max_clicks"):
        InMemoryStore(max_clicks=0)


def test_redis_round_trip(redis_url):
    store = make_store(redis_url, max_clicks=3)
    assert isinstance(store, RedisStore)
    _round_trip(store)
    # A second connection (another replica) sees the same state.
    assert RedisStore(redis_url, max_clicks=3).recent_clicks("u1") == ["i2", "i3", "i4"]


def test_read_recent_clicks_seeds_the_newest_clicks_in_time_order(tmp_path):
    import gzip
    import json

    from feature_contract import feature_config as fc
    from serving.catalogue import read_recent_clicks

    rows = [
        {"timestamp": 1700000300, "user_id": "u1", "item_id": "c", "event": "click"},
        {"timestamp": 1700000100, "user_id": "u1", "item_id": "a", "event": "click"},
        {"timestamp": 1700000200, "user_id": "u1", "item_id": "b", "event": "click"},
        {"timestamp": 1700000400, "user_id": "u1", "item_id": "d", "event": "impression"},
        {"timestamp": 1700000500, "user_id": "u2", "item_id": "a", "event": "click"},
        {"timestamp": "yesterday", "user_id": "u2", "item_id": "b", "event": "click"},
        {"timestamp": 1700000600, "user_id": "", "item_id": "b", "event": "click"},
    ]
    path = tmp_path / "events.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    config = fc.load(fc.builtin_config_path("synthetic"))
    clicks, bad = read_recent_clicks(str(path), config, max_clicks=2)
    # Sorted by time whatever the file order, the newest 2 kept; impressions ignored.
    assert clicks == {"u1": ["b", "c"], "u2": ["a"]}
    assert bad == 2  # unparseable timestamp, missing user
