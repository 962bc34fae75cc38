"""Run folders that exactly one process owns.

A fresh folder is made under a temporary name with its ``.lock`` file already locked
(``flock``), then renamed into place — a rename that fails when the name is taken — so of
two runs started at once with the same ``--path_name`` one gets the folder and the other
one line. The owner keeps the lock until it exits (the kernel drops it on ``kill -9`` too),
which lets a later run tell a folder in use from one left behind.

The rule for a left-behind folder: one without a finished epoch (no ``last.pt``) — a run
that failed in its first epoch or before — is started over by the same command; one with
a finished epoch is continued with ``--resume`` and never overwritten.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from data.errors import UserError
from runs.files import is_refusal, is_temp, reason

LOCK_FILE = ".lock"
RUN_FILES = ("argv.txt", "config.json", "environment.jsonl", "train.log", "epochs.jsonl",
             "best.pt", "best.next.pt", "last.pt", "metrics.json")
FINISHED = ("last.pt", "metrics.json")  # a folder with one of these holds a finished epoch
_names_given: set[str] = set()


class RunFolderError(UserError, ValueError):
    """A run folder that cannot be created or taken."""


def default_name() -> str:
    """Timestamp to the microsecond plus process id: two runs never draw the same name."""
    name = f"{datetime.now():%Y%m%d-%H%M%S.%f}-{os.getpid()}"
    while name in _names_given:  # the same microsecond twice in one process
        name += "x"
    _names_given.add(name)
    return name


def check_result_dir(result_dir: str | Path) -> None:
    """RunFolderError unless ``result_dir`` is, or can be made as, a writable folder."""
    probe = Path(result_dir)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RunFolderError(f"--result_dir {result_dir}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunFolderError(f"--result_dir {result_dir}: {probe} is not writable")


@dataclass
class RunFolder:
    """A run folder and the descriptor of its held lock (``release`` drops it)."""

    path: Path
    lock_fd: int | None
    started_over: bool = False

    def release(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # closing drops the flock
            self.lock_fd = None


def _try_lock(folder: Path) -> int | None:
    fd = os.open(folder / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def claim_new(run_dir: Path, finished=FINISHED, known=RUN_FILES) -> RunFolder:
    """Create ``run_dir`` for this process, or take over one left without a finished epoch;
    RunFolderError when it is in use, finished (continue it with --resume) or not a run's."""
    run_dir = Path(run_dir)
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_staging(run_dir)
        staging = run_dir.parent / f".{run_dir.name}.{os.getpid()}.{secrets.token_hex(4)}.new"
        staging.mkdir()
    except (FileExistsError, NotADirectoryError):
        raise RunFolderError(f"cannot make {run_dir}: a part of its path is a file, not a "
                             f"folder") from None
    except PermissionError:
        raise RunFolderError(f"cannot make {run_dir}: {run_dir.parent} is not writable") \
            from None
    except OSError as err:
        if not is_refusal(err):
            raise
        hint = " (choose a shorter --path_name)" if err.errno == errno.ENAMETOOLONG else ""
        raise RunFolderError(f"cannot make {run_dir}: {reason(err)}{hint}") from None
    fd = _try_lock(staging)
    try:
        os.rename(staging, run_dir)  # atomic; fails when run_dir is a non-empty folder
        return RunFolder(run_dir, fd)
    except OSError:
        os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} exists and is not a folder; choose another --path_name")
    return _take_over(run_dir, finished, known)


def remove_dead_staging(run_dir: Path) -> None:
    """Staging folders of ``run_dir`` that a killed process left (its pid is gone)."""
    for staging in run_dir.parent.glob(f".{run_dir.name}.*.new"):
        pid = staging.name[len(run_dir.name) + 2:].split(".")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(staging, ignore_errors=True)


def _take_over(run_dir: Path, finished, known) -> RunFolder:
    fd = _try_lock(run_dir)
    if fd is None:
        raise RunFolderError(f"run folder {run_dir} is in use by another process; wait for it "
                             f"or choose another --path_name")
    folder = RunFolder(run_dir, fd, started_over=True)
    if any((run_dir / name).exists() for name in finished):
        folder.release()
        raise RunFolderError(f"run folder {run_dir} exists; continue it with --resume "
                             f"{run_dir} or choose another --path_name")
    entries = [p for p in run_dir.iterdir() if p.name != LOCK_FILE and not is_temp(p)]
    foreign = [p.name for p in entries if p.name not in known or not p.is_file()]
    if foreign:
        folder.release()
        raise RunFolderError(f"{run_dir} holds {foreign[0]}, which no run writes; choose "
                             f"another --path_name")
    for p in entries:  # what a run left that failed before finishing an epoch
        p.unlink()
    remove_temps(run_dir)
    return folder


def open_existing(run_dir: Path) -> RunFolder:
    """Lock a run folder to continue it (--resume); RunFolderError when in use or when its
    file system refuses writes (a resume appends to the folder)."""
    try:
        fd = _try_lock(Path(run_dir))
    except OSError as err:
        if not is_refusal(err):
            raise
        raise RunFolderError(f"--resume {run_dir}: cannot write into the run folder: "
                             f"{reason(err)}; copy it to a writable place to continue it") \
            from None
    if fd is None:
        raise RunFolderError(f"run folder {run_dir} is in use by another process")
    remove_temps(Path(run_dir))
    return RunFolder(Path(run_dir), fd)


def remove_temps(run_dir: Path) -> None:
    """Temp files a killed process left (only call while holding the folder's lock)."""
    for p in run_dir.iterdir():
        if is_temp(p) and p.is_file():
            p.unlink()


def logged_epochs(run_dir: Path, key: str) -> list[tuple[int, dict | list]]:
    """(epoch, results) of every epoch whose epochs.jsonl line holds ``key`` ("valid", or
    "test" in a fixed-epoch run), in order: results by name, or a positional list in lines
    written before the metric table (runs.metrics.as_named reads both)."""
    out = []
    with open(Path(run_dir) / "epochs.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row.get(key):
                out.append((row["epoch"], row[key]))
    return out
