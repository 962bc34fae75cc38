"""One HTTP download into an open file, bounded in time and in size (data/fetch.py verifies
and places what it brings).

A mirror that drips (a byte now and then) never trips a per-read socket timeout, so every
request has a TOTAL deadline (``--timeout``, seconds from the request to the last byte) and
a cap on the bytes it may send (``--max_mb``): whichever is hit first ends the download
with one line. Both are checked before the first request. Reads return whatever has
arrived (``read1``) and each waits at most the time left, so the deadline holds to within
a fraction of a second. Ctrl-C interrupts a read at once.
"""
from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from data.schema import DataError

DEFAULT_TIMEOUT_S = 900.0
DEFAULT_MAX_MB = 4096.0
SILENCE_S = 60.0  # connecting, or a read that gets no byte at all, gives up after this
BLOCK = 1 << 16


@dataclass(frozen=True)
class Limits:
    """The total deadline per request (seconds) and the largest response (MiB) accepted;
    ``flags``: the command's flags that set them, as its messages name them."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    max_mb: float = DEFAULT_MAX_MB
    flags: tuple[str, str] = ("--timeout", "--max_mb")

    def __post_init__(self):
        for flag, value, unit in ((self.flags[0], self.timeout_s, "seconds"),
                                  (self.flags[1], self.max_mb, "MiB")):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise DataError(f"{flag} must be a positive number of {unit}, got {value!r}")

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * (1 << 20))


class TooLarge(Exception):
    """A body passed its byte cap (``size``: the bytes announced or received so far)."""

    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


def capped_blocks(response, cap: int, read):
    """The blocks of ``response``'s body, ``read()`` giving each (b"" at the end); TooLarge
    as soon as the body is announced (Content-Length) or found to pass ``cap`` bytes. The one
    size check of both HTTP readers: a download into a file (``copy_url``) and an LLM
    server's answer (llm/http_client.py)."""
    announced = response.headers.get("Content-Length", "") if response.headers else ""
    if announced.isascii() and announced.isdigit() and int(announced) > cap:
        raise TooLarge(int(announced))
    got = 0
    while True:
        block = read()
        if not block:
            return
        got += len(block)
        if got > cap:
            raise TooLarge(got)
        yield block


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _wait_at_most(response, seconds: float) -> None:
    """Let the next read of ``response`` wait at most ``seconds`` (the socket's timeout;
    http.client keeps the socket in its file object's ``raw._sock``). Where that is not
    reachable the read waits the timeout given at opening, which is at most the deadline."""
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    if isinstance(sock, socket.socket):
        sock.settimeout(max(seconds, 0.01))


class _no_bar:
    def __init__(self, total):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        pass


def _open(url: str, limits: Limits, hint: str):
    import urllib.error  # only when downloading
    import urllib.request
    try:
        return urllib.request.urlopen(url, timeout=min(SILENCE_S, limits.timeout_s))
    except urllib.error.HTTPError as err:
        raise DataError(f"download failed: HTTP {err.code} {err.reason} for {url}; "
                        f"{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise DataError(f"download failed: {url} did not answer within "
                            f"{min(SILENCE_S, limits.timeout_s):g} s; {hint}") from None
        raise DataError(f"download failed: cannot reach {url} ({reason}); {hint}") from None


def copy_url(url: str, out, limits: Limits, hint: str, progress=None) -> int:
    """Write the body of ``url`` into the binary file ``out``; the number of bytes.
    ``progress(total)`` (total None when not announced) makes a bar that counts the bytes
    once the server answered (a tqdm). One-line
    DataError (ending with ``hint``, where the file can be placed by hand) for an HTTP error,
    an unreachable host, the deadline, a body over the cap or a lost connection."""
    import http.client
    deadline = time.monotonic() + limits.timeout_s

    def too_slow(got: int) -> DataError:
        return DataError(f"download failed: {url} did not finish within {limits.timeout_s:g} s "
                         f"({_mb(got)} received; a slow mirror? raise {limits.flags[0]}); "
                         f"{hint}")

    def too_big(size: int) -> DataError:
        return DataError(f"download failed: {url} is larger than {limits.flags[1]} "
                         f"{limits.max_mb:g} ({_mb(size)} or more); {hint}")

    response = _open(url, limits, hint)
    announced = response.headers.get("Content-Length", "")
    total = int(announced) if announced.isascii() and announced.isdigit() else None
    if total is not None and total > limits.max_bytes:  # before a progress bar is drawn
        response.close()
        raise too_big(total)
    got = 0

    def read() -> bytes:  # a block within the time left; a one-line DataError past it
        left = deadline - time.monotonic()
        if left <= 0:
            raise too_slow(got)
        _wait_at_most(response, min(left, SILENCE_S))
        try:
            return response.read1(BLOCK)
        except (TimeoutError, socket.timeout):
            if time.monotonic() >= deadline - 0.01:
                raise too_slow(got) from None
            raise DataError(f"download failed: {url} sent nothing for {SILENCE_S:g} s "
                            f"({_mb(got)} received); {hint}") from None
        except (OSError, http.client.HTTPException) as err:
            raise DataError(f"download failed: connection lost while reading {url} "
                            f"({err}); {hint}") from None
    with response:
        try:
            blocks = capped_blocks(response, limits.max_bytes, read)
            with (progress or _no_bar)(total) as bar:
                for block in blocks:
                    got += len(block)
                    out.write(block)
                    bar.update(len(block))
        except TooLarge as err:
            raise too_big(err.size) from None
    return got


def remove_stale_parts(dest: Path) -> None:
    """Delete ``.<name>.<pid>.part`` files next to ``dest`` left by a download whose process
    no longer exists (killed: no ``finally`` ran); a live process's part is left alone."""
    for part in dest.parent.glob(f".{dest.name}.*.part"):
        pid = part.name[len(dest.name) + 2:-len(".part")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            part.unlink(missing_ok=True)
        except (PermissionError, OSError, OverflowError):  # another user's, or unknowable
            continue
