"""The house plan, enforced: data flow one way and no package imports a downstream one.

Rooms, upstream first: acquisition -> streaming (with streaming.archive) -> processors ->
dashboard. A product package may import its own modules and upstream rooms, never downstream
ones. The simulators implement backends of acquisition's interfaces: they may import
acquisition, and no product package imports them. From the command-line package (`opmon.*`,
`opmon.commands`) product packages may import only `opmon.errors` and `opmon.waiting`; the CLI
package and `opmon.benchmarks` wire everything and may import anything.

Every import statement counts, at module level or inside a function (an import hidden in a
function to dodge a cycle is still a dependency), and so does `importlib.import_module` of a
literal name. Each offence is named with its module, file, line and the imported module.
"""
from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Product rooms in the direction data flow.
LAYERS = ("acquisition", "streaming", "processors", "dashboard")
#: Modules of the CLI package every product package may use: errors, the bounded poll, and the
#: deferred Ctrl-C check points of offline commands (none of them imports anything of opmon).
SHARED_CLI_MODULES = frozenset({"opmon.errors", "opmon.waiting", "opmon.interrupt"})


@dataclass(frozen=True)
class Import:
    """One import of an opmon module: who, where, what."""

    importer: str
    path: Path
    line: int
    imported: str

    def __str__(self) -> str:
        return f"{self.importer} ({self.path.relative_to(ROOT)}:{self.line}) imports {self.imported}"


def package_dirs() -> dict[str, Path]:
    """Import name -> folder of every top-level opmon package, from pyproject's package-dir."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {name: ROOT / folder for name, folder in config["tool"]["setuptools"]["package-dir"].items()}


def product_modules() -> dict[str, Path]:
    """Module name -> file of every opmon module (subpackages included)."""
    modules: dict[str, Path] = {}
    for package, folder in package_dirs().items():
        nested = [d for p, d in package_dirs().items() if p != package and d.is_relative_to(folder)]
        for path in sorted(folder.rglob("*.py")):
            if ".venv" in path.parts or any(path.is_relative_to(d) for d in nested):
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts[:-1], *(() if parts[-1] == "__init__" else (parts[-1],))))
            modules[name] = path
    return modules


def room(module: str) -> str:
    """acquisition, streaming, processors, dashboard, simulators, benchmarks or cli."""
    parts = module.split(".")
    if parts[0] != "opmon" or len(parts) < 2:
        return "cli"
    return parts[1] if parts[1] in (*LAYERS, "simulators", "benchmarks") else "cli"


def imports_of(module: str, path: Path, source: str, known: set[str]) -> Iterator[Import]:
    """Every opmon module `module` imports, anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from opmon.streaming import protocol` imports the module opmon.streaming.protocol
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        else:
            continue
        for name in dict.fromkeys(names):
            if name == "opmon" or name.startswith("opmon."):
                yield Import(module, path, node.lineno, name)


def offence(imp: Import) -> str | None:
    """Why `imp` breaks the house plan, or None if the plan allows it."""
    src, dst = room(imp.importer), room(imp.imported)
    if src in ("cli", "benchmarks") or src == dst:
        return None
    if dst == "cli":
        if imp.imported == "opmon" or imp.imported in SHARED_CLI_MODULES:
            return None   # the bare `opmon` package only holds __version__ (checked below)
        return f"{src} may import from the command-line package only {', '.join(sorted(SHARED_CLI_MODULES))}"
    if dst == "benchmarks":
        return f"{src} may not import benchmarks (they measure the product, the product never needs them)"
    if dst == "simulators":
        return f"{src} may not import simulators (they implement acquisition's interfaces; nothing depends on them)"
    if src == "simulators":
        return None if dst == "acquisition" else f"simulators may import only acquisition, not {dst}"
    if LAYERS.index(dst) > LAYERS.index(src):
        return f"{src} may not import {dst}: it is downstream (data flow {' -> '.join(LAYERS)})"
    return None


def all_imports() -> list[Import]:
    modules = product_modules()
    known = set(modules)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, path.read_text(), known)]


def test_no_package_imports_a_downstream_one():
    offences = [f"{imp}: {why}" for imp in all_imports() if (why := offence(imp)) is not None]
    assert not offences, "back edges of the house plan:\n" + "\n".join(offences)


def test_every_shared_cli_module_imports_nothing_of_opmon():
    """What every product package may import from the CLI package must not pull the CLI in."""
    modules = product_modules()
    for name in SHARED_CLI_MODULES:
        path = modules[name]
        assert not [imp for imp in imports_of(name, path, path.read_text(), set(modules)) if imp.imported != "opmon.errors"], name


def test_the_bare_opmon_package_imports_nothing_of_opmon():
    """Product modules may read `opmon.__version__`: only safe while opmon/__init__.py wires nothing."""
    path = product_modules()["opmon"]
    assert not list(imports_of("opmon", path, path.read_text(), set(product_modules())))


def test_every_module_belongs_to_a_room():
    modules = product_modules()
    assert {"opmon.acquisition.potentiostat", "opmon.streaming.protocol", "opmon.processors.maps",
            "opmon.dashboard.app", "opmon.simulators.cell", "opmon.cli"} <= set(modules)
    assert {room(m) for m in modules} == {*LAYERS, "simulators", "benchmarks", "cli"}


_BACK_EDGES = '''
from opmon.processors.maps import MapResult
from ..dashboard import model
from opmon import demo

def later():
    import opmon.simulators.cell
    importlib.import_module("opmon.dashboard.app")
'''


def test_the_checker_names_each_back_edge_even_inside_functions():
    known = {"opmon.dashboard.model", "opmon.demo"}
    found = list(imports_of("opmon.streaming.example", ROOT / "streaming" / "example.py", _BACK_EDGES, known))
    assert [(imp.line, imp.imported) for imp in found] == [
        (2, "opmon.processors.maps"), (3, "opmon.dashboard.model"), (4, "opmon.demo"),
        (7, "opmon.simulators.cell"), (8, "opmon.dashboard.app")]
    reasons = [offence(imp) for imp in found]
    assert all(reasons), reasons
    assert "downstream" in str(reasons[0]) and "command-line" in str(reasons[2]) and "simulators" in str(reasons[3])
    assert "streaming/example.py:2" in str(found[0])


@pytest.mark.parametrize("importer, imported, allowed", [
    ("opmon.dashboard.subscriber", "opmon.streaming.map_messages", True),
    ("opmon.processors.live", "opmon.streaming.archive.reader", True),
    ("opmon.streaming.archive.reader", "opmon.processors.maps", False),
    ("opmon.simulators.beamline", "opmon.acquisition.detector", True),
    ("opmon.acquisition.potentiostat", "opmon.simulators.cell", False),
    ("opmon.simulators.beamline", "opmon.streaming.publisher", False),
    ("opmon.acquisition.plans", "opmon.waiting", True),
    ("opmon.acquisition.plans", "opmon.config", False),
    ("opmon.commands.demo", "opmon.dashboard.server", True),
    ("opmon.benchmarks.bench_stream", "opmon.simulators.render", True),
])
def test_the_rule_of_each_room(importer, imported, allowed):
    assert (offence(Import(importer, ROOT / "x.py", 1, imported)) is None) == allowed
