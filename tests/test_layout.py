"""The shape of the code: a strict import DAG (every import counted: function-level and
TYPE_CHECKING ones too), training that never imports the LLM side or a language-model
library, a Config module that depends on nothing, and small files and functions."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LLM_LIBRARIES = {"transformers", "sentence_transformers", "peft", "llama_cpp", "accelerate"}
DECLARATIVE = {"build_parser", "add_setting_flags"}  # argparse tables may be long


def project_modules(root: Path = REPO) -> dict[str, Path]:
    """module name -> file, for every .py of the project outside tests/ and bench/."""
    out = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in ("tests", "bench") or any(p.startswith(".") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement anywhere in the file names (``from a import
    b`` gives a and a.b: b may be a submodule)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (the nearest existing package for a name)."""
    def resolve(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None
    graph = {}
    for name, path in modules.items():
        graph[name] = {resolve(n) for n in imported_names(path)} - {None, name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None
    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


MODULES = project_modules()
GRAPH = import_graph(MODULES)
TRAINING = [m for m in MODULES if m in ("main", "model", "dataloader", "utils", "compare")
            or m.split(".")[0] in ("runs", "recommenders", "data")]


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle():
    assert find_cycle(GRAPH) is None


def test_nothing_imports_the_command_line_module():
    assert [m for m, targets in GRAPH.items() if "main" in targets] == []


@pytest.mark.parametrize("module", TRAINING)
def test_training_never_imports_the_llm_side(module):
    """Training (and the data layer both sides share) reaches neither refine_llm / llm/
    nor a language-model library, through any chain of project imports."""
    closure = reachable(GRAPH, module) | {module}
    assert not {m for m in closure if m == "refine_llm" or m.split(".")[0] == "llm"}
    external = {n.split(".")[0] for m in closure for n in imported_names(MODULES[m])}
    assert not external & LLM_LIBRARIES, external & LLM_LIBRARIES


def test_config_and_the_registry_depend_on_nothing():
    assert GRAPH["runs.config"] <= {"data.errors"}  # the error base class only
    assert GRAPH["data.errors"] == set() and GRAPH["data.registry"] == set()
    assert GRAPH["data.schema"] == {"data.errors"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_and_functions_are_small(module):
    source = MODULES[module].read_text()
    assert len(source.splitlines()) <= 400, f"{module}: {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                and node.name not in DECLARATIVE:
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{module}.{node.name}: {length} lines"
