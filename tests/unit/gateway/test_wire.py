"""gateway/wire.py against h11: the same verdict on the same bytes, and stricter where meant.

Each response head is read both by ``parse_response_head`` and by an h11 client connection
that sent a GET; where h11 accepts, the status, reason, headers and the bytes after the head
must be equal, and where h11 refuses, so must we. The rows marked STRICTER are heads h11
accepts and the gateway refuses on purpose.
"""

from __future__ import annotations

import h11
import pytest

from gateway.wire import BadHead, parse_response_head, proposes_upgrade, request_head

MAX = 64 * 1024
STRICTER = "stricter"

HEADS: list[tuple[str, bytes, str | None]] = [
    ("plain", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", None),
    (
        "docker ps",
        b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n"
        b"Docker-Experimental: false\r\nOstype: linux\r\nServer: Docker/20.10 (linux)\r\n"
        b"Date: Mon, 30 Nov 2026 13:00:00 GMT\r\nContent-Length: 3\r\n\r\n[]\n",
        None,
    ),
    ("no reason", b"HTTP/1.1 204\r\n\r\n", None),
    ("empty reason", b"HTTP/1.1 204 \r\n\r\n", None),
    ("reason with tab and obs-text", b"HTTP/1.1 404 Not\tF\xe9und\r\n\r\n", None),
    ("HTTP/1.0", b"HTTP/1.0 200 OK\r\n\r\nbody until close", None),
    ("bare LF lines", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", None),
    ("mixed line ends", b"HTTP/1.1 200 OK\r\nA: b\n\r\n", None),
    ("chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", None),
    ("chunked upper-case", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n", None),
    (
        "TE and CL",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        None,
    ),
    ("whitespace around value", b"HTTP/1.1 200 OK\r\nX-A:  \t v  w \t \r\n\r\n", None),
    ("empty value", b"HTTP/1.1 200 OK\r\nX-A:\r\n\r\n", None),
    ("control char in value", b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\n\r\n", None),
    ("informational", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", None),
    (
        "raw stream",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n",
        None,
    ),
    ("no status line", b"\r\nHTTP/1.1 200 OK\r\n\r\n", "invalid"),
    ("bare LF first", b"\nHTTP/1.1 200 OK\r\n\r\n", "invalid"),
    ("not HTTP", b"NOT HTTP AT ALL\r\n\r\n", "invalid"),
    ("lower-case http", b"http/1.1 200 OK\r\n\r\n", "invalid"),
    ("two-digit status", b"HTTP/1.1 20 OK\r\n\r\n", "invalid"),
    ("status below 100", b"HTTP/1.1 099 Odd\r\n\r\n", "invalid"),
    ("two spaces", b"HTTP/1.1  200 OK\r\n\r\n", "invalid"),
    ("bare CR in reason", b"HTTP/1.1 200 O\rK\r\n\r\n", "invalid"),
    ("bare CR in value", b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n", "invalid"),
    ("NUL in value", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n", "invalid"),
    ("space before colon", b"HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n", "invalid"),
    ("bad header name", b"HTTP/1.1 200 OK\r\nX(A): b\r\n\r\n", "invalid"),
    ("no colon", b"HTTP/1.1 200 OK\r\nX-A b\r\n\r\n", "invalid"),
    ("folded first line", b"HTTP/1.1 200 OK\r\n X-A: b\r\n\r\n", "invalid"),
    (
        "conflicting lengths",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "invalid",
    ),
    ("length list conflict", b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "invalid"),
    ("length not a number", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid"),
    (
        "length too long",
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"1" * 21 + b"\r\n\r\n",
        "invalid",
    ),
    ("gzip coding", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "invalid"),
    (
        "gzip then chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "invalid",
    ),
    (
        "two codings",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "invalid",
    ),
    ("obsolete folding", b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n", STRICTER),
    (
        "repeated equal lengths",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        STRICTER,
    ),
    ("equal length list", b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n", STRICTER),
]


def h11_verdict(data: bytes, *, upgrade: bool = False):
    """(status, reason, raw headers, bytes after the head) as h11 reads them, or None."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX)
    headers = [(b"Host", b"docker")]
    if upgrade:
        headers += [(b"Connection", b"Upgrade"), (b"Upgrade", b"tcp")]
    conn.send(h11.Request(method=b"GET", target=b"/x", headers=headers))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if event is h11.NEED_DATA:
        return "incomplete"
    rest = conn.trailing_data[0] if event.status_code == 101 else None
    return event.status_code, event.reason, event.headers.raw_items(), rest


def ours(data: bytes):
    try:
        got = parse_response_head(data, MAX)
    except BadHead:
        return None
    if got is None:
        return "incomplete"
    head, end = got
    return head.status_code, head.reason, head.headers.raw_items(), data[end:]


@pytest.mark.parametrize(("data", "expect"), [row[1:] for row in HEADS], ids=[r[0] for r in HEADS])
def test_response_head_agrees_with_h11(data, expect):
    theirs, mine = h11_verdict(data), ours(data)
    if expect == STRICTER:
        assert theirs is not None and mine is None
    elif expect == "invalid":
        assert theirs is None and mine is None
    else:
        assert theirs is not None and mine is not None
        assert mine[:3] == theirs[:3]


def test_bytes_after_the_head_are_returned():
    data = b"HTTP/1.1 200 OK\nContent-Length: 5\n\r\nhello"
    assert ours(data)[3] == b"hello"
    assert ours(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")[3] == (
        b"HTTP/1.1 200 OK\r\n\r\n"
    )


def test_switching_protocols_agrees_with_h11():
    data = b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nraw"
    assert ours(data)[:3] == h11_verdict(data, upgrade=True)[:3]
    assert ours(data)[3] == h11_verdict(data, upgrade=True)[3] == b"raw"
    assert h11_verdict(data) is None  # h11 refuses a 101 nobody asked for: the exchange does too
    assert proposes_upgrade([(b"Upgrade", b"tcp")])
    assert not proposes_upgrade([(b"upgrade", b" , ")])
    assert not proposes_upgrade([(b"Connection", b"Upgrade")])


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Le", "incomplete"),
        (b"HTTP/1.1 200 OK\r\n\r", "incomplete"),
        (b" HTTP/1.1 200", None),  # h11 refuses a leading control or space at once
        (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 10_000, None),  # over the limit, unfinished
    ],
)
def test_incomplete_heads_agree_with_h11(data, expect):
    assert h11_verdict(data) == expect
    assert ours(data) == expect


def test_nothing_yet_is_incomplete():
    assert ours(b"") == "incomplete"  # (h11 reads b"" as the end of the connection)


def test_a_long_but_complete_head_is_read_as_h11_reads_it():
    data = b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 10_000 + b"\r\n"
    assert ours(data)[:3] == h11_verdict(data)[:3]


REQUESTS = [
    ("GET", "/v1.41/containers/json", [(b"User-Agent", b"Docker-Client"), (b"Host", b"docker")]),
    ("POST", "/x?a=%20b", [(b"Host", b"h"), (b"Content-Length", b"3"), (b"X-E", b"")]),
    ("DELETE", "/x", [(b"host", b"h"), (b"Transfer-Encoding", b"chunked")]),
    ("GET", "/x", [(b"Host", b"h"), (b"X-O", b"caf\xe9")]),
]


@pytest.mark.parametrize(("method", "target", "headers"), REQUESTS)
def test_request_head_is_what_h11_writes(method, target, headers):
    conn = h11.Connection(h11.CLIENT)
    expected = conn.send(h11.Request(method=method, target=target, headers=headers))
    assert request_head(method, target, headers) == expected


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("G T", "/x", [(b"Host", b"h")]),
        ("GET", "/x y", [(b"Host", b"h")]),
        ("GET", "/x\r\n", [(b"Host", b"h")]),
        ("GET", "/é", [(b"Host", b"h")]),
        ("GET", "", [(b"Host", b"h")]),
        ("GET", "/x", []),
        ("GET", "/x", [(b"Host", b"h"), (b"host", b"i")]),
        ("GET", "/x", [(b"Host", b"h"), (b"X-A", b"a\r\nX-B: b")]),
        ("GET", "/x", [(b"Host", b"h"), (b"X-A", b" padded")]),
        ("GET", "/x", [(b"Host", b"h"), (b"X A", b"b")]),
        ("GET", "/x", [(b"Host", b"h"), (b"", b"b")]),
    ],
)
def test_request_head_refuses_what_h11_refuses(method, target, headers):
    with pytest.raises((h11.LocalProtocolError, UnicodeError)):
        h11.Connection(h11.CLIENT).send(
            h11.Request(method=method.encode(), target=target.encode(), headers=headers)
        )
    with pytest.raises(BadHead):
        request_head(method, target, headers)
