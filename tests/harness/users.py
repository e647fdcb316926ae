"""Creates and removes real Unix test users (needs root) for end-to-end tests."""

from __future__ import annotations

import grp
import pwd
import subprocess
from collections.abc import Iterable


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")


def ensure_group(name: str, gid: int | None = None) -> int:
    """Create group `name` if missing; returns its gid."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pass
    _run(["groupadd", *(["-g", str(gid)] if gid is not None else []), name])
    return grp.getgrnam(name).gr_gid


def ensure_user(
    name: str, uid: int | None = None, groups: Iterable[str] = ()
) -> tuple[int, int, str]:
    """Create user `name` (with home) if missing, add it to `groups`; returns (uid, gid, home)."""
    groups = list(groups)
    for group in groups:
        ensure_group(group)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "-m", "-s", "/bin/sh"]
        if uid is not None:
            cmd += ["-u", str(uid)]
        if groups:
            cmd += ["-G", ",".join(groups)]
        _run([*cmd, name])
        entry = pwd.getpwnam(name)
    else:
        if uid is not None and entry.pw_uid != uid:
            raise ValueError(f"user {name} exists with uid {entry.pw_uid}, not {uid}")
        missing = [g for g in groups if name not in grp.getgrnam(g).gr_mem]
        if missing:
            _run(["usermod", "-a", "-G", ",".join(missing), name])
    return entry.pw_uid, entry.pw_gid, entry.pw_dir


def remove_user(name: str) -> None:
    """Delete user `name` and its home (no error if absent)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    # userdel exits 12 when it cannot remove the mail spool, which is harmless here.
    result = subprocess.run(["userdel", "-r", "-f", name], capture_output=True, text=True)
    if result.returncode not in (0, 12):
        raise RuntimeError(f"userdel {name} failed ({result.returncode}): {result.stderr.strip()}")


def remove_group(name: str) -> None:
    """Delete group `name` (no error if absent)."""
    try:
        grp.getgrnam(name)
    except KeyError:
        return
    _run(["groupdel", name])
