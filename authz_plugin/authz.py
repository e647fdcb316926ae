"""The Docker AuthZ plugin protocol: ``/Plugin.Activate``, ``/AuthZPlugin.AuthZReq``, ``AuthZRes``.

It never answers 500 and never allows what it cannot read: any failure is a denial whose
message says why (dockerd shows it as "authorization denied by plugin ds01: ...").
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger("ds01.authz")

# dockerd's own AuthZ request bodies stay small: it forwards request bodies up to 1 MiB
# (base64, so ~1.4 MiB) plus headers. Anything far larger is not from dockerd.
MAX_PLUGIN_REQUEST = 8 * 2**20


@dataclass(frozen=True)
class AuthzRequest:
    """One AuthZReq/AuthZRes as dockerd sends it, decoded."""

    user: str
    method: str
    uri: str
    headers: dict[str, str]
    body: bytes | None
    response_status: int | None = None
    response_body: bytes | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    # "TLS" when dockerd took ``user`` from a client certificate (moby's authz middleware);
    # a certificate without a CN gives an empty user, which is no one, never root.
    authn_method: str = ""


@dataclass(frozen=True)
class AuthzAnswer:
    allow: bool
    msg: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Allow": self.allow}
        if self.msg:
            out["Msg"] = self.msg
        return out


# An authorizer answers at once when it can (most calls need no lookup), else an awaitable:
# an answer given at once costs the plugin no task and no turn of the event loop.
Authorizer = Callable[[AuthzRequest], AuthzAnswer | Awaitable[AuthzAnswer]]

# Nearly every answer: encoded once.
ALLOW = AuthzAnswer(True)
_ALLOW_BODY = json.dumps(ALLOW.to_json()).encode()


class BadPluginRequest(ValueError):
    pass


def _b64(value: Any, name: str) -> bytes | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise BadPluginRequest(f"{name} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadPluginRequest(f"{name} is not valid base64") from None


def _headers(value: Any, name: str) -> dict[str, str]:
    if value is None or value == "":
        return {}
    if type(value) is not dict:
        raise BadPluginRequest(f"{name} is not a map of strings")
    for key, text in value.items():
        if type(key) is not str or type(text) is not str:
            raise BadPluginRequest(f"{name} is not a map of strings")
    return value


def parse_authz(raw: bytes, response: bool, read_answer: bool = True) -> AuthzRequest:
    """Decode dockerd's AuthZ JSON, refusing anything malformed.

    ``read_answer=False`` leaves an AuthZRes's answer fields (``ResponseStatusCode``,
    ``ResponseHeaders`` and ``ResponseBody``, dockerd's whole answer in base64) undecoded and
    unchecked, for an authorizer that never reads them: they stay None and empty, so nothing
    can be decided on bytes that were not checked.
    """
    try:
        # dockerd's envelope, parsed by orjson (every call pays for it; the policy reads the
        # request body inside with its own strict parser). orjson is the stricter of the two:
        # invalid UTF-8, lone surrogates and NaN are refused.
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadPluginRequest("the AuthZ request is not JSON") from None
    if not isinstance(data, dict):
        raise BadPluginRequest("the AuthZ request is not a JSON object")
    # moby's authorization.Request names it "RequestUri" (json tag); accept both spellings.
    method, uri = data.get("RequestMethod"), data.get("RequestUri", data.get("RequestURI"))
    if not isinstance(method, str) or not isinstance(uri, str) or not method or not uri:
        raise BadPluginRequest("the AuthZ request has no method or URI")
    user = data.get("User") or ""
    if not isinstance(user, str):
        raise BadPluginRequest("User is not a string")
    authn_method = data.get("UserAuthNMethod") or ""
    if not isinstance(authn_method, str):
        raise BadPluginRequest("UserAuthNMethod is not a string")
    answer = response and read_answer
    status = data.get("ResponseStatusCode") if answer else None
    if status is not None and not isinstance(status, int):
        raise BadPluginRequest("ResponseStatusCode is not an integer")
    return AuthzRequest(
        user=user,
        authn_method=authn_method,
        method=method,
        uri=uri,
        headers=_headers(data.get("RequestHeaders"), "RequestHeaders"),
        body=_b64(data.get("RequestBody"), "RequestBody"),
        response_status=status,
        response_body=_b64(data.get("ResponseBody"), "ResponseBody") if answer else None,
        response_headers=_headers(data.get("ResponseHeaders"), "ResponseHeaders") if answer else {},
    )


ACTIVATE_BODY = json.dumps({"Implements": ["authz"]}).encode()
TOO_LARGE = AuthzAnswer(False, "ds01: request too large for the AuthZ plugin")
INTERNAL_ERROR = AuthzAnswer(False, "ds01: internal error while deciding; denied (see ds01d log)")


def answer_body(answer: AuthzAnswer) -> bytes:
    """The JSON dockerd reads, for one answer."""
    if answer is ALLOW or answer == ALLOW:
        return _ALLOW_BODY
    return json.dumps(answer.to_json()).encode()


def answer_now(
    decide: Authorizer, raw: bytes, response: bool, read_answer: bool = True
) -> AuthzAnswer | Awaitable[AuthzAnswer]:
    """Decode one AuthZ call and decide it: the answer, or an awaitable one when ``decide``
    must look something up. Every failure is a denial that says why."""
    try:
        result = decide(parse_authz(raw, response, read_answer))
    except BadPluginRequest as exc:
        return AuthzAnswer(False, f"ds01: unreadable AuthZ request ({exc})")
    except Exception:
        log.exception("AuthZ handler failed; denying")
        return INTERNAL_ERROR
    if isinstance(result, AuthzAnswer):
        return result
    return _settle(result)


async def _settle(pending: Awaitable[AuthzAnswer]) -> AuthzAnswer:
    try:
        return await pending
    except Exception:
        log.exception("AuthZ handler failed; denying")
        return INTERNAL_ERROR


async def settled(answer: AuthzAnswer | Awaitable[AuthzAnswer]) -> AuthzAnswer:
    """An authorizer's answer, awaited if it was not given at once."""
    return answer if isinstance(answer, AuthzAnswer) else await answer


async def answer_call(
    decide: Authorizer, raw: bytes, response: bool, read_answer: bool = True
) -> AuthzAnswer:
    """``answer_now``, awaited."""
    return await settled(answer_now(decide, raw, response, read_answer))


def plugin_app(
    on_request: Authorizer,
    on_response: Authorizer,
    observe: Callable[[float], None] | None = None,
) -> web.Application:
    """The protocol as an aiohttp application (tests and tools; ds01d serves ``server.py``)."""
    app = web.Application(client_max_size=MAX_PLUGIN_REQUEST)

    async def activate(_: web.Request) -> web.Response:
        return web.Response(body=ACTIVATE_BODY, content_type="application/json")

    def endpoint(
        decide: Authorizer, response: bool
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            started = time.perf_counter()
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                answer = TOO_LARGE
            except Exception:
                log.exception("AuthZ request unreadable; denying")
                answer = AuthzAnswer(False, "ds01: unreadable AuthZ request")
            else:
                answer = await answer_call(decide, raw, response)
            if observe is not None:
                observe(time.perf_counter() - started)
            return web.Response(body=answer_body(answer), content_type="application/json")

        return handle

    app.router.add_post("/Plugin.Activate", activate)
    app.router.add_post("/AuthZPlugin.AuthZReq", endpoint(on_request, False))
    app.router.add_post("/AuthZPlugin.AuthZRes", endpoint(on_response, True))
    return app
