"""Network ownership: which networks a user may name, connect, inspect and list."""

from __future__ import annotations

import json

import pytest

from policy.decision import Denied
from policy.engine import decide
from policy.networks import (
    check_create_networks,
    redact_conflict,
    referenced_networks,
    screen_network,
    screen_network_list,
)
from policy.state import ObjectFacts, Request, State

from .conftest import ALICE, BOB, ROOT, cli_create_body, container

ALICE_NET = ObjectFacts(
    kind="network", id="a1" * 32, owner="alice", name="alice-net", labels={"ds01.user": "alice"}
)
BRIDGE = ObjectFacts(kind="network", id="b7" * 32, owner=None, name="bridge")
HOST = ObjectFacts(kind="network", id="40" * 32, owner=None, name="host")
STRAY = ObjectFacts(kind="network", id="57" * 32, owner=None, name="made-by-root")
RELATED = {
    "network:alice-net": ALICE_NET,
    "network:" + "a1" * 6: ALICE_NET,
    "network:" + "b7" * 32: BRIDGE,
    "network:" + "40" * 32: HOST,
    "network:made-by-root": STRAY,
}
STATE = State(related=RELATED)


def body(mode: str = "default", endpoints: dict | None = None) -> dict:
    out = cli_create_body(NetworkMode=mode)
    out["NetworkingConfig"] = {"EndpointsConfig": endpoints or {}}
    return out


# (row id, create body, who, exact message or None when allowed)
CREATE_ROWS = [
    ("default", body(), BOB, None),
    ("bridge", body("bridge"), BOB, None),
    ("none", body("none"), BOB, None),
    ("own_by_name", body("alice-net"), ALICE, None),
    ("own_by_id_prefix", body("a1" * 6), ALICE, None),
    ("bridge_by_id", body("b7" * 32), BOB, None),
    ("other_users_network", body("alice-net"), BOB, "network alice-net not found"),
    ("other_users_by_id_prefix", body("a1" * 6), BOB, f"network {'a1' * 6} not found"),
    ("missing", body("nonexist"), BOB, "network nonexist not found"),
    ("unowned_network", body("made-by-root"), BOB, "network made-by-root not found"),
    (
        "host",
        body("host"),
        BOB,
        "ds01: --network host is not allowed for group students. To fix: drop --network host",
    ),
    (
        "host_by_id",
        body("40" * 32),
        BOB,
        "ds01: --network host is not allowed for group students. To fix: drop --network host",
    ),
    (
        "endpoint_of_other_user",
        body("default", {"alice-net": {}}),
        BOB,
        "network alice-net not found",
    ),
    ("endpoint_own", body("alice-net", {"alice-net": {"Aliases": ["web"]}}), ALICE, None),
    (
        "endpoint_id_points_elsewhere",
        body("bridge", {"bridge": {"NetworkID": "a1" * 32}}),
        BOB,
        f"network {'a1' * 32} not found",
    ),
    ("admin_anything", body("made-by-root", {"alice-net": {}}), ROOT, None),
]


@pytest.mark.parametrize("row", CREATE_ROWS, ids=[r[0] for r in CREATE_ROWS])
def test_create_network_references(row, limits_of):
    _, create_body, who, message = row
    state = State(related={**RELATED, "network:" + "a1" * 32: ALICE_NET})
    if message is None:
        check_create_networks(create_body, who, limits_of(who), state)
        return
    with pytest.raises(Denied) as raised:
        check_create_networks(create_body, who, limits_of(who), state)
    assert raised.value.decision.message == message
    assert raised.value.decision.status in (400, 403)  # never 404: the CLI would pull


def test_referenced_networks_lists_what_the_edge_must_look_up():
    create_body = body("alice-net", {"alice-net": {}, "x": {"NetworkID": "abc"}, "bridge": {}})
    assert referenced_networks(create_body) == ["alice-net", "x", "abc"]
    assert referenced_networks(body("container:web")) == []
    assert referenced_networks(body("host")) == []


def _req(method: str, path: str, payload: dict | None = None) -> Request:
    data = json.dumps(payload).encode() if payload is not None else None
    return Request(method, path, {"Content-Type": "application/json"}, data)


# (row id, request, state, who, exact message or None when allowed)
OBJECT_ROWS = [
    ("inspect_own", _req("GET", "/v1.41/networks/alice-net"), ALICE_NET, ALICE, None),
    (
        "inspect_other",
        _req("GET", "/v1.41/networks/alice-net"),
        ALICE_NET,
        BOB,
        "network alice-net not found",
    ),
    ("inspect_bridge", _req("GET", "/v1.41/networks/bridge"), BRIDGE, BOB, None),
    ("inspect_missing", _req("GET", "/v1.41/networks/x"), None, BOB, "network x not found"),
    (
        "delete_other",
        _req("DELETE", "/v1.41/networks/alice-net"),
        ALICE_NET,
        BOB,
        "network alice-net not found",
    ),
    (
        "delete_bridge",
        _req("DELETE", "/v1.41/networks/bridge"),
        BRIDGE,
        BOB,
        "ds01: bridge is a pre-defined network and cannot be removed. To fix: remove only "
        "networks you created",
    ),
    (
        "connect_other_users_network",
        _req("POST", "/v1.41/networks/alice-net/connect", {"Container": "mine"}),
        ALICE_NET,
        BOB,
        "network alice-net not found",
    ),
    (
        "connect_bridge_own_container",
        _req("POST", "/v1.41/networks/bridge/connect", {"Container": "mine"}),
        BRIDGE,
        BOB,
        None,
    ),
    (
        "connect_bridge_other_container",
        _req("POST", "/v1.41/networks/bridge/connect", {"Container": "theirs"}),
        BRIDGE,
        BOB,
        "No such container: theirs",
    ),
    ("admin_delete_other", _req("DELETE", "/v1.41/networks/alice-net"), ALICE_NET, ROOT, None),
]


@pytest.mark.parametrize("row", OBJECT_ROWS, ids=[r[0] for r in OBJECT_ROWS])
def test_network_object(row, limits_of):
    _, request, target, who, message = row
    related = {"container:mine": container("bob"), "container:theirs": container("alice")}
    decision = decide(request, who, limits_of(who), State(target=target, related=related))
    if message is None:
        assert decision.allowed, decision.message
    else:
        assert not decision.allowed and decision.message == message


def test_network_create_refuses_chosen_subnets(limits_of):
    request = _req(
        "POST",
        "/v1.41/networks/create",
        {"Name": "n", "Driver": "bridge", "IPAM": {"Config": [{"Subnet": "10.0.0.0/8"}]}},
    )
    decision = decide(request, BOB, limits_of(BOB), State())
    assert decision.message == (
        "ds01: --subnet, --ip-range, --gateway and --aux-address are chosen by dockerd. "
        "To fix: create the network without them"
    )


def test_network_create_is_owned(limits_of):
    request = _req(
        "POST",
        "/v1.41/networks/create",
        {"Name": "n", "Driver": "bridge", "Labels": {"ds01.user": "alice"}},
    )
    decision = decide(request, BOB, limits_of(BOB), State())
    assert decision.allowed and decision.body["Labels"] == {"ds01.user": "bob"}


@pytest.mark.parametrize(
    ("who", "held", "allowed"), [(BOB, 7, True), (BOB, 8, False), (ROOT, 50, True)]
)
def test_one_user_cannot_take_every_network_address_pool(limits_of, who, held, allowed):
    """dockerd has ~31 address pools for all networks: a user holds 8 at most (the default)."""
    request = _req("POST", "/v1.41/networks/create", {"Name": "n", "Driver": "bridge"})
    decision = decide(request, who, limits_of(who), State(user_networks=held))
    assert decision.allowed == allowed
    if not allowed:
        assert decision.message == (
            "ds01: you already have 8 networks, the limit for group students is 8 (the "
            "server's network address pools are shared by everyone). To fix: remove networks "
            "you no longer need (docker network ls; docker network rm NAME)"
        )


def _net(name: str, owner: str | None, containers: dict) -> dict:
    labels = {"ds01.user": owner} if owner else {}
    return {"Name": name, "Id": name * 4, "Labels": labels, "Containers": containers}


def test_list_shows_own_and_predefined_without_other_users_containers():
    answer = [
        _net("bridge", None, {"c-alice": {"Name": "a"}, "c-bob": {"Name": "b"}}),
        _net("host", None, {}),
        _net("alice-net", "alice", {"c-alice": {"Name": "a"}}),
        _net("bob-net", "bob", {"c-bob": {"Name": "b"}}),
        _net("made-by-root", None, {}),
        _net("bridge2", "alice", {}),
    ]
    shown = screen_network_list(answer, "bob", frozenset({"c-bob"}))
    assert [n["Name"] for n in shown] == ["bridge", "host", "bob-net"]
    assert shown[0]["Containers"] == {"c-bob": {"Name": "b"}}


def test_a_user_network_named_bridge_is_not_predefined():
    """Only an unlabelled network is predefined; a user's network is never shown to others."""
    assert screen_network(_net("bridge", "alice", {"x": {}}), "bob", frozenset()) is None


def test_conflict_message_names_no_container_id():
    message = (
        'Conflict. The container name "/box" is already in use by container '
        f'"{"8a" * 32}". You have to remove (or rename) that container to be able to reuse '
        "that name."
    )
    assert redact_conflict(message) == (
        'Conflict. The container name "/box" is already in use by a container (docker ps -a '
        "lists yours). You have to remove (or rename) that container to be able to reuse "
        "that name."
    )


BOB_NET = ObjectFacts(
    kind="network", id="b0" * 32, owner="bob", name="bob-net", labels={"ds01.user": "bob"}
)
MINE, THEIRS = "c0ffee" * 10 + "c0ff", "7e1125" * 10 + "7e11"


def _connect(endpoint: dict) -> Request:
    return _req("POST", "/v1.41/networks/bob-net/connect", {"Container": "mine", **endpoint})


# (row id, EndpointConfig, exact message or None when allowed, the endpoint dockerd then gets)
ENDPOINT_ROWS = [
    ("no_endpoint", {}, None, None),
    ("network_id_of_this_network", {"NetworkID": BOB_NET.id}, None, {"NetworkID": BOB_NET.id}),
    ("network_id_as_its_name", {"NetworkID": "bob-net"}, None, {"NetworkID": BOB_NET.id}),
    ("network_id_as_a_prefix", {"NetworkID": "b0b0b0"}, None, {"NetworkID": BOB_NET.id}),
    (
        "network_id_of_another_users_network",
        {"NetworkID": ALICE_NET.id},
        "ds01: EndpointConfig.NetworkID names another network than the one connected to. "
        "To fix: drop EndpointConfig.NetworkID",
        None,
    ),
    (
        "network_id_prefix_of_another",
        {"NetworkID": "a1a1a1a1a1a1"},
        "ds01: EndpointConfig.NetworkID names another network than the one connected to. "
        "To fix: drop EndpointConfig.NetworkID",
        None,
    ),
    ("link_to_own_container", {"Links": ["mine:db"]}, None, {"Links": [f"{MINE}:db"]}),
    ("link_to_other_users", {"Links": ["theirs:db"]}, "No such container: theirs", None),
    ("link_to_missing", {"Links": ["nobody"]}, "No such container: nobody", None),
    (
        "links_not_a_list",
        {"Links": "theirs"},
        "ds01: an endpoint's Links is not a list of names. To fix: use --link NAME:ALIAS",
        None,
    ),
]


@pytest.mark.parametrize("row", ENDPOINT_ROWS, ids=[r[0] for r in ENDPOINT_ROWS])
def test_connect_endpoint_names_only_this_network_and_own_containers(row, limits_of):
    """dockerd attaches by EndpointConfig.NetworkID and links by name: both are checked and
    forwarded by full ID, or the connect is refused."""
    _, endpoint, message, forwarded = row
    related = {"container:mine": container("bob"), "container:theirs": container("alice", THEIRS)}
    request = _connect({"EndpointConfig": endpoint} if endpoint else {})
    decision = decide(request, BOB, limits_of(BOB), State(target=BOB_NET, related=related))
    if message is not None:
        assert not decision.allowed and decision.message == message
        return
    assert decision.allowed, decision.message
    sent = decision.body if decision.body is not None else json.loads(request.body or b"{}")
    assert sent["Container"] in ("mine", MINE)
    if forwarded is not None:
        assert sent["EndpointConfig"] == forwarded


@pytest.mark.parametrize(
    ("links", "message"),
    [
        (["mine:db"], None),
        (["theirs:db"], "No such container: theirs"),
        ([7], "ds01: an endpoint's Links is not a list of names. To fix: use --link NAME:ALIAS"),
    ],
)
def test_create_endpoint_links_name_only_own_containers(links, message, limits_of):
    """Links made on a user-defined network at create (compose v1's `links:`) are checked
    like --link: another user's container looks missing, an own one is named by full ID."""
    created = body("bob-net", {"bob-net": {"Links": links}})
    related = {
        **RELATED,
        "network:bob-net": BOB_NET,
        "container:mine": container("bob"),
        "container:theirs": container("alice", THEIRS),
    }
    request = _req("POST", "/v1.41/containers/create", created)
    decision = decide(request, BOB, limits_of(BOB), State(related=related))
    if message is not None:
        assert not decision.allowed and decision.message == message
        return
    assert decision.allowed, decision.message
    endpoint = decision.body["NetworkingConfig"]["EndpointsConfig"]["bob-net"]
    assert endpoint["Links"] == [f"{MINE}:db"]
