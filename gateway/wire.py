"""The two heads the gateway handles on its dockerd side, without h11: pure, no sockets.

``request_head`` writes the upstream request head from the handler's method, target and
headers, checked by the same rules h11 applies to a request it sends. ``parse_response_head``
reads dockerd's response head, refusing whatever h11 would refuse, and more (folded lines,
repeated Content-Length), since a proxy must not guess. h11 reads a response only on a
connection where it also sent the request; building that machinery for every request cost
the gateway more than the rest of its own work on a ``docker ps``. The framing that follows
a head is decided in ``framing.py``, as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The grammar h11 0.16 uses (RFC 9110/9112): token, field values, request targets, status line.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VCHAR = rb"[^\x00\s]"
_FIELD_CONTENT = rb"%s+(?:[ \t]+%s+)*" % (_FIELD_VCHAR, _FIELD_VCHAR)
_TOKEN_RE = re.compile(_TOKEN)
_TARGET_RE = re.compile(rb"[\x21-\x7e]+")
_VALUE_RE = re.compile(rb"(?:%s)?" % _FIELD_CONTENT)
_HEADER_RE = re.compile(rb"(%s):[ \t]*((?:%s)?)[ \t]*" % (_TOKEN, _FIELD_CONTENT))
_STATUS_RE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|%s)*))?" % _FIELD_VCHAR)
_HEAD_END = re.compile(rb"\n\r?\n")
_DIGITS = re.compile(rb"[0-9]{1,20}")


class BadHead(ValueError):
    """A head that must not go on the wire (ours) or be relayed (dockerd's)."""


def request_head(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """An HTTP/1.1 request head as h11 would write it (Host first); BadHead if invalid.

    ``headers`` carry their framing already (one Content-Length or Transfer-Encoding).
    """
    try:
        m, t = method.encode("ascii"), target.encode("ascii")
    except UnicodeError as exc:
        raise BadHead(f"non-ASCII method or target: {exc}") from exc
    if _TOKEN_RE.fullmatch(m) is None:
        raise BadHead(f"illegal method {m[:40]!r}")
    if _TARGET_RE.fullmatch(t) is None:
        raise BadHead(f"illegal target {t[:80]!r}")
    host = None
    lines = [b"%s %s HTTP/1.1\r\n" % (m, t)]
    for name, value in headers:
        if _TOKEN_RE.fullmatch(name) is None or _VALUE_RE.fullmatch(value) is None:
            raise BadHead(f"illegal header {name[:40]!r}: {value[:80]!r}")
        line = b"%s: %s\r\n" % (name, value)
        if name.lower() == b"host":
            if host is not None:
                raise BadHead("more than one Host header")
            host = line
        else:
            lines.append(line)
    if host is None:
        raise BadHead("no Host header")
    # RFC 9110 asks a client to send Host first, and h11 did.
    lines.insert(1, host)
    lines.append(b"\r\n")
    return b"".join(lines)


class ResponseHeaders:
    """A response's headers as received (names as sent), in ``framing.Headers``' shape."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        self._items = items

    def raw_items(self) -> list[tuple[bytes, bytes]]:
        return self._items


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """dockerd's status line and headers, as the relay needs them."""

    status_code: int
    reason: bytes
    http_version: bytes
    headers: ResponseHeaders


def parse_response_head(buf: bytes, max_size: int) -> tuple[ResponseHead, int] | None:
    """(the head, where it ends in buf), or None while it is incomplete; BadHead if invalid.

    Lines end with CRLF or a bare LF, as h11 reads them. A head still incomplete beyond
    ``max_size`` bytes is refused.
    """
    if buf[:1] == b"\n" or buf[:2] == b"\r\n":
        raise BadHead("no response line received")
    found = _HEAD_END.search(buf)
    if found is None:
        if len(buf) > max_size:
            raise BadHead(f"response head longer than {max_size} bytes")
        if buf and buf[0] < 0x21:
            raise BadHead("illegal status line")
        return None
    end = found.end()
    lines = buf[:end].split(b"\n")[:-2]
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    status = _STATUS_RE.fullmatch(lines[0])
    if status is None:
        raise BadHead(f"illegal status line: {lines[0][:80]!r}")
    version, code, reason = status.groups()
    status_code = int(code)
    if status_code < 100:
        raise BadHead(f"status code {status_code} out of range")
    head = ResponseHead(status_code, reason or b"", version, _headers(lines[1:]))
    return head, end


def _headers(lines: list[bytes]) -> ResponseHeaders:
    """Header lines, checked and normalised as h11 does (Transfer-Encoding lower-cased)."""
    items: list[tuple[bytes, bytes]] = []
    seen_length = seen_coding = False
    for line in lines:
        field = _HEADER_RE.fullmatch(line)
        if field is None:
            # Also a line starting with a space or a tab: obsolete line folding, which h11
            # would join; a proxy relaying it could be read two ways downstream.
            raise BadHead(f"illegal header line: {line[:80]!r}")
        name, value = field.groups()
        lname = name.lower()
        if lname == b"content-length":
            if seen_length or _DIGITS.fullmatch(value) is None:
                raise BadHead("bad or repeated Content-Length")
            seen_length = True
        elif lname == b"transfer-encoding":
            value = value.lower()
            if seen_coding or value != b"chunked":
                raise BadHead("Transfer-Encoding other than a single chunked")
            seen_coding = True
        items.append((name, value))
    return ResponseHeaders(items)


def proposes_upgrade(headers: list[tuple[bytes, bytes]]) -> bool:
    """True when a request asks for a protocol switch: only then may dockerd answer 101."""
    return any(
        name.lower() == b"upgrade" and any(t.strip() for t in value.split(b","))
        for name, value in headers
    )
