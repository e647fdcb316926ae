"""Sizes (``32g``) and durations (``48h``) as the policy writes them, and their short forms."""

from __future__ import annotations

import math

import pytest

from formats.units import UnitError, format_duration, format_size, parse_duration, parse_size

KI, MI, GI, TI, PI = 2**10, 2**20, 2**30, 2**40, 2**50


# ---- parse_size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512m", 512 * MI),
        ("32g", 32 * GI),
        ("64GiB", 64 * GI),
        ("64gib", 64 * GI),
        ("1.5g", int(1.5 * GI)),
        ("0.5k", 512),
        ("1k", KI),
        ("2t", 2 * TI),
        ("1p", PI),
        ("32G", 32 * GI),
        ("32gb", 32 * GI),
        ("32GB", 32 * GI),
        (" 32g ", 32 * GI),
        ("32 g", 32 * GI),
        ("100b", 100),
        ("100", 100),
        ("0", 0),
        (0, 0),
        (1024, 1024),
        (34_359_738_368, 32 * GI),
    ],
)
def test_parse_size_accepts(text: object, expected: int) -> None:
    """Binary suffixes (as Docker's), optional ``iB``/``B``, and plain integers give bytes."""
    assert parse_size(text) == expected


def test_parse_size_none_is_unlimited() -> None:
    """``None`` stays ``None``: it means unlimited throughout the policy."""
    assert parse_size(None) is None


def test_parse_size_returns_int() -> None:
    """A fractional size is rounded down to a whole number of bytes, and the type is int."""
    value = parse_size("1.5k")
    assert value == 1536
    assert type(value) is int


@pytest.mark.parametrize(
    "bad",
    [
        "32 gigs",
        "",
        "   ",
        "g",
        "5i",
        "-1",
        "-1g",
        "32x",
        "32gg",
        "g32",
        "1e3g",
        "0x10",
        "32g extra",
        -1,
        True,
        False,
        1.5,
        [],
        {},
        b"32g",
    ],
)
def test_parse_size_refuses(bad: object) -> None:
    """Anything that is not a non-negative integer or a size string raises UnitError."""
    with pytest.raises(UnitError):
        parse_size(bad)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("32 gigs", "'32 gigs' is not a size like 32g"),
        (True, "True is not a size like 32g"),
        (-1, "-1 is not a size like 32g (negative)"),
    ],
)
def test_parse_size_message_names_value_and_form(bad: object, message: str) -> None:
    """The error quotes the value and shows the expected form, for the policy error line."""
    with pytest.raises(UnitError) as info:
        parse_size(bad)
    assert str(info.value) == message


def test_unit_error_is_a_value_error() -> None:
    """Callers that catch ValueError also catch unit errors."""
    assert issubclass(UnitError, ValueError)


# ---- parse_duration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", 30.0),
        ("15m", 900.0),
        ("48h", 172_800.0),
        ("7d", 604_800.0),
        ("1w", 604_800.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        (" 48h ", 172_800.0),
        ("1d2h3m4s", 86400.0 + 7200 + 180 + 4),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        ("2D", 172_800.0),
        ("15M", 900.0),
        ("0s", 0.0),
        (0, 0.0),
        (90, 90.0),
        (1.5, 1.5),
    ],
)
def test_parse_duration_accepts(text: object, expected: float) -> None:
    """Unit strings, compound strings and plain numbers of seconds give seconds as a float."""
    value = parse_duration(text)
    assert value == expected
    assert isinstance(value, float)


def test_parse_duration_none_is_unlimited() -> None:
    """``None`` stays ``None``: no timeout."""
    assert parse_duration(None) is None


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "  ",
        "h",
        "48",
        "48 hours",
        "2 days",
        "1h30",
        "30x",
        "-5m",
        "m30",
        "1h-30m",
        "forever",
        -1,
        -0.5,
        True,
        False,
        [],
        {},
    ],
)
def test_parse_duration_refuses(bad: object) -> None:
    """Strings with unknown units or leftovers, negatives and booleans raise UnitError."""
    with pytest.raises(UnitError):
        parse_duration(bad)


def test_parse_duration_message_names_value_and_form() -> None:
    """The error quotes the value and shows the expected form."""
    with pytest.raises(UnitError) as info:
        parse_duration("2 days")
    assert str(info.value) == "'2 days' is not a duration like 48h"


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_parse_duration_refuses_non_finite(bad: float) -> None:
    """NaN and infinity are not durations (``null`` is how a policy says unlimited)."""
    with pytest.raises(UnitError):
        parse_duration(bad)


# ---- format_size / format_duration ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "unlimited"),
        (0, "0"),
        (1, "1b"),
        (1536, "1536b"),
        (KI, "1k"),
        (512 * MI, "512m"),
        (34_359_738_368, "32g"),
        (int(1.5 * GI), "1536m"),
        (3 * TI, "3t"),
        (PI, "1p"),
        (2048 * PI, "2048p"),
    ],
)
def test_format_size(value: int | None, expected: str) -> None:
    """The shortest exact binary form; bytes when no suffix divides evenly."""
    assert format_size(value) == expected


@pytest.mark.parametrize(
    "value", [0, 1, 1023, 1024, 1536, 12_345, GI + 1, 32 * GI, 3 * TI, 7 * PI, 10**15]
)
def test_size_round_trip_from_bytes(value: int) -> None:
    """parse_size(format_size(n)) gives n back for any byte count."""
    assert parse_size(format_size(value)) == value


@pytest.mark.parametrize("text", ["512m", "32g", "1k", "1p", "7t", "1536m", "100b", "0"])
def test_size_round_trip_from_canonical_text(text: str) -> None:
    """A size already in canonical form is printed back unchanged."""
    assert format_size(parse_size(text)) == text


@pytest.mark.parametrize(
    ("text", "canonical"), [("64GiB", "64g"), ("1024m", "1g"), ("0.5g", "512m")]
)
def test_size_format_canonicalises(text: str, canonical: str) -> None:
    """Other spellings of the same size print in the shortest form."""
    assert format_size(parse_size(text)) == canonical


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "unlimited"),
        (0, "0s"),
        (0.4, "0s"),
        (30, "30s"),
        (90, "1m30s"),
        (900, "15m"),
        (5400, "1h30m"),
        (172_800, "2d"),
        (604_800, "7d"),
        (90_061, "1d1h1m1s"),
        (59.6, "1m"),
    ],
)
def test_format_duration(value: float | None, expected: str) -> None:
    """Days, hours, minutes and seconds, omitting zero parts, rounded to the second."""
    assert format_duration(value) == expected


@pytest.mark.parametrize("value", [0, 1, 59, 60, 61, 3599, 3600, 5400, 86_399, 172_800, 1_000_000])
def test_duration_round_trip_from_seconds(value: int) -> None:
    """parse_duration(format_duration(n)) gives n back for whole seconds."""
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize("text", ["30s", "15m", "12h", "2d", "1h30m", "1d1h1m1s"])
def test_duration_round_trip_from_canonical_text(text: str) -> None:
    """A duration already in canonical form is printed back unchanged."""
    assert format_duration(parse_duration(text)) == text
