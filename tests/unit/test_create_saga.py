"""The create saga on fakes: each step failing in turn leaves no reservation behind.

"Never lose an allocation": whatever fails (the cgroup, a volume, the reservation, the body,
dockerd's create, the client, the bind), the broker ends holding nothing for this create,
unless dockerd created the container and its reservation became its allocation.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from allocator.request import GpuRequest
from ds01d import create_saga as saga_module
from ds01d.create_saga import CreateSaga, Step
from ds01d.docker_client import DockerClient, DockerError
from ds01d.gateway_handler import GatewayHandler
from ds01d.policy_store import PolicyStore
from ds01d.service import Service, Verdict
from policy.decision import Decision, allow, deny
from policy.facts import parse_request
from policy.identity import Identity
from policy.state import ObjectFacts, Request, State

ALICE = Identity(uid=1001, user="alice", groups=frozenset({"alice"}), home="/home/alice")
GPU = "GPU-0000"
QUOTA = deny("gpu_quota", "you already hold 1 of your 1 GPUs", "docker rm the holder", 409)


@dataclass(frozen=True)
class FakeReservation:
    reservation_id: str
    device_ids: tuple[str, ...] = (GPU,)
    gpueq: float = 1.0


class FakeBroker:
    def __init__(self, refuse: Decision | None = None, fail: str = "") -> None:
        self.refuse, self.fail = refuse, fail
        self.reserved: set[str] = set()  # reservations not yet a container's
        self.bound: dict[str, str] = {}

    async def reserve(
        self, identity: Any, limits: Any, request: Any, body: Any, now: float, tell: Any = None
    ) -> Any:
        if self.fail == "reserve_cancelled":
            raise asyncio.CancelledError  # the client left while waiting in the queue
        if self.refuse is not None:
            return self.refuse
        self.reserved.add("r1")
        return FakeReservation("r1")

    def bind(self, reservation: FakeReservation, container_id: str) -> None:
        if self.fail == "bind":
            raise RuntimeError("the reservation expired")
        self.reserved.remove(reservation.reservation_id)
        self.bound[container_id] = reservation.reservation_id

    def rollback(self, reservation: FakeReservation) -> None:
        self.reserved.discard(reservation.reservation_id)


class FakeDocker:
    def __init__(self, fail: str = "") -> None:
        self.fail = fail
        self.created: list[dict[str, Any]] = []

    async def request(self, method: str, path: str, *, params: Any = None, body: Any = None) -> Any:
        if self.fail == "volume":
            raise DockerError(500, "volume driver failed")
        self.created.append(body)
        owner = "bob" if self.fail == "volume_taken" else body["Labels"]["ds01.user"]
        return {"Name": body["Name"], "Labels": {"ds01.user": owner}}


class FakeCgroups:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def ensure(self, identity: Any, limits: Any) -> list[str]:
        if self.fail:
            raise OSError("cgroupfs is read-only")
        return ["memory controller missing"]


def _body() -> dict[str, Any]:
    return {"Image": "busybox", "HostConfig": {"Binds": ["data:/data", "seen:/seen"]}}


def _saga(fail: str = "", refuse: Decision | None = None, gpus: bool = True) -> Any:
    broker = FakeBroker(refuse, fail)
    docker = FakeDocker(fail)
    recorded: list[Decision] = []
    events: list[str] = []
    decision = allow(body=_body(), gpu_request=GpuRequest(count=1) if gpus else None)
    seen = ObjectFacts(kind="volume", id="seen", owner="alice", name="seen")
    saga = CreateSaga(
        ALICE,
        SimpleNamespace(is_admin=False),  # type: ignore[arg-type]
        decision,
        State(related={"volume:seen": seen}),
        docker=docker,
        gpus=broker,
        cgroups=FakeCgroups(fail == "cgroup"),
        clock=lambda: 1000.0,
        record=recorded.append,
        event=lambda name, **fields: events.append(name),
    )
    return saga, broker, docker, recorded, events


async def test_a_create_binds_its_reservation_on_201_and_records_once():
    saga, broker, docker, recorded, events = _saga()
    raw = await saga.prepare()
    assert isinstance(raw, bytes) and GPU in raw.decode()
    assert [b["Name"] for b in docker.created] == ["data"]  # "seen" existed: not looked up again
    assert saga.step is Step.FORWARDED and broker.reserved == {"r1"}
    saga.on_response(201, json.dumps({"Id": "c1"}).encode())
    saga.on_close(True)
    assert saga.step is Step.BOUND and broker.bound == {"c1": "r1"} and not broker.reserved
    assert [d.allowed for d in recorded] == [True]
    assert events == ["cgroup_warning", "created"]


@pytest.mark.parametrize("fail", ["cgroup", "volume", "reserve_cancelled", "body"])
async def test_a_step_that_raises_leaves_nothing_held(fail, monkeypatch):
    saga, broker, _, recorded, _ = _saga(fail)
    if fail == "body":

        def broken(*args: Any) -> None:
            raise ValueError("no HostConfig")

        monkeypatch.setattr(saga_module.create_rules, "apply_allocation", broken)
    with pytest.raises((OSError, DockerError, asyncio.CancelledError, ValueError)):
        await saga.prepare()
    assert not broker.reserved and not broker.bound
    [record] = recorded  # the create is recorded once, as refused, with its cause
    assert record.code == ("client_gone" if fail == "reserve_cancelled" else "create_failed")
    assert not record.allowed and record.detail
    saga.on_close(False)
    assert not broker.reserved


@pytest.mark.parametrize(
    ("fail", "refuse", "code"),
    [("volume_taken", None, "not_found"), ("", QUOTA, "gpu_quota")],
)
async def test_a_refused_step_is_recorded_and_holds_nothing(fail, refuse, code):
    saga, broker, _, recorded, _ = _saga(fail, refuse)
    refusal = await saga.prepare()
    assert isinstance(refusal, Decision) and refusal.code == code
    assert saga.step is Step.REFUSED and not broker.reserved and not broker.bound
    assert [d.code for d in recorded] == [code]


@pytest.mark.parametrize(
    "answer",
    [
        (409, b'{"message": "Conflict. The container name is already in use"}'),
        (201, b"not json"),
        None,  # the client went away before dockerd answered
    ],
)
async def test_a_create_dockerd_did_not_make_rolls_back(answer):
    saga, broker, _, _, _ = _saga()
    assert isinstance(await saga.prepare(), bytes)
    if answer is not None:
        saga.on_response(*answer)
    saga.on_close(answer is not None)
    assert saga.step is Step.ROLLED_BACK and not broker.reserved and not broker.bound


async def test_a_failed_bind_rolls_back_at_close():
    saga, broker, _, _, _ = _saga("bind")
    assert isinstance(await saga.prepare(), bytes)
    with pytest.raises(RuntimeError):
        saga.on_response(201, b'{"Id": "c1"}')
    saga.on_close(True)
    assert not broker.reserved and not broker.bound


async def test_a_create_without_gpus_is_recorded_once_when_forwarded():
    saga, broker, _, recorded, _ = _saga(gpus=False)
    assert isinstance(await saga.prepare(), bytes)
    saga.on_response(201, b'{"Id": "c1"}')
    saga.on_close(True)
    assert saga.step is Step.CREATED and not broker.reserved and not broker.bound
    assert [d.allowed for d in recorded] == [True]


async def test_without_a_broker_a_gpu_create_is_refused():
    saga = CreateSaga(
        ALICE,
        SimpleNamespace(is_admin=False),  # type: ignore[arg-type]
        allow(body=_body(), gpu_request=GpuRequest(count=1)),
        State(),
        docker=FakeDocker(),
        gpus=None,
        cgroups=None,
        clock=lambda: 0.0,
        record=lambda d: None,
        event=lambda name, **f: None,
    )
    refusal = await saga.prepare()
    assert isinstance(refusal, Decision)
    assert refusal.message == "ds01: this server has no GPUs to give. To fix: run without --gpus"


# ---- GPU refusals go through the one decision path ---------------------------------------


class FakeRecorder:
    audit = None

    def __init__(self) -> None:
        self.decisions: list[tuple[str, str | None, Decision]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    def decision(self, door, route, identity, decision, seconds, container=None) -> None:
        self.decisions.append((door, route.endpoint if route else None, decision))

    def event(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))


def _service(tmp_path, recorder: FakeRecorder) -> Service:
    # dockerd is unreachable: a test that needs a lookup gives the service a fake
    return Service(
        PolicyStore(None), DockerClient(f"unix://{tmp_path}/none.sock"), recorder=recorder
    )


async def test_a_gpu_quota_refusal_is_recorded_as_a_denial_once(tmp_path):
    recorder = FakeRecorder()
    service = _service(tmp_path, recorder)
    service.gpus = FakeBroker(refuse=QUOTA)
    parsed = parse_request(Request("POST", "/v1.41/containers/create", body=b"{}"))
    decision = allow(body={"Image": "busybox"}, gpu_request=GpuRequest(count=1))
    limits = service.policy.limits(ALICE)
    verdict = Verdict(parsed, decision, limits, State(), 0.0, recorded=False)
    saga = GatewayHandler(service).create_saga(verdict, ALICE)
    assert await saga.prepare() == QUOTA
    assert recorder.decisions == [("gateway", "/containers/create", QUOTA)]
    await service.docker.close()


class FakeStartDocker:
    headers: dict[str, str] = {}
    inspected = 0

    async def inspect_container(self, ref: str) -> dict[str, Any]:
        self.inspected += 1
        labels = {"ds01.user": "alice", "ds01.devices": GPU}
        host = {"CgroupParent": "/ds01/alice"}  # as DS01 created it: the owner checks out
        return {"Id": "c" * 64, "Name": "/web", "Config": {"Labels": labels}, "HostConfig": host}


class BusyBroker:
    async def guard_start(self, info: Any, identity: Any, now: float) -> Decision:
        return deny("device_busy", f"{GPU} is held by bob's train", "start it later")


async def test_a_busy_device_on_start_is_recorded_as_a_denial(tmp_path):
    recorder = FakeRecorder()
    docker = FakeStartDocker()
    service = Service(PolicyStore(None), docker, recorder=recorder)  # type: ignore[arg-type]
    service.gpus = BusyBroker()
    verdict = await service.decide(Request("POST", "/v1.41/containers/web/start"), ALICE, "gateway")
    assert verdict.decision.code == "device_busy"
    assert docker.inspected == 1  # the owner check and the start guard share one inspect
    assert [(d.code, d.allowed) for _, _, d in recorder.decisions] == [("device_busy", False)]


async def test_an_internal_error_keeps_its_cause_in_the_log_only(tmp_path, monkeypatch, caplog):
    from policy import engine

    def broken(*args: Any) -> Decision:
        raise ZeroDivisionError("the cause")

    monkeypatch.setitem(engine._RULES, "/grpc", engine.Rule(broken))
    recorder = FakeRecorder()
    service = _service(tmp_path, recorder)
    verdict = await service.decide(Request("POST", "/v1.41/grpc"), ALICE, "gateway")
    decision = verdict.decision
    assert decision.code == "internal" and "ZeroDivisionError: the cause" in decision.detail
    assert "the cause" not in decision.message
    assert decision.message == (
        "ds01: DS01 could not decide this request (ZeroDivisionError). "
        "To fix: report this to an admin; nothing was changed"
    )
    assert "ZeroDivisionError: the cause" in caplog.text
    [(event, fields)] = recorder.events
    assert event == "decision_detail" and "the cause" in fields["detail"]
    await service.docker.close()


async def test_a_failure_after_the_reservation_rolls_it_back(tmp_path, monkeypatch):
    """Something failing between the saga's reservation and the forward (issuing the ticket)
    leaves no device reserved: the handler closes the saga as failed, then denies."""
    from gateway.types import Client, PeerCred, RequestHead

    recorder = FakeRecorder()
    service = _service(tmp_path, recorder)
    broker = FakeBroker()
    service.gpus = broker
    parsed = parse_request(Request("POST", "/v1.41/containers/create", body=b"{}"))
    decision = allow(body={"Image": "busybox"}, gpu_request=GpuRequest(count=1))
    verdict = Verdict(parsed, decision, service.policy.limits(ALICE), State(), 0.0, False)

    async def decided(*args: Any) -> Verdict:
        return verdict

    def no_ticket(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("the ticket store is broken")

    monkeypatch.setattr(service, "decide", decided)
    monkeypatch.setattr(service.tickets, "issue", no_ticket)
    client = Client(PeerCred(1, 1001, 1001))
    client.context = ALICE
    head = RequestHead("POST", "/v1.41/containers/create", (("Host", "docker"),))
    reply = await GatewayHandler(service).decide(client, head, b'{"Image":"busybox"}')
    assert getattr(reply, "status", None) == 403
    assert broker.reserved == set() and broker.bound == {}
    await service.docker.close()
