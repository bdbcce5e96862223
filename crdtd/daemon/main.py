"""``crdtd``: the daemon's entry point. Wiring only: config, logs, state, sockets, run.

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 1 when it cannot start or its disk
fails (the message says why), 2 for a bad command line or config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from crdtd import __version__
from crdtd.control.server import ControlServer, SocketPathError
from crdtd.core.ids import Origin
from crdtd.core.node import Node
from crdtd.daemon.config import Config, ConfigError, default_config_path, load_config
from crdtd.daemon.handler import Handler
from crdtd.daemon.logs import configure_logging, get_logger, set_level
from crdtd.daemon.systemd import Notifier
from crdtd.net.driver import Driver
from crdtd.net.sockets import (
    NetworkSetupError,
    multicast_socket,
    resolve_interface,
    unicast_socket,
)
from crdtd.store.sqlite import Store, StoreError


class StartupError(Exception):
    """The daemon cannot start; the message tells the operator what to fix."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="crdtd", description="Keep named integer counters in agreement across a LAN."
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML config (default: /etc/crdtd/crdtd.yaml if it exists, else built-in defaults)",
    )
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    parser.add_argument("--version", action="version", version=f"crdtd {__version__}")
    args = parser.parse_args(argv)
    path = args.config or default_config_path()
    try:
        config = load_config(path)
    except ConfigError as error:
        print(f"crdtd: {error}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"crdtd: {path or 'built-in defaults'}: ok")
        return 0
    configure_logging(config.log.level, config.log.format, node_id=None)
    try:
        asyncio.run(_serve(config, path))
    except (StartupError, StoreError, NetworkSetupError, SocketPathError) as error:
        get_logger().error("startup_failed", error=str(error))
        print(f"crdtd: {error}", file=sys.stderr)
        return 1
    return 0


def new_node_id() -> str:
    """A readable id that is not an address: the host name and a random suffix."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{secrets.token_hex(3)}"


def new_incarnation() -> int:
    """Milliseconds since the epoch when the state was created: a node that lost its
    state comes back with a larger one, so peers can tell old datagrams from new."""
    return int(time.time() * 1000)


async def _serve(config: Config, config_path: Path | None) -> None:
    store = Store.open(config.node.state_dir, config.node.id, new_incarnation, new_node_id)
    try:
        await _run(config, config_path, store)
    finally:
        store.close()


async def _run(config: Config, config_path: Path | None, store: Store) -> None:
    configure_logging(config.log.level, config.log.format, node_id=store.node_id)
    log = get_logger()
    net = config.network
    interface = resolve_interface(net.interface)
    multicast = multicast_socket(net.group, net.port, interface)
    unicast = unicast_socket(net.unicast_port, interface, net.ttl)
    loop = asyncio.get_running_loop()
    rng_seed = secrets.randbits(64)
    node = Node(
        Origin(store.node_id, store.incarnation),
        config.settings(),
        random.Random(rng_seed),
        loop.time(),
        await asyncio.to_thread(store.load),
    )
    notifier = Notifier()
    driver = Driver(node, store, (net.group, net.port), log, notifier)
    await driver.attach(unicast, multicast)
    socket_path = config.control.socket
    socket_path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    server = ControlServer(
        socket_path,
        Handler(driver, random.Random(rng_seed + 1)),
        connections_max=config.limits.control_connections_max,
    )
    await server.start()
    loop.add_signal_handler(signal.SIGTERM, driver.stop)
    loop.add_signal_handler(signal.SIGINT, driver.stop)
    loop.add_signal_handler(signal.SIGHUP, _reload, config_path)
    log.info(
        "started",
        version=__version__,
        incarnation=store.incarnation,
        interface=interface.name,
        address=f"{interface.address}:{net.unicast_port}",
        group=f"{net.group}:{net.port}",
        ttl=net.ttl,
        socket=str(socket_path),
        variables=len(node.counters),
        ops_in_log=node.ops_in_log(),
        pid=os.getpid(),
    )
    notifier.notify(READY="1", STATUS=f"mode={node.mode.value} peers=0")
    try:
        await driver.run()
    finally:
        await server.close()
        log.info("stopped")


def _reload(config_path: Path | None) -> None:
    """SIGHUP: re-read the config and apply what can change live (the log level)."""
    logger = get_logger()
    try:
        config = load_config(config_path)
    except ConfigError as error:
        logger.error("config_reload_failed", error=str(error))
        return
    set_level(config.log.level)
    logger.info("config_reloaded", level=config.log.level)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
