"""The shape of the code, checked: small modules and functions, no import cycles, no reaching into another
module's private names, the one-way flow (trainables never import the tuner; spaces import neither), and the
command line written once (every flag is a SweepSpec field that build_spec takes)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("tuner", "trainables", "search_spaces", "benchmarks", "gpucheck")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 100
# the trial loop reads best top to bottom (nanoGPT style), as the developers' guide allows
LONG_FUNCTIONS_ALLOWED = {("trainables/classify.py", "train_epochs")}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for file in sorted((REPO / package).rglob("*.py")):
            name = ".".join(file.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            found[name] = file
    return found


def imports(file: Path, known: dict[str, Path]) -> list[tuple[str, str]]:
    """(module, name) for each `from module import name` of a project module, wherever it stands in the file."""
    out = []
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.module, alias.name) for alias in node.names if node.module.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] in PACKAGES]
    return out


def test_no_module_over_the_limit():
    long = {str(f.relative_to(REPO)): n for f in modules().values()
            if (n := len(f.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_over_the_limit():
    long = []
    for file in modules().values():
        rel = str(file.relative_to(REPO))
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and (rel, node.name) not in LONG_FUNCTIONS_ALLOWED:
                    long.append(f"{rel}:{node.name} ({lines} lines)")
    assert long == []


def test_no_import_cycles():
    known = modules()
    deps: dict[str, set[str]] = {}
    for name, file in known.items():
        targets = set()
        for module, imported in imports(file, known):
            for candidate in (f"{module}.{imported}", module):
                if candidate in known and candidate != name:
                    targets.add(candidate)
                    break
        deps[name] = targets

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in deps.get(node, ()):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = {" -> ".join(c) for name in known if (c := cycle_from(name))}
    assert cycles == set()


def test_nothing_imports_another_modules_private_names():
    private = [f"{file.relative_to(REPO)}: from {module} import {name}"
               for file in modules().values() for module, name in imports(file, modules())
               if name.startswith("_") and not name.startswith("__")]
    assert private == []


@pytest.mark.parametrize("package,forbidden", [("trainables", ("tuner", "search_spaces", "benchmarks")),
                                               ("search_spaces", ("tuner", "trainables", "benchmarks"))])
def test_data_flows_one_way(package, forbidden):
    wrong = [f"{file.relative_to(REPO)}: {module}" for name, file in modules().items() if name.startswith(package)
             for module, _ in imports(file, modules()) if module.split(".")[0] in forbidden]
    assert wrong == []


def test_every_flag_is_a_spec_field_that_build_spec_takes():
    from tuner.run import parser
    from tuner.spec import build_spec

    run_only = {"resume", "resume_if_exists", "add_trials", "list_spaces", "dry_run", "help"}
    dests = {a.dest for a in parser()._actions} - run_only
    not_flags = {"dry_run"}  # how the spec is checked, not a value of it
    assert dests == set(inspect.signature(build_spec).parameters) - not_flags
