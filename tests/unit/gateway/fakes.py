"""A scripted stand-in for dockerd and raw HTTP helpers for the gateway's framing tests.

The fake daemon is a plain asyncio unix server: each test gives it a coroutine that plays
dockerd's part on every connection, so framing is asserted on the exact bytes that pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11

from gateway.types import Client, Forward, Reply, RequestHead


@dataclass
class Seen:
    """One request as the fake dockerd received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


class UpstreamConn:
    """dockerd's side of one connection from the gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.rest = b""

    async def read_request(self) -> Seen | None:
        """Parse one request with h11; None when the gateway closed the connection."""
        parser = h11.Connection(h11.SERVER)
        if self.rest:  # h11 takes b"" to mean EOF
            parser.receive_data(self.rest)
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                parser.receive_data(await self.reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                self.rest = parser.trailing_data[0]
                return Seen(
                    request.method.decode(),
                    request.target.decode(),
                    [(k.decode(), v.decode("latin-1")) for k, v in request.headers],
                    bytes(body),
                )
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def respond(
        self, status: int = 200, body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers]
        await self.send(("\r\n".join(head) + "\r\n\r\n").encode() + body)


Script = Callable[[UpstreamConn], Awaitable[None]]


@dataclass
class FakeDockerd:
    """Runs ``script`` for every connection the gateway opens."""

    path: str
    script: Script
    connections: int = 0
    seen: list[Seen] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.AbstractServer | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = UpstreamConn(reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.script(conn)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            # No await here: stop() may cancel this task while it is finishing.
            writer.transport.abort()
            self.closed.set()
            self._tasks.discard(task)


def serve_each(
    answer: Callable[[Seen], Awaitable[tuple[int, bytes]] | tuple[int, bytes]],
) -> Script:
    """A keep-alive script answering every request with answer(request)."""

    async def script(conn: UpstreamConn) -> None:
        while (seen := await conn.read_request()) is not None:
            result = answer(seen)
            if asyncio.iscoroutine(result):
                result = await result
            status, body = result  # type: ignore[misc]
            await conn.respond(status, body)

    return script


class PassThrough:
    """A handler that forwards everything and records what it was asked."""

    def __init__(self, limit: int | None = None, hijack: bool = False) -> None:
        self.limit = limit
        self.hijack = hijack
        self.heads: list[RequestHead] = []
        self.bodies: list[bytes | None] = []
        self.closed: list[bool] = []
        self.responses: list[tuple[int, bytes]] = []
        self.answer_limit = 0  # > 0: dockerd's whole answer goes to on_response first
        self.replacement: Reply | None = None  # what on_response answers instead

    def body_limit(self, client: Client, head: RequestHead) -> int | None:
        return self.limit

    async def decide(
        self, client: Client, head: RequestHead, body: bytes | None
    ) -> Forward | Reply:
        self.heads.append(head)
        self.bodies.append(body)
        return Forward(
            head,
            hijack=self.hijack,
            response_limit=self.answer_limit,
            on_response=self._on_response if self.answer_limit else None,
            on_close=self._on_close,
        )

    def _on_response(self, status: int, body: bytes) -> Reply | None:
        self.responses.append((status, body))
        return self.replacement

    def _on_close(self, ok: bool) -> None:
        self.closed.append(ok)

    async def wait_closed(self, count: int, timeout: float = 3.0) -> list[bool]:
        """on_close results once ``count`` exchanges have ended (they end just after the
        client has its last byte)."""
        async with asyncio.timeout(timeout):
            while len(self.closed) < count:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)  # a second call would show up here
        return self.closed


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


async def read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]], bytes]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return status, headers, raw


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    """Read one response, decoding its body by the framing it declares."""
    status, headers, raw = await read_head(reader)
    hmap = {k.lower(): v for k, v in headers}
    body = b""
    if method == "HEAD" or status in (101, 204, 304) or status < 200:
        pass
    elif hmap.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            line = await reader.readuntil(b"\r\n")
            raw += line
            size = int(line.split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            raw += data
            if size == 0:
                break
            parts.append(data[:-2])
        body = b"".join(parts)
    elif "content-length" in hmap:
        body = await reader.readexactly(int(hmap["content-length"]))
        raw += body
    else:
        body = await reader.read()
        raw += body
    return Response(status, headers, body, raw)


async def read_until_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the peer closes (a reset or a failed write counts as a close)."""
    out = bytearray()
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            out += data
    return bytes(out)


def short_tmpdir() -> str:
    # unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    return tempfile.mkdtemp(prefix="gw", dir="/tmp")


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
