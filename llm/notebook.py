"""The authors' relabeling notebook as an input file of ``refine_llm.py --procedure
reference``: where it is (a path the user gives, else downloaded at the pinned commit), its
git blob check, and what the procedure renders through, read from the file itself — the two
prompt templates, the stop rule of each and the list of skipped users.

The templates' wording stays in the authors' file; this project stores only which
variables and functions of the notebook hold them (facts of its code), so a changed
notebook is refused or, when the user asked for that file, said plainly and recorded.
"""
from __future__ import annotations

import ast
import json
import string
from dataclasses import dataclass
from pathlib import Path

from data.provenance import git_blob_sha1
from data.registry import NO_REFERENCE_PROCEDURE, REFINE_NOTEBOOKS, RefineNotebook
from data.schema import DataError

# the notebook's names: the template variables, the functions that ask with each, and the
# template fields with their role in a prompt
MAIN, RETRY = ("prompt1", "ask_llama1"), ("prompt2", "ask_llama2")
FIELDS = {"positive_movies_5": "positives", "candidate_example": "examples",
          "only_title_4": "example_answer", "negative_movies_32": "candidates"}


@dataclass(frozen=True)
class StopRule:
    """The separator line and how many lines holding it a kept answer may contain (the
    first line holding it beyond that count, and everything after, is cut)."""

    separator: str
    keep: int


@dataclass(frozen=True)
class NotebookRules:
    """What one verified notebook file says: templates, stop rules, skipped users."""

    path: Path
    blob: str
    published: bool
    main: str
    retry: str
    main_stop: StopRule
    retry_stop: StopRule
    skip: tuple[int, ...]


def notebook_entry(dataset: str) -> RefineNotebook:
    """The registry's record of a dataset's notebook; one line when there is none."""
    if dataset in REFINE_NOTEBOOKS:
        return REFINE_NOTEBOOKS[dataset]
    if dataset in NO_REFERENCE_PROCEDURE:
        raise DataError(f"--procedure reference: the authors published no LLM step for "
                        f"{dataset} (only ML-100K, ML-1M and Netflix-1M have notebooks); "
                        f"use --procedure own")
    raise DataError(f"--procedure reference exists for {', '.join(REFINE_NOTEBOOKS)} only "
                    f"(the authors' notebooks); {dataset!r} has none")


def locate_notebook(entry: RefineNotebook, path: str | None, folder: Path, download: bool,
                    base_url: str | None = None, log=print) -> Path:
    """``path`` when given; else ``<folder>/<notebook name>``, downloaded there (and checked
    by git blob) when missing and ``download``."""
    if path:
        if not Path(path).is_file():
            what = "is a folder" if Path(path).is_dir() else "does not exist"
            raise DataError(f"--notebook {path} {what}; give the notebook file")
        return Path(path)
    dest = folder / Path(entry.path).name
    if dest.is_file():
        return dest
    if not download:
        raise DataError(f"missing {dest}: the authors' notebook ({entry.url}); place it there, "
                        f"pass --notebook PATH, or allow downloading (drop --no_download)")
    from data.fetch import download_verified
    url = f"{base_url.rstrip('/')}/{entry.path}" if base_url else entry.url
    return download_verified(url, dest, entry.blob, log)


def _code_cells(path: Path) -> list[ast.Module]:
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        sources = ["".join(c["source"]) for c in cells if c.get("cell_type") == "code"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            AttributeError) as err:
        raise DataError(f"{path}: not a Jupyter notebook ({type(err).__name__}: {err})") from None
    trees = []
    for source in sources:
        try:
            trees.append(ast.parse(source))
        except SyntaxError:  # a cell with notebook magics: holds nothing the procedure reads
            continue
    return trees


def _assigned(trees, name: str):
    for tree in trees:
        for node in ast.walk(tree):
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name) and node.targets[0].id == name):
                return node.value
    return None


def _stop_rule(trees, function: str, path: Path) -> StopRule:
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == function:
                args = node.args.args[len(node.args.args) - len(node.args.defaults):]
                try:
                    defaults = {a.arg: ast.literal_eval(d)
                                for a, d in zip(args, node.args.defaults)}
                    separator, keep = defaults["stop_token"], defaults["max_occurrences"]
                except (KeyError, ValueError, TypeError, SyntaxError) as err:
                    raise DataError(f"{path}: {function}()'s defaults are not the literal "
                                    f"stop_token / max_occurrences it should have ({err})") from None
                if not (isinstance(separator, str) and separator and isinstance(keep, int)):
                    raise DataError(f"{path}: {function}()'s stop_token / max_occurrences are "
                                    f"{separator!r} / {keep!r}, not a text and a count")
                return StopRule(separator, keep)
    raise DataError(f"{path}: no function {function}() (not the authors' relabeling notebook?)")


def _template(trees, name: str, path: Path) -> str:
    node = _assigned(trees, name)
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        raise DataError(f"{path}: no string assigned to {name} (not the authors' relabeling "
                        f"notebook?)")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(node.value) if f is not None}
    except ValueError as err:
        raise DataError(f"{path}: {name} is not a format template ({err})") from None
    if fields != set(FIELDS):
        raise DataError(f"{path}: {name} has fields {sorted(fields)}, expected {sorted(FIELDS)}")
    return node.value


def read_notebook(path: Path, entry: RefineNotebook, warn=print) -> NotebookRules:
    """The rules of ``path``; a file whose git blob is not the published one is said
    plainly (and recorded by the caller as unpublished)."""
    blob = git_blob_sha1(path)
    published = blob == entry.blob
    if not published:
        warn(f"warning: {path} is not the authors' published notebook for {entry.dataset} "
             f"(git blob {blob}, published {entry.blob}); its prompts are used as they are")
    trees = _code_cells(path)
    skip_node = _assigned(trees, "skip")
    try:
        skip = tuple(int(u) for u in ast.literal_eval(skip_node.args[0])) if skip_node else ()
    except (AttributeError, IndexError, ValueError, TypeError):
        raise DataError(f"{path}: its skip list is not a literal list of user ids") from None
    registered = tuple(entry.skip_users())
    if published and skip != registered:
        raise DataError(f"{path}: its skip list differs from the registry's (data/"
                        f"refine_skip_users.json); the registry copy is damaged")
    return NotebookRules(path, blob, published, _template(trees, MAIN[0], path),
                         _template(trees, RETRY[0], path), _stop_rule(trees, MAIN[1], path),
                         _stop_rule(trees, RETRY[1], path), skip if skip_node else registered)
