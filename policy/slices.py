"""Per-user parent cgroups, as data: their names and the limits written into them.

Every DS01 container of a user is created under one parent (``HostConfig.CgroupParent``),
so the user's ``aggregate`` limits hold for all their containers together. This module only
names things and computes values; ``authz_plugin/cgroups.py`` writes them.
"""

from __future__ import annotations

from typing import Any

CPU_PERIOD_US = 100_000


def cgroup_parent(driver: str, user: str, group: str) -> str:
    """The CgroupParent for a user's containers: the one place this name is built."""
    if driver == "systemd":
        return slice_unit_name(user, group)
    return f"/ds01/{user}"


def systemd_escape(name: str) -> str:
    """``systemd-escape`` for one unit-name component ('-' would nest slices)."""
    out = []
    for i, ch in enumerate(name):
        if ch.isascii() and (ch.isalnum() or ch in ":_" or (ch == "." and i > 0)):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


def slice_unit_name(user: str, group: str) -> str:
    """``ds01-<group>-<user>.slice``, which systemd nests under ds01-<group>.slice, ds01.slice."""
    return f"ds01-{systemd_escape(group)}-{systemd_escape(user)}.slice"


def slice_unit_text(user: str, group: str, aggregate: dict[str, Any]) -> str:
    """The slice unit holding a user's aggregate limits (systemd cgroup driver)."""
    cpus, memory, pids = aggregate.get("cpus"), aggregate.get("memory"), aggregate.get("pids")
    lines = [
        "# Written by ds01d from /etc/ds01/policy.yaml; changes here are overwritten.",
        "[Unit]",
        f"Description=DS01 containers of {user} ({group})",
        "",
        "[Slice]",
        "CPUAccounting=yes",
        "MemoryAccounting=yes",
        "TasksAccounting=yes",
    ]
    if cpus is not None:
        lines.append(f"CPUQuota={round(cpus * 100)}%")
    lines.append(f"MemoryMax={'infinity' if memory is None else memory}")
    lines.append(f"TasksMax={'infinity' if pids is None else pids}")
    return "\n".join(lines) + "\n"


def cgroupfs_settings(aggregate: dict[str, Any], version: int) -> dict[str, str]:
    """Kernel files and values for a user's parent cgroup (cgroupfs driver, v1 or v2)."""
    cpus, memory, pids = aggregate.get("cpus"), aggregate.get("memory"), aggregate.get("pids")
    quota = None if cpus is None else round(cpus * CPU_PERIOD_US)
    if version == 2:
        return {
            "cpu.max": f"{'max' if quota is None else quota} {CPU_PERIOD_US}",
            "memory.max": "max" if memory is None else str(memory),
            "pids.max": "max" if pids is None else str(pids),
        }
    return {
        "cpu/cpu.cfs_period_us": str(CPU_PERIOD_US),
        "cpu/cpu.cfs_quota_us": "-1" if quota is None else str(quota),
        "memory/memory.limit_in_bytes": "-1" if memory is None else str(memory),
        "pids/pids.max": "max" if pids is None else str(pids),
    }
