"""``python -m crdtd.lab``: a LAN lab of real crdtd daemons in network namespaces (root).

    python -m crdtd.lab check                  can the lab run here? (root, ip netns, iptables)
    python -m crdtd.lab up --nodes 5           start a lab, print how to reach it, wait for Ctrl-C
    python -m crdtd.lab run partition          one scenario with writers, then check convergence
    python -m crdtd.lab soak --minutes 30      random scenarios, checked after each round
    python -m crdtd.lab clean                  remove what crashed runs left behind

Rules:
- ``main(argv) -> int``: 0 ok, 1 a check failed (or the lab could not run), 2 usage;
- ``run`` and ``soak`` print one line per round, then, as the LAST line, one JSON object
  (``ok``, ``rounds``, the ledger, a ``reproduce`` command on failure);
- Ctrl-C (SIGINT) and SIGTERM tear everything down (namespaces, daemons, temp dir),
  however the process was started: Python leaves SIGINT ignored when its parent did
  (a ``cmd &`` of a non-interactive shell, some CI runners), so `main` installs both
  handlers itself and unblocks both signals for the lab's lifetime.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import yaml

from crdtd.lab.checks import NotConverged, await_convergence, await_folded
from crdtd.lab.lab import Lab
from crdtd.lab.netns import LabError, clean_stale, unavailable_reason
from crdtd.lab.scenarios import SCENARIOS
from crdtd.lab.workload import Workload

SOAK_CONFIG = {"sync": {"interval_s": 5, "min_gap_s": 2}}
SETTLE_S = 2.0
SCENARIO_NODES_MIN = 3  # a partition needs two sides, one of them of two nodes
CONVERGE_S = 60.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # each tears the lab down


def parse_setting(text: str) -> tuple[list[str], Any]:
    """``section.key=VALUE`` with VALUE read as YAML (``sync.interval_s=5``)."""
    key, sep, value = text.partition("=")
    path = key.split(".")
    if not sep or len(path) != 2 or not all(path):
        raise argparse.ArgumentTypeError(f"--set: expected SECTION.KEY=VALUE, got {text!r}")
    return path, yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m crdtd.lab", description="A LAN lab of crdtd daemons in namespaces."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("check", help="say whether the lab can run here")
    commands.add_parser("clean", help="remove the leftovers of crashed runs")

    def lab_options(sub: argparse.ArgumentParser, nodes: int) -> None:
        sub.add_argument("--nodes", type=int, default=nodes, help=f"nodes (default {nodes})")
        sub.add_argument(
            "--set",
            dest="settings",
            action="append",
            default=[],
            type=parse_setting,
            metavar="SECTION.KEY=VALUE",
            help="a daemon config key for every node, e.g. sync.interval_s=5 (repeatable)",
        )
        sub.add_argument("--keep", action="store_true", help="keep the temp dir (logs, state)")

    up = commands.add_parser("up", help="start a lab and wait for Ctrl-C")
    lab_options(up, 5)

    def workload_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--seed", type=int, default=None, help="seed (default: random)")
        sub.add_argument("--rate", type=float, default=20.0, help="adds/s per node (default 20)")
        sub.add_argument(
            "--scale", type=float, default=1.0, help="multiply scenario durations (default 1)"
        )

    run = commands.add_parser("run", help="run one scenario with writers, then check")
    run.add_argument("scenario", choices=sorted(SCENARIOS))
    lab_options(run, 5)
    workload_options(run)

    soak = commands.add_parser("soak", help="random scenarios until time is up, checked each round")
    soak.add_argument("--minutes", type=float, default=30.0, help="how long (default 30)")
    soak.add_argument(
        "--scenarios",
        default=",".join(sorted(SCENARIOS)),
        help="comma-separated scenarios to draw from (default: all)",
    )
    lab_options(soak, 5)
    workload_options(soak)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 2
    if options.command == "check":
        reason = unavailable_reason()
        print(reason or "ok: the LAN lab can run here")
        return 1 if reason else 0
    if options.command == "clean":
        reason = unavailable_reason()
        if reason:
            print(f"crdtd.lab: {reason}", file=sys.stderr)
            return 1
        cleaned = clean_stale(print)
        print(f"{len(cleaned)} stale run(s) removed")
        return 0
    fewest = 1 if options.command == "up" else SCENARIO_NODES_MIN
    if options.nodes < fewest:
        parser.print_usage(sys.stderr)
        print(f"crdtd.lab: --nodes: expected {fewest} or more", file=sys.stderr)
        return 2
    # Installed, not inherited: a SIGINT ignored by the parent stays ignored in Python,
    # and `up` would then sleep through its own "Ctrl-C removes everything".
    previous = {number: signal.signal(number, _interrupt) for number in _STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # before any thread
    try:
        if options.command == "up":
            return up(options)
        return soak(options, once=options.command == "run")
    except LabError as error:
        print(f"crdtd.lab: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: the lab is removed", file=sys.stderr)
        return 130
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for number, handler in previous.items():
            signal.signal(number, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _config(options: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(json.dumps(base or {}))
    for (section, key), value in options.settings:
        config.setdefault(section, {})[key] = value
    return config


def up(options: argparse.Namespace) -> int:
    began = time.monotonic()
    with Lab(options.nodes, config=_config(options), keep=options.keep or None) as lab:
        mesh_s = lab.wait_mesh(timeout_s=30 + options.nodes)
        print("\n".join(lab.describe()))
        print(
            f"\n{options.nodes} nodes up in {time.monotonic() - began:.1f} s "
            f"(full mesh {mesh_s:.1f} s after the last answered).\n"
            f"Run things inside a node: ip netns exec {lab.nodes[0].netns} COMMAND\n"
            "Ctrl-C removes everything.",
            flush=True,
        )
        while True:
            time.sleep(3600)


def soak(options: argparse.Namespace, *, once: bool) -> int:
    """``run`` (*once*: the one scenario) and ``soak`` (rounds until time is up)."""
    seed = options.seed if options.seed is not None else random.randrange(10**6)
    names = [options.scenario] if once else [n for n in options.scenarios.split(",") if n]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        print(f"crdtd.lab: unknown scenarios: {', '.join(unknown)}", file=sys.stderr)
        return 2
    rng = random.Random(f"{seed}/soak")
    end = time.monotonic() + (0 if once else options.minutes * 60)
    rounds: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"ok": True, "seed": seed, "nodes": options.nodes}
    config = _config(options, SOAK_CONFIG)
    began = time.monotonic()
    with Lab(options.nodes, config=config, keep=options.keep or None) as lab:
        lab.wait_mesh(timeout_s=30 + options.nodes)
        work = Workload(lab, rate_per_s=options.rate, seed=seed)
        try:
            work.start()
            while True:
                number = len(rounds) + 1
                name = rng.choice(names)
                round_began = time.monotonic()
                facts = SCENARIOS[name](lab, work, rng, options.scale)
                time.sleep(SETTLE_S)
                work.pause()
                try:
                    values = await_convergence(lab, work.ledger, timeout_s=CONVERGE_S)
                    if once or number % 5 == 0:
                        facts["fold"] = await_folded(lab, work.ledger, timeout_s=CONVERGE_S)
                except NotConverged as failure:
                    print(str(failure), flush=True)
                    summary.update(ok=False, failed_round=number, failed_scenario=name)
                    break
                if not once:
                    _retire_extras(lab, work, options.nodes)
                took = time.monotonic() - round_began
                rounds.append({"round": number, "scenario": name, "s": round(took, 1), **facts})
                print(
                    f"round {number:3d} {name:<20} {took:5.1f} s  ok  {values}  "
                    f"{json.dumps(facts, default=str)}",
                    flush=True,
                )
                if once or time.monotonic() >= end:
                    break
                work.resume()
        finally:
            work.stop()
    summary.update(
        rounds=len(rounds),
        seconds=round(time.monotonic() - began, 1),
        ledger=work.ledger.summary(),
    )
    if not summary["ok"]:
        command = "run " + names[0] if once else f"soak --minutes {options.minutes:g}"
        summary["reproduce"] = (
            f"python -m crdtd.lab {command} --nodes {options.nodes} --seed {seed} "
            f"--rate {options.rate:g} --scale {options.scale:g} "
            "(the same schedule of faults; real timing differs)"
        )
    print(json.dumps(summary, default=str), flush=True)
    return 0 if summary["ok"] else 1


def _retire_extras(lab: Lab, work: Workload, nodes: int) -> None:
    """Keep the soak at *nodes* nodes: joins add some; retire the oldest (the lab has
    converged, so everything they acked is held elsewhere)."""
    while len(lab.nodes) > nodes:
        victim = lab.nodes[0]
        work.remove(victim)
        lab.remove_node(victim)
