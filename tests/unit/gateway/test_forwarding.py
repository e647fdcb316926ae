"""Requests are parsed one by one, decided by the handler and forwarded as it says."""

from __future__ import annotations

import asyncio
import json

from gateway.types import Client, Forward, Reply, RequestHead

from .fakes import PassThrough, Script, Seen, UpstreamConn, read_response, serve_each


def echo_target(seen: Seen) -> tuple[int, bytes]:
    return 200, json.dumps({"target": seen.target, "body": seen.body.decode()}).encode()


async def test_keep_alive_requests_are_decided_one_by_one(rig):
    """Two pipelined requests on one connection: two decisions, one dockerd connection."""
    handler = PassThrough()
    await rig.start(handler, serve_each(echo_target))
    reader, writer = await rig.client()
    writer.write(
        b"GET /v1.41/containers/json HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /v1.41/images/json?all=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    first = await read_response(reader)
    second = await read_response(reader)
    assert json.loads(first.body)["target"] == "/v1.41/containers/json"
    assert json.loads(second.body)["target"] == "/v1.41/images/json?all=1"
    assert [h.target for h in handler.heads] == [
        "/v1.41/containers/json",
        "/v1.41/images/json?all=1",
    ]
    assert rig.dockerd.connections == 1
    assert await handler.wait_closed(2) == [True, True]


async def test_each_request_gets_its_own_head(rig):
    """Headers of one request never leak into the next on the same connection."""
    handler = PassThrough()
    await rig.start(handler, serve_each(echo_target))
    reader, writer = await rig.client()
    writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\nX-One: 1\r\n\r\n")
    await read_response(reader)
    writer.write(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_response(reader)
    assert handler.heads[0].header("x-one") == "1"
    assert handler.heads[1].header("X-One") is None


async def test_rewritten_target_headers_and_body_reach_dockerd(rig):
    """What dockerd receives is the handler's request, with Content-Length set by the proxy."""
    seen: list[Seen] = []

    class Rewrite:
        def body_limit(self, client: Client, head: RequestHead) -> int | None:
            return 1024

        async def decide(self, peer, head, body):
            assert body == b'{"Image":"x"}'
            headers = tuple(h for h in head.headers if h[0].lower() != "x-ds01-user")
            new = RequestHead(
                "POST", "/v1.41/containers/create?name=ok", (*headers, ("X-Ds01-Token", "t"))
            )
            return Forward(new, body=b'{"Image":"x","HostConfig":{}}')

    def answer(s: Seen) -> tuple[int, bytes]:
        seen.append(s)
        return 201, b'{"Id":"abc"}'

    await rig.start(Rewrite(), serve_each(answer))
    reader, writer = await rig.client()
    # Chunked from the client; dockerd must get a Content-Length body, no Transfer-Encoding.
    writer.write(
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nX-Ds01-User: root\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"Ima\r\n8\r\nge":"x"}\r\n0\r\n\r\n'
    )
    response = await read_response(reader)
    assert response.status == 201
    (s,) = seen
    assert s.target == "/v1.41/containers/create?name=ok"
    assert s.body == b'{"Image":"x","HostConfig":{}}'
    assert s.header("content-length") == str(len(s.body))
    assert s.header("transfer-encoding") is None
    assert s.header("x-ds01-user") is None
    assert s.header("x-ds01-token") == "t"


async def test_buffered_body_unchanged_is_forwarded_as_received(rig):
    """body=None after buffering forwards the client's body with a Content-Length."""
    seen: list[Seen] = []

    def answer(s: Seen) -> tuple[int, bytes]:
        seen.append(s)
        return 200, b"{}"

    handler = PassThrough(limit=100)
    await rig.start(handler, serve_each(answer))
    reader, writer = await rig.client()
    writer.write(
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    await read_response(reader)
    assert handler.bodies == [b"abc"]
    assert seen[0].body == b"abc" and seen[0].header("content-length") == "3"


async def test_reply_short_circuits_dockerd(rig):
    """A Reply is written to the client; dockerd is never contacted; keep-alive goes on."""

    class Deny:
        def body_limit(self, peer, head):
            return None

        async def decide(self, peer, head, body):
            return Reply(403, b'{"message":"ds01: no"}', headers=(("X-Why", "policy"),))

    await rig.start(Deny(), serve_each(echo_target))
    reader, writer = await rig.client()
    for _ in range(2):
        writer.write(b"GET /v1.41/info HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await read_response(reader)
        assert response.status == 403
        assert json.loads(response.body) == {"message": "ds01: no"}
        assert response.header("content-type") == "application/json"
        assert response.header("x-why") == "policy"
    assert rig.dockerd.connections == 0


async def test_head_request_has_no_body(rig):
    """HEAD /_ping: Content-Length is relayed but no body is expected or sent."""

    async def script(conn: UpstreamConn) -> None:
        while (seen := await conn.read_request()) is not None:
            if seen.method == "HEAD":
                await conn.send(
                    b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\n"
                )
            else:
                await conn.respond(200, b"OK")

    await rig.start(PassThrough(), script)
    reader, writer = await rig.client()
    writer.write(b"HEAD /_ping HTTP/1.1\r\nHost: x\r\n\r\nGET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await read_response(reader, "HEAD")
    assert head.status == 200 and head.header("content-length") == "2" and head.body == b""
    get = await read_response(reader)
    assert get.body == b"OK"


async def test_head_reply_has_no_body(rig):
    """A handler's Reply to HEAD carries Content-Length but no body."""

    class Deny:
        def body_limit(self, peer, head):
            return None

        async def decide(self, peer, head, body):
            return Reply(404, b'{"message":"no"}')

    await rig.start(Deny())
    reader, writer = await rig.client()
    writer.write(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await read_response(reader, "HEAD")
    assert head.header("content-length") == "16" and head.body == b""
    assert (await read_response(reader)).body == b'{"message":"no"}'


async def test_h2c_upgrade_is_not_forwarded_and_does_not_switch(rig):
    """Upgrade: h2c is stripped on ordinary routes; the connection stays HTTP/1.1."""
    seen: list[Seen] = []

    def answer(s: Seen) -> tuple[int, bytes]:
        seen.append(s)
        return 200, b"OK"

    await rig.start(PassThrough(), serve_each(answer))
    reader, writer = await rig.client()
    writer.write(
        b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, keep-alive\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    first = await read_response(reader)
    writer.write(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
    second = await read_response(reader)
    assert (first.status, first.body, second.body) == (200, b"OK", b"OK")
    assert seen[0].header("upgrade") is None
    assert seen[0].header("http2-settings") is None
    assert seen[0].header("connection") == "keep-alive"


async def test_unreachable_dockerd_is_502_json(rig):
    """No dockerd behind the gateway: a Docker-style 502, not a dropped connection."""
    handler = PassThrough()
    await rig.start(handler)  # nothing listens on the upstream path
    reader, writer = await rig.client()
    writer.write(b"GET /v1.41/version HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await read_response(reader)
    assert response.status == 502
    assert json.loads(response.body)["message"].startswith(
        "ds01: the Docker daemon is not reachable"
    )
    assert await handler.wait_closed(1) == [False]


async def test_handler_sees_the_whole_answer_before_the_client(rig):
    """on_response sees dockerd's status and body; then the client gets the same bytes."""
    handler = PassThrough()
    handler.answer_limit = 1024
    await rig.start(handler, serve_each(lambda s: (201, b'{"Id":"c0ffee"}')))
    reader, writer = await rig.client()
    writer.write(b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    response = await read_response(reader)
    assert response.body == b'{"Id":"c0ffee"}'
    assert handler.responses == [(201, b'{"Id":"c0ffee"}')]
    assert await handler.wait_closed(1) == [True]


def _chunked_hello(requests: int = 1) -> Script:
    async def script(conn: UpstreamConn) -> None:
        for _ in range(requests):
            await conn.read_request()
            await conn.send(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )

    return script


async def test_chunked_answer_reaches_the_handler_decoded_and_the_client_as_framed(rig):
    handler = PassThrough()
    handler.answer_limit = 11
    await rig.start(handler, _chunked_hello())
    reader, writer = await rig.client()
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await read_response(reader)
    assert response.body == b"hello world"
    assert ("Transfer-Encoding", "chunked") in response.headers
    assert handler.responses == [(200, b"hello world")]


async def test_answer_over_the_limit_is_withheld_with_502(rig):
    """A screened answer the gateway cannot read whole is never half-relayed."""
    handler = PassThrough()
    handler.answer_limit = 7
    await rig.start(handler, _chunked_hello())
    reader, writer = await rig.client()
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await read_response(reader)
    assert response.status == 502
    assert "larger than the gateway checks (7 bytes)" in json.loads(response.body)["message"]
    assert handler.responses == []
    assert await handler.wait_closed(1) == [False]


async def test_handler_replaces_an_answer_and_the_connection_stays_usable(rig):
    handler = PassThrough()
    handler.answer_limit = 1024
    handler.replacement = Reply(404, b'{"message":"No such container: x"}')
    await rig.start(handler, _chunked_hello(2))
    reader, writer = await rig.client()
    writer.write(b"GET /containers/x/json HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await read_response(reader)
    assert (response.status, response.body) == (404, b'{"message":"No such container: x"}')
    handler.replacement = None
    writer.write(b"GET /containers/y/json HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader)).body == b"hello world"
    assert [status for status, _ in handler.responses] == [200, 200]


async def test_a_failing_answer_check_withholds_the_answer(rig):
    class Broken(PassThrough):
        def _on_response(self, status: int, body: bytes) -> Reply | None:
            raise RuntimeError("bug")

    handler = Broken()
    handler.answer_limit = 1024
    await rig.start(handler, serve_each(lambda s: (200, b"secret")))
    reader, writer = await rig.client()
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await read_response(reader)
    assert response.status == 500 and b"secret" not in response.body


async def test_expect_100_continue_is_answered_by_the_gateway(rig):
    """The client gets 100 Continue before sending; dockerd never sees Expect."""
    seen: list[Seen] = []

    def answer(s: Seen) -> tuple[int, bytes]:
        seen.append(s)
        return 200, b"done"

    await rig.start(PassThrough(), serve_each(answer))
    reader, writer = await rig.client()
    writer.write(b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert (await read_response(reader)).status == 100
    writer.write(b"data")
    response = await read_response(reader)
    assert response.body == b"done"
    assert seen[0].body == b"data" and seen[0].header("expect") is None


async def test_dockerd_closing_idle_connection_is_reopened(rig):
    """dockerd may close a keep-alive connection; the next request opens a fresh one."""

    async def one_shot(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.respond(200, b"once")  # then close without saying so

    await rig.start(PassThrough(), one_shot)
    reader, writer = await rig.client()
    for _ in range(3):
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader)).body == b"once"
        await asyncio.sleep(0.05)
    assert rig.dockerd.connections == 3


async def test_http10_client_gets_dechunked_body_then_close(rig):
    """An HTTP/1.0 client cannot read chunked framing: it gets the body until close."""

    async def script(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )

    await rig.start(PassThrough(), script)
    reader, writer = await rig.client()
    writer.write(b"GET /events HTTP/1.0\r\n\r\n")
    response = await read_response(reader)
    assert response.body == b"abcde"
    assert response.header("transfer-encoding") is None
    assert response.header("connection") == "close"


async def _ask(rig, target: bytes = b"/x") -> bytes:
    reader, writer = await rig.client()
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    body = (await read_response(reader)).body
    writer.close()
    await asyncio.sleep(0.05)  # let the gateway see the close and keep the connection
    return body


async def test_a_clean_dockerd_connection_serves_the_next_client(rig):
    """The docker CLI connects once per command: the gateway keeps dockerd's side open."""
    await rig.start(PassThrough(), serve_each(echo_target))
    for target in (b"/a", b"/b", b"/c"):
        assert json.loads(await _ask(rig, target))["target"] == target.decode()
    assert rig.dockerd.connections == 1


async def test_a_dockerd_connection_with_stray_bytes_is_not_kept(rig):
    """Bytes after a response mean its framing cannot be trusted: that connection is dropped."""

    async def sloppy(conn: UpstreamConn) -> None:
        while await conn.read_request() is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")

    await rig.start(PassThrough(), sloppy)
    assert await _ask(rig) == b"ok"
    assert await _ask(rig) == b"ok"
    assert rig.dockerd.connections == 2


async def test_a_screened_answer_keeps_the_dockerd_connection(rig):
    handler = PassThrough()
    handler.answer_limit = 1024
    await rig.start(handler, serve_each(echo_target))
    await _ask(rig)
    await _ask(rig)
    assert rig.dockerd.connections == 1 and len(handler.responses) == 2


async def test_http10_client_gets_a_screened_chunked_answer_decoded(rig):
    handler = PassThrough()
    handler.answer_limit = 1024
    await rig.start(handler, _chunked_hello())
    reader, writer = await rig.client()
    writer.write(b"GET /containers/x/json HTTP/1.0\r\n\r\n")
    response = await read_response(reader)
    assert response.body == b"hello world"
    assert response.header("transfer-encoding") is None
    assert response.header("connection") == "close"
    assert handler.responses == [(200, b"hello world")]


async def test_a_kept_dockerd_connection_that_dockerd_closed_is_replaced(rig):
    """dockerd may close an idle connection while the gateway keeps it for the next client."""

    async def one_shot(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.respond(200, b"once")  # then close without saying so

    await rig.start(PassThrough(), one_shot)
    assert await _ask(rig) == b"once"
    assert await _ask(rig) == b"once"
    assert rig.dockerd.connections == 2
