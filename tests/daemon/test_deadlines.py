"""The add timeout: one timer for every add in flight, late ones answered timeout.
The loop's clock is set by hand, so nothing here waits on wall time."""

from __future__ import annotations

import asyncio
from typing import Any

from crdtd.control.protocol import ControlError, ErrorCode
from crdtd.daemon.handler import Deadlines


def test_only_the_answers_still_missing_at_their_deadline_are_late() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        clock = [1000.0]
        loop.time = lambda: clock[0]  # type: ignore[method-assign]
        deadlines = Deadlines(loop, 10.0, ControlError(ErrorCode.TIMEOUT, "late"))
        got: dict[str, list[tuple[Any, Any]]] = {"answered": [], "missing": [], "later": []}

        def reply(name: str) -> Any:
            return deadlines.watch(lambda data, error: got[name].append((data, error)))

        answered, missing = reply("answered"), reply("missing")
        answered({"ok": 1}, None)
        clock[0] = 1005.0
        later = reply("later")  # due at 1015
        clock[0] = 1010.0
        deadlines._expire()
        assert got["answered"] == [({"ok": 1}, None)]
        [(data, error)] = got["missing"]
        assert data is None
        assert isinstance(error, ControlError)
        assert error.code == ErrorCode.TIMEOUT
        assert got["later"] == []
        missing({"ok": 2}, None)  # the answer after the timeout is dropped
        assert len(got["missing"]) == 1
        clock[0] = 1015.0
        deadlines._expire()
        assert isinstance(got["later"][0][1], ControlError)
        later({"ok": 3}, None)
        assert len(got["later"]) == 1
        assert deadlines._timer is None  # nothing left to wait for

    asyncio.run(scenario())
