"""The core does no I/O, reads no clock and draws no randomness of its own.

Checked on the source (AST) of every module in ``crdtd/core``, so a forbidden import is
caught even on a code path no test runs.

``random`` is the one judgement call. ``Node`` takes a ``random.Random`` from its caller
(one seeded stream per purpose, habit 9) and names that type in its signature, so
``node.py`` imports ``random``. That import is allowed only as a type: the module name
may appear only as ``random.Random`` inside an annotation (which ``from __future__
import annotations`` never evaluates). Any other use, such as ``random.random()``,
``random.seed(...)``, ``random.Random(...)`` or ``from random import ...``, would be
randomness the caller does not control and fails here. (Moving the import under
``if typing.TYPE_CHECKING:`` would satisfy this check too.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import crdtd.core

CORE = Path(crdtd.core.__file__).parent
MODULES = sorted(CORE.glob("*.py"))

FORBIDDEN = {
    "asyncio",
    "socket",
    "selectors",
    "time",
    "datetime",
    "os",
    "pathlib",
    "io",
    "shutil",
    "tempfile",
    "logging",
    "structlog",
    "yaml",
    "threading",
    "multiprocessing",
    "concurrent",
    "subprocess",
    "sqlite3",
    "secrets",
    "uuid",
    "importlib",
}
"""Top-level modules the core must not import: I/O, clocks, threads, entropy."""

TYPE_ONLY = {"random": "Random"}
"""Modules the core may import only to name one type in annotations."""

IO_BUILTINS = {"open", "print", "input", "__import__", "exec", "eval", "breakpoint"}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted module) for every import statement, however deeply nested."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.append((node.lineno, module))
    return found


def annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every AST node that sits inside an annotation."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
    return {id(inner) for root in roots for inner in ast.walk(root)}


def violations(source: str) -> list[str]:
    """Every way *source* breaks the core's purity rules, as ``line: what`` strings."""
    tree = ast.parse(source)
    found = []
    for line, module in imported_modules(tree):
        top = module.split(".")[0]
        if top in FORBIDDEN:
            found.append(f"{line}: imports {module}")
        if module.startswith("."):
            found.append(f"{line}: relative import {module} (name crdtd.core explicitly)")
        if top == "crdtd" and not (module == "crdtd.core" or module.startswith("crdtd.core.")):
            found.append(f"{line}: imports {module}; the core depends on nothing else of crdtd")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in TYPE_ONLY:
            found.append(f"{node.lineno}: from {node.module} import ... (import the module)")
    in_annotation = annotation_nodes(tree)
    parents = {
        id(child): parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in TYPE_ONLY:
            parent = parents.get(id(node))
            allowed = TYPE_ONLY[node.id]
            if isinstance(parent, ast.Import | ast.ImportFrom):
                continue
            if not (
                isinstance(parent, ast.Attribute)
                and parent.attr == allowed
                and id(node) in in_annotation
            ):
                found.append(
                    f"{node.lineno}: uses {node.id} other than as {node.id}.{allowed} type"
                )
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in IO_BUILTINS
        ):
            found.append(f"{node.lineno}: calls {node.func.id}()")
    return found


def test_the_core_has_the_modules_this_test_expects() -> None:
    names = {path.stem for path in MODULES}
    assert {"ids", "counters", "messages", "wire", "records", "settings", "events"} <= names
    assert {"barrier", "node", "__init__"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_a_core_module_imports_no_io_clock_thread_or_entropy(path: Path) -> None:
    assert violations(path.read_text(encoding="utf-8")) == [], path


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_a_core_module_opens_with_a_docstring(path: Path) -> None:
    assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), path


# --- the checker itself catches what it should ----------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import os.path",
        "from os import urandom",
        "import time as clock",
        "from time import monotonic",
        "import asyncio",
        "def f():\n    import socket",
        "import logging, re",
        "import structlog",
        "import yaml",
        "import threading",
        "import subprocess",
        "import sqlite3",
        "from crdtd.net import driver",
        "import crdtd.store",
        "from . import wire",
        "import random\nrandom.random()",
        "import random\nrandom.seed(1)",
        "import random\nrng = random.Random(5)",
        "import random\nx = random.Random",
        "from random import Random",
        "from random import random",
        "open('f')",
        "print('x')",
    ],
)
def test_the_checker_flags_a_forbidden_construct(source: str) -> None:
    assert violations(source)


@pytest.mark.parametrize(
    "source",
    [
        "import re\nimport hashlib, hmac, struct",
        "from crdtd.core import wire\nfrom crdtd.core.ids import Origin",
        "import random\ndef f(rng: random.Random) -> None:\n    rng.uniform(0, 1)",
        "import random\nclass A:\n    rng: random.Random",
        "import random\ndef f() -> random.Random: ...",
    ],
)
def test_the_checker_allows_pure_constructs(source: str) -> None:
    assert violations(source) == []
