"""``decide(request, identity, limits, state) -> Decision``: every security decision of DS01.

Both front doors call this: the gateway before forwarding, the AuthZ plugin for what
actually reaches dockerd. Pure: no Docker, no files, no clock.
"""

from __future__ import annotations

import copy
import functools
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from formats.labels import LABEL_DEVICES, LABEL_USER

from . import builds as build_rules
from . import create as create_rules
from . import facts as needs
from . import images as image_rules
from . import networks as network_rules
from .decision import Decision, Denied, allow, deny, not_found
from .facts import (  # noqa: F401  (re-exported: the body shapes are part of the engine's API)
    BODY_SHAPES,
    NO_FACTS,
    OPTIONAL_BODY_SHAPES,
    FactRequests,
    Needs,
    ParsedRequest,
    bad_body,
    parse_body,
    parse_request,
)
from .identity import Identity
from .limits import Limits
from .mounts import container_bind_sources
from .resources import check_update
from .routes import Route, RouteError, parse_route
from .run_as import checked_user, runs_as_user
from .state import ObjectFacts, Request, State
from .strict_json import BodyError

# Readable by everyone, acting on no user's object.
_OPEN = {
    "/_ping",
    "/version",
    "/info",
    "/auth",
    "/images/json",  # a non-admin's list is filtered on dockerd's answer (images.filter_list)
    "/images/search",
    "/distribution/{name*}/json",
    "/networks",
    "/session",
    "/grpc",
    "/build/cancel",
}
# Lists a non-admin sees only their own part of: the owner filter is added to the query.
_OWNER_FILTERED = {"/containers/json", "/events", "/volumes", "/containers/prune", "/volumes/prune"}
# Cluster, plugin and host-wide maintenance: admins only.
_ADMIN_ONLY_PREFIXES = (
    "/plugins",
    "/swarm",
    "/services",
    "/nodes",
    "/secrets",
    "/configs",
    "/tasks",
)
_ADMIN_ONLY = {"/system/df", "/images/prune", "/build/prune", "/networks/prune"}

_ADMIN_FIX = "ask an admin of this server"

# Reads whose answer is the object itself, owner label included. The gateway may forward them
# without looking the object up first and decide on dockerd's answer instead: one round trip
# fewer, and the owner checked is that of the very object returned.
ANSWER_NAMES_TARGET = frozenset({("GET", "/containers/{id}/json"), ("GET", "/volumes/{name}")})


def decide(
    request: Request | ParsedRequest, identity: Identity, limits: Limits, state: State
) -> Decision:
    """The decision for one request. Never raises: anything unexpected is a denial.

    Given a ``ParsedRequest`` it decides on that parse (the edge parses each request once);
    given a raw ``Request`` it parses it first.
    """
    parsed = request if isinstance(request, ParsedRequest) else parse_request(request)
    try:
        if parsed.route is None:
            return parsed.route_error or deny("bad_request", "unroutable request", "", 400)
        decision = _decide(parsed, identity, limits, state)
        return _pin_target(parsed.route, decision, state) if decision.allowed else decision
    except RouteError as exc:
        return deny("bad_request", str(exc), "use the docker CLI or an SDK, unmodified", 400)
    except BodyError as exc:
        return bad_body(exc)
    except Denied as exc:
        return exc.decision
    except Exception as exc:
        refusal = deny(
            "internal",
            f"DS01 could not decide this request ({type(exc).__name__})",
            "report this to an admin; nothing was changed",
            403,
        )
        # The cause stays in the log and the audit line; the user sees only the refusal.
        return replace(refusal, detail="".join(traceback.format_exception(exc)).strip())


# Routes whose {id} dockerd resolves by name or ID prefix: forwarded with the full ID checked.
_PINNED_PREFIXES = ("/containers/{id}", "/exec/{id}", "/networks/{id}")


def _pin_target(route: Route, decision: Decision, state: State) -> Decision:
    """Name the object that was checked by its full ID, so that dockerd cannot resolve the
    name or prefix again to another object (a rename loop between check and use)."""
    target = state.target
    if target is None or not target.id:
        return decision
    ref = route.params.get("id")
    if ref is not None and ref != target.id and route.endpoint.startswith(_PINNED_PREFIXES):
        return replace(decision, params={"id": target.id})
    if route.endpoint == "/commit" and route.q("container") not in ("", target.id):
        query = {k: list(v) for k, v in (decision.query or route.query).items()}
        query["container"] = [target.id]
        return replace(decision, query=query)
    return decision


def route_of(request: Request) -> Route | None:
    try:
        return parse_route(request.method, request.target)
    except RouteError:
        return None


@functools.lru_cache(maxsize=4096)
def endpoint_of(method: str, target: str) -> str:
    """The route template a request names (``unroutable`` if none), for metric labels.

    Cached: the plugin labels both phases of every call, and most calls repeat a few
    targets (``/_ping``, lists); a template is a plain string, safe to share.
    """
    route = route_of(Request(method, target))
    return route.endpoint if route is not None else "unroutable"


def _decide(parsed: ParsedRequest, identity: Identity, limits: Limits, state: State) -> Decision:
    route, request = parsed.route, parsed.request
    assert route is not None
    _check_framing(request, route)
    if identity.is_direct:
        if limits.direct_access == "deny":
            return deny(
                "direct_access",
                "direct access to dockerd is disabled by the DS01 policy",
                "use the DS01 gateway socket (/var/run/docker.sock)",
            )
        return allow(audited=True)
    if not limits.known and limits.unknown_users == "deny":
        return deny(
            "unknown_user",
            f"{identity.user} is not in the DS01 policy",
            "ask an admin to add you to a group in /etc/ds01/policy.yaml",
        )
    if parsed.body_error is not None:
        raise Denied(parsed.body_error)
    # Handlers rewrite the body in place: work on a copy, so the parse stays reusable.
    body = copy.deepcopy(parsed.body) if parsed.body is not None else None
    endpoint = route.endpoint
    if endpoint.startswith(_ADMIN_ONLY_PREFIXES) or endpoint in _ADMIN_ONLY:
        if limits.is_admin:
            return allow(audited=True)
        # A read answers 404 so that `docker inspect NAME`, which tries every object type in
        # turn (plugins too), reports the name as unknown instead of stopping at this refusal.
        status = 404 if route.method in ("GET", "HEAD") else 403
        return deny(
            "admin_only", f"{route.method} {route.path} is for admins only", _ADMIN_FIX, status
        )
    rule = _rule_for(endpoint)
    if rule is not None:
        return rule.handler(route, body, identity, limits, state)
    if endpoint in _OPEN:
        return allow()
    if endpoint in _OWNER_FILTERED:
        return _owner_filtered(route, identity, limits)
    return deny(
        "unknown_endpoint", f"{route.method} {route.path} is not governed by DS01", _ADMIN_FIX
    )


def _check_framing(request: Request, route: Route) -> None:
    if request.header("Content-Length") is not None and request.header("Transfer-Encoding"):
        raise Denied(
            deny(
                "bad_request",
                "a request with both Content-Length and Transfer-Encoding",
                "send one framing header",
                400,
            )
        )
    media = (request.header("Content-Type") or "").split(";", 1)[0].strip().lower()
    if media in FORM_MEDIA_TYPES:
        # dockerd reads such a body into the same form as the query (body first): a second
        # query that DS01 would not have seen.
        raise Denied(
            deny(
                "form_body",
                f"a {media} body is not accepted (dockerd would read it as query parameters)",
                "send parameters in the query string and JSON bodies as application/json",
                400,
            )
        )
    length = (request.header("Content-Length") or "0").strip()
    has_body = bool(request.header("Transfer-Encoding")) or length != "0" or bool(request.body)
    if has_body and not _takes_body(route):
        # API < 1.24 let a start body carry a HostConfig; no other such route reads a body.
        raise Denied(
            deny(
                "bad_body",
                f"{route.method} {route.endpoint} takes no request body",
                "send the request without a body, as the docker CLI does",
                400,
            )
        )


# What dockerd would parse as form fields (Go's ParseForm and ParseMultipartForm).
FORM_MEDIA_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
# Bodies dockerd reads besides the JSON ones: build contexts, image tars, archives, auth,
# a commit's image config, and cluster administration (admins only).
_OTHER_BODIES = frozenset(
    {
        "/build",
        "/images/load",
        "/images/create",
        "/containers/{id}/archive",
        "/auth",
        "/commit",
        "/volumes/{name}",
    }
)
_ADMIN_BODY_PREFIXES = ("/plugins", "/swarm", "/services", "/nodes", "/secrets", "/configs")


def _takes_body(route: Route) -> bool:
    endpoint = route.endpoint
    return (
        needs.takes_json_body(route)
        or endpoint in _OTHER_BODIES
        or endpoint.startswith(_ADMIN_BODY_PREFIXES)
    )


def owner_filter_query(route: Route, user: str) -> dict[str, list[str]]:
    """The route's query with ``label=ds01.user=<user>`` added to its ``filters``."""
    return _with_filters(route, _owner_filters(route, user))


def _with_filters(route: Route, filters: dict[str, Any]) -> dict[str, list[str]]:
    query = {k: list(v) for k, v in route.query.items()}
    query["filters"] = [json.dumps(filters, separators=(",", ":"))]
    return query


def _owner_filters(route: Route, user: str) -> dict[str, Any]:
    """The route's ``filters``, parsed, with ``label=ds01.user=<user>`` added."""
    raw = route.q("filters")
    try:
        filters = json.loads(raw) if raw else {}
    except ValueError:
        raise Denied(
            deny(
                "bad_request",
                "the filters query parameter is not JSON",
                "pass filters as the docker CLI does",
                400,
            )
        ) from None
    if not isinstance(filters, dict):
        raise Denied(
            deny("bad_request", "the filters query parameter is not a JSON object", "", 400)
        )
    owner = f"{LABEL_USER}={user}"
    # dockerd reads either {"k": ["v"]} or {"k": {"v": true}}, not a mix: answer in kind.
    map_form = any(isinstance(v, dict) for v in filters.values())
    labels = filters.get("label", {} if map_form else [])
    if map_form and isinstance(labels, dict):
        filters["label"] = {**labels, owner: True}
    elif not map_form and isinstance(labels, list):
        filters["label"] = [*labels, owner] if owner not in labels else labels
    else:
        raise Denied(deny("bad_request", "the label filter is neither a list nor a map", "", 400))
    return filters


def _owner_filtered(route: Route, identity: Identity, limits: Limits) -> Decision:
    if limits.is_admin:
        return allow()
    filters = _owner_filters(route, identity.user)
    changes: tuple[str, ...] = (f"filters label={LABEL_USER}={identity.user}",)
    if route.endpoint == "/events":
        # Image events carry the image's labels, which anyone may have written (a base image
        # labelled with a user's name would show them others' tags): containers' events only.
        asked = filters.get("type")
        if asked and "container" not in asked:
            return deny(
                "events_containers_only",
                "docker events shows you the events of your containers only",
                "drop --filter type=..., or use --filter type=container",
            )
        # in the form dockerd was given the owner label in (it reads one form, not a mix)
        filters["type"] = (
            {"container": True} if isinstance(filters["label"], dict) else ["container"]
        )
        changes = (*changes, "filters type=container")
    return allow(query=_with_filters(route, filters), changes=changes)


def _owned_object(
    route: Route, body: Any, identity: Identity, limits: Limits, state: State
) -> Decision:
    kind = (
        "volume"
        if route.endpoint.startswith("/volumes")
        else ("exec instance" if route.endpoint.startswith("/exec") else "container")
    )
    ref = route.params.get("id") or route.params.get("name") or ""
    target = state.target
    if target is None:
        if state.target_in_answer and (route.method, route.endpoint) in ANSWER_NAMES_TARGET:
            return allow(decide_on_answer=True)
        return not_found(kind, ref)
    if target.owner != identity.user:
        if not limits.is_admin:
            return not_found(kind, ref)
        return allow(
            audited=True, changes=(f"admin action on {target.owner or 'unowned'}'s {kind}",)
        )
    return allow()


def _container_create(
    route: Route, body: Any, identity: Identity, limits: Limits, state: State
) -> Decision:
    return create_rules.decide_create(body, identity, limits, state)


def _container_update(
    route: Route, body: Any, identity: Identity, limits: Limits, state: State
) -> Decision:
    owned = _owned_object(route, body, identity, limits, state)
    if not owned.allowed or limits.is_admin:
        return owned
    for key in ("CgroupParent", "Devices", "DeviceCgroupRules", "DeviceRequests"):
        if body.get(key):
            return deny(
                "update_forbidden",
                f"docker update cannot change {key}",
                "recreate the container with the settings you need",
            )
    check_update(body, limits)
    restart = (body.get("RestartPolicy") or {}).get("Name") or "no"
    if (
        state.target is not None
        and state.target.labels.get(LABEL_DEVICES)
        and restart not in ("", "no")
    ):
        return deny(
            "gpu_restart_policy",
            "restart policies are not allowed on GPU containers",
            "keep --restart no",
        )
    if state.target is not None and restart not in ("", "no") and _mounts_host(state.target):
        return deny(
            "restart_with_binds",
            "restart policies are not allowed on containers that mount host folders: dockerd "
            "would restart them without DS01 re-checking those folders",
            "keep --restart no",
        )
    return allow()


def _mounts_host(target: ObjectFacts) -> bool:
    return bool(container_bind_sources(target.details))


def _exec_create(
    route: Route, body: Any, identity: Identity, limits: Limits, state: State
) -> Decision:
    owned = _owned_object(route, body, identity, limits, state)
    if not owned.allowed:
        return owned
    if body.get("Privileged") and not limits.allows("privileged"):
        return deny(
            "exec_privileged",
            f"docker exec --privileged is not allowed for {create_rules.who(limits)}",
            "run docker exec without --privileged",
        )
    # NVIDIA_* in an exec's env grants nothing: devices are fixed when the container starts
    # (the Dev Containers CLI re-sends the container's own env, NVIDIA_VISIBLE_DEVICES too).
    if not runs_as_user(identity, limits):
        return owned
    body["User"] = checked_user(body.get("User") or "", identity, limits, "docker exec")
    return allow(body=body, changes=(f"User={body['User']} (run_as: user)",))


def _archive(route: Route, body: Any, identity: Identity, limits: Limits, state: State) -> Decision:
    """``docker cp``: dockerd copies as root, whatever the container's user."""
    owned = _owned_object(route, body, identity, limits, state)
    if not owned.allowed or limits.is_admin or state.target is None:
        return owned
    if _mounts_host(state.target):
        return deny(
            "archive_binds",
            "docker cp is not allowed on containers that mount host folders: dockerd copies "
            "as root and would read or write your folders with root's rights",
            "copy through the mounted folder on the host instead (e.g. cp FILE ~/project/)",
        )
    return owned


def _volume_create(
    route: Route, body: Any, identity: Identity, limits: Limits, state: State
) -> Decision:
    if not limits.is_admin:
        create_rules._check_volume_driver(body.get("Driver") or "", body.get("DriverOpts") or {})
        existing = state.target
        if existing is not None and existing.owner != identity.user:
            return deny(
                "volume_exists",
                f"a volume named {body.get('Name')} already exists",
                "choose another volume name",
            )
    body["Labels"] = create_rules.owned_labels(body.get("Labels"), identity.user)
    return allow(body=body, changes=(f"Labels {LABEL_USER}={identity.user}",))


def _network_create(
    route: Route, body: Any, identity: Identity, limits: Limits, state: State
) -> Decision:
    if not limits.is_admin:
        if (body.get("Driver") or "bridge") != "bridge":
            return deny(
                "network_driver",
                f"network driver {body.get('Driver')} is not allowed",
                "create bridge networks only",
            )
        if body.get("Ingress") or body.get("ConfigFrom") or body.get("Options"):
            return deny(
                "network_options",
                "network options are not allowed",
                "create a plain bridge network",
            )
        if body.get("ConfigOnly") or (body.get("Scope") or "local") != "local":
            return deny(
                "network_options",
                "config-only and swarm-scoped networks are not allowed",
                "create a plain bridge network",
            )
        if ((body.get("IPAM") or {}).get("Config") or []) or (body.get("IPAM") or {}).get(
            "Options"
        ):
            # A chosen subnet can shadow the lab's own networks in the host's routing table.
            return deny(
                "network_subnet",
                "--subnet, --ip-range, --gateway and --aux-address are chosen by dockerd",
                "create the network without them",
            )
        if limits.max_networks is not None and state.user_networks >= limits.max_networks:
            return deny(
                "max_networks",
                f"you already have {state.user_networks} networks, the limit for "
                f"{create_rules.who(limits)} is {limits.max_networks} (the server's network "
                "address pools are shared by everyone)",
                "remove networks you no longer need (docker network ls; docker network rm NAME)",
            )
    body["Labels"] = create_rules.owned_labels(body.get("Labels"), identity.user)
    return allow(body=body, changes=(f"Labels {LABEL_USER}={identity.user}",))


def _network_object(
    route: Route, body: Any, identity: Identity, limits: Limits, state: State
) -> Decision:
    target = state.target
    ref = route.params.get("id", "")
    if limits.is_admin:
        return allow(audited=target is not None and target.owner != identity.user)
    missing = replace(network_rules.network_missing(ref), status=404)
    if target is None:
        return missing
    predefined = network_rules.is_predefined(target.name, target.labels)
    if target.owner != identity.user and not predefined:
        return missing
    if route.method == "GET":
        return allow()  # a predefined network's answer is screened (handler.screen_networks)
    if route.method == "DELETE" and predefined:
        return deny(
            "network_predefined",
            f"{target.name} is a pre-defined network and cannot be removed",
            "remove only networks you created",
        )
    if body is not None:
        container = state.related.get(f"container:{body.get('Container')}")
        if container is None or container.owner != identity.user:
            return not_found("container", str(body.get("Container")))
        before = copy.deepcopy(body)
        problem = network_rules.check_connect_endpoint(
            body.get("EndpointConfig"), target, identity, state
        )
        if problem is not None:
            return problem
        # Named by the full IDs that were checked: dockerd would resolve a name again.
        body["Container"] = container.id or body["Container"]
        if body != before:
            return allow(body=body, changes=(f"Container={body['Container']}",))
    return allow()


def _build(route: Route, body: Any, identity: Identity, limits: Limits, state: State) -> Decision:
    return build_rules.decide_build(route, identity, limits, state)


def _session(route: Route, body: Any, identity: Identity, limits: Limits, state: State) -> Decision:
    # The client's own BuildKit session (file sync, its registry auth): dockerd calls back
    # into the caller, who exposes only what it already has. The build it serves is governed
    # on POST /build?version=2.
    return allow()


def _grpc(route: Route, body: Any, identity: Identity, limits: Limits, state: State) -> Decision:
    if limits.is_admin:
        return allow(audited=True)
    # BuildKit's control API takes entitlements (network.host, security.insecure) from the
    # client; DS01 cannot read that gRPC stream, so only admins get it.
    return deny(
        "buildkit_grpc",
        "BuildKit's direct API (docker buildx with the docker driver, POST /grpc) is for "
        "admins only",
        "use docker build with DOCKER_BUILDKIT=1 (or DOCKER_BUILDKIT=0) instead",
    )


def _commit(route: Route, body: Any, identity: Identity, limits: Limits, state: State) -> Decision:
    if limits.is_admin:
        return allow()
    target = state.target
    if target is None or target.owner != identity.user:
        return not_found("container", route.q("container"))
    return allow()


def _images(route: Route, body: Any, identity: Identity, limits: Limits, state: State) -> Decision:
    return image_rules.decide_image_route(route, identity, limits, state)


def _commit_with_tags(
    route: Route, body: Any, identity: Identity, limits: Limits, state: State
) -> Decision:
    """A commit: the container must be the user's, and so must the tag it writes."""
    decision = _commit(route, body, identity, limits, state)
    if not decision.allowed:
        return decision
    return image_rules.check_route_writes(route, identity, limits, state) or decision


Handler = Callable[[Route, Any, Identity, Limits, State], Decision]


@dataclass(frozen=True)
class Rule:
    """A policy handler and the facts it needs, declared side by side so they cannot drift."""

    handler: Handler
    needs: Needs = needs.needs_nothing


_RULES: dict[str, Rule] = {
    "/containers/create": Rule(_container_create, needs.needs_container_create),
    "/containers/{id}/update": Rule(_container_update, needs.needs_container),
    "/containers/{id}/exec": Rule(_exec_create, needs.needs_container),
    "/volumes/create": Rule(_volume_create, needs.needs_volume_create),
    "/networks/create": Rule(_network_create, needs.needs_network_count),
    "/networks/{id}/connect": Rule(_network_object, needs.needs_network),
    "/networks/{id}/disconnect": Rule(_network_object, needs.needs_network),
    "/networks/{id}": Rule(_network_object, needs.needs_network),
    "/containers/{id}/archive": Rule(_archive, needs.needs_container),
    "/build": Rule(_build, needs.needs_build),
    "/session": Rule(_session),
    "/grpc": Rule(_grpc),
    "/commit": Rule(_commit_with_tags, needs.needs_commit),
    # Images: every tag has an owner (policy/images.py).
    **{
        endpoint: Rule(_images, needs.needs_images)
        for endpoint in (
            "/images/create",
            "/images/load",
            "/images/get",
            "/images/{name*}/get",
            "/images/{name*}/history",
            "/images/{name*}/json",
            "/images/{name*}/push",
            "/images/{name*}/tag",
            "/images/{name*}",
        )
    },
}
# Every other route on a user's own object: the owner check, on the object the route names.
_OWNED_RULES: tuple[tuple[str, Rule], ...] = (
    ("/containers/{id}", Rule(_owned_object, needs.needs_container)),
    ("/exec/{id}", Rule(_owned_object, needs.needs_exec)),
    ("/volumes/{name}", Rule(_owned_object, needs.needs_volume)),
)


def _rule_for(endpoint: str) -> Rule | None:
    rule = _RULES.get(endpoint)
    if rule is not None:
        return rule
    return next((r for prefix, r in _OWNED_RULES if endpoint.startswith(prefix)), None)


def needed_facts(parsed: ParsedRequest, identity: Identity) -> FactRequests:
    """What the edge must look up before ``decide``: the facts the route's rule declares.

    Nothing for direct access (root is not screened) or a request the engine will refuse
    unread; a self-describing read is decided on dockerd's answer instead.
    """
    route = parsed.route
    if identity.is_direct or route is None or parsed.body_error is not None:
        return NO_FACTS
    if (route.method, route.endpoint) in ANSWER_NAMES_TARGET:
        return FactRequests(target_in_answer=True)
    rule = _rule_for(route.endpoint)
    return rule.needs(parsed) if rule is not None else NO_FACTS
