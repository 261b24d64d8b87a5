"""A real redis-server killed and restarted under load: readiness, 503s, and no state lost.

serve runs as `make serve SERVE_FLAGS="--redis_url ..."` would, on a Redis started by
serving.local_redis on serving_configs/redis.conf (append-only file). Loopback only;
~40 s, most of it starting serve twice.
"""
import gzip
import http.client
import json
import shutil
import subprocess
import sys
import threading
import time

import pytest
import redis

from serving.local_redis import LocalRedis

from .conftest import REPO

SEEDED = [f"u{i}" for i in range(8)]


def _request(port: int, method: str, path: str, body=None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, json.dumps(body).encode() if body is not None else None,
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _wait_for(predicate, timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _personalised(port: int, user: str) -> bool:
    """A seeded user with clicks gets recall channels only; a cold-start user gets popular ones."""
    status, body = _request(port, "POST", "/recommend", {"user_id": user, "k": 10})
    assert status == 200, body
    channels = {c for item in body["items"] for c in item["channels"]}
    return "item2vec" in channels and not channels & {"popular", "popular_city"}


def _serve(serving_dir, url: str, *flags: str, ready=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "serving.serve", "--serving_dir", str(serving_dir),
         "--data", "synthetic", "--port", "0", "--rest_api_port", "0", "--recommender_port", "0",
         "--redis_url", url, *(["--ready_file", str(ready)] if ready else []), *flags],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def world_with_clicks(world, tmp_path):
    """The toy world plus an events table: every SEEDED user has three clicks."""
    serving_dir = tmp_path / "serving"
    shutil.copytree(world["root"], serving_dir)
    rows = [{"timestamp": 1_700_000_000 + 60 * j, "user_id": user, "item_id": f"i{7 * i + j}",
             "event": "click"} for i, user in enumerate(SEEDED) for j in range(3)]
    with gzip.open(serving_dir / "events.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return serving_dir


def test_redis_killed_and_restarted_under_load(world_with_clicks, tmp_path):
    data = tmp_path / "redis"
    data.mkdir()
    try:
        store = LocalRedis(str(data))
    except FileNotFoundError as err:
        pytest.fail(str(err))
    ready = tmp_path / "ready.json"
    proc = _serve(world_with_clicks, store.url, ready=ready)
    try:
        _wait_for(ready.exists, 180, "serve")
        assert proc.poll() is None
        port = json.loads(ready.read_text())["recommender_port"]
        assert _request(port, "GET", "/readyz")[0] == 200
        assert all(_personalised(port, user) for user in SEEDED)
        # A click ingested now is in no table: only persistence can keep it.
        assert _request(port, "POST", "/ingest", {"user_id": "u0", "item_id": "i299"}) == (
            200, {"history_changed": True})

        answers, stop = [], threading.Event()

        def load(user: str) -> None:
            while not stop.is_set():
                try:
                    answers.append(_request(port, "POST", "/recommend",
                                            {"user_id": user, "k": 5}))
                except (OSError, http.client.HTTPException) as err:  # a dropped connection
                    answers.append((None, {"error": repr(err)}))

        threads = [threading.Thread(target=load, args=(u,)) for u in SEEDED[:4]]
        for t in threads:
            t.start()
        time.sleep(0.5)
        store.kill()  # SIGKILL, as a crash
        _wait_for(lambda: _request(port, "GET", "/readyz")[0] == 503, 10, "readiness to drop")
        status, body = _request(port, "GET", "/readyz")
        assert body["ready"] is False and body["checks"]["store"].startswith(
            f"store redis://127.0.0.1:{store.port}/0: ConnectionError")
        assert _request(port, "GET", "/healthz")[0] == 200  # alive all the same
        outage = len(answers)
        time.sleep(1.0)
        store.start()  # same port, same directory: Redis replays its append-only file
        _wait_for(lambda: _request(port, "GET", "/readyz")[0] == 200, 20, "readiness to return")
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()

        statuses = [s for s, _ in answers]
        assert None not in statuses, [a for a in answers if a[0] is None][:3]
        assert set(statuses) == {200, 503}
        during = [b["error"] for s, b in answers[outage:] if s == 503]
        assert during and all(e.startswith("store unavailable: store redis://") for e in during)
        assert statuses[-1] == 200  # reconnected by itself
        assert all(_personalised(port, user) for user in SEEDED)
        assert redis.Redis.from_url(store.url, decode_responses=True).lrange(
            "feedrec:clicks:u0", 0, -1) == ["i0", "i1", "i2", "i299"]

        # A Redis restarted WITHOUT its data: not ready (not silently cold-start) until re-seeded.
        store.kill()
        shutil.rmtree(data)
        data.mkdir()
        store.start()
        _wait_for(lambda: _request(port, "GET", "/readyz")[0] == 503, 10, "lost state to show")
        checks = _request(port, "GET", "/readyz")[1]["checks"]
        assert checks["store"].startswith("the store has lost its seeded state")
        reseed = _serve(world_with_clicks, store.url, "--reseed_only")
        output = reseed.communicate(timeout=180)[0]
        assert reseed.returncode == 0, output
        assert _request(port, "GET", "/readyz")[0] == 200
        assert all(_personalised(port, user) for user in SEEDED)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
        store.stop()
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output[-3000:]
