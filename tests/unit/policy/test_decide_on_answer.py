"""Self-describing reads (inspect) are decided on dockerd's answer, not on a lookup before it.

Phase one (no target looked up) may only defer the owner check for the reads listed in
``ANSWER_NAMES_TARGET``; phase two is the ordinary decision with the answer's object.
"""

from __future__ import annotations

import json

import pytest

from ds01d.docker_client import DockerClient
from ds01d.policy_store import PolicyStore
from ds01d.service import Service
from policy.engine import ANSWER_NAMES_TARGET, decide
from policy.identity import Identity, direct_identity
from policy.limits import resolve
from policy.loader import parse_policy
from policy.state import Request, State

from .conftest import ALICE, BOB, LAB_POLICY, ROOT

DEFERRED = State(target_in_answer=True)


@pytest.mark.parametrize(
    ("method", "target"),
    [("GET", "/v1.41/containers/abc/json"), ("GET", "/v1.41/volumes/data")],
)
def test_listed_reads_defer_the_owner_check(limits_of, method, target):
    decision = decide(Request(method, target), ALICE, limits_of(ALICE), DEFERRED)
    assert decision.allowed and decision.decide_on_answer


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/v1.41/containers/abc/logs"),
        ("GET", "/v1.41/containers/abc/archive?path=/etc"),
        ("GET", "/v1.41/containers/abc/export"),
        ("POST", "/v1.41/containers/abc/stop"),
        ("POST", "/v1.41/containers/abc/start"),
        ("DELETE", "/v1.41/containers/abc"),
        ("DELETE", "/v1.41/volumes/data"),
        ("GET", "/v1.41/exec/abc/json"),
    ],
)
def test_no_other_route_may_skip_its_lookup(limits_of, method, target):
    """Anything whose answer does not name its owner is refused without a looked-up target."""
    decision = decide(Request(method, target), ALICE, limits_of(ALICE), DEFERRED)
    assert not decision.allowed and decision.status == 404
    assert not decision.decide_on_answer


def test_the_listed_reads_are_exactly_inspect():
    assert {ep for _, ep in ANSWER_NAMES_TARGET} == {"/containers/{id}/json", "/volumes/{name}"}
    assert {m for m, _ in ANSWER_NAMES_TARGET} == {"GET"}


def test_other_checks_still_apply_before_forwarding():
    """A deferred read still goes through everything that does not need the target."""
    strict = parse_policy(LAB_POLICY.replace("unknown_users: allow", "unknown_users: deny"), "p")
    stranger = Identity(uid=4242, user="mallory", groups=frozenset(), home="/home/mallory")
    decision = decide(
        Request("GET", "/v1.41/containers/abc/json"), stranger, resolve(strict, stranger), DEFERRED
    )
    assert not decision.allowed and decision.code == "unknown_user"


def _service(tmp_path) -> Service:
    policy = tmp_path / "policy.yaml"
    policy.write_text(LAB_POLICY)
    return Service(PolicyStore(str(policy)), DockerClient("unix:///nonexistent.sock"))


def _inspect(owner: str | None) -> bytes:
    labels = {"ds01.user": owner} if owner else {}
    host = {"CgroupParent": f"/ds01/{owner}"} if owner else {}  # as DS01 created it
    return json.dumps(
        {
            "Id": "c0ffee" * 4,
            "Name": "/web",
            "Config": {"Labels": labels},
            "HostConfig": host,
            "State": {},
        }
    ).encode()


INSPECT = Request("GET", "/v1.41/containers/web/json")


@pytest.mark.parametrize(
    ("who", "status", "answer", "allowed", "code"),
    [
        (ALICE, 200, _inspect("alice"), True, "ok"),
        (ALICE, 200, _inspect("bob"), False, "not_found"),
        (ALICE, 200, _inspect(None), False, "not_found"),
        (BOB, 200, _inspect("alice"), False, "not_found"),
        (ROOT, 200, _inspect("alice"), True, "ok"),
        (ALICE, 404, b'{"message":"No such container: web"}', False, "not_found"),
        (ALICE, 200, b"not json", False, "bad_answer"),
        (ALICE, 200, b"[1, 2]", False, "bad_answer"),
        (ALICE, 200, b'{"Config": "no labels"}', False, "bad_answer"),
    ],
)
async def test_second_phase_decides_on_the_object_returned(
    tmp_path, who, status, answer, allowed, code
):
    decision = _service(tmp_path).decide_on_answer(INSPECT, who, status, answer)
    assert decision is not None
    assert (decision.allowed, decision.code) == (allowed, code)
    if code == "not_found":  # someone else's container looks exactly like a missing one
        assert (decision.status, decision.message) == (404, "No such container: web")


async def test_admin_reading_another_users_object_is_audited(tmp_path):
    decision = _service(tmp_path).decide_on_answer(INSPECT, ROOT, 200, _inspect("alice"))
    assert decision is not None and decision.audited


async def test_dockerds_own_errors_pass_unchanged(tmp_path):
    assert _service(tmp_path).decide_on_answer(INSPECT, ALICE, 500, b"{}") is None


async def test_volume_answer_is_read_for_its_owner(tmp_path):
    answer = json.dumps({"Name": "data", "Labels": {"ds01.user": "bob"}}).encode()
    read = Request("GET", "/v1.41/volumes/data")
    service = _service(tmp_path)
    assert service.decide_on_answer(read, BOB, 200, answer).allowed
    assert not service.decide_on_answer(read, ALICE, 200, answer).allowed


async def test_the_gateway_skips_the_lookup_but_direct_access_does_not_defer(tmp_path):
    """No lookup for a deferred read (the DockerClient here reaches nothing)."""
    service = _service(tmp_path)
    decision = (await service.decide(INSPECT, ALICE, "gateway")).decision
    assert decision.allowed and decision.decide_on_answer
    decision = (await service.decide(INSPECT, direct_identity(), "authz")).decision
    assert decision.allowed and not decision.decide_on_answer
