"""Parsing of the human units used in the policy: sizes (``32g``) and durations (``48h``)."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_DURATION_FACTORS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UnitError(ValueError):
    """A value is not in the expected unit syntax; the message says what was expected."""


def parse_size(value: object) -> int | None:
    """Bytes for ``512m``, ``32g``, ``64GiB`` or a plain integer; ``None`` stays unlimited.

    Like Docker, the suffixes are binary: ``1g`` is 2**30 bytes.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a size like 32g")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"{value!r} is not a size like 32g (negative)")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match and not (match.group(3) and match.group(3).lower() == "i"):
            number, unit, _ = match.groups()
            return int(float(number) * _SIZE_FACTORS[unit.lower()])
    raise UnitError(f"{value!r} is not a size like 32g")


def parse_duration(value: object) -> float | None:
    """Seconds for ``30s``, ``15m``, ``48h``, ``7d``, ``1h30m`` or plain seconds; ``None`` stays."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a duration like 48h")
    if isinstance(value, int | float):
        if value < 0 or value != value or value == float("inf"):
            raise UnitError(f"{value!r} is not a duration like 48h")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_FACTORS[u.lower()] for n, u in parts)
    raise UnitError(f"{value!r} is not a duration like 48h")


def format_size(value: int | None) -> str:
    """The shortest exact binary form of a byte count (``34359738368`` -> ``32g``)."""
    if value is None:
        return "unlimited"
    for unit in ("p", "t", "g", "m", "k"):
        factor = _SIZE_FACTORS[unit]
        if value >= factor and value % factor == 0:
            return f"{value // factor}{unit}"
    return f"{value}b" if value else "0"


def format_duration(value: float | None) -> str:
    """A compact duration (``172800`` -> ``2d``, ``5400`` -> ``1h30m``)."""
    if value is None:
        return "unlimited"
    remaining = round(value)
    if remaining == 0:
        return "0s"
    out = []
    for unit in ("d", "h", "m", "s"):
        factor = _DURATION_FACTORS[unit]
        amount, remaining = divmod(remaining, int(factor))
        if amount:
            out.append(f"{amount}{unit}")
    return "".join(out)
