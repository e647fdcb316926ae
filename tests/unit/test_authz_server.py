"""ds01d's AuthZ plugin server (authz_plugin/server.py) on a real unix socket, asyncio and uvloop.

The same answers as the aiohttp app (tests/unit/test_authz_protocol.py), and the HTTP edges
a hand-written server must get right: framing dockerd's Go client may use (length, none,
chunked), calls kept alive and pipelined, and anything it cannot frame exactly answered 400
and closed, never guessed at.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from authz_plugin.authz import MAX_PLUGIN_REQUEST, AuthzAnswer, AuthzRequest
from authz_plugin.server import BadFraming, PluginServer, parse_head
from tests.unit.test_authz_protocol import (
    CREATE_BODY,
    GARBAGE,
    Exploding,
    Recorder,
    authz_json,
    b64,
)

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    return LOOPS[request.param]  # type: ignore[return-value]


def post(path: str, body: bytes, *extra: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: plugin\r\nContent-Length: %d\r\n" % (
        path.encode(),
        len(body),
    )
    return head + b"".join(extra) + b"\r\n" + body


def chunked(path: str, *chunks: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: plugin\r\nTransfer-Encoding: chunked\r\n\r\n" % path.encode()
    return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers["Content-Length"]))
    return status, headers, json.loads(body)


async def exchange(
    server: PluginServer, sock: Path, *requests: bytes, answers: int | None = None
) -> tuple[list[tuple[int, dict[str, str], Any]], bool]:
    """Send ``requests`` on one connection (all at once); the answers, and whether it closed."""
    await server.start(str(sock))
    try:
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b"".join(requests))
        got = [
            await asyncio.wait_for(read_answer(reader), 10) for _ in range(answers or len(requests))
        ]
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.2) == b""
        except TimeoutError:
            closed = False
        writer.close()
        return got, closed
    finally:
        await server.cleanup()


def one(run: Callable[..., Any], tmp_path: Path, server: PluginServer, request: bytes) -> Any:
    [(status, _, answer)], _ = run(exchange(server, tmp_path / "p.sock", request))
    return status, answer


def test_activate_implements_authz(run: Any, tmp_path: Path) -> None:
    server = PluginServer(Recorder(), Recorder())
    assert one(run, tmp_path, server, post("/Plugin.Activate", b"")) == (
        200,
        {"Implements": ["authz"]},
    )


def test_request_reaches_the_authorizer_decoded(run: Any, tmp_path: Path) -> None:
    on_request, on_response = Recorder(), Recorder()
    server = PluginServer(on_request, on_response)
    raw = post("/AuthZPlugin.AuthZReq", authz_json(User="tls-bob"))
    assert one(run, tmp_path, server, raw) == (200, {"Allow": True})
    [seen] = on_request.seen
    assert (seen.user, seen.method, seen.uri, seen.body) == (
        "tls-bob",
        "POST",
        "/v1.43/containers/create?name=train",
        CREATE_BODY,
    )
    assert on_response.seen == []


def test_denial_carries_the_message(run: Any, tmp_path: Path) -> None:
    server = PluginServer(Recorder(AuthzAnswer(False, "ds01: no")), Recorder())
    assert one(run, tmp_path, server, post("/AuthZPlugin.AuthZReq", authz_json())) == (
        200,
        {"Allow": False, "Msg": "ds01: no"},
    )


def test_response_goes_to_the_response_authorizer(run: Any, tmp_path: Path) -> None:
    on_request, on_response = Recorder(), Recorder()
    server = PluginServer(on_request, on_response)
    raw = authz_json(ResponseStatusCode=201, ResponseBody=b64(b'{"Id":"c1"}'))
    assert one(run, tmp_path, server, post("/AuthZPlugin.AuthZRes", raw)) == (200, {"Allow": True})
    [seen] = on_response.seen
    assert (seen.response_status, seen.response_body) == (201, b'{"Id":"c1"}')
    assert on_request.seen == []


def test_answer_unread_when_not_wanted(run: Any, tmp_path: Path) -> None:
    """read_answer=False: dockerd's answer (status, headers, body) is neither decoded nor
    checked, and the authorizer sees none of it."""
    on_response = Recorder()
    server = PluginServer(Recorder(), on_response, read_answer=False)
    raw = authz_json(ResponseStatusCode="200", ResponseHeaders=[1], ResponseBody="%%% not base64")
    assert one(run, tmp_path, server, post("/AuthZPlugin.AuthZRes", raw)) == (200, {"Allow": True})
    seen = on_response.seen[0]
    assert (seen.response_status, seen.response_headers, seen.response_body) == (None, {}, None)
    # What is read is still checked: the request's own headers must be a map of strings.
    server = PluginServer(Recorder(), Recorder(), read_answer=False)
    raw = post("/AuthZPlugin.AuthZRes", authz_json(RequestHeaders={"X": 1}))
    status, answer = one(run, tmp_path, server, raw)
    assert (status, answer["Allow"]) == (200, False)
    assert "RequestHeaders is not a map of strings" in answer["Msg"]


@pytest.mark.parametrize("path", ["/AuthZPlugin.AuthZReq", "/AuthZPlugin.AuthZRes"])
def test_authorizer_exception_is_a_denial_not_a_500(run: Any, tmp_path: Path, path: str) -> None:
    exploding = Exploding()
    server = PluginServer(exploding, exploding)
    status, answer = one(run, tmp_path, server, post(path, authz_json(ResponseStatusCode=200)))
    assert (status, answer["Allow"]) == (200, False)
    assert "internal error" in answer["Msg"]
    assert exploding.calls == 1


@pytest.mark.parametrize(("raw", "why"), GARBAGE)
def test_garbage_is_a_denial(run: Any, tmp_path: Path, raw: bytes, why: str) -> None:
    on_request = Recorder()
    server = PluginServer(on_request, Recorder())
    status, answer = one(run, tmp_path, server, post("/AuthZPlugin.AuthZReq", raw))
    assert (status, answer["Allow"]) == (200, False)
    assert answer["Msg"].startswith("ds01: unreadable AuthZ request (") and why in answer["Msg"]
    assert on_request.seen == []


def test_oversized_body_is_a_denial_and_the_connection_goes_on(run: Any, tmp_path: Path) -> None:
    """A body over MAX_PLUGIN_REQUEST is read to its end (not kept), denied; the next call works."""
    on_request = Recorder()
    server = PluginServer(on_request, Recorder())
    big = post("/AuthZPlugin.AuthZReq", b" " * (MAX_PLUGIN_REQUEST + 1))
    then = post("/AuthZPlugin.AuthZReq", authz_json())
    got, closed = run(exchange(server, tmp_path / "p.sock", big, then))
    assert [(s, a) for s, _, a in got] == [
        (200, {"Allow": False, "Msg": "ds01: request too large for the AuthZ plugin"}),
        (200, {"Allow": True}),
    ]
    assert len(on_request.seen) == 1 and not closed


def test_chunked_body_is_decoded(run: Any, tmp_path: Path) -> None:
    on_request = Recorder()
    server = PluginServer(on_request, Recorder())
    raw = authz_json(User="amy")
    request = chunked("/AuthZPlugin.AuthZReq", raw[:10], raw[10:])
    assert one(run, tmp_path, server, request) == (200, {"Allow": True})
    assert on_request.seen[0].user == "amy"


def test_chunked_oversized_body_is_a_denial(run: Any, tmp_path: Path) -> None:
    on_request = Recorder()
    server = PluginServer(on_request, Recorder())
    piece = b" " * (MAX_PLUGIN_REQUEST // 2 + 1)
    status, answer = one(run, tmp_path, server, chunked("/AuthZPlugin.AuthZReq", piece, piece))
    assert (status, answer["Msg"]) == (200, "ds01: request too large for the AuthZ plugin")
    assert on_request.seen == []


def test_calls_are_kept_alive_and_pipelined_in_order(run: Any, tmp_path: Path) -> None:
    """Several calls in one write are answered in order on the same connection."""
    answers = iter([AuthzAnswer(False, "first"), AuthzAnswer(False, "second"), AuthzAnswer(True)])
    delays = iter([0.05, 0.01, 0.0])

    async def decide(_: AuthzRequest) -> AuthzAnswer:
        answer = next(answers)
        # The first decision is the slowest: its answer must still go out first.
        await asyncio.sleep(next(delays))
        return answer

    server = PluginServer(decide, decide)
    calls = [post("/AuthZPlugin.AuthZReq", authz_json()) for _ in range(3)]
    got, closed = run(exchange(server, tmp_path / "p.sock", *calls))
    assert [a for _, _, a in got] == [
        {"Allow": False, "Msg": "first"},
        {"Allow": False, "Msg": "second"},
        {"Allow": True},
    ]
    assert not closed


def test_connection_close_is_honoured(run: Any, tmp_path: Path) -> None:
    server = PluginServer(Recorder(), Recorder())
    request = post("/AuthZPlugin.AuthZReq", authz_json(), b"Connection: close\r\n")
    [(status, headers, _)], closed = run(exchange(server, tmp_path / "p.sock", request))
    assert status == 200 and headers["Connection"] == "close" and closed


def test_observe_gets_one_duration_per_call(run: Any, tmp_path: Path) -> None:
    durations: list[float] = []
    server = PluginServer(Recorder(), Exploding(), observe=durations.append)
    calls = [
        post("/AuthZPlugin.AuthZReq", authz_json()),
        post("/AuthZPlugin.AuthZRes", authz_json()),
        post("/AuthZPlugin.AuthZReq", b"garbage"),
    ]
    run(exchange(server, tmp_path / "p.sock", *calls))
    assert len(durations) == 3 and all(0 <= d < 10 for d in durations)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /AuthZPlugin.AuthZReq HTTP/1.1\r\nHost: p\r\n\r\n", 405),
        (post("/AuthZPlugin.Nope", b"{}"), 404),
        (b"POST /AuthZPlugin.AuthZReq HTTP/2.0\r\nContent-Length: 0\r\n\r\n", 400),
        (b"POST  /AuthZPlugin.AuthZReq HTTP/1.1\r\n\r\n", 400),
        (post("/AuthZPlugin.AuthZReq", b"{}", b"Transfer-Encoding: chunked\r\n"), 400),
        (post("/AuthZPlugin.AuthZReq", b"{}", b"Content-Length: 3\r\n"), 400),
        (post("/AuthZPlugin.AuthZReq", b"{}", b" folded\r\n"), 400),
        (post("/AuthZPlugin.AuthZReq", b"{}", b"Bad Name: x\r\n"), 400),
        (b"POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
        (
            b"POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        (
            b"POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}XX0\r\n\r\n",
            400,
        ),
        (b"POST /AuthZPlugin.AuthZReq HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 400),
    ],
)
def test_what_cannot_be_framed_exactly_is_refused_and_closed(
    run: Any, tmp_path: Path, request_bytes: bytes, status: int
) -> None:
    """Wrong method, unknown call or malformed HTTP: an error status (dockerd then refuses the
    API request), never a decision; malformed framing also closes the connection."""
    on_request = Recorder()
    server = PluginServer(on_request, Recorder())
    [(got, _, answer)], closed = run(exchange(server, tmp_path / "p.sock", request_bytes))
    assert got == status and "Allow" not in answer
    assert on_request.seen == []
    if status != 404:
        assert closed


@pytest.mark.parametrize(
    "head",
    [
        b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2",
        b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"POST /x HTTP/1.1\r\nContent-Length: 0x1",
        b"POST /x HTTP/1.1\r\n: empty-name",
        b"POST /x\r\nHost: y",
        b"POST x HTTP/1.1",
    ],
)
def test_parse_head_refuses_ambiguous_framing(head: bytes) -> None:
    with pytest.raises(BadFraming):
        parse_head(head)


def test_parse_head_reads_framing_and_close() -> None:
    head = parse_head(b"POST /p HTTP/1.1\r\nContent-Length: 12\r\nConnection: Close")
    assert (head.method, head.target, head.length, head.chunked, head.close) == (
        b"POST",
        b"/p",
        12,
        False,
        True,
    )
    assert parse_head(b"POST /p HTTP/1.0\r\nConnection: keep-alive").close is False
    assert parse_head(b"POST /p HTTP/1.0").close is True


def test_answers_given_at_once_and_awaited_keep_their_order(run: Any, tmp_path: Path) -> None:
    """An authorizer may answer at once (no lookup) or later; pipelined calls mixing both
    are answered in the order they came, and a failure raised at once is a denial."""
    plan = iter(["later", "now", "raise", "now"])

    def decide(request: AuthzRequest) -> AuthzAnswer | Awaitable[AuthzAnswer]:
        how = next(plan)
        if how == "raise":
            raise RuntimeError("boom")
        if how == "now":
            return AuthzAnswer(False, f"now {request.uri}")

        async def later() -> AuthzAnswer:
            await asyncio.sleep(0.05)
            return AuthzAnswer(False, f"later {request.uri}")

        return later()

    server = PluginServer(decide, decide)
    calls = [post("/AuthZPlugin.AuthZReq", authz_json(RequestUri=f"/{i}")) for i in range(4)]
    got, closed = run(exchange(server, tmp_path / "p.sock", *calls))
    messages = [a["Msg"] for _, _, a in got]
    assert messages[0] == "later /0" and messages[1] == "now /1" and messages[3] == "now /3"
    assert "internal error" in messages[2] and not closed


def test_an_idle_connection_is_closed_but_not_one_being_decided(
    run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle timer counts from the last answer and never fires under a slow decision."""
    monkeypatch.setattr("authz_plugin.server.IDLE_TIMEOUT_S", 0.2)

    async def slow(_: AuthzRequest) -> AuthzAnswer:
        await asyncio.sleep(0.5)  # longer than the idle timeout
        return AuthzAnswer(True)

    async def scenario() -> tuple[dict[str, Any], bytes]:
        server = PluginServer(slow, slow)
        await server.start(str(tmp_path / "p.sock"))
        try:
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "p.sock"))
            writer.write(post("/AuthZPlugin.AuthZReq", authz_json()))
            _, _, answer = await asyncio.wait_for(read_answer(reader), 5)
            after = await asyncio.wait_for(reader.read(1), 5)  # idle now: closed soon
            writer.close()
            return answer, after
        finally:
            await server.cleanup()

    answer, after = run(scenario())
    assert answer == {"Allow": True} and after == b""
