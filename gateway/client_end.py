"""The seam between a client connection and the exchange it is running: ``ClientEnd``.

An ``Exchange`` (one forwarded request and its answer, ``exchange.py``) sees its client
connection (``connection.py``) only through this Protocol: the bytes to and from the client,
the answers the gateway writes itself, the helper tasks it may start, the dockerd connection
held for the client, and the handler's callbacks. Everything else about the connection (head
parsing, timeouts, admission, the lingering close) is the connection's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

import h11

from gateway.limits import GatewayLimits
from gateway.types import Reply
from gateway.upstream import UpstreamSlot

_T = TypeVar("_T")


class ClientGone(Exception):
    """The client hung up or broke its side of the exchange."""


class Stalled(Exception):
    """The client sent nothing within the time it is given (a head or a body byte)."""


class ClientEnd(Protocol):
    """What an exchange may ask of the client connection it runs on."""

    log: logging.Logger
    limits: GatewayLimits
    upstream: UpstreamSlot  # the dockerd connection held for this client

    # -- bytes to the client ------------------------------------------------------------
    def send(self, data: bytes | memoryview) -> None:
        """Queue bytes for the client (``drain`` waits until they are taken)."""
        ...

    def send_head(
        self,
        status: int,
        reason: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes | memoryview = b"",
    ) -> None:
        """A response head, and the start of its body in the same write."""
        ...

    async def drain(self) -> None:
        """Wait while the client is slow to read; ClientGone when it broke off."""
        ...

    async def reply(self, reply: Reply, *, head_only: bool, close: bool) -> None:
        """Answer from the gateway itself."""
        ...

    async def fail(self, status: int, message: str, *, head_only: bool = False) -> None:
        """Answer a Docker JSON error and close the connection after it."""
        ...

    # -- bytes from the client ----------------------------------------------------------
    async def recv(self) -> bytes:
        """The next bytes from the client; b"" once it has shut down its write side."""
        ...

    async def recv_body(self) -> bytes:
        """The next bytes of a request body; Stalled when none come in time."""
        ...

    def send_continue(self, parser: h11.Connection) -> None:
        """Answer ``Expect: 100-continue`` if the client waits for it."""
        ...

    def stash(self, parser: h11.Connection) -> None:
        """Keep what the client sent after this request (a pipelined next one)."""
        ...

    def discard_rest(self, parser: h11.Connection) -> None:
        """Close after this exchange, once the client finished sending this request's body."""
        ...

    # -- helpers and the client's hang-up -----------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """A helper task, cancelled by ``stop_helpers`` and when the connection ends."""
        ...

    async def stop_helpers(self) -> None:
        """Cancel every helper task and the hang-up watch, and wait for them."""
        ...

    def watch(self) -> None:
        """Notice now when the client hangs up while dockerd answers."""
        ...

    def watch_soon(self) -> None:
        """Like ``watch``, but only once the answer takes longer than a moment."""
        ...

    async def unwatch(self) -> None:
        """Stop watching the client (its bytes are the exchange's to read now)."""
        ...

    def hung_up(self) -> bool:
        """True once the client closed its socket, not just its write side."""
        ...

    async def await_hangup(self) -> None:
        """Return once the client closed its socket."""
        ...

    def abort(self, reason: str) -> None:
        """End the connection now, from any task."""
        ...

    # -- the handler's callbacks --------------------------------------------------------
    def run_callback(
        self, what: str, callback: Callable[..., _T], *args: Any
    ) -> tuple[bool, _T | None]:
        """(True, what the callback returned), or (False, None) when it raised."""
        ...
