"""The wait queue: freed devices go to waiting requests by priority, then by waiting time."""

from __future__ import annotations

import pytest
from alloc_helpers import (
    G0,
    G1_1G,
    G1_2G,
    G1_3G,
    GPU2,
    GPU3,
    NOW,
    container,
    example_inventory,
    limits,
    researcher,
)

from allocator.ledger import Ledger, Reservation
from allocator.queue import Ticket, WaitQueue, place_for, wait_seconds
from allocator.refusal import HeldContainer, busy_states, name_holders, quota_count
from allocator.request import GpuRequest
from formats.units import UnitError

WHOLE = dict(max_gpus=2, allow_full_gpu=True, max_mig_instances=0, max_gpus_per_container=2)


def ticket(tid: str, priority: int, at: float, count: int = 1, **values) -> Ticket:
    lim = limits(tid, priority=priority, **{**WHOLE, **values})
    return Ticket(tid, tid, 1000, "g", priority, GpuRequest(count=count), lim, at)


def full_ledger() -> tuple[Ledger, list[str]]:
    """Both whole GPUs bound to containers c2 and c3."""
    ledger = Ledger(example_inventory())
    for uuid, cid in ((GPU2, "c2"), (GPU3, "c3")):
        res = ledger.reserve(
            "holder", 1, "g", researcher("holder"), GpuRequest(device_ids=(uuid,)), NOW
        )
        ledger.bind(res.reservation_id, cid)
    return ledger, ["c2", "c3"]


def test_order_is_priority_then_waiting_time() -> None:
    """Higher priority first; equal priority by who waited longest; then arrival."""
    queue = WaitQueue()
    assert queue.enqueue(ticket("late-low", 1, NOW + 10)) == 1
    assert queue.enqueue(ticket("early-low", 1, NOW)) == 1
    assert queue.enqueue(ticket("high", 9, NOW + 20)) == 1
    assert queue.enqueue(ticket("same-time", 1, NOW)) == 3
    assert [t.id for t in queue.tickets()] == ["high", "early-low", "same-time", "late-low"]
    assert queue.position("late-low") == 4
    assert queue.position("nobody") is None
    assert queue.remove("high").id == "high"
    assert queue.position("late-low") == 3
    with pytest.raises(ValueError):
        queue.enqueue(ticket("early-low", 1, NOW))


def test_freed_device_goes_to_highest_priority() -> None:
    """When a GPU is freed, the highest-priority waiting request gets it."""
    ledger, (c2, _) = full_ledger()
    queue = WaitQueue()
    queue.enqueue(ticket("student", 1, NOW))
    queue.enqueue(ticket("staff", 5, NOW + 30))
    assert queue.next_eligible(ledger, NOW + 40).granted == ()
    ledger.container_removed(c2)
    dispatch = queue.next_eligible(ledger, NOW + 50)
    assert [(t.id, r.device_ids) for t, r in dispatch.granted] == [("staff", (GPU2,))]
    assert [t.id for t in queue.tickets()] == ["student"]
    assert queue.position("student") == 1


def test_big_request_is_not_starved_by_small_ones() -> None:
    """A waiting request for two GPUs keeps a freed one from requests queued behind it."""
    ledger, (c2, c3) = full_ledger()
    queue = WaitQueue()
    queue.enqueue(ticket("big", 5, NOW, count=2))
    queue.enqueue(ticket("small", 1, NOW))
    ledger.container_removed(c2)
    dispatch = queue.next_eligible(ledger, NOW + 1)
    assert dispatch.granted == () and len(queue) == 2
    assert ledger.holder_of(GPU2) is None  # kept free for "big"
    ledger.container_removed(c3)
    dispatch = queue.next_eligible(ledger, NOW + 2)
    assert [(t.id, len(r.devices)) for t, r in dispatch.granted] == [("big", 2)]
    assert isinstance(dispatch.granted[0][1], Reservation)


def test_ticket_refused_for_quota_leaves_the_queue() -> None:
    """A waiting request that now exceeds its quota is refused, not kept waiting."""
    ledger, (c2, _) = full_ledger()
    queue = WaitQueue()
    t = ticket("holder", 1, NOW, max_gpus=1)  # "holder" still has GPU 3 after c2 goes
    queue.enqueue(t)
    ledger.container_removed(c2)
    dispatch = queue.next_eligible(ledger, NOW + 1)
    assert [(x.id, r.code) for x, r in dispatch.refused] == [("holder", "quota_gpus")]
    assert len(queue) == 0


def test_deadline_expires() -> None:
    """Tickets past their deadline leave the queue."""
    queue = WaitQueue()
    lim = limits("a")
    queue.enqueue(Ticket("a", "a", 1, "g", 0, GpuRequest(count=1), lim, NOW, deadline=NOW + 60))
    queue.enqueue(Ticket("b", "b", 1, "g", 0, GpuRequest(count=1), lim, NOW))
    assert queue.expire(NOW + 59) == []
    assert [t.id for t in queue.expire(NOW + 60)] == ["a"]
    assert len(queue) == 1


@pytest.mark.parametrize(
    ("label", "policy", "expected"),
    [
        (None, 0.0, 0.0),
        (None, 900.0, 0.0),  # opt-in: no label, no wait (issue 14.1)
        ("", 900.0, 0.0),  # DS01 writes the label blank when the user did not set it
        ("5m", 900.0, 300.0),
        ("1h", 900.0, 900.0),  # gpu_wait is the most a user may ask for
        ("0", 900.0, 0.0),
        ("10m", None, 600.0),
        ("10m", 0.0, 0.0),
        (None, None, 0.0),
    ],
)
def test_wait_seconds(label: str | None, policy: float | None, expected: float | None) -> None:
    """Waiting is asked for with a ds01.wait label; the policy's gpu_wait caps it."""
    assert wait_seconds(label, policy) == expected


def test_bad_wait_label() -> None:
    """A ds01.wait label that is not a duration is an error the gateway turns into a denial."""
    with pytest.raises(UnitError):
        wait_seconds("soon", 900.0)


# ---------------------------------------------------------------- fairness (issue 11)

MIG3 = dict(max_gpus=0, allow_full_gpu=False, max_mig_instances=3, max_gpus_per_container=3)
EVERY_MIG = [*G0, G1_3G, G1_2G, *G1_1G]


def held_by(*holdings: tuple[str, str, list[str]]) -> Ledger:
    """A ledger whose containers (id, user, devices) are running on their devices."""
    ledger = Ledger(example_inventory())
    ledger.rebuild([container(cid, user, devs) for cid, user, devs in holdings], NOW)
    ledger.check_invariants()
    return ledger


def explicit(tid: str, priority: int, at: float, *devices: str, **values) -> Ticket:
    lim = limits(tid, priority=priority, **{**WHOLE, **MIG3, "allow_full_gpu": True, **values})
    return Ticket(tid, tid, 1000, "g", priority, GpuRequest(device_ids=devices), lim, at)


def mig(tid: str, priority: int, at: float, count: int) -> Ticket:
    lim = limits(tid, priority=priority, **MIG3)
    return Ticket(tid, tid, 1000, "g", priority, GpuRequest(count=count), lim, at)


@pytest.mark.parametrize(
    ("ledger", "tickets", "served", "kept_free"),
    [
        pytest.param(
            held_by(("c3", "x", [GPU3])),
            [ticket("big", 5, NOW, count=2), ticket("small", 1, NOW + 1)],
            [],
            {GPU2},
            id="big-placed-on-the-next-release-holds-the-free-gpu",
        ),
        pytest.param(
            held_by(("c3", "big", [GPU3])),
            [ticket("big", 5, NOW, count=2, max_gpus=3), ticket("small", 1, NOW + 1)],
            ["small"],
            set(),
            id="waiting-on-its-own-allocation-holds-nothing",
        ),
        pytest.param(
            held_by(("c1", "x", [G0[1]]), ("c2", "y", [G0[2]])),
            [
                explicit("big", 5, NOW, G0[0], G0[1], G0[2]),
                explicit("small", 1, NOW + 1, G0[0]),
            ],
            ["small"],
            set(),
            id="explicit-devices-needing-two-releases-hold-nothing",
        ),
        pytest.param(
            held_by(("c1", "x", [G0[1], G0[2]])),
            [
                explicit("big", 5, NOW, G0[0], G0[1], G0[2]),
                explicit("small", 1, NOW + 1, G0[0]),
            ],
            [],
            {G0[0]},
            id="explicit-devices-freed-by-one-release-are-held",
        ),
        pytest.param(
            held_by(*((f"c{i}", f"u{i}", [d]) for i, d in enumerate(EVERY_MIG[1:]))),
            [mig("big", 5, NOW, 3), mig("small", 1, NOW + 1, 1)],
            ["small"],
            set(),
            id="mig-count-needing-two-releases-holds-nothing",
        ),
        pytest.param(
            held_by(("c1", "x", EVERY_MIG[1:3]), ("c2", "y", EVERY_MIG[3:])),
            [mig("big", 5, NOW, 3), mig("small", 1, NOW + 1, 1)],
            [],
            {EVERY_MIG[0]},
            id="mig-count-freed-by-one-release-holds-the-free-one",
        ),
        pytest.param(
            held_by(("c3", "x", [GPU3])),
            [ticket("small", 5, NOW), ticket("big", 1, NOW + 1, count=2)],
            ["small"],
            set(),
            id="fits-now-is-served-first",
        ),
        pytest.param(
            held_by(*((f"c{i}", f"u{i}", [d]) for i, d in enumerate(EVERY_MIG[1:]))),
            [mig("big", 5, NOW, 3), mig("next", 3, NOW, 1), mig("last", 1, NOW, 1)],
            ["next"],
            set(),
            id="only-the-first-that-fits-gets-the-free-device",
        ),
    ],
)
def test_fair_queueing(ledger, tickets, served, kept_free) -> None:
    """A waiter holds back only what it can use now or after one release by someone else."""
    queue = WaitQueue()
    for t in tickets:
        queue.enqueue(t)
    dispatch = queue.next_eligible(ledger, NOW + 10)
    assert [t.id for t, _ in dispatch.granted] == served
    assert queue.held_back(ledger, priority=0) == kept_free
    ledger.check_invariants()


def test_new_creates_do_not_overtake_but_higher_priority_does() -> None:
    """``held_back`` is what a new create of a priority may not take."""
    ledger = held_by(("c3", "x", [GPU3]))
    queue = WaitQueue()
    queue.enqueue(ticket("big", 5, NOW, count=2))
    assert queue.held_back(ledger, priority=5) == {GPU2}
    assert queue.held_back(ledger, priority=6) == set()


def test_a_create_in_flight_is_not_a_release() -> None:
    """A reservation will become a container, not free devices: nothing is held for it."""
    ledger = Ledger(example_inventory())
    res = ledger.reserve("x", 1, "g", researcher("x"), GpuRequest(device_ids=(GPU3,)), NOW)
    assert isinstance(res, Reservation)
    queue = WaitQueue()
    queue.enqueue(ticket("big", 5, NOW, count=2))
    assert queue.held_back(ledger, priority=0) == set()


def test_one_waiting_ticket_per_user_is_found() -> None:
    queue = WaitQueue()
    queue.enqueue(ticket("a", 1, NOW))
    assert queue.waiting_for("a").id == "a" and queue.waiting_for("b") is None


# ---------------------------------------------------------------- what a user is told (issue 14)


@pytest.mark.parametrize(
    ("held", "text"),
    [
        (
            HeldContainer(
                ("MIG-1a2b…",), "c1", "kept", "stopped", 3600.0 + 1000, "gpu_hold_after_stop"
            ),
            "MIG-1a2b…: container kept, stopped; holds it 1h more (gpu_hold_after_stop)",
        ),
        (
            HeldContainer(
                ("MIG-1a2b…",), "c1", "fresh", "created (never started)", 1600.0, "created_timeout"
            ),
            "MIG-1a2b…: container fresh, created (never started); holds it 10m more (created_timeout)",
        ),
        (
            HeldContainer(("GPU-5f6c…",), "c1", "train", "running"),
            "GPU-5f6c…: container train, running; holds it while it runs, then for "
            "gpu_hold_after_stop",
        ),
        (
            HeldContainer(("GPU-5f6c…",), "3f2a1b0c9d8e77", None, "stopped"),
            "GPU-5f6c…: container 3f2a1b0c9d8e, stopped; holds it until it is removed",
        ),
        (
            HeldContainer(("GPU-5f6c…",), None, None, "being created"),
            "GPU-5f6c…: a container being created",
        ),
    ],
)
def test_a_held_container_is_described(held: HeldContainer, text: str) -> None:
    assert held.describe(1000.0) == text


def test_a_quota_refusal_names_its_holders_and_the_command_that_frees_one() -> None:
    refusal = quota_count("quota_mig", 1, 1, 1, [(("MIG-1a2b…",), "c1")])
    running = HeldContainer(("MIG-1a2b…",), "c1", "train", "running")
    named = name_holders(refusal, [running], 0.0)
    assert named.reason == (
        "GPU quota reached: you hold 1 of 1 MIG instance (MIG-1a2b…: container train, running; "
        "holds it while it runs, then for gpu_hold_after_stop)"
    )
    assert named.fix == (
        "free one with `docker rm -f train` (`docker ps -a` or `ds01 ps` lists your containers, "
        "stopped and created ones too), or ask an admin for a higher max_mig_instances"
    )


def test_busy_states_tell_how_devices_are_held_not_by_whom() -> None:
    held = [
        HeldContainer(("a",), "c1", "x", "running"),
        HeldContainer(("b",), "c2", "y", "stopped", 700.0, "gpu_hold_after_stop"),
        HeldContainer(("c",), "c3", "z", "stopped", 400.0, "gpu_hold_after_stop"),
    ]
    assert busy_states(held, 100.0) == "held by 1 running, 2 stopped (the first frees in 5m)"


def test_a_new_request_takes_its_place_after_its_equals() -> None:
    queue = WaitQueue()
    for n, priority in enumerate((50, 10, 10)):
        queue.enqueue(_ticket(f"t{n}", priority))
    assert place_for(queue, 10) == 4 and place_for(queue, 50) == 2 and place_for(queue, 90) == 1


def _ticket(ticket_id: str, priority: int) -> Ticket:
    quota = limits("u", priority=priority)
    return Ticket(ticket_id, "u", 1000, "g", priority, GpuRequest(count=1), quota, NOW)
