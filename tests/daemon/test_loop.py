"""The daemon's event loop: uvloop when installed, asyncio's own on request or without."""

from __future__ import annotations

import builtins
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from crdtd.daemon.loop import ENV, LoopUnavailable, loop_factory
from tests.daemon.loopback import Cluster

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def test_asyncio_is_chosen_by_name_and_a_bad_name_is_refused() -> None:
    factory, name = loop_factory("asyncio")
    loop = factory()
    try:
        assert name == "asyncio" and type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()
    with pytest.raises(LoopUnavailable, match="expected one of auto, uvloop, asyncio"):
        loop_factory("tokio")


def test_without_uvloop_auto_falls_back_and_uvloop_by_name_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    monkeypatch.setattr(importlib, "import_module", lambda name: no_uvloop(name))
    assert loop_factory("auto")[1] == "asyncio"
    with pytest.raises(LoopUnavailable, match="apt install python3-uvloop"):
        loop_factory("uvloop")


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
def test_a_cluster_on_either_loop_counts_every_add(
    choice: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if choice == "uvloop" and not HAS_UVLOOP:
        pytest.skip("uvloop is not installed here")
    monkeypatch.setenv(ENV, choice)
    cluster = Cluster.start(tmp_path, 2, log_level="info")
    try:
        for index, daemon in enumerate(cluster.daemons):
            daemon.ctl("add", "x", str(index + 5))
        cluster.wait_agree("x", 11)
        started = [
            json.loads(line)
            for line in cluster.daemons[0].log.read_text().splitlines()
            if '"started"' in line
        ]
        assert started[0]["event_loop"].startswith(choice)
    finally:
        cluster.stop()
