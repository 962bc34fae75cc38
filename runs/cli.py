"""The one error wrapper of every command-line entry point: a ``UserError`` (bad flag,
bad data, impossible training, a run folder in use …) becomes one ``error:`` line on
stderr and exit code 2; Ctrl-C exits with 130 and says how to continue."""
from __future__ import annotations

import shlex
import sys
from typing import Callable

from data.schema import UserError


def run_cli(fn: Callable[[], object], interrupted: str | None = None) -> int:
    """``fn()``'s exit code when it returns an int (anything else: 0), or 2 after printing
    a UserError as one line."""
    try:
        rc = fn()
        return rc if isinstance(rc, int) else 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted, file=sys.stderr)
        return 130


def command_line(program: str) -> str:
    """How this process was started, as a user would type it: ``program`` (e.g.
    "python -m llm.augment") and the arguments, without the interpreter's or the script's
    absolute path (manifests are shared and committed)."""
    return " ".join([program, *(shlex.quote(a) for a in sys.argv[1:])])
