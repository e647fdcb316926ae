"""Creates waiting for a GPU: served by priority, then by how long they have waited.

Fairness: a waiting request holds back only free devices it can actually use next, i.e. when
they are enough for it now, or enough together with the devices of one other user's
allocation (the very next release). Otherwise it holds back nothing and requests behind it
that fit are served. So a large request cannot keep devices idle for everyone behind it, and
nobody can keep devices idle by waiting on their own allocations.

Pure: the daemon keeps a future per ticket and resolves it with what ``next_eligible`` says.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from formats.units import UnitError, parse_duration

from .inventory import Device
from .placement import pick
from .plan import eligible, permitted_kinds, pool
from .quota import Quota, QuotaLimits
from .refusal import Refusal
from .request import GpuRequest

if TYPE_CHECKING:
    from .ledger import Allocation, Ledger, Reservation


@dataclass(frozen=True)
class Ticket:
    """One create waiting for devices."""

    id: str
    user: str
    uid: int | None
    group: str
    priority: int
    request: GpuRequest
    limits: QuotaLimits
    enqueued_at: float
    deadline: float | None = None  # give up at this time; None = wait until removed


@dataclass(frozen=True)
class Dispatch:
    """What ``next_eligible`` decided: tickets served, and tickets that can no longer be."""

    granted: tuple[tuple[Ticket, Reservation], ...] = ()
    refused: tuple[tuple[Ticket, Refusal], ...] = ()


class WaitQueue:
    """Waiting tickets; the order is priority (high first), then enqueue time, then arrival.

    While tickets wait, a new create must not overtake them: the daemon keeps it off the
    devices ``held_back`` says are promised to tickets ahead of it.
    """

    def __init__(self) -> None:
        self._tickets: dict[str, tuple[tuple[int, float, int], Ticket]] = {}
        self._arrival = itertools.count()

    def __len__(self) -> int:
        return len(self._tickets)

    def enqueue(self, ticket: Ticket) -> int:
        """Add ``ticket``; returns its 1-based position."""
        if ticket.id in self._tickets:
            raise ValueError(f"ticket {ticket.id} is already queued")
        key = (-ticket.priority, ticket.enqueued_at, next(self._arrival))
        self._tickets[ticket.id] = (key, ticket)
        position = self.position(ticket.id)
        assert position is not None
        return position

    def remove(self, ticket_id: str) -> Ticket | None:
        """Take a ticket out (its client left, or it was served elsewhere)."""
        entry = self._tickets.pop(ticket_id, None)
        return entry[1] if entry else None

    def tickets(self) -> tuple[Ticket, ...]:
        """Every waiting ticket, first served first."""
        return tuple(t for _, t in sorted(self._tickets.values(), key=lambda e: e[0]))

    def position(self, ticket_id: str) -> int | None:
        """1-based place in the queue, or None when not queued."""
        for place, ticket in enumerate(self.tickets(), start=1):
            if ticket.id == ticket_id:
                return place
        return None

    def expire(self, now: float) -> list[Ticket]:
        """Remove and return the tickets whose deadline has passed."""
        gone = [t for t in self.tickets() if t.deadline is not None and t.deadline <= now]
        for ticket in gone:
            del self._tickets[ticket.id]
        return gone

    def next_eligible(self, ledger: Ledger, now: float) -> Dispatch:
        """Give free devices to waiting tickets, in queue order.

        A ticket that still cannot be served keeps from the tickets behind it only the free
        devices it can use next (see ``holds_for``), so a big request is not starved by a
        stream of small ones and cannot starve them either. Tickets refused for a reason
        waiting cannot fix (a quota) leave the queue.
        """
        granted: list[tuple[Ticket, Reservation]] = []
        refused: list[tuple[Ticket, Refusal]] = []
        kept: set[str] = set()
        for ticket in self.tickets():
            result = ledger.reserve(
                ticket.user,
                ticket.uid,
                ticket.group,
                ticket.limits,
                ticket.request,
                now,
                exclude=kept,
            )
            if not isinstance(result, Refusal):
                granted.append((ticket, result))
                del self._tickets[ticket.id]
            elif result.waitable:
                kept |= holds_for(ticket, ledger, kept)
            else:
                refused.append((ticket, result))
                del self._tickets[ticket.id]
        return Dispatch(tuple(granted), tuple(refused))

    def held_back(self, ledger: Ledger, priority: int) -> set[str]:
        """Free devices promised to tickets a new create of ``priority`` must not overtake.

        A new create comes after every ticket of its priority or higher.
        """
        kept: set[str] = set()
        for ticket in self.tickets():
            if ticket.priority >= priority:
                kept |= holds_for(ticket, ledger, kept)
        return kept

    def waiting_for(self, user: str) -> Ticket | None:
        """``user``'s waiting ticket, if any (one per user: waiting is not a way to hold)."""
        return next((t for t in self.tickets() if t.user == user), None)


def holds_for(ticket: Ticket, ledger: Ledger, kept: Collection[str]) -> set[str]:
    """The free devices (not already ``kept``) a waiting ticket holds back from those behind.

    Only what it can use next: free devices of one kind that suffice now, or that suffice
    together with the devices one allocation of another user will free on release. Else
    nothing: its owner's own allocations never count, and neither do creates in flight.
    """
    quota = Quota.from_limits(ticket.limits)
    request = ticket.request
    for group, need in _groups(ticket, quota, ledger):
        free = [d for d in group if ledger.holder_of(d.uuid) is None and d.uuid not in kept]
        if len(free) >= need:
            busy = {*kept, *ledger.busy()}
            return {d.uuid for d in pick(free, need, ledger.inventory, busy, ledger.audiences)}
        wanted = {d.uuid for d in group} - {d.uuid for d in free}
        if any(
            _frees_enough(a, ticket.user, wanted, need - len(free), request.explicit)
            for a in ledger.allocations()
        ):
            return {d.uuid for d in free}
    return set()


def _groups(ticket: Ticket, quota: Quota, ledger: Ledger) -> list[tuple[list[Device], int]]:
    """The device sets a ticket can be placed on, each with how many of it it needs."""
    request = ticket.request
    if request.explicit:
        named = list(dict.fromkeys(eligible(request, quota, ledger.inventory)))
        return [(named, len(named))] if named else []
    need = request.count or 1  # ``--gpus all`` is served with whatever the quota allows
    return [
        (pool(kind, request, quota, ledger.inventory), need)
        for kind in permitted_kinds(request, quota)
    ]


def _frees_enough(
    alloc: Allocation, user: str, wanted: set[str], missing: int, every: bool
) -> bool:
    """Whether releasing ``alloc`` alone gives ``missing`` more of the ``wanted`` devices."""
    if alloc.user == user or alloc.container_id is None:
        return False  # the waiter's own holdings, or a create in flight
    got = wanted & set(alloc.devices)
    return got == wanted if every else len(got) >= missing


def wait_seconds(label: str | None, policy_wait: float | None) -> float:
    """How long a create may wait: what its ``ds01.wait`` label asks, capped by ``gpu_wait``.

    Waiting is opt-in: without the label (or with a blank one, as DS01 writes it) a create
    waits 0 s, so one that finds no free device is answered at once; the Docker API gives a
    waiting create no way to show progress. ``policy_wait`` None = no cap. Raises
    ``formats.units.UnitError`` for a label that is not a duration (the gateway denies it).
    """
    if label is None or not label.strip():
        return 0.0
    text = label.strip()
    try:
        asked = float(text)  # plain seconds, e.g. ds01.wait=0 to fail fast
    except ValueError:
        asked = parse_duration(text) or 0.0
    if asked < 0 or asked != asked:
        raise UnitError(f"{label!r} is not a duration like 15m")
    return asked if policy_wait is None else min(asked, policy_wait)


def place_for(queue: WaitQueue, priority: int) -> int:
    """The 1-based place a new request of ``priority`` would take (after its equals)."""
    return 1 + sum(1 for t in queue.tickets() if t.priority >= priority)
