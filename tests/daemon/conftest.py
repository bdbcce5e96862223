"""Fixtures the daemon tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.loopback import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three daemons on loopback, with no scheduled full sync (a test starts its own)."""
    cluster = Cluster.start(tmp_path, 3, extra_config="sync: {interval_s: 0}\n")
    try:
        yield cluster
    finally:
        cluster.stop()
