"""``--config FILE.yaml``: a run's flags written as a YAML mapping (docs/experiments.md).

Every key is a flag of main.py without its dashes (``learning_rate: 5e-3``, ``top_k: [5, 20]``,
``quiet: true``). The file's values become command-line tokens and go through the same
argparse parser as the flags themselves, so they are checked the same way; the flags typed
on the command line are parsed after them and win. Nothing of the file is kept: config.json
records the resolved settings, argv.txt the command (with the file's name).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from runs.config import ConfigError

FLAG = "--config"


def split_config_flag(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--config FILE`` (or ``--config=FILE``), and FILE (None: none)."""
    rest, path, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == FLAG:
            if i + 1 >= len(argv):
                raise ConfigError(f"{FLAG} needs a YAML file")
            path, i = argv[i + 1], i + 2
            continue
        if arg.startswith(FLAG + "="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return rest, path


def read_config_file(path: str) -> dict:
    """The file's mapping of flag names to values; ConfigError naming the file otherwise."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{FLAG} {path}: cannot be read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{FLAG} {path}: not valid YAML{where}") from None
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise ConfigError(f"{FLAG} {path}: must be a mapping of flag names to values "
                          f"(e.g. learning_rate: 0.001)")
    return values


def as_tokens(parser: argparse.ArgumentParser, values: dict, source: str,
              unknown) -> list[str]:
    """The command-line tokens meaning ``values``; ``unknown(name)`` gives the error line of a
    key that is no flag of ``parser``. A null value is left out (the default)."""
    actions = {o[2:]: a for a in parser._actions for o in a.option_strings if o.startswith("--")}
    tokens: list[str] = []
    for name, value in values.items():
        action = actions.get(name)
        if action is None or name in ("help", "config"):
            raise ConfigError(f"{source}: {unknown(name)}")
        if value is None:
            continue
        flag = f"--{name}"
        if action.nargs == 0:  # a switch: true gives it, false leaves it out
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: {name} is a switch: true or false")
            tokens += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            tokens += [flag, *(scalar(v, action) for v in value)]
        else:
            tokens += [flag, scalar(value, action)]
    return tokens


def scalar(value, action) -> str:
    """A YAML scalar as the flag's text; YAML 1.1 reads on/off as booleans."""
    if isinstance(value, bool) and action.choices and "on" in action.choices:
        return "on" if value else "off"
    return str(value)


def parse_file(parser: argparse.ArgumentParser, tokens: list[str], source: str) -> dict:
    """The file's tokens parsed by ``parser``; its errors become one ConfigError line."""
    def error(message: str):
        raise ConfigError(f"{source}: {message}")
    parser.error = error  # this parser instance only
    try:
        return vars(parser.parse_args(tokens))
    finally:
        del parser.error
