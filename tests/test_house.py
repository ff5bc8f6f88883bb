"""The package's shape, read from its source: imports point one way, rooms and functions stay small.

Every module under ``prernn_cli/`` is parsed (never imported). A failure lists every offender.
"""

from __future__ import annotations

import ast
import functools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "prernn_cli"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
# The CLI may import library modules inside its commands, to keep `prernn --help` fast.
LAZY_IMPORTS_ALLOWED_IN = "prernn_cli.cli"
# The names a package __init__ may assign: its public list, and the distribution's version at the top.
PACKAGE_NAMES = {"__all__", "__version__"}

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. prernn_cli.data.decode; a package is named by its folder
    path: Path
    tree: ast.Module
    lines: int

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def where(self) -> str:
        return str(self.path.relative_to(PACKAGE.parent))


@functools.cache
def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        text = path.read_text()
        found[name] = Module(name, path, ast.parse(text, filename=str(path)), len(text.splitlines()))
    return found


def imported_modules(module: Module, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The project modules an import statement reads: a submodule when it names one, else its package."""
    known = modules()
    if isinstance(node, ast.Import):
        targets = set()
        for alias in node.names:
            parts = alias.name.split(".")
            prefixes = (".".join(parts[:end]) for end in range(len(parts), 0, -1))
            targets |= {next((prefix for prefix in prefixes if prefix in known), None)}
        return targets - {None}
    if node.level:  # relative: from the module's own package, one level up per extra dot
        package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    targets = {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return targets & known.keys()


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, module in modules().items():
        edges = set()
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= imported_modules(module, node)
        graph[name] = edges - {name}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative; components of one module are left out."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            successor = next(successors, None)
            if successor is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = {node}
                    while (member := stack.pop()) != node:
                        on_stack.discard(member)
                        component.add(member)
                    on_stack.discard(node)
                    if len(component) > 1:
                        components.append(component)
            elif successor not in index:
                index[successor] = low[successor] = len(index)
                stack.append(successor)
                on_stack.add(successor)
                work.append((successor, iter(sorted(graph[successor]))))
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
    return components


def shortest_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest import path from the component's first module back to itself, staying inside the component."""
    start = min(component)
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for successor in sorted(graph[node] & component):
            if successor == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if successor not in previous:
                previous[successor] = node
                queue.append(successor)
    raise AssertionError(f"no cycle in {component}")


def functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, FunctionNode]]:
    """Every function and method, with a qualified name (Class.method, outer.inner)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + child.name, child
            yield from functions(child, f"{prefix}{child.name}.")
        elif isinstance(child, ast.ClassDef):
            yield from functions(child, f"{prefix}{child.name}.")
        else:
            yield from functions(child, prefix)


def function_lines(function: FunctionNode) -> int:
    return function.end_lineno - function.lineno + 1  # from the `def` line, decorators not counted


def is_reexport(statement: ast.stmt, first: bool) -> bool:
    """What a package ``__init__`` may hold: imports, its docstring, ``__all__`` (and ``__version__``)."""
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return True
    if first and isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return isinstance(statement.value.value, str)
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
        targets = [statement.target]
    else:
        return False
    return all(isinstance(target, ast.Name) and target.id in PACKAGE_NAMES for target in targets)


def _report(offenders: list[str], what: str) -> str:
    return f"{len(offenders)} {what}:\n  " + "\n  ".join(offenders)


def test_the_package_is_found():
    assert {"prernn_cli", "prernn_cli.errors", "prernn_cli.spec"} <= modules().keys()


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set(), "e": {"a", "e"}}
    assert strongly_connected(graph) == [{"a", "b", "c"}]
    assert shortest_cycle(graph, {"a", "b", "c"}) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = [" -> ".join(shortest_cycle(graph, component)) for component in strongly_connected(graph)]
    assert not cycles, _report(cycles, "import cycles between prernn_cli modules")


def test_no_project_imports_inside_functions_outside_the_cli():
    offenders = []
    for module in modules().values():
        if module.name == LAZY_IMPORTS_ALLOWED_IN or module.name.startswith(LAZY_IMPORTS_ALLOWED_IN + "."):
            continue
        found = {}  # line -> report; an inner function, walked after its outer one, names the import's own scope
        for name, function in functions(module.tree):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and imported_modules(module, node) - {module.name}:
                    found[node.lineno] = f"{module.where}:{node.lineno} in {name}: {ast.unparse(node)}"
        offenders += [found[line] for line in sorted(found)]
    assert not offenders, _report(offenders, "project imports inside functions")


def test_every_module_is_at_most_450_lines():
    offenders = [f"{m.where}: {m.lines} lines" for m in modules().values() if m.lines > MAX_MODULE_LINES]
    assert not offenders, _report(offenders, f"modules over {MAX_MODULE_LINES} lines")


def test_every_function_is_at_most_60_lines():
    offenders = [
        f"{module.where}:{function.lineno} {name}: {function_lines(function)} lines"
        for module in modules().values()
        for name, function in functions(module.tree)
        if function_lines(function) > MAX_FUNCTION_LINES
    ]
    assert not offenders, _report(offenders, f"functions over {MAX_FUNCTION_LINES} lines")


def test_package_inits_only_reexport():
    offenders = [
        f"{module.where}:{statement.lineno} {ast.unparse(statement).splitlines()[0][:80]}"
        for module in modules().values()
        if module.is_package
        for position, statement in enumerate(module.tree.body)
        if not is_reexport(statement, first=position == 0)
    ]
    assert not offenders, _report(
        offenders, "statements in package __init__ files besides imports, __all__ and a docstring"
    )
