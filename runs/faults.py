"""Named points of a run where the crash-consistency tests kill or hold the process; inert
unless an environment variable asks for one."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CRASH_ENV, WAIT_ENV = "REFINE_CRASH_AT", "REFINE_WAIT_AT"


def fault_point(name: str, epoch: int | None = None) -> None:
    """``$REFINE_CRASH_AT=name[:epoch]`` kills the process here with SIGKILL (as ``kill -9``);
    ``$REFINE_WAIT_AT=name:FILE`` creates FILE.<pid> and waits here until FILE exists."""
    crash = os.environ.get(CRASH_ENV)
    if crash and crash in (name, f"{name}:{epoch}"):
        os.kill(os.getpid(), signal.SIGKILL)
    wait = os.environ.get(WAIT_ENV, "")
    if wait.startswith(f"{name}:"):
        barrier = Path(wait.split(":", 1)[1])
        Path(f"{barrier}.{os.getpid()}").touch()
        while not barrier.exists():
            time.sleep(0.0002)
