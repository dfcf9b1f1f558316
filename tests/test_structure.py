"""The layers, read from the source (ast, nothing imported): no import cycle among the modules of hdmap/ and sweeps/,
and hdmap/ never imports sweeps/, ray or wandb; and no function longer than a screenful (MAX_FUNCTION_LINES).

An import inside a function counts as much as one at the top: it only defers the cycle (two modules that each need
the other), it does not remove it. Imports under `if TYPE_CHECKING:` are annotations only and never run: not counted
for cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hdmap", "sweeps")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (a package is its __init__.py)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement reaches: `from a.b import c` reaches a.b.c (if a module) and a.b."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the importing module's package
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _imports(module: str, path: Path, with_type_checking: bool) -> set[str]:
    """Every name `module` imports, at module level or inside functions."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child) and not with_type_checking:
                for other in child.orelse:
                    visit(other)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                names.update(_imported_names(module, path, child))
            else:
                visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return names


def _own_module(name: str) -> str | None:
    """The module of hdmap/ or sweeps/ that an imported name lives in (`hdmap.config.TrialConfig` -> hdmap.config)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _edges(module: str) -> set[str]:
    """The modules `module` depends on; not its own packages (always imported before it runs, never a cycle)."""
    ancestors = {module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)}
    targets = {_own_module(name) for name in _imports(module, MODULES[module], with_type_checking=False)}
    return {t for t in targets if t and t != module and t not in ancestors}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan), each as a path a -> b -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while (w := stack.pop()) != v:
                group.append(w)
            if group:
                groups.append(sorted([v, *group]))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_path_through(group, graph) for group in groups]


def _path_through(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle from the group's first module back to it, within the group (breadth first)."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return group


def test_no_import_cycles():
    graph = {module: _edges(module) for module in MODULES}
    cycles = [" -> ".join(cycle) for cycle in _cycles(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_hdmap_never_imports_sweeps_ray_or_wandb():
    """The library under the sweeps: `hdmap trial` and the models run without Ray or W&B installed."""
    forbidden = ("sweeps", "ray", "wandb")
    found = [
        f"{module} imports {name}"
        for module, path in MODULES.items()
        if module.split(".")[0] == "hdmap"
        for name in sorted(_imports(module, path, with_type_checking=True))
        if name.split(".")[0] in forbidden
    ]
    assert not found, "\n".join(found)


def test_the_walk_counts_function_level_imports_and_names_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _edges("sweeps.cli") >= {"sweeps.runner", "hdmap.config"}  # function-level imports count


MAX_FUNCTION_LINES = 80  # longer: split into named steps (ruff's C901 bounds the branches, this the length)


def test_no_function_is_longer_than_a_screenful():
    long = []
    for folder in (*PACKAGES, "benchmarks", "cluster"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into named steps:\n" + "\n".join(long)
