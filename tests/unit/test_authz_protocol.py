"""The Docker AuthZ plugin protocol: decoding dockerd's JSON, and an app that never answers 500."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from authz_plugin.authz import (
    MAX_PLUGIN_REQUEST,
    AuthzAnswer,
    AuthzRequest,
    BadPluginRequest,
    parse_authz,
    plugin_app,
)

CREATE_BODY = b'{"Image":"busybox","HostConfig":{"Privileged":false}}'
ALLOW = AuthzAnswer(True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def authz_json(**fields: Any) -> bytes:
    """An AuthZReq body as dockerd marshals it, with ``fields`` overriding the defaults."""
    data: dict[str, Any] = {
        "User": "",
        "UserAuthNMethod": "",
        "RequestMethod": "POST",
        "RequestUri": "/v1.43/containers/create?name=train",
        "RequestBody": b64(CREATE_BODY),
        "RequestHeaders": {"Content-Type": "application/json", "User-Agent": "Docker-Client/24"},
    }
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


# ---- parse_authz ---------------------------------------------------------------------------


def test_parse_decodes_a_request() -> None:
    """Method, URI, headers and the base64 body come out decoded."""
    req = parse_authz(authz_json(User="alice"), response=False)
    assert req == AuthzRequest(
        user="alice",
        method="POST",
        uri="/v1.43/containers/create?name=train",
        headers={"Content-Type": "application/json", "User-Agent": "Docker-Client/24"},
        body=CREATE_BODY,
    )


def test_parse_accepts_the_request_uri_spelling() -> None:
    """``RequestURI`` is accepted as well as moby's ``RequestUri`` tag."""
    raw = authz_json(RequestUri=..., RequestURI="/v1.43/containers/json")
    assert parse_authz(raw, response=False).uri == "/v1.43/containers/json"


@pytest.mark.parametrize("body", [..., None, ""])
def test_parse_missing_body_is_none(body: Any) -> None:
    """A request without a body (omitted, null or empty) has ``body`` None."""
    assert parse_authz(authz_json(RequestBody=body), response=False).body is None


@pytest.mark.parametrize("headers", [..., None, ""])
def test_parse_missing_headers_are_empty(headers: Any) -> None:
    """Omitted or null headers decode to an empty map."""
    assert parse_authz(authz_json(RequestHeaders=headers), response=False).headers == {}


def test_parse_missing_user_is_empty() -> None:
    """Without TLS authentication dockerd sends no user; it decodes as the empty string."""
    assert parse_authz(authz_json(User=...), response=False).user == ""


def test_parse_response_fields_only_for_responses() -> None:
    """Status, body and headers of the response are decoded for AuthZRes and ignored for AuthZReq."""
    raw = authz_json(
        ResponseStatusCode=201,
        ResponseBody=b64(b'{"Id":"abc"}'),
        ResponseHeaders={"Content-Type": "application/json"},
    )
    res = parse_authz(raw, response=True)
    assert (res.response_status, res.response_body, res.response_headers) == (
        201,
        b'{"Id":"abc"}',
        {"Content-Type": "application/json"},
    )
    req = parse_authz(raw, response=False)
    assert (req.response_status, req.response_body, req.response_headers) == (None, None, {})


def test_parse_ignores_bad_response_fields_in_a_request() -> None:
    """AuthZReq does not read response fields, so garbage there does not matter."""
    raw = authz_json(ResponseStatusCode="x", ResponseBody="!!", ResponseHeaders=[1])
    assert parse_authz(raw, response=False).method == "POST"


@pytest.mark.parametrize(
    ("raw", "response", "message"),
    [
        (b"not json", False, "the AuthZ request is not JSON"),
        (b"\xff\xfe\x00", False, "the AuthZ request is not JSON"),
        (b"", False, "the AuthZ request is not JSON"),
        # stricter than Python's json: what dockerd never sends is refused outright
        (b'{"RequestMethod": NaN}', False, "the AuthZ request is not JSON"),
        (b'{"User": "\\ud800"}', False, "the AuthZ request is not JSON"),
        (b'{"User": "\xc3"}', False, "the AuthZ request is not JSON"),
        (
            authz_json().replace(b"{", b'{"ResponseStatusCode": 99999999999999999999999,', 1),
            True,
            "ResponseStatusCode is not an integer",
        ),
        (b"[1, 2]", False, "the AuthZ request is not a JSON object"),
        (b'"POST"', False, "the AuthZ request is not a JSON object"),
        (authz_json(RequestMethod=...), False, "the AuthZ request has no method or URI"),
        (authz_json(RequestUri=...), False, "the AuthZ request has no method or URI"),
        (authz_json(RequestMethod=""), False, "the AuthZ request has no method or URI"),
        (authz_json(RequestUri=""), False, "the AuthZ request has no method or URI"),
        (authz_json(RequestMethod=7), False, "the AuthZ request has no method or URI"),
        (authz_json(RequestUri=["/x"]), False, "the AuthZ request has no method or URI"),
        (authz_json(User=5), False, "User is not a string"),
        (authz_json(RequestHeaders=["a", "b"]), False, "RequestHeaders is not a map of strings"),
        (authz_json(RequestHeaders={"A": ["1"]}), False, "RequestHeaders is not a map of strings"),
        (authz_json(RequestHeaders={"A": None}), False, "RequestHeaders is not a map of strings"),
        (authz_json(RequestBody="!!not base64!!"), False, "RequestBody is not valid base64"),
        (authz_json(RequestBody="abc"), False, "RequestBody is not valid base64"),
        (authz_json(RequestBody=[1, 2, 3]), False, "RequestBody is not base64 text"),
        (authz_json(ResponseStatusCode="200"), True, "ResponseStatusCode is not an integer"),
        (authz_json(ResponseBody="%%%"), True, "ResponseBody is not valid base64"),
        (authz_json(ResponseHeaders="x"), True, "ResponseHeaders is not a map of strings"),
    ],
)
def test_parse_refuses_malformed(raw: bytes, response: bool, message: str) -> None:
    """Anything malformed raises BadPluginRequest with a reason, never a partial request."""
    with pytest.raises(BadPluginRequest) as info:
        parse_authz(raw, response)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (AuthzAnswer(True), {"Allow": True}),
        (AuthzAnswer(False, "no"), {"Allow": False, "Msg": "no"}),
        (AuthzAnswer(False), {"Allow": False}),
    ],
)
def test_answer_json(answer: AuthzAnswer, expected: dict[str, Any]) -> None:
    """The answer is ``Allow`` plus ``Msg`` only when there is a message."""
    assert answer.to_json() == expected


# ---- the aiohttp application ---------------------------------------------------------------


class Recorder:
    """An authorizer that records what it is asked and answers as told."""

    def __init__(self, answer: AuthzAnswer = ALLOW) -> None:
        self.answer = answer
        self.seen: list[AuthzRequest] = []

    async def __call__(self, request: AuthzRequest) -> AuthzAnswer:
        self.seen.append(request)
        return self.answer


class Exploding:
    """An authorizer that fails with an unexpected exception."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: AuthzRequest) -> AuthzAnswer:
        self.calls += 1
        raise RuntimeError("boom")


async def post(client: Any, path: str, data: bytes) -> tuple[int, dict[str, Any]]:
    response = await client.post(path, data=data)
    return response.status, await response.json()


async def test_activate_implements_authz(aiohttp_client: Any) -> None:
    """``/Plugin.Activate`` answers that the plugin implements authz."""
    client = await aiohttp_client(plugin_app(Recorder(), Recorder()))
    assert await post(client, "/Plugin.Activate", b"") == (200, {"Implements": ["authz"]})


async def test_request_reaches_the_authorizer_decoded(aiohttp_client: Any) -> None:
    """A well-formed AuthZReq is decoded and its fields reach the request authorizer."""
    on_request, on_response = Recorder(), Recorder()
    client = await aiohttp_client(plugin_app(on_request, on_response))
    status, answer = await post(client, "/AuthZPlugin.AuthZReq", authz_json(User="tls-bob"))
    assert (status, answer) == (200, {"Allow": True})
    [seen] = on_request.seen
    assert (seen.user, seen.method, seen.uri, seen.body) == (
        "tls-bob",
        "POST",
        "/v1.43/containers/create?name=train",
        CREATE_BODY,
    )
    assert seen.headers["Content-Type"] == "application/json"
    assert on_response.seen == []


async def test_denial_carries_the_message(aiohttp_client: Any) -> None:
    """The authorizer's refusal and its message are passed to dockerd unchanged."""
    refuse = Recorder(AuthzAnswer(False, "ds01: --privileged is not allowed"))
    client = await aiohttp_client(plugin_app(refuse, Recorder()))
    assert await post(client, "/AuthZPlugin.AuthZReq", authz_json()) == (
        200,
        {"Allow": False, "Msg": "ds01: --privileged is not allowed"},
    )


async def test_response_goes_to_the_response_authorizer(aiohttp_client: Any) -> None:
    """AuthZRes is decoded with its response fields and handed to the response authorizer."""
    on_request, on_response = Recorder(), Recorder()
    client = await aiohttp_client(plugin_app(on_request, on_response))
    raw = authz_json(ResponseStatusCode=201, ResponseBody=b64(b'{"Id":"c1"}'))
    assert await post(client, "/AuthZPlugin.AuthZRes", raw) == (200, {"Allow": True})
    [seen] = on_response.seen
    assert (seen.response_status, seen.response_body) == (201, b'{"Id":"c1"}')
    assert on_request.seen == []


@pytest.mark.parametrize("path", ["/AuthZPlugin.AuthZReq", "/AuthZPlugin.AuthZRes"])
async def test_authorizer_exception_is_a_denial_not_a_500(aiohttp_client: Any, path: str) -> None:
    """An authorizer that raises gives 200 with Allow false and a message saying so."""
    exploding = Exploding()
    client = await aiohttp_client(plugin_app(exploding, exploding))
    status, answer = await post(client, path, authz_json(ResponseStatusCode=200))
    assert status == 200
    assert answer["Allow"] is False
    assert "internal error" in answer["Msg"]
    assert exploding.calls == 1


# AuthZ bodies that do not decode, and the reason each denial gives (both servers answer alike).
GARBAGE = [
    (b"garbage", "not JSON"),
    (b"", "not JSON"),
    (b"[]", "not a JSON object"),
    (authz_json(RequestMethod=...), "no method or URI"),
    (authz_json(RequestBody="***"), "not valid base64"),
    (authz_json(RequestHeaders=[]), "not a map of strings"),
]


@pytest.mark.parametrize(("raw", "why"), GARBAGE)
async def test_garbage_is_a_denial(aiohttp_client: Any, raw: bytes, why: str) -> None:
    """A body that does not decode is denied with the reason, and the authorizer never sees it."""
    on_request = Recorder()
    client = await aiohttp_client(plugin_app(on_request, Recorder()))
    status, answer = await post(client, "/AuthZPlugin.AuthZReq", raw)
    assert status == 200
    assert answer["Allow"] is False
    assert answer["Msg"].startswith("ds01: unreadable AuthZ request (")
    assert why in answer["Msg"]
    assert on_request.seen == []


async def test_oversized_request_is_a_denial_not_a_500(aiohttp_client: Any) -> None:
    """A body bigger than MAX_PLUGIN_REQUEST is denied with 200 and a message, not 413/500."""
    on_request = Recorder()
    client = await aiohttp_client(plugin_app(on_request, Recorder()))
    status, answer = await post(client, "/AuthZPlugin.AuthZReq", b" " * (MAX_PLUGIN_REQUEST + 1))
    assert status == 200
    assert answer == {"Allow": False, "Msg": "ds01: request too large for the AuthZ plugin"}
    assert on_request.seen == []


async def test_request_just_under_the_limit_is_read(aiohttp_client: Any) -> None:
    """A large but allowed body (dockerd forwards up to 1 MiB of request body) is decoded."""
    on_request = Recorder()
    client = await aiohttp_client(plugin_app(on_request, Recorder()))
    big = b'{"Labels":{"x":"' + b"a" * 2**20 + b'"}}'
    status, answer = await post(client, "/AuthZPlugin.AuthZReq", authz_json(RequestBody=b64(big)))
    assert (status, answer) == (200, {"Allow": True})
    assert on_request.seen[0].body == big


async def test_observe_gets_one_duration_per_decision(aiohttp_client: Any) -> None:
    """The latency observer is called once per AuthZ call, denials included, with seconds."""
    durations: list[float] = []
    client = await aiohttp_client(plugin_app(Recorder(), Exploding(), observe=durations.append))
    await post(client, "/AuthZPlugin.AuthZReq", authz_json())
    await post(client, "/AuthZPlugin.AuthZRes", authz_json())
    await post(client, "/AuthZPlugin.AuthZReq", b"garbage")
    assert len(durations) == 3
    assert all(isinstance(d, float) and 0 <= d < 10 for d in durations)
