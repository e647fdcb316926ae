"""The allocation ledger: which container (or in-flight create) holds which devices.

Invariant: a device is held by at most one allocation that is reserved, bound or held.
Synchronous and clock-free (``now`` comes in); the daemon serialises calls with one lock.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from formats.labels import allocation_labels

from . import quota as quotas
from . import refusal
from .inventory import Device, Gpu, Inventory
from .placement import Audience
from .plan import plan
from .quota import Quota, QuotaLimits, Usage
from .refusal import Holder, Refusal
from .request import GpuRequest

if TYPE_CHECKING:
    from .reconcile import Conflict, ContainerSummary, HoldFor


class State(StrEnum):
    RESERVED = "reserved"  # taken before the create is forwarded; no container yet
    BOUND = "bound"  # the container exists (created or running)
    HELD = "held"  # the container stopped; its devices wait for it until ``hold_until``
    RELEASED = "released"  # gone from the ledger; only ever seen in return values


ACTIVE = frozenset({State.RESERVED, State.BOUND, State.HELD})


class LedgerError(RuntimeError):
    """The daemon used the ledger wrongly (unknown reservation, container bound twice)."""


@dataclass(frozen=True)
class Allocation:
    """Devices held for one container (or for one create in flight)."""

    reservation_id: str
    container_id: str | None
    user: str
    uid: int | None
    group: str
    devices: tuple[str, ...]  # UUIDs
    gpueq: float
    state: State
    since: float
    priority: int = 0
    hold_until: float | None = None  # HELD only; None = until the container is removed
    outside: bool = False  # found on a container DS01 did not create

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


@dataclass(frozen=True)
class Reservation:
    """What ``reserve`` granted: the gateway rewrites the create with these devices."""

    reservation_id: str
    devices: tuple[Device, ...]
    user: str
    uid: int | None
    group: str
    since: float

    @property
    def device_ids(self) -> tuple[str, ...]:
        return tuple(d.uuid for d in self.devices)

    @property
    def gpueq(self) -> float:
        return sum(d.gpueq for d in self.devices)

    def labels(self) -> dict[str, str]:
        """The ``ds01.*`` labels recording this grant on the container."""
        return allocation_labels(
            user=self.user,
            uid=self.uid,
            group=self.group,
            devices=self.device_ids,
            gpueq=self.gpueq,
            at=self.since,
        )


@dataclass(frozen=True)
class DeviceStatus:
    """One line of ``ds01 gpus``: a device and who holds it, if anyone."""

    uuid: str
    device: Device | None  # None: held, but no longer in the inventory (GPU lost)
    allocation: Allocation | None


@dataclass(frozen=True)
class Snapshot:
    """Everything ``ds01 gpus`` shows, taken at one instant."""

    gpus: tuple[Gpu, ...]
    devices: tuple[DeviceStatus, ...]
    allocations: tuple[Allocation, ...]
    problems: tuple[str, ...]

    @property
    def free(self) -> tuple[Device, ...]:
        return tuple(s.device for s in self.devices if s.device and s.allocation is None)


class Ledger:
    """Allocations keyed by reservation id, with indexes by device and by container."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self._allocs: dict[str, Allocation] = {}
        self._by_device: dict[str, str] = {}
        self._by_container: dict[str, str] = {}
        self._ids = itertools.count(1)
        # Change counter, and the count at each allocation's last change: a rebuild from a
        # snapshot taken at ``version`` V keeps what changed after V (see ``rebuild``).
        self._version = 0
        self._changed: dict[str, int] = {}
        # Who may use what under the policy (placement.audiences); the daemon sets it.
        self.audiences: tuple[Audience, ...] = ()

    @property
    def version(self) -> int:
        """Grows with every change; a mark for ``rebuild(since=...)``."""
        return self._version

    # ------------------------------------------------------------------ queries

    def allocations(self) -> tuple[Allocation, ...]:
        return tuple(sorted(self._allocs.values(), key=lambda a: (a.since, a.reservation_id)))

    def holder_of(self, uuid: str) -> Allocation | None:
        """The allocation holding device ``uuid``, or None when it is free."""
        rid = self._by_device.get(uuid)
        return self._allocs[rid] if rid else None

    def allocation_of(self, container_id: str) -> Allocation | None:
        rid = self._by_container.get(container_id)
        return self._allocs[rid] if rid else None

    def reservation(self, reservation_id: str) -> Allocation | None:
        return self._allocs.get(reservation_id)

    def usage(self, user: str) -> Usage:
        """What ``user`` holds against their quota (reserved, bound and held)."""
        return Usage.of(
            (a.devices, a.gpueq, a.container_id)
            for a in self.allocations()
            if a.user == user and not a.outside
        )

    def holder(self, uuid: str) -> Holder | None:
        """The holder of ``uuid`` as messages show it."""
        alloc = self.holder_of(uuid)
        if alloc is None:
            return None
        device = self.inventory.device(uuid)
        return Holder(
            uuid,
            device.describe() if device else uuid,
            alloc.user,
            alloc.container_id,
            alloc.state.value,
            alloc.since,
            alloc.hold_until,
        )

    def busy(self, exclude: Collection[str] = ()) -> dict[str, Holder | None]:
        """UUID -> holder of every held device, plus ``exclude`` (kept for the queue)."""
        out: dict[str, Holder | None] = {u: self.holder(u) for u in self._by_device}
        for uuid in exclude:
            out.setdefault(uuid, None)
        return out

    def snapshot(self) -> Snapshot:
        """Every device with its holder, and the allocations, for ``ds01 gpus``."""
        statuses = [DeviceStatus(d.uuid, d, self.holder_of(d.uuid)) for d in self.inventory.devices]
        known = {d.uuid for d in self.inventory.devices}
        statuses += [
            DeviceStatus(u, None, self.holder_of(u))
            for u in sorted(self._by_device)
            if u not in known
        ]
        return Snapshot(
            self.inventory.gpus, tuple(statuses), self.allocations(), self.inventory.problems
        )

    # ------------------------------------------------------------------ create path

    def reserve(
        self,
        user: str,
        uid: int | None,
        group: str,
        limits: QuotaLimits,
        request: GpuRequest,
        now: float,
        *,
        exclude: Collection[str] = (),
    ) -> Reservation | Refusal:
        """Take devices for a create before it is forwarded, or say why not.

        ``exclude``: devices promised to earlier requests in the queue.
        """
        quota = Quota.from_limits(limits)
        result = plan(
            request,
            quota,
            self.usage(user),
            self.inventory,
            self.busy(exclude),
            now,
            self.audiences,
        )
        if isinstance(result, Refusal):
            return result
        rid = f"r{next(self._ids)}"
        self._put(
            Allocation(
                rid,
                None,
                user,
                uid,
                group,
                tuple(d.uuid for d in result),
                sum(d.gpueq for d in result),
                State.RESERVED,
                now,
                quota.priority,
            )
        )
        return Reservation(rid, result, user, uid, group, now)

    def bind(self, reservation_id: str, container_id: str) -> Allocation:
        """dockerd created the container: the reservation now belongs to it."""
        alloc = self._allocs.get(reservation_id)
        if alloc is None:
            raise LedgerError(f"no reservation {reservation_id}")
        if alloc.container_id == container_id:
            return alloc  # already bound (a rebuild matched it to its container first)
        if alloc.state is not State.RESERVED:
            raise LedgerError(f"reservation {reservation_id} is {alloc.state.value}")
        if container_id in self._by_container:
            raise LedgerError(f"container {container_id[:12]} already holds devices")
        return self._put(replace(alloc, container_id=container_id, state=State.BOUND))

    def rollback(self, reservation_id: str) -> Allocation | None:
        """The create failed or the client left: free a reservation not yet bound."""
        alloc = self._allocs.get(reservation_id)
        if alloc is None or alloc.state is not State.RESERVED:
            return None
        return self._drop(alloc)

    def expire_reservations(self, now: float, max_age: float) -> list[Allocation]:
        """Free reservations older than ``max_age`` (a create that never came back)."""
        stale = [
            a
            for a in self._allocs.values()
            if a.state is State.RESERVED and now - a.since >= max_age
        ]
        return [self._drop(a) for a in stale]

    # ------------------------------------------------------------------ container life

    def container_stopped(
        self, container_id: str, now: float, hold_seconds: float | None
    ) -> Allocation | None:
        """The container stopped (``die``): keep its devices for ``hold_seconds``, then free.

        ``hold_seconds`` None keeps them until the container is removed.
        """
        alloc = self.allocation_of(container_id)
        if alloc is None or alloc.state is not State.BOUND:
            return alloc
        if hold_seconds is not None and hold_seconds <= 0:
            return self._drop(alloc)
        until = None if hold_seconds is None else now + hold_seconds
        return self._put(replace(alloc, state=State.HELD, hold_until=until))

    def expire_holds(self, now: float) -> list[Allocation]:
        """Free the devices of stopped containers whose hold ran out."""
        done = [
            a
            for a in self._allocs.values()
            if a.state is State.HELD and a.hold_until is not None and a.hold_until <= now
        ]
        return [self._drop(a) for a in done]

    def container_removed(self, container_id: str) -> Allocation | None:
        """The container is gone (``destroy``): free its devices now."""
        return self.release(container_id)

    def release(self, container_id: str) -> Allocation | None:
        """Free a container's devices now, whatever its state (e.g. it was preempted).

        A later ``start`` must ``reacquire`` them. After a ds01d restart a stopped container's
        hold comes back from its labels; that over-holds for at most the hold, never
        double-books.
        """
        alloc = self.allocation_of(container_id)
        return self._drop(alloc) if alloc else None

    def reacquire(
        self,
        container_id: str,
        devices: Iterable[str],
        *,
        user: str,
        uid: int | None,
        group: str,
        now: float,
        limits: QuotaLimits | None = None,
    ) -> Allocation | Refusal:
        """The container starts: it gets its recorded devices back if they are free.

        With ``limits``, a container whose devices were released must also fit the quota
        again (its owner may have taken other GPUs since).
        """
        uuids = tuple(dict.fromkeys(devices))
        if not uuids:
            raise LedgerError(f"container {container_id[:12]} records no devices")
        alloc = self.allocation_of(container_id)
        have = set(alloc.devices) if alloc else set()
        # The container will see every device its labels record, so it must hold them all:
        # after a rebuild its hold may cover only some of them.
        found: list[Device] = []
        for uuid in uuids:
            if uuid in have:
                continue
            device = self.inventory.device(uuid)
            if device is None:
                return refusal.unknown_device(
                    uuid, "it is gone from this server; recreate the container to get a free GPU"
                )
            holder = self.holder(uuid)
            if holder is not None:
                return refusal.device_busy(holder, now, recreate=True)
            found.append(device)
        if alloc is not None and not found:
            return self._put(replace(alloc, state=State.BOUND, hold_until=None))
        priority = alloc.priority if alloc else 0
        if limits is not None:
            quota = Quota.from_limits(limits)
            denied = quotas.check(quota, self.usage(user), found)
            if denied:
                return denied
            priority = quota.priority
        if alloc is not None:
            gpueq = alloc.gpueq + sum(d.gpueq for d in found)
            return self._put(
                replace(
                    alloc,
                    devices=uuids,
                    gpueq=gpueq,
                    state=State.BOUND,
                    hold_until=None,
                    priority=priority,
                )
            )
        rid = f"r{next(self._ids)}"
        gpueq = sum(d.gpueq for d in found)
        return self._put(
            Allocation(
                rid, container_id, user, uid, group, uuids, gpueq, State.BOUND, now, priority
            )
        )

    # ------------------------------------------------------------------ crash safety

    def rebuild(
        self,
        containers: Iterable[ContainerSummary],
        now: float,
        *,
        hold_for: HoldFor = 0.0,
        priority_for: Callable[[str], int] | None = None,
        limits_for: Callable[[str, int | None], QuotaLimits] | None = None,
        since: int | None = None,
    ) -> list[Conflict]:
        """Replace the ledger with the containers' verified claims; keep creates in flight.

        ``since``: the ``version`` when the listing of ``containers`` began. Listing and
        inspecting take time while creates go on; what the ledger bound, stopped or
        reacquired after that mark is newer than the listing (a container created after it
        is missing from it) and is kept as it is, its containers' listed claims ignored.
        Without it, a container bound meanwhile would lose its devices to the next create.

        Returns the conflicts found (claims dockerd does not back, two containers claiming
        one device, claims beyond the owner's quota from ``limits_for``, GPU containers
        created outside DS01, devices not in the inventory), never merged silently.
        """
        from .reconcile import reconstruct

        reserved = [a for a in self._allocs.values() if a.state is State.RESERVED]
        newer = [
            a
            for a in self._allocs.values()
            if a.state is not State.RESERVED
            and since is not None
            and self._changed.get(a.reservation_id, 0) > since
        ]
        fresh = {a.container_id for a in newer}
        allocations, conflicts = reconstruct(
            [c for c in containers if c.id not in fresh],
            self.inventory,
            reserved,
            now,
            hold_for=hold_for,
            priority_for=priority_for,
            limits_for=limits_for,
            held=newer,
        )
        self._allocs.clear()
        self._by_device.clear()
        self._by_container.clear()
        self._changed.clear()
        for alloc in [*newer, *allocations]:
            self._put(alloc)
        return conflicts

    def adopt(
        self,
        container: ContainerSummary,
        now: float,
        *,
        hold_for: HoldFor = 0.0,
        priority_for: Callable[[str], int] | None = None,
        limits_for: Callable[[str, int | None], QuotaLimits] | None = None,
    ) -> list[Conflict]:
        """Record one container's claim by the rules of ``rebuild``, leaving the rest as is.

        What the ledger already holds was verified earlier and wins any contest; a create in
        flight whose container this is gets bound to it.
        """
        from .reconcile import reconstruct

        if self.allocation_of(container.id) is not None:
            return []
        reserved = [a for a in self._allocs.values() if a.state is State.RESERVED]
        held = [a for a in self._allocs.values() if a.state is not State.RESERVED]
        allocations, conflicts = reconstruct(
            [container],
            self.inventory,
            reserved,
            now,
            hold_for=hold_for,
            priority_for=priority_for,
            limits_for=limits_for,
            held=held,
        )
        for alloc in allocations:
            if self._allocs.get(alloc.reservation_id) != alloc:
                self._put(alloc)
        return conflicts

    def set_inventory(self, inventory: Inventory) -> None:
        """A new scan of the GPUs; allocations stay (a lost GPU's holders keep their claim)."""
        self.inventory = inventory

    def check_invariants(self) -> None:
        """Raise ``AssertionError`` if a device is held twice or an index is stale."""
        seen: dict[str, str] = {}
        for rid, alloc in self._allocs.items():
            assert alloc.active, alloc
            for uuid in alloc.devices:
                assert uuid not in seen, f"{uuid} held by {seen.get(uuid)} and {rid}"
                seen[uuid] = rid
            if alloc.container_id is not None:
                assert self._by_container.get(alloc.container_id) == rid, alloc
        assert seen == self._by_device, "device index out of date"
        assert len(self._by_container) == sum(
            1 for a in self._allocs.values() if a.container_id is not None
        ), "container index out of date"

    # ------------------------------------------------------------------ internals

    def _put(self, alloc: Allocation) -> Allocation:
        old = self._allocs.get(alloc.reservation_id)
        for uuid in alloc.devices:
            other = self._by_device.get(uuid)
            if other is not None and other != alloc.reservation_id:
                raise LedgerError(f"{uuid} is already held by {other}")  # never double-book
        if old is not None:
            self._unindex(old)
        self._allocs[alloc.reservation_id] = alloc
        self._version += 1
        self._changed[alloc.reservation_id] = self._version
        for uuid in alloc.devices:
            self._by_device[uuid] = alloc.reservation_id
        if alloc.container_id is not None:
            self._by_container[alloc.container_id] = alloc.reservation_id
        return alloc

    def _drop(self, alloc: Allocation) -> Allocation:
        self._unindex(alloc)
        del self._allocs[alloc.reservation_id]
        self._changed.pop(alloc.reservation_id, None)
        self._version += 1
        return replace(alloc, state=State.RELEASED)

    def _unindex(self, alloc: Allocation) -> None:
        for uuid in alloc.devices:
            if self._by_device.get(uuid) == alloc.reservation_id:
                del self._by_device[uuid]
        if (
            alloc.container_id is not None
            and self._by_container.get(alloc.container_id) == alloc.reservation_id
        ):
            del self._by_container[alloc.container_id]
