"""Turning a peer's uid (SO_PEERCRED) into an Identity through NSS, and spotting container peers."""

from __future__ import annotations

import grp
import os
import pwd
import re
import time
from collections.abc import Callable

from policy.identity import Channel, Identity

_CONTAINER_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$")


def identity_for_uid(uid: int) -> Identity:
    """The Unix user with ``uid``, all their groups included; unknown uids get ``uid:<n>``."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return Identity(uid=uid, user=f"uid:{uid}", groups=frozenset(), home=None)
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
        channel=Channel.GATEWAY,
    )


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


def container_of_pid(pid: int, proc: str = "/proc") -> str | None:
    """The Docker container ID a host pid runs in, read from its cgroup paths (None: host)."""
    try:
        with open(f"{proc}/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        path = line.split(":", 2)[-1]
        match = _CONTAINER_ID.search(path)
        if match:
            return match.group(1)
    return None
