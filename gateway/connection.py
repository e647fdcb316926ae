"""One client connection of the gateway: its requests in order, each parsed, decided, answered.

A request head is parsed with h11 within its time limits, its body buffered (within the
handler's and the user's bounds) or left to stream, then put to the handler: a ``Reply`` is
answered here, a ``Forward`` is run as an ``Exchange`` (``exchange.py``), which sees this
connection only as a ``ClientEnd`` (``client_end.py``). When the connection ends, a refused
body still coming is read to its end first (the lingering close), so the client sees the
answer rather than a broken pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
from typing import TYPE_CHECKING, Any, TypeVar

import h11

from gateway.client_end import ClientGone, Stalled
from gateway.client_io import ClientStream
from gateway.exchange import Exchange
from gateway.framing import body_ends, has_token, request_framing
from gateway.limits import body_stall_message, head_timeout_message
from gateway.types import Client, Forward, PeerCred, Reply, RequestHead
from gateway.upstream import READ_SIZE, UpstreamSlot

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.server import Gateway

# A client's reader pauses its socket above twice this: what a client sends ahead of a long
# answer (logs -f, events) costs the gateway at most that much memory per connection.
CLIENT_STREAM_LIMIT = READ_SIZE
_CLOSE_WAIT_S = 1.0
# Closing after an error whose request framing is unknown (a stalled or malformed head): read
# what the client still sends for this long, this much. A refused body whose framing is known
# is read to its end instead, within GatewayLimits.discard_*.
_LINGER_S = 2.0
_LINGER_BYTES = 1024 * 1024

_T = TypeVar("_T")


class Connection(ClientStream):
    """One client connection: requests in order, one dockerd connection behind it.

    It is the ``ClientEnd`` its exchanges run on (``client_end.py``).
    """

    def __init__(
        self,
        gateway: Gateway,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerCred,
    ) -> None:
        super().__init__(reader, writer, gateway.limits.body_stall)
        self.gw = gateway
        self.log = gateway.log
        self.limits = gateway.limits
        self.client = Client(peer)
        self.started = asyncio.get_running_loop().time()
        self.served = 0
        self.upstream = UpstreamSlot(gateway.pool)
        self.linger = False
        # The parser of a request whose body was left unread by a refusal: the lingering
        # close reads that body to its end, so the client finishes sending and sees our answer.
        self.unread: h11.Connection | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            while await self._serve_one():
                self.served += 1
        except asyncio.CancelledError:
            if self.aborted is None:
                raise
            # Our own abort: the cancellation is spent, so the teardown below may await.
            if self.task is not None:
                self.task.uncancel()
            self.log.debug(
                "gateway: connection from pid %d ended: %s", self.client.peer.pid, self.aborted
            )
        except ClientGone as exc:
            self.log.debug("gateway: client pid %d went away: %s", self.client.peer.pid, exc)
        except Exception:  # one bad connection must never stop the server
            self.log.exception("gateway: connection from pid %d failed", self.client.peer.pid)
        finally:
            await self._teardown()

    async def _teardown(self) -> None:
        if self.aborted is None:
            self.aborted = "closed"
        await self.stop_helpers()
        if self.client_read is not None:
            self.client_read.cancel()
            await asyncio.wait((self.client_read,))
        self.upstream.release()
        transport = self.writer.transport
        if self.linger and not transport.is_closing():
            await self._lingering_close()
        if transport.is_closing():
            transport.abort()
        else:
            self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), _CLOSE_WAIT_S)
        except (TimeoutError, OSError):
            # A client that never reads its last response must not pin the fd.
            transport.abort()

    async def _lingering_close(self) -> None:
        """Half-close, then read and drop what the client still sends, so it sees our answer.

        A client still uploading a body we refused (a build context, an image tar) would get
        EPIPE on its next write if we closed now, and report "broken pipe" instead of the
        answer already waiting in its receive buffer. When the request's framing is known
        (``unread``) we read until its body ends, within GatewayLimits' discard bounds;
        otherwise briefly. Nothing read is kept, and the connection holds its admission slot
        (its user's connection cap) until this ends.
        """
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
        parser, self.unread = self.unread, None
        if parser is not None:
            limit, seconds = self.limits.discard_bytes, self.limits.discard_time
        else:
            limit, seconds = _LINGER_BYTES, _LINGER_S
        data = bytes(self.ahead)
        self.ahead.clear()
        drained = 0
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    if parser is not None and data and body_ends(parser, data):
                        return
                    if drained >= limit or self.client_eof:
                        return
                    data = await self.reader.read(READ_SIZE)
                    if not data:
                        return
                    drained += len(data)

    async def reply(self, reply: Reply, *, head_only: bool, close: bool) -> None:
        headers = [
            (b"Content-Type", reply.content_type.encode("latin-1")),
            (b"Content-Length", b"%d" % len(reply.body)),
        ]
        for name, value in reply.headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                headers.append((name.encode("latin-1"), value.encode("latin-1")))
        if close:
            headers.append((b"Connection", b"close"))
        try:
            reason = http.HTTPStatus(reply.status).phrase.encode()
        except ValueError:
            reason = b""
        self.send_head(reply.status, reason, headers, b"" if head_only else reply.body)
        await self.drain()

    async def fail(self, status: int, message: str, *, head_only: bool = False) -> None:
        """Answer with a Docker-style JSON error and close the connection after it."""
        self.linger = True
        body = json.dumps({"message": message}).encode()
        with contextlib.suppress(ClientGone):
            await self.reply(Reply(status, body), head_only=head_only, close=True)

    def discard_rest(self, parser: h11.Connection) -> None:
        self.linger, self.unread = True, parser

    def run_callback(
        self, what: str, callback: Callable[..., _T], *args: Any
    ) -> tuple[bool, _T | None]:
        return self.gw.run_callback(what, callback, *args)

    # -- one request -----------------------------------------------------------------------

    async def _serve_one(self) -> bool:
        """Parse, decide and answer one request; True when the connection stays open."""
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=self.gw.max_header_bytes)
        request = await self._read_head(parser)
        if request is None:
            return False
        if request.http_version not in (b"1.0", b"1.1"):
            # h11 parses any HTTP/x.y; anything but 1.x (an HTTP/2 preface, say) is not for us.
            await self.fail(505, "ds01: only HTTP/1.0 and HTTP/1.1 are supported")
            return False
        chunked, length, problem = request_framing(request)
        if problem is not None:
            await self.fail(400, f"ds01: malformed HTTP request: {problem}")
            return False
        head = RequestHead(
            method=request.method.decode("ascii"),
            target=request.target.decode("ascii"),
            headers=tuple(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw_items()
            ),
            http_version=request.http_version.decode("ascii"),
        )
        head_only = request.method == b"HEAD"
        close = request.http_version != b"1.1" or has_token(request.headers, b"close")
        has_body = chunked or bool(length)
        try:
            limit = self.gw.handler.body_limit(self.client, head)
        except Exception:  # fail closed
            self.log.exception("gateway: body_limit failed for %s %s", head.method, head.target)
            await self.fail(500, "ds01: internal error in the gateway; request not forwarded")
            return False
        body: bytes | None = None
        if not has_body:
            self._finish_request(parser)
        elif limit is not None:
            if length is not None and length > limit:
                self.unread = parser
                await self.fail(413, too_large(limit), head_only=head_only)
                return False
            body = await self._read_body(parser, limit, head_only)
            if body is None:
                return False
        body_done = not has_body or body is not None
        if body_done:
            # A decision can take long (a create waiting in the GPU queue): a client that hangs
            # up meanwhile aborts it, so nothing is waited for, or created, for nobody.
            self.watch_soon()
        try:
            action = await self.gw.handler.decide(self.client, head, body)
        except Exception:  # fail closed
            self.log.exception("gateway: decide failed for %s %s", head.method, head.target)
            await self.fail(500, "ds01: internal error in the gateway; request not forwarded")
            return False
        await self.unwatch()
        if isinstance(action, Reply):
            # An unread streamed body leaves the connection's framing unknown: close it, but
            # only once the client has finished sending that body (see _lingering_close).
            keep = body_done and not close
            if not body_done:
                self.linger, self.unread = True, parser
            await self.reply(action, head_only=head_only, close=not keep)
            return keep
        if not isinstance(action, Forward):
            self.log.error("gateway: handler returned %r", type(action).__name__)
            await self.fail(500, "ds01: internal error in the gateway; request not forwarded")
            return False
        return await Exchange(self, parser, action, body, chunked, length, close).run()

    async def _read_head(self, parser: h11.Connection) -> h11.Request | None:
        """The next request head, within the time allowed; None when the connection ends.

        A new connection has ``head_timeout`` from its start for its first head; between
        requests a client may wait ``idle_timeout`` before its next one begins, and then has
        ``head_timeout`` to finish it. Nothing here runs while an answer is being relayed, so
        streams (events, logs -f, attach, exec) are never cut by these limits.
        """
        loop = asyncio.get_running_loop()
        if self.served:
            deadline = loop.time() + self.limits.idle_timeout
        else:
            deadline = self.started + self.limits.head_timeout
        fed = 0
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                if fed or not self.client_eof:
                    status = exc.error_status_hint if exc.error_status_hint in (431, 501) else 400
                    await self.fail(status, f"ds01: malformed HTTP request: {exc}")
                return None
            if event is h11.NEED_DATA:
                try:
                    data = await self._recv_by(deadline)
                except Stalled:
                    await self._head_timed_out(fed)
                    return None
                if not fed and data and self.served:
                    deadline = loop.time() + self.limits.head_timeout
                parser.receive_data(data)
                fed += len(data)
                continue
            if isinstance(event, h11.Request):
                break
            return None  # ConnectionClosed between requests
        # h11 only limits heads that arrive in pieces; one that came in a single read is
        # measured here, so the limit does not depend on how the client's bytes were split.
        head_size = fed - len(parser.trailing_data[0])
        if head_size > self.gw.max_header_bytes:
            await self.fail(431, "ds01: request headers too large")
            return None
        return event

    async def _head_timed_out(self, fed: int) -> None:
        if fed:  # a head begun and not finished: say why before closing
            self.log.debug("gateway: pid %d stalled mid-head", self.client.peer.pid)
            await self.fail(408, head_timeout_message(self.limits.head_timeout))
        else:  # an idle connection: close it, as any HTTP server does
            self.log.debug("gateway: closing idle connection from pid %d", self.client.peer.pid)
        return None

    def _finish_request(self, parser: h11.Connection) -> None:
        """Consume the end of a body-less request and keep what follows it."""
        event = parser.next_event()
        assert isinstance(event, h11.EndOfMessage), event
        self.stash(parser)

    def stash(self, parser: h11.Connection) -> None:
        rest, closed = parser.trailing_data
        if rest:
            self.ahead[:0] = rest
        if closed:
            self.client_eof = True

    def send_continue(self, parser: h11.Connection) -> None:
        # We answer Expect: 100-continue ourselves and never forward it: the body goes
        # through us, and dockerd's own 100 would arrive at the wrong moment.
        if parser.they_are_waiting_for_100_continue:
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _read_body(self, parser: h11.Connection, limit: int, head_only: bool) -> bytes | None:
        """Buffer a body the handler wants to see; None after answering 413 or a bad body."""
        self.send_continue(parser)
        parts: list[bytes] = []
        size = 0
        admission, uid = self.gw.admission, self.client.peer.uid
        try:
            while True:
                try:
                    event = parser.next_event()
                except h11.RemoteProtocolError as exc:
                    if not self.client_eof:
                        await self.fail(400, f"ds01: malformed HTTP request body: {exc}")
                    return None
                if event is h11.NEED_DATA:
                    try:
                        parser.receive_data(await self.recv_body())
                    except Stalled:
                        await self.fail(408, body_stall_message(self.limits.body_stall))
                        return None
                elif isinstance(event, h11.Data):
                    if size + len(event.data) > limit:
                        self.unread = parser
                        await self.fail(413, too_large(limit), head_only=head_only)
                        return None
                    # Bodies being buffered count against their user's budget, so one user's
                    # half-sent bodies cost the gateway a bounded amount of memory.
                    refusal = admission.charge_body(uid, len(event.data))
                    if refusal is not None:
                        self.unread = parser
                        await self.fail(refusal.status, refusal.message, head_only=head_only)
                        return None
                    size += len(event.data)
                    parts.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self.stash(parser)
                    return b"".join(parts)
        finally:
            admission.refund_body(uid, size)


def too_large(limit: int) -> str:
    return f"ds01: request body too large for the gateway (limit {limit} bytes)"
