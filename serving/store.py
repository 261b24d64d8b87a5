"""The real-time user store: profile features and recent clicks per user.

`InMemoryStore` is the default (one process); `RedisStore` shares state across
recommender replicas and survives restarts. Both keep the clicks newest-last
and capped at `max_clicks` (the history feature's max_len), so what the
towers see is exactly the history sequence they were trained on.

Redis layout: hash-free, two keys per user
  <prefix>user:<id>    JSON object of raw profile features
  <prefix>clicks:<id>  list of item ids, newest last (RPUSH + LTRIM)
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class UserStore(Protocol):
    def get_profile(self, user_id: str) -> dict[str, Any] | None: ...

    def put_profile(self, user_id: str, profile: Mapping[str, Any]) -> None: ...

    def recent_clicks(self, user_id: str) -> list[str]: ...

    def add_click(self, user_id: str, item_id: str) -> None: ...

    def set_clicks(self, user_id: str, item_ids: Sequence[str]) -> None: ...

    def user_state(self, user_id: str) -> tuple[dict[str, Any] | None, list[str]]: ...


class InMemoryStore:
    """Thread-safe in-process store."""

    def __init__(self, max_clicks: int = 50):
        if max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
        self.max_clicks = max_clicks
        self._lock = threading.Lock()
        self._profiles: dict[str, dict[str, Any]] = {}
        self._clicks: dict[str, deque[str]] = {}

    def get_profile(self, user_id: str) -> dict[str, Any] | None:
        with self._lock:
            profile = self._profiles.get(user_id)
            return dict(profile) if profile is not None else None

    def put_profile(self, user_id: str, profile: Mapping[str, Any]) -> None:
        with self._lock:
            self._profiles[user_id] = dict(profile)

    def recent_clicks(self, user_id: str) -> list[str]:
        with self._lock:
            return list(self._clicks.get(user_id, ()))

    def user_state(self, user_id: str) -> tuple[dict[str, Any] | None, list[str]]:
        """(profile or None, recent clicks), read together: what a recommend needs."""
        with self._lock:
            profile = self._profiles.get(user_id)
            return (dict(profile) if profile is not None else None,
                    list(self._clicks.get(user_id, ())))

    def add_click(self, user_id: str, item_id: str) -> None:
        with self._lock:
            self._clicks.setdefault(user_id, deque(maxlen=self.max_clicks)).append(item_id)

    def set_clicks(self, user_id: str, item_ids: Sequence[str]) -> None:
        """Replaces the user's recent clicks (oldest first; the last max_clicks kept)."""
        with self._lock:
            self._clicks[user_id] = deque(item_ids, maxlen=self.max_clicks)

    def put_profiles(self, profiles: Mapping[str, Mapping[str, Any]]) -> None:
        with self._lock:
            self._profiles.update({k: dict(v) for k, v in profiles.items()})


class RedisStore:
    """Redis-backed store (`redis` package); every method is one round trip.

    Args:
      url: redis://host:port/db.
      max_clicks: clicks kept per user.
      prefix: key prefix, so several deployments can share one Redis.
    """

    def __init__(self, url: str, max_clicks: int = 50, prefix: str = "feedrec:"):
        import redis

        if max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
        self.max_clicks = max_clicks
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, decode_responses=True)
        self._redis.ping()  # fail at start-up, not on the first request

    def _user(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}"

    def _clicks(self, user_id: str) -> str:
        return f"{self.prefix}clicks:{user_id}"

    def get_profile(self, user_id: str) -> dict[str, Any] | None:
        raw = self._redis.get(self._user(user_id))
        return json.loads(raw) if raw is not None else None

    def put_profile(self, user_id: str, profile: Mapping[str, Any]) -> None:
        self._redis.set(self._user(user_id), json.dumps(dict(profile)))

    def put_profiles(self, profiles: Mapping[str, Mapping[str, Any]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for user_id, profile in profiles.items():
            pipe.set(self._user(user_id), json.dumps(dict(profile)))
        pipe.execute()

    def recent_clicks(self, user_id: str) -> list[str]:
        return list(self._redis.lrange(self._clicks(user_id), 0, -1))

    def user_state(self, user_id: str) -> tuple[dict[str, Any] | None, list[str]]:
        """(profile or None, recent clicks) in one round trip (a pipeline of GET + LRANGE)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._user(user_id))
        pipe.lrange(self._clicks(user_id), 0, -1)
        raw, clicks = pipe.execute()
        return (json.loads(raw) if raw is not None else None), list(clicks)

    def add_click(self, user_id: str, item_id: str) -> None:
        # RPUSH + LTRIM in one MULTI, so readers never see more than max_clicks.
        pipe = self._redis.pipeline(transaction=True)
        pipe.rpush(self._clicks(user_id), item_id)
        pipe.ltrim(self._clicks(user_id), -self.max_clicks, -1)
        pipe.execute()

    def set_clicks(self, user_id: str, item_ids: Sequence[str]) -> None:
        """Replaces the user's recent clicks atomically (oldest first)."""
        key = self._clicks(user_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(key)
        if item_ids:
            pipe.rpush(key, *list(item_ids)[-self.max_clicks:])
        pipe.execute()


def make_store(redis_url: str | None, max_clicks: int) -> InMemoryStore | RedisStore:
    """RedisStore when a URL is given, else InMemoryStore."""
    return RedisStore(redis_url, max_clicks) if redis_url else InMemoryStore(max_clicks)
