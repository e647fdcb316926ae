"""The chunk scanner finds where a chunked body ends without changing a byte of it."""

from __future__ import annotations

import pytest

from gateway.framing import BadChunking as _BadChunking
from gateway.framing import ChunkScanner as _ChunkScanner

BODY = b"5\r\nhello\r\n1;name=value\r\n \r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n"


def scan(pieces: list[bytes]) -> tuple[int, bytes, bool]:
    scanner = _ChunkScanner()
    used = 0
    payload: list[memoryview] = []
    for piece in pieces:
        n = scanner.feed(piece, payload)
        used += n
        if scanner.done:
            break
    return used, b"".join(bytes(p) for p in payload), scanner.done


def test_whole_body_in_one_piece():
    """One read holding the whole body (extensions and trailers included)."""
    used, payload, done = scan([BODY + b"NEXT"])
    assert done and used == len(BODY)
    assert payload == b"hello 0123456789abcdef"


@pytest.mark.parametrize("cut", range(1, len(BODY)))
def test_any_split_point(cut):
    """Reads may end anywhere: inside a size line, the data, the CRLF or a trailer."""
    used, payload, done = scan([BODY[:cut], BODY[cut:]])
    assert done and used == len(BODY)
    assert payload == b"hello 0123456789abcdef"


def test_byte_by_byte():
    used, payload, done = scan([bytes([b]) for b in BODY])
    assert done and used == len(BODY)
    assert payload == b"hello 0123456789abcdef"


def test_not_done_until_final_crlf():
    _, _, done = scan([BODY[:-2]])
    assert not done


@pytest.mark.parametrize(
    "bad",
    [
        b"zz\r\nxx\r\n",  # size not hex
        b"5\nhello\r\n",  # bare LF
        b"5\r\nhelloXX0\r\n\r\n",  # data not followed by CRLF
        b"-1\r\n",
        b"1" * 5000,  # endless size line
        b"11111111111111111\r\n",  # more than 16 hex digits
    ],
)
def test_bad_framing_is_refused(bad):
    with pytest.raises(_BadChunking):
        _ChunkScanner().feed(bad, None)
