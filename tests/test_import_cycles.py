"""No import cycle between raddist's components (raddist.X), lazy imports included.

Self-contained: the graph is read from the source with `ast`, so the check needs nothing outside
the repository. A cycle is a set of components that each reach the others through imports.
"""

import ast
import os

import raddist

PACKAGE = os.path.dirname(os.path.abspath(raddist.__file__))


def modules(root: str) -> dict:
    """Dotted module name -> file, for every .py under the package directory `root`."""
    base, out = os.path.dirname(root), {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                name = os.path.relpath(path, base)[:-3].replace(os.sep, ".")
                out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def _imported(node, module: str, is_pkg: bool, mods: dict) -> list:
    """The module names one import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        parts = module.split(".") if is_pkg else module.split(".")[:-1]
        prefix = ".".join(parts[: len(parts) - (node.level - 1)])
        name = f"{prefix}.{node.module}" if node.module else prefix
    else:
        name = node.module or ""
    subs = [f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in mods]
    return subs if len(subs) == len(node.names) else [name] + subs


def component_graph(root: str) -> dict:
    """Component (package.X) -> the components its modules import, itself excluded."""
    mods = modules(root)
    pkg = os.path.basename(root)

    def top(name):
        return ".".join(name.split(".")[:2])

    graph = {top(m): set() for m in mods}
    for m, path in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _imported(node, m, path.endswith("__init__.py"), mods):
                    if (t == pkg or t.startswith(pkg + ".")) and top(t) != top(m):
                        graph[top(m)].add(top(t))
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one node, each sorted."""
    reach = {}
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(graph.get(n, ()))
        reach[start] = seen
    groups = {tuple(sorted({v} | {w for w in reach[v] if v in reach.get(w, ())})) for v in graph}
    return sorted(list(g) for g in groups if len(g) > 1)


def test_no_cycle_between_raddist_components():
    found = cycles(component_graph(PACKAGE))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_check_finds_a_cycle_through_a_lazy_relative_import(tmp_path):
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from toy.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")  # lazy and relative
    (pkg / "c.py").write_text("import toy.a\n")
    (pkg / "d.py").write_text("import toy.a\n")  # reaches the cycle, is not in it
    graph = component_graph(str(pkg))
    assert graph["toy.sub"] == {"toy.c"} and graph["toy.d"] == {"toy.a"}
    assert cycles(graph) == [["toy.a", "toy.c", "toy.sub"]]
    (pkg / "c.py").write_text("")
    assert cycles(component_graph(str(pkg))) == []
