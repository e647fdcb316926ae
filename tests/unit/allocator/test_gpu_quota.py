"""Quotas: every refusal code, with the exact message and fix a student sees."""

from __future__ import annotations

import math

from alloc_helpers import (
    G0,
    G1_1G,
    G1_2G,
    G1_3G,
    GPU2,
    NOW,
    example_inventory,
    limits,
    researcher,
    student,
)

from allocator.ledger import Ledger, Reservation
from allocator.refusal import CODES, Refusal
from allocator.request import GpuRequest

CID = "3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c"


def reserve(ledger: Ledger, user: str, lim, request: GpuRequest, t: float = NOW):
    return ledger.reserve(user, 1000, "students", lim, request, t)


def bound(ledger: Ledger, user: str, lim, request: GpuRequest, cid: str) -> Reservation:
    got = reserve(ledger, user, lim, request)
    assert isinstance(got, Reservation), got
    ledger.bind(got.reservation_id, cid)
    return got


def refused(result) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


def test_quota_mig() -> None:
    """One MIG instance held: the next is refused, naming the instance and the container."""
    ledger = Ledger(example_inventory())
    bound(ledger, "alice", student(), GpuRequest(count=1), CID)
    r = refused(reserve(ledger, "alice", student(), GpuRequest(count=1)))
    assert r.code == "quota_mig"
    assert r.reason == (
        "GPU quota reached: you hold 1 of 1 MIG instance (MIG-1a2b3c4d…, container 3f2a1b0c9d8e)"
    )
    assert r.fix == (
        "remove a container you no longer need (`docker rm NAME`; `docker ps -a` or `ds01 ps` "
        "lists them all, stopped and created ones included), "
        "or ask an admin for a higher max_mig_instances"
    )
    assert not r.waitable
    assert r.message == f"{r.reason}. To fix: {r.fix}."


def test_quota_mig_asking_for_more_than_left() -> None:
    """Holding 1 of 2 and asking for 2 more says so."""
    ledger = Ledger(example_inventory())
    two = student(max_mig_instances=2, max_gpus_per_container=2)
    bound(ledger, "alice", two, GpuRequest(count=1), CID)
    r = refused(reserve(ledger, "alice", two, GpuRequest(count=2)))
    assert r.reason == (
        "GPU quota reached: you hold 1 of 2 MIG instances (MIG-1a2b3c4d…, container "
        "3f2a1b0c9d8e) and asked for 2 more"
    )


def test_quota_gpus() -> None:
    """Whole-GPU quota used (and no MIG allowed): refused with quota_gpus."""
    ledger = Ledger(example_inventory())
    one = researcher(max_gpus=1, max_mig_instances=0)
    bound(ledger, "rita", one, GpuRequest(count=1), CID)
    r = refused(reserve(ledger, "rita", one, GpuRequest(count=1)))
    assert r.code == "quota_gpus"
    assert r.reason == (
        "GPU quota reached: you hold 1 of 1 whole GPU (GPU-7c8d9e0f…, container 3f2a1b0c9d8e)"
    )
    assert r.fix.endswith("or ask an admin for a higher max_gpus")


def test_quota_gpus_explicit_when_holding_none() -> None:
    """Asking for more whole GPUs than the quota, holding none, suggests the right count."""
    ledger = Ledger(example_inventory())
    one = researcher(max_gpus=1, max_gpus_per_container=None)
    r = refused(reserve(ledger, "rita", one, GpuRequest(device_ids=("2", "3"))))
    assert r.code == "quota_gpus"
    assert r.reason == "GPU quota reached: you hold 0 of 1 whole GPU and asked for 2 more"
    assert r.fix == "ask for at most 1 (`--gpus 1`), or ask an admin for a higher max_gpus"


def test_quota_gpueq() -> None:
    """GPU-equivalents: a 3g (3/7) on top of a 1g (1/7) exceeds a 3/7 quota."""
    ledger = Ledger(example_inventory())
    eq = limits(max_mig_instances=None, max_gpu_equivalents=3 / 7)
    bound(ledger, "eve", eq, GpuRequest(count=1), CID)
    r = refused(reserve(ledger, "eve", eq, GpuRequest(device_ids=(G1_3G,))))
    assert r.code == "quota_gpueq"
    assert r.reason == (
        "GPU quota reached: you hold 0.1429 of 0.4286 GPU-equivalents (MIG-1a2b3c4d…, "
        "container 3f2a1b0c9d8e) and this request needs 0.4286 more"
    )
    assert r.fix.endswith("or ask an admin for a higher max_gpu_equivalents")
    # But a 2g (2/7) fits exactly: 1/7 + 2/7 = 3/7, despite float rounding.
    ok = reserve(ledger, "eve", eq, GpuRequest(device_ids=(G1_2G,)))
    assert isinstance(ok, Reservation)
    assert math.isclose(ledger.usage("eve").gpueq, 3 / 7)


def test_gpueq_sums_to_exactly_one_gpu() -> None:
    """3g + 2g + 1g + 1g fit a quota of 1.0 GPU-equivalent (float tolerance)."""
    ledger = Ledger(example_inventory())
    eq = limits(max_mig_instances=None, max_gpu_equivalents=1.0)
    for device in (G1_3G, G1_2G, *G1_1G):
        assert isinstance(reserve(ledger, "eve", eq, GpuRequest(device_ids=(device,))), Reservation)
    assert refused(reserve(ledger, "eve", eq, GpuRequest(count=1))).code == "quota_gpueq"


def test_per_container() -> None:
    """More devices in one container than the policy allows."""
    ledger = Ledger(example_inventory())
    r = refused(reserve(ledger, "alice", student(max_mig_instances=4), GpuRequest(count=2)))
    assert r.code == "per_container"
    assert r.reason == "at most 1 GPU per container; you asked for 2"
    assert r.fix == "ask for fewer (`--gpus 1`), or spread the work over several containers"


def test_no_full_gpu() -> None:
    """A student naming a whole GPU is told they get MIG instances."""
    ledger = Ledger(example_inventory())
    r = refused(reserve(ledger, "alice", student(), GpuRequest(device_ids=("2",))))
    assert r.code == "no_full_gpu"
    assert r.reason == (
        "your GPU policy gives MIG instances, not whole GPUs, and GPU 2 (GPU-7c8d9e0f…) "
        "is a whole GPU"
    )
    assert r.fix == "use `--gpus 1` to get a MIG instance, or ask an admin for allow_full_gpu"


def test_profile_not_allowed_explicit() -> None:
    """Naming an instance of a profile the user may not use."""
    ledger = Ledger(example_inventory())
    small = student(allowed_mig_profiles=["1g.10gb"])
    r = refused(reserve(ledger, "alice", small, GpuRequest(device_ids=(G1_3G,))))
    assert r.code == "profile_not_allowed"
    assert r.reason == (
        "MIG profile 3g.40gb (MIG-2b3c4d5e…) is not allowed for you (allowed MIG profiles: 1g.10gb)"
    )


def test_profile_not_allowed_count() -> None:
    """No instance on the server has a profile the user may use."""
    ledger = Ledger(example_inventory())
    r = refused(
        reserve(ledger, "a", student(allowed_mig_profiles=["4g.40gb"]), GpuRequest(count=1))
    )
    assert r.code == "profile_not_allowed"
    assert r.reason == (
        "none of this server's MIG instances has a profile you may use "
        "(allowed MIG profiles: 4g.40gb)"
    )


def test_allowed_profiles_restrict_placement() -> None:
    """Only allowed profiles are placed, even when smaller ones are free."""
    ledger = Ledger(example_inventory())
    big = student(allowed_mig_profiles=["3g.40gb"], max_gpu_equivalents=None)
    assert reserve(ledger, "a", big, GpuRequest(count=1)).device_ids == (G1_3G,)


def test_no_capacity_for_student_counts_users() -> None:
    """A full server: the student sees how many devices and users, not who."""
    ledger = Ledger(example_inventory())
    for i in range(11):
        bound(ledger, f"u{i % 3}x{i}", student(f"u{i}"), GpuRequest(count=1), f"{i:02d}" * 10)
    r = refused(reserve(ledger, "alice", student(), GpuRequest(count=1), NOW + 90))
    assert r.code == "no_capacity"
    assert r.waitable
    assert (
        r.reason == "no free GPU: all 11 MIG instances you may use are taken; "
        "11 devices in use by 11 users"
    )
    assert r.fix == (
        "try again later (`ds01 gpus` shows who holds what and the queue), or stop one of "
        "your own containers holding a GPU"
    )
    assert len(r.holders) == 11


def test_no_capacity_for_admin_names_holders() -> None:
    """An admin sees who holds what, since when."""
    full = Ledger(example_inventory())
    bound(full, "bob", researcher("bob"), GpuRequest(device_ids=("2",)), "b" * 64)
    bound(full, "carol", researcher("carol"), GpuRequest(device_ids=("3",)), "c" * 64)
    only_whole = limits("root", admin=True)
    for device in full.inventory.devices:
        if device.is_mig:
            bound(
                full,
                "dan",
                limits("dan", admin=True),
                GpuRequest(device_ids=(device.uuid,)),
                device.uuid,
            )
    r = refused(reserve(full, "root", only_whole, GpuRequest(count=1), NOW + 125))
    assert r.reason.startswith(
        "no free GPU: all 2 whole GPUs and 11 MIG instances you may use are taken; in use: "
        "GPU 2 (GPU-7c8d9e0f…): bob's container bbbbbbbbbbbb, for 2m5s; "
        "GPU 3 (GPU-8d9e0f1a…): carol's container cccccccccccc, for 2m5s; "
        "GPU 0 MIG 1g.10gb (MIG-1a2b3c4d…): dan's container MIG-1a2b3c4d, for 2m5s"
    )


def test_more_than_the_server_has_is_not_waitable() -> None:
    """Asking for more devices than exist: no_capacity, and waiting would not help."""
    ledger = Ledger(example_inventory())
    r = refused(reserve(ledger, "root", limits("root", admin=True), GpuRequest(count=20)))
    assert r.code == "no_capacity"
    assert not r.waitable
    assert r.reason == (
        "no free GPU: this server has 2 whole GPUs and 11 MIG instances for you and you asked "
        "for 20 (one container gets devices of one kind)"
    )


def test_device_busy_names_the_holder() -> None:
    """Naming a device someone else holds says who and since when."""
    ledger = Ledger(example_inventory())
    bound(ledger, "bob", student("bob"), GpuRequest(count=1), CID)
    r = refused(reserve(ledger, "alice", student(), GpuRequest(device_ids=(G0[0],)), NOW + 3700))
    assert r.code == "device_busy"
    assert r.reason == (
        "GPU 0 MIG 1g.10gb (MIG-1a2b3c4d…) is in use by bob's container 3f2a1b0c9d8e, for 1h1m40s"
    )
    assert r.waitable
    assert r.holders[0].user == "bob"


def test_unknown_device() -> None:
    """A device that does not exist, or a GPU split into MIG instances, is unknown."""
    ledger = Ledger(example_inventory())
    r = refused(reserve(ledger, "alice", student(), GpuRequest(device_ids=("7",))))
    assert r.code == "unknown_device"
    assert r.reason == "no GPU or MIG instance '7' that DS01 can allocate on this server"
    r = refused(reserve(ledger, "alice", student(), GpuRequest(device_ids=("1",))))
    assert r.reason.endswith(
        ": GPU 1 is split into MIG instances; name one by its MIG- UUID (`ds01 gpus`)"
    )


def test_no_gpu_access_at_all() -> None:
    """A user whose policy gives no GPUs is told so, not that the server is full."""
    ledger = Ledger(example_inventory())
    r = refused(reserve(ledger, "x", limits(max_mig_instances=0), GpuRequest(count=1)))
    assert r.code == "quota_mig"
    assert r.reason == "your GPU policy gives you no MIG instances (max_mig_instances is 0)"


def test_held_devices_count_against_quota() -> None:
    """A stopped container still in its hold counts; once released it does not."""
    ledger = Ledger(example_inventory())
    bound(ledger, "alice", student(), GpuRequest(count=1), CID)
    ledger.container_stopped(CID, NOW, 900)
    assert refused(reserve(ledger, "alice", student(), GpuRequest(count=1))).code == "quota_mig"
    ledger.expire_holds(NOW + 900)
    assert isinstance(reserve(ledger, "alice", student(), GpuRequest(count=1)), Reservation)


def test_admin_has_no_quota_but_no_held_device() -> None:
    """Admins are not rationed, and still never get a device someone holds."""
    ledger = Ledger(example_inventory())
    bound(ledger, "bob", researcher("bob"), GpuRequest(device_ids=(GPU2,)), CID)
    admin = limits("root", admin=True)
    assert refused(reserve(ledger, "root", admin, GpuRequest(device_ids=(GPU2,)))).code == (
        "device_busy"
    )
    assert len(reserve(ledger, "root", admin, GpuRequest(count=5)).devices) == 5


def test_every_code_is_exercised() -> None:
    """The stable codes are the documented nine."""
    assert {
        "quota_gpus",
        "quota_mig",
        "quota_gpueq",
        "per_container",
        "no_full_gpu",
        "profile_not_allowed",
        "no_capacity",
        "device_busy",
        "unknown_device",
    } == CODES


def test_requested_profile_not_allowed_or_absent() -> None:
    """A preferred profile the user may not use, or the server lacks, is said plainly."""
    ledger = Ledger(example_inventory())
    small = student(allowed_mig_profiles=["1g.10gb"])
    r = refused(reserve(ledger, "a", small, GpuRequest(count=1, profiles=("3g.40gb",))))
    assert (r.code, r.reason) == (
        "profile_not_allowed",
        "MIG profile 3g.40gb is not allowed for you (allowed MIG profiles: 1g.10gb)",
    )
    r = refused(reserve(ledger, "a", student(), GpuRequest(count=1, profiles=("7g.80gb",))))
    assert (r.code, r.reason, r.waitable) == (
        "no_capacity",
        "no free GPU: this server has no MIG instances of profile 7g.80gb for you",
        False,
    )
    big = GpuRequest(count=1, min_memory=100 * 2**30)
    r = refused(reserve(ledger, "a", student(), big))
    assert r.reason == "no free GPU: this server has no MIG instances with 100g of memory for you"
    assert r.fix == "ask an admin; `ds01 gpus` lists this server's devices"
