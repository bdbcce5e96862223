"""Fixtures for the LAN tests: real crdtd daemons in network namespaces (`crdtd.lab`).

- ``make_lab(nodes=5, config=...)``: a `Lab` with its nodes started and in full mesh;
  closed (daemons killed, namespaces and temp dir removed) after the test, pass or fail;
- ``lab_rng``: the test's random stream, seeded from ``CRDTD_LAB_SEED`` or at random; a
  failing test's report shows the seed (the same faults on the same nodes; real timing
  differs from run to run);
- every test here skips, with the reason, without root, ``ip netns`` or iptables.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from crdtd.lab import Lab, clean_stale, unavailable_reason

MakeLab = Callable[..., Lab]


@pytest.fixture(scope="session")
def lab_environment() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    clean_stale()


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
