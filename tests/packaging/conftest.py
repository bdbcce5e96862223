"""The ``vagrant`` test runs only when asked for by name: ``-m vagrant``.

An explicit ``-m`` replaces the one in pyproject.toml's addopts, so CI's ``-m "not slow
and not boot and not lan"`` would select it; this hook deselects ``vagrant`` tests
whenever the marker expression does not mention ``vagrant``.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "vagrant" in (config.option.markexpr or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("vagrant")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("vagrant")]
