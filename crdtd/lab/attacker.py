"""A hostile host on the lab's LAN, run in a namespace of its own by the hostile-LAN test.

It has no cluster key. It listens on the group for a while and keeps what it hears, then
sends, round robin and as fast as it can, to the group and to each node's unicast port:

- ``random``: random bytes, 0..1500 of them (so some are over the 1400-byte limit);
- ``unsigned``: well-formed op batches without a MAC, from a made-up node and in the name
  of a real member;
- ``wrong_secret``: op batches signed under the cluster's key id with another secret;
- ``unknown_key``: op batches signed under a key id the cluster does not have;
- ``tampered``: captured datagrams with one byte of the body flipped;
- ``replay``: captured datagrams, sent again unchanged.

Payloads are made up front, so the loop only sends. It prints one JSON line: what it
captured and, per kind, how many it sent. ``--captured FILE`` keeps the capture in FILE,
or replays the one already there (to replay it after a node restarted); ``--kinds``
chooses what to send; ``--once`` sends each payload once to each unicast target, so a
test can count exactly what should be refused. (`own_origin_claims` is for an attacker
that *holds* the key: tests/lan/test_identity.py sends them itself.) Usage::

    python -m crdtd.lab.attacker --group 239.255.77.77:7777 --interface-address 10.77.0.9 \\
        --targets 10.77.0.1:7778,10.77.0.2:7778 --key-id k2026a --member n01 \\
        --capture-s 3 --seconds 30
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import random
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from crdtd.core import wire
from crdtd.core.ids import NONCE_MAX, Origin
from crdtd.core.messages import BaseEntry, OpGroup, VariableDigest
from crdtd.core.modes import Mode
from crdtd.core.settings import Key

Address = tuple[str, int]
POOL = 64  # payloads made per kind
CAPTURED_MAX = 512
KINDS = ("random", "unsigned", "wrong_secret", "unknown_key", "tampered", "replay")


def capture(group: Address, interface_address: str, seconds: float) -> list[bytes]:
    """What the group carries for *seconds*: authentic datagrams to replay."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(group)
        membership = socket.inet_aton(group[0]) + socket.inet_aton(interface_address)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        captured: list[bytes] = []
        deadline = time.monotonic() + seconds
        while len(captured) < CAPTURED_MAX and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                captured.append(sock.recv(2048))
            except TimeoutError:
                break
        return captured


def load_or_capture(
    path: Path | None, group: Address, interface_address: str, seconds: float
) -> list[bytes]:
    """The capture kept in *path* if there is one; else a new one, kept there."""
    if path is not None and path.exists():
        return [base64.b64decode(line) for line in path.read_text().split()]
    captured = capture(group, interface_address, seconds)
    if path is not None:
        path.write_text("".join(base64.b64encode(data).decode() + "\n" for data in captured))
    return captured


def forged_ops(sender: Origin, keys: Sequence[Key], rng: random.Random) -> list[bytes]:
    """Op batches that would add to the test's counters if anyone believed them."""
    encoder = wire.Encoder(sender, keys, seq_start=rng.randrange(1, 2**62))
    payloads = []
    for _ in range(POOL):
        ops = tuple(sorted((rng.randrange(1, 2**40), rng.randrange(1, 10**6)) for _ in range(8)))
        payloads += encoder.op_batch([OpGroup(rng.choice("abcxyz"), sender, ops)])
    return payloads


def own_origin_claims(
    victim: Origin, next_nonces: Mapping[str, int], keys: Sequence[Key], rng: random.Random
) -> list[bytes]:
    """What a key holder could send *victim* to take over its own counters, signed with
    *keys*: per variable, a base of the victim's current origin up to `NONCE_MAX` with a
    made-up total, and ops of that origin from *next_nonces[variable]* (the nonce the
    victim's next local add would take) up, plus one at `NONCE_MAX`; then an announce
    that holds the victim's origin up to `NONCE_MAX` in every variable. A node that
    believed any of it could never add again (its next nonce would be taken, or past
    2^63 - 1). They come from a made-up sender, a peer like any other."""
    sender = Origin("mallory", rng.randrange(1, 2**63))
    encoder = wire.Encoder(sender, keys, seq_start=rng.randrange(1, 2**62))
    payloads = []
    for variable, first in next_nonces.items():
        total = rng.randrange(-(2**70), 2**70)
        payloads += encoder.bases([BaseEntry(variable, victim, NONCE_MAX, total)])
        ops = tuple((first + i, rng.randrange(1, 10**6)) for i in range(3))
        payloads += encoder.op_batch([OpGroup(variable, victim, (*ops, (NONCE_MAX, 1)))])
    marks = [VariableDigest(variable, ((victim, NONCE_MAX),)) for variable in next_nonces]
    return payloads + encoder.announce(Mode.WORK, 0, None, marks)


def tampered(captured: Sequence[bytes], rng: random.Random) -> list[bytes]:
    payloads = []
    for data in captured[:POOL]:
        flipped = bytearray(data)
        flipped[rng.randrange(len(data) // 2, len(data))] ^= 0x40
        payloads.append(bytes(flipped))
    return payloads


def payloads_by_kind(
    captured: Sequence[bytes], key_id: str, member: str, rng: random.Random
) -> dict[str, list[bytes]]:
    stranger = Origin("mallory", 1)
    impostor = Origin(member, rng.randrange(1, 2**63))
    wrong = Key(key_id, os.urandom(32))
    unknown = Key("mallory-key", os.urandom(32))
    kinds = {
        "random": [os.urandom(rng.randrange(0, 1501)) for _ in range(POOL)],
        "unsigned": forged_ops(stranger, (), rng) + forged_ops(impostor, (), rng),
        "wrong_secret": forged_ops(impostor, (wrong,), rng),
        "unknown_key": forged_ops(stranger, (unknown,), rng),
        "tampered": tampered(captured, rng),
        "replay": list(captured),
    }
    return {kind: payloads for kind, payloads in kinds.items() if payloads}


def send_once(kinds: dict[str, list[bytes]], destinations: Sequence[Address]) -> dict[str, int]:
    """Send each payload once to each destination: a replay a test can count exactly."""
    sent = dict.fromkeys(kinds, 0)
    sent["send_errors"] = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP) as sock:
        for kind, payloads in kinds.items():
            for payload in payloads:
                _send_each(sock, payload, destinations, kind, sent)
                time.sleep(0.001)  # paced: nothing lost to a full buffer
    return sent


def _send_each(
    sock: socket.socket,
    payload: bytes,
    destinations: Sequence[Address],
    kind: str,
    sent: dict[str, int],
) -> None:
    """Send *payload* to every destination, counting it under *kind* or ``send_errors``."""
    for destination in destinations:
        try:
            sock.sendto(payload, destination)
        except OSError:
            sent["send_errors"] += 1
        else:
            sent[kind] += 1


def flood(
    kinds: dict[str, list[bytes]], destinations: Sequence[Address], seconds: float
) -> dict[str, int]:
    """Send every kind in turn to every destination until *seconds* pass; return counts
    (``send_errors``: the kernel refused, e.g. a full socket buffer)."""
    sent = dict.fromkeys(kinds, 0)
    sent["send_errors"] = 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    with sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        cycles = {kind: itertools.cycle(payloads) for kind, payloads in kinds.items()}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(100):  # check the clock every 100 rounds
                for kind, cycle in cycles.items():
                    _send_each(sock, next(cycle), destinations, kind, sent)
    return sent


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", type=_address, required=True, help="ADDRESS:PORT")
    parser.add_argument("--interface-address", required=True)
    parser.add_argument("--targets", default="", help="ADDRESS:PORT,... unicast targets")
    parser.add_argument("--key-id", required=True, help="the cluster's key id")
    parser.add_argument("--member", required=True, help="a real member's node id")
    parser.add_argument("--capture-s", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--captured", type=Path, help="keep the capture here, or reuse it")
    parser.add_argument("--kinds", default=",".join(KINDS), help="of: " + ", ".join(KINDS))
    parser.add_argument(
        "--once",
        action="store_true",
        help="send each payload once to each --targets address (not the group), then stop",
    )
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    captured = load_or_capture(args.captured, args.group, args.interface_address, args.capture_s)
    chosen = set(args.kinds.split(","))
    if not chosen <= set(KINDS):
        parser.error(f"--kinds: unknown {', '.join(sorted(chosen - set(KINDS)))}")
    made = payloads_by_kind(captured, args.key_id, args.member, rng)
    kinds = {kind: payloads for kind, payloads in made.items() if kind in chosen}
    targets = [_address(text) for text in args.targets.split(",") if text]
    started = time.monotonic()
    if args.once:
        sent = send_once(kinds, targets)
    else:
        sent = flood(kinds, [args.group, *targets], args.seconds)
    elapsed = time.monotonic() - started
    total = sum(count for kind, count in sent.items() if kind != "send_errors")
    report = {
        "captured": len(captured),
        "sent": sent,
        "seconds": round(elapsed, 2),
        "datagrams_per_s": round(total / elapsed),
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
