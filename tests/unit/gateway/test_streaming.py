"""Streams flow as they arrive, hijacked streams become raw pipes, and hang-ups leak nothing."""

from __future__ import annotations

import asyncio
import os
import socket

from .fakes import PassThrough, UpstreamConn, open_fds, read_head, read_response, read_until_eof

ATTACH_UPGRADE = (
    b"POST /containers/c/attach HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
)
CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)


async def test_chunked_response_is_relayed_chunk_by_chunk(rig):
    """The client has the first event before dockerd writes the second (logs -f, events)."""
    client_has_first = asyncio.Event()
    sent = []

    async def script(conn: UpstreamConn) -> None:
        await conn.read_request()
        for piece in (CHUNKED_HEAD + b'7;ext=1\r\n{"a":1}\r\n', None, b'7\r\n{"b":2}\r\n0\r\n\r\n'):
            if piece is None:
                await asyncio.wait_for(client_has_first.wait(), 3)
                continue
            sent.append(piece)
            await conn.send(piece)

    await rig.start(PassThrough(), script)
    reader, writer = await rig.client()
    writer.write(b"GET /v1.41/events HTTP/1.1\r\nHost: x\r\n\r\n")
    got = bytearray()
    while b'{"a":1}' not in got:
        got += await asyncio.wait_for(reader.read(65536), 3)
    client_has_first.set()
    while not got.endswith(b"0\r\n\r\n"):
        got += await asyncio.wait_for(reader.read(65536), 3)
    # Byte-exact, chunk extension included: the framing is relayed, not re-encoded.
    assert bytes(got) == b"".join(sent)


async def test_streamed_chunked_request_body_flows_before_it_ends(rig):
    """A build context or `docker load` reaches dockerd while the client is still sending."""
    first_arrived = asyncio.Event()
    received = bytearray()

    async def script(conn: UpstreamConn) -> None:
        raw = bytearray()
        while b"first-part" not in raw:
            raw += await conn.reader.read(65536)
        first_arrived.set()
        while not raw.endswith(b"0\r\n\r\n"):
            raw += await conn.reader.read(65536)
        received.extend(raw)
        await conn.respond(200, b"built")

    handler = PassThrough()  # body_limit None: stream
    await rig.start(handler, script)
    reader, writer = await rig.client()
    writer.write(
        b"POST /v1.41/build HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"a\r\nfirst-part\r\n"
    )
    await asyncio.wait_for(first_arrived.wait(), 3)
    writer.write(b"b\r\nsecond-part\r\n0\r\n\r\n")
    assert (await read_response(reader)).body == b"built"
    assert handler.bodies == [None]
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"a\r\nfirst-part\r\nb\r\nsecond-part\r\n0\r\n\r\n"


async def test_streamed_content_length_body_is_passed_through(rig):
    """`docker cp` into a container: a Content-Length body streams with the same length."""
    payload = os.urandom(3 * 1024 * 1024)
    seen = []

    async def script(conn: UpstreamConn) -> None:
        seen.append(await conn.read_request())
        await conn.respond(200, b"")

    await rig.start(PassThrough(), script)
    reader, writer = await rig.client()
    writer.write(
        b"PUT /containers/c/archive?path=/tmp HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-tar\r\n"
        b"Content-Length: %d\r\n\r\n" % len(payload)
    )
    for i in range(0, len(payload), 100_000):
        writer.write(payload[i : i + 100_000])
        await writer.drain()
    assert (await read_response(reader)).status == 200
    assert seen[0].header("content-length") == str(len(payload))
    assert seen[0].body == payload


async def test_large_chunked_response_is_byte_exact(rig):
    """A bulk chunked body (cp out, save) arrives byte for byte, split across many reads."""
    body = os.urandom(5 * 1024 * 1024)
    wire = bytearray(CHUNKED_HEAD)
    for i in range(0, len(body), 32768):
        piece = body[i : i + 32768]
        wire += b"%x\r\n" % len(piece) + piece + b"\r\n"
    wire += b"0\r\n\r\n"

    async def script(conn: UpstreamConn) -> None:
        await conn.read_request()
        for i in range(0, len(wire), 70001):  # splits land inside chunk lines too
            await conn.send(bytes(wire[i : i + 70001]))

    await rig.start(PassThrough(), script)
    reader, writer = await rig.client()
    writer.write(b"GET /containers/c/archive?path=/big HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await read_response(reader)
    assert response.raw == bytes(wire)
    assert response.body == body


async def test_hijack_with_upgrade_pipes_both_ways_and_half_closes(rig):
    """`echo hello | docker run -i`: stdin EOF reaches dockerd; its output still comes back."""
    seen = []

    async def script(conn: UpstreamConn) -> None:
        seen.append(await conn.read_request())
        # Output written right behind the 101 head lands in the same read as the head.
        await conn.send(
            b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
            b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\nready\n"
        )
        stdin = bytearray(conn.rest)
        while data := await conn.reader.read(65536):  # until the client's half-close
            stdin += data
        await conn.send(b"got:" + bytes(stdin))

    handler = PassThrough(hijack=True)
    await rig.start(handler, script)
    reader, writer = await rig.client()
    writer.write(
        b"POST /v1.41/containers/c/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\nHost: x\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    )
    status, headers, _ = await read_head(reader)
    assert status == 101 and ("Upgrade", "tcp") in headers
    writer.write(b"hello\n")
    await writer.drain()
    writer.write_eof()
    assert await asyncio.wait_for(read_until_eof(reader), 3) == b"ready\ngot:hello\n"
    assert seen[0].header("upgrade") == "tcp"
    assert await handler.wait_closed(1) == [True]


async def test_bytes_sent_right_behind_the_request_reach_the_pipe(rig):
    """Client bytes that arrive with the request (h11's trailing data) are not lost."""

    async def script(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        stdin = bytearray(conn.rest)
        while data := await conn.reader.read(65536):
            stdin += data
        await conn.send(bytes(stdin).upper())

    await rig.start(PassThrough(hijack=True), script)
    reader, writer = await rig.client()
    writer.write(
        b"POST /exec/e/start HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        b'Content-Length: 29\r\n\r\n{"Detach":false,"Tty":false}\nearly-stdin'
    )
    await read_head(reader)
    writer.write(b"+late")
    writer.write_eof()
    assert await asyncio.wait_for(read_until_eof(reader), 3) == b"EARLY-STDIN+LATE"


async def test_hijack_without_upgrade_like_dockerd(rig):
    """dockerd hijacks attach without Upgrade too: 200, a stream type, no framing."""

    async def script(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n"
        )
        stdin = bytearray(conn.rest)
        while data := await conn.reader.read(65536):
            stdin += data
        await conn.send(b"echo:" + bytes(stdin))

    await rig.start(PassThrough(hijack=True), script)
    reader, writer = await rig.client()
    writer.write(b"POST /containers/c/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = await read_head(reader)
    assert status == 200
    writer.write(b"abc")
    writer.write_eof()
    assert await asyncio.wait_for(read_until_eof(reader), 3) == b"echo:abc"


async def test_hijack_error_response_is_relayed_as_a_normal_response(rig):
    """attach to a missing container: dockerd's framed 404 is relayed, keep-alive goes on."""

    async def script(conn: UpstreamConn) -> None:
        while await conn.read_request() is not None:
            await conn.respond(404, b'{"message":"No such container: c"}')

    await rig.start(PassThrough(hijack=True), script)
    reader, writer = await rig.client()
    for _ in range(2):
        writer.write(ATTACH_UPGRADE)
        response = await read_response(reader)
        assert response.status == 404 and b"No such container" in response.body


async def test_upgrade_is_stripped_when_route_is_not_hijacked(rig):
    """Only hijack routes may ask dockerd to switch protocols."""
    seen = []

    async def script(conn: UpstreamConn) -> None:
        seen.append(await conn.read_request())
        await conn.respond(200, b"plain")

    await rig.start(PassThrough(hijack=False), script)
    reader, writer = await rig.client()
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    assert (await read_response(reader)).body == b"plain"
    assert seen[0].header("upgrade") is None and seen[0].header("connection") is None


async def test_half_closed_client_still_gets_its_response(rig):
    """A client that shuts down its write side after the request still gets the answer."""

    async def script(conn: UpstreamConn) -> None:
        await conn.read_request()
        await asyncio.sleep(0.3)
        await conn.respond(200, b"late answer")

    await rig.start(PassThrough(), script)
    reader, writer = await rig.client()
    writer.write(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
    writer.write_eof()
    assert (await asyncio.wait_for(read_response(reader), 3)).body == b"late answer"
    assert await asyncio.wait_for(reader.read(), 3) == b""  # then the gateway closes


async def test_client_hanging_up_mid_body_leaks_nothing(rig):
    """The client leaves mid-upload: dockerd's side is closed, on_close(False) runs once."""
    upstream_eof = asyncio.Event()

    async def script(conn: UpstreamConn) -> None:
        while await conn.reader.read(65536):
            pass
        upstream_eof.set()

    handler = PassThrough()
    await rig.start(handler, script)
    baseline = set(asyncio.all_tasks())
    fds = open_fds()
    _, writer = await rig.client()
    writer.write(b"PUT /containers/c/archive HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    writer.write(b"x" * 1000)
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.transport.abort()
    await asyncio.wait_for(upstream_eof.wait(), 3)
    assert await handler.wait_closed(1) == [False]
    await rig.settled(baseline)
    await asyncio.sleep(0.05)
    assert open_fds() <= fds


async def test_client_hanging_up_mid_stream_closes_dockerd_side(rig):
    """`docker logs -f` interrupted while dockerd is silent: the follow on dockerd ends."""
    upstream_eof = asyncio.Event()

    async def script(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(CHUNKED_HEAD + b"5\r\nline1\r\n")
        while await conn.reader.read(65536):  # dockerd would now wait for more log lines
            pass
        upstream_eof.set()

    handler = PassThrough()
    await rig.start(handler, script)
    baseline = set(asyncio.all_tasks())
    fds = open_fds()
    reader, writer = await rig.client()
    writer.write(b"GET /containers/c/logs?follow=1&stdout=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    got = bytearray()
    while b"line1" not in got:
        got += await asyncio.wait_for(reader.read(65536), 3)
    writer.close()
    await asyncio.wait_for(upstream_eof.wait(), 3)
    assert await handler.wait_closed(1) == [False]
    await rig.settled(baseline)
    await asyncio.sleep(0.05)
    assert open_fds() <= fds


async def test_client_hanging_up_on_hijacked_stream_closes_dockerd_side(rig):
    """`docker attach` killed while the container is silent: the attach on dockerd ends."""
    upstream_eof = asyncio.Event()

    async def script(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        while await conn.reader.read(65536):
            pass
        upstream_eof.set()

    handler = PassThrough(hijack=True)
    await rig.start(handler, script)
    baseline = set(asyncio.all_tasks())
    reader, writer = await rig.client()
    writer.write(ATTACH_UPGRADE)
    await read_head(reader)
    writer.close()
    await asyncio.wait_for(upstream_eof.wait(), 3)
    assert await handler.wait_closed(1) == [False]
    await rig.settled(baseline)


async def test_dockerd_dying_mid_response_closes_the_client(rig):
    """A truncated response is never passed off as complete."""

    async def script(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")

    handler = PassThrough()
    await rig.start(handler, script)
    reader, writer = await rig.client()
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    got = await asyncio.wait_for(read_until_eof(reader), 3)
    assert got.endswith(b"partial")
    assert await handler.wait_closed(1) == [False]


async def test_dockerd_answering_before_the_body_ends(rig):
    """dockerd refuses an upload early: the client gets the answer and the connection closes."""

    async def script(conn: UpstreamConn) -> None:
        await conn.reader.readuntil(b"\r\n\r\n")
        await conn.respond(404, b'{"message":"No such container"}')
        await asyncio.sleep(0.5)

    handler = PassThrough()
    await rig.start(handler, script)
    reader, writer = await rig.client()
    writer.write(
        b"PUT /containers/c/archive HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    )
    writer.write(b"x" * 5000)
    response = await asyncio.wait_for(read_response(reader), 3)
    assert response.status == 404
    assert response.header("connection") == "close"
    assert await handler.wait_closed(1) == [True]


async def test_stop_ends_live_streams_and_removes_the_socket(rig):
    """Gateway.stop() closes clients and dockerd connections mid-stream."""
    upstream_eof = asyncio.Event()

    async def script(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(CHUNKED_HEAD)
        while await conn.reader.read(65536):
            pass
        upstream_eof.set()

    handler = PassThrough()
    gateway = await rig.start(handler, script)
    reader, writer = await rig.client()
    writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_head(reader)
    await asyncio.wait_for(gateway.stop(), 3)
    await asyncio.wait_for(upstream_eof.wait(), 3)
    assert await asyncio.wait_for(read_until_eof(reader), 3) == b""
    assert handler.closed == [False]
    assert not os.path.exists(rig.path)
    assert gateway.connections == 0


async def test_many_connections_are_independent(rig):
    """A stalled stream on one connection does not hold up others."""
    release = asyncio.Event()

    async def script(conn: UpstreamConn) -> None:
        while (seen := await conn.read_request()) is not None:
            if seen.target == "/slow":
                await conn.send(CHUNKED_HEAD)
                await release.wait()
                await conn.send(b"0\r\n\r\n")
            else:
                await conn.respond(200, b"fast")

    await rig.start(PassThrough(), script)
    slow_reader, slow_writer = await rig.client()
    slow_writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_head(slow_reader)
    for _ in range(5):
        reader, writer = await rig.client()
        writer.write(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(read_response(reader), 3)).body == b"fast"
    release.set()


def test_peer_socket_is_unix():
    """(guard) the tests above rely on AF_UNIX stream sockets."""
    a, b = socket.socketpair(socket.AF_UNIX)
    a.close()
    b.close()
