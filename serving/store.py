"""The real-time user store: profile features and recent clicks per user.

`InMemoryStore` is the default (one process); `RedisStore` shares state across
recommender replicas and, with Redis persistence on (serving_configs/redis.conf,
which serving.local_redis uses), survives a Redis restart. Both keep the clicks
newest-last and capped at `max_clicks` (the history feature's max_len), so what
the towers see is exactly the history sequence they were trained on.

Redis layout: hash-free, two keys per user, plus one marker
  <prefix>user:<id>    JSON object of raw profile features
  <prefix>clicks:<id>  list of item ids, newest last (RPUSH + LTRIM)
  <prefix>seeded       JSON {"at", "users", "click_users", ...} written by the
                       seeding; a store without it has lost its state (a Redis
                       restarted without persistence), and readiness says so.

A Redis that cannot be reached, or is still loading its data after a restart,
raises `StoreUnavailable` (the recommender answers 503) within `timeout_s`; the
client reconnects by itself on the next call once Redis is back.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit


class StoreUnavailable(Exception):
    """The store cannot answer now (down, unreachable, or loading after a restart)."""


class UserStore(Protocol):
    def get_profile(self, user_id: str) -> dict[str, Any] | None: ...

    def put_profile(self, user_id: str, profile: Mapping[str, Any]) -> None: ...

    def recent_clicks(self, user_id: str) -> list[str]: ...

    def add_click(self, user_id: str, item_id: str) -> None: ...

    def set_clicks(self, user_id: str, item_ids: Sequence[str]) -> None: ...

    def user_state(self, user_id: str) -> tuple[dict[str, Any] | None, list[str]]: ...

    def ping(self) -> None: ...

    def mark_seeded(self, info: Mapping[str, Any]) -> None: ...

    def seed_info(self) -> dict[str, Any] | None: ...


class InMemoryStore:
    """Thread-safe in-process store."""

    def __init__(self, max_clicks: int = 50):
        if max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
        self.max_clicks = max_clicks
        self._lock = threading.Lock()
        self._profiles: dict[str, dict[str, Any]] = {}
        self._clicks: dict[str, deque[str]] = {}
        self._seeded: dict[str, Any] | None = None

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

    def ping(self) -> None:
        """Always reachable (the readiness check of RedisStore)."""

    def mark_seeded(self, info: Mapping[str, Any]) -> None:
        self._seeded = dict(info)

    def seed_info(self) -> dict[str, Any] | None:
        return self._seeded


def _json_object(raw: str | None) -> dict[str, Any] | None:
    """A stored JSON object (a profile, the marker); anything else reads as missing."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class RedisStore:
    """Redis-backed store (`redis` package); every method is one round trip.

    Args:
      url: redis://host:port/db.
      max_clicks: clicks kept per user.
      prefix: key prefix, so several deployments can share one Redis.
      timeout_s: connect and read timeout of each call: a Redis that is down
        or stalled costs a request at most about twice this (one retry, which
        also replaces a connection a Redis restart broke).
    Raises:
      StoreUnavailable: Redis does not answer at start-up.
    """

    def __init__(self, url: str, max_clicks: int = 50, prefix: str = "feedrec:",
                 timeout_s: float = 1.0):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
        self.max_clicks = max_clicks
        self.prefix = prefix
        parts = urlsplit(url)
        self.where = f"redis://{parts.hostname}:{parts.port or 6379}{parts.path}"  # no password
        # redis-py's default retries 10 times with backoff: seconds per request while Redis is down.
        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout_s,
                                           socket_connect_timeout=timeout_s,
                                           retry=Retry(NoBackoff(), 1))
        self._errors_type = redis.RedisError
        self.ping()  # fail at start-up, not on the first request

    @contextlib.contextmanager
    def _calls(self) -> Iterator[None]:
        """Maps Redis' errors (connection, timeout, LOADING, MISCONF, ...) to StoreUnavailable."""
        try:
            yield
        except self._errors_type as err:
            raise StoreUnavailable(f"store {self.where}: {type(err).__name__}: "
                                   f"{str(err)[:200]}") from err

    def _user(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}"

    def _clicks(self, user_id: str) -> str:
        return f"{self.prefix}clicks:{user_id}"

    def get_profile(self, user_id: str) -> dict[str, Any] | None:
        with self._calls():
            return _json_object(self._redis.get(self._user(user_id)))

    def put_profile(self, user_id: str, profile: Mapping[str, Any]) -> None:
        with self._calls():
            self._redis.set(self._user(user_id), json.dumps(dict(profile)))

    def put_profiles(self, profiles: Mapping[str, Mapping[str, Any]]) -> None:
        with self._calls():
            pipe = self._redis.pipeline(transaction=False)
            for user_id, profile in profiles.items():
                pipe.set(self._user(user_id), json.dumps(dict(profile)))
            pipe.execute()

    def recent_clicks(self, user_id: str) -> list[str]:
        with self._calls():
            return list(self._redis.lrange(self._clicks(user_id), 0, -1))

    def user_state(self, user_id: str) -> tuple[dict[str, Any] | None, list[str]]:
        """(profile or None, recent clicks) in one round trip (a pipeline of GET + LRANGE)."""
        with self._calls():
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(self._user(user_id))
            pipe.lrange(self._clicks(user_id), 0, -1)
            raw, clicks = pipe.execute()
        return _json_object(raw), list(clicks)

    def add_click(self, user_id: str, item_id: str) -> None:
        # RPUSH + LTRIM in one MULTI, so readers never see more than max_clicks.
        with self._calls():
            pipe = self._redis.pipeline(transaction=True)
            pipe.rpush(self._clicks(user_id), item_id)
            pipe.ltrim(self._clicks(user_id), -self.max_clicks, -1)
            pipe.execute()

    def set_clicks(self, user_id: str, item_ids: Sequence[str]) -> None:
        """Replaces the user's recent clicks atomically (oldest first)."""
        key = self._clicks(user_id)
        with self._calls():
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(key)
            if item_ids:
                pipe.rpush(key, *list(item_ids)[-self.max_clicks:])
            pipe.execute()

    def ping(self) -> None:
        """Raises StoreUnavailable unless Redis answers (and has finished loading its data)."""
        with self._calls():
            self._redis.ping()

    def mark_seeded(self, info: Mapping[str, Any]) -> None:
        with self._calls():
            self._redis.set(f"{self.prefix}seeded", json.dumps(dict(info)))

    def seed_info(self) -> dict[str, Any] | None:
        """The seeding marker, None when the store lost it (see the module docstring)."""
        with self._calls():
            return _json_object(self._redis.get(f"{self.prefix}seeded"))


def make_store(redis_url: str | None, max_clicks: int) -> InMemoryStore | RedisStore:
    """RedisStore when a URL is given, else InMemoryStore."""
    return RedisStore(redis_url, max_clicks) if redis_url else InMemoryStore(max_clicks)
