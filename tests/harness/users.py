"""Creates and removes real Unix test users (needs root) for end-to-end tests.

Every user made here carries the marker GECOS ``ds01-test`` and is entered in the host ledger
(tests/harness/host_ledger.py), which deletes it when the last test session using it ends;
a marked user left by a run that died is adopted and deleted the same way. A user without the
marker is never deleted.
"""

from __future__ import annotations

import grp
import pwd
import subprocess
from collections.abc import Iterable

from tests.harness.host_ledger import (
    USER_MARKER,
    ensure_claimed_group,
    ensure_claimed_user,
    is_claimed,
    is_marked_user,
    release,
)


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")


def ensure_group(name: str, gid: int | None = None) -> int:
    """Create group `name` if missing; returns its gid."""
    ensure_claimed_group(
        name, lambda: _run(["groupadd", *(["-g", str(gid)] if gid is not None else []), name])
    )
    return grp.getgrnam(name).gr_gid


def ensure_user(
    name: str, uid: int | None = None, groups: Iterable[str] = ()
) -> tuple[int, int, str]:
    """Create user `name` (with home) if missing, add it to `groups`; returns (uid, gid, home)."""
    groups = list(groups)
    for group in groups:
        ensure_group(group)

    def create() -> None:
        cmd = ["useradd", "-m", "-s", "/bin/sh", "-c", USER_MARKER]
        if uid is not None:
            cmd += ["-u", str(uid)]
        if groups:
            cmd += ["-G", ",".join(groups)]
        _run([*cmd, name])

    ensure_claimed_user(name, create)
    entry = pwd.getpwnam(name)
    if uid is not None and entry.pw_uid != uid:
        raise ValueError(f"user {name} exists with uid {entry.pw_uid}, not {uid}")
    missing = [g for g in groups if name not in grp.getgrnam(g).gr_mem]
    if missing:
        _run(["usermod", "-a", "-G", ",".join(missing), name])
    return entry.pw_uid, entry.pw_gid, entry.pw_dir


def remove_user(name: str) -> None:
    """Delete test user `name` and its home now (no error if absent).

    Only a user the suite made (with the marker) is deleted; any other raises.
    """
    try:
        pwd.getpwnam(name)
    except KeyError:
        release("user", name)
        return
    if not is_marked_user(name):
        raise RuntimeError(f"{name} was not made by the test suite (no {USER_MARKER!r} GECOS)")
    release("user", name)  # the ledger deletes it unless another live session still uses it
    if not is_marked_user(name) or is_claimed("user", name):
        return
    # userdel exits 12 when it cannot remove the mail spool, which is harmless here.
    result = subprocess.run(["userdel", "-r", "-f", name], capture_output=True, text=True)
    if result.returncode not in (0, 12):
        raise RuntimeError(f"userdel {name} failed ({result.returncode}): {result.stderr.strip()}")


def remove_group(name: str) -> None:
    """Delete group `name` now if the suite made it and no other live session uses it."""
    release("group", name)
