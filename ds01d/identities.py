"""Turning a peer's uid (SO_PEERCRED), or a TLS client certificate's name, into an Identity.

Only facts the caller cannot forge decide who they are: the kernel's peer credentials, or a
name dockerd took from a certificate the admin's CA signed, each looked up through NSS.
"""

from __future__ import annotations

import grp
import os
import pwd
import time
from collections.abc import Callable

from policy.identity import Channel, Identity


def identity_for_uid(uid: int, channel: Channel = Channel.GATEWAY) -> Identity:
    """The Unix user with ``uid``, all their groups included; unknown uids get ``uid:<n>``."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return Identity(uid=uid, user=f"uid:{uid}", groups=frozenset(), home=None, channel=channel)
    try:
        gids = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError:
        gids = [entry.pw_gid]
    names = set()
    for gid in gids:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.add(str(gid))
    return Identity(
        uid=uid,
        user=entry.pw_name,
        groups=frozenset(names),
        home=entry.pw_dir,
        channel=channel,
        gid=entry.pw_gid,
        gids=tuple(sorted(set(gids))),
    )


def identity_for_tls_user(name: str) -> Identity | None:
    """The Unix user a TLS client certificate names (its CN), or None if there is none.

    The name is trusted because the admin's CA signed it; who that user *is* (uid, groups)
    still comes from NSS, exactly as for the gateway, so both doors give one user one policy.
    """
    try:
        entry = pwd.getpwnam(name)
    except (KeyError, ValueError):  # ValueError: a name with a NUL byte
        return None
    return identity_for_uid(entry.pw_uid, Channel.TLS)


def is_unix_user(name: str) -> bool:
    """Whether ``name`` is a user of this host (NSS): such a name owns ``name/...`` images."""
    try:
        pwd.getpwnam(name)
    except (KeyError, ValueError):  # ValueError: a name with a NUL byte
        return False
    return True


class IdentityCache:
    """``identity_for_uid`` remembered for a few seconds: NSS lookups (and group lists) cost
    more than the rest of a decision. Keyed by uid only, never by pid, which is reused."""

    def __init__(self, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._cache: dict[int, tuple[float, Identity]] = {}

    def __call__(self, uid: int) -> Identity:
        now = self.clock()
        hit = self._cache.get(uid)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        if len(self._cache) > 10_000:
            self._cache.clear()
        identity = identity_for_uid(uid)
        self._cache[uid] = (now, identity)
        return identity
