"""Pure HTTP/1.1 framing helpers for the gateway: no sockets, no event loop.

How a request or response body is delimited (length, chunked, until close), following a
chunked body without decoding it, the bytes of a response head, and the header tests the
proxy makes (Connection tokens, dockerd's raw-stream content types).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

import h11

MAX_CHUNK_LINE = 4096
MAX_TRAILERS = 64 * 1024
# Hop-by-hop headers that ask for a protocol switch; only hijacked routes may forward them.
HOP_UPGRADE = {"upgrade", "http2-settings"}
_DOCKER_STREAMS = (
    b"application/vnd.docker.raw-stream",
    b"application/vnd.docker.multiplexed-stream",
)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")

# How a response body is delimited.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = range(4)


class BadChunking(Exception):
    """dockerd's chunked framing could not be followed."""


class ChunkScanner:
    """Follows a chunked body's framing without decoding it, so it can be relayed as it came."""

    __slots__ = ("_left", "_line", "_state", "_trailers", "done")
    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self) -> None:
        self.done = False
        self._state = self._SIZE
        self._left = 0
        self._line = bytearray()
        self._trailers = 0

    def feed(self, data: bytes, payload: list[memoryview] | None = None) -> int:
        """Consume body bytes from the start of data; return how many belong to the body.

        Chunk payload is appended to ``payload`` (as views into data) when given.
        """
        pos, end = 0, len(data)
        while pos < end:
            if self._state == self._DATA:
                take = min(self._left, end - pos)
                if payload is not None:
                    payload.append(memoryview(data)[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = self._DATA_END
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > MAX_CHUNK_LINE:
                    raise BadChunking("line too long")
                return end
            line = data[pos:nl]
            if self._line:
                line = bytes(self._line) + line
                self._line.clear()
            pos = nl + 1
            if not line.endswith(b"\r") or len(line) > MAX_CHUNK_LINE:
                raise BadChunking("line not ended by CRLF")
            if self._line_done(line[:-1]):
                return pos
        return end

    def _line_done(self, line: bytes) -> bool:
        """Take one framing line (CRLF removed); True when it ends the body."""
        if self._state == self._SIZE:
            size = line.split(b";", 1)[0].strip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size):
                raise BadChunking(f"bad chunk size {size[:20]!r}")
            self._left = int(size, 16)
            self._state = self._DATA if self._left else self._TRAILER
        elif self._state == self._DATA_END:
            if line:
                raise BadChunking("chunk not followed by CRLF")
            self._state = self._SIZE
        else:
            if not line:
                self.done = True
                return True
            self._trailers += len(line)
            if self._trailers > MAX_TRAILERS:
                raise BadChunking("trailers too long")
        return False


def body_ends(parser: h11.Connection, data: bytes) -> bool:
    """Feed a request parser more of a body we are discarding; True once the body has ended.

    A body whose framing breaks counts as ended: there is nothing more to wait for.
    """
    try:
        parser.receive_data(data)
    except RuntimeError:  # the parser already saw the client's end of file
        return True
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError:
            return True
        if event is h11.NEED_DATA:
            return False
        if not isinstance(event, h11.Data):  # EndOfMessage, or PAUSED after it
            return True


def head_bytes(status: int, reason: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A response head as it goes on the wire."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class Headers(Protocol):
    """h11's header list (its class is not public)."""

    def raw_items(self) -> list[tuple[bytes, bytes]]: ...


class ResponseLike(Protocol):
    """A response head: h11's, or the gateway's own (``wire.ResponseHead``)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Headers: ...


def _lowered(headers: Headers) -> list[tuple[bytes, bytes]]:
    # Iterating h11's Headers goes through the generic Sequence protocol, an item at a time;
    # raw_items() is one list. Header names compare lower-cased, as h11 normalises them.
    return [(name.lower(), value) for name, value in headers.raw_items()]


def request_framing(request: h11.Request) -> tuple[bool, int | None, str | None]:
    """(chunked, content length, problem) of a request h11 accepted."""
    chunked = False
    length: int | None = None
    for name, value in _lowered(request.headers):
        if name == b"transfer-encoding":
            chunked = True
        elif name == b"content-length":
            length = int(value)
    if chunked and length is not None:
        # h11 lets Transfer-Encoding win, as RFC 9112 allows; a proxy must not: the two
        # framings disagreeing is the classic request-smuggling shape.
        return chunked, length, "both Content-Length and Transfer-Encoding"
    return chunked, length, None


def response_framing(method: bytes, response: ResponseLike) -> tuple[int, int]:
    """(NO_BODY, LENGTH, CHUNKED or UNTIL_CLOSE, content length) of a response."""
    if method == b"HEAD" or response.status_code in (204, 304) or response.status_code < 200:
        return NO_BODY, 0
    length: int | None = None
    for name, value in _lowered(response.headers):
        if name == b"transfer-encoding":
            return CHUNKED, 0  # the head parser admits no coding but chunked
        if name == b"content-length":
            length = int(value)
    if length is not None:
        return LENGTH, length
    return UNTIL_CLOSE, 0


def has_token(headers: Headers, token: bytes) -> bool:
    """True when a Connection header lists ``token`` (lower-case)."""
    for name, value in _lowered(headers):
        if name == b"connection" and token in (t.strip().lower() for t in value.split(b",")):
            return True
    return False


def is_docker_stream(response: ResponseLike) -> bool:
    """True for dockerd's raw or multiplexed stream content types."""
    # dockerd hijacks attach/exec without an Upgrade header too, and then answers with one of
    # its stream content types and no framing at all.
    for name, value in _lowered(response.headers):
        if name == b"content-type" and value.split(b";")[0].strip().lower() in _DOCKER_STREAMS:
            return True
    return False
