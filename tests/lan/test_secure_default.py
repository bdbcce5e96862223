"""Secure by default on a real LAN address: a lab node is keyed (the lab makes a cluster
key per run), a keyless node on a namespace address refuses to start with exit status
78 and says how to fix it, and starts once its config allows unauthenticated traffic.

Bounded: every daemon start and exit is waited for with a timeout; the lab (namespaces,
daemons, temp dir) is removed by the ``make_lab`` fixture, also on failure.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

import pytest
import yaml

from crdtd.daemon.keys import load_keys
from crdtd.daemon.main import EXIT_CONFIG
from crdtd.lab import KEYLESS, Lab, Node

pytestmark = pytest.mark.lan

MakeLab = Callable[..., Lab]
EXIT_WAIT_S = 30.0


def run_daemon(node: Node, *options: str) -> subprocess.CompletedProcess[str]:
    """Run the node's daemon in its namespace with its config and *options*, to the end
    (it is expected to exit at once); stdout and stderr apart."""
    node.directory.mkdir(parents=True, exist_ok=True)
    node.config_path.write_text(yaml.safe_dump(node.config(), sort_keys=False))
    argv = [*node.lab.daemon_argv, "--config", str(node.config_path), *options]
    proc = node.popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=node.lab.daemon_env,
    )
    try:
        out, err = proc.communicate(timeout=EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{node.name}: crdtd {' '.join(options)} still ran after {EXIT_WAIT_S:g} s")
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), err.decode())


def test_a_keyless_node_on_a_lan_address_refuses_to_start_unless_allowed(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(2)
    [key] = load_keys(lab.key_file)
    for node in lab.nodes:
        assert node.call("keys")["signing"] == key.key_id, "a lab node must run keyed"

    bare = lab.add_node("bare", config={"security": {"key_file": None}}, start=False)
    done = run_daemon(bare)
    assert done.returncode == EXIT_CONFIG, done
    [message] = done.stderr.splitlines()
    assert message.startswith(f"crdtd: {bare.config_path}: security.key_file is not set")
    assert f"is veth0 ({bare.address}), not loopback" in message
    assert "`crdtd keygen /etc/crdtd/cluster.key`" in message
    assert "security.allow_unauthenticated: true" in message
    [line] = done.stdout.splitlines()  # log.format json: the refusal is a JSON event too
    event = json.loads(line)
    assert (event["event"], event["exit_status"]) == ("startup_failed", EXIT_CONFIG)
    assert f"crdtd: {event['error']}" == message
    assert not bare.state_dir.exists(), "refused before the state was touched"

    checked = run_daemon(bare, "--check-config")
    assert (checked.returncode, checked.stderr) == (EXIT_CONFIG, done.stderr)

    bare.overrides = dict(KEYLESS)
    bare.start()  # waits until it answers
    assert bare.call("keys")["signing"] is None
    # Keyless among keyed nodes, it is nobody's peer: it rejects their signed datagrams.
    deadline = time.monotonic() + EXIT_WAIT_S
    while not bare.call("keys")["rejected"].get("unexpected_mac"):
        assert time.monotonic() < deadline, f"bare never heard the keyed nodes\n{bare.tail()}"
        time.sleep(0.2)
    assert bare.running and bare.call("peers")["peers"] == []
