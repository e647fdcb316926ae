"""A request parsed once, and the facts its decision needs, as pure data.

The I/O edge parses each request once into a ``ParsedRequest`` (route, strictly parsed body,
headers) that every step reuses: the gateway handler, the service, the engine and the
plugin's re-check. Each policy rule declares what it needs to know from dockerd as a
``FactRequests`` value (``engine.needed_facts``); the edge fetches exactly those objects, each
once, builds the ``State`` and the engine decides once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from . import builds as build_rules
from . import create as create_rules
from . import images as image_rules
from . import networks as network_rules
from .decision import Decision, Denied, deny
from .routes import Route, RouteError, parse_route
from .state import Request
from .strict_json import (
    CONTAINER_UPDATE,
    EXEC_CREATE,
    EXEC_START,
    NETWORK_CONNECT,
    NETWORK_CREATE,
    VOLUME_CREATE,
    BodyError,
    Shape,
    check_shape,
    loads_strict,
)

# Endpoints whose JSON body carries the decision: no body means no decision.
BODY_SHAPES: dict[str, Shape] = {
    "/containers/create": create_rules.SHAPE,
    "/containers/{id}/update": CONTAINER_UPDATE,
    "/containers/{id}/exec": EXEC_CREATE,
    "/volumes/create": VOLUME_CREATE,
    "/networks/create": NETWORK_CREATE,
    "/networks/{id}/connect": NETWORK_CONNECT,
    "/networks/{id}/disconnect": NETWORK_CONNECT,
}
# JSON bodies that are optional (the CLI sends one, older clients none).
OPTIONAL_BODY_SHAPES: dict[str, Shape] = {"/exec/{id}/start": EXEC_START}


def takes_json_body(route: Route) -> bool:
    return route.endpoint in BODY_SHAPES or route.endpoint in OPTIONAL_BODY_SHAPES


@dataclass(frozen=True)
class ParsedRequest:
    """One request as every step sees it. A parse failure is kept as the denial it causes,
    raised by the engine at the point where the old order of checks would have met it."""

    request: Request
    route: Route | None
    body: Any = None  # the strictly parsed JSON body (None: the endpoint takes none)
    route_error: Decision | None = None
    body_error: Decision | None = None

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def endpoint(self) -> str:
        return self.route.endpoint if self.route is not None else ""


def parse_body(route: Route, request: Request) -> dict[str, Any] | None:
    """The strictly parsed JSON body for a body-carrying endpoint (None when it has none)."""
    shape = BODY_SHAPES.get(route.endpoint)
    optional = shape is None
    shape = shape or OPTIONAL_BODY_SHAPES.get(route.endpoint)
    if shape is None:
        return None
    if not request.body:
        if optional:
            return None
        raise Denied(
            deny(
                "no_body",
                f"{route.method} {route.endpoint} arrived without its JSON body (bodies over 1 MiB, "
                "chunked, or not sent as application/json are not shown to DS01)",
                "send the request with Content-Type: application/json and a body under 1 MiB",
                400,
            )
        )
    body = loads_strict(request.body)
    check_shape(body, shape)
    return body


def bad_body(exc: BodyError) -> Decision:
    return deny(
        "bad_body", f"refused an unclear request body: {exc}", "send plain Docker API JSON", 400
    )


def parse_request(request: Request) -> ParsedRequest:
    """Route and body, parsed once. Never raises: failures become the denial they cause."""
    try:
        route = parse_route(request.method, request.target)
    except RouteError as exc:
        refusal = deny("bad_request", str(exc), "use the docker CLI or an SDK, unmodified", 400)
        return ParsedRequest(request, None, route_error=refusal)
    try:
        return ParsedRequest(request, route, parse_body(route, request))
    except Denied as exc:
        return ParsedRequest(request, route, body_error=exc.decision)
    except BodyError as exc:
        return ParsedRequest(request, route, body_error=bad_body(exc))
    except Exception as exc:  # fail closed, whatever the parser met
        refusal = deny(
            "internal",
            f"DS01 could not decide this request ({type(exc).__name__})",
            "report this to an admin; nothing was changed",
        )
        return ParsedRequest(request, route, body_error=with_detail(refusal, exc))


def with_detail(decision: Decision, exc: BaseException) -> Decision:
    """The decision with the cause kept for the log (never shown to the user)."""
    return replace(decision, detail=f"{type(exc).__name__}: {exc}")


# ---- what a decision needs to know -----------------------------------------------------------


class ObjectRef(NamedTuple):
    kind: str  # "container", "exec", "volume", "network"
    ref: str  # the name or ID as the request gives it


def related_key(ref: ObjectRef) -> str:
    """Where a related object's facts sit in ``State.related`` (``container:<ref>``...)."""
    return f"{ref.kind}:{ref.ref}"


@dataclass(frozen=True)
class FactRequests:
    """The objects and counts one decision needs from dockerd and the image record."""

    target: ObjectRef | None = None  # the object the route names
    target_in_answer: bool = False  # decided on dockerd's answer instead (no lookup)
    related: tuple[ObjectRef, ...] = ()  # objects the body or query names
    images: tuple[str, ...] = ()  # image references to resolve
    tags: tuple[str, ...] = ()  # tags whose existence matters
    image_owners: bool = False  # the image ownership record
    user_containers: bool = False  # how many containers the user has (max_containers)
    user_networks: bool = False  # how many networks the user has (max_networks)


NO_FACTS = FactRequests()
Needs = Callable[[ParsedRequest], FactRequests]


def _param(parsed: ParsedRequest, *names: str) -> str:
    params: Mapping[str, str] = parsed.route.params if parsed.route is not None else {}
    return next((params[n] for n in names if n in params), "")


def needs_nothing(parsed: ParsedRequest) -> FactRequests:
    return NO_FACTS


def needs_container(parsed: ParsedRequest) -> FactRequests:
    return FactRequests(target=ObjectRef("container", _param(parsed, "id")))


def needs_exec(parsed: ParsedRequest) -> FactRequests:
    return FactRequests(target=ObjectRef("exec", _param(parsed, "id")))


def needs_volume(parsed: ParsedRequest) -> FactRequests:
    return FactRequests(target=ObjectRef("volume", _param(parsed, "name")))


def needs_network(parsed: ParsedRequest) -> FactRequests:
    """A network and, for connect/disconnect, the containers the body names (the one
    connected, and those its endpoint links to)."""
    body = parsed.body if isinstance(parsed.body, dict) else {}
    names = [body.get("Container")]
    with contextlib.suppress(Denied):  # malformed links are refused by the rule itself
        names += network_rules.endpoint_links(body.get("EndpointConfig"))
    related = tuple(
        dict.fromkeys(ObjectRef("container", n) for n in names if isinstance(n, str) and n)
    )
    return FactRequests(target=ObjectRef("network", _param(parsed, "id")), related=related)


def needs_network_count(parsed: ParsedRequest) -> FactRequests:
    return FactRequests(user_networks=True)


def needs_volume_create(parsed: ParsedRequest) -> FactRequests:
    name = (parsed.body or {}).get("Name")
    return FactRequests(target=ObjectRef("volume", name)) if name else NO_FACTS


def _image_needs(parsed: ParsedRequest) -> FactRequests:
    assert parsed.route is not None
    body = parsed.body if isinstance(parsed.body, dict) else None
    refs, tags = image_rules.lookups(parsed.route, body)
    return FactRequests(images=tuple(refs), tags=tuple(tags), image_owners=True)


def needs_images(parsed: ParsedRequest) -> FactRequests:
    return _image_needs(parsed)


def needs_commit(parsed: ParsedRequest) -> FactRequests:
    assert parsed.route is not None
    ref = parsed.route.q("container")
    target = ObjectRef("container", ref) if ref else None
    images = _image_needs(parsed)
    return FactRequests(target=target, tags=images.tags, images=images.images, image_owners=True)


def needs_build(parsed: ParsedRequest) -> FactRequests:
    assert parsed.route is not None
    network = build_rules.referenced_network(parsed.route)
    images = _image_needs(parsed)
    related = (ObjectRef("network", network),) if network else ()
    return FactRequests(related=related, images=images.images, tags=images.tags, image_owners=True)


def needs_container_create(parsed: ParsedRequest) -> FactRequests:
    """The containers, volumes and networks a create names, its image, the user's count."""
    body = parsed.body
    if not isinstance(body, dict):
        return NO_FACTS
    related = [ObjectRef("container", ref) for ref in create_rules.referenced_containers(body)]
    related += [ObjectRef("volume", name) for name in create_rules.referenced_volumes(body)]
    related += [ObjectRef("network", ref) for ref in network_rules.referenced_networks(body)]
    images = _image_needs(parsed)
    return FactRequests(
        related=tuple(dict.fromkeys(related)),  # each object once
        images=images.images,
        tags=images.tags,
        image_owners=True,
        user_containers=True,
    )
