"""Preemption (``preempt_idle``): which lower-priority holders would have to let go.

Pure: the daemon stops the victims (with the normal grace, telling their owners why), releases
them in the ledger, then reserves for the higher-priority request.
"""

from __future__ import annotations

from collections.abc import Collection

from .ledger import Allocation, Ledger, State
from .plan import Busy, plan
from .quota import Quota, QuotaLimits
from .refusal import Refusal
from .request import GpuRequest


def preemption_plan(
    ledger: Ledger,
    user: str,
    limits: QuotaLimits,
    request: GpuRequest,
    now: float,
    idle: Collection[str],
) -> tuple[Allocation, ...] | None:
    """Lower-priority allocations whose release would let ``request`` be placed.

    Candidates: stopped containers still in their hold, then running containers the lifecycle
    reports ``idle`` (container ids); lowest priority first. ``()`` when the request fits
    already; None when even all candidates would not do. Never the user's own containers,
    never containers created outside DS01 (DS01 did not grant their devices).
    """
    quota = Quota.from_limits(limits)
    candidates = sorted(
        (
            a
            for a in ledger.allocations()
            if a.priority < quota.priority
            and a.user != user
            and not a.outside
            and (a.state is State.HELD or (a.state is State.BOUND and a.container_id in idle))
        ),
        # Stopped first (cheapest to take), then the lowest priority, then the most recent.
        key=lambda a: (a.state is not State.HELD, a.priority, -a.since, a.reservation_id),
    )
    usage = ledger.usage(user)
    held = ledger.busy()

    def fits(victims: list[Allocation]) -> bool:
        freed = {u for v in victims for u in v.devices}
        busy: Busy = {u: h for u, h in held.items() if u not in freed}
        return not isinstance(plan(request, quota, usage, ledger.inventory, busy, now), Refusal)

    if fits([]):
        return ()
    chosen: list[Allocation] = []
    for candidate in candidates:
        chosen.append(candidate)
        if fits(chosen):
            break
    else:
        return None
    for victim in list(chosen):  # keep only the victims the request really needs
        if len(chosen) > 1 and fits([v for v in chosen if v is not victim]):
            chosen.remove(victim)
    return tuple(chosen)
