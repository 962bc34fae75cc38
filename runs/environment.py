"""What a run ran on: one line of ``environment.jsonl`` per process that trained in the folder.

Two runs of the same code on the same data and seed agree to the last bit on one machine; on
another CPU (a different vector unit, so different BLAS kernels and summation orders) or
another torch build, float32 results differ from the first epochs on in their last bits, and
after hundreds of epochs a few metrics differ in the fourth decimal. Without a record of the
machine such a difference cannot be explained, so every start and every resume appends what
decides it: the library versions, the CPU and its vector unit as torch dispatches to it,
the thread count and the GPU, and the code that ran (the git commit of the checkout, with
``+dirty`` when files differ from it; None outside a git checkout). Lines are
appended, never rewritten: a resumed run on another machine, or on later code, shows both.
"""
from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from runs.files import append_synced

FILE = "environment.jsonl"
REPO = Path(__file__).resolve().parents[1]


def code_version(root: Path = REPO) -> str | None:
    """The commit checked out at ``root``, ``+dirty`` when a file differs from it (a tracked
    file changed, or a new file not ignored: a new module a run may import); None where
    ``root`` is no git checkout or git cannot be run."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    try:
        if git("rev-parse", "--show-toplevel") != str(Path(root).resolve()):
            return None  # a folder inside some other checkout: its commit is not this code's
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=normal")  # not ignored ones
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_name() -> str:
    """The CPU model as the kernel reports it (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device) -> dict:
    """The facts that decide float rounding, as JSON-ready values."""
    facts = {"python": platform.python_version(), "torch": torch.__version__,
             "numpy": np.__version__, "platform": platform.platform(),
             "cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
             "threads": torch.get_num_threads(), "device": str(device), "code": code_version()}
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["cuda"] = torch.version.cuda
    return facts


def record(run_dir: Path, device: torch.device, after_epoch: int) -> None:
    """Append this process's line: ``after_epoch`` 0 for a fresh start, else the resumed epoch."""
    line = json.dumps({"after_epoch": after_epoch, **describe(device)}, sort_keys=True)
    append_synced(run_dir / FILE, line + "\n")


def read(run_dir: Path) -> list[dict]:
    """The folder's lines (none for runs made before the file existed)."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def trained_on(run_dir: Path) -> set[str]:
    """The code versions the run in ``run_dir`` trained on: {"unknown"} where none is
    recorded (before the field existed, outside git) or the file cannot be read."""
    try:
        lines = read(run_dir)
    except (OSError, ValueError):
        lines = []
    return {line.get("code") or "unknown" for line in lines} or {"unknown"}
