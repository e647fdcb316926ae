"""Per-user parent cgroups, as data: their names and the limits written into them.

Every DS01 container of a user is created under one parent (``HostConfig.CgroupParent``), so
the user's ``aggregate`` limits hold for all their containers together:

- cgroupfs driver: the parent is ``/ds01/<user>`` in every cgroup hierarchy; ds01d writes the
  kernel files that :func:`cgroupfs_settings` lists.
- systemd driver: the parent is the slice ``ds01-<group>-<user>.slice``; systemd nests it under
  ``ds01-<group>.slice`` under ``ds01.slice`` (a dash in a slice name means "child of"), and
  ds01d writes the unit files that :func:`slice_units` returns.

This module is pure: it only names things and computes values. ``ds01d/host/cgroups.py``
does the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from formats.labels import LABEL_USER

# The CFS period every DS01 quota is expressed in (the kernel's and systemd's default).
CPU_PERIOD_US = 100_000
# The kernel refuses a CFS quota below 1 ms (EINVAL), in v1 and v2 alike.
MIN_CPU_QUOTA_US = 1_000

CGROUPFS_ROOT = "/ds01"
SLICE_PREFIX = "ds01"

# systemd's VALID_CHARS for unit names, minus '-' and '\\', which are escaped as well.
_UNIT_SAFE = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:_.")
# Directory names that are kept as they are under /ds01 (everything else is escaped).
_DIR_SAFE = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ._-")
# Names a cgroup v1/v2 directory already holds as control files: "tasks", "notify_on_release",
# "release_agent" and "<controller>.<file>". A user called "tasks" or "memory.max" would get
# EEXIST from mkdir (or, worse, be mistaken for a control file), so such names are escaped.
_CONTROL_FILES = frozenset({"tasks", "notify_on_release", "release_agent"})
_CONTROL_PREFIXES = frozenset(
    {
        "cgroup", "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "io", "devices",
        "freezer", "hugetlb", "net_cls", "net_prio", "perf_event", "rdma", "misc", "irq",
    }
)  # fmt: skip
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def _hex(data: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in data)


def systemd_escape(name: str) -> str:
    """Escape one unit-name component the way ``systemd-escape`` does.

    ``-`` must be escaped, or ``ds01-students-anne-marie.slice`` would nest under a slice
    ``anne``. Unlike ``systemd-escape`` (which treats its input as a path), ``/`` becomes
    ``\\x2f`` rather than ``-``: a user name is never a path, and must never nest.
    """
    out = []
    for i, ch in enumerate(name):
        # A leading '.' is escaped too: systemd never creates hidden unit names.
        if ch in _UNIT_SAFE and not (ch == "." and i == 0):
            out.append(ch)
        else:
            out.append(_hex(ch.encode()))
    return "".join(out)


def systemd_unescape(text: str) -> str:
    """The inverse of :func:`systemd_escape` (``\\xNN`` sequences back to bytes)."""
    raw = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(text):
        raw += text[pos : match.start()].encode()
        raw.append(int(match.group(1), 16))
        pos = match.end()
    raw += text[pos:].encode()
    return raw.decode(errors="surrogateescape")


def _check_name(kind: str, name: str) -> None:
    if not name:
        raise ValueError(f"empty {kind} name: a cgroup cannot be named after it")


def cgroupfs_dir_name(user: str) -> str:
    """The user's directory under ``/ds01``: the name itself whenever that is safe.

    Ordinary names (``[A-Za-z0-9._-]``, not starting with a dot, not a control-file name) are
    kept, so admins find ``/ds01/alice``. Anything else is escaped as ``systemd-escape`` would,
    which can never produce a path separator, ``.``/``..``, or an ordinary name (an escaped name
    always holds a backslash, which ordinary names never do), so no two users share a directory.
    """
    _check_name("user", user)
    reserved = user in _CONTROL_FILES or (
        "." in user and user.split(".", 1)[0] in _CONTROL_PREFIXES
    )
    if set(user) <= _DIR_SAFE and not user.startswith(".") and not reserved:
        return user
    escaped = systemd_escape(user)
    if escaped == user or reserved:
        # Only a reserved name can be unchanged by systemd_escape: escape its first character
        # (systemd_escape itself never emits an escaped letter, so this stays unambiguous).
        escaped = _hex(user[0].encode()) + systemd_escape(user[1:])
    return escaped


def cgroupfs_user_from_dir(name: str) -> str:
    """The user a directory under ``/ds01`` belongs to (inverse of :func:`cgroupfs_dir_name`)."""
    return systemd_unescape(name) if "\\" in name else name


def cgroup_parent(driver: str, user: str, group: str) -> str:
    """The CgroupParent of a user's containers: the one place this name is built."""
    if driver == "systemd":
        return slice_unit_name(user, group)
    return f"{CGROUPFS_ROOT}/{cgroupfs_dir_name(user)}"


def user_of_cgroup_parent(parent: str) -> str | None:
    """The user whose containers ``parent`` holds (inverse of :func:`cgroup_parent`, for
    either driver, whatever the user's group); None for any other parent."""
    if parent.startswith(f"{CGROUPFS_ROOT}/"):
        name = parent[len(CGROUPFS_ROOT) + 1 :]
        return cgroupfs_user_from_dir(name) if name and "/" not in name else None
    parsed = parse_slice_unit_name(parent)
    return parsed[0] if parsed is not None else None


def container_owner(labels: Mapping[str, Any], host_config: Mapping[str, Any]) -> str | None:
    """Who a container belongs to: its ``ds01.user`` label, believed only when its cgroup
    parent is that user's. DS01 sets both on every container it creates for a user (the
    gateway's create rewrite, a build's cgroupparent), while a label alone can come from the
    image: dockerd copies an image's labels onto the containers it makes itself, such as a
    legacy build's steps, which run in the builder's cgroup. None: no one's (admins only)."""
    claimed = labels.get(LABEL_USER)
    parent = host_config.get("CgroupParent")
    if not isinstance(claimed, str) or not claimed or not isinstance(parent, str):
        return None
    return claimed if user_of_cgroup_parent(parent) == claimed else None


def group_slice_name(group: str) -> str:
    """``ds01-<group>.slice``: the parent of a group's user slices."""
    _check_name("group", group)
    return f"{SLICE_PREFIX}-{systemd_escape(group)}.slice"


def slice_unit_name(user: str, group: str) -> str:
    """``ds01-<group>-<user>.slice``, nested by systemd under ds01-<group>.slice, ds01.slice."""
    _check_name("user", user)
    _check_name("group", group)
    return f"{SLICE_PREFIX}-{systemd_escape(group)}-{systemd_escape(user)}.slice"


def parse_slice_unit_name(unit: str) -> tuple[str, str] | None:
    """``(user, group)`` of a user slice name, or None for any other unit name."""
    if not unit.startswith(f"{SLICE_PREFIX}-") or not unit.endswith(".slice"):
        return None
    parts = unit[len(SLICE_PREFIX) + 1 : -len(".slice")].split("-")
    if len(parts) != 2 or not all(parts):
        return None
    return systemd_unescape(parts[1]), systemd_unescape(parts[0])


def _description_safe(text: str) -> str:
    # One line, taken literally: a newline in a name must not add a directive to the unit, and
    # systemd expands %-specifiers in Description= ("x%n" must stay "x%n").
    text = "".join(ch if ch.isprintable() else _hex(ch.encode()) for ch in text)
    return text.replace("%", "%%")


def _cpu_quota_us(cpus: float | None) -> int | None:
    if cpus is None:
        return None
    return max(MIN_CPU_QUOTA_US, round(float(cpus) * CPU_PERIOD_US))


def slice_unit_text(user: str, group: str, aggregate: Mapping[str, Any]) -> str:
    """The slice unit holding a user's aggregate limits (systemd cgroup driver).

    Unlimited values: ``MemoryMax=infinity``, ``TasksMax=infinity`` and no ``CPUQuota=``
    (systemd has no "infinity" spelling for it). ``MemorySwapMax=0`` goes with a memory limit,
    so swap cannot stretch it (as ``cgroupfs_settings`` does with memsw / memory.swap.max).
    """
    cpus, memory, pids = (aggregate.get(k) for k in ("cpus", "memory", "pids"))
    lines = [
        "# Written by ds01d from the DS01 policy; changes here are overwritten.",
        "[Unit]",
        f"Description=DS01 containers of {_description_safe(user)}",
        "",
        "[Slice]",
        "CPUAccounting=yes",
        "MemoryAccounting=yes",
        "TasksAccounting=yes",
    ]
    if cpus is not None:
        # Whole percent: CPUQuota= takes no fractions before systemd 248; at least 1%.
        lines.append(f"CPUQuota={max(1, round(float(cpus) * 100))}%")
    lines.append(f"MemoryMax={'infinity' if memory is None else int(memory)}")
    if memory is not None:
        lines.append("MemorySwapMax=0")
    lines.append(f"TasksMax={'infinity' if pids is None else int(pids)}")
    return "\n".join(lines) + "\n"


def parent_slice_texts(group: str) -> dict[str, str]:
    """The unit files of ``ds01.slice`` and ``ds01-<group>.slice`` (no limits of their own).

    systemd would create both implicitly; writing them gives them a description in
    ``systemctl status`` and keeps them from looking like strays.
    """
    header = "# Written by ds01d; changes here are overwritten.\n[Unit]\n"
    return {
        f"{SLICE_PREFIX}.slice": header + "Description=DS01 containers\n",
        group_slice_name(group): header
        + f"Description=DS01 containers of group {_description_safe(group)}\n",
    }


def slice_units(user: str, group: str, aggregate: Mapping[str, Any]) -> dict[str, str]:
    """Every unit file a user's slice needs: unit name -> text (parents first)."""
    units = parent_slice_texts(group)
    units[slice_unit_name(user, group)] = slice_unit_text(user, group, aggregate)
    return units


def cgroupfs_settings(aggregate: Mapping[str, Any], version: int) -> dict[str, str]:
    """Kernel files of the user's parent cgroup (cgroupfs driver) and the values to write.

    Keys are file names; the controller is the part before the first dot (``memory.memsw.…``
    lives in the memory hierarchy). The order is the order to write in: the CFS period before
    the quota. Files the kernel lacks (memsw without swap accounting, memory.swap.max without
    swap) are meant to be skipped by the writer. Memory covers swap too (memsw = memory in v1,
    memory.swap.max = 0 in v2), so swapping cannot stretch a user's share.
    """
    if version not in (1, 2):
        raise ValueError(f"unknown cgroup version {version!r}")
    cpus, memory, pids = (aggregate.get(k) for k in ("cpus", "memory", "pids"))
    quota = _cpu_quota_us(cpus)
    if version == 2:
        return {
            "cpu.max": f"{'max' if quota is None else quota} {CPU_PERIOD_US}",
            "memory.max": "max" if memory is None else str(int(memory)),
            "memory.swap.max": "max" if memory is None else "0",
            "pids.max": "max" if pids is None else str(int(pids)),
        }
    return {
        "cpu.cfs_period_us": str(CPU_PERIOD_US),
        "cpu.cfs_quota_us": "-1" if quota is None else str(quota),
        "memory.limit_in_bytes": "-1" if memory is None else str(int(memory)),
        "memory.memsw.limit_in_bytes": "-1" if memory is None else str(int(memory)),
        "pids.max": "max" if pids is None else str(int(pids)),
    }


def controller_of(file_name: str) -> str:
    """The controller a cgroup control file belongs to (``cpu.cfs_quota_us`` -> ``cpu``)."""
    return file_name.split(".", 1)[0]
