"""A refusal that meets a body still being uploaded reaches the client, not a broken pipe.

``docker build`` (its context) and ``docker load`` (an image tar) stream a large body behind
a head the gateway may refuse on sight. If the gateway answered and closed at once, the
client's next write of the body would fail with EPIPE and it would report "broken pipe"
instead of the refusal. The gateway answers, then reads and discards the rest of the body
(bounded in bytes and time by GatewayLimits) before it closes.

The client here is the plain kind: it sends the whole request, then reads the answer.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from gateway.limits import GatewayLimits
from gateway.types import Client, Reply, RequestHead

from .fakes import serve_each

REFUSAL = "ds01: --cgroup-parent is chosen by DS01. To fix: leave it out."
# Far more than the socket buffers hold: the client's writes block until the gateway reads.
BIG = 8 * 2**20


class Refuses:
    """Streams every body (no buffering) and refuses every request from its head alone."""

    def __init__(self) -> None:
        self.decided = 0

    def body_limit(self, client: Client, head: RequestHead) -> int | None:
        return None

    async def decide(self, client: Client, head: RequestHead, body: bytes | None) -> Reply:
        self.decided += 1
        return Reply(403, json.dumps({"message": REFUSAL}).encode())


def _upload_then_read(path: str, request: bytes) -> bytes:
    """Send all of ``request`` (EPIPE raises), then read until the gateway closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(path)
        sock.sendall(request)
        out = bytearray()
        while data := sock.recv(65536):
            out += data
        return bytes(out)


def _length_request(size: int) -> bytes:
    head = b"POST /v1.41/images/load?quiet=1 HTTP/1.1\r\nHost: docker\r\n"
    head += b"Content-Type: application/x-tar\r\nContent-Length: %d\r\n\r\n" % size
    return head + b"\0" * size


def _chunked_request(size: int) -> bytes:
    head = b"POST /v1.41/build?cgroupparent=%2Fds01%2Fx HTTP/1.1\r\nHost: docker\r\n"
    head += b"Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = 64 * 1024
    body = (b"%x\r\n" % chunk + b"\0" * chunk + b"\r\n") * (size // chunk)
    return head + body + b"0\r\n\r\n"


def _answer(raw: bytes) -> tuple[int, dict[str, str], dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, json.loads(body)


@pytest.mark.parametrize(
    "request_bytes",
    [_length_request(BIG), _chunked_request(BIG)],
    ids=["content-length", "chunked"],
)
async def test_refused_upload_gets_the_json_answer_not_a_broken_pipe(rig, request_bytes):
    handler = Refuses()
    await rig.start(handler, serve_each(lambda s: (200, b"OK")))
    raw = await asyncio.to_thread(_upload_then_read, rig.path, request_bytes)
    status, headers, body = _answer(raw)
    assert (status, body) == (403, {"message": REFUSAL})
    assert headers["connection"] == "close"
    assert handler.decided == 1
    assert rig.dockerd is not None and rig.dockerd.connections == 0  # nothing forwarded


async def test_discarding_a_refused_body_is_bounded(rig):
    """Past ``discard_bytes`` the gateway stops reading and closes: the client may then see a
    broken pipe, but it has the answer, and the connection slot is given back."""
    handler = Refuses()
    await rig.start(
        handler,
        serve_each(lambda s: (200, b"OK")),
        limits=GatewayLimits(total=100, discard_bytes=2**20),
    )

    def upload() -> tuple[bytes, bool]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(20)
            sock.connect(rig.path)
            try:
                sock.sendall(_length_request(BIG))
                broke = False
            except (BrokenPipeError, ConnectionResetError):
                broke = True
            out = bytearray()
            try:
                while data := sock.recv(65536):
                    out += data
            except ConnectionResetError:
                pass
            return bytes(out), broke

    raw, broke = await asyncio.to_thread(upload)
    assert broke  # 8 MiB were offered, at most 1 MiB (plus socket buffers) was taken
    status, _, body = _answer(raw)
    assert (status, body) == (403, {"message": REFUSAL})
    async with asyncio.timeout(3):
        while rig.gateway.admission.open:
            await asyncio.sleep(0.01)
