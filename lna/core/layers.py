"""The layer order of lna and the import graph checked against it (docs/design.md, "Layout").

Floors run with the data flow, bottom first. A module may import modules of its own floor
or of floors below, never above, and no set of modules may import each other in a circle.
Imports inside functions count like those at the top of a module: they run later, but tie
the modules together all the same. tests/test_layers.py enforces the rule and
docs/import_graph.py draws the graph; both read this list, the one place that defines it.
Standard library only, so the checker runs without torch.
"""
import ast
from pathlib import Path

# Bottom first; each entry is one floor, the module-name prefixes that live on it.
LAYERS = (
    ("lna.core", "lna._version"),
    ("lna.kernels",),
    ("lna.models",),
    ("lna.inputs",),
    ("lna.runners",),
    ("lna.storage",),
    ("lna.profiling",),
    ("lna.reports",),
    ("lna.identification",),
    ("lna.interventions",),
    ("lna.evaluation",),
    ("lna.align",),
    ("lna.api",),  # notebooks: the commands' engines as functions and objects
    ("lna.cli",),
    ("lna",),  # the package itself: `import lna` gives lna.LnaError and lna.steer
)


def floor_of(module: str, layers=LAYERS) -> int:
    """The floor (index into `layers`) of a module: that of its longest matching prefix."""
    best, best_len = None, -1
    for i, prefixes in enumerate(layers):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best is None:
        raise ValueError(f"{module}: on no floor of the layer list (lna/core/layers.py LAYERS)")
    return best


def modules(roots: dict[str, Path]) -> dict[str, Path]:
    """Module name -> file for every .py under each root ({"lna": lna/, "lna.kernels": kernels/}).
    Symlinked folders are not followed (lna/kernels links to ../kernels, listed as its own root)."""
    found = {}
    for package, root in roots.items():
        for path in sorted(Path(root).rglob("*.py")):
            rel = path.relative_to(root)
            if any((Path(root) / Path(*rel.parts[:i])).is_symlink() for i in range(1, len(rel.parts))):
                continue
            parts = [*package.split("."), *rel.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(tree: ast.AST, module: str, is_package: bool, known) -> list[tuple[str, int]]:
    """(imported lna module, line) for every import statement anywhere in `tree`."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                # `from lna.models import loading` names a module; `from lna.runners import make_runner`
                # names something inside lna/runners/__init__.py
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in known else base, node.lineno))
    return [(name, line) for name, line in out if name == "lna" or name.startswith("lna.")]


def import_graph(roots: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported lna module: first line importing it}, over module- and function-level
    imports. An import of lna.x.y is an edge to lna.x.y only (not to the packages above it)."""
    found = modules(roots)
    graph = {}
    for name, path in found.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = {}
        for target, line in _imported(tree, name, path.name == "__init__.py", found):
            if target != name and target in found:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def upward(graph, layers=LAYERS) -> list[tuple[str, str, int]]:
    """(importer, imported, line) for each import from a lower floor to a higher one."""
    return sorted((a, b, line) for a, edges in graph.items() for b, line in edges.items()
                  if floor_of(b, layers) > floor_of(a, layers))


def circles(graph) -> list[list[str]]:
    """The strongly connected sets of two or more modules (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def floors(graph) -> tuple[int, list[str]]:
    """The longest import chain: how many modules are on it, and the chain. A circle counts as
    one module, shown as its members joined by " | "."""
    group = {v: v for v in graph}
    for members in circles(graph):
        for v in members:
            group[v] = " | ".join(members)
    after = {}
    for v, edges in graph.items():
        after.setdefault(group[v], set()).update(group[w] for w in edges if group[w] != group[v])
    memo = {}

    def longest(g):
        if g not in memo:
            memo[g] = [g, *max((longest(n) for n in sorted(after[g])), key=len, default=[])]
        return memo[g]

    chain = max((longest(g) for g in sorted(after)), key=len, default=[])
    return len(chain), chain


def package_of(module: str, layers=LAYERS) -> str:
    """The package a module is drawn in: the first prefix of its floor (lna._version: lna.core)."""
    return layers[floor_of(module, layers)][0]


def package_graph(graph, layers=LAYERS) -> dict[str, set[str]]:
    """The graph between packages: lna.runners -> {lna.core, lna.models, ...}."""
    out = {}
    for a, edges in graph.items():
        pa = package_of(a, layers)
        out.setdefault(pa, set()).update(pb for pb in map(lambda b: package_of(b, layers), edges) if pb != pa)
    return out


def repo_roots(repo: Path) -> dict[str, Path]:
    """The source roots of this checkout: lna/ and the top-level kernels/ shipped as lna.kernels."""
    return {"lna": repo / "lna", "lna.kernels": repo / "kernels"}
