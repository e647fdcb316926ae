"""Which free devices a request gets: the ones whose loss costs everyone else the least.

Each kind of user the policy has (an ``Audience``: may they have whole GPUs, MIG instances,
which profiles) can use some of the free devices. A device is taken so that the audience left
with the fewest usable free devices keeps as many as possible: a researcher allowed any
profile does not take the only profile students may use while another instance fits. Ties go
to the smallest instance that fits, on the GPU with the fewest free slices.

Pure and deterministic: the same inventory, busy set and audiences always give the same devices.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .inventory import Device, Inventory, sort_key

if TYPE_CHECKING:  # quota imports this module's GPUEQ_EPSILON
    from .quota import Quota


@dataclass(frozen=True)
class Audience:
    """What one kind of user may be given: the GPU rights of a policy group (or entry)."""

    full_gpu: bool  # whole GPUs (allow_full_gpu and a max_gpus above 0)
    mig: bool  # MIG instances (a max_mig_instances above 0)
    profiles: frozenset[str] | None = None  # allowed MIG profiles; None = any

    @classmethod
    def of(cls, quota: Quota) -> Audience:
        return cls(
            quota.allow_full_gpu and quota.max_gpus != 0,
            quota.max_mig != 0,
            quota.profiles,
        )

    def may_use(self, device: Device) -> bool:
        if not device.is_mig:
            return self.full_gpu
        return self.mig and (self.profiles is None or device.profile in self.profiles)


def audiences(quotas: Iterable[Quota]) -> tuple[Audience, ...]:
    """The distinct audiences of ``quotas`` (those that may use any GPU), in a fixed order.

    Each kind of right counts once, however many users share it.
    """
    found = {Audience.of(q) for q in quotas}
    usable = [a for a in found if a.full_gpu or a.mig]
    return tuple(sorted(usable, key=lambda a: (a.full_gpu, a.mig, sorted(a.profiles or ()))))


def options_left(
    free: Iterable[Device], taken: Collection[Device], others: Sequence[Audience]
) -> tuple[int, ...]:
    """Per audience, how many of the ``free`` devices it could still use once ``taken`` go,
    smallest first: compare two choices by this (larger leaves more options open)."""
    rest = [d for d in free if d not in taken]
    return tuple(sorted(sum(1 for d in rest if a.may_use(d)) for a in others))


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
    free: Iterable[Device],
    count: int,
    inventory: Inventory,
    busy: Collection[str],
    others: Sequence[Audience] = (),
) -> tuple[Device, ...]:
    """Up to ``count`` devices from ``free``, best first; fewer only if fewer are free.

    First the device whose loss leaves the ``others`` the most options (``options_left``
    over every free device of the inventory); then whole GPUs: the smallest (memory) that
    fits, then the lowest index, so big GPUs stay free; MIG instances: the smallest instance
    (fewest slices), on the GPU with the fewest free slices left, so whole MIG GPUs and large
    instances stay free for those who need them.
    """
    candidates = sorted(free, key=sort_key)
    remaining = free_slices(inventory, busy)
    everyone = [d for d in inventory.devices if d.uuid not in busy]
    chosen: list[Device] = []
    while candidates and len(chosen) < count:
        left = {d.uuid: _negated(options_left(everyone, {d}, others)) for d in candidates}
        best = min(candidates, key=lambda d: (left[d.uuid], _fit_key(d, remaining)))
        everyone.remove(best)
        chosen.append(best)
        candidates.remove(best)
        if best.is_mig:
            remaining[best.gpu_index] -= best.slices
    return tuple(chosen)


def _negated(counts: tuple[int, ...]) -> tuple[int, ...]:
    # min() picks the smallest key; the most options left must come first.
    return tuple(-n for n in counts)


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
