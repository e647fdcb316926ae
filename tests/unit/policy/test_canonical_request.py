"""What dockerd executes is what was decided: the query as Go reads it, no form bodies, no
bodies where none belong, and objects named by the full ID that was checked."""

from __future__ import annotations

import json

import pytest

from policy.engine import decide
from policy.routes import RouteError, parse_query, parse_route
from policy.state import ObjectFacts, Request, State

from .conftest import ALICE, ROOT, cli_create_body, container, create_request

FULL = "c0ffee" * 10 + "c0ff"
NET = "ab" * 32


def _req(method: str, target: str, body: bytes | None = None, **headers: str) -> Request:
    return Request(method, target, headers, body)


# ---- the query, as Go's net/url reads it --------------------------------------------------

QUERY_ROWS = [
    # (raw query, what Go would read: a dict, or the refusal)
    ("", {}),
    ("t=a&t=b", {"t": ["a", "b"]}),
    ("all", {"all": [""]}),
    ("a=1&&b=2", {"a": ["1"], "b": ["2"]}),
    ("x=a+b%20c", {"x": ["a b c"]}),
    ("networkmode=x;&networkmode=host", "a ';' in the query string is read differently by dockerd"),
    ("a=1;b=2", "a ';' in the query string is read differently by dockerd"),
    ("networkmode=%zzhost", "a malformed %-escape in the query string"),
    ("a=%4", "a malformed %-escape in the query string"),
    ("a=b c", "the query string contains control or non-ASCII characters"),
    ("a=%0d%0a", "the query string decodes to control characters"),
    ("a=\u00e9", "the query string contains control or non-ASCII characters"),
]


@pytest.mark.parametrize("raw,expected", QUERY_ROWS, ids=[r[0] or "empty" for r in QUERY_ROWS])
def test_query_is_read_as_go_reads_it_or_refused(raw, expected):
    """Every query Go and Python would read differently is refused."""
    if isinstance(expected, dict):
        assert parse_query(raw) == expected
    else:
        with pytest.raises(RouteError) as caught:
            parse_query(raw)
        assert str(caught.value) == expected


def test_forwarded_target_is_the_canonical_reserialisation():
    """The target forwarded is rebuilt from the parse, with the IDs the decision named."""
    route = parse_route("POST", "/v1.41/containers/web/kill?signal=KILL&x=a+b%20c")
    assert route.canonical_target({"id": FULL}) == (
        f"/v1.41/containers/{FULL}/kill?signal=KILL&x=a+b+c"
    )
    route = parse_route("GET", "/images/docker.io/library/busybox:latest/json")
    assert route.canonical_target() == "/images/docker.io/library/busybox:latest/json"
    assert parse_route("GET", "/_ping").canonical_target() == "/_ping"


# ---- bodies dockerd would read as form fields, and bodies where none belong ----------------

BODY_ROWS = [
    (
        "prune_form",
        _req(
            "POST",
            "/v1.41/containers/prune",
            b"filters={}",
            **{"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "10"},
        ),
        "ds01: a application/x-www-form-urlencoded body is not accepted (dockerd would read it as "
        "query parameters). To fix: send parameters in the query string and JSON bodies as "
        "application/json",
    ),
    (
        "build_form_mixed_case",
        _req(
            "POST",
            "/v1.41/build",
            b"networkmode=host",
            **{"content-type": "Application/X-WWW-Form-URLEncoded; charset=utf-8"},
        ),
        "ds01: a application/x-www-form-urlencoded body is not accepted (dockerd would read it as "
        "query parameters). To fix: send parameters in the query string and JSON bodies as "
        "application/json",
    ),
    (
        "multipart",
        _req(
            "POST", "/v1.41/volumes/prune", b"--x--", **{"Content-Type": "multipart/form-data; b=x"}
        ),
        "ds01: a multipart/form-data body is not accepted (dockerd would read it as query "
        "parameters). To fix: send parameters in the query string and JSON bodies as "
        "application/json",
    ),
    (
        "kill_with_body",
        _req("POST", "/v1.41/containers/abc/kill", b"signal=KILL", **{"Content-Length": "11"}),
        "ds01: POST /containers/{id}/kill takes no request body. To fix: send the request "
        "without a body, as the docker CLI does",
    ),
    (
        "prune_chunked",
        _req("POST", "/v1.41/volumes/prune", None, **{"Transfer-Encoding": "chunked"}),
        "ds01: POST /volumes/prune takes no request body. To fix: send the request without a "
        "body, as the docker CLI does",
    ),
    (
        "get_with_body",
        _req("GET", "/v1.41/containers/json", b"{}", **{"Content-Length": "2"}),
        "ds01: GET /containers/json takes no request body. To fix: send the request without a "
        "body, as the docker CLI does",
    ),
]


@pytest.mark.parametrize("row", BODY_ROWS, ids=[r[0] for r in BODY_ROWS])
def test_body_dockerd_would_read_differently_is_refused(row, limits_of):
    """Form bodies and bodies on bodiless routes are refused before anything else."""
    _, request, message = row
    state = State(target=container("alice"))
    decision = decide(request, ALICE, limits_of(ALICE), state)
    assert decision.message == message
    assert decision.status == 400


def test_form_body_is_refused_for_admins_too(limits_of):
    """An admin's prune with a form body is refused as well: it is never what was decided."""
    request = _req(
        "POST",
        "/v1.41/containers/prune",
        b"filters={}",
        **{"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert not decide(request, ROOT, limits_of(ROOT), State()).allowed


@pytest.mark.parametrize(
    "target",
    [
        "/v1.41/containers/abc/kill",
        "/v1.41/containers/abc/stop?t=5",
        "/v1.41/volumes/prune",
        "/v1.41/containers/abc/start",
    ],
)
def test_bodiless_request_with_zero_length_passes(target, limits_of):
    """What the CLI and SDKs send (no body, or Content-Length: 0) is allowed."""
    state = State(target=container("alice"))
    request = _req("POST", target, None, **{"Content-Length": "0"})
    assert decide(request, ALICE, limits_of(ALICE), state).allowed


# ---- full IDs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,target",
    [
        ("POST", "/v1.41/containers/c0ff/kill"),
        ("POST", "/v1.41/containers/web/stop"),
        ("DELETE", "/v1.41/containers/web"),
        ("POST", "/v1.41/containers/web/attach?stream=1"),
        ("GET", "/v1.41/containers/web/archive?path=/x"),
        ("POST", "/v1.41/containers/web/start"),
    ],
)
def test_container_named_by_name_or_prefix_is_forwarded_by_full_id(method, target, limits_of):
    """The decision names the full ID it checked; a rename loop cannot redirect the request."""
    decision = decide(
        _req(method, target), ALICE, limits_of(ALICE), State(target=container("alice"))
    )
    assert decision.allowed, decision.message
    assert decision.params == {"id": FULL}


def test_full_id_request_needs_no_rewrite(limits_of):
    """A request that already names the full ID is forwarded as it is."""
    request = _req("POST", f"/v1.41/containers/{FULL}/kill")
    decision = decide(request, ALICE, limits_of(ALICE), State(target=container("alice")))
    assert decision.allowed and decision.params is None


def test_commit_names_the_checked_container_by_full_id(limits_of):
    """commit?container=PREFIX reaches dockerd as the full ID that was checked."""
    request = _req("POST", "/v1.41/commit?container=c0ff&repo=alice/snap")
    decision = decide(request, ALICE, limits_of(ALICE), State(target=container("alice")))
    assert decision.allowed, decision.message
    assert (decision.query or {})["container"] == [FULL]


def test_create_references_are_pinned_to_full_ids(limits_of):
    """--network container:NAME, --volumes-from and --link name the checked container's ID."""
    body = cli_create_body(
        NetworkMode="container:web",
        IpcMode="container:web",
        VolumesFrom=["web:ro"],
        Links=["/web:db", "web"],
    )
    related = {"container:web": container("alice")}
    decision = decide(create_request(body), ALICE, limits_of(ALICE), State(related=related))
    assert decision.allowed, decision.message
    host = decision.body["HostConfig"]
    assert host["NetworkMode"] == f"container:{FULL}"
    assert host["IpcMode"] == f"container:{FULL}"
    assert host["VolumesFrom"] == [f"{FULL}:ro"]
    assert host["Links"] == [f"{FULL}:db", f"{FULL}:web"]


def test_network_named_by_prefix_is_forwarded_by_full_id(limits_of):
    """A network referenced by name reaches dockerd as the full ID of the one checked."""
    mine = ObjectFacts(kind="network", id=NET, owner="alice", name="mynet")
    request = _req("DELETE", "/v1.41/networks/mynet")
    decision = decide(request, ALICE, limits_of(ALICE), State(target=mine))
    assert decision.allowed, decision.message
    assert decision.params == {"id": NET}


def test_other_users_container_still_looks_missing(limits_of):
    """Pinning happens only after the owner check: bob's container is not found for alice."""
    decision = decide(
        _req("POST", "/v1.41/containers/web/kill"),
        ALICE,
        limits_of(ALICE),
        State(target=container("bob")),
    )
    assert decision.message == "No such container: web"
    assert json.dumps(decision.params) == "null"


@pytest.mark.parametrize("action", ["connect", "disconnect"])
def test_network_connect_names_the_checked_container_by_full_id(action, limits_of):
    """network connect/disconnect reach dockerd with the container's full ID, not the name."""
    mine = ObjectFacts(kind="network", id=NET, owner="alice", name="mynet")
    body = json.dumps({"Container": "web"}).encode()
    request = Request(
        "POST", f"/v1.41/networks/mynet/{action}", {"Content-Type": "application/json"}, body
    )
    state = State(target=mine, related={"container:web": container("alice")})
    decision = decide(request, ALICE, limits_of(ALICE), state)
    assert decision.allowed, decision.message
    assert decision.body == {"Container": FULL}
    assert decision.params == {"id": NET}
