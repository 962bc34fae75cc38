"""HTTP requests that a server cannot hold: a total deadline per request, a cap on the answer's
size, and ``stop()`` that ends every request in flight at once (Ctrl-C).

A socket timeout bounds each read only: a server that sends one byte a second never trips
it, and one that streams without end fills memory. So a timer shuts the connection's socket
down when the request's time is up, the body is read in blocks and refused past the cap, and
every open connection is known, so that another thread can shut them all down.
"""
from __future__ import annotations

import http.client
import socket
import threading
import urllib.parse

from data.transfer import BLOCK, TooLarge, capped_blocks


def check_url(url: str, flag: str) -> None:
    """ValueError (one line) unless ``url`` is an http(s) address with a host and a valid
    port."""
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port
    except ValueError:
        raise ValueError(f"{flag} {url}: the port is not a number from 0 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{flag} {url}: give an http:// or https:// address with a host, "
                         f"e.g. http://127.0.0.1:8000/v1")


AnswerTooLarge = TooLarge  # the answer passed the size cap


class Stopped(Exception):
    """``Client.stop()`` ended the request (the run is being interrupted)."""


class _Line:
    """One request's connection and its socket (kept here: http.client drops ``conn.sock``
    when the answer will close the connection, while the answer is still being read)."""

    def __init__(self, conn: http.client.HTTPConnection):
        self.conn, self.sock = conn, None

    def shut(self) -> None:
        """Make the blocked reads and writes return now, from any thread."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed
                pass


def read_capped(resp: http.client.HTTPResponse, cap: int) -> bytes:
    """The whole body, or AnswerTooLarge as soon as it passes ``cap`` bytes."""
    return b"".join(capped_blocks(resp, cap, lambda: resp.read(BLOCK)))


class Client:
    """Requests of ``timeout`` seconds at most in all (connect, send, headers and body),
    answers of ``max_bytes`` at most. Thread-safe: the backend's workers share one."""

    def __init__(self, timeout: float, max_bytes: int):
        self.timeout, self.max_bytes = timeout, max_bytes
        self.stopped = threading.Event()
        self._open: set = set()
        self._lock = threading.Lock()

    def request(self, method: str, url: str, body: bytes | None,
                headers: dict) -> tuple[int, bytes]:
        """(status, body). Raises TimeoutError past the deadline, AnswerTooLarge, Stopped,
        or OSError / http.client.HTTPException when the connection fails."""
        parts = urllib.parse.urlsplit(url)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else \
            http.client.HTTPConnection
        conn = kind(parts.hostname, parts.port, timeout=self.timeout)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        expired, line = threading.Event(), _Line(conn)

        def expire():
            expired.set()
            line.shut()
        timer = threading.Timer(self.timeout, expire)
        timer.daemon = True
        with self._lock:
            self._open.add(line)
        timer.start()
        resp = None
        try:
            self._check(expired)
            conn.connect()
            line.sock = conn.sock
            self._check(expired)  # a stop() or the deadline while connecting found no socket
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            data = read_capped(resp, self.max_bytes)
            self._check(expired)  # a body cut short by the timer may look complete
            return resp.status, data
        except (OSError, http.client.HTTPException):
            self._check(expired)
            raise
        finally:
            timer.cancel()
            with self._lock:
                self._open.discard(line)
            if resp is not None:
                resp.close()
            conn.close()
            if line.sock is not None:
                line.sock.close()

    def _check(self, expired: threading.Event) -> None:
        if self.stopped.is_set():
            raise Stopped
        if expired.is_set():
            raise TimeoutError

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` (a retry's backoff), ended at once by ``stop()``."""
        if self.stopped.wait(seconds):
            raise Stopped

    def stop(self) -> None:
        """End every request in flight now and refuse new ones."""
        self.stopped.set()
        with self._lock:
            lines = list(self._open)
        for line in lines:
            line.shut()
