"""Who is on the other end of a unix socket, as the kernel says (SO_PEERCRED).

Nothing the client sends can change this: the kernel records the connecting process's pid,
uid and gid at connect() time.
"""

from __future__ import annotations

import socket
import struct
from typing import Protocol

from gateway.types import PeerCred

# struct ucred { pid_t pid; uid_t uid; gid_t gid; } -- three 32-bit ints on Linux.
_UCRED = struct.Struct("3i")


class _Sockopts(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def peer_credentials(sock: _Sockopts) -> PeerCred:
    """The pid, uid and gid of the process that connected to this unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCred(pid=pid, uid=uid, gid=gid)
