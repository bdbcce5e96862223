"""The add timeout: one timer for every add in flight, late ones answered timeout.
The loop's clock is set by hand, so nothing here waits on wall time."""

from __future__ import annotations

import asyncio

import pytest

from crdtd.control.protocol import ControlError, ErrorCode
from crdtd.daemon.handler import Deadlines


def test_only_the_answers_still_missing_at_their_deadline_are_late() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        clock = [1000.0]
        loop.time = lambda: clock[0]  # type: ignore[method-assign]
        deadlines = Deadlines(loop, 10.0, ControlError(ErrorCode.TIMEOUT, "late"))
        answered, missing = loop.create_future(), loop.create_future()
        deadlines.watch(answered)
        deadlines.watch(missing)
        answered.set_result({"ok": 1})
        clock[0] = 1005.0
        later = deadlines.watch(loop.create_future())  # due at 1015
        clock[0] = 1010.0
        deadlines._expire()
        assert answered.result() == {"ok": 1}
        with pytest.raises(ControlError) as late:
            missing.result()
        assert late.value.code == ErrorCode.TIMEOUT
        assert not later.done()
        clock[0] = 1015.0
        deadlines._expire()
        assert isinstance(later.exception(), ControlError)
        assert deadlines._timer is None  # nothing left to wait for

    asyncio.run(scenario())
