"""``crdtd``: the daemon's entry point. Wiring only: config, keys, logs, state, sockets, run.

Exit codes: 0 after a clean stop (SIGTERM/SIGINT); 78 (EX_CONFIG) for any config it
cannot run: a file that does not load, a key file it cannot use, an interface that is
not here, no ``security.key_file`` on an interface that is not loopback (without
``security.allow_unauthenticated``), or sockets systemd should not have passed
(`crdtd.daemon.preflight`, run by ``--check-config`` too); 1 when it cannot start for a
reason that may pass (a port in use, the state directory) or its disk fails; 2 for a bad
command line. The unit does not restart on 2 or 78 (``RestartPreventExitStatus=``):
starting again cannot fix either. Every start-up failure is logged as
``startup_failed`` in ``log.format`` and written to stderr.

Secure by default: a keyless node on a LAN would take any datagram from anyone, so it
is refused before it binds a socket, with the steps to make and install a key; loopback
(the demo, the tests) stays keyless, since nobody else can reach it.

``crdtd keygen PATH`` writes a new key file (`crdtd.daemon.keys.write_new_key_file`).

Signals: SIGTERM and SIGINT stop cleanly. SIGHUP re-reads the config (and applies its log
level) and the key file named by ``security.key_file`` at startup, then hands the keys to
the node through the driver; a bad file is logged and the running settings stay.

Every boot proposes a new incarnation from the wall clock (`new_incarnation`), which the
node raises above any its state started (`crdtd.core.identity`), and numbers its
datagrams from the wall clock in microseconds (``seq_start``): barrier ids are built
from those numbers (see `crdtd.core.replay`).

Sockets systemd passes (socket activation) are served as read-only control sockets:
``crdtd.socket`` names its socket ``readonly`` and gives it a group of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
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

import yaml

from crdtd import __version__
from crdtd.control.server import ControlServer, SocketPathError
from crdtd.core.identity import SALT_BITS, propose_incarnation
from crdtd.core.ids import Origin
from crdtd.core.node import Node
from crdtd.core.settings import Key
from crdtd.daemon.config import Config, ConfigError, default_config_path, load_config
from crdtd.daemon.diagnosis import NetInfo
from crdtd.daemon.handler import Handler
from crdtd.daemon.keys import describe_keys, load_keys, write_new_key_file
from crdtd.daemon.logs import (
    FORMATS,
    LEVELS,
    configure_logging,
    current_level,
    get_logger,
    set_level,
)
from crdtd.daemon.loop import LoopUnavailable, loop_factory
from crdtd.daemon.metrics import MetricsServer
from crdtd.daemon.preflight import KEYGEN_EXAMPLE_PATH, preflight
from crdtd.daemon.reporting import Reporter
from crdtd.daemon.systemd import ListenFdsError, Notifier, listen_fds
from crdtd.net.driver import Driver
from crdtd.net.sockets import (
    Interface,
    NetworkSetupError,
    multicast_socket,
    unicast_socket,
)
from crdtd.store.sqlite import Store, StoreError

READ_ONLY_SOCKET_NAME = "readonly"  # FileDescriptorName= of crdtd.socket
EXIT_FAILED = 1
EXIT_USAGE = 2  # argparse exits with it on a bad command line
EXIT_CONFIG = 78  # EX_CONFIG of sysexits.h; in the unit's RestartPreventExitStatus


class StartupError(Exception):
    """The daemon cannot start; the message tells the operator what to fix."""


def build_parser() -> argparse.ArgumentParser:
    """crdtd's command line (the docs' commands are checked against it: tests/test_docs.py)."""
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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    keygen = commands.add_parser(
        "keygen",
        help="write a new cluster key file (mode 0600; never replaces a file)",
        description="Write a new cluster key file for security.key_file: one key, 32 "
        "random bytes, mode 0600. An existing file is never replaced.",
    )
    keygen.add_argument("path", type=Path, metavar="PATH", help=f"e.g. {KEYGEN_EXAMPLE_PATH}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "keygen":
        return _keygen(args.path)
    path = args.config or default_config_path()
    try:
        config = load_config(path)
    except ConfigError as error:
        return _config_failed(str(error), args.check_config, _log_format_of(path))
    try:
        checked = preflight(config, path)
    except ConfigError as error:  # a KeyFileError too
        return _config_failed(str(error), args.check_config, config.log.format)
    if args.check_config:
        return _check_config_ok(config, path, checked.keys)
    configure_logging(config.log.level, config.log.format, node_id=None)
    try:
        inherited = listen_fds()
    except ListenFdsError as error:
        return _startup_failed(str(error), EXIT_CONFIG)
    if unexpected := sorted(set(inherited) - {READ_ONLY_SOCKET_NAME}):
        return _startup_failed(
            f"systemd passed socket(s) named {', '.join(unexpected)}; crdtd serves only "
            f"FileDescriptorName={READ_ONLY_SOCKET_NAME} (a read-only control socket)",
            EXIT_CONFIG,
        )
    try:
        factory, loop_name = loop_factory()
    except LoopUnavailable as error:
        return _startup_failed(str(error), EXIT_CONFIG)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(config, path, checked.keys, checked.interface, inherited, loop_name))
    except (StartupError, StoreError, NetworkSetupError, SocketPathError) as error:
        return _startup_failed(str(error), EXIT_FAILED)
    return 0


def _config_failed(error: str, check_only: bool, log_format: str) -> int:
    """A config the daemon cannot run: exit 78, which the unit does not restart.
    ``--check-config`` says so to the person who ran it; the daemon logs it in
    *log_format* as well (`_startup_failed`)."""
    if check_only:
        print(f"crdtd: {error}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging("info", log_format, node_id=None)
    return _startup_failed(error, EXIT_CONFIG)


def _log_format_of(path: Path | None) -> str:
    """``log.format`` as a file that did not load sets it, so that its error still
    follows it when the rest of the file is wrong; the default (``auto``: JSON under
    systemd) when the file cannot tell."""
    if path is None:
        return "auto"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        log_format = data["log"]["format"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, TypeError, KeyError):
        return "auto"
    return log_format if log_format in FORMATS else "auto"


def _startup_failed(error: str, code: int) -> int:
    """Say why the daemon cannot start, as a log event (JSON under systemd) and on
    stderr (what ``systemctl status`` shows even when the log goes elsewhere)."""
    get_logger().error("startup_failed", error=error, exit_status=code)
    print(f"crdtd: {error}", file=sys.stderr)
    return code


def _check_config_ok(config: Config, path: Path | None, keys: tuple[Key, ...]) -> int:
    """``--check-config`` found nothing the daemon would refuse: say what was checked."""
    print(f"crdtd: {path or 'built-in defaults'}: ok")
    if config.security.key_file is not None:
        ids = ", ".join(key.key_id for key in keys)
        print(f"crdtd: {config.security.key_file}: ok (keys {ids}; {keys[0].key_id} signs)")
    return 0


def _keygen(path: Path) -> int:
    """``crdtd keygen PATH``: write the file, say what was written and what comes next."""
    try:
        key = write_new_key_file(path)
    except ConfigError as error:
        print(f"crdtd: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"crdtd: wrote {path}: key {key.key_id}, mode 0600")
    print(
        "next: the same file on every node of the cluster, owned by the daemon's user "
        "(crdtd under the package), mode 0600:\n"
        f"  this node:        chown crdtd:crdtd {path}\n"
        f"  every other node: copy it there, then install -m 0600 -o crdtd -g crdtd "
        f"{path.name} {path}\n"
        f"  every node:       set security.key_file: {path} in /etc/crdtd/crdtd.yaml, "
        "then systemctl restart crdtd"
    )
    return 0


def new_node_id() -> str:
    """A readable id that is not an address: the host name and a random suffix."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{secrets.token_hex(3)}"


def new_incarnation() -> int:
    """This boot's proposed incarnation: the wall clock's milliseconds and random low
    bits, so two copies of one state booting at once still differ. The node takes a
    larger one if its state shows the clock went back (`crdtd.core.identity`)."""
    return propose_incarnation(time.time_ns() // 1_000_000, secrets.randbits(SALT_BITS))


def new_seq_start() -> int:
    """Where this boot's datagram sequence numbers start: microseconds since the epoch."""
    return time.time_ns() // 1000


def make_socket_directory(directory: Path) -> None:
    """Create the control socket's directory 0750 (its owner and group may reach the
    socket) when it is missing; an existing directory is left as it is."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o750)
    except FileExistsError:
        return
    except OSError as error:
        raise StartupError(
            f"{directory}: cannot create the control socket's directory: {error.strerror}"
        ) from None
    os.chmod(directory, 0o750)  # mkdir's mode is masked by the umask


async def _serve(
    config: Config,
    config_path: Path | None,
    keys: tuple[Key, ...],
    interface: Interface,
    inherited: dict[str, socket.socket],
    loop_name: str,
) -> None:
    store = Store.open(config.node.state_dir, config.node.id, new_node_id)
    try:
        await _run(config, config_path, store, keys, interface, inherited, loop_name)
    finally:
        store.close()


async def _run(
    config: Config,
    config_path: Path | None,
    store: Store,
    keys: tuple[Key, ...],
    interface: Interface,
    inherited: dict[str, socket.socket],
    loop_name: str,
) -> None:
    configure_logging(config.log.level, config.log.format, node_id=store.node_id)
    log = get_logger()
    net = config.network
    multicast = multicast_socket(net.group, net.port, interface)
    unicast = unicast_socket(net.unicast_port, interface, net.ttl)
    loop = asyncio.get_running_loop()
    rng_seed = secrets.randbits(64)
    node = Node(
        Origin(store.node_id, new_incarnation()),
        config.settings(keys),
        random.Random(rng_seed),
        loop.time(),
        await asyncio.to_thread(store.load),
        seq_start=new_seq_start(),
    )
    notifier = Notifier()
    reporter = Reporter(log)
    driver = Driver(node, store, (net.group, net.port), reporter, notifier)
    await driver.attach(unicast, multicast)
    socket_path = config.control.socket
    make_socket_directory(socket_path.parent)
    net_info = NetInfo(
        interface.name,
        interface.address,
        net.group,
        net.port,
        net.unicast_port,
        net.ttl,
        socket_inodes=(os.fstat(unicast.fileno()).st_ino, os.fstat(multicast.fileno()).st_ino),
    )
    handler = Handler(driver, reporter, node.settings, random.Random(rng_seed + 1), net_info)
    connections_max = config.limits.control_connections_max
    servers = [ControlServer(socket_path, handler, connections_max=connections_max)]
    servers += _read_only_servers(inherited, handler, connections_max)
    metrics = _metrics_server(config, handler)
    try:
        for server in servers:
            await server.start()
        if metrics is not None:
            await _start_metrics(metrics)
    except BaseException:
        for server in servers:
            await server.close()  # those that started; the others have nothing to close
        raise
    loop.add_signal_handler(signal.SIGTERM, driver.stop)
    loop.add_signal_handler(signal.SIGINT, driver.stop)
    reloader = _Reloader(config_path, config.security.key_file, driver)
    loop.add_signal_handler(signal.SIGHUP, reloader.trigger)
    log.info(
        "started",
        version=__version__,
        event_loop=loop_name,
        incarnation=node.origin.incarnation,
        interface=interface.name,
        address=f"{interface.address}:{net.unicast_port}",
        group=f"{net.group}:{net.port}",
        ttl=net.ttl,
        socket=str(socket_path),
        read_only_sockets=[str(server.path) for server in servers[1:]] or None,
        metrics=f"{metrics.address[0]}:{metrics.address[1]}" if metrics else None,
        seeds=[f"{host}:{port}" for host, port in net.peers] or None,
        **describe_keys(keys),
        variables=len(node.counters),
        ops_in_log=node.ops_in_log(),
        pid=os.getpid(),
    )
    notifier.notify(READY="1", STATUS=f"mode={node.mode.value} peers=0")
    try:
        await driver.run()
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        await reloader.close()
        for server in servers:
            await server.close()
        if metrics is not None:
            await metrics.close()
        log.info("stopped")


def _read_only_servers(
    inherited: dict[str, socket.socket], handler: Handler, connections_max: int
) -> list[ControlServer]:
    """Read-only control servers on the sockets systemd passed (crdtd.socket); `main`
    has checked their names."""
    return [
        ControlServer(
            Path(sock.getsockname()),
            handler,
            connections_max=connections_max,
            read_only=True,
            listening=sock,
        )
        for sock in inherited.values()
    ]


def _metrics_server(config: Config, handler: Handler) -> MetricsServer | None:
    """The Prometheus endpoint of ``metrics.listen``, or None when it is off; with
    ``metrics.variable_values`` each scrape reads the variables' values too."""
    if config.metrics.listen is None:
        return None
    host, port = config.metrics.listen
    return MetricsServer(
        host, port, functools.partial(handler.stats, values=config.metrics.variable_values)
    )


async def _start_metrics(metrics: MetricsServer) -> None:
    host, port = metrics.address
    try:
        await metrics.start()
    except OSError as error:
        raise StartupError(
            f"metrics.listen {host}:{port}: cannot listen: {error.strerror}; "
            "pick a free port and an address of this host, or set it to null"
        ) from None


class _Reloader:
    """SIGHUP: re-read the config and apply what can change live (the log level), then
    re-read the key file and hand its keys to the node.

    The key file is the one named at startup (a new ``security.key_file`` path takes a
    restart): a daemon started without keys stays without, since turning keys on at one
    node at a time would split the cluster. Reloads run one at a time, in signal order.
    """

    def __init__(self, config_path: Path | None, key_file: Path | None, driver: Driver) -> None:
        self._config_path = config_path
        self._key_file = key_file
        self._driver = driver
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    def trigger(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload())
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _reload(self) -> None:
        async with self._lock:
            try:
                self._reload_config()
                if self._key_file is not None:
                    await self._reload_keys(self._key_file)
            except Exception as error:  # a bug: say so, and keep serving on what runs
                get_logger().exception("reload_failed", error=repr(error))

    def _reload_config(self) -> None:
        logger = get_logger()
        try:
            config = load_config(self._config_path)
        except ConfigError as error:
            logger.error("config_reload_failed", error=str(error))
            return
        # The line shows under the old threshold or the new one, whichever is lower: a
        # reload to "warning" still says it happened. ("level" is every line's severity,
        # so the new threshold is log_level.)
        new_level = config.log.level
        set_level(min(current_level(), new_level, key=LEVELS.index))
        logger.info("config_reloaded", log_level=new_level)
        set_level(new_level)
        if config.security.key_file != self._key_file:
            logger.warning(
                "restart_required",
                key="security.key_file",
                running=str(self._key_file) if self._key_file else None,
                configured=str(config.security.key_file) if config.security.key_file else None,
            )

    async def _reload_keys(self, key_file: Path) -> None:
        logger = get_logger()
        try:
            keys = await asyncio.to_thread(load_keys, key_file)
        except ConfigError as error:
            logger.error("keys_reload_failed", error=str(error))
            return

        await self._driver.set_keys(keys)
        logger.info("keys_reloaded", **describe_keys(keys))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
