"""The wire format: every message survives encode/decode, and garbage only ever raises
`MalformedDatagram`.

A message that does not fit one datagram is split; decoding every datagram and merging
the pieces must give back exactly what was encoded.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crdtd.core import wire
from crdtd.core.ids import INT64_MAX, INT64_MIN, NONCE_MAX, UINT64_MAX, Origin, is_name
from crdtd.core.messages import (
    Announce,
    BarrierId,
    BaseEntry,
    Bases,
    Envelope,
    Message,
    Nack,
    NackRange,
    OpBatch,
    OpGroup,
    SyncAbort,
    SyncCommit,
    SyncDone,
    SyncJoin,
    SyncReady,
    SyncReadyAck,
    SyncStart,
    VariableDigest,
)
from crdtd.core.modes import Mode
from crdtd.core.settings import DATAGRAM_BYTES_MAX, Key

NAME_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
BIGINT_MIN, BIGINT_MAX = -(2**255), 2**255 - 1  # what a 32-byte signed total holds

names = st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=64)
u64 = st.integers(min_value=0, max_value=UINT64_MAX)
nonces = st.integers(min_value=1, max_value=NONCE_MAX)
marks = st.integers(min_value=0, max_value=NONCE_MAX)
int64 = st.one_of(
    st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MAX, 0, -1]),
)
origins = st.builds(Origin, names, u64)
barriers = st.builds(BarrierId, u64, names, u64)
digests16 = st.binary(min_size=16, max_size=16)
keys = st.builds(Key, names, st.binary(max_size=64))
key_sets = st.one_of(
    st.just(()),
    st.lists(keys, min_size=1, max_size=3, unique_by=lambda key: key.key_id).map(tuple),
)

SYNC_TYPES = (SyncStart, SyncJoin, SyncReady, SyncReadyAck, SyncCommit, SyncDone, SyncAbort)
WITH_DIGEST = (SyncReady, SyncReadyAck, SyncCommit)


@st.composite
def op_lists(draw: st.DrawFn, max_size: int = 500) -> tuple[tuple[int, int], ...]:
    """Strictly ascending nonces (possibly right up to NONCE_MAX) with int64 deltas.

    Long groups repeat a short drawn pattern of gaps and deltas: drawing 500 values one by
    one would make each example slow without finding anything the pattern does not.
    """
    count = draw(st.one_of(st.integers(0, 12), st.integers(0, max_size)))
    start = draw(st.one_of(st.integers(1, 1000), st.just(NONCE_MAX - count + 1)))
    gaps = draw(st.lists(st.sampled_from([1, 1, 1, 2, 7, 2**32]), min_size=1, max_size=8))
    values = draw(st.lists(int64, min_size=1, max_size=8))
    ops = []
    nonce = start
    for i in range(count):
        if nonce > NONCE_MAX:
            break
        ops.append((nonce, values[i % len(values)]))
        nonce += gaps[i % len(gaps)]
    return tuple(ops)


op_batches = st.lists(
    st.builds(OpGroup, names, origins, op_lists()),
    max_size=4,
    unique_by=lambda group: (group.variable, group.origin),
).map(lambda groups: OpBatch(tuple(groups)))


@st.composite
def base_entries(draw: st.DrawFn) -> BaseEntry:
    """A base whose total is one that *upto* int64 deltas can sum to (decode's bound)."""
    upto = draw(nonces)
    bound = upto * wire.TOTAL_PER_OP_MAX
    total = draw(st.one_of(st.integers(-bound, bound), st.sampled_from([bound, -bound, 0])))
    return BaseEntry(draw(names), draw(origins), upto, total)


bases_messages = st.lists(base_entries(), max_size=80).map(lambda entries: Bases(tuple(entries)))


@st.composite
def nack_ranges(draw: st.DrawFn) -> NackRange:
    first = draw(nonces)
    last = draw(st.integers(min_value=first, max_value=NONCE_MAX))
    return NackRange(draw(names), draw(origins), first, last)


nacks = st.lists(nack_ranges(), max_size=80).map(lambda ranges: Nack(tuple(ranges)))

announces = st.builds(
    Announce,
    st.sampled_from(wire.MODES),
    u64,
    st.none() | barriers,
    st.lists(
        st.builds(
            VariableDigest,
            names,
            st.lists(st.tuples(origins, marks), max_size=60).map(tuple),
        ),
        max_size=12,
        unique_by=lambda digest: digest.variable,
    ).map(tuple),
)


sync_messages = st.one_of(
    *(st.builds(cls, barriers) for cls in (SyncStart, SyncJoin, SyncDone, SyncAbort)),
    *(st.builds(cls, barriers, digests16) for cls in WITH_DIGEST),
)


any_message = st.one_of(op_batches, bases_messages, nacks, announces, sync_messages)


def encode(encoder: wire.Encoder, message: Message) -> list[bytes]:
    if isinstance(message, OpBatch):
        return encoder.op_batch(message.groups)
    if isinstance(message, Bases):
        return encoder.bases(message.entries)
    if isinstance(message, Nack):
        return encoder.nack(message.ranges)
    if isinstance(message, Announce):
        return encoder.announce(message.mode, message.epoch, message.barrier, message.digests)
    return [encoder.sync(message)]


def decode_all(
    datagrams: Sequence[bytes], sender: Origin, key_set: Sequence[Key] = ()
) -> list[Message]:
    """Decode each datagram, checking the size bound, the sender and the sequence numbers."""
    messages = []
    seqs = []
    for data in datagrams:
        assert len(data) <= DATAGRAM_BYTES_MAX
        envelope = wire.decode(data, key_set)
        assert envelope.sender == sender
        seqs.append(envelope.seq)
        messages.append(envelope.message)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    return messages


def merge(message: Message, pieces: list[Message]) -> Message:
    """Reassemble what a split message's datagrams carry, in the order they were sent."""
    if isinstance(message, OpBatch):
        groups: list[OpGroup] = []
        for piece in pieces:
            assert isinstance(piece, OpBatch)
            for group in piece.groups:
                last = groups[-1] if groups else None
                if last and (last.variable, last.origin) == (group.variable, group.origin):
                    groups[-1] = OpGroup(group.variable, group.origin, last.ops + group.ops)
                else:
                    groups.append(group)
        return OpBatch(tuple(groups))
    if isinstance(message, Bases):
        return Bases(tuple(e for piece in pieces for e in piece.entries))  # type: ignore[union-attr]
    if isinstance(message, Nack):
        return Nack(tuple(r for piece in pieces for r in piece.ranges))  # type: ignore[union-attr]
    if isinstance(message, Announce):
        marks: dict[str, list[tuple[Origin, int]]] = {}
        for piece in pieces:
            assert isinstance(piece, Announce)
            assert (piece.mode, piece.epoch, piece.barrier) == (
                message.mode,
                message.epoch,
                message.barrier,
            )
            for digest in piece.digests:
                marks.setdefault(digest.variable, []).extend(digest.marks)
        digests = tuple(VariableDigest(name, tuple(held)) for name, held in marks.items())
        return Announce(message.mode, message.epoch, message.barrier, digests)
    (single,) = pieces
    return single


def round_trip(message: Message, sender: Origin, key_set: Sequence[Key]) -> list[bytes]:
    encoder = wire.Encoder(sender, key_set)
    datagrams = encode(encoder, message)
    assert datagrams, "every encode sends at least one datagram"
    assert merge(message, decode_all(datagrams, sender, key_set)) == message
    return datagrams


# --- round trips ----------------------------------------------------------------------


@given(op_batches, origins, key_sets)
@settings(max_examples=100, deadline=None)
def test_op_batches_round_trip_across_as_many_datagrams_as_needed(
    message: OpBatch, sender: Origin, key_set: tuple[Key, ...]
) -> None:
    round_trip(message, sender, key_set)


@pytest.mark.parametrize("key_set", [(), (Key("k" * 64, b"s" * 32),)], ids=["plain", "signed"])
def test_groups_of_500_ops_at_the_int64_extremes_round_trip(key_set: tuple[Key, ...]) -> None:
    sender = Origin("s" * 64, UINT64_MAX)
    groups = (
        OpGroup(
            "v" * 64, Origin("o" * 64, UINT64_MAX), tuple((n, INT64_MIN) for n in range(1, 501))
        ),
        OpGroup("w", Origin("a", 0), ()),
        OpGroup(
            "x",
            Origin("b", 1),
            tuple((NONCE_MAX - 499 + i, INT64_MAX if i % 2 else INT64_MIN) for i in range(500)),
        ),
    )
    datagrams = round_trip(OpBatch(groups), sender, key_set)
    assert len(datagrams) > 1


@given(bases_messages, origins, key_sets)
@settings(max_examples=100, deadline=None)
@example(
    Bases(
        (
            BaseEntry("x", Origin("a", 1), NONCE_MAX, NONCE_MAX * 2**63),
            BaseEntry("y", Origin("b", 2), 9, -9 * 2**63),
        )
    ),
    Origin("a", 1),
    (),
)
def test_bases_with_totals_far_beyond_int64_round_trip(
    message: Bases, sender: Origin, key_set: tuple[Key, ...]
) -> None:
    round_trip(message, sender, key_set)


@given(nacks, origins, key_sets)
@settings(max_examples=100, deadline=None)
def test_nacks_round_trip(message: Nack, sender: Origin, key_set: tuple[Key, ...]) -> None:
    round_trip(message, sender, key_set)


@given(announces, origins, key_sets)
@settings(max_examples=100, deadline=None)
def test_announces_split_across_datagrams_recover_every_entry(
    message: Announce, sender: Origin, key_set: tuple[Key, ...]
) -> None:
    round_trip(message, sender, key_set)


@pytest.mark.parametrize("key_set", [(), (Key("k1", b"secret"),)], ids=["plain", "signed"])
def test_an_announce_of_thousands_of_variables_and_origins_recovers_every_entry(
    key_set: tuple[Key, ...],
) -> None:
    wide = tuple(Origin(f"node-{i:03d}" + "n" * 50, 2**63 + i) for i in range(300))
    digests = (
        VariableDigest("v" * 64, tuple((origin, NONCE_MAX - i) for i, origin in enumerate(wide))),
        *(
            VariableDigest(f"var.{i:05d}", ((Origin("a", 1), i), (Origin("b", 7), 2**40)))
            for i in range(2000)
        ),
        VariableDigest("empty", ()),
    )
    message = Announce(Mode.SYNC, 12, BarrierId(12, "i" * 64, UINT64_MAX), digests)
    datagrams = round_trip(message, Origin("s" * 64, UINT64_MAX), key_set)
    assert len(datagrams) > 20


@given(st.sampled_from(wire.MODES), u64, st.none() | barriers, origins, key_sets)
@settings(max_examples=50, deadline=None)
def test_an_announce_with_no_variables_still_sends_one_datagram(
    mode: str, epoch: int, barrier: BarrierId | None, sender: Origin, key_set: tuple[Key, ...]
) -> None:
    datagrams = round_trip(Announce(mode, epoch, barrier, ()), sender, key_set)
    assert len(datagrams) == 1


@given(sync_messages, origins, key_sets)
@settings(max_examples=200, deadline=None)
def test_every_sync_message_round_trips(
    message: Message, sender: Origin, key_set: tuple[Key, ...]
) -> None:
    round_trip(message, sender, key_set)


@pytest.mark.parametrize("cls", SYNC_TYPES)
def test_each_sync_type_decodes_to_its_own_class(cls: type) -> None:
    barrier = BarrierId(UINT64_MAX, "n" * 64, UINT64_MAX)
    message = cls(barrier, bytes(range(16))) if cls in WITH_DIGEST else cls(barrier)
    envelope = wire.decode(wire.Encoder(Origin("a", 1)).sync(message))
    assert type(envelope.message) is cls
    assert envelope.message == message


@pytest.mark.parametrize(
    "message",
    [OpBatch(()), Bases(()), Nack(())],
    ids=["ops", "bases", "nack"],
)
def test_an_empty_list_message_is_one_datagram(message: Message) -> None:
    assert len(round_trip(message, Origin("a", 1), ())) == 1


def test_sequence_numbers_count_up_across_messages() -> None:
    encoder = wire.Encoder(Origin("a", 1))
    seqs = [
        wire.decode(data).seq
        for data in [
            *encoder.op_batch([]),
            encoder.sync(SyncStart(BarrierId(1, "a", 1))),
            *encoder.nack([]),
        ]
    ]
    assert seqs == [1, 2, 3]


# --- garbage never escapes as anything but MalformedDatagram ----------------------------


def decode_or_malformed(data: bytes, key_set: Sequence[Key] = ()) -> Envelope | None:
    """Decode *data*; None if it was rejected. Any other exception fails the test."""
    try:
        envelope = wire.decode(data, key_set)
    except wire.MalformedDatagram as error:
        assert error.reason
        return None
    assert isinstance(envelope, Envelope)
    return envelope


@given(any_message, origins, key_sets, st.data())
@settings(max_examples=100, deadline=None)
def test_every_truncation_of_a_valid_datagram_is_rejected(
    message: Message, sender: Origin, key_set: tuple[Key, ...], data: st.DataObject
) -> None:
    datagrams = encode(wire.Encoder(sender, key_set), message)
    datagram = data.draw(st.sampled_from(datagrams))
    for size in range(len(datagram)):
        with pytest.raises(wire.MalformedDatagram):
            wire.decode(datagram[:size], key_set)


@given(
    any_message,
    origins,
    key_sets,
    st.data(),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4),
)
@settings(max_examples=300, deadline=None)
def test_a_mutated_datagram_is_rejected_or_decodes_and_with_a_key_is_always_rejected(
    message: Message,
    sender: Origin,
    key_set: tuple[Key, ...],
    data: st.DataObject,
    mutations: list[tuple[int, int]],
) -> None:
    datagram = data.draw(st.sampled_from(encode(wire.Encoder(sender, key_set), message)))
    mutated = bytearray(datagram)
    for position, value in mutations:
        mutated[position % len(mutated)] = value
    result = decode_or_malformed(bytes(mutated), key_set)
    if bytes(mutated) == datagram:
        assert result == wire.decode(datagram, key_set)
    elif key_set:
        assert result is None, "a signed datagram was accepted after a change"


@given(st.binary(max_size=1600), key_sets)
@settings(max_examples=300, deadline=None)
def test_random_bytes_are_rejected_or_decode_to_an_envelope(
    data: bytes, key_set: tuple[Key, ...]
) -> None:
    decode_or_malformed(data, key_set)


@given(
    st.sampled_from(
        [
            wire.T_ANNOUNCE,
            wire.T_OPS,
            wire.T_BASES,
            wire.T_NACK,
            *range(wire.T_SYNC_START, wire.T_SYNC_ABORT + 1),
            0,
            5,
            255,
        ]
    ),
    st.binary(max_size=400),
)
@settings(max_examples=300, deadline=None)
def test_random_bodies_behind_a_valid_header_are_rejected_or_decode(kind: int, body: bytes) -> None:
    # A plausible sender and seq, so that the body decoders themselves get exercised.
    header = b"cR" + bytes([wire.VERSION, kind, 0]) + b"\x01a" + bytes(8) + bytes(7) + b"\x01"
    decode_or_malformed(header + body)


# --- rejections with their reasons ------------------------------------------------------

BARRIER = BarrierId(3, "init", 9)
KEY_OLD = Key("2024-old", b"old secret bytes")
KEY_NEW = Key("2025-new", b"new secret bytes")
SENDER = Origin("n1", 4)


def signed(key_set: tuple[Key, ...], message: Message | None = None) -> bytes:
    (data,) = encode(wire.Encoder(SENDER, key_set), message or SyncCommit(BARRIER, b"d" * 16))
    return data


def reason(data: bytes, key_set: Sequence[Key] = ()) -> str:
    with pytest.raises(wire.MalformedDatagram) as caught:
        wire.decode(data, key_set)
    return caught.value.reason


def test_a_datagram_signed_with_an_unknown_key_id_is_rejected_as_unknown_key() -> None:
    assert reason(signed((KEY_OLD,)), (KEY_NEW,)) == "unknown_key"


def test_a_datagram_signed_with_another_secret_under_the_same_id_is_rejected_as_bad_mac() -> None:
    forged = Key(KEY_NEW.key_id, b"not the cluster secret")
    assert reason(signed((forged,)), (KEY_NEW,)) == "bad_mac"


@given(key_sets.filter(bool), key_sets.filter(bool), any_message)
@settings(max_examples=100, deadline=None)
def test_a_decoder_without_the_signing_key_rejects_with_unknown_key_or_bad_mac(
    signer: tuple[Key, ...], verifier: tuple[Key, ...], message: Message
) -> None:
    if any(key.secret == signer[0].secret for key in verifier):
        return  # the verifier does hold the signing secret
    for data in encode(wire.Encoder(SENDER, signer), message)[:3]:
        assert reason(data, verifier) in ("unknown_key", "bad_mac")


def key_id_seen(data: bytes, key_set: Sequence[Key] = ()) -> str | None:
    with pytest.raises(wire.MalformedDatagram) as caught:
        wire.decode(data, key_set)
    return caught.value.key_id


def test_a_key_mismatch_names_the_key_id_the_sender_signed_with() -> None:
    assert key_id_seen(signed((KEY_OLD,)), (KEY_NEW,)) == "2024-old"  # unknown_key
    assert key_id_seen(signed((KEY_OLD,)), ()) == "2024-old"  # unexpected_mac
    forged = Key(KEY_NEW.key_id, b"not the cluster secret")
    assert key_id_seen(signed((forged,)), (KEY_NEW,)) == "2025-new"  # bad_mac
    assert key_id_seen(signed(()), (KEY_NEW,)) is None  # unauthenticated: no trailer


@pytest.mark.parametrize("key_id", ["k", "k20260314-3fa2", "9" * 44, "x" * 64])
def test_the_key_id_is_read_back_from_the_trailer_for_any_id_length(key_id: str) -> None:
    assert key_id_seen(signed((Key(key_id, b"s" * 32),)), ()) == key_id


@given(st.binary(max_size=120))
@settings(max_examples=300, deadline=None)
def test_a_signed_flag_on_garbage_gives_no_key_id_or_a_valid_name(tail: bytes) -> None:
    header = b"cR" + bytes([wire.VERSION, wire.T_NACK, wire.FLAG_MAC])
    for key_set in ((), (KEY_NEW,)):
        try:
            wire.decode(header + tail, key_set)
        except wire.MalformedDatagram as error:
            assert error.key_id is None or is_name(error.key_id)


def test_an_unsigned_datagram_is_rejected_as_unauthenticated_when_keys_are_configured() -> None:
    assert reason(signed(()), (KEY_NEW,)) == "unauthenticated"


def test_a_signed_datagram_is_rejected_as_unexpected_mac_without_keys() -> None:
    assert reason(signed((KEY_NEW,)), ()) == "unexpected_mac"


@pytest.mark.parametrize("version", [0, 2, 255])
@pytest.mark.parametrize("key_set", [(), (KEY_NEW,)], ids=["plain", "signed"])
def test_an_unknown_version_is_rejected_as_unknown_version(
    version: int, key_set: tuple[Key, ...]
) -> None:
    data = bytearray(signed(key_set))
    data[2] = version
    assert reason(bytes(data), key_set) == "unknown_version"


@pytest.mark.parametrize("size", [DATAGRAM_BYTES_MAX + 1, 9000, 65507])
def test_a_datagram_over_1400_bytes_is_rejected_as_oversized(size: int) -> None:
    data = signed(())
    assert reason(data + bytes(size - len(data))) == "oversized"


def test_an_unknown_message_type_is_rejected_as_unknown_type() -> None:
    data = bytearray(signed(()))
    data[3] = 99
    assert reason(bytes(data)) == "unknown_type"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: b"XX" + d[2:],  # magic
        lambda d: d[:4] + b"\x80" + d[5:],  # an undefined flag
        lambda d: d + b"\x00",  # trailing byte
        lambda d: d[:4],  # shorter than the fixed prefix
        lambda d: b"",
    ],
    ids=["magic", "flags", "trailing", "short", "empty"],
)
def test_a_broken_frame_is_rejected_as_malformed(mutate: object) -> None:
    assert reason(mutate(signed(()))) == "malformed"  # type: ignore[operator]


@pytest.mark.parametrize(
    ("message", "offset_from_end"),
    [
        # The last op's nonce (after the ascending first one) set to 0 / to the previous one.
        (OpBatch((OpGroup("x", Origin("a", 1), ((1, 5),)),)), 16),
        (Nack((NackRange("x", Origin("a", 1), 1, 1),)), 16),
        (Bases((BaseEntry("x", Origin("a", 1), 1, 1),)), 10),
    ],
    ids=["op-nonce", "nack-first", "base-upto"],
)
def test_a_zero_nonce_is_rejected_as_malformed(message: Message, offset_from_end: int) -> None:
    (data,) = encode(wire.Encoder(SENDER), message)
    at = len(data) - offset_from_end
    broken = data[:at] + bytes(8) + data[at + 8 :]
    assert wire.decode(data).message == message
    assert reason(broken) == "malformed"


def test_ops_with_nonces_out_of_order_are_rejected_as_malformed() -> None:
    ops = ((5, 1), (6, 1))
    (data,) = wire.Encoder(SENDER).op_batch([OpGroup("x", Origin("a", 1), ops)])
    swapped = data.replace((6).to_bytes(8, "big"), (5).to_bytes(8, "big"))
    assert reason(swapped) == "malformed"


def test_a_nack_range_with_first_after_last_is_rejected_as_malformed() -> None:
    (data,) = wire.Encoder(SENDER).nack([NackRange("x", Origin("a", 1), 7, 7)])
    broken = data[:-8] + (6).to_bytes(8, "big")
    assert reason(broken) == "malformed"


def test_a_name_with_a_forbidden_character_is_rejected_as_malformed() -> None:
    data = signed(())
    assert b"\x02n1" in data
    assert reason(data.replace(b"\x02n1", b"\x02n/")) == "malformed"
    assert reason(data.replace(b"\x02n1", b"\x02n\xff")) == "malformed"


# --- key rotation -----------------------------------------------------------------------


@pytest.mark.parametrize("verifier", [(KEY_OLD, KEY_NEW), (KEY_NEW, KEY_OLD)], ids=str)
@pytest.mark.parametrize(
    "signer", [(KEY_NEW,), (KEY_OLD,), (KEY_NEW, KEY_OLD), (KEY_OLD, KEY_NEW)], ids=str
)
@pytest.mark.parametrize("message", [SyncDone(BARRIER), Nack(()), OpBatch(())], ids=str)
def test_a_decoder_holding_old_and_new_keys_accepts_either_signer_in_either_order(
    signer: tuple[Key, ...], verifier: tuple[Key, ...], message: Message
) -> None:
    assert wire.decode(signed(signer, message), verifier).message == message


def test_the_encoder_signs_with_the_first_key_only() -> None:
    data = signed((KEY_NEW, KEY_OLD))
    assert wire.decode(data, (KEY_NEW,)).message == SyncCommit(BARRIER, b"d" * 16)
    assert reason(data, (KEY_OLD,)) == "unknown_key"


# --- size bound -----------------------------------------------------------------------


@given(any_message, origins, key_sets)
@settings(max_examples=200, deadline=None)
def test_no_encoded_datagram_exceeds_1400_bytes(
    message: Message, sender: Origin, key_set: tuple[Key, ...]
) -> None:
    for data in encode(wire.Encoder(sender, key_set), message):
        assert len(data) <= DATAGRAM_BYTES_MAX


def test_long_names_and_a_long_key_id_still_fit_a_datagram() -> None:
    sender = Origin("s" * 64, UINT64_MAX)
    key_set = (Key("k" * 64, b"x"),)
    encoder = wire.Encoder(sender, key_set)
    widest = -NONCE_MAX * wire.TOTAL_PER_OP_MAX
    entries = [BaseEntry("v" * 64, Origin("o" * 64, UINT64_MAX), NONCE_MAX, widest)] * 100
    ranges = [NackRange("v" * 64, Origin("o" * 64, UINT64_MAX), 1, NONCE_MAX)] * 100
    for data in [*encoder.bases(entries), *encoder.nack(ranges)]:
        assert len(data) <= DATAGRAM_BYTES_MAX
        wire.decode(data, key_set)


def test_a_base_total_beyond_what_its_ops_can_sum_to_is_malformed() -> None:
    # Sums of such claims would outgrow the 32-byte integers a digest or a repair
    # carries, and the encoder would raise out of receive_datagram when answering.
    (data,) = wire.Encoder(SENDER).bases([BaseEntry("x", Origin("a", 1), 1, -BIGINT_MAX)])
    with pytest.raises(wire.MalformedDatagram, match="total beyond its ops"):
        wire.decode(data)
    (edge,) = wire.Encoder(SENDER).bases([BaseEntry("x", Origin("a", 1), 2, -(2**64))])
    assert wire.decode(edge).message == Bases((BaseEntry("x", Origin("a", 1), 2, -(2**64)),))


# --- resource use on hostile input ------------------------------------------------------


def test_datagrams_claiming_huge_op_counts_do_not_pin_memory() -> None:
    (data,) = wire.Encoder(SENDER).op_batch([OpGroup("x", Origin("a", 1), ((1, 5),))])
    count_at = len(data) - 16 - 2  # the group's u16 op count sits just before its ops
    assert data[count_at : count_at + 2] == b"\x00\x01"
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for claimed in range(65535, 65535 - 20, -1):
            forged = data[:count_at] + claimed.to_bytes(2, "big") + data[count_at + 2 :]
            assert decode_or_malformed(forged) is None
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 8 * 2**20, f"{(after - before) >> 20} MiB retained"
