"""The gateway's data plane: a transparent HTTP/1.1 proxy from a unix socket to dockerd's.

Every request on a client connection is parsed on its own with h11 and put to a Handler,
which answers it (Reply) or says what to send to dockerd (Forward). Requests reach dockerd
re-serialised by h11, never as the client's raw bytes. Responses are relayed as they arrive,
with no total timeout and their body framing untouched; hijacked attach/exec streams become a
raw two-way pipe that honours half-close.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import os
import re
import select
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

import h11

from gateway.limits import (
    Admission,
    GatewayLimits,
    Refusal,
    body_stall_message,
    head_timeout_message,
)
from gateway.peer import peer_credentials
from gateway.types import Client, Forward, Handler, PeerCred, Reply, RequestHead

# Large reads keep the per-byte Python cost negligible on bulk transfers (cp, save, build).
READ_SIZE = 256 * 1024
# StreamReader pauses the socket above twice this; at the default 64 KiB it would pause and
# resume on nearly every 256 KiB read.
_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
_STREAM_LIMIT = 1024 * 1024
# A client's reader pauses its socket above twice this: what a client sends ahead of a long
# answer (logs -f, events) costs the gateway at most that much memory per connection.
_CLIENT_STREAM_LIMIT = READ_SIZE
_WRITE_HIGH_WATER = 1024 * 1024
_MAX_RESPONSE_HEAD = 64 * 1024
_MAX_CHUNK_LINE = 4096
_MAX_TRAILERS = 64 * 1024
# Bytes of a pipelined next request we hold while a response is still being relayed.
_MAX_READ_AHEAD = 64 * 1024
_HANGUP_POLL_S = 1.0
# Most answers take milliseconds: watching the client for a hang-up (a task and a pending read)
# only pays off on long ones (logs -f, events, pull), so the watch starts after a moment.
_WATCH_AFTER_S = 0.2
# Closing after an error whose request framing is unknown (a stalled or malformed head): read
# what the client still sends for this long, this much. A refused body whose framing is known
# is read to its end instead, within GatewayLimits.discard_*.
_LINGER_S = 2.0
_LINGER_BYTES = 1024 * 1024
# A refused connection is answered, half-closed and read from briefly so the client sees the
# answer rather than a broken pipe; at most this many at once (the rest are closed at once).
_REFUSAL_LINGER_S = 1.0
_REFUSAL_LINGER_BYTES = 64 * 1024
_REFUSALS_LINGERING = 32
_REFUSAL_LOG_EVERY_S = 10.0
_CLOSE_WAIT_S = 1.0
# An upstream connection idle longer than this is not trusted with a body we cannot replay.
_UPSTREAM_IDLE_S = 30.0
# Clean dockerd connections kept for the next client: the docker CLI connects anew for every
# command, and a connection at hand saves it a connect and a transport setup. dockerd keeps no
# state between the requests of a connection (each is authorised on its own, by its ticket),
# so a connection whose last answer was read exactly to its end may serve any user; any doubt
# (a stray byte, a hijack, an error) drops it instead.
_IDLE_UPSTREAMS = 16
_HOP_UPGRADE = {"upgrade", "http2-settings"}
_DOCKER_STREAMS = (
    b"application/vnd.docker.raw-stream",
    b"application/vnd.docker.multiplexed-stream",
)

UNREACHABLE = (
    "ds01: the Docker daemon is not reachable ({reason}). "
    "To fix: ask an administrator to check that dockerd is running."
)

_NO_BODY, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)
_T = TypeVar("_T")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class _ClientGone(Exception):
    """The client hung up or broke its side of the exchange."""


class _UpstreamGone(Exception):
    """dockerd closed or broke the connection; ``received`` says whether it sent anything."""

    def __init__(self, message: str, *, received: bool = True) -> None:
        super().__init__(message)
        self.received = received


class _BadChunking(Exception):
    """dockerd's chunked framing could not be followed."""


class _Stalled(Exception):
    """The client sent nothing within the time it is given (a head or a body byte)."""


class Gateway:
    """Serves the Docker API on a unix socket and forwards what the handler approves."""

    def __init__(
        self,
        handler: Handler,
        upstream_socket_path: str,
        *,
        max_header_bytes: int = 64 * 1024,
        limits: GatewayLimits | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.handler = handler
        self.upstream = upstream_socket_path
        self.max_header_bytes = max_header_bytes
        self.limits = limits or GatewayLimits()
        self.admission = Admission(self.limits)
        self._refusing = 0
        self._refusal_logged: dict[int, tuple[float, int]] = {}
        self.log = logger or logging.getLogger("ds01.gateway.proxy")
        self._server: asyncio.AbstractServer | None = None
        self._path: str | None = None
        self._inode: tuple[int, int] | None = None
        self._conns: set[_Connection] = set()
        self._idle: list[_Upstream] = []
        self._stopping = False

    @property
    def connections(self) -> int:
        """How many client connections are being served right now."""
        return len(self._conns)

    async def start(self, socket_path: str, mode: int = 0o666) -> None:
        """Listen on ``socket_path``; the socket is never reachable with looser rights than mode."""
        path = os.path.abspath(socket_path)
        _remove_stale_socket(path)
        # Bind inside a fresh 0700 directory, set the mode, then rename into place: the socket
        # appears at its public path already carrying its final permissions. A process-wide
        # umask change would race with other threads creating files.
        private = tempfile.mkdtemp(prefix=".ds01-", dir=os.path.dirname(path))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            bound = os.path.join(private, "s")
            sock.bind(bound)
            os.chmod(bound, mode)
            sock.listen(_BACKLOG)
            os.rename(bound, path)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(private, "s"))
            raise
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(private)
        st = os.stat(path)
        self._path, self._inode = path, (st.st_dev, st.st_ino)
        # asyncio listens again with its own backlog (100 by default): pass ours, or a burst of
        # clients connecting at once (Go clients connect non-blocking) gets EAGAIN.
        self._server = await asyncio.start_unix_server(
            self._serve, sock=sock, limit=_CLIENT_STREAM_LIMIT, backlog=_BACKLOG
        )
        self.log.debug("gateway listening on %s, forwarding to %s", path, self.upstream)

    async def stop(self) -> None:
        """Stop listening, end every connection (and its dockerd side), remove the socket."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        conns = list(self._conns)
        for conn in conns:
            conn.abort("the gateway is stopping")
        tasks = [c.task for c in conns if c.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        while self._idle:
            self._idle.pop().abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._path is not None:
            # Only our own socket: someone may have started a new gateway on the path since.
            with contextlib.suppress(OSError):
                st = os.stat(self._path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self._path)
            self._path = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = peer_credentials(writer.get_extra_info("socket"))
        except (OSError, AttributeError) as exc:  # no kernel word on the peer: serve nothing
            self.log.warning("gateway: cannot read the peer's credentials: %s", exc)
            writer.transport.abort()
            return
        refusal = self.admission.admit(peer.uid)
        if refusal is not None:
            await self._refuse(reader, writer, peer, refusal)
            return
        try:
            conn = _Connection(self, reader, writer, peer)
            self._conns.add(conn)
            try:
                await conn.serve()
            finally:
                self._conns.discard(conn)
        finally:
            self.admission.release(peer.uid)

    async def _refuse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerCred,
        refusal: Refusal,
    ) -> None:
        """Answer a connection over a cap with a Docker JSON error and close it.

        It costs an fd only briefly: the answer goes out at once (it fits the socket buffer),
        and the short read that follows is bounded in time, bytes and count.
        """
        self._log_refusal(peer, refusal)
        body = json.dumps({"message": refusal.message}).encode()
        reason = http.HTTPStatus(refusal.status).phrase.encode()
        headers = [
            (b"Content-Type", b"application/json"),
            (b"Content-Length", b"%d" % len(body)),
            (b"Connection", b"close"),
        ]
        transport = writer.transport
        try:
            writer.write(_head_bytes(refusal.status, reason, headers) + body)
            if self._refusing >= _REFUSALS_LINGERING or not writer.can_write_eof():
                return
            self._refusing += 1
            try:
                # Half-close, then take what the client already sent: it reads our answer
                # and an end of file, not a reset in the middle of writing its request.
                writer.write_eof()
                async with asyncio.timeout(_REFUSAL_LINGER_S):
                    taken = 0
                    while taken < _REFUSAL_LINGER_BYTES:
                        data = await reader.read(READ_SIZE)
                        if not data:
                            break
                        taken += len(data)
            finally:
                self._refusing -= 1
        except (OSError, RuntimeError, TimeoutError):
            pass
        finally:
            transport.close()

    def _log_refusal(self, peer: PeerCred, refusal: Refusal) -> None:
        """Warn about refusals, once per status every few seconds, with the busiest uids."""
        now = time.monotonic()
        last, count = self._refusal_logged.get(refusal.status, (0.0, 0))
        if now - last < _REFUSAL_LOG_EVERY_S:
            self._refusal_logged[refusal.status] = (last, count + 1)
            return
        self._refusal_logged[refusal.status] = (now, 0)
        self.log.warning(
            "gateway: refused a connection from uid %d (pid %d) with %d (%d more refused "
            "since the last warning); %d connections open of %d, busiest uids: %s",
            peer.uid,
            peer.pid,
            refusal.status,
            count,
            self.admission.open,
            self.admission.total,
            ", ".join(f"{uid}: {n}" for uid, n in self.admission.busiest()),
        )

    def run_callback(
        self, what: str, callback: Callable[..., _T], *args: Any
    ) -> tuple[bool, _T | None]:
        """(True, what a handler callback returned), or (False, None) when it raised."""
        try:
            return True, callback(*args)
        except Exception:  # a buggy callback must not take the connection down
            self.log.exception("gateway: %s callback failed", what)
            return False, None

    def take_upstream(self) -> _Upstream | None:
        """A clean idle dockerd connection left by an earlier client, if one is still open."""
        while self._idle:
            up = self._idle.pop()
            if up.usable():
                return up
            up.abort()
        return None

    def keep_upstream(self, up: _Upstream) -> None:
        """Keep a dockerd connection whose last exchange ended cleanly, for the next client."""
        if self._stopping or not up.usable() or len(self._idle) >= _IDLE_UPSTREAMS:
            up.abort()
        else:
            self._idle.append(up)


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        # Never delete a file someone put there: the path is probably misconfigured.
        raise FileExistsError(f"{path} exists and is not a socket")
    os.unlink(path)


class _Upstream:
    """One connection to dockerd, owned by one client connection."""

    __slots__ = ("idle_since", "reader", "reused", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.reused = False
        self.idle_since = time.monotonic()

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def abort(self) -> None:
        self.writer.transport.abort()


class _Connection:
    """One client connection: requests in order, one dockerd connection behind it."""

    def __init__(
        self,
        gateway: Gateway,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerCred,
    ) -> None:
        self.gw = gateway
        self.log = gateway.log
        self.limits = gateway.limits
        self.reader, self.writer = reader, writer
        self.sock = writer.get_extra_info("socket")
        self.task = asyncio.current_task()
        self.client = Client(peer)
        self.started = asyncio.get_running_loop().time()
        self.served = 0
        self.up: _Upstream | None = None
        # Client bytes read but not parsed yet (a pipelined request, the start of a raw stream).
        self.ahead = bytearray()
        self.client_eof = False
        # A read of the client left pending by the watcher; whoever reads next takes it over,
        # so cancelling the watcher never loses bytes.
        self.client_read: asyncio.Future[bytes] | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.watch_timer: asyncio.TimerHandle | None = None
        self.children: set[asyncio.Task[Any]] = set()
        self.aborted: str | None = None
        self.linger = False
        # The parser of a request whose body was left unread by a refusal: the lingering
        # close reads that body to its end, so the client finishes sending and sees our answer.
        self.unread: h11.Connection | None = None
        writer.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)

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
        except _ClientGone as exc:
            self.log.debug("gateway: client pid %d went away: %s", self.client.peer.pid, exc)
        except Exception:  # one bad connection must never stop the server
            self.log.exception("gateway: connection from pid %d failed", self.client.peer.pid)
        finally:
            await self._teardown()

    def abort(self, reason: str) -> None:
        """End this connection now, from any task; the first reason wins."""
        if self.aborted is not None or self.task is None:
            return
        self.aborted = reason
        self.task.cancel()

    async def _teardown(self) -> None:
        if self.aborted is None:
            self.aborted = "closed"
        await self._stop_children()
        if self.client_read is not None:
            self.client_read.cancel()
            await asyncio.wait((self.client_read,))
        if self.up is not None:
            # Only a clean connection is still held between exchanges (see _Exchange.run).
            self.gw.keep_upstream(self.up)
            self.up = None
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
                    if parser is not None and data and _body_ends(parser, data):
                        return
                    if drained >= limit or self.client_eof:
                        return
                    data = await self.reader.read(READ_SIZE)
                    if not data:
                        return
                    drained += len(data)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.children.add(task)
        task.add_done_callback(self.children.discard)
        return task

    async def _stop_children(self) -> None:
        self._cancel_watch_timer()
        tasks = list(self.children)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self.watcher = None

    # -- client I/O ------------------------------------------------------------------------

    async def _recv(self) -> bytes:
        """The next bytes from the client; b"" once it has shut down its write side."""
        if self.ahead:
            data = bytes(self.ahead)
            self.ahead.clear()
            return data
        if self.client_eof:
            return b""
        try:
            if self.client_read is not None:
                pending, self.client_read = self.client_read, None
                data = await pending
            else:
                data = await self.reader.read(READ_SIZE)
        except OSError as exc:
            raise _ClientGone(f"read failed: {exc}") from exc
        if not data:
            self.client_eof = True
        return data

    async def _recv_by(self, deadline: float) -> bytes:
        """Like _recv, but raise _Stalled when nothing arrives by ``deadline`` (loop time)."""
        if self.ahead or self.client_eof:
            return await self._recv()
        try:
            async with asyncio.timeout_at(deadline):
                return await self._recv()
        except TimeoutError:
            raise _Stalled from None

    async def _recv_body(self) -> bytes:
        """The next bytes of a request body; _Stalled when none come for ``body_stall``."""
        return await self._recv_by(asyncio.get_running_loop().time() + self.limits.body_stall)

    async def _drain_client(self) -> None:
        try:
            await self.writer.drain()
        except OSError as exc:
            raise _ClientGone(f"write failed: {exc}") from exc

    def _hung_up(self) -> bool:
        """True once the client closed its socket, not just shut down its write side.

        On Linux a unix socket reports POLLHUP only when the peer is gone entirely, while
        shutdown(SHUT_WR) (docker's CloseWrite when stdin ends) shows as POLLRDHUP alone.
        """
        try:
            poller = select.poll()
            poller.register(self.sock.fileno(), select.POLLOUT)
            events = poller.poll(0)
        except (OSError, ValueError):
            return True
        return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in events)

    async def _await_hangup(self) -> None:
        while not self._hung_up():
            await asyncio.sleep(_HANGUP_POLL_S)

    def _watch(self) -> None:
        self._cancel_watch_timer()
        if self.watcher is None or self.watcher.done():
            self.watcher = self._spawn(self._watch_client())

    def _watch_soon(self) -> None:
        if self.watch_timer is None and (self.watcher is None or self.watcher.done()):
            self.watch_timer = asyncio.get_running_loop().call_later(_WATCH_AFTER_S, self._watch)

    def _cancel_watch_timer(self) -> None:
        if self.watch_timer is not None:
            self.watch_timer.cancel()
            self.watch_timer = None

    async def _unwatch(self) -> None:
        self._cancel_watch_timer()
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.wait((watcher,))

    async def _watch_client(self) -> None:
        """While dockerd answers (logs -f, events, pull), notice a client that hangs up."""
        while not self.client_eof and len(self.ahead) < _MAX_READ_AHEAD:
            if self.client_read is None:
                self.client_read = asyncio.ensure_future(self.reader.read(READ_SIZE))
            # wait() rather than await: cancelling the watcher must leave the read pending.
            await asyncio.wait((self.client_read,))
            done, self.client_read = self.client_read, None
            try:
                data = done.result()
            except (OSError, asyncio.CancelledError):
                self.abort("client connection failed")
                return
            if data:
                self.ahead += data
            else:
                self.client_eof = True
        if self.client_eof:
            # A half-closed client may still want the answer; a closed one does not.
            await self._await_hangup()
            self.abort("client hung up while dockerd was answering")

    def _write_head(
        self,
        status: int,
        reason: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes | memoryview = b"",
    ) -> None:
        """Write a response head, and the start of its body in the same write (one syscall)."""
        self.writer.write(_head_bytes(status, reason, headers) + body)

    async def _reply(self, reply: Reply, *, head_only: bool, close: bool) -> None:
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
        self._write_head(reply.status, reason, headers, b"" if head_only else reply.body)
        await self._drain_client()

    async def _fail(self, status: int, message: str, *, head_only: bool = False) -> None:
        """Answer with a Docker-style JSON error and close the connection after it."""
        self.linger = True
        body = json.dumps({"message": message}).encode()
        with contextlib.suppress(_ClientGone):
            await self._reply(Reply(status, body), head_only=head_only, close=True)

    # -- one request -----------------------------------------------------------------------

    async def _serve_one(self) -> bool:
        """Parse, decide and answer one request; True when the connection stays open."""
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=self.gw.max_header_bytes)
        request = await self._read_head(parser)
        if request is None:
            return False
        if request.http_version not in (b"1.0", b"1.1"):
            # h11 parses any HTTP/x.y; anything but 1.x (an HTTP/2 preface, say) is not for us.
            await self._fail(505, "ds01: only HTTP/1.0 and HTTP/1.1 are supported")
            return False
        chunked, length, problem = _request_framing(request)
        if problem is not None:
            await self._fail(400, f"ds01: malformed HTTP request: {problem}")
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
        close = request.http_version != b"1.1" or _has_token(request.headers, b"close")
        has_body = chunked or bool(length)
        try:
            limit = self.gw.handler.body_limit(self.client, head)
        except Exception:  # fail closed
            self.log.exception("gateway: body_limit failed for %s %s", head.method, head.target)
            await self._fail(500, "ds01: internal error in the gateway; request not forwarded")
            return False
        body: bytes | None = None
        if not has_body:
            self._finish_request(parser)
        elif limit is not None:
            if length is not None and length > limit:
                self.unread = parser
                await self._fail(413, _too_large(limit), head_only=head_only)
                return False
            body = await self._read_body(parser, limit, head_only)
            if body is None:
                return False
        try:
            action = await self.gw.handler.decide(self.client, head, body)
        except Exception:  # fail closed
            self.log.exception("gateway: decide failed for %s %s", head.method, head.target)
            await self._fail(500, "ds01: internal error in the gateway; request not forwarded")
            return False
        body_done = not has_body or body is not None
        if isinstance(action, Reply):
            # An unread streamed body leaves the connection's framing unknown: close it, but
            # only once the client has finished sending that body (see _lingering_close).
            keep = body_done and not close
            if not body_done:
                self.linger, self.unread = True, parser
            await self._reply(action, head_only=head_only, close=not keep)
            return keep
        if not isinstance(action, Forward):
            self.log.error("gateway: handler returned %r", type(action).__name__)
            await self._fail(500, "ds01: internal error in the gateway; request not forwarded")
            return False
        return await _Exchange(self, parser, action, body, chunked, length, close).run()

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
                    await self._fail(status, f"ds01: malformed HTTP request: {exc}")
                return None
            if event is h11.NEED_DATA:
                try:
                    data = await self._recv_by(deadline)
                except _Stalled:
                    return await self._head_timed_out(fed)
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
            await self._fail(431, "ds01: request headers too large")
            return None
        return event

    async def _head_timed_out(self, fed: int) -> None:
        if fed:  # a head begun and not finished: say why before closing
            self.log.debug("gateway: pid %d stalled mid-head", self.client.peer.pid)
            await self._fail(408, head_timeout_message(self.limits.head_timeout))
        else:  # an idle connection: close it, as any HTTP server does
            self.log.debug("gateway: closing idle connection from pid %d", self.client.peer.pid)
        return None

    def _finish_request(self, parser: h11.Connection) -> None:
        """Consume the end of a body-less request and keep what follows it."""
        event = parser.next_event()
        assert isinstance(event, h11.EndOfMessage), event
        self._stash(parser)

    def _stash(self, parser: h11.Connection) -> None:
        rest, closed = parser.trailing_data
        if rest:
            self.ahead[:0] = rest
        if closed:
            self.client_eof = True

    def _continue(self, parser: h11.Connection) -> None:
        # We answer Expect: 100-continue ourselves and never forward it: the body goes
        # through us, and dockerd's own 100 would arrive at the wrong moment.
        if parser.they_are_waiting_for_100_continue:
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _read_body(self, parser: h11.Connection, limit: int, head_only: bool) -> bytes | None:
        """Buffer a body the handler wants to see; None after answering 413 or a bad body."""
        self._continue(parser)
        parts: list[bytes] = []
        size = 0
        admission, uid = self.gw.admission, self.client.peer.uid
        try:
            while True:
                try:
                    event = parser.next_event()
                except h11.RemoteProtocolError as exc:
                    if not self.client_eof:
                        await self._fail(400, f"ds01: malformed HTTP request body: {exc}")
                    return None
                if event is h11.NEED_DATA:
                    try:
                        parser.receive_data(await self._recv_body())
                    except _Stalled:
                        await self._fail(408, body_stall_message(self.limits.body_stall))
                        return None
                elif isinstance(event, h11.Data):
                    if size + len(event.data) > limit:
                        self.unread = parser
                        await self._fail(413, _too_large(limit), head_only=head_only)
                        return None
                    # Bodies being buffered count against their user's budget, so one user's
                    # half-sent bodies cost the gateway a bounded amount of memory.
                    refusal = admission.charge_body(uid, len(event.data))
                    if refusal is not None:
                        self.unread = parser
                        await self._fail(refusal.status, refusal.message, head_only=head_only)
                        return None
                    size += len(event.data)
                    parts.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._stash(parser)
                    return b"".join(parts)
        finally:
            admission.refund_body(uid, size)

    # -- dockerd ---------------------------------------------------------------------------

    async def upstream(self, *, replayable: bool) -> _Upstream:
        """This connection's dockerd connection: its own, an idle one, or a new one."""
        if self.up is None:
            self.up = self.gw.take_upstream()
        up = self.up
        fresh_enough = up is not None and time.monotonic() - up.idle_since < _UPSTREAM_IDLE_S
        if up is not None and up.usable() and (replayable or fresh_enough):
            up.reused = True
            return up
        self._drop_upstream()
        reader, writer = await asyncio.open_unix_connection(self.gw.upstream, limit=_STREAM_LIMIT)
        writer.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        self.up = _Upstream(reader, writer)
        return self.up

    def _drop_upstream(self) -> None:
        if self.up is not None:
            self.up.abort()
            self.up = None


class _Exchange:
    """One forwarded request and its response."""

    def __init__(
        self,
        conn: _Connection,
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
                conn.linger, conn.unread = True, parser
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
            try:
                request = h11.Request(
                    method=self.fwd.head.method.encode("ascii"),
                    target=self.fwd.head.target.encode("ascii"),
                    headers=self._upstream_headers(),
                )
            except (h11.LocalProtocolError, UnicodeError) as exc:
                conn.log.error("gateway: handler produced an invalid request: %s", exc)
                await conn._fail(500, "ds01: internal error in the gateway; request not forwarded")
                return False
            got = await self._send_and_read_head(request)
            if got is None:
                return False
            up, response, rest = got
            if response.status_code == 101 or (
                _framing(self.method, response)[0] == _UNTIL_CLOSE
                and (self.fwd.hijack or _is_docker_stream(response))
            ):
                ok = await self._hijacked(up, response, rest)
                return False
            ok = await self._relay(up, response, rest)
            return ok and self.keep_client
        except _UpstreamGone as exc:
            # The head is already on its way to the client: all we can do is close.
            conn.log.warning(
                "gateway: dockerd broke off a response to %s: %s", self.fwd.head.method, exc
            )
            return False
        finally:
            # _stop_children cancels every helper before its first await, so none can abort
            # this task while the callbacks below run.
            await conn._stop_children()
            if not ok or not self.reuse_up:
                conn._drop_upstream()
            elif conn.up is not None:
                conn.up.idle_since = time.monotonic()
            if self.fwd.on_close is not None:
                conn.gw.run_callback("on_close", self.fwd.on_close, ok)

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
                if lname in _HOP_UPGRADE:
                    continue
                if lname == "connection":
                    tokens = [t.strip() for t in value.split(",")]
                    value = ", ".join(t for t in tokens if t and t.lower() not in _HOP_UPGRADE)
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
        self, request: h11.Request
    ) -> tuple[_Upstream, h11.Response | h11.InformationalResponse, bytes] | None:
        """Send the request; return the response head, or None after answering 502."""
        conn = self.conn
        for attempt in (1, 2):
            try:
                up = await conn.upstream(replayable=not self.streaming)
            except OSError as exc:
                await self._bad_gateway(UNREACHABLE.format(reason=exc.strerror or exc))
                return None
            hc = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_RESPONSE_HEAD)
            try:
                up.writer.write((hc.send(request) or b"") + (self.send_body or b""))
                if self.streaming:
                    if self.pump is None:
                        conn._continue(self.parser)
                        self.pump = conn._spawn(self._pump(up))
                else:
                    conn._watch_soon()
                await self._drain_up(up)
                response, rest = await self._read_head(up, hc)
                return up, response, rest
            except _UpstreamGone as exc:
                conn._drop_upstream()
                if attempt == 1 and up.reused and not exc.received and not self.streaming:
                    # dockerd closed an idle keep-alive connection just as we reused it.
                    conn.log.debug("gateway: retrying on a fresh dockerd connection")
                    continue
                await self._bad_gateway(f"ds01: the Docker daemon broke off the request ({exc})")
                return None
        return None  # pragma: no cover - the loop always returns

    async def _bad_gateway(self, message: str) -> None:
        await self.conn._stop_children()
        await self.conn._fail(502, message, head_only=self.method == b"HEAD")

    async def _drain_up(self, up: _Upstream) -> None:
        try:
            await up.writer.drain()
        except OSError as exc:
            raise _UpstreamGone(f"write failed: {exc}", received=False) from exc

    async def _read_up(self, up: _Upstream) -> bytes:
        try:
            return await up.reader.read(READ_SIZE)
        except OSError as exc:
            raise _UpstreamGone(f"read failed: {exc}") from exc

    async def _read_head(
        self, up: _Upstream, hc: h11.Connection
    ) -> tuple[h11.Response | h11.InformationalResponse, bytes]:
        received = False
        while True:
            try:
                event = hc.next_event()
            except h11.RemoteProtocolError as exc:
                raise _UpstreamGone(f"invalid response: {exc}", received=True) from exc
            if event is h11.NEED_DATA:
                data = await self._read_up(up)
                received = received or bool(data)
                hc.receive_data(data)
                continue
            if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                if not self.client_10:  # HTTP/1.0 clients must not see 1xx
                    self.conn._write_head(
                        event.status_code, event.reason, event.headers.raw_items()
                    )
                continue
            if isinstance(event, (h11.Response, h11.InformationalResponse)):
                return event, hc.trailing_data[0]
            raise _UpstreamGone("closed the connection before answering", received=received)

    async def _pump(self, up: _Upstream) -> bool:
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
                parser.receive_data(await conn._recv_body())
        except (h11.RemoteProtocolError, _ClientGone) as exc:
            conn.abort(f"client broke off its request body: {exc}")
            return False
        except _Stalled:
            # The request is already on its way to dockerd: all we can do is end both sides.
            conn.abort(f"no request body bytes for {conn.limits.body_stall:g} s")
            return False
        except OSError:
            return False  # dockerd stopped reading; its response (if any) still comes back
        conn._stash(parser)
        conn._watch()
        return True

    async def _relay(
        self, up: _Upstream, response: h11.Response | h11.InformationalResponse, rest: bytes
    ) -> bool:
        """Relay a framed response as it arrives; True once the client has all of it."""
        conn, fwd = self.conn, self.fwd
        status = response.status_code
        framing, length = _framing(self.method, response)
        dechunk = framing == _CHUNKED and self.client_10
        dockerd_closes = _has_token(response.headers, b"close")
        if framing == _UNTIL_CLOSE or dechunk or self.client_10 or dockerd_closes:
            self.keep_client = False
        if framing == _UNTIL_CLOSE or dockerd_closes:
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
            head = _head_bytes(status, response.reason, headers)
            if framing == _LENGTH:
                clean = await self._relay_length(up, rest, length, head)
            elif framing == _CHUNKED:
                clean = await self._relay_chunked(up, rest, dechunk, head)
            elif framing == _UNTIL_CLOSE:
                clean = await self._relay_until_close(up, rest, head)
            else:
                conn.writer.write(head)
                clean = not rest
            if not clean:
                self.reuse_up = False  # bytes after the response: do not trust this connection
        await conn._drain_client()
        if self.pump is not None and (not self.pump.done() or not self.pump.result()):
            # dockerd answered before taking the whole body: neither side can be reused,
            # and the client, perhaps still sending, should read our answer, not a reset.
            self.keep_client = self.reuse_up = False
            conn.linger, conn.unread = True, self.parser
        return True

    async def _answer_via_handler(
        self,
        up: _Upstream,
        response: h11.Response | h11.InformationalResponse,
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
        whole = await self._read_whole(up, *framing, rest, limit)
        if whole is None:
            self.reuse_up = False
            await self._bad_gateway(
                f"ds01: the Docker daemon's answer is larger than the gateway checks "
                f"({limit} bytes); it was not relayed"
            )
            return False
        raw, body = whole
        assert self.fwd.on_response is not None
        done, replacement = conn.gw.run_callback(
            "on_response", self.fwd.on_response, response.status_code, body
        )
        if not done:
            await conn._fail(
                500,
                "ds01: internal error in the gateway; dockerd's answer withheld",
                head_only=head_only,
            )
            return False
        if replacement is not None:
            await conn._reply(replacement, head_only=head_only, close=not self.keep_client)
            return True
        conn._write_head(response.status_code, response.reason, headers, body if dechunk else raw)
        return True

    async def _read_whole(
        self, up: _Upstream, framing: int, length: int, rest: bytes, limit: int
    ) -> tuple[bytes, bytes] | None:
        """(the body as framed on the wire, the body decoded); None once it exceeds limit."""
        if framing == _NO_BODY:
            self.reuse_up = self.reuse_up and not rest
            return b"", b""
        if framing == _LENGTH:
            if length > limit:
                return None
            body = await self._read_exact(up, rest, length)
            return body, body
        raw, body = bytearray(), bytearray()
        scanner = _ChunkScanner() if framing == _CHUNKED else None
        data = rest
        while True:
            if scanner is not None and data:
                pieces: list[memoryview] = []
                try:
                    used = scanner.feed(data, pieces)
                except _BadChunking as exc:
                    raise _UpstreamGone(f"bad chunked framing: {exc}") from exc
                raw += data[:used]
                for piece in pieces:
                    body += piece
            elif data:
                raw += data
                body += data
            # Chunk framing may cost a few bytes per payload byte; bound both.
            if len(body) > limit or len(raw) > 2 * limit + _MAX_CHUNK_LINE:
                return None
            if scanner is not None and scanner.done:
                self.reuse_up = self.reuse_up and used == len(data)
                return bytes(raw), bytes(body)
            data = await self._read_up(up)
            if not data:
                if scanner is not None:
                    raise _UpstreamGone("closed mid-response")
                return bytes(raw), bytes(body)

    async def _read_exact(self, up: _Upstream, rest: bytes, length: int) -> bytes:
        parts = [rest[:length]]
        size = len(parts[0])
        if len(rest) > length:
            self.reuse_up = False
        while size < length:
            data = await self._read_up(up)
            if not data:
                raise _UpstreamGone("closed mid-response")
            if size + len(data) > length:
                data = data[: length - size]
                self.reuse_up = False
            parts.append(data)
            size += len(data)
        return b"".join(parts)

    # The relays below send the response head with the first body bytes when they are already
    # here (one write, one syscall), else on its own before waiting for dockerd.

    async def _relay_length(self, up: _Upstream, data: bytes, left: int, head: bytes) -> bool:
        w = self.conn.writer
        while True:
            if data:
                clean = len(data) <= left
                if not clean:
                    data = data[:left]
                left -= len(data)
                w.write(head + data if head else data)
                head = b""
                if left == 0:
                    return clean
                await self.conn._drain_client()
            elif left == 0:
                w.write(head)
                return True
            if head:
                w.write(head)
                head = b""
            data = await self._read_up(up)
            if not data:
                raise _UpstreamGone("closed mid-response")

    async def _relay_chunked(self, up: _Upstream, data: bytes, dechunk: bool, head: bytes) -> bool:
        w = self.conn.writer
        scanner = _ChunkScanner()
        while True:
            if data:
                payload: list[memoryview] | None = [] if dechunk else None
                try:
                    used = scanner.feed(data, payload)
                except _BadChunking as exc:
                    raise _UpstreamGone(f"bad chunked framing: {exc}") from exc
                if payload is not None:
                    w.write(b"".join((head, *payload)))
                else:
                    w.write(head + (data if used == len(data) else data[:used]))
                head = b""
                if scanner.done:
                    return used == len(data)
                await self.conn._drain_client()
            elif head:
                w.write(head)
                head = b""
            data = await self._read_up(up)
            if not data:
                raise _UpstreamGone("closed mid-response")

    async def _relay_until_close(self, up: _Upstream, data: bytes, head: bytes) -> bool:
        w = self.conn.writer
        w.write(head + data)
        while data:
            await self.conn._drain_client()
            data = await self._read_up(up)
            w.write(data)
        return True

    async def _hijacked(
        self, up: _Upstream, response: h11.Response | h11.InformationalResponse, rest: bytes
    ) -> bool:
        """Relay the head, then pipe raw bytes both ways until dockerd closes its side."""
        conn = self.conn
        self.keep_client = self.reuse_up = False
        if self.pump is not None and not await self.pump:
            return False  # the raw stream starts only once the request is complete
        await conn._unwatch()
        if self.fwd.on_response is not None:
            # A raw stream has no answer to read first: the handler sees the status alone.
            done, replacement = conn.gw.run_callback(
                "on_response", self.fwd.on_response, response.status_code, b""
            )
            if not done or replacement is not None:
                await conn._fail(500, "ds01: internal error in the gateway; stream not relayed")
                return False
        conn._write_head(response.status_code, response.reason, response.headers.raw_items(), rest)
        to_docker = conn._spawn(self._pipe_to_docker(up))
        try:
            while True:
                await conn._drain_client()
                data = await self._read_up(up)
                if not data:
                    return True
                conn.writer.write(data)
        finally:
            to_docker.cancel()

    async def _pipe_to_docker(self, up: _Upstream) -> None:
        conn = self.conn
        w = up.writer
        try:
            while True:
                data = await conn._recv()
                if not data:
                    break
                w.write(data)
                await w.drain()
        except _ClientGone as exc:
            conn.abort(f"client broke off a hijacked stream: {exc}")
            return
        except OSError:
            return  # dockerd no longer reads; keep relaying what it still sends
        if conn._hung_up():
            conn.abort("client hung up on a hijacked stream")
            return
        # The client closed stdin but still listens: pass the half-close on (the container
        # sees EOF on stdin) and keep relaying its output until dockerd closes.
        with contextlib.suppress(OSError, RuntimeError):
            if w.can_write_eof():
                w.write_eof()
        await conn._await_hangup()
        conn.abort("client hung up on a hijacked stream")


class _ChunkScanner:
    """Follows a chunked body's framing without decoding it, so it can be relayed as it came."""

    __slots__ = ("_left", "_line", "_state", "_trailers", "done")
    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self) -> None:
        self.done = False
        self._state = self._SIZE
        self._left = 0
        self._line = bytearray()
        self._trailers = 0

    def feed(self, data: bytes, payload: list[memoryview] | None = None) -> int:
        """Consume body bytes from the start of data; return how many belong to the body.

        Chunk payload is appended to ``payload`` (as views into data) when given.
        """
        pos, end = 0, len(data)
        while pos < end:
            if self._state == self._DATA:
                take = min(self._left, end - pos)
                if payload is not None:
                    payload.append(memoryview(data)[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = self._DATA_END
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > _MAX_CHUNK_LINE:
                    raise _BadChunking("line too long")
                return end
            line = data[pos:nl]
            if self._line:
                line = bytes(self._line) + line
                self._line.clear()
            pos = nl + 1
            if not line.endswith(b"\r") or len(line) > _MAX_CHUNK_LINE:
                raise _BadChunking("line not ended by CRLF")
            line = line[:-1]
            if self._state == self._SIZE:
                size = line.split(b";", 1)[0].strip(b" \t")
                if not _CHUNK_SIZE.fullmatch(size):
                    raise _BadChunking(f"bad chunk size {size[:20]!r}")
                self._left = int(size, 16)
                self._state = self._DATA if self._left else self._TRAILER
            elif self._state == self._DATA_END:
                if line:
                    raise _BadChunking("chunk not followed by CRLF")
                self._state = self._SIZE
            else:
                if not line:
                    self.done = True
                    return pos
                self._trailers += len(line)
                if self._trailers > _MAX_TRAILERS:
                    raise _BadChunking("trailers too long")
        return end


def _body_ends(parser: h11.Connection, data: bytes) -> bool:
    """Feed a request parser more of a body we are discarding; True once the body has ended.

    A body whose framing breaks counts as ended: there is nothing more to wait for.
    """
    try:
        parser.receive_data(data)
    except RuntimeError:  # the parser already saw the client's end of file
        return True
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError:
            return True
        if event is h11.NEED_DATA:
            return False
        if not isinstance(event, h11.Data):  # EndOfMessage, or PAUSED after it
            return True


def _head_bytes(status: int, reason: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class _Headers(Protocol):
    """h11's header list (its class is not public)."""

    def raw_items(self) -> list[tuple[bytes, bytes]]: ...


def _lowered(headers: _Headers) -> list[tuple[bytes, bytes]]:
    # Iterating h11's Headers goes through the generic Sequence protocol, an item at a time;
    # raw_items() is one list. Header names compare lower-cased, as h11 normalises them.
    return [(name.lower(), value) for name, value in headers.raw_items()]


def _request_framing(request: h11.Request) -> tuple[bool, int | None, str | None]:
    """(chunked, content length, problem) of a request h11 accepted."""
    chunked = False
    length: int | None = None
    for name, value in _lowered(request.headers):
        if name == b"transfer-encoding":
            chunked = True
        elif name == b"content-length":
            length = int(value)
    if chunked and length is not None:
        # h11 lets Transfer-Encoding win, as RFC 9112 allows; a proxy must not: the two
        # framings disagreeing is the classic request-smuggling shape.
        return chunked, length, "both Content-Length and Transfer-Encoding"
    return chunked, length, None


def _framing(method: bytes, response: h11.Response | h11.InformationalResponse) -> tuple[int, int]:
    if method == b"HEAD" or response.status_code in (204, 304) or response.status_code < 200:
        return _NO_BODY, 0
    length: int | None = None
    for name, value in _lowered(response.headers):
        if name == b"transfer-encoding":
            return _CHUNKED, 0  # h11 admits no coding but chunked
        if name == b"content-length":
            length = int(value)
    if length is not None:
        return _LENGTH, length
    return _UNTIL_CLOSE, 0


def _has_token(headers: _Headers, token: bytes) -> bool:
    for name, value in _lowered(headers):
        if name == b"connection" and token in (t.strip().lower() for t in value.split(b",")):
            return True
    return False


def _is_docker_stream(response: h11.Response | h11.InformationalResponse) -> bool:
    # dockerd hijacks attach/exec without an Upgrade header too, and then answers with one of
    # its stream content types and no framing at all.
    for name, value in _lowered(response.headers):
        if name == b"content-type" and value.split(b";")[0].strip().lower() in _DOCKER_STREAMS:
            return True
    return False


def _too_large(limit: int) -> str:
    return f"ds01: request body too large for the gateway (limit {limit} bytes)"


__all__ = ["READ_SIZE", "UNREACHABLE", "Gateway"]
