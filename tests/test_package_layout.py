"""The package's layout rules, read from the source with `ast` (nothing is imported):

* the import graph of `pacavit`'s modules has no cycle, counting imports inside functions too (a function-level
  import is how a cycle hides);
* the remote-code model files (`configuration_*`, `modeling_*`, `image_processing_*`, shipped into every exported
  Hub folder and run there without pacavit installed) import only each other, transformers, torch, numpy and the
  standard library; torchvision and xformers only where a missing one is handled (inside a function or a `try`).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "pacavit"
REMOTE_CODE_PREFIXES = ("configuration_", "modeling_", "image_processing_")
REMOTE_CODE_IMPORTS = {"torch", "transformers", "numpy"}
SOFT_REMOTE_CODE_IMPORTS = {"torchvision", "xformers"}  # optional: imported where their absence is handled


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> list[tuple[str, bool]]:
    """(absolute module, guarded) for every import in module `name`; guarded: inside a function or a `try`.
    `from package import name` counts as an import of the submodule `package.name` when that is a module."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, guarded: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = guarded or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Try))
            if isinstance(child, ast.Import):
                found.extend((alias.name, guarded) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in child.names:
                    submodule = f"{base}.{alias.name}"
                    found.append((submodule if submodule in MODULES else base, guarded))
            visit(child, inner)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: {target for target, _ in imports_of(name) if target in MODULES} - {name} for name in MODULES}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), as a sorted list of names."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph["pacavit.convert.dispatch"], "the graph reader found no modules or edges"
    assert find_cycles(graph) == []


REMOTE_CODE_FILES = sorted(
    name for name in MODULES if name.count(".") == 1 and name.split(".")[1].startswith(REMOTE_CODE_PREFIXES)
)


def test_there_are_seven_remote_code_files_at_the_top():
    assert len(REMOTE_CODE_FILES) == 7, REMOTE_CODE_FILES


@pytest.mark.parametrize("name", REMOTE_CODE_FILES)
def test_remote_code_files_import_only_each_other_transformers_and_torch(name):
    wrong = []
    for target, guarded in imports_of(name):
        root = target.split(".")[0]
        if target.startswith("pacavit"):
            ok = target in REMOTE_CODE_FILES  # a sibling: exported beside it
        else:
            ok = root in sys.stdlib_module_names or root in REMOTE_CODE_IMPORTS
            ok = ok or (guarded and root in SOFT_REMOTE_CODE_IMPORTS)
        if not ok:
            wrong.append(target)
    assert not wrong, f"{name} imports {wrong}: a Hub folder that runs it has only the remote-code files"
