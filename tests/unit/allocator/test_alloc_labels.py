"""The ds01.* label schema: one vocabulary, values that round-trip."""

from __future__ import annotations

import pytest

from formats import labels
from formats.labels import (
    format_devices,
    format_gpueq,
    format_time,
    parse_devices,
    parse_gpueq,
    parse_time,
    parse_uid,
)


def test_label_names() -> None:
    """The label names are the documented ones, all under ds01."""
    names = {
        labels.LABEL_USER,
        labels.LABEL_UID,
        labels.LABEL_GROUP,
        labels.LABEL_DEVICES,
        labels.LABEL_GPUEQ,
        labels.LABEL_ALLOCATED_AT,
        labels.LABEL_WAIT,
    }
    assert names == {
        "ds01.user",
        "ds01.uid",
        "ds01.group",
        "ds01.devices",
        "ds01.gpueq",
        "ds01.allocated_at",
        "ds01.wait",
    }
    assert all(n.startswith(labels.LABEL_PREFIX) for n in names)
    assert {"ds01.wait"} == labels.USER_SETTABLE_LABELS


def test_devices_round_trip() -> None:
    """Device lists survive a label, blanks and spaces ignored."""
    uuids = ("MIG-a", "GPU-b")
    assert parse_devices(format_devices(uuids)) == uuids
    assert parse_devices(" MIG-a , ,GPU-b ") == uuids
    assert parse_devices("") == parse_devices(None) == ()


@pytest.mark.parametrize(
    ("value", "text"), [(1 / 7, "0.1429"), (3 / 7, "0.4286"), (1.0, "1"), (2.5, "2.5"), (0, "0")]
)
def test_gpueq_format(value: float, text: str) -> None:
    """GPU-equivalents print with at most four decimals, no trailing zeros."""
    assert format_gpueq(value) == text
    assert parse_gpueq(text) == pytest.approx(value, abs=1e-4)


def test_bad_values_read_as_missing() -> None:
    """Unreadable label values are None, not errors."""
    assert parse_gpueq("lots") is None and parse_gpueq("-1") is None and parse_gpueq("nan") is None
    assert parse_time("yesterday") is None and parse_time("2024-01-01T00:00:00") is None
    assert parse_uid({"ds01.uid": ""}) is None and parse_uid({}) is None
    assert parse_uid({"ds01.uid": "1001"}) == 1001


def test_time_round_trip() -> None:
    """Grant times are ISO 8601 UTC in labels and come back as the same epoch seconds."""
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"
    assert parse_time("2023-11-14T22:13:20.250Z") == 1_700_000_000.25
    assert parse_time("1700000000") == 1_700_000_000.0
