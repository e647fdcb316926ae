"""Rebuilding the ledger from container labels: Docker is the source of truth."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from alloc_helpers import G0, G1_3G, GPU2, GPU3, NOW, container, example_inventory, student

from allocator.ledger import Ledger, Reservation, State
from allocator.reconcile import OUTSIDE_USER, ContainerSummary
from allocator.request import GpuRequest
from formats.labels import LABEL_DEVICES
from policy.limits import Limits

A, B, C = "a" * 64, "b" * 64, "c" * 64


def by_container(ledger: Ledger) -> dict[str | None, tuple[str, ...]]:
    return {a.container_id: a.devices for a in ledger.allocations()}


def test_running_and_created_containers_hold_their_devices() -> None:
    """Running and created containers get bound allocations from their labels."""
    ledger = Ledger(example_inventory())
    conflicts = ledger.rebuild(
        [container(A, "alice", [G0[0]]), container(B, "bob", [G1_3G], state="created")], NOW
    )
    assert conflicts == []
    assert by_container(ledger) == {A: (G0[0],), B: (G1_3G,)}
    assert all(a.state is State.BOUND for a in ledger.allocations())
    assert math.isclose(ledger.allocation_of(B).gpueq, 3 / 7)  # recomputed from the inventory
    assert ledger.allocation_of(A).since == NOW - 3600  # from ds01.allocated_at
    ledger.check_invariants()


def test_stopped_container_in_hold_is_held_and_after_hold_is_free() -> None:
    """A container that stopped while ds01d was down keeps its hold, measured from FinishedAt."""
    ledger = Ledger(example_inventory())
    ledger.rebuild(
        [
            container(A, "alice", [G0[0]], state="exited", finished_at=NOW - 100),
            container(B, "bob", [G0[1]], state="exited", finished_at=NOW - 1000),
        ],
        NOW,
        hold_for=900,
    )
    held = ledger.allocation_of(A)
    assert held.state is State.HELD and held.hold_until == NOW + 800
    assert ledger.allocation_of(B) is None  # hold ran out while nobody watched
    assert ledger.holder_of(G0[1]) is None


def test_hold_per_user() -> None:
    """The hold comes from each owner's policy."""
    ledger = Ledger(example_inventory())
    stopped = [
        container(A, "alice", [G0[0]], state="exited", finished_at=NOW - 100),
        container(B, "rita", [G0[1]], state="exited", finished_at=NOW - 100),
    ]
    ledger.rebuild(stopped, NOW, hold_for=lambda user, uid, labels: 3600 if user == "rita" else 0)
    assert by_container(ledger) == {B: (G0[1],)}


def test_removed_while_down_frees_its_device() -> None:
    """A container that vanished while ds01d was down frees its devices on rebuild."""
    ledger = Ledger(example_inventory())
    ledger.rebuild([container(A, "alice", [G0[0]]), container(B, "bob", [G0[1]])], NOW)
    ledger.rebuild([container(B, "bob", [G0[1]])], NOW + 60)
    assert ledger.holder_of(G0[0]) is None
    assert by_container(ledger) == {B: (G0[1],)}


def test_two_running_containers_claiming_one_device_are_reported() -> None:
    """Two containers claiming one device: reported, and the earlier grant keeps it."""
    ledger = Ledger(example_inventory())
    conflicts = ledger.rebuild(
        [
            container(B, "bob", [G0[0], G0[1]], at=NOW - 60),
            container(A, "alice", [G0[0]], at=NOW - 600),
        ],
        NOW,
    )
    assert [c.kind for c in conflicts] == ["double_claim"]
    assert conflicts[0].device == G0[0]
    assert conflicts[0].kept_by == A
    assert set(conflicts[0].containers) == {A, B}
    assert by_container(ledger) == {A: (G0[0],), B: (G0[1],)}
    ledger.check_invariants()


def test_running_container_beats_stopped_one() -> None:
    """A running container keeps a contested device; the stopped one's hold quietly ends."""
    ledger = Ledger(example_inventory())
    conflicts = ledger.rebuild(
        [
            container(A, "alice", [G0[0]], state="exited", finished_at=NOW - 5, at=NOW - 900),
            container(B, "bob", [G0[0]], at=NOW - 60),
        ],
        NOW,
        hold_for=600,
    )
    assert conflicts == []  # a stopped container does not use its device: nothing to report
    assert by_container(ledger) == {B: (G0[0],)}


def test_gpu_container_created_outside_ds01_is_reported_and_its_devices_held() -> None:
    """A running GPU container without DS01 labels: reported, and its devices count as used."""
    ledger = Ledger(example_inventory())
    outside = ContainerSummary(C, {}, "running", gpu_devices=("2",))
    conflicts = ledger.rebuild([outside], NOW)
    assert [c.kind for c in conflicts] == ["outside_ds01"]
    alloc = ledger.allocation_of(C)
    assert alloc.outside and alloc.user == OUTSIDE_USER and alloc.devices == (GPU2,)
    assert ledger.usage(OUTSIDE_USER).whole == 0  # counts against nobody's quota
    granted = ledger.reserve("x", 1, "g", student(), GpuRequest(device_ids=(G0[0],)), NOW)
    assert isinstance(granted, Reservation)


def test_outside_container_with_all_gpus_blocks_everything() -> None:
    """`docker run --gpus all` straight on dockerd: every device is in use."""
    ledger = Ledger(example_inventory())
    ledger.rebuild([ContainerSummary(C, {}, "running", gpu_devices=("all",))], NOW)
    assert len(ledger.allocation_of(C).devices) == 13
    assert ledger.reserve("x", 1, "g", student(), GpuRequest(count=1), NOW).code == "no_capacity"


def test_outside_container_on_mig_gpu_blocks_its_instances() -> None:
    """A whole MIG-enabled GPU given outside DS01 takes all of its instances."""
    ledger = Ledger(example_inventory())
    ledger.rebuild([ContainerSummary(C, {}, "running", gpu_devices=("0",))], NOW)
    assert ledger.allocation_of(C).devices == tuple(G0)


def test_stopped_outside_containers_and_gpu_less_containers_are_ignored() -> None:
    """Containers without GPUs, and stopped outside ones, hold nothing."""
    ledger = Ledger(example_inventory())
    conflicts = ledger.rebuild(
        [
            ContainerSummary(A, {}, "running"),
            ContainerSummary(B, {}, "exited", gpu_devices=("all",)),
            ContainerSummary(C, {LABEL_DEVICES: G0[0]}, "removing"),
        ],
        NOW,
    )
    assert conflicts == [] and ledger.allocations() == ()


def test_device_missing_from_inventory_is_reported_and_not_recorded() -> None:
    """A label naming a device the inventory lacks: reported; only the known ones are held."""
    ledger = Ledger(example_inventory())
    conflicts = ledger.rebuild([container(A, "alice", ["MIG-lost", G0[0]], gpueq=2 / 7)], NOW)
    assert [c.kind for c in conflicts] == ["unknown_device"]
    alloc = ledger.allocation_of(A)
    assert alloc.devices == (G0[0],)
    assert math.isclose(alloc.gpueq, 1 / 7)  # from the inventory, never from a label


def test_labels_without_user_are_reported() -> None:
    """Devices recorded without an owner are nobody's; a running one is held as outside."""
    ledger = Ledger(example_inventory())
    summary = ContainerSummary(A, {LABEL_DEVICES: GPU3}, "running", gpu_devices=(GPU3,))
    conflicts = ledger.rebuild([summary], NOW)
    assert [c.kind for c in conflicts] == ["bad_labels", "outside_ds01"]
    assert ledger.holder_of(GPU3).container_id == A
    assert ledger.holder_of(GPU3).outside


def test_rebuild_keeps_creates_in_flight_and_binds_their_container() -> None:
    """A reservation survives a rebuild; if dockerd already made its container, it is bound."""
    ledger = Ledger(example_inventory())
    first = ledger.reserve("alice", 1, "g", student(), GpuRequest(count=1), NOW)
    second = ledger.reserve("bob", 2, "g", student("bob"), GpuRequest(count=1), NOW)
    made = container(A, "alice", list(first.device_ids), state="created")
    assert ledger.rebuild([made], NOW + 1) == []
    assert ledger.allocation_of(A).reservation_id == first.reservation_id
    assert ledger.bind(first.reservation_id, A).container_id == A  # the daemon's bind still works
    assert ledger.holder_of(second.device_ids[0]).state is State.RESERVED
    ledger.check_invariants()


def test_container_claiming_a_reserved_device_is_reported() -> None:
    """A container claiming a device reserved for another create is a conflict."""
    ledger = Ledger(example_inventory())
    res = ledger.reserve("alice", 1, "g", student(), GpuRequest(count=1), NOW)
    conflicts = ledger.rebuild([container(B, "bob", list(res.device_ids))], NOW)
    assert [c.kind for c in conflicts] == ["double_claim"]
    assert conflicts[0].kept_by == res.reservation_id


def test_rebuild_reproduces_the_ledger() -> None:
    """Labels written at grant time rebuild exactly the allocations the ledger had."""
    ledger = Ledger(example_inventory())
    containers = []
    for i, user in enumerate(["alice", "bob", "carol", "dan"]):
        res = ledger.reserve(user, 1000 + i, "students", student(user), GpuRequest(count=1), NOW)
        cid = f"{i}" * 64
        ledger.bind(res.reservation_id, cid)
        containers.append(
            ContainerSummary(cid, res.labels(), "running", gpu_devices=res.device_ids)
        )
    fresh = Ledger(example_inventory())
    fresh.rebuild(containers, NOW + 5)

    def key(ledger: Ledger):
        return sorted(
            (a.container_id, a.user, a.uid, a.devices, round(a.gpueq, 9), a.since)
            for a in ledger.allocations()
        )

    assert key(fresh) == key(ledger)


def test_rebuild_priority_from_policy() -> None:
    """Priorities are not in labels; the daemon supplies them from the policy."""
    ledger = Ledger(example_inventory())
    ledger.rebuild([container(A, "alice", [G0[0]])], NOW, priority_for=lambda user: 42)
    assert ledger.allocation_of(A).priority == 42


# ---------------------------------------------------------------- forged claims (issue 11)

EVERY = [*G0, G1_3G, GPU2, GPU3]
STUDENTS = {"alice": student("alice"), "bob": student("bob")}


def quota_of(user: str, uid: int | None) -> Limits:
    return STUDENTS.get(user) or student(user)


@pytest.mark.parametrize(
    ("summaries", "kinds", "held"),
    [
        pytest.param(
            [container(A, "alice", EVERY, state="created", given=[])],
            ["unverified_claim"],
            {},
            id="image-label-without-device-requests",
        ),
        pytest.param(
            [replace(container(A, "alice", [G0[0]]), gpu_devices=None)],
            ["unverified_claim"],
            {},
            id="not-inspected",
        ),
        pytest.param(
            [container(A, "alice", [G0[0]], state="created", given=[G0[1]])],
            ["unverified_claim"],
            {},
            id="device-requests-name-other-devices",
        ),
        pytest.param(
            [container(A, "alice", [G0[0]], given=[G0[1]])],
            ["unverified_claim", "outside_ds01"],
            {G0[1]: (A, OUTSIDE_USER)},
            id="running-on-other-devices-holds-those-for-nobody",
        ),
        pytest.param(
            [container(A, "alice", [G0[0]], state="created", given=[G0[0], G0[1]])],
            ["unverified_claim"],
            {},
            id="device-requests-name-more",
        ),
        pytest.param(
            [container(A, "alice", [GPU2], state="created", given=["all"])],
            ["unverified_claim"],
            {},
            id="device-requests-by-count",
        ),
        pytest.param(
            [container(A, "alice", ["MIG-made-up"], state="created")],
            ["unknown_device"],
            {},
            id="unknown-device",
        ),
        pytest.param(
            [container(A, "alice", [G0[0], G0[1]], state="created")],
            ["over_quota"],
            {},
            id="over-quota-in-one-container",
        ),
        pytest.param(
            [
                container(A, "alice", [G0[0]], at=NOW - 600),
                container(B, "alice", [G0[1]], state="created", at=NOW - 60),
            ],
            ["over_quota"],
            {G0[0]: (A, "alice")},
            id="over-quota-second-container",
        ),
        pytest.param(
            [container(A, "alice", [GPU2], state="created")],
            ["over_quota"],
            {},
            id="whole-gpu-for-a-student",
        ),
        pytest.param(
            [
                container(A, "alice", [G0[0]], at=NOW - 600),
                container(B, "bob", [G0[0]], state="created", at=NOW - 60),
            ],
            ["double_claim"],
            {G0[0]: (A, "alice")},
            id="duplicate-claim-on-a-held-device",
        ),
        pytest.param(
            [
                container(A, "alice", [G0[0]], at=NOW - 600),
                container(B, "alice", [G0[0], G0[1]], at=NOW - 60),
            ],
            ["double_claim", "over_quota"],
            {G0[0]: (A, "alice"), G0[1]: (B, OUTSIDE_USER)},
            id="running-over-quota-is-held-for-nobody",
        ),
    ],
)
def test_reconcile_refuses_forged_claims(summaries, kinds, held) -> None:
    """A claim is recorded only if dockerd backs it, the devices exist and are free, and the
    owner's quota allows it; every refusal is a conflict."""
    ledger = Ledger(example_inventory())
    conflicts = ledger.rebuild(summaries, NOW, limits_for=quota_of)
    assert [c.kind for c in conflicts] == kinds
    assert {u: (a.container_id, a.user) for a in ledger.allocations() for u in a.devices} == held
    ledger.check_invariants()


def test_image_label_claiming_every_device_gives_nothing() -> None:
    """The attack of issue 11: an image labelled with every UUID; others still get GPUs."""
    ledger = Ledger(example_inventory())
    forged = container(A, "alice", EVERY, state="created", given=[])
    ledger.rebuild([forged], NOW, limits_for=quota_of)
    assert ledger.allocations() == ()
    granted = ledger.reserve("bob", 2, "g", student("bob"), GpuRequest(count=1), NOW)
    assert isinstance(granted, Reservation)


def test_conflict_messages() -> None:
    """A refused claim says which container, whose, and why it is ignored."""
    ledger = Ledger(example_inventory())
    conflicts = ledger.rebuild(
        [container(A, "alice", [G0[0]], state="created", given=[])], NOW, limits_for=quota_of
    )
    assert conflicts[0].message == (
        f"container {A[:12]} (alice) claims {G0[0]} in its ds01.devices label, but from "
        "dockerd it gets no GPUs; the claim is ignored (an image label, or a container "
        "created outside DS01)"
    )
    conflicts = ledger.rebuild(
        [container(A, "alice", [G0[0], G0[1]], state="created")], NOW, limits_for=quota_of
    )
    assert conflicts[0].message.startswith(
        f"container {A[:12]} claims 2 device(s) for alice, beyond their quota ("
    )


# ---------------------------------------------------------------- one container at a time


def test_adopt_records_a_verified_container_only() -> None:
    """``adopt`` applies the rebuild rules to one container and leaves the rest alone."""
    ledger = Ledger(example_inventory())
    ledger.rebuild([container(A, "alice", [G0[0]])], NOW, limits_for=quota_of)
    forged = container(B, "bob", EVERY, state="created", given=[])
    assert [c.kind for c in ledger.adopt(forged, NOW, limits_for=quota_of)] == ["unverified_claim"]
    assert by_container(ledger) == {A: (G0[0],)}
    stolen = container(C, "bob", [G0[0]], state="created", at=NOW - 7200)
    assert [c.kind for c in ledger.adopt(stolen, NOW, limits_for=quota_of)] == ["double_claim"]
    assert by_container(ledger) == {A: (G0[0],)}  # the earlier verified holder keeps it
    real = container(C, "bob", [G0[1]], state="created")
    assert ledger.adopt(real, NOW, limits_for=quota_of) == []
    assert by_container(ledger) == {A: (G0[0],), C: (G0[1],)}
    over = container(B, "bob", [G0[2]], state="created")
    assert [c.kind for c in ledger.adopt(over, NOW, limits_for=quota_of)] == ["over_quota"]
    ledger.check_invariants()


def test_adopt_binds_a_create_in_flight() -> None:
    """The container of a create in flight takes over its reservation (no quota twice)."""
    ledger = Ledger(example_inventory())
    res = ledger.reserve("alice", 1, "g", student(), GpuRequest(count=1), NOW)
    made = container(A, "alice", list(res.device_ids), state="created")
    assert ledger.adopt(made, NOW, limits_for=quota_of) == []
    assert ledger.allocation_of(A).reservation_id == res.reservation_id
    ledger.check_invariants()
