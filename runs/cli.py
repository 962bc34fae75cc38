"""The one error wrapper of every command-line entry point: a ``UserError`` (bad flag,
bad data, impossible training, a run folder in use …) and a file system's refusal (full
disk, read-only, too long a name, no permission: runs/files.py) become one ``error:`` line
on stderr and exit code 2; Ctrl-C exits with 130 and says how to continue."""
from __future__ import annotations

import shlex
import sys
from typing import Callable

from data.errors import UserError
from runs.files import is_refusal, reason


def run_cli(fn: Callable[[], object], interrupted: str | None = None) -> int:
    """``fn()``'s exit code when it returns an int (anything else: 0), or 2 after printing
    a UserError as one line."""
    try:
        rc = fn()
        return rc if isinstance(rc, int) else 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a refusal no layer named (a bug's OSError keeps its traceback)
        if not is_refusal(err):
            raise
        where = f"{err.filename}: " if err.filename else "a file could not be written: "
        print(f"error: {where}{reason(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted, file=sys.stderr)
        return 130


def command_line(program: str) -> str:
    """How this process was started, as a user would type it: ``program`` (e.g.
    "python main.py", "python -m llm.augment") and the arguments, shell-quoted, without the
    interpreter's or the script's absolute path: a run folder's argv.txt and the LLM steps'
    manifests are shared and committed."""
    return " ".join([program, *(shlex.quote(a) for a in sys.argv[1:])])


def add_dataclass_flags(parser, cls, helps: dict, skip=()) -> None:
    """One ``--<field>`` flag per field of the dataclass ``cls`` not in ``skip``: a bool is a
    switch, ``dataset`` is required, the rest typed int/float/str with the field's default."""
    for f in cls.__dataclass_fields__.values():
        if f.name in skip:
            continue
        flag, help_text = f"--{f.name}", helps.get(f.name)
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=help_text)
        elif f.name == "dataset":
            parser.add_argument(flag, required=True, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(f.type.split(" ")[0], str)
            parser.add_argument(flag, type=kind, default=f.default, help=help_text)
