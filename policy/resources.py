"""Per-container resources: the policy's caps applied to a create, every scheduler field checked.

A cap is only as strong as the fields next to it: ``--cpu-quota -1`` beside the NanoCpus DS01
sets leaves the CFS quota unlimited, a real-time runtime escapes CFS entirely. So every field
that can widen what a container gets is validated here, for creates and ``docker update``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from formats.units import format_size

from .decision import Denied, deny
from .limits import Limits

NANO = 1_000_000_000
# The CFS period bounds the kernel accepts (1 ms .. 1 s), in microseconds.
MIN_CPU_PERIOD, MAX_CPU_PERIOD = 1_000, 1_000_000
DEFAULT_CPU_PERIOD = 100_000

# Fields no one but an admin sets: real-time scheduling and Windows-only knobs.
_FORBIDDEN_NONZERO = {
    "CpuRealtimePeriod": "--cpu-rt-period",
    "CpuRealtimeRuntime": "--cpu-rt-runtime",
    "CpuCount": "--cpu-count",
    "CpuPercent": "--cpu-percent",
    "IOMaximumIOps": "--io-maxiops",
    "IOMaximumBandwidth": "--io-maxbandwidth",
    "KernelMemory": "--kernel-memory",
    "KernelMemoryTCP": "--kernel-memory-tcp",
}
# Fields where a negative value means "unlimited" or is meaningless.
_NON_NEGATIVE = {
    "CpuShares": "--cpu-shares",
    "CpuQuota": "--cpu-quota",
    "CpuPeriod": "--cpu-period",
    "BlkioWeight": "--blkio-weight",
    "MemoryReservation": "--memory-reservation",
    "NanoCpus": "--cpus",
}


def refuse(code: str, reason: str, fix: str) -> Denied:
    return Denied(deny(code, reason, fix))


# Resource limits that let an unprivileged process escape the CFS caps: real-time scheduling
# (SCHED_FIFO/RR up to RLIMIT_RTPRIO) is not bounded by --cpus and can starve the host.
_FORBIDDEN_ULIMITS = {"rtprio", "rttime"}


def check_ulimits(host: dict[str, Any], limits: Limits) -> None:
    """Refuse ``--ulimit`` entries that would lift a container past the CPU caps."""
    for entry in host.get("Ulimits") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("Name"), str):
            raise Denied(deny("bad_body", "an --ulimit entry is not {Name, Soft, Hard}", "", 400))
        name = entry["Name"].strip().lower()
        if name in _FORBIDDEN_ULIMITS and (entry.get("Soft") or entry.get("Hard")):
            raise refuse(
                "ulimit",
                f"--ulimit {name} is not allowed for {limits.who()}: real-time scheduling is "
                "not bounded by the CPU limits and could starve other users",
                f"drop --ulimit {name}",
            )


def check_scheduler_fields(host: dict[str, Any], limits: Limits) -> None:
    """Refuse scheduler values that could lift a container past the policy's caps."""
    check_ulimits(host, limits)
    for key, flag in _FORBIDDEN_NONZERO.items():
        if host.get(key):
            raise refuse(key.lower(), f"{flag} is not allowed for {limits.who()}", f"drop {flag}")
    for key, flag in _NON_NEGATIVE.items():
        value = host.get(key)
        if isinstance(value, int) and value < 0:
            raise refuse(
                key.lower(),
                f"{flag} {value} is not allowed: negative values mean unlimited or nothing",
                f"drop {flag}, or give a positive value within your limits (ds01 limits)",
            )
    weight = host.get("BlkioWeight") or 0
    if weight and not 10 <= weight <= 1000:
        raise refuse("blkioweight", f"--blkio-weight {weight} is out of range", "use 10 to 1000")
    period = host.get("CpuPeriod") or 0
    if period and not MIN_CPU_PERIOD <= period <= MAX_CPU_PERIOD:
        raise refuse(
            "cpuperiod",
            f"--cpu-period {period} is out of range",
            f"use {MIN_CPU_PERIOD} to {MAX_CPU_PERIOD} microseconds, or just --cpus",
        )
    if limits.memory is not None and (host.get("MemoryReservation") or 0) > limits.memory:
        raise refuse(
            "memoryreservation",
            "--memory-reservation is over your per-container memory limit",
            f"keep it at or below {format_size(limits.memory)}",
        )


def apply_resources(
    host: dict[str, Any], limits: Limits, changes: list[str], host_cpus: int | None = None
) -> None:
    """Check every field, then fill the policy's caps in where the request left them open."""
    check_scheduler_fields(host, limits)
    group = limits.who()
    _cap_int(host, "Memory", limits.memory, "--memory", group, changes, format_size)
    if limits.memory is not None:
        swap = host.get("MemorySwap") or 0
        if swap not in (0, host["Memory"]):
            raise refuse(
                "memory_swap",
                "--memory-swap is not allowed: containers get no swap beyond --memory",
                "drop --memory-swap",
            )
        host["MemorySwap"] = host["Memory"]
    _cap_int(host, "ShmSize", limits.shm_size, "--shm-size", group, changes, format_size)
    _cap_int(host, "PidsLimit", limits.pids_limit, "--pids-limit", group, changes, str)
    # One container can never use more than the user's whole aggregate (v1 refuses it).
    caps = [c for c in (limits.max_cpus, limits.aggregate.cpus) if c is not None]
    _cap_cpus(host, min(caps) if caps else None, group, changes, host_cpus)


def _cap_int(
    host: dict[str, Any],
    key: str,
    cap: int | None,
    flag: str,
    group: str,
    changes: list[str],
    fmt: Callable[[int], str],
) -> None:
    if cap is None:
        return
    value = host.get(key) or 0
    if value <= 0:  # unset, or "unlimited" (-1): apply the policy's value
        host[key] = cap
        changes.append(f"{key}={cap}")
    elif value > cap:
        raise refuse(
            key.lower(),
            f"{flag} {fmt(value)} is over the per-container limit of {fmt(cap)} for {group}",
            f"ask for at most {flag} {fmt(cap)}",
        )


def _cap_cpus(
    host: dict[str, Any],
    max_cpus: float | None,
    group: str,
    changes: list[str],
    host_cpus: int | None = None,
) -> None:
    if max_cpus is None:
        return
    nano = host.get("NanoCpus") or 0
    quota, period = host.get("CpuQuota") or 0, host.get("CpuPeriod") or 0
    if nano and (quota or period):
        raise refuse(
            "cpu_quota",
            "--cpus cannot be combined with --cpu-quota or --cpu-period",
            "use --cpus alone",
        )
    if period and not quota:
        raise refuse(
            "cpu_quota",
            "--cpu-period without --cpu-quota leaves the CPU time unlimited",
            "use --cpus alone",
        )
    asked = nano / NANO if nano else (quota / (period or DEFAULT_CPU_PERIOD) if quota else None)
    if asked is not None and asked > max_cpus + 1e-9:
        raise refuse(
            "max_cpus",
            f"--cpus {asked:g} is over the per-container limit of {max_cpus:g} CPUs for {group}",
            f"ask for at most --cpus {max_cpus:g}",
        )
    if asked is None:  # the default: the cap, or the whole host if it is smaller
        host["NanoCpus"] = int(min(max_cpus, host_cpus or max_cpus) * NANO)
        changes.append(f"NanoCpus={host['NanoCpus']}")


def check_update(body: dict[str, Any], limits: Limits) -> None:
    """``docker update``: the same scheduler rules; 0 means "unchanged" there."""
    check_scheduler_fields(body, limits)
    caps = (
        ("Memory", limits.memory, "--memory"),
        ("MemorySwap", limits.memory, "--memory-swap"),
        ("PidsLimit", limits.pids_limit, "--pids-limit"),
        ("NanoCpus", None if limits.max_cpus is None else int(limits.max_cpus * NANO), "--cpus"),
    )
    for key, cap, flag in caps:
        value = body.get(key)
        if cap is None or value in (None, 0):
            continue
        if value < 0 or value > cap:
            raise refuse(
                "update_raise",
                f"docker update {flag} would raise your limit above {limits.who()}'s",
                f"keep {flag} at or below the per-container limit (ds01 limits)",
            )
    if limits.max_cpus is not None and (body.get("CpuQuota") or body.get("CpuPeriod")):
        raise refuse("update_raise", "docker update --cpu-quota is not allowed", "use --cpus")
