"""Who is asking: the Unix user behind a request, as the daemon established it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Channel(StrEnum):
    """How the request reached dockerd; decides how far its identity can be trusted."""

    GATEWAY = "gateway"  # through ds01d's socket: identity from SO_PEERCRED
    DIRECT = "direct"  # straight to dockerd's root-only unix socket: root
    # dockerd over TCP with a client certificate: the user its CN names. The AuthZ plugin can
    # only allow or deny, so such a user gets their policy minus anything needing a rewrite.
    TLS = "tls"


@dataclass(frozen=True)
class Identity:
    uid: int | None
    user: str
    groups: frozenset[str] = field(default_factory=frozenset)
    home: str | None = None
    channel: Channel = Channel.GATEWAY
    gid: int | None = None  # primary group id (containers run as uid:gid)
    gids: tuple[int, ...] = ()  # every group id, primary included (GroupAdd)

    @property
    def is_direct(self) -> bool:
        """Root on dockerd's own socket: governed only by the policy's ``direct_access``."""
        return self.channel is Channel.DIRECT

    @property
    def is_tls(self) -> bool:
        """A TLS client-certificate user: their policy, decided without rewrites."""
        return self.channel is Channel.TLS

    def describe(self) -> str:
        uid = "" if self.uid is None else f" (uid {self.uid})"
        return f"{self.user}{uid}"


def direct_identity() -> Identity:
    """Access that bypassed the gateway on dockerd's unix socket: only root can do that."""
    return Identity(uid=None, user="root", channel=Channel.DIRECT)
