"""Per-user parent cgroups on the host: created, limited and read back (root only).

cgroupfs driver: ds01d creates ``/ds01/<user>`` in the cgroup tree and writes the user's
``aggregate`` limits, which the kernel then enforces over all their containers together.
systemd driver: ds01d writes ``ds01-<group>-<user>.slice`` units and reloads systemd.
Failures are logged and reported; they never take the daemon down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policy.identity import Identity
from policy.limits import Limits
from policy.slices import cgroupfs_settings, slice_unit_name, slice_unit_text

log = logging.getLogger("ds01.cgroups")

PARENT = "ds01"
_V1_CONTROLLERS = ("cpu", "memory", "pids")


def cgroup_version(root: str = "/sys/fs/cgroup") -> int:
    return 2 if os.path.exists(os.path.join(root, "cgroup.controllers")) else 1


def v1_mounts(mountinfo: str = "/proc/self/mountinfo") -> dict[str, str]:
    """controller -> mount point of each cgroup v1 hierarchy (cpu may share with cpuacct)."""
    out: dict[str, str] = {}
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(tail) < 3 or tail[0] != "cgroup":
                continue
            for option in tail[2].split(","):
                out.setdefault(option, fields[4])
    return out


class CgroupfsManager:
    """The user's parent cgroup under the cgroupfs driver (cgroup v1 or v2)."""

    def __init__(
        self, root: str = "/sys/fs/cgroup", mountinfo: str = "/proc/self/mountinfo"
    ) -> None:
        self.root = root
        self.version = cgroup_version(root)
        self.mounts = v1_mounts(mountinfo) if self.version == 1 else {}

    def _dir(self, controller: str, user: str) -> Path:
        if self.version == 2:
            return Path(self.root) / PARENT / user
        return (
            Path(self.mounts.get(controller, os.path.join(self.root, controller))) / PARENT / user
        )

    def paths(self, user: str) -> dict[str, Path]:
        if self.version == 2:
            return {"": self._dir("", user)}
        return {c: self._dir(c, user) for c in _V1_CONTROLLERS}

    def ensure_user(self, user: str, aggregate: dict[str, Any]) -> list[str]:
        """Create the user's parent cgroup if needed and write its limits; returns warnings."""
        if self.version == 2:
            self._enable_v2_controllers()
        for path in self.paths(user).values():
            path.mkdir(parents=True, exist_ok=True)
        warnings = []
        for key, value in cgroupfs_settings(aggregate, self.version).items():
            controller, _, name = key.rpartition("/")
            target = self._dir(controller, user) / name
            try:
                target.write_text(value)
            except OSError as exc:
                # v1 refuses to lower memory below what is in use (EBUSY): keep the old value.
                why = "current use is higher" if exc.errno == errno.EBUSY else exc.strerror
                warnings.append(f"{user}: cannot set {name}={value} ({why})")
        for warning in warnings:
            log.warning("cgroup limits: %s", warning)
        return warnings

    def _enable_v2_controllers(self) -> None:
        parent = Path(self.root) / PARENT
        parent.mkdir(exist_ok=True)
        for where in (Path(self.root), parent):
            try:
                (where / "cgroup.subtree_control").write_text("+cpu +memory +pids")
            except OSError as exc:
                log.warning("cannot enable cgroup v2 controllers in %s: %s", where, exc)

    def limits(self, user: str) -> dict[str, str]:
        """The limits the kernel holds now, read back from its files."""
        out = {}
        for key in cgroupfs_settings({}, self.version):
            controller, _, name = key.rpartition("/")
            out[name] = _read(self._dir(controller, user) / name)
        return out

    def usage(self, user: str) -> dict[str, int | None]:
        """Memory bytes, tasks and CPU seconds the user's containers use together."""
        if self.version == 2:
            base = self._dir("", user)
            cpu = _read(base / "cpu.stat")
            usec = (
                next(
                    (
                        int(v)
                        for k, v in (ln.split() for ln in cpu.splitlines())
                        if k == "usage_usec"
                    ),
                    None,
                )
                if cpu
                else None
            )
            return {
                "memory": _int(_read(base / "memory.current")),
                "pids": _int(_read(base / "pids.current")),
                "cpu_seconds": None if usec is None else usec // 1_000_000,
            }
        cpuacct = (
            Path(self.mounts.get("cpuacct", os.path.join(self.root, "cpuacct"))) / PARENT / user
        )
        nanos = _int(_read(cpuacct / "cpuacct.usage"))
        return {
            "memory": _int(_read(self._dir("memory", user) / "memory.usage_in_bytes")),
            "pids": _int(_read(self._dir("pids", user) / "pids.current")),
            "cpu_seconds": None if nanos is None else nanos // 1_000_000_000,
        }

    def users(self) -> list[str]:
        base = self._dir("memory", "x").parent if self.version == 1 else Path(self.root) / PARENT
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

    def remove_user(self, user: str) -> None:
        """Remove the user's (empty) parent cgroup; a busy one stays."""
        for path in self.paths(user).values():
            with contextlib.suppress(OSError):
                path.rmdir()


class SystemdSliceManager:
    """The user's slice unit under the systemd driver."""

    def __init__(
        self,
        unit_dir: str = "/etc/systemd/system",
        run: Callable[..., Any] = subprocess.run,
        skip_systemctl: bool = False,
    ) -> None:
        self.unit_dir = Path(unit_dir)
        self.run = run
        self.skip_systemctl = skip_systemctl

    def ensure_user(
        self, user: str, aggregate: dict[str, Any], group: str = "default"
    ) -> list[str]:
        path = self.unit_dir / slice_unit_name(user, group)
        text = slice_unit_text(user, group, aggregate)
        if path.exists() and path.read_text() == text:
            return []
        path.write_text(text)
        if self.skip_systemctl:
            return []
        # daemon-reload applies the new limits to a running slice as well as to new ones.
        result = self.run(["systemctl", "daemon-reload"], capture_output=True, text=True)
        return (
            [f"systemctl daemon-reload failed: {result.stderr.strip()}"]
            if result.returncode
            else []
        )


class UserCgroups:
    """What the daemon calls: make sure a user's parent cgroup exists with their limits."""

    def __init__(self, manager: CgroupfsManager | SystemdSliceManager) -> None:
        self.manager = manager

    async def ensure(self, identity: Identity, limits: Limits) -> None:
        aggregate = limits.values["aggregate"]
        if isinstance(self.manager, SystemdSliceManager):
            await asyncio.to_thread(
                self.manager.ensure_user, identity.user, aggregate, limits.group
            )
        else:
            await asyncio.to_thread(self.manager.ensure_user, identity.user, aggregate)

    def refresh(self, limits_for: Callable[[str], Limits]) -> None:
        """After a policy change: rewrite every existing user's limits, containers running."""
        if isinstance(self.manager, CgroupfsManager):
            for user in self.manager.users():
                self.manager.ensure_user(user, limits_for(user).values["aggregate"])

    def report(self, users: list[str], limits_for: Callable[[str], Limits]) -> list[dict[str, Any]]:
        rows = []
        if not isinstance(self.manager, CgroupfsManager):
            return rows
        for user in users or self.manager.users():
            rows.append(
                {
                    "user": user,
                    "aggregate": limits_for(user).values["aggregate"],
                    "kernel": self.manager.limits(user),
                    "usage": self.manager.usage(user),
                }
            )
        return rows


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
