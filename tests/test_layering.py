"""Which package of crdtd may import which: every edge is stated here, and any other
fails. Checked on the source (AST), so an import on a path no test runs is caught too.

The layers, bottom up: ``core`` (the protocol, pure) and ``control`` (the socket's
request format) import nothing of ours; ``store`` and ``net`` put the core on a disk
and on sockets; ``daemon`` wires them; ``cli`` is crdtctl, which talks to a daemon only
through ``control``, so it starts fast and never loads the core; ``client`` is the
public library for programs, on ``control`` alone likewise. ``sim`` runs the core
under a simulated network, and ``lab`` runs real daemons in network namespaces; nothing
of the product imports either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import crdtd

ROOT = Path(crdtd.__file__).parent
ALLOWED = {
    "core": {"core"},
    "control": {"control"},
    "store": {"store", "core"},
    "net": {"net", "core"},
    "daemon": {"daemon", "core", "control", "net", "store"},
    "cli": {"cli", "control"},
    "client": {"client", "control"},
    "sim": {"sim", "core"},
    "lab": {"lab", "core", "control", "daemon"},
}
PACKAGES = sorted(path.name for path in ROOT.iterdir() if (path / "__init__.py").exists())


def imported_packages(path: Path) -> set[str]:
    """The crdtd packages *path* imports (``crdtd.X...`` -> ``X``), relative ones too."""
    package = path.parent.name
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names = [f"crdtd.{package}"] if node.level == 1 else ["crdtd.?"]
            elif node.module == "crdtd":  # a package, or a name of crdtd/__init__.py
                names = [f"crdtd.{alias.name}" for alias in node.names if alias.name in PACKAGES]
            else:
                names = [node.module or ""]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("crdtd.")}
    return found


def test_every_package_has_its_edges_stated() -> None:
    assert set(PACKAGES) == set(ALLOWED)


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_what_its_layer_allows(package: str) -> None:
    wrong = {
        f"{path.relative_to(ROOT)} imports crdtd.{imported}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for imported in imported_packages(path)
        if imported not in ALLOWED[package]
    }
    assert not wrong, sorted(wrong)


def test_the_top_level_module_imports_no_package() -> None:
    assert imported_packages(ROOT / "__init__.py") == set()
