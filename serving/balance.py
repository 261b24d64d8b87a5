"""Even spread of HTTP connections over `serve --workers` processes.

With SO_REUSEPORT the kernel hashes each connection onto one worker's socket,
and a keep-alive connection stays there. A client holding 8 connections can
land 7 on one worker and 1 on the other: on the 2-core dev box the 7 then wait
~45 ms per recommend while the lone one gets ~13 ms, and the p99 follows the
busy worker. Blocking accept() on one shared socket does not alternate either
(measured: runs of 8 connections went 8-0 as often as 4-4).

So the workers share ONE listening socket (made by the supervisor, inherited
by fd) and a small shared file of open-connection counts, one slot per worker.
A worker accepts only while it holds no more connections than any sibling,
as nginx's workers stop accepting when they are busier than the others; a
connection that arrives while both are eligible goes to whichever accepts
first. Each worker writes only its own slot, so no lock spans processes.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import threading
import time
from typing import Any

from serving.httpd import HardenedHTTPServer

_SLOT_BYTES = 8


class ConnectionCounts:
    """Open connections per worker, in a file every worker maps.

    Args:
      path: the counts file (see `create`).
      index: this worker's slot.
    """

    def __init__(self, path: str, index: int):
        with open(path, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), 0)
        self._slots = memoryview(self._map).cast("q")
        if not 0 <= index < len(self._slots):
            raise ValueError(f"worker index {index} outside the {len(self._slots)} slots of {path}")
        self.index = index
        self._lock = threading.Lock()  # handler threads of this worker share the slot

    @staticmethod
    def create(path: str, workers: int) -> str:
        """Writes a zeroed counts file for `workers` workers; returns path."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        with open(path, "wb") as f:
            f.write(b"\0" * (_SLOT_BYTES * workers))
        return path

    def counts(self) -> list[int]:
        return list(self._slots)

    def eligible(self) -> bool:
        """True when this worker holds no more connections than any sibling."""
        slots = self._slots
        return slots[self.index] <= min(slots)

    def opened(self) -> None:
        with self._lock:
            self._slots[self.index] += 1

    def closed(self) -> None:
        with self._lock:
            self._slots[self.index] -= 1


class BalancedHTTPServer(HardenedHTTPServer):
    """A threading HTTP server on an inherited listening socket that accepts
    only while ConnectionCounts says this worker is the least loaded.

    Args:
      listen_fd: the shared listening socket's file descriptor.
      counts: this worker's view of the shared counts.
      handler: the request handler class (serving.httpd.JsonRequestHandler).
      ssl_context: server-side TLS, None for plain HTTP.
    """

    poll_s = 0.002  # how soon an ineligible worker looks again (cheap: one read)

    def __init__(self, listen_fd: int, counts: ConnectionCounts, handler: Any,
                 ssl_context: Any = None):
        super().__init__(("127.0.0.1", 0), handler, bind_and_activate=False,
                         ssl_context=ssl_context)
        self.socket.close()
        self.socket = socket.socket(fileno=listen_fd)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self.counts = counts
        self._stopping = threading.Event()

    def serve_balanced(self) -> None:
        """Accept loop (instead of serve_forever); returns after `stop_accepting`."""
        while not self._stopping.is_set():
            if not self.counts.eligible():
                time.sleep(self.poll_s)
                continue
            ready, _, _ = select.select([self.socket], [], [], 0.05)
            if not ready:
                continue
            try:
                conn, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                continue  # a sibling accepted it first
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            conn.setblocking(True)
            self.counts.opened()
            try:
                self.process_request(conn, address)  # ThreadingMixIn: a thread per connection
            except RuntimeError:  # no thread for it: refuse it, and do not count it as load
                self.shutdown_request(conn)

    def stop_accepting(self) -> None:
        self._stopping.set()

    def shutdown_request(self, request: socket.socket) -> None:
        self.counts.closed()  # first: once the peer sees the close, the slot is free
        super().shutdown_request(request)


def shared_listener(host: str, port: int, backlog: int = 256) -> socket.socket:
    """The listening socket the supervisor hands to its workers (inheritable)."""
    sock = socket.create_server((host, port), backlog=backlog)
    os.set_inheritable(sock.fileno(), True)
    return sock
