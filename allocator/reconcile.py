"""Rebuilding allocations from Docker's containers and their ``ds01.*`` labels.

Docker is the source of truth: after a crash (or periodically) the ledger is what the
containers say. But a label is only a claim: an image can carry ``ds01.*`` labels, and root
can create anything. A container's ``ds01.devices`` is trusted only when

1. dockerd really gives it exactly those devices (its ``HostConfig.DeviceRequests``),
2. every device is in the inventory and not already held by an earlier verified holder, and
3. its owner's (``ds01.user``) quota allows them on top of what they already hold.

Anything else is reported as a ``Conflict`` and never recorded for that user; a running
container that really has GPUs keeps them held as "outside DS01" so nobody is double-booked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from formats.labels import (
    LABEL_ALLOCATED_AT,
    LABEL_DEVICES,
    LABEL_GROUP,
    LABEL_USER,
    parse_devices,
    parse_time,
    parse_uid,
)

from . import quota as quotas
from .inventory import Device, Inventory
from .quota import Quota, QuotaLimits, Usage

if TYPE_CHECKING:
    from .ledger import Allocation

# Docker container states: these use their devices now.
RUNNING_STATES = frozenset({"running", "restarting", "paused"})
STOPPED_STATES = frozenset({"exited", "dead"})
OUTSIDE_USER = "(outside DS01)"


@dataclass(frozen=True)
class ContainerSummary:
    """What the daemon tells the ledger about one container (from ``docker ps -a``/inspect)."""

    id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    state: str = "created"  # created | running | paused | restarting | exited | dead | removing
    finished_at: float | None = None  # epoch seconds, for stopped containers
    # Devices dockerd gives it: the DeviceIDs of its DeviceRequests that the nvidia driver
    # serves (indexes, UUIDs, or "all" for a count). () = none. None: the daemon did not
    # inspect it, so a ds01.devices claim cannot be verified and is not trusted.
    gpu_devices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Conflict:
    """Something in Docker's state DS01 did not cause and will not silently fix."""

    # double_claim | outside_ds01 | unknown_device | bad_labels | unverified_claim | over_quota
    kind: str
    message: str  # for the log and for admins
    containers: tuple[str, ...] = ()
    device: str | None = None
    kept_by: str | None = None  # the container (or reservation) the ledger gave it to


@dataclass
class _Claim:
    container: ContainerSummary
    user: str
    uid: int | None
    group: str
    devices: tuple[str, ...]
    since: float
    running: bool
    hold_until: float | None
    held: bool
    outside: bool


# How long a stopped container keeps its devices, from its owner (name, uid) and its labels:
# the broker's ``hold_after_stop``, the very function a stop uses, so the two cannot drift.
HoldFor = Callable[[str, "int | None", Mapping[str, str]], "float | None"] | float | None


LimitsFor = Callable[[str, "int | None"], "QuotaLimits"]


def reconstruct(
    containers: Iterable[ContainerSummary],
    inventory: Inventory,
    reserved: Sequence[Allocation],
    now: float,
    *,
    hold_for: HoldFor = 0.0,
    priority_for: Callable[[str], int] | None = None,
    limits_for: LimitsFor | None = None,
    held: Sequence[Allocation] = (),
) -> tuple[list[Allocation], list[Conflict]]:
    """Allocations the containers and the in-flight ``reserved`` ones imply, and conflicts.

    ``held``: allocations already verified (kept by the caller, not returned): their devices
    are taken and they count against their owners' quotas. ``limits_for``: each owner's
    limits for the quota check (None: no quota check, e.g. in tests of other rules).
    """
    conflicts: list[Conflict] = []
    claims = []
    for container in containers:
        claim = _claim(container, inventory, now, hold_for, conflicts)
        if claim is not None:
            claims.append(claim)
    # Who keeps a contested device: running containers, then created ones, then stopped
    # ones still in their hold; within each, the earliest grant.
    claims.sort(key=lambda c: (not c.running, c.held, c.since, c.container.id))

    taken = {u: a.container_id or a.reservation_id for a in held for u in a.devices}
    pending = {r.reservation_id: r for r in reserved}
    books = _Books(limits_for, [*held, *reserved])
    out: list[Allocation] = []
    for claim in claims:
        match = _matching_reservation(claim, pending.values())
        if match is not None and not any(u in taken for u in match.devices):
            # The create is in flight and dockerd already made the container: bind it here.
            del pending[match.reservation_id]
            out.append(_bound(match, claim.container.id))
            taken.update(dict.fromkeys(match.devices, claim.container.id))
            continue
        kept = _free_part(claim, taken, pending.values(), conflicts)
        if not kept:
            continue
        if not claim.outside:
            refused = books.refuse(claim, kept, inventory)
            if refused is not None:
                conflicts.append(refused)
                if not claim.running or not claim.container.gpu_devices:
                    continue
                # It really runs on them: keep them held, but for nobody's quota.
                claim = replace(claim, outside=True, user=OUTSIDE_USER, uid=None, group="")
        taken.update(dict.fromkeys(kept, claim.container.id))
        out.append(_allocation(claim, kept, inventory, priority_for))
    out.extend(pending.values())
    return out, conflicts


class _Books:
    """What each owner holds so far in a reconstruction, for the quota check."""

    def __init__(self, limits_for: LimitsFor | None, known: Iterable[Allocation]) -> None:
        self.limits_for = limits_for
        self.held: dict[str, list[tuple[tuple[str, ...], float, str | None]]] = {}
        for alloc in known:
            if not alloc.outside:
                self.held.setdefault(alloc.user, []).append(
                    (alloc.devices, alloc.gpueq, alloc.container_id)
                )

    def refuse(
        self, claim: _Claim, devices: Sequence[str], inventory: Inventory
    ) -> Conflict | None:
        """A conflict when the owner's quota does not allow ``devices``; else book them."""
        found = [d for u in devices if (d := inventory.device(u)) is not None]
        mine = self.held.setdefault(claim.user, [])
        if self.limits_for is not None:
            quota = Quota.from_limits(self.limits_for(claim.user, claim.uid))
            denied = quotas.check(quota, Usage.of(mine), found)
            if denied is not None:
                return Conflict(
                    "over_quota",
                    f"container {claim.container.id[:12]} claims {len(found)} device(s) for "
                    f"{claim.user}, beyond their quota ({denied.reason}); the claim is not "
                    "recorded for them",
                    (claim.container.id,),
                )
        mine.append((tuple(devices), sum(d.gpueq for d in found), claim.container.id))
        return None


def _bound(reservation: Allocation, container_id: str) -> Allocation:
    from .ledger import State

    return replace(reservation, container_id=container_id, state=State.BOUND)


def _free_part(
    claim: _Claim,
    taken: dict[str, str],
    pending: Iterable[Allocation],
    conflicts: list[Conflict],
) -> list[str]:
    """The claimed devices nobody verified earlier holds; a double claim is reported."""
    kept = []
    for uuid in claim.devices:
        owner = taken.get(uuid) or _reserved_by(uuid, pending)
        if owner is None:
            kept.append(uuid)
            continue
        if claim.held:
            # A stopped container's hold gave way (preemption, or its hold ran out
            # before ds01d went down): it does not use the device, so no conflict.
            continue
        conflicts.append(
            Conflict(
                "double_claim",
                f"device {uuid} is claimed by container {claim.container.id[:12]} "
                f"({claim.user}) and already held by {owner[:12]}; it stays with "
                f"{owner[:12]}. Stop one of them (created outside DS01?)",
                (owner, claim.container.id),
                uuid,
                owner,
            )
        )
    return kept


def _allocation(
    claim: _Claim,
    kept: Sequence[str],
    inventory: Inventory,
    priority_for: Callable[[str], int] | None,
) -> Allocation:
    from .ledger import Allocation, State

    devices = [inventory.device(u) for u in kept]
    return Allocation(
        f"c:{claim.container.id}",  # the full id: short ids can collide
        claim.container.id,
        claim.user,
        claim.uid,
        claim.group,
        tuple(kept),
        sum(d.gpueq for d in devices if d is not None),
        State.HELD if claim.held else State.BOUND,
        claim.since,
        priority_for(claim.user) if priority_for and not claim.outside else 0,
        hold_until=claim.hold_until if claim.held else None,
        outside=claim.outside,
    )


def _claim(
    container: ContainerSummary,
    inventory: Inventory,
    now: float,
    hold_for: HoldFor,
    conflicts: list[Conflict],
) -> _Claim | None:
    state = container.state
    if state == "removing":
        return None
    labels = container.labels
    devices = parse_devices(labels.get(LABEL_DEVICES))
    running = state in RUNNING_STATES
    if not devices:
        if running and container.gpu_devices:
            return _outside_claim(container, inventory, now, conflicts)
        return None  # a container without GPUs, or an outside one that does not run
    user = labels.get(LABEL_USER) or ""
    refusal = _unverified(container, devices, user)
    if refusal is not None:
        conflicts.append(refusal)
        if running and container.gpu_devices:
            return _outside_claim(container, inventory, now, conflicts)
        return None
    devices = _known(container, devices, user, inventory, conflicts)
    if not devices:
        return None
    since = parse_time(labels.get(LABEL_ALLOCATED_AT))
    held, hold_until = False, None
    if state in STOPPED_STATES:
        hold = hold_for(user, parse_uid(labels), labels) if callable(hold_for) else hold_for
        finished = container.finished_at if container.finished_at is not None else now
        if hold is not None and finished + hold <= now:
            return None  # its hold ran out while nobody watched: the devices are free
        held, hold_until = True, None if hold is None else finished + hold
    return _Claim(
        container,
        user,
        parse_uid(labels),
        labels.get(LABEL_GROUP) or "",
        devices,
        since if since is not None else now,
        running,
        hold_until,
        held,
        False,
    )


def _unverified(container: ContainerSummary, devices: Sequence[str], user: str) -> Conflict | None:
    """Why a ``ds01.devices`` claim is not believed, or None when dockerd backs it."""
    cid = container.id[:12]
    if not user:
        return Conflict(
            "bad_labels",
            f"container {cid} records devices but no {LABEL_USER} label; the claim is ignored",
            (container.id,),
        )
    given = container.gpu_devices
    if given is not None and set(given) == set(devices) and len(given) == len(set(given)):
        return None
    what = "was not inspected" if given is None else f"gets {', '.join(given) or 'no GPUs'}"
    return Conflict(
        "unverified_claim",
        f"container {cid} ({user}) claims {', '.join(devices)} in its {LABEL_DEVICES} label, "
        f"but from dockerd it {what}; the claim is ignored (an image label, or a container "
        "created outside DS01)",
        (container.id,),
    )


def _known(
    container: ContainerSummary,
    devices: Sequence[str],
    user: str,
    inventory: Inventory,
    conflicts: list[Conflict],
) -> tuple[str, ...]:
    """The claimed devices that are in the inventory; the others are reported."""
    kept = []
    for uuid in dict.fromkeys(devices):
        if inventory.device(uuid) is not None:
            kept.append(uuid)
            continue
        conflicts.append(
            Conflict(
                "unknown_device",
                f"container {container.id[:12]} ({user}) claims {uuid}, which is not in the "
                "inventory (GPU lost, MIG layout changed, or a made-up ID); it is not recorded",
                (container.id,),
                uuid,
            )
        )
    return tuple(kept)


def _outside_claim(
    container: ContainerSummary, inventory: Inventory, now: float, conflicts: list[Conflict]
) -> _Claim | None:
    devices: list[str] = []
    for device_id in container.gpu_devices or ():
        devices.extend(d.uuid for d in _resolve_any(inventory, device_id))
    devices = list(dict.fromkeys(devices))
    conflicts.append(
        Conflict(
            "outside_ds01",
            f"container {container.id[:12]} runs with GPUs "
            f"({', '.join(container.gpu_devices or ())}) but was not created through DS01; "
            "its devices are treated as in use",
            (container.id,),
        )
    )
    if not devices:
        return None
    return _Claim(container, OUTSIDE_USER, None, "", tuple(devices), now, True, None, False, True)


def _resolve_any(inventory: Inventory, device_id: str) -> list[Device]:
    # What dockerd would expose: "all", an index or GPU UUID (with every MIG instance on it).
    text = device_id.strip()
    if text in ("all", "-1"):
        return list(inventory.devices)
    gpu = inventory.gpu(int(text)) if text.isdigit() else inventory.gpu_by_uuid(text)
    if gpu is not None:
        return list(inventory.devices_of(gpu.index))
    device = inventory.device(text)
    return [device] if device else []


def _matching_reservation(claim: _Claim, reserved: Iterable[Allocation]) -> Allocation | None:
    # Only a container still in "created" can be the product of a create in flight.
    if claim.running or claim.held or claim.outside:
        return None
    for alloc in reserved:
        if alloc.user == claim.user and set(alloc.devices) == set(claim.devices):
            return alloc
    return None


def _reserved_by(uuid: str, reserved: Iterable[Allocation]) -> str | None:
    return next((r.reservation_id for r in reserved if uuid in r.devices), None)
