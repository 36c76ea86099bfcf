"""The package's imports run one way (issue 13): no import cycle, no private name taken from another module,
and nothing inside the package imports the façade ``vramplan.api``.

The checker (``tests/archcheck.py``, also ``python -m tests.archcheck``) reads the modules with ``ast``; it is
first tested on small packages written to ``tmp_path`` whose cycles and private imports are known by
construction, so that a clean report on ``vramplan`` means something.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from archcheck import check, is_private, main, package_dir


def write_package(root: Path, files: dict[str, str]) -> Path:
    """Write ``{"pkg/a.py": source, ...}`` under ``root``; every folder on the way gets an ``__init__.py``."""
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    for rel in files:
        parent = (root / rel).parent
        while parent != root:
            (parent / "__init__.py").touch(exist_ok=True)
            parent = parent.parent
    return root / next(iter(files)).split("/")[0]


def edges(report) -> set[tuple[str, str]]:
    return {(e.importer, e.target) for e in report.edges}


# --- the checker on synthetic packages ----------------------------------------------------------------------


def test_finds_a_cycle_through_a_lazy_import(tmp_path):
    pkg = write_package(tmp_path, {
        "pkg/a.py": "from .b import helper\n",
        "pkg/b.py": """
            def helper():
                from .a import thing   # inside a function: still a dependency
                return thing
        """,
        "pkg/c.py": "from .a import helper\n",    # depends on the cycle, is not part of it
    })
    report = check(pkg)
    assert report.cycles == [["pkg.a", "pkg.b"]]
    assert not report.ok
    assert {(e.importer, e.target, e.lineno) for e in report.cycle_edges(report.cycles[0])} == {
        ("pkg.a", "pkg.b", 1), ("pkg.b", "pkg.a", 3)}


def test_finds_a_three_module_cycle_and_absolute_imports(tmp_path):
    pkg = write_package(tmp_path, {
        "pkg/x.py": "import pkg.y\n",
        "pkg/y.py": "from pkg import z\n",          # z is a submodule: imports pkg.z
        "pkg/z.py": "from pkg.x import name\n",
    })
    report = check(pkg)
    assert report.cycles == [["pkg.x", "pkg.y", "pkg.z"]]


def test_from_package_import_name_imports_the_package_init(tmp_path):
    # ``from .sub import thing`` runs sub/__init__.py, which imports top: a cycle, though top never names
    # sub/__init__ as a module.
    pkg = write_package(tmp_path, {
        "pkg/top.py": "from .sub import thing\n",
        "pkg/sub/__init__.py": "from ..top import other\nthing = 1\n",
    })
    report = check(pkg)
    assert ("pkg.top", "pkg.sub") in edges(report)
    assert report.cycles == [["pkg.sub", "pkg.top"]]


def test_from_package_import_submodule_imports_both(tmp_path):
    pkg = write_package(tmp_path, {
        "pkg/a.py": "from .sub import leaf\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/leaf.py": "",
    })
    assert {("pkg.a", "pkg.sub"), ("pkg.a", "pkg.sub.leaf")} <= edges(check(pkg))


def test_from_dot_import_submodule_is_not_a_cycle_with_the_init(tmp_path):
    # The report/ layout: __init__ re-exports pages, pages imports its sibling submodules with ``from . import``.
    pkg = write_package(tmp_path, {
        "pkg/__init__.py": "from .pages import page\n",
        "pkg/pages.py": "from . import figures, tables\n\ndef page():\n    return figures, tables\n",
        "pkg/figures.py": "",
        "pkg/tables.py": "",
    })
    report = check(pkg)
    assert {("pkg.pages", "pkg.figures"), ("pkg.pages", "pkg.tables"), ("pkg", "pkg.pages")} <= edges(report)
    assert ("pkg.pages", "pkg") not in edges(report)
    assert report.ok, report.format()


def test_from_dot_import_a_name_of_the_init_is_a_cycle(tmp_path):
    # A name (not a submodule) taken from the package's own __init__, which imports the module back.
    pkg = write_package(tmp_path, {
        "pkg/__init__.py": "from .core import run\nVERSION = '1'\n",
        "pkg/core.py": "def run():\n    from . import VERSION\n    return VERSION\n",
    })
    report = check(pkg)
    assert report.cycles == [["pkg", "pkg.core"]]


def test_finds_private_imports(tmp_path):
    pkg = write_package(tmp_path, {
        "pkg/model.py": "_static = 1\n_Static = 2\n__version__ = '1'\npublic = 3\n\ndef _own():\n    return _static\n",
        "pkg/grid.py": "from .model import _static, public\n",
        "pkg/dist.py": """
            def f():
                from .model import _Static, __version__
                return _Static, __version__
        """,
        "pkg/user.py": "from . import model as M\n\ndef g():\n    return M._static + M.public\n",
    })
    report = check(pkg)
    assert [(p.importer, p.source, p.name, p.lineno) for p in report.private] == [
        ("pkg.dist", "pkg.model", "_Static", 3),
        ("pkg.grid", "pkg.model", "_static", 1),
        ("pkg.user", "pkg.model", "_static", 4),
    ]
    assert report.cycles == []
    assert not report.ok
    assert "pkg.grid:1 uses pkg.model._static" in report.format()


def test_finds_imports_of_the_facade(tmp_path):
    pkg = write_package(tmp_path, {
        "pkg/api.py": "from .core import run\n\ndef plan():\n    return run()\n",
        "pkg/core.py": "def run():\n    return 1\n",
        "pkg/planner.py": "def f():\n    from .api import plan\n    return plan()\n",
    })
    report = check(pkg)
    assert [(e.importer, e.target, e.lineno) for e in report.facade_imports] == [("pkg.planner", "pkg.api", 2)]
    assert report.cycles == [] and report.private == []
    assert not report.ok


def test_the_top_level_init_may_re_export_the_facade_but_reading_it_back_is_a_cycle(tmp_path):
    pkg = write_package(tmp_path, {
        "pkg/__init__.py": "__version__ = '1'\n\ndef __getattr__(name):\n    from .api import plan\n    return plan\n",
        "pkg/api.py": "from .estimate import estimate as plan\n",
        "pkg/estimate.py": "def estimate():\n    from . import __version__\n    return __version__\n",
    })
    report = check(pkg)
    assert ("pkg", "pkg.api") in edges(report)
    assert report.facade_imports == []
    assert report.cycles == [["pkg", "pkg.api", "pkg.estimate"]]


def test_a_clean_package_passes(tmp_path, capsys):
    pkg = write_package(tmp_path, {
        "pkg/__init__.py": "__version__ = '1'\n",
        "pkg/units.py": "GiB = 2**30\n",
        "pkg/estimate/__init__.py": "from .model import estimate\n",
        "pkg/estimate/model.py": "from ..units import GiB\n\ndef estimate():\n    from .. import __version__\n"
                                 "    return GiB, __version__\n",
        "pkg/cli.py": "import json\nfrom .estimate import estimate\nfrom . import units as U\nx = U.GiB\n",
        "pkg/api.py": "from .estimate import estimate\n",
    })
    report = check(pkg)
    assert report.ok, report.format()
    assert set(report.modules) == {"pkg", "pkg.units", "pkg.estimate", "pkg.estimate.model", "pkg.cli", "pkg.api"}
    assert ("pkg.cli", "pkg.units") in edges(report) and ("pkg.estimate.model", "pkg") in edges(report)
    assert main([str(pkg)]) == 0
    assert "cycles: 0" in capsys.readouterr().out


def test_main_exits_1_and_prints_what_it_found(tmp_path, capsys):
    pkg = write_package(tmp_path, {"pkg/a.py": "from .b import x\n", "pkg/b.py": "from .a import _y\n"})
    assert main([str(pkg)]) == 1
    out = capsys.readouterr().out
    assert "pkg.a <-> pkg.b" in out and "pkg.b:1 uses pkg.a._y" in out


def test_folders_without_init_are_not_modules(tmp_path):
    pkg = write_package(tmp_path, {"pkg/a.py": ""})
    (pkg / "data").mkdir()
    (pkg / "data" / "tool.py").write_text("from pkg.a import _x\n")
    assert set(check(pkg).modules) == {"pkg", "pkg.a"}


@pytest.mark.parametrize(("name", "private"), [("_static", True), ("_Static", True), ("__version__", False),
                                               ("__all__", False), ("public", False), ("__x", True)])
def test_is_private(name, private):
    assert is_private(name) is private


# --- the vramplan package -----------------------------------------------------------------------------------

REAL = check(package_dir())


def test_the_checker_reads_every_module_of_vramplan():
    files = {p for p in package_dir().rglob("*.py") if (p.parent / "__init__.py").is_file()}
    modules = check(package_dir()).modules
    assert {m.path for m in modules.values()} == files
    assert "vramplan.cli.main" in modules and "vramplan" in modules


def test_vramplan_has_no_import_cycle():
    assert REAL.cycles == [], REAL.format()


def test_vramplan_takes_no_private_name_from_another_module():
    assert REAL.private == [], REAL.format()


def test_nothing_inside_vramplan_imports_the_api_facade():
    assert REAL.facade_imports == [], REAL.format()
