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
ABBREVIATIONS = ("--con", "--conf", "--confi")  # argparse's: no other flag starts so


def split_config_flag(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--config FILE`` (or ``--config=FILE``), and FILE (None: none)."""
    rest, paths, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.split("=", 1)[0] in ABBREVIATIONS:
            arg = FLAG + arg[len(arg.split("=", 1)[0]):]
        if arg == FLAG:
            if i + 1 >= len(argv):
                raise ConfigError(f"{FLAG} needs a YAML file")
            paths, i = paths + [argv[i + 1]], i + 2
            continue
        if arg.startswith(FLAG + "="):
            paths.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    if len(paths) > 1:  # the last one silently won: the first file's flags were dropped
        raise ConfigError(f"{FLAG} may be given once (got {', '.join(paths)})")
    return rest, (paths or [None])[0]


class DuplicateKey(Exception):
    def __init__(self, key, line: int):
        super().__init__(f"{key!r} is written twice (line {line})")


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader, but a key written twice in one mapping is an error: PyYAML
    keeps the last value without a word, so half of a file could be ignored."""


def _unique_mapping(loader: _Loader, node, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        except TypeError:  # an unhashable key: refused by the callers' checks
            pass
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(path: str, source: str):
    """The YAML document of ``path``; ConfigError starting with ``source`` otherwise."""
    try:
        return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
    except OSError as err:
        raise ConfigError(f"{source}: cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    except DuplicateKey as err:
        raise ConfigError(f"{source}: {err}; say it once") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None


def read_config_file(path: str) -> dict:
    """The file's mapping of flag names to values; ConfigError naming the file otherwise."""
    values = load_yaml(path, f"{FLAG} {path}")
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
            tokens += [flag, *(scalar(v, action, name, source) for v in value)]
        else:  # --flag=value: a value starting with '-' is not read as a flag
            tokens += [f"{flag}={scalar(value, action, name, source)}"]
    return tokens


def scalar(value, action, name: str, source: str) -> str:
    """A YAML scalar as the flag's text; YAML 1.1 reads on/off (yes/no, ...) as booleans."""
    if isinstance(value, bool):
        if action.choices and "on" in action.choices:
            return "on" if value else "off"
        raise ConfigError(f"{source}: {name}: YAML reads yes/no/on/off/true/false as a "
                          f"boolean (here {str(value).lower()}), not a value of --{name}; "
                          f"quote the value")
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
