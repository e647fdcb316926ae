"""Routing request targets as dockerd does, and refusing targets dockerd could read differently."""

from __future__ import annotations

import pytest

from policy.routes import MAX_API_VERSION, MIN_API_VERSION, Route, RouteError, parse_route

# ---- routed --------------------------------------------------------------------------------

ROUTED: list[tuple[str, str, str, dict[str, str], tuple[int, int] | None]] = [
    ("GET", "/_ping", "/_ping", {}, None),
    ("HEAD", "/_ping", "/_ping", {}, None),
    ("GET", "/v1.24/_ping", "/_ping", {}, (1, 24)),
    ("GET", "/v1.54/version", "/version", {}, (1, 54)),
    ("GET", "/v1.41/info", "/info", {}, (1, 41)),
    ("GET", "/v1.41/containers/json", "/containers/json", {}, (1, 41)),
    ("GET", "/containers/json", "/containers/json", {}, None),
    ("POST", "/v1.43/containers/create", "/containers/create", {}, (1, 43)),
    ("GET", "/containers/abc123/json", "/containers/{id}/json", {"id": "abc123"}, None),
    ("POST", "/v1.45/containers/my_box/start", "/containers/{id}/start", {"id": "my_box"}, (1, 45)),
    ("POST", "/containers/x/exec", "/containers/{id}/exec", {"id": "x"}, None),
    ("DELETE", "/containers/abc", "/containers/{id}", {"id": "abc"}, None),
    ("PUT", "/containers/abc/archive", "/containers/{id}/archive", {"id": "abc"}, None),
    ("HEAD", "/containers/abc/archive", "/containers/{id}/archive", {"id": "abc"}, None),
    ("POST", "/exec/e1/start", "/exec/{id}/start", {"id": "e1"}, None),
    ("GET", "/images/json", "/images/json", {}, None),
    ("GET", "/images/get", "/images/get", {}, None),
    (
        "GET",
        "/images/library/busybox:latest/json",
        "/images/{name*}/json",
        {"name": "library/busybox:latest"},
        None,
    ),
    (
        "GET",
        "/v1.41/images/library/busybox:latest/json",
        "/images/{name*}/json",
        {"name": "library/busybox:latest"},
        (1, 41),
    ),
    (
        "POST",
        "/images/registry.example.com:5000/team/app:1.0/push",
        "/images/{name*}/push",
        {"name": "registry.example.com:5000/team/app:1.0"},
        None,
    ),
    (
        "POST",
        "/images/ghcr.io/org/app/tag",
        "/images/{name*}/tag",
        {"name": "ghcr.io/org/app"},
        None,
    ),
    ("GET", "/images/busybox/history", "/images/{name*}/history", {"name": "busybox"}, None),
    (
        "DELETE",
        "/images/library/busybox:latest",
        "/images/{name*}",
        {"name": "library/busybox:latest"},
        None,
    ),
    (
        "GET",
        "/distribution/docker.io/library/busybox:latest/json",
        "/distribution/{name*}/json",
        {"name": "docker.io/library/busybox:latest"},
        None,
    ),
    ("POST", "/build", "/build", {}, None),
    ("POST", "/commit", "/commit", {}, None),
    ("GET", "/volumes/data", "/volumes/{name}", {"name": "data"}, None),
    ("POST", "/volumes/create", "/volumes/create", {}, None),
    ("POST", "/networks/n1/connect", "/networks/{id}/connect", {"id": "n1"}, None),
    ("DELETE", "/networks/n1", "/networks/{id}", {"id": "n1"}, None),
]


@pytest.mark.parametrize(("method", "target", "endpoint", "params", "version"), ROUTED)
def test_routes_known_endpoints(
    method: str,
    target: str,
    endpoint: str,
    params: dict[str, str],
    version: tuple[int, int] | None,
) -> None:
    """Versioned and unversioned targets route to moby's template with its parameters."""
    route = parse_route(method, target)
    assert isinstance(route, Route)
    assert (route.method, route.endpoint, route.params, route.version) == (
        method,
        endpoint,
        params,
        version,
    )


def test_path_is_the_unversioned_path() -> None:
    """``path`` is the target without version prefix and query."""
    route = parse_route("GET", "/v1.41/containers/abc/json?size=1")
    assert route.path == "/containers/abc/json"


ADMIN_ONLY: list[tuple[str, str, str]] = [
    ("GET", "/plugins", "/plugins"),
    ("POST", "/plugins/pull", "/plugins{rest*}"),
    ("POST", "/plugins/vieux/sshfs:latest/enable", "/plugins{rest*}"),
    ("GET", "/v1.41/plugins/privileges", "/plugins{rest*}"),
    ("POST", "/swarm/init", "/swarm{rest*}"),
    ("POST", "/v1.41/swarm/join", "/swarm{rest*}"),
    ("GET", "/swarm", "/swarm"),
    ("POST", "/services/create", "/services{rest*}"),
    ("DELETE", "/services/web", "/services{rest*}"),
    ("GET", "/services", "/services"),
    ("GET", "/nodes", "/nodes"),
    ("POST", "/nodes/n1/update", "/nodes{rest*}"),
    ("POST", "/secrets/create", "/secrets{rest*}"),
    ("GET", "/secrets", "/secrets"),
    ("POST", "/configs/create", "/configs{rest*}"),
    ("GET", "/v1.44/configs", "/configs"),
    ("GET", "/tasks", "/tasks"),
    ("GET", "/tasks/t1/logs", "/tasks{rest*}"),
]


@pytest.mark.parametrize(("method", "target", "endpoint"), ADMIN_ONLY)
def test_routes_every_admin_only_family(method: str, target: str, endpoint: str) -> None:
    """Plugin and cluster endpoints route to their family so the policy can refuse them by name."""
    assert parse_route(method, target).endpoint == endpoint


def test_lowercase_method_is_normalised() -> None:
    """The method is matched and reported in upper case."""
    assert parse_route("get", "/_ping").method == "GET"


@pytest.mark.parametrize("version", [MIN_API_VERSION, MAX_API_VERSION, (1, 41), (1, 44)])
def test_accepts_the_supported_version_range(version: tuple[int, int]) -> None:
    """Both ends of the supported API range and versions between route."""
    major, minor = version
    assert parse_route("GET", f"/v{major}.{minor}/_ping").version == version


# ---- query ---------------------------------------------------------------------------------


def test_query_is_parsed_with_blank_values() -> None:
    """The query string is split into lists of values, keeping blanks, percent-decoded."""
    route = parse_route("GET", "/containers/json?all=1&filters=%7B%22label%22%3A%5B%5D%7D&size=")
    assert route.query == {"all": ["1"], "filters": ['{"label":[]}'], "size": [""]}
    assert route.q("filters") == '{"label":[]}'
    assert route.q("missing") == ""
    assert route.q("missing", "dflt") == "dflt"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("True", True), ("0", False), ("false", False), ("", False)],
)
def test_flag(value: str, expected: bool) -> None:
    """``flag`` reads the usual true spellings of a boolean query parameter."""
    assert parse_route("DELETE", f"/containers/abc?force={value}").flag("force") is expected


@pytest.mark.parametrize(
    ("method", "target", "name", "dockerd_reads"),
    [
        ("POST", "/build?networkmode=host&networkmode=default", "networkmode", "host"),
        ("POST", "/commit?container=theirs&container=mine", "container", "theirs"),
    ],
)
def test_repeated_query_parameter_reads_like_dockerd(
    method: str, target: str, name: str, dockerd_reads: str
) -> None:
    """A parameter given twice is read as dockerd reads it (the first value), or refused."""
    try:
        route = parse_route(method, target)
    except RouteError:
        return
    assert route.q(name) == dockerd_reads


@pytest.mark.parametrize("value", ["yes", "on", "2", "%201%20"])
def test_flag_reads_like_moby_bool_value(value: str) -> None:
    """``flag`` is true exactly when dockerd's BoolValue would be."""
    assert parse_route("DELETE", f"/containers/abc?force={value}").flag("force") is True


# ---- refused -------------------------------------------------------------------------------

REFUSED: list[tuple[str, str, str, str]] = [
    # (case id, method, target, words in the reason)
    ("percent-encoded slash", "GET", "/containers/a%2Fb/json", "percent-encoded"),
    ("percent-encoded letter", "GET", "/containers/%61bc/json", "percent-encoded"),
    ("percent-encoded dot", "GET", "/containers/%2e%2e/images/json", "percent-encoded"),
    ("percent-encoded NUL", "GET", "/v1.41/containers/json%00", "percent-encoded"),
    ("leading doubled slash", "GET", "//containers/json", "canonical"),
    ("inner doubled slash", "GET", "/containers//json", "canonical"),
    ("doubled slash after version", "GET", "/v1.41//containers/json", "canonical"),
    ("dot-dot segment", "GET", "/containers/../images/json", "canonical"),
    ("dot segment", "GET", "/containers/./json", "canonical"),
    ("trailing dot", "DELETE", "/containers/abc/.", "canonical"),
    ("trailing dot-dot", "DELETE", "/images/foo/..", "canonical"),
    ("dot-dot in image name", "GET", "/images/foo/../bar/json", "canonical"),
    ("version 9.1", "GET", "/v9.1/_ping", "API version 9.1 is not supported"),
    ("version 1.12", "GET", "/v1.12/containers/json", "API version 1.12 is not supported"),
    ("version 1.23", "POST", "/v1.23/containers/x/start", "API version 1.23 is not supported"),
    ("version 1.55", "GET", "/v1.55/_ping", "API version 1.55 is not supported"),
    ("version 2.0", "GET", "/v2.0/_ping", "API version 2.0 is not supported"),
    ("version 0.9", "GET", "/v0.9/_ping", "API version 0.9 is not supported"),
    ("version without minor", "GET", "/v1/_ping", "malformed API version"),
    ("version with patch", "GET", "/v1.41.3/containers/json", "malformed API version"),
    ("version with suffix", "GET", "/v1.41abc/_ping", "malformed API version"),
    ("version and nothing else", "GET", "/v1.41", "malformed API version"),
    ("version twice", "GET", "/v1.41/v1.41/_ping", "not a Docker API endpoint"),
    ("unknown endpoint", "GET", "/containers/abc/frobnicate", "not a Docker API endpoint"),
    ("unknown family", "GET", "/foo", "not a Docker API endpoint"),
    ("prefix of an admin family", "GET", "/pluginsx", "not a Docker API endpoint"),
    ("trailing slash", "GET", "/containers/json/", "not a Docker API endpoint"),
    ("bare root", "GET", "/", "not a Docker API endpoint"),
    ("upper-case V prefix", "GET", "/V1.41/_ping", "not a Docker API endpoint"),
    ("non-ASCII letter", "GET", "/containers/caf\u00e9/json", "non-ASCII"),
    ("Kelvin sign", "GET", "/containers/\u212a/json", "non-ASCII"),
    ("space", "GET", "/containers/a b/json", "control or non-ASCII"),
    ("tab", "GET", "/containers/a\tb/json", "control or non-ASCII"),
    ("DEL", "GET", "/containers/abc/json\x7f", "control or non-ASCII"),
    ("relative target", "GET", "containers/json", "not an absolute path"),
    ("empty target", "GET", "", "not an absolute path"),
    ("asterisk form", "OPTIONS", "*", "not an absolute path"),
    ("absolute form", "GET", "http://localhost/containers/json", "not an absolute path"),
    ("PATCH", "PATCH", "/containers/json", "not a Docker API endpoint"),
    ("GET on create", "GET", "/containers/create", "not a Docker API endpoint"),
    ("POST on ping", "POST", "/_ping", "not a Docker API endpoint"),
    ("PUT on start", "PUT", "/containers/abc/start", "not a Docker API endpoint"),
    ("GET on build", "GET", "/build", "not a Docker API endpoint"),
    ("DELETE on volume list", "DELETE", "/volumes", "not a Docker API endpoint"),
    ("HEAD on version", "HEAD", "/version", "not a Docker API endpoint"),
    ("PATCH on an admin family", "PATCH", "/swarm/init", "not a Docker API endpoint"),
]


@pytest.mark.parametrize(
    ("method", "target", "reason"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_refuses(method: str, target: str, reason: str) -> None:
    """Targets dockerd could route differently, or that are not Docker API calls, are refused."""
    with pytest.raises(RouteError) as info:
        parse_route(method, target)
    assert reason in str(info.value)


def test_version_refusal_names_the_supported_range() -> None:
    """The unsupported-version message tells the user which versions work."""
    with pytest.raises(RouteError) as info:
        parse_route("GET", "/v1.12/_ping")
    assert str(info.value) == "API version 1.12 is not supported (DS01 accepts 1.24 to 1.54)"


def test_route_error_is_a_value_error() -> None:
    """RouteError can be caught as ValueError."""
    assert issubclass(RouteError, ValueError)


@pytest.mark.parametrize("target", ["/containers/json#x", "/images/mine#/../theirs"])
def test_refuses_a_fragment_in_the_target(target: str) -> None:
    """A '#' in a request target (never sent by HTTP clients) is refused, not cut off."""
    with pytest.raises(RouteError):
        parse_route("GET" if target.endswith("json#x") else "DELETE", target)
