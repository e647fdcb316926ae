"""Rebuilding allocations from Docker's containers and their ``ds01.*`` labels.

Docker is the source of truth: after a crash (or periodically) the ledger is what the
containers say. Conflicting claims are reported as ``Conflict`` values, never merged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .inventory import Device, Inventory
from .labels import (
    LABEL_ALLOCATED_AT,
    LABEL_DEVICES,
    LABEL_GPUEQ,
    LABEL_GROUP,
    LABEL_USER,
    parse_devices,
    parse_gpueq,
    parse_time,
    parse_uid,
)

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
    # Devices dockerd gives it (DeviceRequests / NVIDIA_VISIBLE_DEVICES), for containers
    # without DS01 labels: indexes, UUIDs or "all". None: the daemon did not look.
    gpu_devices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Conflict:
    """Something in Docker's state DS01 did not cause and will not silently fix."""

    kind: str  # double_claim | outside_ds01 | unknown_device | bad_labels
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
    label_gpueq: float | None


HoldFor = Callable[[str], "float | None"] | float | None


def reconstruct(
    containers: Iterable[ContainerSummary],
    inventory: Inventory,
    reserved: Sequence[Allocation],
    now: float,
    *,
    hold_for: HoldFor = 0.0,
    priority_for: Callable[[str], int] | None = None,
) -> tuple[list[Allocation], list[Conflict]]:
    """Allocations the containers and the in-flight ``reserved`` ones imply, and conflicts."""
    from .ledger import Allocation, State

    conflicts: list[Conflict] = []
    claims = []
    for container in containers:
        claim = _claim(container, inventory, now, hold_for, conflicts)
        if claim is not None:
            claims.append(claim)
    # Who keeps a contested device: running containers, then created ones, then stopped
    # ones still in their hold; within each, the earliest grant.
    claims.sort(key=lambda c: (not c.running, c.held, c.since, c.container.id))

    taken: dict[str, str] = {}  # UUID -> container id or reservation id
    pending = {r.reservation_id: r for r in reserved}
    out: list[Allocation] = []
    for claim in claims:
        match = _matching_reservation(claim, pending.values())
        if match is not None:
            # The create is in flight and dockerd already made the container: bind it here.
            del pending[match.reservation_id]
            out.append(replace(match, container_id=claim.container.id, state=State.BOUND))
            taken.update(dict.fromkeys(match.devices, claim.container.id))
            continue
        kept = []
        for uuid in claim.devices:
            owner = taken.get(uuid) or _reserved_by(uuid, pending.values())
            if owner is None:
                kept.append(uuid)
                taken[uuid] = claim.container.id
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
        if not kept:
            continue
        gpueq = _gpueq(kept, inventory, claim)
        state = State.HELD if claim.held else State.BOUND
        priority = priority_for(claim.user) if priority_for and not claim.outside else 0
        out.append(
            Allocation(
                f"c:{claim.container.id}",  # the full id: short ids can collide
                claim.container.id,
                claim.user,
                claim.uid,
                claim.group,
                tuple(kept),
                gpueq,
                state,
                claim.since,
                priority,
                hold_until=claim.hold_until if claim.held else None,
                outside=claim.outside,
            )
        )
    out.extend(pending.values())
    return out, conflicts


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
    if not user:
        conflicts.append(
            Conflict(
                "bad_labels",
                f"container {container.id[:12]} records devices but no {LABEL_USER} "
                "label; its devices stay held",
                (container.id,),
            )
        )
    for uuid in devices:
        if inventory.device(uuid) is None:
            conflicts.append(
                Conflict(
                    "unknown_device",
                    f"container {container.id[:12]} ({user or '?'}) holds "
                    f"{uuid}, which is not in the inventory (GPU lost or MIG layout changed); "
                    "it stays held",
                    (container.id,),
                    uuid,
                    container.id,
                )
            )
    since = parse_time(labels.get(LABEL_ALLOCATED_AT))
    held, hold_until = False, None
    if state in STOPPED_STATES:
        hold = hold_for(user) if callable(hold_for) else hold_for
        finished = container.finished_at if container.finished_at is not None else now
        if hold is not None and finished + hold <= now:
            return None  # its hold ran out while nobody watched: the devices are free
        held, hold_until = True, None if hold is None else finished + hold
    return _Claim(
        container,
        user or "?",
        parse_uid(labels),
        labels.get(LABEL_GROUP) or "",
        devices,
        since if since is not None else now,
        running,
        hold_until,
        held,
        False,
        parse_gpueq(labels.get(LABEL_GPUEQ)),
    )


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
    return _Claim(
        container, OUTSIDE_USER, None, "", tuple(devices), now, True, None, False, True, None
    )


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


def _gpueq(uuids: Sequence[str], inventory: Inventory, claim: _Claim) -> float:
    known = [inventory.device(u) for u in uuids]
    if all(d is not None for d in known):
        return sum(d.gpueq for d in known if d is not None)
    if claim.label_gpueq is not None and len(uuids) == len(claim.devices):
        return claim.label_gpueq  # a lost device: trust what was recorded at grant time
    # Nothing better: a lost whole GPU counts 1, a lost MIG instance one slice of seven.
    return sum(
        d.gpueq if d else (1 / 7 if u.startswith("MIG-") else 1.0)
        for d, u in zip(known, uuids, strict=True)
    )
