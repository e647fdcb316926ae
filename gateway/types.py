"""The contract between the gateway's data plane (``connection.py``, ``exchange.py``) and the handler.

The proxy speaks HTTP and knows nothing of policy; the handler speaks policy and never touches
a socket. These value types are everything that passes between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class PeerCred:
    """The process on the other end of a unix socket, as the kernel recorded it at connect."""

    pid: int
    uid: int
    gid: int


@dataclass(eq=False)
class Client:
    """One client connection as the handler sees it.

    ``peer`` is fixed when the client connects; ``context`` is the handler's to fill (with the
    identity it derives from ``peer``), so that work is done once per connection.
    """

    peer: PeerCred
    context: Any = None


@dataclass(frozen=True)
class RequestHead:
    """One parsed request head: method, raw request-target and headers in the order received."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    http_version: str = "1.1"

    def header(self, name: str) -> str | None:
        """The first value of a header, looked up case-insensitively; None when absent."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


@dataclass
class Forward:
    """Send this request to dockerd and relay its answer.

    ``body`` replaces the request body (the proxy sets Content-Length and drops
    Transfer-Encoding); None forwards the client's body unchanged (the buffered one, or the
    stream as it arrives). With ``on_response``, dockerd's whole answer (its body decoded, at
    most ``response_limit`` bytes, else the client gets a 502) is read before the client sees
    any of it; ``on_response(status, body)`` returns None to relay it unchanged, or a Reply to
    send instead. ``on_close(ok)`` runs exactly once when the exchange ends: ok is True when
    the client got the whole answer. Both are plain functions: they run to completion between
    two awaits, so tearing the connection down can never interrupt them. ``hijack`` marks
    routes dockerd hijacks (attach, exec start): once dockerd answers 101, or a body-less
    stream, the connection becomes a raw two-way pipe.
    """

    head: RequestHead
    body: bytes | None = None
    response_limit: int = 0
    on_response: Callable[[int, bytes], Reply | None] | None = None
    on_close: Callable[[bool], None] | None = None
    hijack: bool = False


@dataclass
class Reply:
    """Answer the client directly; dockerd is never contacted."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


class Handler(Protocol):
    """What the proxy asks about every request it parses."""

    def body_limit(self, client: Client, head: RequestHead) -> int | None:
        """None streams the body to dockerd; an int buffers it (413 above it) for decide()."""
        ...

    async def decide(
        self, client: Client, head: RequestHead, body: bytes | None
    ) -> Forward | Reply:
        """Forward the request (possibly rewritten) or answer it directly."""
        ...
