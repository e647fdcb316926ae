"""An in-memory cgroup backend behind ``ds01d.ports.CgroupBackend``, for the daemon's unit tests.

It keeps, per user, the control files the cgroupfs driver would write (``policy.slices``'
``cgroupfs_settings``, the same values ``CgroupfsManager`` writes) and answers ``report`` in
``UserCgroups``' shape. Like the real one it never raises for a bad user: the problem is a
warning. tests/integration/test_cgroup_contract.py runs the same assertions on it and on
``UserCgroups`` over a real cgroup tree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from policy.identity import Identity
from policy.limits import Limits
from policy.slices import cgroup_parent, cgroupfs_dir_name, cgroupfs_settings


class FakeCgroupBackend:
    """Each user's parent cgroup as the kernel would hold it (cgroupfs driver, v1 or v2)."""

    def __init__(self, version: int = 2) -> None:
        self.version = version
        self.kernel: dict[str, dict[str, str]] = {}  # user -> control file -> value
        self.builds: dict[str, str] = {}

    async def ensure(self, identity: Identity, limits: Limits) -> list[str]:
        return self._ensure(identity.user, limits.aggregate.as_dict())

    def _ensure(self, user: str, aggregate: Mapping[str, Any]) -> list[str]:
        try:
            cgroupfs_dir_name(user)  # the real one's rule for names that cannot be a cgroup
        except ValueError as exc:
            return [f"{user}: {exc}"]
        self.kernel[user] = cgroupfs_settings(aggregate, self.version)
        return []

    def refresh(self, limits_for: Callable[[str], Limits]) -> list[str]:
        warnings: list[str] = []
        for user in sorted(self.kernel):
            try:
                limits = limits_for(user)
            except Exception as exc:  # as UserCgroups: one unknown user must not stop the others
                warnings.append(f"{user}: no limits ({exc})")
                continue
            warnings += self._ensure(user, limits.aggregate.as_dict())
        return warnings

    def ensure_builds(self, cap: Mapping[str, Any]) -> list[str]:
        self.builds = cgroupfs_settings(cap, self.version)
        return []

    def report(self, users: list[str], limits_for: Callable[[str], Limits]) -> list[dict[str, Any]]:
        rows = []
        for user in users or sorted(self.kernel):
            there = user in self.kernel
            rows.append(
                {
                    "user": user,
                    "parent": cgroup_parent("cgroupfs", user, ""),
                    "aggregate": limits_for(user).aggregate.as_dict(),
                    "kernel": dict(self.kernel.get(user, {})),
                    "usage": {  # an empty cgroup: nothing runs in it; no cgroup: not known
                        "memory": 0 if there else None,
                        "pids": 0 if there else None,
                        "cpu_seconds": 0.0 if there else None,
                        "oom_kills": 0 if there else None,
                        "forks_refused": 0 if there else None,
                    },
                }
            )
        return rows
