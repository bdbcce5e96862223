"""What the fuzzers check: one function per target, taking the fuzzer's bytes.

Shared by the atheris fuzzers (``fuzz/decoder.py``, ``fuzz/control.py``) and the bounded
hypothesis fallback in ``tests/fuzz``, so both hold the code to the same rules:

- ``wire.decode`` raises nothing but `MalformedDatagram`, with or without keys, and what
  it accepts the encoder can say again: decode(encode(decoded)) == decoded, and the
  encoder's own size asserts hold (the pair of checks across the boundary);
- ``Node.receive_datagram`` never raises, on a live node that already has a peer, ops,
  wants and timers, with and without keys; the node's outputs are pulled after every
  datagram, so encoding what it answers is exercised too;
- ``decode_request`` raises nothing but `Rejected`, and a request it accepts encodes
  back to the same request; ``LineBuffer`` raises nothing but `LineTooLong`, never
  yields a line over its limit, and loses or invents no byte.

Keyed targets get each input twice: as it is (so the MAC check itself is fuzzed) and
re-signed by the harness with a cluster key (so the fuzzer's bodies get past the MAC
and reach the parser and the node, as a forger holding the key would).

A live node is kept across inputs, as a daemon's is, and rebuilt every `NODE_RESET_EVERY`
inputs to bound its state. A failure that needs that history writes every input since
the last rebuild to ``node-history-*.bin`` (see `replay_node_history`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crdtd.control.protocol import (
    COMMANDS,
    REQUEST_BYTES_MAX,
    LineBuffer,
    LineTooLong,
    Rejected,
    decode_request,
    encode_request,
)
from crdtd.core import wire
from crdtd.core.ids import Origin
from crdtd.core.messages import (
    Announce,
    Bases,
    DigestRequest,
    Envelope,
    Grave,
    Graves,
    Message,
    Nack,
    OpBatch,
    OpGroup,
    PeerList,
    Summary,
    SummaryRequest,
)
from crdtd.core.modes import Mode
from crdtd.core.node import Node
from crdtd.core.settings import DATAGRAM_BYTES_MAX, Key, Settings
from crdtd.core.step import Stepper

KEYS = (Key("fuzz-2026b", b"\x01" * 32), Key("fuzz-2026a", b"\x02" * 48))
PEER_ADDRESS = ("10.0.0.2", 7778)
NODE_RESET_EVERY = 1000
NODE_STEP_S = 0.013  # protocol time between two fuzzed datagrams: timers fire as they go
START = 1_000.0

# --- the datagram decoder -----------------------------------------------------------


def sign(data: bytes, key: Key = KEYS[0]) -> bytes:
    """*data* with the MAC flag set and a trailer under *key*, as a key holder would."""
    if len(data) < 5:
        return data
    head = data[:4] + bytes([data[4] | wire.FLAG_MAC]) + data[5:]
    raw_id = key.key_id.encode("ascii")
    head += bytes([len(raw_id)]) + raw_id
    return head + hmac.new(key.secret, head, hashlib.sha256).digest()


def check_decode(data: bytes) -> None:
    """Decode *data* as it is, without and with keys, and re-signed; check each result."""
    for payload, keys in ((data, ()), (data, KEYS), (sign(data), KEYS)):
        try:
            envelope = wire.decode(payload, keys)
        except wire.MalformedDatagram as error:
            assert isinstance(error.reason, str) and error.reason, error
            continue
        assert len(payload) <= DATAGRAM_BYTES_MAX
        _check_round_trip(envelope, keys[:1])


def _check_round_trip(envelope: Envelope, keys: tuple[Key, ...]) -> None:
    """The encoder can say again what the decoder accepted, within its size bound."""
    encoder = wire.Encoder(envelope.sender, keys, seq_start=envelope.seq - 1)
    encode = REENCODE.get(type(envelope.message))
    if encode is None:
        return  # a kind without a re-encoder here: tests/fuzz checks every kind has one
    payloads = encode(encoder, envelope.message)
    assert all(len(payload) <= DATAGRAM_BYTES_MAX for payload in payloads)
    again = [wire.decode(payload, keys).message for payload in payloads]
    assert _merge(again) == envelope.message, (again, envelope.message)


def _merge(parts: list[Any]) -> Message:
    """One message from the datagrams an encoder split it into (usually just one)."""
    first = parts[0]
    if len(parts) == 1:
        return first  # type: ignore[no-any-return]
    if isinstance(first, OpBatch):
        return OpBatch(tuple(g for m in parts for g in m.groups))
    if isinstance(first, Bases):
        return Bases(tuple(e for m in parts for e in m.entries))
    if isinstance(first, Nack):
        return Nack(tuple(r for m in parts for r in m.ranges))
    if isinstance(first, Graves):  # a grave split by origins comes back in parts
        graves: list[Grave] = []
        for grave in (g for m in parts for g in m.graves):
            if graves and graves[-1].variable == grave.variable:
                graves[-1] = Grave(grave.variable, graves[-1].marks + grave.marks)
            else:
                graves.append(grave)
        return Graves(tuple(graves))
    raise AssertionError(f"the encoder split a {type(first).__name__}: {parts}")


Reencode = Callable[[wire.Encoder, Any], list[bytes]]


def _reencoders() -> dict[type, Reencode]:
    """How to say each kind of message again with the public encoder. A kind missing
    here is not round-tripped (``DigestReply``: the encoder numbers its pages itself)."""
    table: dict[type, Reencode] = {
        OpBatch: lambda e, m: e.op_batch(m.groups),
        Bases: lambda e, m: e.bases(m.entries),
        Nack: lambda e, m: e.nack(m.ranges),
        Graves: lambda e, m: e.graves(m.graves),
        Announce: lambda e, m: e.announce(m.mode, m.epoch, m.barrier, m.digests),
        PeerList: lambda e, m: e.peer_list(m.peers),
        DigestRequest: lambda e, m: [e.digest_request(m.token)],
        Summary: lambda e, m: [e.summary(m.mode, m.epoch, m.barrier, m.count, m.digest)],
        SummaryRequest: lambda e, m: [e.summary_request()],
    }
    for cls in wire._SYNC_TYPES:
        table[cls] = lambda e, m: [e.sync(m)]
    return table


REENCODE = _reencoders()


# --- the live node ------------------------------------------------------------------


class LiveNodes:
    """Two nodes that have been talking to a peer for a while: one keyed, one not."""

    def __init__(self) -> None:
        self.history: list[bytes] = []
        self._reset()

    def _reset(self) -> None:
        self.now = START
        self.inputs = 0
        self.history.clear()
        self.plain = warm_node(())
        self.keyed = warm_node(KEYS)

    def feed(self, data: bytes) -> None:
        """Deliver *data* (and its re-signed twin to the keyed node); never raises."""
        if self.inputs >= NODE_RESET_EVERY:
            self._reset()
        self.inputs += 1
        self.history.append(data)
        self.now += NODE_STEP_S
        multicast = self.inputs % 2 == 0  # as if from the group, or by unicast
        try:
            deliver(self.plain, data, self.now, multicast)
            deliver(self.keyed, data, self.now, multicast)
            deliver(self.keyed, sign(data), self.now, multicast)
        except BaseException:
            path = save_history(self.history)
            print(f"node history saved to {path}; replay with fuzz.targets.replay_node_history")
            raise


def warm_node(keys: tuple[Key, ...]) -> Node:
    """A node ``a`` that knows peer ``b``, holds ops of both, and has a hole to repair."""
    settings = Settings(keys=keys, variables_max=64, peers_max=8, wants_max=64)
    node = Node(Origin("a", 1), settings, random.Random("fuzz/a"), START, seq_start=10)
    peer = wire.Encoder(Origin("b", 2), keys, seq_start=100)
    node.add("x", 5, START)
    node.add("y", -3, START)
    node.handle_timer(START)
    traffic = peer.announce(Mode.WORK, 0, None, [])
    traffic += peer.op_batch([OpGroup("x", Origin("b", 2), ((1, 7), (2, -1), (5, 4)))])
    for payload in traffic:
        node.receive_datagram(payload, PEER_ADDRESS, START)
    _drain(node)
    return node


def deliver(node: Node, data: bytes, now: float, via_multicast: bool = False) -> None:
    node.receive_datagram(data, PEER_ADDRESS, now, via_multicast)
    if node.get_timer() <= now:
        node.handle_timer(now)
    _drain(node)


def _drain(node: Node) -> None:
    for datagram in Stepper[None](node).flush().datagrams:
        assert len(datagram.payload) <= DATAGRAM_BYTES_MAX


def save_history(history: Sequence[bytes], directory: Path | None = None) -> Path:
    blob = b"".join(struct.pack(">I", len(item)) + item for item in history)
    name = f"node-history-{hashlib.sha1(blob).hexdigest()}.bin"
    path = (directory or Path(os.environ.get("CRDTD_FUZZ_ARTIFACTS", "."))) / name
    path.write_bytes(blob)
    return path


def replay_node_history(blob: bytes) -> None:
    """Feed a saved history to fresh live nodes: the regression test for a node crash."""
    nodes = LiveNodes()
    position = 0
    while position < len(blob):
        (size,) = struct.unpack_from(">I", blob, position)
        nodes.feed(blob[position + 4 : position + 4 + size])
        position += 4 + size


# --- the control protocol -----------------------------------------------------------

SMALL_LINE_BYTES_MAX = 64


def check_request(line: bytes) -> None:
    """One request line: a `Request` that encodes back to itself, or `Rejected`."""
    try:
        request = decode_request(line)
    except Rejected as rejected:
        assert rejected.code and rejected.message
        return
    assert request.cmd in COMMANDS
    encoded = encode_request(request.id, request.cmd, request.args)
    assert decode_request(encoded.rstrip(b"\n")) == request


def check_control(data: bytes) -> None:
    """Feed *data* in pieces to line buffers (a small limit and the real one) and every
    line to the request decoder. The first byte picks where the pieces are cut."""
    cut = (data[0] % 13) + 1 if data else 1
    for limit in (SMALL_LINE_BYTES_MAX, REQUEST_BYTES_MAX):
        lines = LineBuffer(limit)
        taken: list[bytes] = []
        too_long = False
        for start in range(0, len(data), cut):
            lines.feed(data[start : start + cut])
            try:
                while (line := lines.next_line()) is not None:
                    assert b"\n" not in line and len(line) <= limit
                    taken.append(line)
            except LineTooLong:
                too_long = True
                break
        expected = data.split(b"\n")[:-1]
        if too_long:
            assert taken == expected[: len(taken)]
            assert any(len(line) > limit for line in data.split(b"\n")[len(taken) :])
        else:
            assert taken == expected
        for line in taken:
            check_request(line)
    check_request(data)
