"""Fixtures for the LAN tests: real crdtd daemons in network namespaces (`crdtd.lab`).

- ``make_lab(nodes=5, config=...)``: a `Lab` with its nodes started and in full mesh;
  closed (daemons killed, namespaces and temp dir removed) after the test, pass or fail;
- ``lab_rng``: the test's random stream, seeded from ``CRDTD_LAB_SEED`` or at random; a
  failing test's report shows the seed (the same faults on the same nodes; real timing
  differs from run to run);
- every test here skips, with the reason, without root, ``ip netns`` or iptables;
- the tests run in parallel (``pytest -n 2``): each `Lab` names its namespaces by a run
  id of its own and keeps its bridge and addresses in namespaces of its own, so two labs
  never meet. A test that needs no other lab to open while it runs (one that leaves a
  dead run behind for `clean_stale` to find, which any other `Lab.open` would clean up
  first) asks for ``lab_alone``: every other lab test holds a shared ``flock`` on
  `TESTS_LOCK`, and ``lab_alone`` an exclusive one.
"""

from __future__ import annotations

import fcntl
import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from crdtd.lab import Lab, clean_stale, netns, unavailable_reason

MakeLab = Callable[..., Lab]
TESTS_LOCK = netns.LOCK_DIR / "tests.rwlock"
"""Not a ``*.lock`` file, so `clean_stale` never mistakes it for a run's lock."""


@pytest.fixture(scope="session")
def lab_checked() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    clean_stale()


def _hold_tests_lock(operation: int) -> Iterator[None]:
    netns.LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(TESTS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, operation)  # the kernel drops it if this worker dies
        yield
    finally:
        os.close(fd)


@pytest.fixture
def lab_environment(lab_checked: None) -> Iterator[None]:
    """The lab can run here, and no ``lab_alone`` test is running."""
    yield from _hold_tests_lock(fcntl.LOCK_SH)


@pytest.fixture
def lab_alone(lab_checked: None) -> Iterator[None]:
    """The lab can run here, and no other lab test is running (in any worker)."""
    yield from _hold_tests_lock(fcntl.LOCK_EX)


@pytest.fixture
def make_lab(lab_environment: None) -> Iterator[MakeLab]:
    labs: list[Lab] = []

    def make(nodes: int = 5, **options: Any) -> Lab:
        lab = Lab(nodes, **options)
        labs.append(lab)
        lab.open()
        lab.wait_mesh(timeout_s=30 + nodes)
        return lab

    yield make
    for lab in reversed(labs):
        lab.close()


@pytest.fixture
def lab_rng(request: pytest.FixtureRequest) -> random.Random:
    seed = int(os.environ.get("CRDTD_LAB_SEED") or random.randrange(10**6))
    request.node.user_properties.append(("lab_seed", seed))
    return random.Random(f"{seed}/{request.node.name}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for key, value in item.user_properties:
            if key == "lab_seed":
                report.sections.append(
                    ("lab seed", f"rerun with CRDTD_LAB_SEED={value} pytest {item.nodeid}")
                )
