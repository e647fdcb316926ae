"""A full reconcile rebuilds the ledger from a listing that takes time (every GPU container is
inspected); creates bound meanwhile must survive it, or their devices go to the next create
and two running containers share one device (seen in tests/e2e/test_gpu_stress.py)."""

from __future__ import annotations

from allocator.ledger import Ledger, Reservation
from allocator.reconcile import ContainerSummary
from allocator.request import GpuRequest
from ds01d.events import EventWatcher
from ds01d.gpus import GpuBroker
from policy.identity import Identity
from tests.unit.allocator.alloc_helpers import NOW, example_inventory, limits

TABLE = {
    name: limits(name, allow_full_gpu=True, max_gpus=2, max_mig_instances=0)
    for name in ("old", "new", "other")
}
TABLE["mig"] = limits("mig", allow_full_gpu=False, max_gpus=0, max_mig_instances=2)


def new_broker() -> GpuBroker:
    return GpuBroker(
        Ledger(example_inventory()), limits_for=lambda u, uid: TABLE[u], clock=lambda: NOW
    )


async def whole_gpu(broker: GpuBroker, user: str, container_id: str) -> Reservation:
    """A create through the gateway: reserve, dockerd creates, bind."""
    res = await broker.reserve(
        Identity(uid=1000, user=user), TABLE[user], GpuRequest(count=1), {}, NOW
    )
    assert isinstance(res, Reservation), res
    broker.bind(res, container_id)
    return res


def container(res: Reservation, cid: str, state: str = "running") -> dict:
    """What dockerd answers for the container a reservation was bound to."""
    return {
        "Id": cid,
        "Config": {"Labels": res.labels()},
        "State": {"Status": state, "FinishedAt": "0001-01-01T00:00:00Z"},
        "HostConfig": {"DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": list(res.device_ids)}]},
    }


class SlowDocker:
    """dockerd listed at the start of a reconcile; ``during`` runs while it is being inspected
    (a create served by the gateway meanwhile)."""

    def __init__(self, containers: dict[str, dict], during) -> None:
        self.containers = containers
        self.during = during

    async def list_containers(self) -> list[dict]:
        return [
            {"Id": cid, "Labels": c["Config"]["Labels"], "State": c["State"]["Status"]}
            for cid, c in self.containers.items()
        ]

    async def inspect_container(self, cid: str) -> dict | None:
        if self.during is not None:
            during, self.during = self.during, None
            await during()
        return self.containers.get(cid)


async def test_a_create_bound_while_dockerd_is_listed_keeps_its_device() -> None:
    broker = new_broker()
    first = await whole_gpu(broker, "old", "c-old")
    made: list[Reservation] = []

    async def create_meanwhile() -> None:
        made.append(await whole_gpu(broker, "new", "c-new"))

    docker = SlowDocker({"c-old": container(first, "c-old")}, create_meanwhile)
    watcher = EventWatcher(docker=docker, broker=broker, clock=lambda: NOW)  # type: ignore[arg-type]
    await watcher.reconcile()

    (second,) = made
    assert broker.ledger.allocation_of("c-old").devices == first.device_ids
    assert broker.ledger.allocation_of("c-new").devices == second.device_ids
    broker.ledger.check_invariants()
    # So the next create finds both whole GPUs taken (the example has two), not one free.
    third = await broker.reserve(
        Identity(uid=1001, user="other"), TABLE["other"], GpuRequest(count=1), {}, NOW
    )
    assert not isinstance(third, Reservation) and third.code == "no_capacity", third


def test_only_what_changed_after_the_mark_outlives_the_listing() -> None:
    """An allocation older than the listing whose container is not in it is gone (a destroy
    event was missed) and is dropped; one made after the mark stays; the listed claim of a
    container the ledger changed after the mark (it stopped) does not overwrite the change."""
    ledger = Ledger(example_inventory())
    gone = ledger.reserve("mig", 1000, "g", TABLE["mig"], GpuRequest(count=1), NOW)
    stopping = ledger.reserve("old", 1000, "g", TABLE["old"], GpuRequest(count=1), NOW)
    assert isinstance(gone, Reservation) and isinstance(stopping, Reservation)
    ledger.bind(gone.reservation_id, "c-gone")
    ledger.bind(stopping.reservation_id, "c-stopping")
    mark = ledger.version
    ledger.container_stopped("c-stopping", NOW, 600.0)  # its die event, after the mark
    late = ledger.reserve("new", 1000, "g", TABLE["new"], GpuRequest(count=1), NOW)
    assert isinstance(late, Reservation)
    ledger.bind(late.reservation_id, "c-late")
    listed = [
        ContainerSummary(
            id="c-stopping",
            labels=stopping.labels(),
            state="running",
            gpu_devices=stopping.device_ids,
        )
    ]

    conflicts = ledger.rebuild(listed, NOW, since=mark, limits_for=lambda u, uid: TABLE[u])

    assert conflicts == []
    assert ledger.allocation_of("c-gone") is None
    assert ledger.allocation_of("c-late").devices == late.device_ids
    held = ledger.allocation_of("c-stopping")
    assert held.state.value == "held" and held.hold_until == NOW + 600.0
    ledger.check_invariants()
