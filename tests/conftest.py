"""Per-test timeouts by kind of test (pytest-timeout).

The default, ``timeout`` in pyproject.toml, fits a unit, simulator or daemon test. A test
that is slow by design gets the limit of its mark from `MARK_TIMEOUTS_S` instead, kept
here in one table rather than on each test; a ``@pytest.mark.timeout(...)`` of its own
wins over both. Each limit is several times what the test takes on a loaded 2-core
machine: a limit says "this hangs", never "this is slow".
"""

from __future__ import annotations

import pytest

MARK_TIMEOUTS_S = {
    "boot": 1800.0,  # three containers, and a Debian mirror on the first run
    "slow": 1200.0,  # a chunk of the long seed sweep
    "lan": 300.0,  # real daemons, real timers, faults that last tens of seconds
    "vagrant": 4200.0,  # above test_vagrant.py's own 3900 s subprocess bound (50 min + box)
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is not None:
            continue
        limits = [s for mark, s in MARK_TIMEOUTS_S.items() if item.get_closest_marker(mark)]
        if limits:
            item.add_marker(pytest.mark.timeout(max(limits)))
