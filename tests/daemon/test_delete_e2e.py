"""A delete end to end: three crdtd subprocesses on loopback, driven through crdtctl.
The deleted variable is gone on every node, stays gone across a kill -9 (the grave is
on disk), and an add after it counts from zero everywhere, also through a full sync."""

from __future__ import annotations

import json
import signal
import time

from tests.daemon.loopback import Cluster, Daemon

GONE_TIMEOUT_S = 20.0


def shown(daemon: Daemon, variable: str) -> bool:
    """Whether *daemon* shows *variable*: in its list, and its get answers (exit 0, not
    4, "no such variable")."""
    listed = variable in daemon.data("variables")["variables"]
    got = daemon.ctl("get", variable, check=False).returncode
    assert got in (0, 4), daemon.log_tail()
    assert listed == (got == 0), f"{daemon.name}: variables and get disagree on {variable}"
    return listed


def wait_gone(cluster: Cluster, variable: str) -> None:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while any(shown(daemon, variable) for daemon in cluster.daemons):
        assert time.monotonic() < deadline, f"{variable} still shown somewhere"
        time.sleep(0.1)


def test_a_delete_is_seen_everywhere_survives_kill_9_and_a_later_add_counts_from_zero(
    cluster: Cluster,
) -> None:
    first, second, third = cluster.daemons
    for index, daemon in enumerate(cluster.daemons):
        daemon.ctl("add", "x", str(10 * (index + 1)))
    cluster.wait_agree("x", 60)

    assert first.ctl("delete", "x").stdout == "deleted x\n"
    wait_gone(cluster, "x")
    again = second.ctl("delete", "x", check=False)
    assert (again.returncode, again.stdout) == (4, "x: no such variable (nothing deleted)\n")
    logged = [json.loads(line) for line in first.log.read_text().splitlines()]
    assert {"event": "variable_deleted", "variable": "x"} in [
        {key: line.get(key) for key in ("event", "variable")} for line in logged
    ]

    third.kill(signal.SIGKILL)
    third.start()
    assert not shown(third, "x"), "the grave came back from disk"

    second.ctl("add", "x", "3")
    cluster.wait_agree("x", 3)
    second.kill(signal.SIGKILL)
    second.start()
    assert second.data("get", "x")["value"] == 3, "nothing buried came back from disk"

    assert first.data("sync")["result"] == "completed"
    cluster.wait_agree("x", 3)
    for daemon in cluster.daemons:
        assert daemon.data("get", "x")["before"] == 3
    assert first.data("verify")["agree"] is True
