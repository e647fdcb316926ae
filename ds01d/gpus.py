"""The GPU broker: the allocator's ledger and wait queue, driven by creates, starts and events.

Every ledger call is synchronous and the daemon is one event loop, so each decision is
atomic without locks: nothing awaits between "is it free" and "it is yours".
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from allocator import refusal as refusals
from allocator.inventory import short_uuid
from allocator.ledger import Allocation, Ledger, Reservation
from allocator.ledger import State as AllocationState
from allocator.preempt import preemption_plan
from allocator.queue import Ticket, WaitQueue, place_for, wait_seconds
from allocator.reconcile import Conflict, ContainerSummary
from allocator.refusal import HeldContainer, Refusal
from allocator.request import NVIDIA_DRIVERS, SELECTOR_CAPABILITIES, GpuRequest
from ds01d.ports import DockerApi
from formats.labels import (
    LABEL_DEVICES,
    LABEL_GROUP,
    LABEL_USER,
    LABEL_WAIT,
    parse_devices,
    parse_uid,
)
from formats.timestamps import parse_docker_time
from formats.units import UnitError, format_duration
from policy.decision import Decision, deny
from policy.identity import Identity
from policy.limits import Limits

log = logging.getLogger("ds01.gpus")

# A create that never came back (client and dockerd both gone) frees its reservation.
RESERVATION_MAX_AGE = 300.0
# `gpu_wait: null` means "as long as it takes", bounded so no request hangs for ever.
LONGEST_WAIT = 24 * 3600.0
# A waiting create's client hears how it stands this often (and when it starts waiting).
PROGRESS_EVERY = 30.0
# What the refusal suggests when the policy sets no cap on waiting (gpu_wait: null).
SUGGESTED_WAIT = 15 * 60.0

Tell = Callable[[str], None]  # a line for the waiting client's terminal (best effort)


def refusal_decision(refusal: Refusal, note: str = "", fix: str | None = None) -> Decision:
    reason = refusal.reason + (f"; {note}" if note else "")
    status = 409 if refusal.waitable else 403
    return deny(refusal.code, reason, refusal.fix if fix is None else fix, status=status)


def progress_line(request: str, place: int | None, waited: float, wait: float) -> str:
    """``ds01: waiting for 1 GPU: #2 in the queue, 1m30s of at most 15m; Ctrl-C to give up``."""
    where = f"#{place} in the queue" if place else "being served"
    return (
        f"ds01: waiting for {request}: {where}, {format_duration(waited)} of at most "
        f"{format_duration(wait)}; Ctrl-C to give up"
    )


class GpuBroker:
    def __init__(
        self,
        ledger: Ledger,
        *,
        limits_for: Callable[[str, int | None], Limits],
        clock: Callable[[], float],
        stop_container: Callable[[str, str], Any] | None = None,
    ) -> None:
        self.ledger = ledger
        self.queue = WaitQueue()
        self.limits_for = limits_for  # (user, uid) -> Limits, for holds and reacquire quotas
        self.clock = clock
        self.stop_container = stop_container  # async (container_id, why) for preemption
        self.idle: set[str] = set()  # containers the lifecycle reports idle (preemptable)
        self.conflicts: list[Conflict] = []
        self._waiters: dict[str, asyncio.Future[Reservation | Refusal]] = {}
        self._ids = itertools.count(1)
        self.on_change: Callable[[], None] = lambda: None
        # How long a stopped container keeps its GPU: the user's gpu_hold_after_stop, unless
        # the policy's container_types say otherwise for its kind (the daemon sets this).
        self.hold_after_stop: Callable[[str, int | None, dict[str, str]], float | None] = (
            lambda user, uid, labels: self.limits_for(user, uid).gpu_hold_after_stop
        )
        self.record: Callable[..., None] = lambda event, **fields: None  # the audit log
        self.on_wait_end: Callable[[float], None] = lambda seconds: None  # queue wait metric
        # A container's inspect (None when gone), so refusals can name holders and their
        # state; and the policy's created_timeout (the daemon sets both).
        self.inspect: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None
        self.created_timeout: Callable[[], float | None] = lambda: None

    # ---- create ---------------------------------------------------------------------------

    async def reserve(
        self,
        identity: Identity,
        limits: Limits,
        request: GpuRequest,
        body: dict[str, Any],
        now: float,
        tell: Tell | None = None,
    ) -> Reservation | Decision:
        """Devices for a create, waiting in the queue when its ``ds01.wait`` label asks (capped
        by the policy's ``gpu_wait``); else a denial that says how the queue stands.

        It does not overtake waiting requests of its priority or higher: the devices they can
        use next are not its to take. ``tell`` reaches the waiting client's terminal.
        """
        ahead = self.queue.held_back(self.ledger, int(limits.priority))
        result = self.ledger.reserve(
            identity.user, identity.uid, limits.group, limits, request, now, exclude=ahead
        )
        if isinstance(result, Reservation):
            self.on_change()
            return result
        if not result.waitable:
            return refusal_decision(await self._name_holders(result, identity.user, now))
        if limits.preempt_idle:
            preempted = await self._preempt(identity, limits, request, now)
            if isinstance(preempted, Reservation):
                return preempted
        try:
            wait = wait_seconds((body.get("Labels") or {}).get(LABEL_WAIT), limits.gpu_wait)
        except UnitError as exc:
            return deny("bad_wait", f"label {LABEL_WAIT}: {exc}", "use a duration like 10m")
        if wait <= 0:
            return await self._busy(result, limits, now)
        waiting = self.queue.waiting_for(identity.user)
        if waiting is not None:
            return deny(
                "already_waiting",
                f"{result.reason}, and you already have a GPU request waiting in the queue "
                f"(place {self.queue.position(waiting.id)}, for {waiting.request.describe()}); "
                "one waiting request per user",
                "wait for that one to be served or give up on it (Ctrl-C), then try again",
                status=409,
            )
        return await self._wait(identity, limits, request, now, wait, tell)

    async def _busy(self, result: Refusal, limits: Limits, now: float) -> Decision:
        """No free device and no wait asked for: the queue as it stands, and how to wait."""
        held = [await self._held_by_holder(h) for h in result.holders if h.state != "promised"]
        states = refusals.busy_states(held, now)
        place = place_for(self.queue, int(limits.priority))
        note = (f"{states}; " if states else "") + f"you would be #{place} in the queue"
        if limits.gpu_wait is not None and limits.gpu_wait <= 0:
            return refusal_decision(result, note + " (your policy's gpu_wait is 0: no waiting)")
        cap = SUGGESTED_WAIT if limits.gpu_wait is None else min(limits.gpu_wait, LONGEST_WAIT)
        fix = (
            f"to wait for a device, run it again with `--label {LABEL_WAIT}="
            f"{format_duration(cap)}` (at most {format_duration(cap)}; Ctrl-C gives up); "
            "`ds01 gpus` shows the devices and the queue"
        )
        return refusal_decision(result, note, fix)

    async def _wait(
        self,
        identity: Identity,
        limits: Limits,
        request: GpuRequest,
        now: float,
        wait: float | None,
        tell: Tell | None = None,
    ) -> Reservation | Decision:
        wait = LONGEST_WAIT if wait is None else min(wait, LONGEST_WAIT)
        ticket = Ticket(
            f"t{next(self._ids)}",
            identity.user,
            identity.uid,
            limits.group,
            int(limits.priority),
            request,
            limits,
            now,
            now + wait,
        )
        future: asyncio.Future[Reservation | Refusal] = asyncio.get_running_loop().create_future()
        self._waiters[ticket.id] = future
        position = self.queue.enqueue(ticket)
        log.info(
            "%s waits for %s (place %d, up to %s)",
            identity.user,
            request.describe(),
            position,
            format_duration(wait),
        )
        self.on_change()
        try:
            outcome = await self._await_turn(ticket, future, wait, tell)
        except (TimeoutError, asyncio.CancelledError) as exc:
            self.queue.remove(ticket.id)
            self._waiters.pop(ticket.id, None)
            if future.done() and not future.cancelled():
                granted = future.result()  # served just as we gave up: hand it back
                if isinstance(granted, Reservation):
                    self.ledger.rollback(granted.reservation_id)
                    self.dispatch()
            self.on_change()
            if isinstance(exc, asyncio.CancelledError):
                log.info("%s gave up waiting for %s", identity.user, request.describe())
                raise
            return deny(
                "gpu_wait_timeout",
                f"waited {format_duration(wait)} in the GPU queue without a device coming free",
                "try again later, or see who holds what with `ds01 gpus`",
                status=409,
            )
        finally:
            self.on_wait_end(self.clock() - now)  # served, timed out or gone away alike
        self._waiters.pop(ticket.id, None)
        if isinstance(outcome, Refusal):
            return refusal_decision(outcome)
        return outcome

    async def _await_turn(
        self,
        ticket: Ticket,
        future: asyncio.Future[Reservation | Refusal],
        wait: float,
        tell: Tell | None,
    ) -> Reservation | Refusal:
        """The ticket's outcome, telling the client where it stands at the start and every
        ``PROGRESS_EVERY`` s; TimeoutError after ``wait`` s (the event loop's clock)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            waited = loop.time() - start
            left = wait - waited
            if left <= 0:
                raise TimeoutError
            if tell is not None:
                place = self.queue.position(ticket.id)
                line = progress_line(ticket.request.describe(), place, waited, wait)
                try:
                    tell(line)
                except Exception:  # a terminal that is gone must not end the wait
                    log.debug("could not tell %s how its wait stands", ticket.user, exc_info=True)
            try:
                return await asyncio.wait_for(
                    asyncio.shield(future), timeout=min(PROGRESS_EVERY, left)
                )
            except TimeoutError:
                continue

    # ---- who holds what, as the user should hear it ------------------------------------

    async def _name_holders(self, result: Refusal, user: str, now: float) -> Refusal:
        """A quota refusal naming the user's containers that hold the quota."""
        if result.parts is None:
            return result
        mine = [a for a in self.ledger.allocations() if a.user == user]
        held = [await self._held(a) for a in mine]
        return refusals.name_holders(result, held, now)

    async def _held_by_holder(self, holder: refusals.Holder) -> HeldContainer:
        alloc = self.ledger.allocation_of(holder.container_id) if holder.container_id else None
        if alloc is not None:
            return await self._held(alloc)
        return HeldContainer(
            (short_uuid(holder.device),), holder.container_id, None, "being created"
        )

    async def _held(self, alloc: Allocation) -> HeldContainer:
        """One allocation's container: its name, state and when its hold ends by itself."""
        devices = tuple(short_uuid(u) for u in alloc.devices)
        if alloc.container_id is None:
            return HeldContainer(devices, None, None, "being created")
        info = await self._inspect(alloc.container_id)
        name = ((info or {}).get("Name") or "").lstrip("/") or None
        status = ((info or {}).get("State") or {}).get("Status")
        if alloc.state is AllocationState.HELD or status in ("exited", "dead"):
            until = alloc.hold_until
            key = "gpu_hold_after_stop" if until is not None else None
            return HeldContainer(devices, alloc.container_id, name, "stopped", until, key)
        if status == "created":
            timeout = self.created_timeout()
            created = parse_docker_time((info or {}).get("Created"))
            until = created + timeout if created is not None and timeout is not None else None
            return HeldContainer(
                devices,
                alloc.container_id,
                name,
                "created (never started)",
                until,
                "created_timeout" if until is not None else None,
            )
        return HeldContainer(devices, alloc.container_id, name, "running")

    async def _inspect(self, container_id: str) -> dict[str, Any] | None:
        if self.inspect is None:
            return None
        try:
            return await self.inspect(container_id)
        except Exception:  # a message detail: never a reason to fail the create's answer
            log.debug("could not inspect %s for a refusal", container_id, exc_info=True)
            return None

    async def _preempt(
        self, identity: Identity, limits: Limits, request: GpuRequest, now: float
    ) -> Reservation | None:
        """Take devices from idle lower-priority containers (stopped with the normal grace)."""
        victims = preemption_plan(self.ledger, identity.user, limits, request, now, self.idle)
        if not victims or self.stop_container is None:
            return None
        for victim in victims:
            why = (
                f"its GPU was given to a higher-priority request of {identity.user} "
                "because the container was idle"
            )
            log.warning("preempting %s (%s): %s", victim.container_id, victim.user, why)
            if victim.container_id:
                await self.stop_container(victim.container_id, why)
                released = self.ledger.release(victim.container_id)  # now, not after a hold
                if released is not None:
                    self._released(released, f"preempted: {why}")
        result = self.ledger.reserve(
            identity.user, identity.uid, limits.group, limits, request, self.clock()
        )
        return result if isinstance(result, Reservation) else None

    def bind(self, reservation: Reservation, container_id: str) -> None:
        self.ledger.bind(reservation.reservation_id, container_id)
        self.record(
            "allocate",
            user=reservation.user,
            uid=reservation.uid,
            container=container_id,
            result="allow",
            devices=list(reservation.device_ids),
            gpueq=reservation.gpueq,
        )
        self.on_change()

    def rollback(self, reservation: Reservation) -> None:
        if self.ledger.rollback(reservation.reservation_id) is not None:
            self.dispatch()

    def dispatch(self) -> None:
        """Hand freed devices to waiting creates: priority first, then waiting time."""
        now = self.clock()
        for ticket in self.queue.expire(now):
            self._waiters.pop(ticket.id, None)
        if len(self.queue):
            result = self.queue.next_eligible(self.ledger, now)
            outcomes: list[tuple[Ticket, Reservation | Refusal]] = [
                *result.granted,
                *result.refused,
            ]
            for ticket, outcome in outcomes:
                future = self._waiters.get(ticket.id)
                if future is not None and not future.done():
                    future.set_result(outcome)
                elif isinstance(outcome, Reservation):
                    self.ledger.rollback(outcome.reservation_id)
        self.on_change()

    # ---- start ----------------------------------------------------------------------------

    async def guard_start(
        self, info: dict[str, Any], identity: Identity, now: float
    ) -> Decision | None:
        """A starting container gets its recorded devices back, or the start is refused."""
        container_id = info.get("Id", "")
        labels = (info.get("Config") or {}).get("Labels") or {}
        devices = parse_devices(labels.get(LABEL_DEVICES))
        if not devices:
            return self._guard_unlabelled(info)
        user = labels.get(LABEL_USER, "?")
        uid = parse_uid(labels)
        limits = self.limits_for(user, uid)
        result = self.ledger.reacquire(
            container_id,
            devices,
            user=user,
            uid=uid,
            group=labels.get(LABEL_GROUP, limits.group),
            now=now,
            limits=limits,
        )
        if isinstance(result, Refusal):
            return refusal_decision(result)
        self.on_change()
        return None

    def _guard_unlabelled(self, info: dict[str, Any]) -> Decision | None:
        # A container created around DS01 (direct access) asking for GPUs: it may start only
        # on devices nobody holds.
        requests = (info.get("HostConfig") or {}).get("DeviceRequests") or []
        for req in requests:
            for device_id in req.get("DeviceIDs") or []:
                holder = self.ledger.holder(device_id) or self._holder_by_index(device_id)
                if holder is not None and holder.container_id != info.get("Id"):
                    return deny(
                        "device_busy",
                        f"{device_id} is held by {holder.whose(self.clock())}",
                        "start it when the device is free, or create it through DS01",
                    )
            if (
                not req.get("DeviceIDs")
                and (req.get("Count") or 0) != 0
                and self.ledger.allocations()
            ):
                return deny(
                    "device_busy",
                    "this container asks for GPUs by count outside DS01 while "
                    "DS01 has GPUs allocated",
                    "create GPU containers through the DS01 gateway",
                )
        return None

    def _holder_by_index(self, device_id: str) -> Any:
        if not device_id.isdigit():
            return None
        for gpu in self.ledger.inventory.gpus:
            if str(gpu.index) == device_id:
                return self.ledger.holder(gpu.uuid)
        return None

    # ---- events and reconcile -------------------------------------------------------------

    def container_died(
        self, container_id: str, now: float, labels: dict[str, str] | None = None
    ) -> None:
        alloc = self.ledger.allocation_of(container_id)
        if alloc is None:
            return
        hold = self.hold_after_stop(alloc.user, alloc.uid, labels or {})
        after = self.ledger.container_stopped(container_id, now, hold)
        if after is not None and after.state.value == "released":
            self._released(after, "container stopped")
        self.dispatch()

    def accounts_for(self, container_id: str, labels: dict[str, str]) -> bool:
        """Whether the ledger already knows a just-created container's ``ds01.devices``.

        It does when it holds that container, or when a create in flight reserved exactly
        those devices for that user (its bind follows). A create that was in flight when a
        previous ds01d died is neither: only a reconcile records what it holds.
        """
        devices = parse_devices(labels.get(LABEL_DEVICES))
        if not devices or self.ledger.allocation_of(container_id) is not None:
            return True
        holder = self.ledger.holder_of(devices[0])
        return (
            holder is not None
            and holder.state is AllocationState.RESERVED
            and holder.devices == devices
            and holder.user == labels.get(LABEL_USER)
        )

    def container_destroyed(self, container_id: str) -> None:
        released = self.ledger.container_removed(container_id)
        if released is not None:
            self._released(released, "container removed")
            self.dispatch()

    def _released(self, alloc: Any, why: str) -> None:
        self.record(
            "release",
            user=alloc.user,
            uid=alloc.uid,
            container=alloc.container_id,
            reason=why,
            devices=list(alloc.devices),
        )

    def tick(self, now: float) -> None:
        """Periodic: holds that ran out, reservations that never came back, queue deadlines."""
        expired = self.ledger.expire_holds(now)
        for alloc in expired:
            self._released(alloc, "hold after stop ran out")
        changed = expired + self.ledger.expire_reservations(now, RESERVATION_MAX_AGE)
        if changed or len(self.queue):
            self.dispatch()

    def rebuild(
        self, containers: list[ContainerSummary], now: float, since: int | None = None
    ) -> list[Conflict]:
        """Replace the ledger with the containers' verified claims (see allocator.reconcile).

        ``since``: ``ledger.version`` when the listing began; what changed after it stays.
        """
        conflicts = self.ledger.rebuild(containers, now, since=since, **self._rules())
        self._report(conflicts, fresh=True)
        self.dispatch()
        return self.conflicts

    def check_container(self, summary: ContainerSummary, now: float) -> list[Conflict]:
        """Record one container's claim by the rebuild rules, touching nothing else.

        For a create the ledger did not expect: one inspect and this check, never a full
        reconcile, so forged creates cost their maker more than they cost ds01d.
        """
        conflicts = self.ledger.adopt(summary, now, **self._rules())
        self._report(conflicts, fresh=False)
        self.on_change()
        return conflicts

    def _rules(self) -> dict[str, Any]:
        return {
            # The very function a stop uses: container_types and the user's own, combined.
            "hold_for": lambda user, uid, labels: self.hold_after_stop(user, uid, dict(labels)),
            "priority_for": lambda user: int(self.limits_for(user, None).priority),
            "limits_for": self.limits_for,
        }

    def _report(self, conflicts: list[Conflict], *, fresh: bool) -> None:
        # Log and audit each conflict once, not at every periodic reconcile.
        known = {_conflict_key(c) for c in self.conflicts}
        if fresh:
            self.conflicts = list(conflicts)
        else:
            self.conflicts += [c for c in conflicts if _conflict_key(c) not in known]
        for conflict in conflicts:
            if _conflict_key(conflict) in known:
                continue
            log.warning("reconcile: %s", conflict.message)
            self.record(
                "gpu_conflict",
                user=None,
                uid=None,
                container=conflict.containers[-1] if conflict.containers else None,
                result="deny",
                reason=conflict.message,
                kind=conflict.kind,
                device=conflict.device,
            )


def _conflict_key(conflict: Conflict) -> tuple[str, tuple[str, ...], str | None]:
    return (conflict.kind, conflict.containers, conflict.device)


async def container_summaries(docker: DockerApi) -> list[ContainerSummary]:
    """What the ledger is rebuilt from: every container's labels and state, plus, where it
    matters, when it stopped and which GPUs dockerd really gives it.

    ``GET /containers/json`` has no ``HostConfig.DeviceRequests``, so the containers that
    claim devices (and running unlabelled ones, which may use GPUs outside DS01) are
    inspected; the others cost nothing more.
    """
    out = []
    for entry in await docker.list_containers():
        labels = entry.get("Labels") or {}
        state = entry.get("State", "created")
        summary = ContainerSummary(id=entry.get("Id", ""), labels=labels, state=state)
        if bool(labels.get(LABEL_DEVICES)) or state == "running":
            inspected = await inspect_summary(docker, summary.id)
            if inspected is None:
                continue  # removed meanwhile
            summary = replace(
                summary,
                finished_at=inspected.finished_at,
                gpu_devices=inspected.gpu_devices,
            )
        out.append(summary)
    return out


async def inspect_summary(docker: DockerApi, container_id: str) -> ContainerSummary | None:
    """One container as the ledger needs it, from ``docker inspect``; None when it is gone."""
    info = await docker.inspect_container(container_id)
    if info is None:
        return None
    state = info.get("State") or {}
    return ContainerSummary(
        id=info.get("Id", container_id),
        labels=(info.get("Config") or {}).get("Labels") or {},
        state=state.get("Status") or "created",
        finished_at=_finished_at(info),
        gpu_devices=gpu_devices(info),
    )


def _finished_at(info: dict[str, Any]) -> float | None:
    return parse_docker_time((info.get("State") or {}).get("FinishedAt"))


def gpu_devices(info: dict[str, Any]) -> tuple[str, ...]:
    """The devices dockerd's nvidia driver gives a container (``all`` for a count).

    A request reaches that driver when it names it, or names no driver and asks for the
    ``gpu``/``nvidia`` capability; other drivers give no GPUs.
    """
    requests = (info.get("HostConfig") or {}).get("DeviceRequests") or []
    ids: list[str] = []
    for req in requests:
        if not isinstance(req, dict) or not _nvidia(req):
            continue
        ids.extend(req.get("DeviceIDs") or (["all"] if req.get("Count") else []))
    return tuple(ids)


def _nvidia(req: dict[str, Any]) -> bool:
    driver = req.get("Driver") or ""
    if driver:
        return driver in NVIDIA_DRIVERS
    caps = req.get("Capabilities") or []
    return any(SELECTOR_CAPABILITIES & set(group or ()) for group in caps)
