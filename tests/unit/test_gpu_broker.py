"""The GPU broker: the ledger driven by creates, waits, starts, events and preemption."""

from __future__ import annotations

import asyncio

from allocator.ledger import Ledger, Reservation
from allocator.request import GpuRequest
from ds01d.gpus import GpuBroker
from policy.decision import Decision
from policy.identity import Identity
from tests.unit.allocator.alloc_helpers import GPU2, GPU3, NOW, example_inventory, limits
from tests.unit.fake_docker import FakeDockerApi

RESEARCHER = {"allow_full_gpu": True, "max_gpus": 2, "max_mig_instances": 0}
WAIT = {"Labels": {"ds01.wait": "30s"}}  # waiting is opt-in (issue 14.1)


def who(name: str, uid: int = 1000) -> Identity:
    return Identity(uid=uid, user=name)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def broker(**kw) -> tuple[GpuBroker, list[tuple[str, str]]]:
    stopped: list[tuple[str, str]] = []

    async def stop(container_id: str, why: str) -> None:
        stopped.append((container_id, why))

    table = {
        "low": limits("low", priority=10, **RESEARCHER, **kw),
        "high": limits("high", priority=50, preempt_idle=True, **RESEARCHER, **kw),
        "mid": limits("mid", priority=30, gpu_wait=30, **RESEARCHER, **kw),
    }
    b = GpuBroker(
        Ledger(example_inventory()),
        limits_for=lambda u, uid: table[u],
        clock=Clock(),
        stop_container=stop,
    )
    b.table = table  # type: ignore[attr-defined]
    return b, stopped


async def take_both_whole_gpus(b: GpuBroker, user: str = "low") -> list[str]:
    ids = []
    for n in range(2):
        res = await b.reserve(who(user), b.table[user], GpuRequest(count=1), {}, NOW)  # type: ignore[attr-defined]
        assert isinstance(res, Reservation), res
        b.bind(res, f"{user}-c{n}")
        ids.append(f"{user}-c{n}")
    return ids


async def test_full_server_refusal_says_how_to_wait():
    """Without a wait, a create on a full server is refused at once, with the queue hint."""
    b, _ = broker()
    await take_both_whole_gpus(b)
    outcome = await b.reserve(
        who("mid"), b.table["mid"], GpuRequest(count=1), {"Labels": {"ds01.wait": "0s"}}, NOW
    )
    assert isinstance(outcome, Decision) and not outcome.allowed
    assert outcome.code == "no_capacity" and outcome.status == 409


async def test_waiting_create_gets_the_device_freed_by_a_destroy():
    """A create waiting in the queue is served as soon as a holder is removed."""
    b, _ = broker()
    holders = await take_both_whole_gpus(b)
    waiter = asyncio.create_task(
        b.reserve(who("mid"), b.table["mid"], GpuRequest(count=1), WAIT, NOW)
    )
    await asyncio.sleep(0.01)
    assert len(b.queue) == 1
    b.container_destroyed(holders[0])
    granted = await asyncio.wait_for(waiter, 1)
    assert isinstance(granted, Reservation) and granted.device_ids == (GPU2,)
    assert len(b.queue) == 0


async def test_higher_priority_waiter_is_served_first():
    """Freed devices go to waiting requests by priority, then by waiting time."""
    b, _ = broker()
    b.table["low"] = limits("low", priority=10, gpu_wait=30, **RESEARCHER)  # type: ignore[attr-defined]
    holders = await take_both_whole_gpus(b, "mid")
    first = asyncio.create_task(
        b.reserve(who("low"), b.table["low"], GpuRequest(count=1), WAIT, NOW)
    )
    await asyncio.sleep(0.01)
    b.table["high"] = limits("high", priority=50, gpu_wait=30, **RESEARCHER)  # type: ignore[attr-defined]
    second = asyncio.create_task(
        b.reserve(who("high"), b.table["high"], GpuRequest(count=1), WAIT, NOW)
    )
    await asyncio.sleep(0.01)
    b.container_destroyed(holders[0])
    await asyncio.sleep(0.01)
    assert second.done() and isinstance(second.result(), Reservation)
    assert not first.done()
    first.cancel()


async def test_idle_lower_priority_container_is_preempted():
    """With preempt_idle, a higher-priority create takes an idle device; its owner is stopped."""
    b, stopped = broker()
    holders = await take_both_whole_gpus(b)
    b.idle = {holders[1]}
    outcome = await b.reserve(
        who("high"), b.table["high"], GpuRequest(count=1), {"Labels": {"ds01.wait": "0s"}}, NOW
    )
    assert isinstance(outcome, Reservation), outcome
    assert outcome.device_ids == (GPU3,)
    assert stopped and stopped[0][0] == holders[1] and "idle" in stopped[0][1]


async def test_busy_containers_are_not_preempted():
    """Nothing idle: the higher-priority request is refused, nobody is stopped."""
    b, stopped = broker()
    await take_both_whole_gpus(b)
    outcome = await b.reserve(
        who("high"), b.table["high"], GpuRequest(count=1), {"Labels": {"ds01.wait": "0s"}}, NOW
    )
    assert isinstance(outcome, Decision) and not stopped


async def test_start_reacquires_or_names_the_holder():
    """A stopped container's devices go back to it on start, unless someone else has them."""
    b, _ = broker(gpu_hold_after_stop=0)
    holders = await take_both_whole_gpus(b)
    b.container_died(holders[0], NOW)  # hold 0: released now
    assert b.ledger.allocation_of(holders[0]) is None
    other = await b.reserve(who("mid"), b.table["mid"], GpuRequest(count=1), {}, NOW)
    assert isinstance(other, Reservation) and other.device_ids == (GPU2,)
    b.bind(other, "mid-c")
    info = {
        "Id": holders[0],
        "Config": {"Labels": {"ds01.user": "low", "ds01.uid": "1000", "ds01.devices": GPU2}},
    }
    refused = await b.guard_start(info, who("low"), NOW)
    assert refused is not None and "mid's container mid-c" in refused.reason
    b.container_destroyed("mid-c")
    assert await b.guard_start(info, who("low"), NOW) is None
    assert b.ledger.holder_of(GPU2).container_id == holders[0]


async def test_unlabelled_start_on_a_held_device_is_refused():
    """A container created around DS01 may not start on a device DS01 gave someone."""
    b, _ = broker()
    await take_both_whole_gpus(b)
    info = {
        "Id": "sneaky",
        "Config": {"Labels": {}},
        "HostConfig": {"DeviceRequests": [{"Driver": "nvidia", "DeviceIDs": [GPU2]}]},
    }
    refused = await b.guard_start(info, who("root", 0), NOW)
    assert refused is not None and refused.code == "device_busy"


async def test_a_create_event_is_accounted_for_when_bound_or_in_flight():
    """The gateway's own creates: the event may come before or after the bind."""
    b, _ = broker()
    res = await b.reserve(who("low"), b.table["low"], GpuRequest(count=1), {}, NOW)  # type: ignore[attr-defined]
    assert isinstance(res, Reservation)
    labels = res.labels()
    assert b.accounts_for("c-new", labels)  # reserved for exactly this: the bind follows
    b.bind(res, "c-new")
    assert b.accounts_for("c-new", labels)
    assert b.accounts_for("c-plain", {"ds01.user": "low"})  # no GPUs: nothing to account for


async def test_a_create_left_in_flight_by_a_dead_ds01d_is_not_accounted_for():
    """Its devices are free in this ledger (or reserved for someone else): reconcile."""
    b, _ = broker()
    orphan = {"ds01.user": "low", "ds01.devices": GPU2}
    assert not b.accounts_for("c-orphan", orphan)
    res = await b.reserve(who("mid"), b.table["mid"], GpuRequest(count=1), {}, NOW)  # type: ignore[attr-defined]
    assert isinstance(res, Reservation)
    taken = {"ds01.user": "low", "ds01.devices": res.device_ids[0]}
    assert not b.accounts_for("c-orphan", taken)  # the same device, another user's create


class FakeDocker(FakeDockerApi):
    """dockerd as the event watcher sees it (the contract-tested fake), counting what was asked."""

    def __init__(self, containers: dict[str, dict]) -> None:
        super().__init__()
        self.containers = containers
        self.inspects: list[str] = []
        self.lists = 0

    async def inspect_container(self, ref: str) -> dict | None:
        self.inspects.append(ref)
        return await super().inspect_container(ref)

    async def list_containers(self, filters: dict[str, list[str]] | None = None) -> list[dict]:
        self.lists += 1
        return await super().list_containers(filters)


def docker_container(cid: str, labels: dict[str, str], device_ids: list[str] | None) -> dict:
    requests = None if device_ids is None else [{"Driver": "nvidia", "DeviceIDs": device_ids}]
    return {
        "Id": cid,
        "Name": f"/{cid}",
        "Config": {"Image": "busybox", "Labels": labels},
        "State": {"Status": "created", "FinishedAt": "0001-01-01T00:00:00Z"},
        "HostConfig": {"DeviceRequests": requests},
    }


def created(cid: str, labels: dict[str, str]) -> dict:
    return {"Type": "container", "Action": "create", "Actor": {"ID": cid, "Attributes": labels}}


async def test_forged_create_events_cost_one_inspect_each_and_no_reconcile():
    """An image labelled with every device: each create inspects that container only, and
    the ledger records nothing; a genuine orphan (DeviceRequests agree) is recorded."""
    from ds01d.events import EventWatcher

    b, _ = broker()
    forged = {"ds01.user": "low", "ds01.devices": f"{GPU2},{GPU3}"}
    orphan = {"ds01.user": "low", "ds01.uid": "1000", "ds01.devices": GPU2}
    containers = {f"f{n}": docker_container(f"f{n}", forged, None) for n in range(20)}
    containers["orphan"] = docker_container("orphan", orphan, [GPU2])
    docker = FakeDocker(containers)
    watcher = EventWatcher(docker=docker, broker=b, clock=lambda: NOW)  # type: ignore[arg-type]
    await watcher.handle(created("c-plain", {"ds01.user": "low", "image": "busybox"}))
    assert docker.inspects == []  # no GPU claim: nothing to check
    for n in range(20):
        await watcher.handle(created(f"f{n}", forged))
    assert docker.lists == 0 and len(docker.inspects) == 20
    assert b.ledger.allocations() == ()
    assert {c.kind for c in b.conflicts} == {"unverified_claim"}
    await watcher.handle(created("orphan", orphan))
    assert b.ledger.holder_of(GPU2).container_id == "orphan"
    assert b.ledger.holder_of(GPU3) is None


async def test_event_reconciles_are_rate_limited():
    """However many events ask for a full reconcile, one runs per interval."""
    from ds01d.events import EventWatcher

    clock = Clock()
    b, _ = broker()
    docker = FakeDocker({})
    watcher = EventWatcher(docker=docker, broker=b, clock=clock)  # type: ignore[arg-type]
    watcher.reconcile_interval = 0.01
    watcher.request_reconcile()
    first = watcher._reconcile_soon
    await first
    assert docker.lists == 1
    for _ in range(100):
        watcher.request_reconcile()
    second = watcher._reconcile_soon
    assert second is not first
    await second
    assert docker.lists == 2
    clock.now += 5  # within the interval after the last one: still only one more
    for _ in range(100):
        watcher.request_reconcile()
    await watcher._reconcile_soon
    assert docker.lists == 3


async def test_an_inspect_failure_falls_back_to_a_rate_limited_reconcile():
    """If the one container cannot be inspected, a full reconcile (rate-limited) runs."""
    from ds01d.events import EventWatcher

    b, _ = broker()

    class Broken(FakeDocker):
        async def inspect_container(self, cid: str) -> dict | None:
            raise OSError("dockerd went away")

    docker = Broken({})
    watcher = EventWatcher(docker=docker, broker=b, clock=lambda: NOW)  # type: ignore[arg-type]
    for n in range(10):
        await watcher.handle(created(f"x{n}", {"ds01.user": "low", "ds01.devices": GPU2}))
    await watcher._reconcile_soon
    assert docker.lists == 1


# ---------------------------------------------------------------- fair queueing (issue 11)


async def test_a_second_waiting_request_of_one_user_is_refused():
    """One waiting request per user: waiting is not a way to hold devices."""
    b, _ = broker()
    await take_both_whole_gpus(b, "low")
    first = asyncio.create_task(
        b.reserve(who("mid"), b.table["mid"], GpuRequest(count=1), WAIT, NOW)
    )  # type: ignore[attr-defined]
    await asyncio.sleep(0.01)
    assert len(b.queue) == 1
    second = await b.reserve(who("mid"), b.table["mid"], GpuRequest(count=1), WAIT, NOW)  # type: ignore[attr-defined]
    assert isinstance(second, Decision) and second.code == "already_waiting"
    assert second.status == 409
    assert "you already have a GPU request waiting in the queue (place 1, for 1 GPU)" in (
        second.reason
    )
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert len(b.queue) == 0  # a waiter whose client left is dropped


async def test_a_new_create_does_not_take_what_a_waiter_can_use_next():
    """A device promised to the head of the queue is not given to a newcomer of its priority,
    but a newcomer may take a device the waiter could not use on the next release."""
    b, _ = broker()
    b.table["big"] = limits("big", priority=30, gpu_wait=30, **RESEARCHER)  # type: ignore[attr-defined]
    holders = await take_both_whole_gpus(b, "low")
    waiter = asyncio.create_task(
        b.reserve(who("big"), b.table["big"], GpuRequest(count=2), WAIT, NOW)
    )  # type: ignore[attr-defined]
    await asyncio.sleep(0.01)
    b.container_destroyed(holders[0])  # GPU2 free; big needs GPU3 too: one release away
    assert b.ledger.holder_of(GPU2) is None and len(b.queue) == 1
    newcomer = await b.reserve(
        who("mid"), b.table["mid"], GpuRequest(count=1), {"Labels": {"ds01.wait": "0"}}, NOW
    )  # type: ignore[attr-defined]
    assert isinstance(newcomer, Decision) and newcomer.code == "no_capacity"
    b.container_destroyed(holders[1])
    granted = await asyncio.wait_for(waiter, 1)
    assert isinstance(granted, Reservation) and len(granted.devices) == 2


async def test_a_waiter_on_its_own_allocation_holds_nothing_back():
    """Waiting for one's own container to let go does not keep a free GPU idle."""
    b, _ = broker()
    b.table["big"] = limits("big", priority=30, gpu_wait=30, **{**RESEARCHER, "max_gpus": 3})  # type: ignore[attr-defined]
    mine = await b.reserve(who("big"), b.table["big"], GpuRequest(count=1), {}, NOW)  # type: ignore[attr-defined]
    assert isinstance(mine, Reservation)
    b.bind(mine, "big-c")
    waiter = asyncio.create_task(
        b.reserve(who("big"), b.table["big"], GpuRequest(count=2), WAIT, NOW)
    )  # type: ignore[attr-defined]
    await asyncio.sleep(0.01)
    assert len(b.queue) == 1
    newcomer = await b.reserve(who("mid"), b.table["mid"], GpuRequest(count=1), {}, NOW)  # type: ignore[attr-defined]
    assert isinstance(newcomer, Reservation) and newcomer.device_ids == (GPU3,)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


# ---------------------------------------------------------------- the queue talks (issue 14)


async def test_without_a_wait_label_a_busy_create_answers_at_once_with_the_queue():
    """Waiting is opt-in: the refusal says how the devices are held, the place the request
    would have, and the label that waits (capped by gpu_wait)."""
    b, _ = broker()
    await take_both_whole_gpus(b)
    outcome = await b.reserve(who("mid"), b.table["mid"], GpuRequest(count=1), {}, NOW)
    assert isinstance(outcome, Decision) and outcome.code == "no_capacity"
    assert outcome.status == 409 and len(b.queue) == 0
    assert "held by 2 running; you would be #1 in the queue" in outcome.reason
    assert outcome.fix.startswith(
        "to wait for a device, run it again with `--label ds01.wait=30s` (at most 30s;"
    )


async def test_a_waiting_create_is_told_its_place_and_a_client_that_leaves_frees_it():
    """The client hears its place at once; cancelling (the gateway's hang-up) leaves the queue
    and a device freed later is not given to it."""
    b, _ = broker()
    holders = await take_both_whole_gpus(b)
    lines: list[str] = []
    waiter = asyncio.create_task(
        b.reserve(who("mid"), b.table["mid"], GpuRequest(count=1), WAIT, NOW, tell=lines.append)
    )
    await asyncio.sleep(0.01)
    assert lines == [
        "ds01: waiting for 1 GPU: #1 in the queue, 0s of at most 30s; Ctrl-C to give up"
    ]
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert len(b.queue) == 0
    b.container_destroyed(holders[0])
    assert [a.user for a in b.ledger.allocations()] == ["low"]  # nothing reserved for "mid"


async def test_a_quota_refusal_names_the_stopped_container_and_its_hold():
    """The user's holding container by name, its state, when its hold ends, how to free it."""
    b, _ = broker(gpu_hold_after_stop=3600)
    await take_both_whole_gpus(b)

    async def inspect(cid: str) -> dict:
        return {"Name": f"/{cid}-name", "State": {"Status": "exited"}}

    b.inspect = inspect
    b.container_died("low-c0", NOW)
    refused = await b.reserve(who("low"), b.table["low"], GpuRequest(count=1), {}, NOW)
    assert isinstance(refused, Decision) and refused.code == "quota_gpus"
    assert "container low-c0-name, stopped; holds it 1h more (gpu_hold_after_stop)" in (
        refused.reason
    )
    assert refused.fix.startswith("free one with `docker rm low-c0-name` (`docker ps -a`")
