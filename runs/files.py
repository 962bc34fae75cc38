"""Writing files so that a crash or a second process never leaves half of one: every write
goes to a temp name unique to the process and call, is fsynced, then renamed into place.

A write that the file system refuses (full disk, read-only, too long a name, no
permission) becomes a ``WriteError``: one line naming the file and the reason, the temp file
removed, the file's previous version untouched. Ctrl-C during ``torch.save`` stays a
KeyboardInterrupt (torch would turn it, and a full disk, into "unexpected pos")."""
from __future__ import annotations

import errno
import json
import os
import secrets
from collections import Counter
from pathlib import Path

from data.errors import UserError
from runs.faults import fault_point

# the refusals of the environment, not of the program: one line, no traceback
REASONS = {errno.ENOSPC: "the disk is full (no space left on device)",
           errno.EDQUOT: "the disk quota is exceeded",
           errno.EFBIG: "the file is too large for the file system",
           errno.EROFS: "the file system is read-only",
           errno.ENAMETOOLONG: "the file name is too long for the file system",
           errno.EACCES: "permission denied",
           errno.EPERM: "permission denied (operation not permitted)"}
_saves: Counter = Counter()  # torch.save calls per file name, for the tests' fault points


class WriteError(UserError, OSError):
    """A file that could not be written (an OSError too, for callers that catch those)."""


def reason(err: OSError) -> str:
    """What went wrong, in words: "the disk is full ..." or the system's own message."""
    return REASONS.get(err.errno, err.strerror or str(err))


def is_refusal(err: BaseException) -> bool:
    """Whether ``err`` is the file system refusing a write (REASONS), not a bug."""
    return isinstance(err, OSError) and err.errno in REASONS


def write_error(path: Path, err: OSError, kept: bool = False) -> WriteError:
    """``err`` as one line naming ``path``; ``kept``: the file's previous version is there."""
    note = f"; the previous {Path(path).name} is unchanged" if kept else ""
    return WriteError(f"cannot write {path}: {reason(err)}{note}")


def temp_path(path: Path) -> Path:
    """A temp name beside ``path`` that no other process or call uses (``.<name>.<pid>.<hex>.tmp``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def is_temp(path: Path) -> bool:
    """Whether ``path`` is one of ``temp_path``'s names."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def atomic_write(path: Path, write) -> None:
    """``write(f)`` into a temp file in the same folder, fsync, then rename over ``path``: a
    crash leaves the old file or the new one, never half of one; WriteError when the file
    system refuses (an OSError about another file, e.g. one ``write`` reads, passes as is)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except WriteError:
        raise
    except OSError as err:
        if err.filename is not None and str(err.filename) not in (str(tmp), str(path)):
            raise
        raise write_error(path, err, kept=os.path.isfile(path)) from None
    finally:
        remove_quietly(tmp)


def remove_quietly(path: Path) -> None:
    """Remove ``path`` if it is there; on a read-only or vanished folder, leave it (unlink
    would raise EROFS even for a missing file and hide the error being reported)."""
    try:
        if os.path.lexists(path):
            os.unlink(path)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save(obj, path: Path) -> None:
    """torch.save, atomically. torch reports any failure of its writes (a full disk, Ctrl-C)
    as RuntimeError "unexpected pos"; the failure it hides is raised instead."""
    import torch  # only the training side saves tensors
    path = Path(path)
    _saves[path.name] += 1
    point = (f"write_{path.name}", _saves[path.name])

    def write(f):
        try:
            torch.save(obj, _FaultPoint(f, point))
        except RuntimeError as err:
            hidden = err.__context__
            while hidden is not None and not isinstance(hidden, (OSError, KeyboardInterrupt)):
                hidden = hidden.__context__
            if hidden is None:
                raise
            raise hidden from None
    atomic_write(path, write)


class _FaultPoint:
    """``f`` with runs.faults' point ``write_<name>`` (epoch: the n-th save of that name in
    this process) after the first write: the tests' signal lands in the middle of a save."""

    def __init__(self, f, point: tuple[str, int]):
        self.f, self.point = f, point

    def write(self, data) -> int:
        n = self.f.write(data)
        if self.point is not None:
            point, self.point = self.point, None
            fault_point(*point)
        return n

    def flush(self) -> None:
        self.f.flush()


def append_synced(path: Path, text: str) -> int:
    """Append ``text`` to ``path``, flushed and fsynced; the file's size after it (what a
    resume rewinds to). WriteError when the file system refuses."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            return f.tell()
    except OSError as err:
        raise write_error(path, err) from None


def dump_json(obj, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
