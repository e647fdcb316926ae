"""The gateway's connections to dockerd: one per client connection, and a pool of idle ones.

dockerd keeps no state between the requests of a connection (each is authorised on its own,
by its ticket), so a connection whose last answer was read exactly to its end may serve any
user; any doubt (a stray byte, a hijack, an error) drops it instead.
"""

from __future__ import annotations

import asyncio
import time

# Large reads keep the per-byte Python cost negligible on bulk transfers (cp, save, build).
READ_SIZE = 256 * 1024
# StreamReader pauses the socket above twice this; at the default 64 KiB it would pause and
# resume on nearly every 256 KiB read.
_STREAM_LIMIT = 1024 * 1024
WRITE_HIGH_WATER = 1024 * 1024
# An upstream connection idle longer than this is not trusted with a body we cannot replay.
_UPSTREAM_IDLE_S = 30.0
# Clean dockerd connections kept for the next client: the docker CLI connects anew for every
# command, and a connection at hand saves it a connect and a transport setup.
_IDLE_UPSTREAMS = 16


class UpstreamGone(Exception):
    """dockerd closed or broke the connection; ``received`` says whether it sent anything."""

    def __init__(self, message: str, *, received: bool = True) -> None:
        super().__init__(message)
        self.received = received


class Upstream:
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

    async def read(self) -> bytes:
        """The next bytes dockerd sends; b"" at its end of file."""
        try:
            return await self.reader.read(READ_SIZE)
        except OSError as exc:
            raise UpstreamGone(f"read failed: {exc}") from exc

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except OSError as exc:
            raise UpstreamGone(f"write failed: {exc}", received=False) from exc


class UpstreamPool:
    """Idle dockerd connections left by earlier clients, and new ones when none is at hand."""

    def __init__(self, socket_path: str) -> None:
        self.path = socket_path
        self.stopping = False
        self._idle: list[Upstream] = []

    def take(self) -> Upstream | None:
        """A clean idle dockerd connection left by an earlier client, if one is still open."""
        while self._idle:
            up = self._idle.pop()
            if up.usable():
                return up
            up.abort()
        return None

    def keep(self, up: Upstream) -> None:
        """Keep a dockerd connection whose last exchange ended cleanly, for the next client."""
        if self.stopping or not up.usable() or len(self._idle) >= _IDLE_UPSTREAMS:
            up.abort()
        else:
            self._idle.append(up)

    def close(self) -> None:
        """Keep nothing more, and close what is kept."""
        self.stopping = True
        while self._idle:
            self._idle.pop().abort()

    async def connect(self) -> Upstream:
        reader, writer = await asyncio.open_unix_connection(self.path, limit=_STREAM_LIMIT)
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        return Upstream(reader, writer)


class UpstreamSlot:
    """The dockerd connection behind one client connection, kept between its requests."""

    __slots__ = ("pool", "up")

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.up: Upstream | None = None

    async def get(self, *, replayable: bool) -> Upstream:
        """This connection's dockerd connection: its own, an idle one, or a new one."""
        if self.up is None:
            self.up = self.pool.take()
        up = self.up
        fresh_enough = up is not None and time.monotonic() - up.idle_since < _UPSTREAM_IDLE_S
        if up is not None and up.usable() and (replayable or fresh_enough):
            up.reused = True
            return up
        self.drop()
        self.up = await self.pool.connect()
        return self.up

    def drop(self) -> None:
        """Close the connection: its state after this exchange cannot be trusted."""
        if self.up is not None:
            self.up.abort()
            self.up = None

    def rest(self) -> None:
        """The exchange ended cleanly: the connection is idle from now."""
        if self.up is not None:
            self.up.idle_since = time.monotonic()

    def release(self) -> None:
        """The client connection ends: hand a clean connection to the pool."""
        if self.up is not None:
            # Only a clean connection is still held between exchanges (see Exchange.run).
            self.pool.keep(self.up)
            self.up = None
