"""The ledger follows a container's life: reserve, bind, stop, hold, release, re-acquire."""

from __future__ import annotations

import pytest
from alloc_helpers import (
    EXAMPLE,
    G0,
    G1_3G,
    GPU0,
    GPU2,
    GPU3,
    NOW,
    container,
    example_inventory,
    limits,
    researcher,
    student,
)

from allocator.inventory import parse_inventory
from allocator.ledger import Ledger, LedgerError, Reservation, State
from allocator.preempt import preemption_plan
from allocator.refusal import Refusal
from allocator.request import GpuRequest
from formats.labels import (
    LABEL_ALLOCATED_AT,
    LABEL_DEVICES,
    LABEL_GPUEQ,
    LABEL_UID,
    LABEL_USER,
    parse_time,
)

A = "a" * 64
B = "b" * 64


def take(ledger: Ledger, user: str = "alice", lim=None, request=None, t: float = NOW):
    got = ledger.reserve(
        user, 1001, "students", lim or student(user), request or GpuRequest(count=1), t
    )
    assert isinstance(got, Reservation), got
    return got


def test_reserve_then_bind() -> None:
    """A reservation holds its devices before the container exists, then belongs to it."""
    ledger = Ledger(example_inventory())
    res = take(ledger)
    assert ledger.holder_of(G0[0]).state is State.RESERVED
    alloc = ledger.bind(res.reservation_id, A)
    assert alloc.state is State.BOUND and alloc.container_id == A
    assert ledger.allocation_of(A) == alloc
    assert ledger.bind(res.reservation_id, A) == alloc  # idempotent
    ledger.check_invariants()


def test_reservation_labels() -> None:
    """The labels recording a grant: user, uid, devices, GPU-equivalents, time."""
    res = take(Ledger(example_inventory()))
    labels = res.labels()
    assert labels[LABEL_USER] == "alice"
    assert labels[LABEL_UID] == "1001"
    assert labels[LABEL_DEVICES] == G0[0]
    assert labels[LABEL_GPUEQ] == "0.1429"
    assert labels[LABEL_ALLOCATED_AT] == "2023-11-14T22:13:20.000Z"
    assert parse_time(labels[LABEL_ALLOCATED_AT]) == NOW


def test_rollback_frees_and_is_idempotent() -> None:
    """A failed create frees its reservation; rolling back twice or after bind does nothing."""
    ledger = Ledger(example_inventory())
    res = take(ledger)
    assert ledger.rollback(res.reservation_id).state is State.RELEASED
    assert ledger.holder_of(G0[0]) is None
    assert ledger.rollback(res.reservation_id) is None
    res = take(ledger)
    ledger.bind(res.reservation_id, A)
    assert ledger.rollback(res.reservation_id) is None
    assert ledger.holder_of(G0[0]) is not None


def test_bind_misuse_raises() -> None:
    """Binding an unknown reservation, or a container twice, is a daemon bug."""
    ledger = Ledger(example_inventory())
    with pytest.raises(LedgerError):
        ledger.bind("r99", A)
    first = take(ledger, "alice")
    second = take(ledger, "bob")
    ledger.bind(first.reservation_id, A)
    with pytest.raises(LedgerError):
        ledger.bind(second.reservation_id, A)


def test_stale_reservations_expire() -> None:
    """A create that never came back frees its devices after max_age."""
    ledger = Ledger(example_inventory())
    take(ledger, t=NOW)
    assert ledger.expire_reservations(NOW + 10, max_age=60) == []
    assert [a.devices for a in ledger.expire_reservations(NOW + 60, max_age=60)] == [(G0[0],)]


def test_stop_holds_then_releases() -> None:
    """A stopped container keeps its devices for the hold, then they are free."""
    ledger = Ledger(example_inventory())
    ledger.bind(take(ledger).reservation_id, A)
    held = ledger.container_stopped(A, NOW + 100, 900)
    assert held.state is State.HELD and held.hold_until == NOW + 1000
    assert ledger.container_stopped(A, NOW + 200, 900).hold_until == NOW + 1000  # repeat die
    assert ledger.expire_holds(NOW + 999) == []
    released = ledger.expire_holds(NOW + 1000)
    assert [a.container_id for a in released] == [A]
    assert released[0].state is State.RELEASED
    assert ledger.holder_of(G0[0]) is None


def test_stop_without_hold_releases_at_once() -> None:
    """gpu_hold_after_stop 0: the devices are free when the container stops."""
    ledger = Ledger(example_inventory())
    ledger.bind(take(ledger).reservation_id, A)
    assert ledger.container_stopped(A, NOW, 0).state is State.RELEASED
    assert ledger.allocations() == ()


def test_hold_none_keeps_until_removed() -> None:
    """A hold of None keeps the devices until the container is removed."""
    ledger = Ledger(example_inventory())
    ledger.bind(take(ledger).reservation_id, A)
    ledger.container_stopped(A, NOW, None)
    assert ledger.expire_holds(NOW + 10**9) == []
    assert ledger.container_removed(A).state is State.RELEASED
    assert ledger.container_removed(A) is None


def test_restart_within_hold_reacquires() -> None:
    """Starting again within the hold gives back the same devices."""
    ledger = Ledger(example_inventory())
    ledger.bind(take(ledger).reservation_id, A)
    ledger.container_stopped(A, NOW, 900)
    again = ledger.reacquire(A, [G0[0]], user="alice", uid=1001, group="students", now=NOW + 60)
    assert again.state is State.BOUND and again.hold_until is None
    assert again.devices == (G0[0],)


def test_restart_after_release_gets_devices_if_free() -> None:
    """After the hold ran out, a start re-acquires the recorded devices when nobody took them."""
    ledger = Ledger(example_inventory())
    ledger.bind(take(ledger).reservation_id, A)
    ledger.container_stopped(A, NOW, 0)
    again = ledger.reacquire(
        A, [G0[0]], user="alice", uid=1001, group="students", now=NOW + 60, limits=student()
    )
    assert isinstance(again, type(ledger.allocation_of(A)))
    assert ledger.holder_of(G0[0]).container_id == A


def test_restart_refused_when_device_taken() -> None:
    """A start whose device went to someone else is refused, naming the holder and the fix."""
    ledger = Ledger(example_inventory())
    ledger.bind(take(ledger).reservation_id, A)
    ledger.container_stopped(A, NOW, 0)
    ledger.bind(take(ledger, "bob", t=NOW + 10).reservation_id, B)
    r = ledger.reacquire(A, [G0[0]], user="alice", uid=1001, group="students", now=NOW + 70)
    assert isinstance(r, Refusal) and r.code == "device_busy"
    assert r.reason == (
        "GPU 0 MIG 1g.10gb (MIG-1a2b3c4d…) is in use by bob's container bbbbbbbbbbbb, for 1m"
    )
    assert r.fix.startswith("recreate the container to get a free GPU")


def test_restart_refused_over_quota() -> None:
    """A released container cannot restart into more than the quota allows."""
    ledger = Ledger(example_inventory())
    ledger.bind(take(ledger).reservation_id, A)
    ledger.container_stopped(A, NOW, 0)
    other = GpuRequest(device_ids=(G0[1],))
    ledger.bind(take(ledger, request=other, t=NOW + 5).reservation_id, B)  # another instance
    r = ledger.reacquire(
        A, [G0[0]], user="alice", uid=1001, group="students", now=NOW + 9, limits=student()
    )
    assert isinstance(r, Refusal) and r.code == "quota_mig"


def test_restart_of_device_gone_from_inventory() -> None:
    """A recorded device no longer on the server (MIG layout changed) cannot be re-acquired."""
    ledger = Ledger(example_inventory())
    r = ledger.reacquire(A, ["MIG-gone"], user="alice", uid=1, group="g", now=NOW)
    assert isinstance(r, Refusal) and r.code == "unknown_device"


def test_snapshot_lists_every_device_and_holder() -> None:
    """ds01 gpus: every device with its holder; lost devices still held are listed too."""
    ledger = Ledger(example_inventory())
    ledger.bind(take(ledger).reservation_id, A)
    snap = ledger.snapshot()
    assert len(snap.devices) == 13
    assert [s.uuid for s in snap.devices if s.allocation] == [G0[0]]
    assert len(snap.free) == 12
    # GPU 0 is lost: its holder keeps the claim, and ds01 gpus still shows it.
    ledger.set_inventory(
        parse_inventory(EXAMPLE.read_text().replace("index: 0", "index: 0\n    problem: lost"))
    )
    snap = ledger.snapshot()
    assert [(s.uuid, s.device) for s in snap.devices if s.allocation] == [(G0[0], None)]
    assert snap.problems == (f"GPU 0 ({GPU0}): lost",)


def test_preemption_picks_lower_priority_idle_containers() -> None:
    """With preempt_idle, a higher-priority request may take an idle lower-priority device."""
    ledger = Ledger(example_inventory())
    low = limits("low", max_gpus=2, allow_full_gpu=True, priority=1)
    ledger.bind(take(ledger, "low", low, GpuRequest(device_ids=(GPU2,))).reservation_id, A)
    ledger.bind(take(ledger, "low", low, GpuRequest(device_ids=(GPU3,))).reservation_id, B)
    boss = researcher("boss", priority=100, max_mig_instances=0)
    assert ledger.reserve("boss", 1, "r", boss, GpuRequest(count=1), NOW).code == "no_capacity"
    assert preemption_plan(ledger, "boss", boss, GpuRequest(count=1), NOW, idle=set()) is None
    victims = preemption_plan(ledger, "boss", boss, GpuRequest(count=1), NOW, idle={A, B})
    assert [v.container_id for v in victims] == [A]
    # Never from a higher or equal priority.
    peer = researcher("peer", priority=1, max_mig_instances=0)
    assert preemption_plan(ledger, "peer", peer, GpuRequest(count=1), NOW, idle={A, B}) is None


def test_preemption_prefers_stopped_containers() -> None:
    """A stopped container in its hold is preempted before an idle running one."""
    ledger = Ledger(example_inventory())
    low = limits("low", max_gpus=2, allow_full_gpu=True, priority=1)
    ledger.bind(take(ledger, "low", low, GpuRequest(device_ids=(GPU2,))).reservation_id, A)
    ledger.bind(take(ledger, "low", low, GpuRequest(device_ids=(GPU3,))).reservation_id, B)
    ledger.container_stopped(B, NOW, 900)
    boss = researcher("boss", priority=100, max_mig_instances=0)
    victims = preemption_plan(ledger, "boss", boss, GpuRequest(count=1), NOW, idle={A})
    assert [v.container_id for v in victims] == [B]


def test_usage_counts_reserved_bound_and_held() -> None:
    """Usage adds up whole GPUs, MIG instances and GPU-equivalents."""
    ledger = Ledger(example_inventory())
    rita = researcher()
    take(ledger, "rita", rita, GpuRequest(device_ids=(GPU2,)))
    ledger.bind(take(ledger, "rita", rita, GpuRequest(device_ids=(G1_3G,))).reservation_id, A)
    ledger.container_stopped(A, NOW, 60)
    usage = ledger.usage("rita")
    assert (usage.whole, usage.mig) == (1, 1)
    assert abs(usage.gpueq - 10 / 7) < 1e-9


def test_restart_needs_every_recorded_device() -> None:
    """A hold that covers only part of the container's devices (after a rebuild) is not enough.

    The container sees every device its labels record, so a start must hold them all.
    """
    ledger = Ledger(example_inventory())
    two = student("bob", max_mig_instances=2, max_gpus_per_container=2)
    res = take(ledger, "bob", two, GpuRequest(count=2))
    ledger.bind(res.reservation_id, A)
    ledger.release(A)  # preempted
    other = take(ledger, "carol", request=GpuRequest(device_ids=(res.device_ids[0],)))
    ledger.rebuild(
        [container(A, "bob", list(res.device_ids), state="exited", finished_at=NOW)],
        NOW + 1,
        hold_for=600,
    )
    assert ledger.allocation_of(A).devices == (res.device_ids[1],)  # partial hold
    r = ledger.reacquire(A, res.device_ids, user="bob", uid=1, group="g", now=NOW + 2)
    assert isinstance(r, Refusal) and r.code == "device_busy"
    ledger.rollback(other.reservation_id)
    again = ledger.reacquire(
        A, res.device_ids, user="bob", uid=1, group="g", now=NOW + 3, limits=two
    )
    assert again.devices == res.device_ids and again.state is State.BOUND
    ledger.check_invariants()


def test_no_preemption_needed_when_it_fits() -> None:
    """A request that fits already needs no victims."""
    ledger = Ledger(example_inventory())
    boss = researcher("boss", priority=100)
    assert preemption_plan(ledger, "boss", boss, GpuRequest(count=1), NOW, idle=set()) == ()
