"""The datagram fuzz checks (`fuzz.targets`), bounded for CI: the seed corpus, random
bytes, and corpus datagrams mutated the ways a fuzzer would. ``fuzz/run decoder`` runs
the same checks under atheris for as long as you like."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtd.core import wire
from crdtd.core.messages import DigestReply
from fuzz import samples, targets

CORPUS = sorted((samples.CORPUS / "decoder").iterdir())
SEEDS = [path.read_bytes() for path in CORPUS]
BOUNDED = settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A corpus datagram with a few byte-level mutations, as libFuzzer's."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["set", "insert", "delete", "truncate", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete" and data:
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            other = draw(st.sampled_from(SEEDS))
            data[at:] = other[draw(st.integers(0, len(other))) :]
    return bytes(data)


@pytest.fixture(scope="module")
def live() -> targets.LiveNodes:
    return targets.LiveNodes()


def test_the_corpus_has_a_datagram_of_every_kind_plain_and_signed() -> None:
    kinds: dict[bool, set[type]] = {}
    for path in CORPUS:
        keys = () if path.name.endswith("-plain") else targets.KEYS
        kinds.setdefault(path.name.endswith("-plain"), set()).add(
            type(wire.decode(path.read_bytes(), keys).message)
        )
    every_kind = {_kind_of(code) for code in wire._DECODERS}
    assert kinds[True] == kinds[False] == every_kind


def _kind_of(code: int) -> type:
    """The message class a wire type code decodes to, from the corpus datagram of it."""
    for data in SEEDS:
        if data[3] == code:
            keys = targets.KEYS if data[4] & wire.FLAG_MAC else ()
            return type(wire.decode(data, keys).message)
    raise AssertionError(f"no corpus datagram of wire type {code}")


def test_every_kind_but_paged_replies_is_checked_by_a_round_trip() -> None:
    kinds = {_kind_of(code) for code in wire._DECODERS}
    assert kinds - set(targets.REENCODE) == {DigestReply}


@pytest.mark.parametrize("path", CORPUS, ids=[path.name for path in CORPUS])
def test_every_corpus_datagram_passes_the_checks(path: Path, live: targets.LiveNodes) -> None:
    targets.check_decode(path.read_bytes())
    live.feed(path.read_bytes())


@BOUNDED
@given(data=st.binary(max_size=1500))
def test_random_bytes(data: bytes, live: targets.LiveNodes) -> None:
    targets.check_decode(data)
    live.feed(data)


@BOUNDED
@given(data=mutated())
def test_mutated_datagrams(data: bytes, live: targets.LiveNodes) -> None:
    targets.check_decode(data)
    live.feed(data)


def test_signing_in_the_harness_makes_a_datagram_the_keyed_decoder_takes() -> None:
    plain = next(data for data in SEEDS if not data[4] & wire.FLAG_MAC)
    assert wire.decode(targets.sign(plain), targets.KEYS) == wire.decode(plain)
