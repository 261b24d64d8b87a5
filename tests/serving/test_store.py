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
