"""Deciding which devices a request gets: the kinds the policy permits, quotas, then placement.

Users allowed full GPUs get whole GPUs while their quota and the free GPUs allow, else MIG
instances; the others get MIG instances. Given the policy's audiences (who may use what), the
kind and devices are the ones that leave the others the most options (``placement``), and
whole GPUs come last where that is a tie. A count request gets devices of one kind (CUDA sees
one MIG instance per process anyway); explicit device IDs are honoured as named when the
user may have them and they are free. ``--gpus all`` means as many as the policy allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from formats.units import format_size

from . import quota as quotas
from . import refusal
from .inventory import Device, Inventory
from .placement import Audience, options_left, pick, within_gpueq
from .quota import Quota, Usage
from .refusal import Holder, Refusal
from .request import GpuRequest

# busy: UUID -> who holds it (None: promised to an earlier request waiting in the queue).
Busy = Mapping[str, Holder | None]

_NAMES = {"gpu": ("whole GPU", "whole GPUs"), "mig": ("MIG instance", "MIG instances")}


def plan(
    request: GpuRequest,
    quota: Quota,
    usage: Usage,
    inventory: Inventory,
    busy: Busy,
    now: float,
    others: Sequence[Audience] = (),
) -> tuple[Device, ...] | Refusal:
    """The devices to reserve for ``request``, or why not.

    ``others``: the policy's audiences (``placement.audiences``); none keeps the plain order.
    """
    if request.explicit:
        return _plan_explicit(request, quota, usage, inventory, busy, now)
    if (
        request.count is not None
        and quota.per_container is not None
        and request.count > quota.per_container
    ):
        return refusal.per_container(quota.per_container, request.count)
    kinds = permitted_kinds(request, quota)
    if not kinds:
        code = refusal.QUOTA_GPUS if quota.allow_full_gpu else refusal.QUOTA_MIG
        return refusal.quota_count(code, 0, 0, request.count or 1, ())
    failures: list[Refusal] = []
    found: list[tuple[Device, ...]] = []
    for kind in kinds:
        result = _plan_kind(kind, request, quota, usage, inventory, busy, now, others)
        if isinstance(result, Refusal):
            failures.append(result)
        elif not others:
            return result
        else:
            found.append(result)
    if found:
        return _kindest(found, inventory, busy, others)
    # Waiting helps with a full server, not with a quota: report capacity when it is the cause.
    waitable = [f for f in failures if f.waitable]
    if len(waitable) > 1:
        return _no_capacity(kinds, request, quota, inventory, busy, now)
    if waitable:
        return waitable[0]
    if len(failures) > 1 and all(f.code == refusal.NO_CAPACITY for f in failures):
        # More than the server has of every kind: say what it has in all.
        counts = {k: n for k in kinds if (n := len(pool(k, request, quota, inventory)))}
        return refusal.no_capacity(
            f"this server has {_count_text(counts) or 'no GPUs'} for you and you asked for "
            f"{request.count} (one container gets devices of one kind)",
            (),
            now,
            show_holders=quota.admin,
            waitable=False,
        )
    return failures[0]


def _plan_kind(
    kind: str,
    request: GpuRequest,
    quota: Quota,
    usage: Usage,
    inventory: Inventory,
    busy: Busy,
    now: float,
    others: Sequence[Audience],
) -> tuple[Device, ...] | Refusal:
    one, many = _NAMES[kind]
    usable = pool(kind, request, quota, inventory)
    if not usable:
        return _why_no_pool(kind, request, quota, inventory, now)
    left = usage.left(quota, kind)
    wanted = request.count
    if wanted is None:  # --gpus all: what the policy allows, at least 1
        caps = [c for c in (left, quota.per_container) if c is not None]
        wanted = max(1, min(caps)) if caps else len(usable)
    counts = (wanted, 0) if kind == "gpu" else (0, wanted)
    denied = quotas.check_counts(quota, usage, *counts)
    if denied:
        return denied
    if request.count is not None and request.count > len(usable):
        return refusal.no_capacity(
            f"this server has {len(usable)} {one if len(usable) == 1 else many} for you and you "
            f"asked for {request.count}",
            (),
            now,
            show_holders=quota.admin,
            waitable=False,
        )
    free = [d for d in usable if d.uuid not in busy]
    chosen = pick(free, wanted, inventory, busy, others)
    if request.all and chosen:
        chosen = within_gpueq(chosen, usage.gpueq_left(quota)) or chosen[:1]
    if not chosen or (request.count is not None and len(chosen) < request.count):
        return _no_capacity([kind], request, quota, inventory, busy, now)
    return quotas.check_gpueq(quota, usage, chosen) or chosen


def _kindest(
    choices: Sequence[tuple[Device, ...]],
    inventory: Inventory,
    busy: Busy,
    others: Sequence[Audience],
) -> tuple[Device, ...]:
    """Of one choice per kind, the one that leaves the others the most options; on a tie the
    MIG instances, so whole GPUs go last to those who may use MIG."""
    free = [d for d in inventory.devices if d.uuid not in busy]

    def key(devices: tuple[Device, ...]) -> tuple[tuple[int, ...], bool]:
        left = options_left(free, set(devices), others)
        return tuple(-n for n in left), not devices[0].is_mig

    return min(choices, key=key)


def _no_capacity(
    kinds: Sequence[str],
    request: GpuRequest,
    quota: Quota,
    inventory: Inventory,
    busy: Busy,
    now: float,
) -> Refusal:
    """Too few free devices of the kinds the user may have: how many, and who holds them."""
    usable = {k: pool(k, request, quota, inventory) for k in kinds}
    free = {k: [d for d in usable[k] if d.uuid not in busy] for k in kinds}
    if not any(free.values()):
        total = {k: len(v) for k, v in usable.items() if v}
        if sum(total.values()) == 1:
            what = f"the only {_count_text(total)[2:]} you may use is taken"
        else:
            what = f"all {_count_text(total)} you may use are taken"
    else:
        counts = {k: len(v) for k, v in free.items() if v}
        verb = "is" if sum(counts.values()) == 1 else "are"
        what = f"you asked for {request.count}, and only {_count_text(counts)} {verb} free"
        if len(counts) > 1:
            what += " (one container gets devices of one kind)"
    devices = [d for k in kinds for d in usable[k]]
    return refusal.no_capacity(what, holders_of(devices, busy), now, show_holders=quota.admin)


def _count_text(counts: Mapping[str, int]) -> str:
    """``2 whole GPUs and 11 MIG instances``."""
    return " and ".join(
        f"{n} {_NAMES[k][0] if n == 1 else _NAMES[k][1]}" for k, n in counts.items()
    )


def permitted_kinds(request: GpuRequest, quota: Quota) -> list[str]:
    """The device kinds a count request may get, preferred first."""
    kinds = []
    if quota.allow_full_gpu and quota.max_gpus != 0 and not request.profiles:
        kinds.append("gpu")
    if quota.max_mig != 0:
        kinds.append("mig")
    return kinds


def pool(kind: str, request: GpuRequest, quota: Quota, inventory: Inventory) -> list[Device]:
    """Every device of ``kind`` that could serve ``request`` for this user, free or not."""
    return [
        d
        for d in inventory.devices
        if d.kind == kind
        and (kind == "gpu" or quota.allows_profile(d.profile))
        and (not request.profiles or d.profile in request.profiles)
        and (not request.min_memory or d.memory >= request.min_memory)
    ]


def eligible(request: GpuRequest, quota: Quota, inventory: Inventory) -> tuple[Device, ...]:
    """Every device that could serve ``request`` (the queue keeps these for it)."""
    if request.explicit:
        found = (inventory.resolve(i) for i in request.device_ids)
        return tuple(d for d in found if d is not None)
    return tuple(
        d for k in permitted_kinds(request, quota) for d in pool(k, request, quota, inventory)
    )


def _why_no_pool(
    kind: str, request: GpuRequest, quota: Quota, inventory: Inventory, now: float
) -> Refusal:
    allowed = sorted(quota.profiles) if quota.profiles is not None else None
    of_kind = [d for d in inventory.devices if d.kind == kind]
    if kind == "mig" and of_kind and not any(quota.allows_profile(d.profile) for d in of_kind):
        return refusal.no_allowed_profile(allowed or ())
    wanted = [d for d in of_kind if not request.profiles or d.profile in request.profiles]
    if wanted and not any(quota.allows_profile(d.profile) for d in wanted):
        return refusal.profile_not_allowed(f"MIG profile {', '.join(request.profiles)}", allowed)
    what = _NAMES[kind][1]
    if request.profiles:
        what += f" of profile {', '.join(request.profiles)}"
    if request.min_memory:
        what += f" with {format_size(request.min_memory)} of memory"
    return refusal.no_capacity(
        f"this server has no {what} for you",
        (),
        now,
        show_holders=quota.admin,
        waitable=False,
        fix="ask an admin; `ds01 gpus` lists this server's devices",
    )


def _plan_explicit(
    request: GpuRequest, quota: Quota, usage: Usage, inventory: Inventory, busy: Busy, now: float
) -> tuple[Device, ...] | Refusal:
    devices: list[Device] = []
    for device_id in request.device_ids:
        device = inventory.resolve(device_id)
        if device is None:
            return refusal.unknown_device(device_id, _why_unknown(inventory, device_id))
        if device.kind == "gpu" and not quota.allow_full_gpu:
            return refusal.no_full_gpu(device.describe())
        if device.is_mig and not quota.allows_profile(device.profile):
            return refusal.profile_not_allowed(
                f"MIG profile {device.profile} ({device.short})", sorted(quota.profiles or ())
            )
        if device not in devices:  # "0" and GPU 0's UUID name the same device
            devices.append(device)
    denied = quotas.check(quota, usage, devices)
    if denied:
        return denied
    for device in devices:
        if device.uuid in busy:
            holder = busy[device.uuid] or promised(device, now)
            return refusal.device_busy(holder, now)
    return tuple(devices)


def promised(device: Device, now: float) -> Holder:
    """The holder shown for a device kept free for an earlier request in the queue."""
    return Holder(device.uuid, device.describe(), "the queue", None, "promised", now)


def _why_unknown(inventory: Inventory, device_id: str) -> str:
    gpu = inventory.gpu(int(device_id)) if device_id.isdigit() else inventory.gpu_by_uuid(device_id)
    if gpu is None:
        return ""
    if not gpu.usable:
        return f"GPU {gpu.index} is not usable ({gpu.problem or 'unknown problem'})"
    if gpu.mig_enabled:
        return (
            f"GPU {gpu.index} is split into MIG instances; name one by its MIG- UUID (`ds01 gpus`)"
        )
    return ""


def holders_of(devices: Sequence[Device], busy: Busy) -> tuple[Holder, ...]:
    """Who holds each of ``devices`` that is held."""
    return tuple(h for d in devices if (h := busy.get(d.uuid)) is not None)
