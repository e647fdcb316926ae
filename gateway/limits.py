"""What one gateway client may hold: connections per uid and in all, time to send, body bytes.

The gateway serves every user of the host on one socket, from one process with one open-file
limit. Without these bounds one user holding idle or half-sent connections could use up
ds01d's file descriptors (and then its own calls to dockerd, the lifecycle loop and the
reconcile fail) or its memory. ``Admission`` is the bookkeeping; the proxy asks it on accept
and while buffering a body, and answers refusals as Docker JSON errors.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field

# Defaults; ds01d's --gateway-* flags override them (the README lists them).
PER_UID_CONNECTIONS = 64
ROOT_CONNECTIONS = 512
# File descriptors kept free for everything that is not a gateway client: the AuthZ plugin
# socket (dockerd opens one connection per request it is authorising), ds01d's own pool of
# dockerd connections (32), the event stream, the lifecycle loop's /proc and cgroup reads,
# the audit log, metrics, the event loop itself, the gateway's idle dockerd connections (16)
# and refusals being answered (32).
FD_RESERVE = 256
# The last connections under the global cap are root's, so an administrator can still reach
# dockerd through the gateway while it is full.
ROOT_HEADROOM = 32
HEAD_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 120.0
BODY_STALL_S = 30.0
BODY_BYTES_PER_UID = 16 * 2**20
# A request refused while its body is still coming (a build context, a `docker load` tar) is
# answered first, then the rest of its body is read and dropped until it ends, so the client's
# writes do not fail with a broken pipe before it reads the answer. Nothing read is kept; the
# bounds cap the time and reading a client that ignores the answer can cost.
DISCARD_BYTES = 64 * 2**20
DISCARD_S = 10.0
# The fallback when the open-file limit is unlimited or unreadable.
_NOFILE_FALLBACK = 65536


def soft_nofile() -> int:
    """This process's soft open-file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _NOFILE_FALLBACK if soft == resource.RLIM_INFINITY else int(soft)


def raise_nofile() -> tuple[int, int, int]:
    """Raise the soft open-file limit to the hard one: (soft before, soft now, hard).

    systemd's LimitNOFILE= sets both; a shell's default soft limit (often 1024) would
    otherwise cap the gateway far below what the host allows ds01d.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:  # Linux refuses an unlimited NOFILE; keep a number
        target = max(soft, _NOFILE_FALLBACK) if soft != resource.RLIM_INFINITY else soft
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            target = soft
    else:
        target = soft
    return int(soft), int(target), int(hard)


def connections_for(nofile: int, reserve: int = FD_RESERVE) -> int:
    """The global gateway connection cap for an open-file limit.

    Each client connection may hold a dockerd connection too (two fds), and ``reserve`` fds
    stay free for the rest of ds01d: (nofile - reserve) // 2, and at least 1.
    """
    return max(1, (nofile - reserve) // 2)


@dataclass(frozen=True)
class GatewayLimits:
    """The bounds the gateway enforces; ``total`` None means "from the open-file limit"."""

    per_uid: int = PER_UID_CONNECTIONS
    root: int = ROOT_CONNECTIONS
    total: int | None = None
    fd_reserve: int = FD_RESERVE
    head_timeout: float = HEAD_TIMEOUT_S
    idle_timeout: float = IDLE_TIMEOUT_S
    body_stall: float = BODY_STALL_S
    body_bytes_per_uid: int = BODY_BYTES_PER_UID
    discard_bytes: int = DISCARD_BYTES
    discard_time: float = DISCARD_S

    def total_connections(self) -> int:
        if self.total is not None:
            return self.total
        return connections_for(soft_nofile(), self.fd_reserve)


@dataclass(frozen=True)
class Refusal:
    """A connection or request turned away: the HTTP status and the user's message."""

    status: int
    message: str


@dataclass
class Admission:
    """Counts open connections and buffered body bytes per uid, and says when to refuse."""

    limits: GatewayLimits
    total: int = 0
    open: int = 0
    by_uid: dict[int, int] = field(default_factory=dict)
    body_bytes: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.total = self.limits.total_connections()

    def cap_for(self, uid: int) -> int:
        return self.limits.root if uid == 0 else self.limits.per_uid

    def admit(self, uid: int) -> Refusal | None:
        """Take a connection slot for ``uid``, or say why not (and take nothing)."""
        held = self.by_uid.get(uid, 0)
        cap = self.cap_for(uid)
        if held >= cap:
            return Refusal(429, per_uid_message(uid, held, cap))
        headroom = 0 if uid == 0 else min(ROOT_HEADROOM, self.total // 8)
        if self.open >= self.total - headroom:
            return Refusal(503, global_message(self.total))
        self.by_uid[uid] = held + 1
        self.open += 1
        return None

    def release(self, uid: int) -> None:
        """Give back a slot taken by ``admit``."""
        left = self.by_uid.get(uid, 0) - 1
        if left > 0:
            self.by_uid[uid] = left
        else:
            self.by_uid.pop(uid, None)
        self.open = max(0, self.open - 1)

    def charge_body(self, uid: int, size: int) -> Refusal | None:
        """Count ``size`` more buffered body bytes against ``uid``, or refuse (charging none)."""
        held = self.body_bytes.get(uid, 0)
        cap = self.limits.body_bytes_per_uid
        if held + size > cap:
            return Refusal(429, body_budget_message(uid, cap))
        self.body_bytes[uid] = held + size
        return None

    def refund_body(self, uid: int, size: int) -> None:
        left = self.body_bytes.get(uid, 0) - size
        if left > 0:
            self.body_bytes[uid] = left
        else:
            self.body_bytes.pop(uid, None)

    def busiest(self, count: int = 3) -> list[tuple[int, int]]:
        """The uids holding the most connections, most first: (uid, connections)."""
        return sorted(self.by_uid.items(), key=lambda kv: -kv[1])[:count]


def per_uid_message(uid: int, held: int, cap: int) -> str:
    return (
        f"ds01: new connection to the Docker socket refused: uid {uid} already has {held} "
        f"open (at most {cap} per user), so one user cannot use up the gateway for everyone. "
        "To fix: close Docker clients and connections you no longer need (or stop a script "
        "that opens connections without closing them), then try again."
    )


def global_message(total: int) -> str:
    return (
        f"ds01: new connection to the Docker socket refused: the gateway is serving its "
        f"maximum of {total} connections (kept below ds01d's open-file limit so DS01 keeps "
        "working). To fix: try again in a moment; if it persists, ask an administrator "
        "(ds01d's log names the users holding the most connections)."
    )


def body_budget_message(uid: int, cap: int) -> str:
    return (
        f"ds01: request refused: uid {uid} has more than {cap // 2**20} MiB of unfinished "
        "request bodies in flight on other connections. To fix: let your other requests "
        "finish (or close clients stuck sending), then try again."
    )


def head_timeout_message(seconds: float) -> str:
    return (
        f"ds01: request headers not received within {seconds:g} s; connection closed. "
        "To fix: send the whole request head at once (a client that stalls mid-request is "
        "cut off so it cannot hold the gateway)."
    )


def body_stall_message(seconds: float) -> str:
    return (
        f"ds01: no request body bytes received for {seconds:g} s; request not forwarded. "
        "To fix: send the body without pausing, or retry."
    )


__all__ = [
    "Admission",
    "GatewayLimits",
    "Refusal",
    "connections_for",
    "raise_nofile",
    "soft_nofile",
]
