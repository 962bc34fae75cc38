"""Named points of a run where the crash-consistency tests kill, interrupt or hold the
process; inert unless an environment variable asks for one."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CRASH_ENV, SIGINT_ENV, WAIT_ENV = "REFINE_CRASH_AT", "REFINE_SIGINT_AT", "REFINE_WAIT_AT"


def fault_point(name: str, epoch: int | None = None) -> None:
    """``$REFINE_CRASH_AT=name[:epoch]`` kills the process here with SIGKILL (as ``kill -9``);
    ``$REFINE_SIGINT_AT=name[:epoch]`` sends it SIGINT (as Ctrl-C);
    ``$REFINE_WAIT_AT=name:FILE`` creates FILE.<pid> and waits here until FILE exists."""
    for env, sig in ((CRASH_ENV, signal.SIGKILL), (SIGINT_ENV, signal.SIGINT)):
        at = os.environ.get(env)
        if at and at in (name, f"{name}:{epoch}"):
            os.kill(os.getpid(), sig)
    wait = os.environ.get(WAIT_ENV, "")
    if wait.startswith(f"{name}:"):
        barrier = Path(wait.split(":", 1)[1])
        Path(f"{barrier}.{os.getpid()}").touch()
        while not barrier.exists():
            time.sleep(0.0002)
