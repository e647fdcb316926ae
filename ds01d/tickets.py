"""Single-use tokens that mark a request as the gateway's, checked in-process by the plugin.

The gateway adds ``X-Ds01-Token`` to what it forwards; the plugin, in the same process, looks
the token up. Nothing outside ds01d can mint one, and clients' own X-Ds01-* headers are
stripped, so a request without a valid token is direct access.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from policy.identity import Identity

TOKEN_HEADER = "X-Ds01-Token"
_MAX_LIVE = 100_000  # tokens of streams that never got an AuthZRes are evicted oldest first


@dataclass
class Ticket:
    identity: Identity
    method: str
    target: str
    body_sha256: str | None  # the approved body, when the gateway buffered one
    issued: float
    requests_seen: int = 0
    # The gateway ran the GPU start guard for this start just before issuing the ticket: the
    # devices are re-acquired in the ledger, and doing it again would only cost an inspect.
    start_guarded: bool = False


def body_digest(body: bytes | None) -> str | None:
    """The approved body's digest; None only when no body was buffered (an empty one counts)."""
    return hashlib.sha256(body).hexdigest() if body is not None else None


class Tickets:
    def __init__(self) -> None:
        self._live: OrderedDict[str, Ticket] = OrderedDict()
        # ds01d's own calls to dockerd (inspect, events, stop) carry this multi-use secret.
        self.internal = secrets.token_urlsafe(32)

    def is_internal(self, token: str | None) -> bool:
        return token is not None and secrets.compare_digest(token, self.internal)

    def issue(
        self,
        identity: Identity,
        method: str,
        target: str,
        body: bytes | None,
        *,
        start_guarded: bool = False,
    ) -> str:
        token = secrets.token_urlsafe(24)
        self._live[token] = Ticket(
            identity,
            method,
            target,
            body_digest(body),
            time.monotonic(),
            start_guarded=start_guarded,
        )
        while len(self._live) > _MAX_LIVE:
            self._live.popitem(last=False)
        return token

    def redeem(self, token: str | None, method: str, uri: str, body: bytes | None) -> Ticket | None:
        """The ticket for an AuthZReq, once; None if the token is unknown, reused or mismatched."""
        ticket = self._live.get(token or "")
        if ticket is None or ticket.requests_seen:
            return None
        ticket.requests_seen += 1
        if ticket.method != method or ticket.target != uri:
            return None
        # dockerd shows the plugin an empty body as none at all
        seen = body_digest(body if body is not None else b"")
        if ticket.body_sha256 is not None and ticket.body_sha256 != seen:
            return None
        return ticket

    def finish(self, token: str | None) -> Ticket | None:
        """The ticket for the AuthZRes of its request; the token is then gone."""
        return self._live.pop(token or "", None)

    def discard(self, token: str) -> None:
        self._live.pop(token, None)

    def __len__(self) -> int:
        return len(self._live)
