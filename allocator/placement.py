"""Which free devices a request gets: whole GPUs stay whole, MIG instances are packed best-fit.

Pure and deterministic: the same inventory and busy set always give the same devices.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from .inventory import Device, Inventory, sort_key


def free_slices(inventory: Inventory, busy: Collection[str]) -> dict[int, int]:
    """Free MIG compute slices per GPU index (MIG-enabled GPUs only)."""
    out: dict[int, int] = {}
    for device in inventory.devices:
        if device.is_mig:
            out.setdefault(device.gpu_index, 0)
            if device.uuid not in busy:
                out[device.gpu_index] += device.slices
    return out


def pick(
    free: Iterable[Device], count: int, inventory: Inventory, busy: Collection[str]
) -> tuple[Device, ...]:
    """Up to ``count`` devices from ``free``, best first; fewer only if fewer are free.

    Whole GPUs: the smallest (memory) that fits, then the lowest index, so big GPUs stay free.
    MIG instances: the smallest instance (fewest slices), on the GPU with the fewest free
    slices left, so whole MIG GPUs and large instances stay free for those who need them.
    """
    candidates = sorted(free, key=sort_key)
    remaining = free_slices(inventory, busy)
    chosen: list[Device] = []
    while candidates and len(chosen) < count:
        best = min(candidates, key=lambda d: _fit_key(d, remaining))
        chosen.append(best)
        candidates.remove(best)
        if best.is_mig:
            remaining[best.gpu_index] -= best.slices
    return tuple(chosen)


def _fit_key(device: Device, remaining: dict[int, int]) -> tuple[int, int, int, int, str]:
    if device.is_mig:
        return (device.slices, remaining.get(device.gpu_index, 0), *sort_key(device))
    return (device.memory, 0, *sort_key(device))


def within_gpueq(devices: Sequence[Device], budget: float | None) -> tuple[Device, ...]:
    """The longest prefix of ``devices`` whose GPU-equivalents fit ``budget`` (None: all)."""
    if budget is None:
        return tuple(devices)
    out: list[Device] = []
    total = 0.0
    for device in devices:
        if total + device.gpueq > budget + GPUEQ_EPSILON:
            break
        total += device.gpueq
        out.append(device)
    return tuple(out)


# 3 x 1/7 + 4/7 must equal 1.0 for a quota of 1: compare GPU-equivalents with a tolerance.
GPUEQ_EPSILON = 1e-9
