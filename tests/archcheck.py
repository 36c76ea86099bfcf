"""Architecture checker for the ``vramplan`` package (issue 13): import cycles and private names across modules.

Every module is parsed with :mod:`ast`, never imported, so the check needs neither torch nor any optional extra.
The intra-package import graph is built from *all* imports, at module level and inside functions alike: a lazy
import still makes one module depend on another, and a cycle through it is still a cycle.

How an import statement becomes edges (``P`` is the module a statement names, after resolving dots):

- ``import P`` and ``import P as x`` import ``P``.
- ``from P import n`` imports ``P`` (its ``__init__`` when ``P`` is a package) and, when ``P.n`` is a submodule,
  ``P.n`` as well.
- ``from . import n`` (no module after the dots, so ``P`` is the importer's own package or an ancestor of it,
  already being initialised) imports ``P.n`` when that is a submodule; a name that is not a submodule is read
  from ``P/__init__`` and so imports ``P``.

Reported:

- every cycle: a strongly connected component of more than one module (a module naming itself is ignored);
- every private name taken from another module: ``from m import _name`` and ``alias._name`` where ``alias`` is
  bound to a package module by an import (dunder names such as ``__version__`` are public);
- every import of the façade ``<package>.api`` from inside the package (nothing inside may import it). The
  top-level ``__init__`` alone may: it is the façade's public name (``vramplan.plan`` re-exports
  ``vramplan.api.plan``). Its edge to the façade stays in the graph, so a module that reads a name from the
  top-level package (``from .. import __version__``) while the façade reaches that module is a cycle.

Run ``python -m tests.archcheck`` or ``python tests/archcheck.py`` from the repository root; exit status 1 when
something is reported, 0 when the package is clean.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: The façade module, relative to the package: nothing inside the package may import it.
FACADE = "api"


@dataclass(frozen=True)
class Module:
    """One module of the package: its dotted name, its file, and whether it is a package ``__init__``."""

    name: str
    path: Path
    is_package: bool


@dataclass(frozen=True)
class Edge:
    """``importer`` imports ``target`` at ``lineno`` of the importer's file."""

    importer: str
    target: str
    lineno: int


@dataclass(frozen=True)
class PrivateUse:
    """``importer`` takes the private name ``name`` from module ``source`` at ``lineno``."""

    importer: str
    source: str
    name: str
    lineno: int

    def __str__(self) -> str:
        return f"{self.importer}:{self.lineno} uses {self.source}.{self.name}"


@dataclass
class Report:
    """What the checker found; empty lists mean a clean package."""

    package: str
    modules: dict[str, Module]
    edges: list[Edge] = field(default_factory=list)
    cycles: list[list[str]] = field(default_factory=list)
    private: list[PrivateUse] = field(default_factory=list)
    facade_imports: list[Edge] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.cycles or self.private or self.facade_imports)

    def graph(self) -> dict[str, set[str]]:
        g: dict[str, set[str]] = {m: set() for m in self.modules}
        for e in self.edges:
            g[e.importer].add(e.target)
        return g

    def cycle_edges(self, cycle: list[str]) -> list[Edge]:
        """The import statements that keep ``cycle`` (one strongly connected component) together."""
        members = set(cycle)
        return sorted(
            {e for e in self.edges if e.importer in members and e.target in members},
            key=lambda e: (e.importer, e.lineno, e.target),
        )

    def format(self) -> str:
        lines = [f"{self.package}: {len(self.modules)} modules, {len(self.edges)} import edges"]
        lines.append(f"cycles: {len(self.cycles)}")
        for cycle in self.cycles:
            lines.append("  " + " <-> ".join(cycle))
            for e in self.cycle_edges(cycle):
                lines.append(f"      {e.importer}:{e.lineno} -> {e.target}")
        lines.append(f"private names imported across modules: {len(self.private)}")
        lines.extend(f"  {p}" for p in self.private)
        lines.append(f"imports of {self.package}.{FACADE} from inside the package: {len(self.facade_imports)}")
        lines.extend(f"  {e.importer}:{e.lineno}" for e in self.facade_imports)
        return "\n".join(lines)


def is_private(name: str) -> bool:
    """``_x`` is private; ``__x__`` (``__version__``, ``__all__``) is not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def discover(package_dir: Path) -> dict[str, Module]:
    """Every ``.py`` module under ``package_dir`` (a directory with ``__init__.py``), by dotted name."""
    package_dir = Path(package_dir)
    if not (package_dir / "__init__.py").is_file():
        raise ValueError(f"{package_dir} is not a package: it has no __init__.py")
    root = package_dir.parent
    modules: dict[str, Module] = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = rel.parts
        # Only directories that are packages themselves hold modules of the package.
        if any(not (root.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            continue
        if parts[-1] == "__init__":
            modules[".".join(parts[:-1])] = Module(".".join(parts[:-1]), path, True)
        else:
            modules[".".join(parts)] = Module(".".join(parts), path, False)
    return modules


def _resolve_from(mod: Module, level: int, name: str | None) -> str:
    """The absolute dotted name ``from <dots><name>`` refers to inside ``mod``."""
    if level == 0:
        return name or ""
    base = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
    if level - 1 > len(base):
        raise ValueError(f"{mod.path}: relative import goes above the top-level package")
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _is_ancestor_or_self(pkg: str, mod: Module) -> bool:
    """``pkg`` is ``mod``'s own package or one above it (already initialised when ``mod`` runs)."""
    own = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    return own == pkg or own.startswith(pkg + ".")


def scan(mod: Module, modules: dict[str, Module]) -> tuple[list[Edge], list[PrivateUse]]:
    """The intra-package import edges of one module and the private names it takes from other modules."""
    tree = ast.parse(mod.path.read_text(encoding="utf-8"), filename=str(mod.path))
    edges: list[Edge] = []
    private: list[PrivateUse] = []
    aliases: dict[str, str] = {}  # local name -> package module it is bound to

    def add(target: str, lineno: int) -> None:
        if target in modules and target != mod.name:
            edges.append(Edge(mod.name, target, lineno))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in modules:
                    add(a.name, node.lineno)
                    if a.asname:
                        aliases[a.asname] = a.name
                else:
                    # ``import pkg.sub.missing`` still imports the deepest existing package module.
                    parts = a.name.split(".")
                    for i in range(len(parts) - 1, 0, -1):
                        if ".".join(parts[:i]) in modules:
                            add(".".join(parts[:i]), node.lineno)
                            break
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(mod, node.level, node.module)
            if source not in modules:
                continue
            bare = node.module is None and _is_ancestor_or_self(source, mod)
            reads_init = not bare
            for a in node.names:
                sub = f"{source}.{a.name}"
                if a.name != "*" and sub in modules:
                    add(sub, node.lineno)
                    aliases[a.asname or a.name] = sub
                else:
                    reads_init = True
                    if a.name != "*" and is_private(a.name) and source != mod.name:
                        private.append(PrivateUse(mod.name, source, a.name, node.lineno))
            if reads_init:
                add(source, node.lineno)

    # ``alias._name`` on a module bound by an import above (``from ..estimate import distributed as D``).
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and is_private(node.attr)
            and aliases[node.value.id] != mod.name
        ):
            private.append(PrivateUse(mod.name, aliases[node.value.id], node.attr, node.lineno))

    # Edges from the same statement to the same target are one edge.
    unique = {(e.target, e.lineno): e for e in edges}
    return list(unique.values()), private


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: every component, each sorted, in a deterministic order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                components.append(sorted(comp))
    return sorted(components)


def check(package_dir: Path | str) -> Report:
    """Check the package rooted at ``package_dir`` (the directory holding its ``__init__.py``)."""
    package_dir = Path(package_dir)
    modules = discover(package_dir)
    report = Report(package=package_dir.name, modules=modules)
    for mod in modules.values():
        edges, private = scan(mod, modules)
        report.edges.extend(edges)
        report.private.extend(private)
    report.edges.sort(key=lambda e: (e.importer, e.lineno, e.target))
    report.private.sort(key=lambda p: (p.importer, p.lineno, p.name))
    graph = report.graph()
    report.cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    facade = f"{report.package}.{FACADE}"
    report.facade_imports = [e for e in report.edges
                             if e.target == facade and e.importer not in (facade, report.package)]
    return report


def package_dir() -> Path:
    """The ``vramplan`` package of this checkout."""
    return Path(__file__).resolve().parent.parent / "vramplan"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    report = check(Path(args[0]) if args else package_dir())
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
