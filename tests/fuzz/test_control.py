"""The control protocol fuzz checks (`fuzz.targets.check_control`), bounded for CI: the
seed corpus, random bytes, JSON-shaped requests and mutated request lines.
``fuzz/run control`` runs the same checks under atheris."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtd.control.protocol import COMMANDS, decode_request
from fuzz import samples, targets

CORPUS = sorted((samples.CORPUS / "control").iterdir())
SEEDS = [path.read_bytes() for path in CORPUS]
BOUNDED = settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=70),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=6,
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request-shaped object: right fields, sometimes wrong values or extra fields."""
    message = {
        "v": draw(st.sampled_from([1, 1, 1, 2, "1", True, None])),
        "id": draw(st.one_of(st.integers(-(2**64), 2**64), st.text(max_size=70), json_values)),
        "cmd": draw(st.sampled_from([*COMMANDS, "nope", ""]) | st.text(max_size=8)),
    }
    if draw(st.booleans()):
        names = st.sampled_from(["variable", "delta", "count", "request_id", "other"])
        message["args"] = draw(st.dictionaries(names, json_values, max_size=4))
    if draw(st.integers(0, 9)) == 0:
        message[draw(st.text(max_size=5))] = draw(json_values)
    return json.dumps(message).encode()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if draw(st.booleans()) and data:
            data[at] = draw(st.integers(0, 255))
        else:
            data[at:at] = draw(st.sampled_from([b"\n", b'"', b"{", b"}", b"\\u0000", b"1e999"]))
    return bytes(data)


def test_every_command_has_a_corpus_request() -> None:
    named = {path.name for path in CORPUS}
    assert set(COMMANDS) <= named
    for cmd in COMMANDS:
        assert decode_request((samples.CORPUS / "control" / cmd).read_bytes().rstrip()).cmd == cmd


@pytest.mark.parametrize("path", CORPUS, ids=[path.name for path in CORPUS])
def test_every_corpus_line_passes_the_checks(path: Path) -> None:
    targets.check_control(path.read_bytes())


@BOUNDED
@given(data=st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    targets.check_control(data)


@settings(BOUNDED, max_examples=500)  # generating nested JSON is the slow part
@given(line=requests())
def test_request_shaped_json(line: bytes) -> None:
    targets.check_request(line)
    targets.check_control(line + b"\n" + line)


@BOUNDED
@given(data=mutated())
def test_mutated_request_lines(data: bytes) -> None:
    targets.check_control(data)


def test_lines_longer_than_the_limit_are_refused_and_shorter_ones_kept() -> None:
    limit = targets.SMALL_LINE_BYTES_MAX
    targets.check_control(b"a" * limit + b"\n" + b"b" * (limit + 1) + b"\nc\n")
