"""Who is asking: the Unix user behind a request, as the daemon established it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Channel(StrEnum):
    """How the request reached dockerd; decides how far its identity can be trusted."""

    GATEWAY = "gateway"  # through ds01d's socket: identity from SO_PEERCRED
    DIRECT = "direct"  # straight to dockerd's root-only socket (root, or TLS user)


@dataclass(frozen=True)
class Identity:
    uid: int | None
    user: str
    groups: frozenset[str] = field(default_factory=frozenset)
    home: str | None = None
    channel: Channel = Channel.GATEWAY

    @property
    def is_direct(self) -> bool:
        return self.channel is Channel.DIRECT

    def describe(self) -> str:
        uid = "" if self.uid is None else f" (uid {self.uid})"
        return f"{self.user}{uid}"


def direct_identity(tls_user: str = "") -> Identity:
    """Access that bypassed the gateway: only root (or a TLS client) can reach dockerd."""
    return Identity(uid=None, user=tls_user or "root", channel=Channel.DIRECT)
