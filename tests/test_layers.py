"""The house's layers: imports only point down. The library (dermvlm/) never imports an entry
point (data_recipes, train, eval, benchmarks, app), and no module of the tree is part of an
import cycle, counting imports inside functions too."""
import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ("dermvlm", "data_recipes", "train", "eval", "benchmarks")
ENTRY_POINTS = ("data_recipes", "train", "eval", "benchmarks", "app")


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules():
    files = [ROOT / "app.py"] + [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return {module_name(p): p for p in files}


def imports_of(path, modules):
    """Project modules that `path` imports anywhere in its body (top level or in functions);
    `from a.b import c` counts as a.b.c when that is a module, else a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph():
    modules = project_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    for name in graph:         # importing a.b.c runs a/__init__ and a/b/__init__ first
        graph[name] |= {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)
                        if ".".join(name.split(".")[:i]) in graph} - {name}
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_library_never_imports_an_entry_point():
    graph = import_graph()
    upward = sorted(f"{name} -> {target}" for name, targets in graph.items()
                    if name.split(".")[0] == "dermvlm" for target in targets
                    if target.split(".")[0] in ENTRY_POINTS)
    assert upward == []


def test_no_import_cycle_anywhere():
    assert cycles(import_graph()) == []


def test_the_checks_see_a_cycle_and_an_upward_import():
    """The graph walker is not vacuous: a two-module cycle is found, and the real tree has
    edges from the library to its core and from the entry points into the library."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    graph = import_graph()
    assert "dermvlm.errors" in graph["dermvlm.config"]
    assert "dermvlm.clip.train" in graph["train.clip"]
    assert "dermvlm.serve" in graph["app"]
