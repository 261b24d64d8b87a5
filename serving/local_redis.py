"""A private redis-server on a loopback port: the store of tests, benchmarks and a local
`serve --workers`, started on serving_configs/redis.conf.

The shipped configuration persists every write to an append-only file in the
server's directory (fsync once a second), so a Redis that is stopped, killed
or restarted on the same directory comes back with every user's profile and
recent clicks, including clicks ingested since start-up; `persist=False`
gives the old throw-away server. Production points serve --redis_url at a
managed Redis configured the same way (serving_configs/README.md).

  python -m serving.local_redis --dir work/redis [--port 6379]   # until SIGTERM
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence

import portpicker

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "serving_configs", "redis.conf")


class LocalRedis:
    """Starts redis-server and waits until it answers PING (and has loaded its data).

    Args:
      directory: redis-server's working directory (its append-only file lives here).
      timeout_s: how long to wait for the first PING.
      persist: use serving_configs/redis.conf (append-only file); False: keep nothing.
      port: loopback port; a free one when None.
    Attributes:
      url: redis://127.0.0.1:<port>/0.
    Raises:
      FileNotFoundError: redis-server is not installed.
      RuntimeError: it did not answer within timeout_s.
    """

    def __init__(self, directory: str, timeout_s: float = 20.0, persist: bool = True,
                 port: int | None = None):
        self._binary = shutil.which("redis-server")
        if self._binary is None:
            raise FileNotFoundError("redis-server is not installed: run `make system-deps` "
                                    "(apt-get install redis-server)")
        self.directory = directory
        self.persist = persist
        self.port = port or portpicker.pick_unused_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None
        self.start()

    def _command(self) -> list[str]:
        settings = ([CONFIG] if self.persist
                    else ["--save", "", "--appendonly", "no"])
        return [self._binary, *settings, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.directory]

    def start(self) -> None:
        """Starts the server (again, after `stop` or `kill`) and waits for it."""
        import redis

        self._proc = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                client.ping()  # raises BusyLoadingError (a ConnectionError) while loading
                client.close()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server on {self.url} did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=20)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=20)

    def __enter__(self) -> "LocalRedis":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a persistent redis-server for serve --redis_url")
    parser.add_argument("--dir", required=True, help="data directory (the append-only file)")
    parser.add_argument("--port", type=int, default=6379)
    args = parser.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    from serving.lifecycle import wait_for_termination

    server = LocalRedis(os.path.abspath(args.dir), port=args.port)
    print(f"redis-server on {server.url} (data in {args.dir}); SIGTERM to stop", flush=True)
    try:
        wait_for_termination()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
