"""The bytes of one gateway client: reads that survive a cancelled watch, writes, hang-ups.

``ClientStream`` is the part of a client connection that moves bytes: a read left pending
by the hang-up watch is taken over by whoever reads next (so cancelling the watch never
loses bytes), bytes read ahead of a request wait in ``ahead``, and helper tasks (a body
pump, a hijacked stream's pipe) are tracked so the connection can stop them all.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Coroutine, Iterable
from typing import Any

from gateway.client_end import ClientGone, Stalled
from gateway.framing import head_bytes
from gateway.upstream import READ_SIZE, WRITE_HIGH_WATER

# Bytes of a pipelined next request we hold while a response is still being relayed.
_MAX_READ_AHEAD = 64 * 1024
_HANGUP_POLL_S = 1.0
# Most answers take milliseconds: watching the client for a hang-up (a task and a pending read)
# only pays off on long ones (logs -f, events, pull), so the watch starts after a moment.
_WATCH_AFTER_S = 0.2


class ClientStream:
    """A client socket's reads, writes, hang-up watch and helper tasks."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body_stall: float
    ) -> None:
        self.reader, self.writer = reader, writer
        self.body_stall = body_stall
        self.sock = writer.get_extra_info("socket")
        self.task = asyncio.current_task()
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
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def abort(self, reason: str) -> None:
        """End this connection now, from any task; the first reason wins."""
        if self.aborted is not None or self.task is None:
            return
        self.aborted = reason
        self.task.cancel()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.children.add(task)
        task.add_done_callback(self.children.discard)
        return task

    async def stop_helpers(self) -> None:
        self._cancel_watch_timer()
        tasks = list(self.children)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self.watcher = None

    async def recv(self) -> bytes:
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
            raise ClientGone(f"read failed: {exc}") from exc
        if not data:
            self.client_eof = True
        return data

    async def _recv_by(self, deadline: float) -> bytes:
        """Like _recv, but raise Stalled when nothing arrives by ``deadline`` (loop time)."""
        if self.ahead or self.client_eof:
            return await self.recv()
        try:
            async with asyncio.timeout_at(deadline):
                return await self.recv()
        except TimeoutError:
            raise Stalled from None

    async def recv_body(self) -> bytes:
        """The next bytes of a request body; Stalled when none come for ``body_stall``."""
        return await self._recv_by(asyncio.get_running_loop().time() + self.body_stall)

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except OSError as exc:
            raise ClientGone(f"write failed: {exc}") from exc

    def hung_up(self) -> bool:
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

    async def await_hangup(self) -> None:
        while not self.hung_up():
            await asyncio.sleep(_HANGUP_POLL_S)

    def watch(self) -> None:
        self._cancel_watch_timer()
        if self.watcher is None or self.watcher.done():
            self.watcher = self.spawn(self._watch_client())

    def watch_soon(self) -> None:
        if self.watch_timer is None and (self.watcher is None or self.watcher.done()):
            self.watch_timer = asyncio.get_running_loop().call_later(_WATCH_AFTER_S, self.watch)

    def _cancel_watch_timer(self) -> None:
        if self.watch_timer is not None:
            self.watch_timer.cancel()
            self.watch_timer = None

    async def unwatch(self) -> None:
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
            await self.await_hangup()
            self.abort("client hung up while dockerd was answering")

    def send(self, data: bytes | memoryview) -> None:
        self.writer.write(data)

    def send_head(
        self,
        status: int,
        reason: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes | memoryview = b"",
    ) -> None:
        """Write a response head, and the start of its body in the same write (one syscall)."""
        self.writer.write(head_bytes(status, reason, headers) + body)
