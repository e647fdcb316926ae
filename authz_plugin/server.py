"""The AuthZ plugin's HTTP server: the few requests dockerd's plugin client sends, nothing more.

dockerd calls the plugin twice for every API request it serves, so each call's overhead is
paid on every ``docker`` command. This is an asyncio protocol that reads exactly what
dockerd's Go client writes (``POST /Plugin.Activate``, ``/AuthZPlugin.AuthZReq``,
``/AuthZPlugin.AuthZRes`` with a JSON body, on a kept-alive connection) and answers each
call as ``authz.answer_now`` decides, at once when no lookup is needed (no task, no turn of
the event loop). It fails closed: a request it cannot frame exactly is answered 400 and the
connection closed (dockerd then refuses the API request); an AuthZ body too large,
unreadable or refused by the authorizer is a denial that says why, never 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from authz_plugin.authz import (
    ACTIVATE_BODY,
    INTERNAL_ERROR,
    MAX_PLUGIN_REQUEST,
    TOO_LARGE,
    Authorizer,
    AuthzAnswer,
    answer_body,
    answer_now,
)

log = logging.getLogger("ds01.authz")

# dockerd's heads are a few hundred bytes.
MAX_HEAD = 16 * 1024
# A connection silent this long (between calls, or mid-call) is closed, as aiohttp would.
IDLE_TIMEOUT_S = 75.0
_CHUNK_LINE = 1024
_HEADS_KEPT = 256
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_FIELD_LINES = re.compile(rb"(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*)*")
_DIGITS = re.compile(rb"[0-9]{1,19}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class BadFraming(ValueError):
    """The bytes are not an HTTP/1.x request we frame exactly: answer 400 and close."""


@dataclass(frozen=True)
class Head:
    """A request head: method, target, version, lower-cased header names to their values."""

    method: bytes
    target: bytes
    version: bytes
    length: int | None
    chunked: bool
    close: bool


def parse_head(raw: bytes) -> Head:
    """One request head (without its final CRLF CRLF), strictly; BadFraming otherwise."""
    request_line, _, fields = raw.partition(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1].startswith(b"/"):
        raise BadFraming("bad request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or not _FIELD_VALUE.fullmatch(target):
        raise BadFraming("bad request line")
    # Every field line checked at once (this runs on every call dockerd makes); a line that
    # starts with whitespace (obs-fold) has no token before its colon and is refused.
    if not _FIELD_LINES.fullmatch(raw, len(request_line)):
        raise BadFraming("bad header line")
    length: int | None = None
    chunked = False
    close = version == b"HTTP/1.0"
    for line in fields.split(b"\r\n") if fields else ():
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"content-length":
            value = value.strip(b" \t")
            if not _DIGITS.fullmatch(value) or (length is not None and int(value) != length):
                raise BadFraming("bad Content-Length")
            length = int(value)
        elif name == b"transfer-encoding":
            if value.strip(b" \t").lower() != b"chunked" or chunked:
                raise BadFraming("unsupported Transfer-Encoding")
            chunked = True
        elif name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            close = b"close" in tokens or (close and b"keep-alive" not in tokens)
    if chunked and length is not None:
        raise BadFraming("both Content-Length and Transfer-Encoding")
    return Head(method, target, version, length, chunked, close)


def response(status: bytes, body: bytes, close: bool) -> bytes:
    """An answer as it goes on the wire."""
    return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        b"Connection: close\r\n" if close else b"",
        body,
    )


class _Chunked:
    """A chunked body decoded as it arrives; payload past ``limit`` is dropped, framing kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.left = 0  # payload bytes of the current chunk still to come
        self.in_data = False

    @property
    def too_large(self) -> bool:
        return self.size > self.limit

    def feed(self, buf: bytearray) -> bool:
        """Take what ``buf`` holds of the body (removing it); True once the body ended."""
        while True:
            if self.in_data:
                if self.left:
                    take = min(self.left, len(buf))
                    if not self.too_large:
                        self.parts.append(bytes(buf[:take]))
                    del buf[:take]
                    self.left -= take
                    if self.left:
                        return False
                if len(buf) < 2:
                    return False
                if buf[:2] != b"\r\n":
                    raise BadFraming("chunk not followed by CRLF")
                del buf[:2]
                self.in_data = False
            nl = buf.find(b"\r\n")
            if nl < 0:
                if len(buf) > _CHUNK_LINE:
                    raise BadFraming("chunk size line too long")
                return False
            size_text = bytes(buf[:nl]).split(b";", 1)[0].strip(b" \t")
            if nl > _CHUNK_LINE or not _HEX.fullmatch(size_text):
                raise BadFraming("bad chunk size")
            size = int(size_text, 16)
            if size == 0:
                # The last chunk: dockerd sends no trailers, only the final CRLF.
                if len(buf) < nl + 4:
                    return False
                if buf[nl + 2 : nl + 4] != b"\r\n":
                    raise BadFraming("trailers are not accepted")
                del buf[: nl + 4]
                return True
            del buf[: nl + 2]
            self.size += size
            if self.too_large:
                self.parts.clear()
            self.left, self.in_data = size, True


class PluginProtocol(asyncio.Protocol):
    """One connection from dockerd's plugin client: calls answered in order."""

    def __init__(self, server: PluginServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head: Head | None = None
        self.chunked: _Chunked | None = None
        self.skip = 0  # bytes of a too-large body still to discard
        self.busy = False  # a call is being decided; later bytes wait in buf
        self.paused = False  # the client is not reading our answers
        self.loop = asyncio.get_running_loop()
        self.idle_since = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self.timer = self.loop.call_later(IDLE_TIMEOUT_S, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._advance()

    def data_received(self, data: bytes) -> None:
        idle = not self.buf and self.head is None and not self.busy and not self.paused
        if idle and self._whole_call(data):
            return
        self.buf += data
        if self.busy and len(self.buf) > MAX_HEAD + MAX_PLUGIN_REQUEST and self.transport:
            self.transport.pause_reading()  # pipelined bytes wait for the call being decided
        self._advance()

    def _whole_call(self, data: bytes) -> bool:
        """Answer a call that came whole in one read, with a head seen before (dockerd's
        usual): no buffering, no framing again. False: frame it the general way."""
        end = data.find(b"\r\n\r\n")
        head = self.server.heads.get(data[:end]) if end > 0 else None
        if head is None or head.chunked:
            return False
        length = head.length or 0
        if length > MAX_PLUGIN_REQUEST or end + 4 + length != len(data):
            return False
        self._dispatch(head, data[end + 4 :])
        return True

    def _check_idle(self) -> None:
        """Close the connection once silent for IDLE_TIMEOUT_S since its last answer.

        One timer per connection, moved only when it fires: each call just notes the time.
        """
        idle = self.loop.time() - self.idle_since
        if not self.busy and idle >= IDLE_TIMEOUT_S:
            self._close()
            return
        wait = IDLE_TIMEOUT_S if self.busy else IDLE_TIMEOUT_S - idle
        self.timer = self.loop.call_later(wait, self._check_idle)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _advance(self) -> None:
        """Frame as many calls as the buffer holds, one at a time."""
        try:
            while not self.busy and not self.paused and self.transport is not None:
                if not self._step():
                    return
        except BadFraming as exc:
            log.warning("AuthZ plugin: refused a malformed request from dockerd: %s", exc)
            self._reply(b"400 Bad Request", b'{"Err":"ds01: malformed plugin request"}', True)

    def _step(self) -> bool:
        """Make progress on the current call; False when more bytes are needed."""
        if self.head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    raise BadFraming("request head too large")
                return False
            if end > MAX_HEAD:
                raise BadFraming("request head too large")
            self.head = self.server.head_of(bytes(self.buf[:end]))
            del self.buf[: end + 4]
            if self.head.chunked:
                self.chunked = _Chunked(MAX_PLUGIN_REQUEST)
            elif (self.head.length or 0) > MAX_PLUGIN_REQUEST:
                self.skip = self.head.length or 0
        body = self._body()
        if body is None:
            return False
        head, self.head, self.chunked = self.head, None, None
        self._dispatch(head, body)
        return True

    def _body(self) -> bytes | bool | None:
        """The whole body; False when it was too large; None while it is still coming."""
        assert self.head is not None
        if self.chunked is not None:
            if not self.chunked.feed(self.buf):
                return None
            return False if self.chunked.too_large else b"".join(self.chunked.parts)
        if self.skip:
            # Read to the end of a body we refuse, so dockerd sees the answer, not a reset.
            taken = min(self.skip, len(self.buf))
            del self.buf[:taken]
            self.skip -= taken
            return None if self.skip else False
        length = self.head.length or 0
        if len(self.buf) < length:
            return None
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return body

    def _dispatch(self, head: Head, body: bytes | bool) -> None:
        route = self.server.routes.get(head.target)
        if head.method != b"POST":
            self._reply(b"405 Method Not Allowed", b'{"Err":"ds01: only POST"}', True)
        elif head.target == b"/Plugin.Activate":
            self._reply(b"200 OK", ACTIVATE_BODY, head.close)
        elif route is None:
            self._reply(b"404 Not Found", b'{"Err":"ds01: no such plugin call"}', head.close)
        elif body is False:
            self._reply(b"200 OK", answer_body(TOO_LARGE), head.close)
        else:
            assert isinstance(body, bytes)
            answer = self.server.answer(*route, body)
            if isinstance(answer, bytes):
                self._reply(b"200 OK", answer, head.close)
                return
            self.busy = True
            task = asyncio.ensure_future(answer)
            task.add_done_callback(lambda t: self._decided(t, head.close))

    def _decided(self, task: asyncio.Future[bytes], close: bool) -> None:
        self.busy = False
        if task.cancelled():
            self._close()
            return
        if task.exception() is not None:
            log.error("AuthZ plugin call failed; denying", exc_info=task.exception())
            self._reply(b"200 OK", answer_body(INTERNAL_ERROR), close)
            return
        self._reply(b"200 OK", task.result(), close)
        if self.transport is not None and not close:
            self.transport.resume_reading()
            self._advance()

    def _reply(self, status: bytes, body: bytes, close: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(response(status, body, close))
        if close:
            self.transport.close()
            self.transport = None
        else:
            self.idle_since = self.loop.time()


class PluginServer:
    """dockerd's AuthZ plugin on a unix socket: ``authz.answer_now`` behind a lean HTTP/1.1.

    ``read_answer=False`` leaves AuthZRes's answer fields undecoded (see ``parse_authz``),
    for an ``on_response`` that never reads it.
    """

    def __init__(
        self,
        on_request: Authorizer,
        on_response: Authorizer,
        observe: Callable[[float], None] | None = None,
        read_answer: bool = True,
    ) -> None:
        self.routes: dict[bytes, tuple[Authorizer, bool]] = {
            b"/AuthZPlugin.AuthZReq": (on_request, False),
            b"/AuthZPlugin.AuthZRes": (on_response, True),
        }
        self.observe = observe
        self.read_answer = read_answer
        self.connections: set[PluginProtocol] = set()
        self.server: asyncio.AbstractServer | None = None
        self.heads: dict[bytes, Head] = {}

    def head_of(self, raw: bytes) -> Head:
        """``parse_head``, remembered: dockerd's heads repeat (only Content-Length varies)."""
        head = self.heads.get(raw)
        if head is None:
            head = parse_head(raw)  # BadFraming is raised, never remembered
            if len(self.heads) >= _HEADS_KEPT:
                self.heads.clear()
            self.heads[raw] = head
        return head

    def answer(self, decide: Authorizer, response: bool, raw: bytes) -> bytes | Awaitable[bytes]:
        """One AuthZ call's answer body, at once when ``decide`` answers at once; every
        failure is a denial (``answer_now``)."""
        started = time.perf_counter() if self.observe is not None else 0.0
        answer = answer_now(decide, raw, response, self.read_answer)
        if not isinstance(answer, AuthzAnswer):
            return self._answer_later(answer, started)
        if self.observe is not None:
            self.observe(time.perf_counter() - started)
        return answer_body(answer)

    async def _answer_later(self, pending: Awaitable[AuthzAnswer], started: float) -> bytes:
        answer = await pending
        if self.observe is not None:
            self.observe(time.perf_counter() - started)
        return answer_body(answer)

    async def call(self, decide: Authorizer, response: bool, raw: bytes) -> bytes:
        """``answer``, awaited."""
        answer = self.answer(decide, response, raw)
        return answer if isinstance(answer, bytes) else await answer

    async def start(self, path: str, mode: int = 0o660) -> None:
        """Listen on ``path``, created with ``mode`` from the start (never briefly more open)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        loop = asyncio.get_running_loop()
        old = os.umask(0o777 & ~mode)
        try:
            self.server = await loop.create_unix_server(lambda: PluginProtocol(self), path)
        finally:
            os.umask(old)
        os.chmod(path, mode)

    async def cleanup(self) -> None:
        """Stop listening and close every connection."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn._close()
        if self.server is not None:
            await self.server.wait_closed()
