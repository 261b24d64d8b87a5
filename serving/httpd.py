"""HTTP/1.1 front end shared by the model server's REST port and the recommender: every
request gets an answer, no client can hold a thread for long, and overflow is refused.

The standard library's ThreadingHTTPServer starts one thread per connection
without bound and waits forever for a client that stops sending; a request
whose Content-Length is missing, negative or not a number got no response at
all (measured before this module: 100 half-sent requests held 100 threads for
32 s on each port). Here:

* Timeouts. A request's line, headers and body must arrive within
  `read_timeout_s` of its first byte (a deadline over the whole request, not
  per read, so a client trickling one byte a second cannot stretch it); a
  keep-alive connection idle for `idle_timeout_s` is closed. A late request
  gets 408 and the connection is closed.
* A bounded pool. At most `max_connections` connections are served at once
  per port and process; a connection over that is answered
  `503 {"error": ...}` and closed by one small refusing thread (which
  drops connections outright when even its queue is full).
* Bodies. POST needs a decimal Content-Length (missing -> 411, chunked -> 411,
  anything else -> 400) of at most `max_body_bytes` (413, without reading
  it). Malformed or too deeply nested JSON -> 400. Each of these closes the
  connection, since the request's end is unknown.
* Errors are JSON `{"error": "..."}`, including the ones the standard
  library writes itself (bad request line, unknown method); a handler's
  unexpected exception is a 500 naming it, logged once per distinct error.
* TLS (optional): the accepted socket is wrapped without a handshake, which
  then runs on the connection's own thread under the read timeout, so a slow
  handshake never blocks the accept loop.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """Timeouts and size limits of one HTTP port.

    Attributes:
      read_timeout_s: a request (line, headers, body) must arrive within this
        many seconds of its first byte; also bounds writing a response.
      idle_timeout_s: a keep-alive connection without a request for this long
        is closed.
      max_connections: connections served at once (one thread each); more are
        refused with 503.
      max_body_bytes: largest accepted request body.
    """

    read_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    max_connections: int = 64
    max_body_bytes: int = 1 << 20

    def __post_init__(self):
        if min(self.read_timeout_s, self.idle_timeout_s) <= 0:
            raise ValueError(f"timeouts must be > 0: {self}")
        if min(self.max_connections, self.max_body_bytes) < 1:
            raise ValueError(f"max_connections and max_body_bytes must be >= 1: {self}")


class HttpError(Exception):
    """A request the handler refuses: the status and message to answer with.

    Attributes:
      status: HTTP status code.
      message: the `error` of the JSON body.
      close: close the connection after answering (the request's end is unknown).
    """

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


def parse_json(body: bytes) -> Any:
    """A request body as JSON (an empty body is {}).

    Raises:
      HttpError: 400 for malformed JSON or JSON nested past the interpreter's
        recursion limit (a 100,000-deep array raised RecursionError unanswered).
    """
    try:
        return json.loads(body or b"{}")
    except RecursionError as err:
        raise HttpError(400, "body is not usable JSON: nested too deeply") from err
    except ValueError as err:  # JSONDecodeError, bad UTF-8, ints over 4300 digits
        raise HttpError(400, f"body is not JSON: {str(err)[:200]}") from err


class _DeadlineReader(io.RawIOBase):
    """Socket reads that fail once `deadline` (time.monotonic) has passed.

    Each read waits at most for what is left of the deadline, so the whole
    request is bounded, however the client spaces its bytes. With no deadline
    the socket's own timeout applies (the idle wait between requests).
    """

    def __init__(self, sock: socket.socket):
        super().__init__()
        self._sock = sock
        self.deadline: float | None = None
        self.timed_out = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.timed_out = True
                raise TimeoutError("request not received within the read timeout")
            self._sock.settimeout(left)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            self.timed_out = self.deadline is not None
            raise


class _LogOnce:
    """Logs an error's traceback the first time its (type, first line) is seen."""

    def __init__(self, limit: int = 1000):
        self._seen: set[tuple[str, str]] = set()
        self._limit = limit
        self._lock = threading.Lock()

    def __call__(self, what: str, err: BaseException) -> None:
        key = (type(err).__name__, str(err).split("\n", 1)[0][:200])
        with self._lock:
            first = key not in self._seen and len(self._seen) < self._limit
            self._seen.add(key)
        if first:
            log.error("%s (logged once per distinct error)", what, exc_info=err)


log_once = _LogOnce()


class JsonRequestHandler(BaseHTTPRequestHandler):
    """Base handler: deadlines, body rules and JSON answers (see the module docstring).

    Subclasses set `limits` and implement `get()` / `post()`, answering with
    `send_json` or raising HttpError; they may override `internal_error` to
    map their own exceptions to statuses.
    """

    protocol_version = "HTTP/1.1"
    # Headers and body leave as two writes; with Nagle on, the body waits for
    # the client's delayed ACK of the headers (~40 ms on Linux) every request.
    disable_nagle_algorithm = True
    server_version = "feedrec"
    limits = HttpLimits()

    def log_message(self, fmt, *args):  # route to logging, not stderr
        log.debug("http %s", fmt % args)

    # ---- connection life -----------------------------------------------------
    def setup(self) -> None:
        self.request.settimeout(self.limits.read_timeout_s)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # here, not in the accept loop
        super().setup()
        self.rfile.close()  # the stdlib's reader: an open one would keep the socket from closing
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader, 65536)
        self._responded = False

    def handle_one_request(self) -> None:
        self._reader.deadline, self._reader.timed_out, self._responded = None, False, False
        # What an answer needs if the request line never arrives whole (408).
        self.requestline, self.command, self.request_version = "", None, "HTTP/1.1"
        try:
            self.connection.settimeout(self.limits.idle_timeout_s)
            if not self.rfile.peek(1):
                self.close_connection = True  # the client closed
                return
        except (OSError, ValueError):  # idle timeout, reset, or a file closed by a timeout
            self.close_connection = True
            return
        self._reader.deadline = time.monotonic() + self.limits.read_timeout_s
        super().handle_one_request()  # catches TimeoutError itself and closes
        if self._reader.timed_out and not self._responded:
            self.close_connection = True
            self._send_quietly(408, "request not received within "
                                    f"{self.limits.read_timeout_s:g} s (read timeout)")

    # ---- answering -----------------------------------------------------------
    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
        """Answers with a JSON (or text, for a str payload) body."""
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        # A client that stops reading cannot hold the thread longer than a slow request.
        self.connection.settimeout(self.limits.read_timeout_s)
        self._responded = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own errors (bad request line, unknown method), as JSON."""
        self.close_connection = self.close_connection or code >= 400
        if self.request_version in ("", "HTTP/0.9"):  # an unparsed request line: answer in 1.1
            self.request_version = "HTTP/1.1"
        self._send_quietly(code, message or self.responses.get(code, ("error",))[0])

    def _send_quietly(self, status: int, message: str) -> None:
        try:
            self.send_json(status, {"error": message})
        except OSError:
            pass  # the client is gone

    # ---- request bodies ------------------------------------------------------
    def read_body(self) -> bytes:
        """The request body, by the Content-Length rules of the module docstring.

        Raises:
          HttpError: 411 / 400 / 413 (connection to be closed).
          TimeoutError: the body did not arrive in time.
          ConnectionError: the client closed before sending it all.
        """
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "chunked bodies are not accepted: send Content-Length", close=True)
        values = [v.strip() for v in self.headers.get_all("Content-Length") or []]
        if not values:
            raise HttpError(411, "Content-Length is required", close=True)
        if len(set(values)) != 1 or not _CONTENT_LENGTH.fullmatch(values[0]):
            raise HttpError(400, f"bad Content-Length {values[0][:40]!r}: want one decimal "
                                 "byte count", close=True)
        length = int(values[0])
        if length > self.limits.max_body_bytes:
            raise HttpError(413, f"request body of {length:,} bytes exceeds the "
                                 f"{self.limits.max_body_bytes:,}-byte limit", close=True)
        body = self.rfile.read(length)
        if len(body) < length:
            raise ConnectionError(f"client sent {len(body)} of {length} body bytes and closed")
        return body

    def read_json(self) -> Any:
        """The body parsed as JSON (an empty body is {}).

        Raises:
          HttpError: 400 for malformed or too deeply nested JSON, else as read_body.
        """
        return parse_json(self.read_body())

    # ---- dispatch ------------------------------------------------------------
    def get(self) -> None:
        raise HttpError(404, f"no route GET {self.path[:200]}")

    def post(self) -> None:
        raise HttpError(404, f"no route POST {self.path[:200]}")

    def internal_error(self, err: Exception) -> tuple[int, str]:
        """(status, message) for an exception the handler did not map itself."""
        log_once(f"{self.command} {self.path[:200]} failed", err)
        return 500, f"internal error: {type(err).__name__}: {str(err)[:300]}"

    def do_GET(self):  # noqa: N802
        self._dispatch(self.get)

    def do_POST(self):  # noqa: N802
        self._dispatch(self.post)

    def _dispatch(self, route: Callable[[], None]) -> None:
        try:
            route()
            return
        except HttpError as err:
            status, message, close = err.status, err.message, err.close
        except (TimeoutError, ConnectionError, ssl.SSLError):
            self.close_connection = True  # handle_one_request answers a timeout with 408
            return
        except RecursionError:
            status, message, close = 400, "request nested too deeply", True
        except Exception as err:  # noqa: BLE001 - every request gets an answer
            (status, message), close = self.internal_error(err), False
        if self._responded:  # failed while writing the answer: nothing sane to add
            self.close_connection = True
            return
        self.close_connection = self.close_connection or close
        self._send_quietly(status, message)


class _Refuser:
    """One thread that answers connections over the limit with 503 and closes them.

    Args:
      release: called with each socket once answered (closes it).
      queue_size: connections waiting to be refused; beyond it they are
        closed without an answer.
    """

    def __init__(self, release: Callable[[socket.socket], None], queue_size: int = 1024):
        self._release = release
        self._queue: queue.Queue = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def refuse(self, sock: socket.socket, message: str | None) -> None:
        """Queues `sock` for a 503 with `message` (None: just close it, e.g. before TLS)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="http-refuser", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait((sock, message))
        except queue.Full:
            self._release(sock)

    def _loop(self) -> None:
        while True:
            sock, message = self._queue.get()
            try:
                if message is not None:
                    sock.settimeout(0.05)
                    try:
                        sock.recv(65536)  # the request, so closing does not reset the answer
                    except OSError:
                        pass
                    body = json.dumps({"error": message}).encode()
                    sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                                 b"application/json\r\nConnection: close\r\nRetry-After: 1\r\n"
                                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                                 + body)
            except OSError:
                pass
            finally:
                self._release(sock)


class HardenedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a connection cap, a refusing thread and optional TLS.

    Args:
      address: (host, port); port 0 picks a free one.
      handler: a JsonRequestHandler subclass (its `limits` set the cap).
      bind_and_activate: as socketserver.
      ssl_context: server-side TLS context, None for plain HTTP.
    Attributes:
      refused: connections answered 503 because the pool was full.
    """

    request_queue_size = 256  # listen backlog for bursts (the stdlib default is 5)
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[JsonRequestHandler],
                 bind_and_activate: bool = True, ssl_context: ssl.SSLContext | None = None):
        super().__init__(address, handler, bind_and_activate)
        self.max_connections = getattr(handler, "limits", HttpLimits()).max_connections
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._refuser = _Refuser(self.shutdown_request)
        self.ssl_context = ssl_context
        self.refused = 0

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            # Over TLS a plain-text answer would be noise: the connection is just closed.
            self._refuser.refuse(request, None if self.ssl_context else
                                 f"server busy: {self.max_connections} connections open; "
                                 "retry later")
            return
        try:
            if self.ssl_context is not None:
                request = self.ssl_context.wrap_socket(request, server_side=True,
                                                       do_handshake_on_connect=False)
            super().process_request(request, client_address)  # a thread per connection
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - logged by handle_error
            self.handle_error(request, client_address)
        finally:
            self._slots.release()  # first: once the peer sees the close, the slot is free
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a request (TLS handshake, reset): one debug line."""
        import sys
        err = sys.exc_info()[1]
        if isinstance(err, (OSError, ValueError)):
            log.debug("connection from %s dropped: %s", client_address, err)
        else:
            log_once(f"connection from {client_address} failed", err)


class ReusePortHTTPServer(HardenedHTTPServer):
    """HardenedHTTPServer that shares its port with sibling worker processes."""

    allow_reuse_port = True
