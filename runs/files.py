"""Writing files so that a crash or a second process never leaves half of one: every write
goes to a temp name unique to the process and call, is fsynced, then renamed into place."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def temp_path(path: Path) -> Path:
    """A temp name beside ``path`` that no other process or call uses (``.<name>.<pid>.<hex>.tmp``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def is_temp(path: Path) -> bool:
    """Whether ``path`` is one of ``temp_path``'s names."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def atomic_write(path: Path, write) -> None:
    """``write(f)`` into a temp file in the same folder, fsync, then rename over ``path``: a
    crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save(obj, path: Path) -> None:
    """torch.save, atomically."""
    import torch  # only the training side saves tensors
    atomic_write(path, lambda f: torch.save(obj, f))


def dump_json(obj, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
