"""Placement: whole GPUs stay whole, MIG instances are packed best-fit, always the same way."""

from __future__ import annotations

import math

from alloc_helpers import (
    G0,
    G1_1G,
    G1_2G,
    G1_3G,
    GPU2,
    GPU3,
    NOW,
    example_inventory,
    limits,
    researcher,
    student,
)

from allocator.inventory import parse_inventory
from allocator.ledger import Ledger, Reservation
from allocator.placement import free_slices, pick, within_gpueq
from allocator.request import GpuRequest


def grant(ledger: Ledger, user: str, lim, request: GpuRequest, t: float = NOW) -> Reservation:
    result = ledger.reserve(user, 1000, "g", lim, request, t)
    assert isinstance(result, Reservation), getattr(result, "message", result)
    return result


def test_mig_best_fit_fills_the_fullest_gpu_first() -> None:
    """A 1g request goes to the GPU with the least free capacity that still has a 1g."""
    ledger = Ledger(example_inventory())
    anyone = limits(max_mig_instances=None)
    # GPU 1 has 7 free slices like GPU 0; ties go to the lower index (GPU 0).
    assert grant(ledger, "a", anyone, GpuRequest(count=1)).device_ids == (G0[0],)
    # Now GPU 0 has 6 free slices and GPU 1 has 7: GPU 0 again.
    assert grant(ledger, "b", anyone, GpuRequest(count=1)).device_ids == (G0[1],)


def test_mig_best_fit_prefers_the_gpu_with_less_room() -> None:
    """With GPU 1 partly taken, its 1g instances go before GPU 0's."""
    ledger = Ledger(example_inventory())
    anyone = limits(max_mig_instances=None, allowed_mig_profiles=None)
    grant(ledger, "a", anyone, GpuRequest(device_ids=(G1_3G,)))  # GPU 1: 4 slices left
    picks = [grant(ledger, f"u{i}", anyone, GpuRequest(count=1)).device_ids[0] for i in range(4)]
    # 1g instances on GPU 1 first (4 left < 7), then GPU 0; the 2g stays free.
    assert picks == [G1_1G[0], G1_1G[1], G0[0], G0[1]]
    assert ledger.holder_of(G1_2G) is None


def test_smallest_instance_first_keeps_large_instances_free() -> None:
    """While 1g instances are free, nobody gets the 3g.40gb by accident."""
    ledger = Ledger(example_inventory())
    anyone = limits(max_mig_instances=None)
    got = [grant(ledger, f"u{i}", anyone, GpuRequest(count=1)).device_ids[0] for i in range(9)]
    assert G1_3G not in got and G1_2G not in got
    # The tenth and eleventh get the 2g then the 3g: only then are they the smallest left.
    assert grant(ledger, "x", anyone, GpuRequest(count=1)).device_ids == (G1_2G,)
    assert grant(ledger, "y", anyone, GpuRequest(count=1)).device_ids == (G1_3G,)


def test_whole_gpus_stay_free_for_mig_users() -> None:
    """A MIG-only user never gets a whole GPU, even when every MIG instance is taken."""
    ledger = Ledger(example_inventory())
    anyone = limits(max_mig_instances=None)
    for i in range(11):
        grant(ledger, f"u{i}", anyone, GpuRequest(count=1))
    refused = ledger.reserve("v", 1, "g", anyone, GpuRequest(count=1), NOW)
    assert refused.code == "no_capacity"
    assert ledger.holder_of(GPU2) is None and ledger.holder_of(GPU3) is None


def test_full_gpu_user_gets_whole_gpu_then_mig() -> None:
    """Users allowed full GPUs get a whole one while free and in quota, else a MIG instance."""
    ledger = Ledger(example_inventory())
    rita = researcher(max_gpus=1)
    assert grant(ledger, "rita", rita, GpuRequest(count=1)).device_ids == (GPU2,)
    # Whole-GPU quota used up: the next one is a MIG instance.
    assert grant(ledger, "rita", rita, GpuRequest(count=1)).device_ids == (G0[0],)
    ravi = researcher("ravi", max_gpus=2)
    assert grant(ledger, "ravi", ravi, GpuRequest(count=1)).device_ids == (GPU3,)
    # No whole GPU free: MIG.
    assert grant(ledger, "ravi", ravi, GpuRequest(count=1)).device_ids == (G0[1],)


def test_a_container_gets_one_kind_of_device() -> None:
    """--gpus 2 with one whole GPU free gives two MIG instances, not a mix."""
    ledger = Ledger(example_inventory())
    grant(ledger, "x", researcher("x"), GpuRequest(device_ids=(GPU2,)))
    got = grant(ledger, "rita", researcher(), GpuRequest(count=2))
    assert got.device_ids == (G0[0], G0[1])


def test_whole_gpu_best_fit_prefers_the_smaller_gpu() -> None:
    """Among whole GPUs, the smallest that fits goes first; the big one stays free."""
    inv = parse_inventory(
        "gpus:\n"
        "  - {index: 0, uuid: GPU-big, name: H200, memory: 141g}\n"
        "  - {index: 1, uuid: GPU-small, name: L4, memory: 24g}\n"
    )
    ledger = Ledger(inv)
    boss = researcher()
    assert grant(ledger, "a", boss, GpuRequest(count=1)).device_ids == ("GPU-small",)
    ledger = Ledger(inv)
    big = GpuRequest(count=1, min_memory=100 * 2**30)
    assert grant(ledger, "a", boss, big).device_ids == ("GPU-big",)


def test_placement_is_deterministic() -> None:
    """The same state always gives the same devices."""
    runs = []
    for _ in range(3):
        ledger = Ledger(example_inventory())
        anyone = limits(max_mig_instances=None, max_gpus=None, allow_full_gpu=True)
        runs.append(
            [grant(ledger, f"u{i}", anyone, GpuRequest(count=1)).device_ids for i in range(13)]
        )
    assert runs[0] == runs[1] == runs[2]
    assert runs[0][:2] == [(GPU2,), (GPU3,)]


def test_gpus_all_means_what_the_policy_allows() -> None:
    """--gpus all gives as many devices as quota and per-container limit allow, not all."""
    ledger = Ledger(example_inventory())
    got = grant(ledger, "alice", student(), GpuRequest(all=True))
    assert got.device_ids == (G0[0],)
    rita = researcher(max_gpus=2, max_gpus_per_container=2)
    assert grant(ledger, "rita", rita, GpuRequest(all=True)).device_ids == (GPU2, GPU3)
    trio = limits(max_mig_instances=3, max_gpus_per_container=None, max_gpu_equivalents=None)
    assert len(grant(ledger, "t", trio, GpuRequest(all=True)).devices) == 3


def test_gpus_all_stops_at_the_gpueq_quota() -> None:
    """--gpus all with a GPU-equivalent quota takes instances while they fit in it."""
    ledger = Ledger(example_inventory())
    eq = limits(max_mig_instances=None, max_gpu_equivalents=3 / 7)
    got = grant(ledger, "e", eq, GpuRequest(all=True))
    assert len(got.devices) == 3
    assert math.isclose(got.gpueq, 3 / 7)


def test_gpus_all_for_admin_takes_the_free_whole_gpus() -> None:
    """An admin (no quota) asking for all gets every free whole GPU, never a held one."""
    ledger = Ledger(example_inventory())
    grant(ledger, "rita", researcher(max_gpus=1), GpuRequest(count=1))
    admin = limits("root", admin=True)
    assert grant(ledger, "root", admin, GpuRequest(all=True)).device_ids == (GPU3,)


def test_requested_profile_is_honoured() -> None:
    """A request for a profile gets that profile."""
    ledger = Ledger(example_inventory())
    anyone = limits(max_mig_instances=None)
    got = grant(ledger, "a", anyone, GpuRequest(count=1, profiles=("2g.20gb",)))
    assert got.device_ids == (G1_2G,)


def test_pick_and_helpers() -> None:
    """The building blocks: free slices per GPU, pick order, the GPU-equivalent prefix."""
    inv = example_inventory()
    assert free_slices(inv, {G1_3G}) == {0: 7, 1: 4}
    mig = [d for d in inv.devices if d.is_mig]
    assert [d.uuid for d in pick(mig, 3, inv, {G1_3G})] == [G1_1G[0], G1_1G[1], G0[0]]
    assert pick(mig, 0, inv, set()) == ()
    three = pick(mig, 3, inv, set())
    assert len(within_gpueq(three, 2 / 7)) == 2
    assert within_gpueq(three, None) == three
