"""``Service.decide_now``: the decision without awaiting, exactly when nothing must be looked up.

Both doors take it for nearly every request (it saves a task and a turn of the event loop),
so it must never decide what ``decide`` would decide differently: for every request here it
either returns ``decide``'s decision, having needed no lookup, or steps aside (None) for a
request whose decision needs dockerd, a start (its guard), or a TLS user.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from ds01d.policy_store import PolicyStore
from ds01d.service import Service
from policy.facts import parse_request
from policy.identity import Channel, Identity, direct_identity
from policy.state import Request
from tests.unit.fake_docker import FakeDockerApi
from tests.unit.policy.conftest import cli_create_body

ALICE = Identity(uid=1001, user="alice", groups=frozenset({"alice"}), home="/home/alice")
TLS_ALICE = replace(ALICE, channel=Channel.TLS)
JSON = {"Content-Type": "application/json"}

REQUESTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("HEAD", "/_ping", None),
    ("GET", "/_ping", None),
    ("GET", "/v1.41/version", None),
    ("GET", "/v1.41/info", None),
    ("GET", "/v1.41/containers/json", None),
    ("GET", "/v1.41/containers/json?all=1&filters=%7B%7D", None),
    ("GET", "/v1.41/images/json", None),
    ("GET", "/v1.41/volumes", None),
    ("GET", "/v1.41/networks", None),
    ("GET", "/v1.41/events", None),
    ("GET", "/v1.41/containers/web/json", None),
    ("GET", "/v1.41/containers/web/logs?stdout=1", None),
    ("POST", "/v1.41/containers/web/start", None),
    ("POST", "/v1.41/containers/web/restart", None),
    ("POST", "/v1.41/containers/web/stop", None),
    ("DELETE", "/v1.41/containers/web", None),
    ("POST", "/v1.41/containers/create", cli_create_body()),
    ("POST", "/v1.41/containers/create", cli_create_body(Privileged=True)),
    ("POST", "/v1.41/volumes/create", {"Name": "data"}),
    ("POST", "/v1.41/containers/prune", None),
    ("POST", "/v1.41/images/create?fromImage=busybox&tag=latest", None),
    ("GET", "/v1.41/no/such/endpoint", None),
    ("GET", "/v1.41/containers/json?a=%zz", None),
]


class CountingDocker(FakeDockerApi):
    """The in-memory dockerd, counting every lookup made of it."""

    def __init__(self) -> None:
        super().__init__(images=("busybox:latest",))
        self.lookups = 0

    def __getattribute__(self, name: str) -> Any:
        if name.startswith(("inspect_", "list_")):
            object.__setattr__(self, "lookups", object.__getattribute__(self, "lookups") + 1)
        return object.__getattribute__(self, name)


def _service() -> tuple[Service, CountingDocker]:
    docker = CountingDocker()
    service = Service(
        PolicyStore(None),
        docker,  # type: ignore[arg-type]
        realpath=lambda p: p,
        exists=lambda p: True,
        is_user=lambda u: u == "alice",
    )
    return service, docker


def _request(method: str, target: str, body: dict[str, Any] | None) -> Request:
    raw = json.dumps(body).encode() if body is not None else None
    return Request(method, target, JSON if raw else {}, raw)


@pytest.mark.parametrize("identity", [ALICE, direct_identity()], ids=["alice", "direct"])
@pytest.mark.parametrize(("method", "target", "body"), REQUESTS)
async def test_decide_now_is_decide_when_nothing_is_looked_up(
    identity: Identity, method: str, target: str, body: dict[str, Any] | None
) -> None:
    now_service, _ = _service()
    verdict = now_service.decide_now(parse_request(_request(method, target, body)), identity, "x")
    service, docker = _service()
    decided = await service.decide(_request(method, target, body), identity, "x")
    if verdict is None:
        start = target.endswith(("/start", "/restart"))
        assert start or docker.lookups > 0, "decide_now stepped aside needlessly"
    else:
        assert docker.lookups == 0
        assert verdict.decision == decided.decision
        assert verdict.recorded == decided.recorded


async def test_a_tls_user_always_takes_the_full_path() -> None:
    service, _ = _service()
    ping = parse_request(_request("GET", "/_ping", None))
    assert service.decide_now(ping, TLS_ALICE, "authz") is None
    assert service.decide_now(ping, ALICE, "authz") is not None
