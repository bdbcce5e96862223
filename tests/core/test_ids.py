"""Names and deltas: what `crdtd.core.ids` lets in from users and peers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.control.protocol import parse_delta  # crdtctl's reading of a typed delta
from crdtd.core.ids import (
    INT64_MAX,
    INT64_MIN,
    InvalidInput,
    Origin,
    check_delta,
    check_deltas,
    check_name,
    is_name,
)

NAME_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"


# --- names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a", "x" * 64, "web-01", "hits.total", "A_b.c-9", "-", ".", "_", "0"]
)
def test_valid_names_are_accepted_unchanged(name: str) -> None:
    assert is_name(name)
    assert check_name(name) == name


@given(st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=64))
@settings(max_examples=200, deadline=None)
def test_every_name_of_1_to_64_allowed_characters_is_accepted(name: str) -> None:
    assert is_name(name)
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 65,
        "é",
        "zähler",
        "счётчик",
        "名前",
        "a b",
        "a/b",
        "a:b",
        "a\n",
        "a\x00",
        "\t",
        "a+b",
        "\uff41",  # fullwidth a: \w-like but not ASCII
        "\u0663",  # Arabic-Indic digit three: \d-like but not ASCII
    ],
)
def test_invalid_names_are_refused(name: str) -> None:
    assert not is_name(name)
    with pytest.raises(InvalidInput, match="variable name"):
        check_name(name)


@given(st.text(min_size=1, max_size=80).filter(lambda s: any(c not in NAME_ALPHABET for c in s)))
@settings(max_examples=200, deadline=None)
def test_a_name_with_any_character_outside_the_alphabet_is_refused(name: str) -> None:
    assert not is_name(name)
    with pytest.raises(InvalidInput):
        check_name(name)


@pytest.mark.parametrize("value", [None, 5, b"abc", ["a"], 1.5])
def test_a_name_that_is_not_a_string_is_refused(value: object) -> None:
    assert not is_name(value)
    with pytest.raises(InvalidInput, match="expected a string"):
        check_name(value)


def test_check_name_error_names_what_was_checked() -> None:
    with pytest.raises(InvalidInput, match="node id"):
        check_name("bad name", what="node id")


def test_an_origin_prints_as_node_id_slash_incarnation() -> None:
    assert str(Origin("web-01", 3)) == "web-01/3"


# --- check_delta ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, -1, INT64_MIN, INT64_MAX, 2**40])
def test_check_delta_accepts_signed_64_bit_integers(value: int) -> None:
    assert check_delta(value) == value


@given(st.integers(min_value=INT64_MIN, max_value=INT64_MAX))
@settings(max_examples=200, deadline=None)
def test_check_delta_accepts_every_int64(value: int) -> None:
    assert check_delta(value) == value


@pytest.mark.parametrize("value", [True, False])
def test_check_delta_refuses_bools(value: bool) -> None:
    with pytest.raises(InvalidInput, match="expected an integer"):
        check_delta(value)


@pytest.mark.parametrize("value", [1.0, 0.0, -3.0, 2.5, float("inf"), float("nan")])
def test_check_delta_refuses_floats_even_whole_ones(value: float) -> None:
    with pytest.raises(InvalidInput, match="expected an integer"):
        check_delta(value)


@pytest.mark.parametrize("value", ["5", "-3", "+1", "0", " 7 ", b"5", None])
def test_check_delta_refuses_numeric_strings_and_other_types(value: object) -> None:
    with pytest.raises(InvalidInput, match="expected an integer"):
        check_delta(value)


@pytest.mark.parametrize("value", [INT64_MAX + 1, INT64_MIN - 1, 2**64, -(2**64), 2**200])
def test_check_delta_refuses_integers_outside_int64(value: int) -> None:
    with pytest.raises(InvalidInput, match="signed 64-bit"):
        check_delta(value)


@given(
    st.one_of(
        st.integers(min_value=INT64_MAX + 1),
        st.integers(max_value=INT64_MIN - 1),
    )
)
@settings(max_examples=200, deadline=None)
def test_check_delta_refuses_every_integer_outside_int64(value: int) -> None:
    with pytest.raises(InvalidInput):
        check_delta(value)


# --- parse_delta ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+5", 5),
        ("-3", -3),
        ("7", 7),
        ("0", 0),
        ("-0", 0),
        ("007", 7),
        (str(INT64_MAX), INT64_MAX),
        (str(INT64_MIN), INT64_MIN),
    ],
)
def test_parse_delta_accepts_signed_decimal_integers(text: str, expected: int) -> None:
    assert parse_delta(text) == expected


@given(st.integers(min_value=INT64_MIN, max_value=INT64_MAX))
@settings(max_examples=200, deadline=None)
def test_parse_delta_reads_back_what_str_writes(value: int) -> None:
    assert parse_delta(str(value)) == value
    if value >= 0:
        assert parse_delta(f"+{value}") == value


@pytest.mark.parametrize(
    "text",
    [
        "5.0",
        "0x5",
        "",
        "1e3",
        " ",
        "+",
        "-",
        "--5",
        "+-5",
        "5-",
        "1_000",
        "five",
        "0b101",
        "0o7",
        "\u0661\u0662",  # Arabic-Indic digits: int() reads them, a person's delta should not
        "5 5",
        " 5",  # a name with blanks around it is another name; a delta is refused likewise
        "5\n",
        "inf",
        "nan",
    ],
)
def test_parse_delta_refuses_anything_but_a_plain_decimal_integer(text: str) -> None:
    with pytest.raises(ValueError, match="expected an integer"):
        parse_delta(text)


@pytest.mark.parametrize("text", [str(INT64_MAX + 1), str(INT64_MIN - 1), "9" * 30])
def test_parse_delta_refuses_integers_outside_int64(text: str) -> None:
    with pytest.raises(ValueError, match="signed 64-bit"):
        parse_delta(text)


@given(st.lists(st.one_of(st.integers(), st.booleans(), st.floats(), st.text(max_size=2))))
@settings(max_examples=300, deadline=None)
def test_check_deltas_refuses_a_batch_exactly_when_check_delta_refuses_one_of_it(
    values: list[object],
) -> None:
    def refused(value: object) -> bool:
        try:
            check_delta(value)
        except InvalidInput:
            return True
        return False

    if any(refused(value) for value in values):
        with pytest.raises(InvalidInput):
            check_deltas(values)
    else:
        check_deltas(values)
