"""Each rule declares the facts it needs, as pure data from the parsed request."""

from __future__ import annotations

import json

import pytest

from policy.engine import needed_facts
from policy.facts import NO_FACTS, FactRequests, ObjectRef, parse_request
from policy.identity import Identity, direct_identity
from policy.state import Request

ALICE = Identity(uid=1001, user="alice", groups=frozenset({"alice"}), home="/home/alice")
CREATE_BODY = {
    "Image": "busybox",
    "HostConfig": {
        "Binds": ["data:/data", "data:/again"],
        "VolumesFrom": ["web"],
        "NetworkMode": "mynet",
    },
}


def _needs(method: str, target: str, body: object = None) -> FactRequests:
    raw = json.dumps(body).encode() if body is not None else None
    return needed_facts(parse_request(Request(method, target, body=raw)), ALICE)


@pytest.mark.parametrize(
    ("method", "target", "body", "expected"),
    [
        ("GET", "/_ping", None, NO_FACTS),
        ("GET", "/v1.41/containers/json", None, NO_FACTS),
        ("GET", "/v1.41/containers/web/json", None, FactRequests(target_in_answer=True)),
        ("GET", "/v1.41/volumes/data", None, FactRequests(target_in_answer=True)),
        ("POST", "/v1.41/containers/web/start", None, FactRequests(ObjectRef("container", "web"))),
        ("GET", "/v1.41/exec/e1/json", None, FactRequests(ObjectRef("exec", "e1"))),
        ("DELETE", "/v1.41/volumes/data", None, FactRequests(ObjectRef("volume", "data"))),
        (
            "POST",
            "/v1.41/volumes/create",
            {"Name": "data"},
            FactRequests(ObjectRef("volume", "data")),
        ),
        (
            "POST",
            "/v1.41/networks/n1/connect",
            {"Container": "web"},
            FactRequests(ObjectRef("network", "n1"), related=(ObjectRef("container", "web"),)),
        ),
        ("POST", "/v1.41/containers/create", {"Image": 5, "Bogus": 1}, NO_FACTS),  # refused unread
    ],
)
def test_each_route_declares_its_facts(method, target, body, expected):
    assert _needs(method, target, body) == expected


def test_a_create_names_each_object_once_with_its_image_and_the_user_count():
    needs = _needs("POST", "/v1.41/containers/create", CREATE_BODY)
    assert needs.related == (
        ObjectRef("container", "web"),
        ObjectRef("volume", "data"),
        ObjectRef("network", "mynet"),
    )
    assert needs.images == ("busybox",) and needs.image_owners and needs.user_containers


def test_direct_access_needs_nothing():
    parsed = parse_request(Request("POST", "/v1.41/containers/web/start"))
    assert needed_facts(parsed, direct_identity()) == NO_FACTS


def test_a_request_is_parsed_once_and_decided_on_that_parse():
    parsed = parse_request(Request("POST", "/v1.41/containers/create", body=b'{"Image":"x"}'))
    assert parsed.route is not None and parsed.route.endpoint == "/containers/create"
    assert parsed.body == {"Image": "x"} and parsed.body_error is None
    bad = parse_request(
        Request("POST", "/v1.41/containers/create", body=b'{"Image":"x","image":"y"}')
    )
    assert bad.body is None and bad.body_error is not None and bad.body_error.code == "bad_body"
    assert parse_request(Request("GET", "/v1.41/../x")).route_error is not None
