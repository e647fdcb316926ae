"""One forwarded request and its answer: the request to dockerd, the response to the client.

An ``Exchange`` sends the handler's request (written by ``wire.py``, its framing set here) on
the client's dockerd connection, streams a body still coming from the client, then relays
dockerd's answer (``relay.py``), shows it whole to the handler first when asked, or turns
the connection into a raw two-way pipe for hijacked attach/exec streams. It sees its client
connection only through ``ClientEnd`` (``client_end.py``).
"""

from __future__ import annotations

import asyncio
import contextlib

import h11

from gateway.client_end import ClientEnd, ClientGone, Stalled
from gateway.framing import (
    CHUNKED,
    HOP_UPGRADE,
    LENGTH,
    UNTIL_CLOSE,
    has_token,
    head_bytes,
    is_docker_stream,
    response_framing,
)
from gateway.relay import read_whole, relay_chunked, relay_length, relay_until_close
from gateway.types import Forward
from gateway.upstream import Upstream, UpstreamGone
from gateway.wire import BadHead, ResponseHead, parse_response_head, proposes_upgrade, request_head

_MAX_RESPONSE_HEAD = 64 * 1024

UNREACHABLE = (
    "ds01: the Docker daemon is not reachable ({reason}). "
    "To fix: ask an administrator to check that dockerd is running."
)


class Exchange:
    """One forwarded request and its response."""

    def __init__(
        self,
        conn: ClientEnd,
        parser: h11.Connection,
        fwd: Forward,
        buffered: bytes | None,
        chunked: bool,
        length: int | None,
        client_close: bool,
    ) -> None:
        self.conn = conn
        self.parser = parser
        self.fwd = fwd
        # Upper-cased only to recognise HEAD; the request goes out with the method as given.
        self.method = fwd.head.method.upper().encode("ascii", "replace")
        self.client_10 = parser.their_http_version != b"1.1"
        self.keep_client = not client_close
        has_body = chunked or bool(length)
        unread = has_body and buffered is None
        self.stream_chunked = False
        self.stream_length: int | None = None
        if fwd.body is not None:
            self.send_body: bytes | None = fwd.body
            if unread:
                # The handler replaced a body we never read: the connection cannot be reused.
                self.keep_client = False
                conn.discard_rest(parser)
        elif buffered is not None:
            self.send_body = buffered
        elif has_body:
            self.send_body = None
            self.stream_chunked, self.stream_length = chunked, length
        else:
            self.send_body = b""
        self.had_framing = has_body or length is not None
        self.pump: asyncio.Task[bool] | None = None
        self.reuse_up = True

    @property
    def streaming(self) -> bool:
        return self.send_body is None

    async def run(self) -> bool:
        """Forward, relay, report; True when the client connection stays open."""
        ok = False
        conn = self.conn
        try:
            headers = self._upstream_headers()
            try:
                request = request_head(self.fwd.head.method, self.fwd.head.target, headers)
            except BadHead as exc:
                conn.log.error("gateway: handler produced an invalid request: %s", exc)
                await conn.fail(500, "ds01: internal error in the gateway; request not forwarded")
                return False
            got = await self._send_and_read_head(request, proposes_upgrade(headers))
            if got is None:
                return False
            up, response, rest = got
            if response.status_code == 101 or (
                response_framing(self.method, response)[0] == UNTIL_CLOSE
                and (self.fwd.hijack or is_docker_stream(response))
            ):
                ok = await self._hijacked(up, response, rest)
                return False
            ok = await self._relay(up, response, rest)
            return ok and self.keep_client
        except UpstreamGone as exc:
            # The head is already on its way to the client: all we can do is close.
            conn.log.warning(
                "gateway: dockerd broke off a response to %s: %s", self.fwd.head.method, exc
            )
            return False
        finally:
            # _stop_children cancels every helper before its first await, so none can abort
            # this task while the callbacks below run.
            await conn.stop_helpers()
            if not ok or not self.reuse_up:
                conn.upstream.drop()
            else:
                conn.upstream.rest()
            if self.fwd.on_close is not None:
                conn.run_callback("on_close", self.fwd.on_close, ok)

    def _upstream_headers(self) -> list[tuple[bytes, bytes]]:
        """The handler's headers, with framing set by us and h2c upgrades removed."""
        hijack = self.fwd.hijack
        out: list[tuple[bytes, bytes]] = []
        has_host = False
        for name, value in self.fwd.head.headers:
            lname = name.lower()
            if lname in ("content-length", "transfer-encoding", "expect"):
                continue
            if not hijack:
                # dockerd speaks no h2c; only hijacked routes may ask for a protocol switch.
                if lname in HOP_UPGRADE:
                    continue
                if lname == "connection":
                    tokens = [t.strip() for t in value.split(",")]
                    value = ", ".join(t for t in tokens if t and t.lower() not in HOP_UPGRADE)
                    if not value:
                        continue
            has_host = has_host or lname == "host"
            out.append((name.encode("latin-1"), value.encode("latin-1")))
        if not has_host:
            out.append((b"Host", b"docker"))
        if self.send_body is not None:
            if self.send_body or self.had_framing:
                out.append((b"Content-Length", b"%d" % len(self.send_body)))
        elif self.stream_chunked:
            out.append((b"Transfer-Encoding", b"chunked"))
        else:
            out.append((b"Content-Length", b"%d" % (self.stream_length or 0)))
        return out

    async def _send_and_read_head(
        self, request: bytes, upgrade: bool
    ) -> tuple[Upstream, ResponseHead, bytes] | None:
        """Send the request head; return the response head, or None after answering 502.

        ``upgrade``: the request asks for a protocol switch, so dockerd may answer 101.
        """
        conn = self.conn
        for attempt in (1, 2):
            try:
                up = await conn.upstream.get(replayable=not self.streaming)
            except OSError as exc:
                await self._bad_gateway(UNREACHABLE.format(reason=exc.strerror or exc))
                return None
            try:
                up.writer.write(request + self.send_body if self.send_body else request)
                if self.streaming:
                    if self.pump is None:
                        conn.send_continue(self.parser)
                        self.pump = conn.spawn(self._pump(up))
                else:
                    conn.watch_soon()
                await up.drain()
                response, rest = await self._read_head(up, upgrade)
                return up, response, rest
            except UpstreamGone as exc:
                conn.upstream.drop()
                if attempt == 1 and up.reused and not exc.received and not self.streaming:
                    # dockerd closed an idle keep-alive connection just as we reused it.
                    conn.log.debug("gateway: retrying on a fresh dockerd connection")
                    continue
                await self._bad_gateway(f"ds01: the Docker daemon broke off the request ({exc})")
                return None
        return None  # pragma: no cover - the loop always returns

    async def _bad_gateway(self, message: str) -> None:
        await self.conn.stop_helpers()
        await self.conn.fail(502, message, head_only=self.method == b"HEAD")

    async def _read_head(self, up: Upstream, upgrade: bool) -> tuple[ResponseHead, bytes]:
        """dockerd's final response head and the bytes after it; 1xx heads are passed on."""
        buf = b""
        received = False
        while True:
            try:
                got = parse_response_head(buf, _MAX_RESPONSE_HEAD) if buf else None
                if got is not None and got[0].status_code == 101 and not upgrade:
                    raise BadHead("101 to a request that asked for no upgrade")
            except BadHead as exc:
                raise UpstreamGone(f"invalid response: {exc}", received=True) from exc
            if got is None:
                data = await up.read()
                if data:
                    buf += data
                    received = True
                    continue
                if buf:
                    raise UpstreamGone("invalid response: closed in the middle of its head")
                # Nothing received lets a request on a reused idle connection be retried.
                raise UpstreamGone("closed the connection before answering", received=received)
            response, end = got
            buf = buf[end:]
            if response.status_code >= 200 or response.status_code == 101:
                return response, buf
            if not self.client_10:  # HTTP/1.0 clients must not see 1xx
                self.conn.send_head(
                    response.status_code, response.reason, response.headers.raw_items()
                )

    async def _pump(self, up: Upstream) -> bool:
        """Stream the client's body to dockerd as it arrives; False if dockerd stopped reading.

        The body is decoded by h11 and reframed by us, so dockerd never parses framing the
        client wrote. Everything h11 decoded from one read goes out as one chunk.
        """
        conn, parser, chunked = self.conn, self.parser, self.stream_chunked
        w = up.writer
        try:
            while True:
                parts: list[bytes] = []
                done = False
                while True:
                    event = parser.next_event()
                    if event is h11.NEED_DATA:
                        break
                    if isinstance(event, h11.Data):
                        parts.append(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        done = True
                        break
                if parts:
                    if chunked:
                        size = sum(map(len, parts))
                        w.write(b"".join((b"%x\r\n" % size, *parts, b"\r\n")))
                    else:
                        for part in parts:
                            w.write(part)
                if done:
                    if chunked:
                        w.write(b"0\r\n\r\n")
                    await w.drain()
                    break
                await w.drain()
                parser.receive_data(await conn.recv_body())
        except (h11.RemoteProtocolError, ClientGone) as exc:
            conn.abort(f"client broke off its request body: {exc}")
            return False
        except Stalled:
            # The request is already on its way to dockerd: all we can do is end both sides.
            conn.abort(f"no request body bytes for {conn.limits.body_stall:g} s")
            return False
        except OSError:
            return False  # dockerd stopped reading; its response (if any) still comes back
        conn.stash(parser)
        conn.watch()
        return True

    async def _relay(self, up: Upstream, response: ResponseHead, rest: bytes) -> bool:
        """Relay a framed response as it arrives; True once the client has all of it."""
        conn, fwd = self.conn, self.fwd
        status = response.status_code
        framing, length = response_framing(self.method, response)
        dechunk = framing == CHUNKED and self.client_10
        dockerd_closes = has_token(response.headers, b"close")
        if framing == UNTIL_CLOSE or dechunk or self.client_10 or dockerd_closes:
            self.keep_client = False
        if framing == UNTIL_CLOSE or dockerd_closes:
            self.reuse_up = False
        if self.pump is not None and not self.pump.done():
            # dockerd answers while the body is still coming in: it may never read the rest,
            # so this connection's framing cannot be trusted for another request.
            self.keep_client = False
        headers = response.headers.raw_items()
        if dechunk:
            headers = [(k, v) for k, v in headers if k.lower() != b"transfer-encoding"]
        if not self.keep_client and not dockerd_closes:
            headers = [(k, v) for k, v in headers if k.lower() != b"connection"]
            headers.append((b"Connection", b"close"))
        if fwd.on_response is not None:
            if not await self._answer_via_handler(
                up, response, headers, rest, (framing, length), dechunk
            ):
                return False
        else:
            head = head_bytes(status, response.reason, headers)
            if framing == LENGTH:
                clean = await relay_length(conn, up, rest, length, head)
            elif framing == CHUNKED:
                clean = await relay_chunked(conn, up, rest, dechunk, head)
            elif framing == UNTIL_CLOSE:
                clean = await relay_until_close(conn, up, rest, head)
            else:
                conn.send(head)
                clean = not rest
            if not clean:
                self.reuse_up = False  # bytes after the response: do not trust this connection
        await conn.drain()
        if self.pump is not None and (not self.pump.done() or not self.pump.result()):
            # dockerd answered before taking the whole body: neither side can be reused,
            # and the client, perhaps still sending, should read our answer, not a reset.
            self.keep_client = self.reuse_up = False
            conn.discard_rest(self.parser)
        return True

    async def _answer_via_handler(
        self,
        up: Upstream,
        response: ResponseHead,
        headers: list[tuple[bytes, bytes]],
        rest: bytes,
        framing: tuple[int, int],
        dechunk: bool,
    ) -> bool:
        """Read dockerd's whole answer, show it to the handler, send it or its replacement.

        The client sees nothing before the handler has: a create's container ID is bound to
        its GPUs before the client can start it, and a screened read is never half-relayed.
        """
        conn, limit = self.conn, self.fwd.response_limit
        head_only = self.method == b"HEAD"
        whole = await read_whole(up, *framing, rest, limit)
        if whole is None:
            self.reuse_up = False
            await self._bad_gateway(
                f"ds01: the Docker daemon's answer is larger than the gateway checks "
                f"({limit} bytes); it was not relayed"
            )
            return False
        raw, body, clean = whole
        self.reuse_up = self.reuse_up and clean
        assert self.fwd.on_response is not None
        done, replacement = conn.run_callback(
            "on_response", self.fwd.on_response, response.status_code, body
        )
        if not done:
            await conn.fail(
                500,
                "ds01: internal error in the gateway; dockerd's answer withheld",
                head_only=head_only,
            )
            return False
        if replacement is not None:
            await conn.reply(replacement, head_only=head_only, close=not self.keep_client)
            return True
        conn.send_head(response.status_code, response.reason, headers, body if dechunk else raw)
        return True

    async def _hijacked(self, up: Upstream, response: ResponseHead, rest: bytes) -> bool:
        """Relay the head, then pipe raw bytes both ways until dockerd closes its side."""
        conn = self.conn
        self.keep_client = self.reuse_up = False
        if self.pump is not None and not await self.pump:
            return False  # the raw stream starts only once the request is complete
        await conn.unwatch()
        if self.fwd.on_response is not None:
            # A raw stream has no answer to read first: the handler sees the status alone.
            done, replacement = conn.run_callback(
                "on_response", self.fwd.on_response, response.status_code, b""
            )
            if not done or replacement is not None:
                await conn.fail(500, "ds01: internal error in the gateway; stream not relayed")
                return False
        conn.send_head(response.status_code, response.reason, response.headers.raw_items(), rest)
        to_docker = conn.spawn(self._pipe_to_docker(up))
        try:
            while True:
                await conn.drain()
                data = await up.read()
                if not data:
                    return True
                conn.send(data)
        finally:
            to_docker.cancel()

    async def _pipe_to_docker(self, up: Upstream) -> None:
        conn = self.conn
        w = up.writer
        try:
            while True:
                data = await conn.recv()
                if not data:
                    break
                w.write(data)
                await w.drain()
        except ClientGone as exc:
            conn.abort(f"client broke off a hijacked stream: {exc}")
            return
        except OSError:
            return  # dockerd no longer reads; keep relaying what it still sends
        if conn.hung_up():
            conn.abort("client hung up on a hijacked stream")
            return
        # The client closed stdin but still listens: pass the half-close on (the container
        # sees EOF on stdin) and keep relaying its output until dockerd closes.
        with contextlib.suppress(OSError, RuntimeError):
            if w.can_write_eof():
                w.write_eof()
        await conn.await_hangup()
        conn.abort("client hung up on a hijacked stream")
