"""Malformed or oversized input gets a clear error and a closed connection, never a crash."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from .fakes import PassThrough, read_response, read_until_eof, serve_each

ATTACH_UPGRADE = (
    b"POST /containers/c/attach HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
)


async def error_then_close(rig, data: bytes, method: str = "GET"):
    reader, writer = await rig.client()
    writer.write(data)
    response = await asyncio.wait_for(read_response(reader, method), 3)
    assert response.header("connection") == "close"
    assert await asyncio.wait_for(read_until_eof(reader), 5) == b""
    return response, json.loads(response.body) if response.body else None


async def still_serving(rig) -> None:
    """Another client is served normally after the bad one."""
    reader, writer = await rig.client()
    writer.write(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await asyncio.wait_for(read_response(reader), 3)).body == b"OK"


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /x HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS ClientHello
    ],
)
async def test_malformed_request_is_400_json(rig, data):
    """A request h11 cannot parse is answered 400 with a JSON message, then closed."""
    handler = PassThrough()
    await rig.start(handler, serve_each(lambda s: (200, b"OK")))
    response, body = await error_then_close(rig, data)
    assert response.status == 400
    assert body["message"].startswith("ds01: malformed HTTP request")
    assert handler.heads == [] and rig.dockerd.connections == 0
    await still_serving(rig)


@pytest.mark.parametrize("version", [b"2.0", b"9.9", b"0.9"])
async def test_other_http_versions_are_505(rig, version):
    """An HTTP/2 preface or an unknown version is refused rather than guessed at."""
    await rig.start(PassThrough(), serve_each(lambda s: (200, b"OK")))
    response, _ = await error_then_close(rig, b"PRI * HTTP/%s\r\nHost: x\r\n\r\n" % version)
    assert response.status == 505
    assert rig.dockerd.connections == 0


async def test_content_length_with_transfer_encoding_is_400(rig):
    """Both framings at once (the request-smuggling shape) is refused, not resolved."""
    handler = PassThrough()
    await rig.start(handler, serve_each(lambda s: (200, b"OK")))
    response, body = await error_then_close(
        rig,
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
    )
    assert response.status == 400
    assert "Content-Length and Transfer-Encoding" in body["message"]
    assert handler.heads == []


async def test_unknown_transfer_coding_is_refused(rig):
    """Transfer-Encoding other than chunked: 501 (RFC 9112), never forwarded."""
    await rig.start(PassThrough(), serve_each(lambda s: (200, b"OK")))
    response, _ = await error_then_close(
        rig, b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    )
    assert response.status == 501
    assert rig.dockerd.connections == 0


async def test_huge_headers_are_431_in_one_piece(rig):
    """Headers over the limit that arrive in one read are still refused."""
    await rig.start(PassThrough(), serve_each(lambda s: (200, b"OK")), max_header_bytes=8192)
    big = b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n"
    response, _ = await error_then_close(rig, big)
    assert response.status == 431
    assert rig.dockerd.connections == 0
    await still_serving(rig)


async def test_endless_headers_are_431(rig):
    """A head that never ends is cut off at the limit, not buffered without bound."""
    await rig.start(PassThrough(), serve_each(lambda s: (200, b"OK")), max_header_bytes=8192)
    reader, writer = await rig.client()
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n")
    for _ in range(20):
        writer.write(b"X-Pad: " + b"b" * 1000 + b"\r\n")
    response = await asyncio.wait_for(read_response(reader), 3)
    assert response.status == 431


async def test_declared_body_over_limit_is_413_without_reading_it(rig):
    """A Content-Length over the handler's limit is refused before the body is read."""
    handler = PassThrough(limit=100)
    await rig.start(handler, serve_each(lambda s: (200, b"OK")))
    response, body = await error_then_close(
        rig,
        b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        + b"{" * 1000,
    )
    assert response.status == 413
    assert "too large" in body["message"]
    assert handler.heads == []


async def test_chunked_body_over_limit_is_413(rig):
    """A chunked body that grows past the limit is refused once it does."""
    handler = PassThrough(limit=100)
    await rig.start(handler, serve_each(lambda s: (200, b"OK")))
    chunks = b"".join(b"32\r\n" + b"x" * 50 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    response, _ = await error_then_close(
        rig, b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    )
    assert response.status == 413
    assert handler.heads == [] and rig.dockerd.connections == 0


async def test_bad_chunk_in_buffered_body_is_400(rig):
    """Broken chunked framing in a body the handler wanted is a 400."""
    await rig.start(PassThrough(limit=100), serve_each(lambda s: (200, b"OK")))
    response, _ = await error_then_close(
        rig, b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"
    )
    assert response.status == 400


async def test_bad_chunk_in_streamed_body_aborts_both_sides(rig):
    """Broken framing mid-stream: dockerd's half-sent request is dropped, on_close(False)."""
    upstream_eof = asyncio.Event()

    async def script(conn):
        while await conn.reader.read(65536):
            pass
        upstream_eof.set()

    handler = PassThrough()
    await rig.start(handler, script)
    reader, writer = await rig.client()
    writer.write(
        b"POST /build HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    )
    await asyncio.sleep(0.1)
    writer.write(b"nothex\r\n")
    await asyncio.wait_for(upstream_eof.wait(), 3)
    assert await asyncio.wait_for(read_until_eof(reader), 3) == b""
    assert await handler.wait_closed(1) == [False]


async def test_handler_crash_is_500_and_server_survives(rig):
    """A handler that raises fails closed for that request only."""

    class Broken:
        def body_limit(self, peer, head):
            return None

        async def decide(self, peer, head, body):
            raise RuntimeError("bug")

    await rig.start(Broken(), serve_each(lambda s: (200, b"OK")))
    for _ in range(2):
        response, body = await error_then_close(rig, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response.status == 500 and body["message"].startswith("ds01:")
    assert rig.dockerd.connections == 0


async def test_invalid_forward_from_handler_is_500(rig):
    """A Forward with an unsendable target is never put on the wire."""
    from gateway.types import Forward, RequestHead

    class Bad:
        def body_limit(self, peer, head):
            return None

        async def decide(self, peer, head, body):
            return Forward(RequestHead("GET", "/a b", head.headers))

    await rig.start(Bad(), serve_each(lambda s: (200, b"OK")))
    response, _ = await error_then_close(rig, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 500
    assert rig.dockerd.connections == 0


async def test_client_closing_before_a_full_head_is_quiet(rig):
    """A half-written request and a close: no answer, no dockerd connection, no leak."""
    await rig.start(PassThrough(), serve_each(lambda s: (200, b"OK")))
    baseline = set(asyncio.all_tasks())
    _, writer = await rig.client()
    writer.write(b"GET /x HT")
    await writer.drain()
    writer.close()
    await rig.settled(baseline)
    assert rig.dockerd.connections == 0
    await still_serving(rig)


async def test_invalid_response_from_dockerd_is_502(rig):
    """dockerd answering nonsense yields a 502, not a relayed mess."""

    async def script(conn):
        await conn.read_request()
        await conn.send(b"NOT HTTP AT ALL\r\n\r\n")

    handler = PassThrough()
    await rig.start(handler, script)
    response, body = await error_then_close(rig, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 502
    assert body["message"].startswith("ds01: the Docker daemon")


async def test_fuzzed_requests_never_hit_an_unexpected_path(rig, caplog):
    """Mutated requests on many connections: each gets an answer or a close, none a crash."""
    import random

    rng = random.Random(1234)
    seeds = [
        b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /build HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
        ATTACH_UPGRADE,
    ]

    def mutate(data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(out) + 1)
            if op == 0 and out:
                del out[pos : pos + rng.randint(1, 4)]
            elif op == 1:
                out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
            else:
                out[pos:pos] = rng.choice([b"\r\n", b":", b" ", b"\r\n\r\n", b"0", b"\x00"])
        return bytes(out)

    async def script(conn):
        while await conn.read_request() is not None:
            await conn.respond(200, b"OK")

    await rig.start(PassThrough(hijack=True), script)

    async def one(data: bytes) -> None:
        reader, writer = await rig.client()
        writer.write(data)
        with contextlib.suppress(OSError):  # the gateway may have closed already
            writer.write_eof()
        await asyncio.wait_for(read_until_eof(reader), 5)
        writer.close()

    cases = [mutate(rng.choice(seeds)) for _ in range(300)]
    await asyncio.gather(*(one(c) for c in cases))
    assert not [r for r in caplog.records if "connection from pid" in r.getMessage()]
    await still_serving(rig)
