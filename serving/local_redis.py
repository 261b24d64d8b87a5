"""A private, throw-away redis-server on a free loopback port (tests and benchmarks).

Production points serve --redis_url at a managed Redis; the tests and
`make bench-serving` need a real one of their own, from the Debian package
(`make system-deps`). Nothing is persisted: no RDB snapshots, no AOF.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import portpicker


class LocalRedis:
    """Starts redis-server and waits until it answers PING.

    Args:
      directory: redis-server's working directory (scratch).
      timeout_s: how long to wait for the first PING.
    Attributes:
      url: redis://127.0.0.1:<port>/0.
    Raises:
      FileNotFoundError: redis-server is not installed.
      RuntimeError: it did not answer within timeout_s.
    """

    def __init__(self, directory: str, timeout_s: float = 20.0):
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed: run `make system-deps` "
                                    "(apt-get install redis-server)")
        port = portpicker.pick_unused_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        self._proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", directory],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server on {self.url} did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=20)

    def __enter__(self) -> "LocalRedis":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
