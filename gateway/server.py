"""The gateway's server: listen on the Docker socket, admit or refuse each client, stop.

It owns what outlives a connection: the listening socket, the admission caps (connections
per uid and in all, ``limits.py``), the pool of idle dockerd connections (``upstream.py``)
and the set of live connections (``connection.py``), each served on its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.connection import CLIENT_STREAM_LIMIT, Connection
from gateway.framing import head_bytes
from gateway.limits import Admission, GatewayLimits, Refusal
from gateway.peer import peer_credentials
from gateway.types import Handler, PeerCred
from gateway.upstream import READ_SIZE, UpstreamPool

_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
# A refused connection is answered, half-closed and read from briefly so the client sees the
# answer rather than a broken pipe; at most this many at once (the rest are closed at once).
_REFUSAL_LINGER_S = 1.0
_REFUSAL_LINGER_BYTES = 64 * 1024
_REFUSALS_LINGERING = 32
_REFUSAL_LOG_EVERY_S = 10.0

_T = TypeVar("_T")


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
        self.pool = UpstreamPool(upstream_socket_path)
        self.max_header_bytes = max_header_bytes
        self.limits = limits or GatewayLimits()
        self.admission = Admission(self.limits)
        self._refusing = 0
        self._refusal_logged: dict[int, tuple[float, int]] = {}
        self.log = logger or logging.getLogger("ds01.gateway.proxy")
        self._server: asyncio.AbstractServer | None = None
        self._path: str | None = None
        self._inode: tuple[int, int] | None = None
        self._conns: set[Connection] = set()

    @property
    def connections(self) -> int:
        """How many client connections are being served right now."""
        return len(self._conns)

    async def start(self, socket_path: str, mode: int = 0o666) -> None:
        """Listen on ``socket_path``; the socket is never reachable with looser rights than mode."""
        path = os.path.abspath(socket_path)
        sock = _bind(path, mode)
        st = os.stat(path)
        self._path, self._inode = path, (st.st_dev, st.st_ino)
        # asyncio listens again with its own backlog (100 by default): pass ours, or a burst of
        # clients connecting at once (Go clients connect non-blocking) gets EAGAIN.
        self._server = await asyncio.start_unix_server(
            self._serve, sock=sock, limit=CLIENT_STREAM_LIMIT, backlog=_BACKLOG
        )
        self.log.debug("gateway listening on %s, forwarding to %s", path, self.upstream)

    async def stop(self) -> None:
        """Stop listening, end every connection (and its dockerd side), remove the socket."""
        self.pool.stopping = True
        if self._server is not None:
            self._server.close()
        conns = list(self._conns)
        for conn in conns:
            conn.abort("the gateway is stopping")
        tasks = [c.task for c in conns if c.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        self.pool.close()
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
            conn = Connection(self, reader, writer, peer)
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
            writer.write(head_bytes(refusal.status, reason, headers) + body)
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


def _bind(path: str, mode: int) -> socket.socket:
    """A listening unix socket at ``path`` that appears there already carrying ``mode``."""
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
    return sock


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        # Never delete a file someone put there: the path is probably misconfigured.
        raise FileExistsError(f"{path} exists and is not a socket")
    os.unlink(path)


__all__ = ["Gateway"]
