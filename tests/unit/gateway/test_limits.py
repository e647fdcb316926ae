"""One client cannot exhaust the gateway: connection caps, head/idle/body timeouts, body budget.

Clients stand in for other Unix users by binding their socket to an abstract name that
carries a uid; the gateway's peer lookup is patched to read it (the real SO_PEERCRED path is
covered by the root cases, as the tests run as root). Timeouts are made small per test.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import secrets
import socket
import subprocess
import sys

import pytest

from gateway import server as proxy
from gateway.limits import Admission, GatewayLimits, connections_for
from gateway.peer import peer_credentials
from gateway.types import PeerCred

from .fakes import (
    PassThrough,
    UpstreamConn,
    open_fds,
    read_head,
    read_response,
    read_until_eof,
    serve_each,
)

PING = b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n"
_TAG = b"\0ds01-test-uid-"


def _fake_peer(sock: socket.socket) -> PeerCred:
    name = sock.getpeername()
    if isinstance(name, bytes) and name.startswith(_TAG):
        uid = int(name[len(_TAG) :].split(b"-")[0])
        return PeerCred(pid=os.getpid(), uid=uid, gid=uid)
    return peer_credentials(sock)


@pytest.fixture(autouse=True)
def _peers_by_name(monkeypatch):
    monkeypatch.setattr(proxy, "peer_credentials", _fake_peer)


async def connect_as(rig, uid: int | None):
    """A client connection that the gateway sees as ``uid`` (None: this process, root)."""
    if uid is None:
        return await rig.client()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(_TAG + b"%d-%s" % (uid, secrets.token_hex(6).encode()))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, rig.path)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    rig._writers.append(writer)
    return reader, writer


async def served(reader, writer) -> bool:
    writer.write(PING)
    response = await asyncio.wait_for(read_response(reader), 3)
    return response.status == 200 and response.body == b"OK"


async def refused(reader) -> tuple[int, str]:
    """The refusal a connection got: status and message, then the connection's end."""
    response = await asyncio.wait_for(read_response(reader), 3)
    assert response.header("connection") == "close"
    assert await asyncio.wait_for(read_until_eof(reader), 3) == b""
    return response.status, json.loads(response.body)["message"]


async def released(rig, uid: int) -> None:
    """Wait until the gateway has let go of uid's connection slots (their teardown has run)."""
    async with asyncio.timeout(3):
        while rig.gateway.admission.by_uid.get(uid):
            await asyncio.sleep(0.01)


async def start(rig, handler=None, **limits) -> None:
    kw = {"per_uid": 64, "root": 64, "total": 1000, **limits}
    await rig.start(
        handler or PassThrough(), serve_each(lambda s: (200, b"OK")), limits=GatewayLimits(**kw)
    )


# -- the arithmetic --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nofile", "reserve", "expected"),
    [(1024, 256, 384), (65536, 256, 32640), (4096, 256, 1920), (200, 256, 1)],
)
def test_global_cap_keeps_the_reserve_free(nofile, reserve, expected):
    """Two fds per connection (client and dockerd side), ``reserve`` left for the rest."""
    assert connections_for(nofile, reserve) == expected


def test_admission_counts_per_uid_and_gives_root_its_own_cap():
    adm = Admission(GatewayLimits(per_uid=2, root=3, total=100))
    assert adm.admit(1001) is None and adm.admit(1001) is None
    refusal = adm.admit(1001)
    assert refusal is not None and refusal.status == 429
    assert "uid 1001 already has 2 open (at most 2 per user)" in refusal.message
    assert "To fix:" in refusal.message
    assert adm.admit(1002) is None  # another user is not affected
    assert [adm.admit(0) for _ in range(3)] == [None, None, None]
    assert adm.admit(0).status == 429
    adm.release(1001)
    assert adm.admit(1001) is None
    assert adm.open == 6 and adm.by_uid == {1001: 2, 1002: 1, 0: 3}


def test_admission_global_cap_keeps_headroom_for_root():
    adm = Admission(GatewayLimits(per_uid=1000, root=1000, total=64))
    for i in range(56):  # 64 - 64 // 8 headroom
        assert adm.admit(2000 + i % 7) is None
    refusal = adm.admit(3000)
    assert refusal is not None and refusal.status == 503
    assert "maximum of 64 connections" in refusal.message and "To fix:" in refusal.message
    assert all(adm.admit(0) is None for _ in range(8))
    assert adm.admit(0).status == 503
    assert adm.open == 64


def test_body_budget_is_per_uid_and_refunded():
    adm = Admission(GatewayLimits(body_bytes_per_uid=100, total=10))
    assert adm.charge_body(1001, 80) is None
    refusal = adm.charge_body(1001, 30)
    assert refusal is not None and refusal.status == 429
    assert adm.charge_body(1002, 100) is None
    adm.refund_body(1001, 80)
    assert adm.charge_body(1001, 30) is None


# -- connection caps on a real socket -------------------------------------------------------


async def test_per_uid_cap_refuses_with_429_and_spares_other_users(rig):
    await start(rig, per_uid=3)
    held = [await connect_as(rig, 1001) for _ in range(3)]
    for reader, writer in held:
        assert await served(reader, writer)  # keep-alive: all three stay open
    reader, writer = await connect_as(rig, 1001)
    writer.write(PING)
    status, message = await refused(reader)
    assert status == 429
    assert message.startswith("ds01: new connection to the Docker socket refused: uid 1001")
    assert "To fix:" in message
    assert await served(*await connect_as(rig, 1002))  # another user is served
    for _, w in held:
        w.close()
    await released(rig, 1001)  # the slots come back once the gateway has seen the closes
    assert await served(*await connect_as(rig, 1001))


async def test_root_is_capped_by_its_own_limit(rig):
    """The real SO_PEERCRED path: this test process is root, whose cap is separate."""
    await start(rig, per_uid=1, root=2)
    for _ in range(2):
        assert await served(*await rig.client())
    reader, _ = await rig.client()
    status, message = await refused(reader)
    assert status == 429 and "uid 0 already has 2 open (at most 2 per user)" in message


async def test_global_cap_refuses_with_503(rig):
    await start(rig, total=4)
    for uid in (1001, 1002, 1003, 1004):
        assert await served(*await connect_as(rig, uid))
    reader, _ = await connect_as(rig, 1005)
    status, message = await refused(reader)
    assert status == 503 and "maximum of 4 connections" in message


async def test_refused_connections_cost_no_lasting_fd(rig):
    await start(rig, per_uid=2)
    for _ in range(2):
        assert await served(*await connect_as(rig, 1001))
    baseline = open_fds()
    clients = [await connect_as(rig, 1001) for _ in range(40)]
    for reader, _ in clients:
        assert (await refused(reader))[0] == 429
    for _, writer in clients:
        writer.close()
        await writer.wait_closed()
    await asyncio.sleep(0.05)
    assert open_fds() <= baseline
    assert rig.gateway.connections == 2 and rig.gateway.admission.open == 2


# -- time limits ----------------------------------------------------------------------------


async def test_half_sent_head_is_answered_408_and_closed(rig):
    """Slowloris: a head that does not finish within head_timeout."""
    handler = PassThrough()
    await start(rig, handler, head_timeout=0.2)
    reader, writer = await connect_as(rig, 1001)
    writer.write(b"GET /_ping HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    status, message = await refused(reader)
    assert status == 408
    assert message.startswith("ds01: request headers not received within 0.2 s")
    assert handler.heads == [] and rig.dockerd.connections == 0
    writer.close()
    await released(rig, 1001)


async def test_silent_new_connection_is_closed_after_head_timeout(rig):
    await start(rig, head_timeout=0.2)
    reader, _ = await connect_as(rig, 1001)
    assert await asyncio.wait_for(read_until_eof(reader), 3) == b""


async def test_idle_keep_alive_connection_is_closed_quietly(rig):
    await start(rig, head_timeout=5, idle_timeout=0.2)
    reader, writer = await connect_as(rig, 1001)
    assert await served(reader, writer)
    assert await served(reader, writer)  # a prompt next request is served
    assert await asyncio.wait_for(read_until_eof(reader), 3) == b""


async def test_next_head_must_finish_once_begun(rig):
    """Between requests a client may wait (idle_timeout), but a begun head has head_timeout."""
    await start(rig, head_timeout=0.2, idle_timeout=30)
    reader, writer = await connect_as(rig, 1001)
    assert await served(reader, writer)
    writer.write(b"GET /_ping HT")
    status, _ = await refused(reader)
    assert status == 408


async def test_stalled_buffered_body_is_refused_unforwarded(rig):
    handler = PassThrough(limit=2**20)
    await start(rig, handler, body_stall=0.2)
    reader, writer = await connect_as(rig, 1001)
    writer.write(b'POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"Im')
    status, message = await refused(reader)
    assert status == 408
    assert message.startswith("ds01: no request body bytes received for 0.2 s")
    assert handler.heads == [] and rig.dockerd.connections == 0
    assert rig.gateway.admission.body_bytes == {}


async def test_stalled_streamed_body_ends_both_sides(rig):
    """A streamed upload (cp, load, build) that stops is cut; dockerd sees the connection end."""
    got = bytearray()

    async def script(conn: UpstreamConn) -> None:
        while data := await conn.reader.read(65536):
            got.extend(data)

    handler = PassThrough()  # body_limit None: the body streams
    await rig.start(handler, script, limits=GatewayLimits(body_stall=0.2, total=100))
    reader, writer = await connect_as(rig, 1001)
    writer.write(
        b"PUT /containers/c/archive?path=/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        b"0123456789"
    )
    assert await asyncio.wait_for(read_until_eof(reader), 3) == b""
    await asyncio.wait_for(rig.dockerd.closed.wait(), 3)
    assert got.endswith(b"0123456789")
    assert await handler.wait_closed(1) == [False]


async def test_half_sent_bodies_count_against_their_users_budget(rig):
    handler = PassThrough(limit=2**20)
    await start(rig, handler, body_bytes_per_uid=100)
    head = b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
    _, slow = await connect_as(rig, 1001)
    slow.write(head % 200 + b"x" * 90)  # 90 bytes buffered, more promised
    await asyncio.sleep(0.1)
    reader, writer = await connect_as(rig, 1001)
    writer.write(head % 20 + b"y" * 20)
    status, message = await refused(reader)
    assert status == 429 and "unfinished request bodies" in message
    # Another user's budget is their own.
    reader, writer = await connect_as(rig, 1002)
    writer.write(head % 20 + b"y" * 20)
    assert (await asyncio.wait_for(read_response(reader), 3)).status == 200
    assert handler.bodies == [b"y" * 20]


# -- streams are not cut by any of it ---------------------------------------------------------


async def test_long_stream_outlives_every_timeout(rig):
    """events / logs -f: a response that goes on long past head, idle and body limits."""

    async def script(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(6):
            await asyncio.sleep(0.1)
            await conn.send(b"2\r\n%02d\r\n" % i)
        await conn.send(b"0\r\n\r\n")

    limits = GatewayLimits(head_timeout=0.05, idle_timeout=0.05, body_stall=0.05, total=100)
    await rig.start(PassThrough(), script, limits=limits)
    reader, writer = await connect_as(rig, 1001)
    writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await asyncio.wait_for(read_response(reader), 5)
    assert response.body == b"000102030405"


async def test_hijacked_stream_with_quiet_stdin_is_not_cut(rig):
    """attach / exec: the client sends nothing for longer than every limit; output still flows."""

    async def script(conn: UpstreamConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        for i in range(4):
            await asyncio.sleep(0.1)
            await conn.send(b"out%d;" % i)
        conn.writer.close()

    limits = GatewayLimits(head_timeout=0.05, idle_timeout=0.05, body_stall=0.05, total=100)
    await rig.start(PassThrough(hijack=True), script, limits=limits)
    reader, writer = await connect_as(rig, 1001)
    writer.write(
        b"POST /containers/c/attach?stream=1 HTTP/1.1\r\nHost: x\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    )
    status, _, _ = await asyncio.wait_for(read_head(reader), 3)
    assert status == 101
    assert await asyncio.wait_for(read_until_eof(reader), 5) == b"out0;out1;out2;out3;"


# -- ds01d's side: flags and the open-file limit ----------------------------------------------


def test_ds01d_flags_set_the_gateway_limits():
    from ds01d.daemon import build_parser, gateway_limits

    args = build_parser().parse_args([])
    assert gateway_limits(args) == GatewayLimits()
    assert GatewayLimits() == GatewayLimits(
        per_uid=64, root=512, total=None, fd_reserve=256, head_timeout=10.0,
        idle_timeout=120.0, body_stall=30.0, body_bytes_per_uid=16 * 2**20,
    )  # fmt: skip
    args = build_parser().parse_args(
        ["--gateway-max-per-user", "8", "--gateway-max-connections", "100",
         "--gateway-head-timeout", "2.5", "--gateway-idle-timeout", "60",
         "--gateway-body-timeout", "5", "--gateway-body-budget", "1000",
         "--gateway-max-root", "9", "--gateway-fd-reserve", "300"]
    )  # fmt: skip
    assert gateway_limits(args) == GatewayLimits(8, 9, 100, 300, 2.5, 60.0, 5.0, 1000)


def test_ds01d_flags_set_the_discard_bounds():
    """How much of a refused upload is read and dropped: 64 MiB / 10 s unless the flags say."""
    from ds01d.daemon import build_parser, gateway_limits

    default = gateway_limits(build_parser().parse_args([]))
    assert (default.discard_bytes, default.discard_time) == (64 * 2**20, 10.0)
    args = build_parser().parse_args(
        ["--gateway-discard-bytes", "4096", "--gateway-discard-time", "1.5"]
    )
    limits = gateway_limits(args)
    assert (limits.discard_bytes, limits.discard_time) == (4096, 1.5)


def test_soft_open_file_limit_is_raised_to_the_hard_one():
    """A ds01d started with soft 512 / hard 4096 runs with 4096 and a cap of (4096-256)/2."""
    code = (
        "from gateway.limits import *; "
        "print(raise_nofile(), soft_nofile(), GatewayLimits().total_connections())"
    )

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 4096))

    out = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=low_soft_limit,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == ["(512,", "4096,", "4096)", "4096", "1920"]
