"""Networks are owned: which network a user may name, and what of a network list they see.

A user may attach containers and builds only to the built-in networks (``bridge``, ``none``,
``default``; ``host`` where the policy allows host namespaces) or to networks they created
(``ds01.user`` label). Any other network answers exactly as a missing one does. Lists and
inspects show a non-admin their own networks and the built-in ones, the latter without other
users' containers.

Pure: the I/O edge looks up the networks :func:`referenced_networks` names and passes their
facts in ``State.related`` under ``network:<reference>``.
"""

from __future__ import annotations

import re
from typing import Any

from formats.labels import LABEL_USER

from .decision import Decision, Denied, deny, not_found
from .identity import Identity
from .limits import Limits
from .state import State

# Network modes every user may name; "default" is bridge on Linux.
BUILTIN_NETWORKS = frozenset({"default", "bridge", "none"})
# The networks dockerd creates itself (no owner label); host only with host namespaces.
PREDEFINED_NETWORKS = frozenset({"bridge", "host", "none"})
HOST = "host"
_CONFLICT_ID = re.compile(r'container "?[0-9a-f]{64}"?')


def network_missing(ref: str) -> Decision:
    """dockerd's own answer for a network that does not exist (libnetwork's wording).

    Status 400, not 404: on a create, the docker CLI takes a 404 for a missing image and
    would try to pull it.
    """
    return Decision(allowed=False, code="not_found", reason=f"network {ref} not found", status=400)


def is_predefined(facts_name: str, labels: dict[str, str] | Any) -> bool:
    """A network dockerd made itself: a predefined name and no owner label."""
    return facts_name in PREDEFINED_NETWORKS and not (labels or {}).get(LABEL_USER)


def network_ref_problem(
    ref: str, identity: Identity, limits: Limits, state: State
) -> Decision | None:
    """Why ``ref`` (a network mode or endpoint name) may not be used; None when it may."""
    if limits.is_admin or ref in BUILTIN_NETWORKS:
        return None
    if ref.startswith("container:"):
        return None  # a container reference: the create rules check its owner
    facts = state.related.get(f"network:{ref}")
    if ref == HOST or (facts is not None and is_predefined(facts.name, facts.labels)):
        if ref != HOST and facts is not None and facts.name != HOST:
            return None  # bridge or none, named by ID
        if limits.allows("host_namespaces"):
            return None
        return deny(
            "network_host",
            "--network host is not allowed for " + _who(limits),
            "drop --network host",
        )
    if facts is None or facts.owner != identity.user:
        return network_missing(ref)
    return None


def referenced_networks(body: dict[str, Any]) -> list[str]:
    """Network names/IDs a container create body names, for the I/O edge to look up."""
    host = body.get("HostConfig") or {}
    refs: list[str] = []
    mode = host.get("NetworkMode") or ""
    if mode and mode not in BUILTIN_NETWORKS and mode != HOST and ":" not in mode:
        refs.append(mode)
    endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    for name, settings in endpoints.items():
        for ref in (name, (settings or {}).get("NetworkID") or ""):
            if ref and ref not in BUILTIN_NETWORKS and ref != HOST and ref not in refs:
                refs.append(ref)
    return refs


def check_create_networks(
    body: dict[str, Any], identity: Identity, limits: Limits, state: State
) -> None:
    """Raise ``Denied`` unless every network a create body names is built-in or the user's."""
    if limits.is_admin:
        return
    host = body.get("HostConfig") or {}
    refs = [host.get("NetworkMode") or ""]
    endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    for name, settings in endpoints.items():
        refs.append(name)
        network_id = (settings or {}).get("NetworkID") or ""
        if network_id:
            facts = state.related.get(f"network:{name}")
            if facts is None or facts.id != network_id:
                # dockerd would attach by one of the two: both must name the same network.
                refs.append(network_id)
    for ref in refs:
        if not ref:
            continue
        problem = network_ref_problem(ref, identity, limits, state)
        if problem is not None:
            raise Denied(problem)


def visible_network(info: dict[str, Any], user: str) -> bool:
    """Whether a non-admin may see this network: their own, or one dockerd predefined."""
    labels = info.get("Labels") or {}
    return labels.get(LABEL_USER) == user or is_predefined(info.get("Name") or "", labels)


def screen_network(info: dict[str, Any], user: str, own: frozenset[str]) -> dict[str, Any] | None:
    """A network as a non-admin may see it, or None (hidden).

    ``own`` holds the IDs of the user's containers; a predefined network lists only those.
    """
    if not isinstance(info, dict) or not visible_network(info, user):
        return None
    labels = info.get("Labels") or {}
    if labels.get(LABEL_USER) == user:
        return info
    containers = info.get("Containers")
    if isinstance(containers, dict):
        info = {**info, "Containers": {k: v for k, v in containers.items() if k in own}}
    return info


def screen_network_list(answer: Any, user: str, own: frozenset[str]) -> list[dict[str, Any]]:
    """``GET /networks`` as a non-admin sees it: their networks and the predefined ones."""
    if not isinstance(answer, list):
        raise ValueError("a network list that is not a JSON list")
    screened = (screen_network(info, user, own) for info in answer)
    return [info for info in screened if info is not None]


def redact_conflict(message: str) -> str:
    """A name-conflict message without the full ID of the container holding the name.

    The holder may be another user's container; its ID would let the caller name it.
    """
    return _CONFLICT_ID.sub("a container (docker ps -a lists yours)", message)


def _who(limits: Limits) -> str:
    return f"group {limits.group}" if limits.group != "default" else f"user {limits.user}"


# ---- endpoint settings (container create's EndpointsConfig, network connect's EndpointConfig)


def endpoint_links(settings: Any) -> list[str]:
    """The containers an endpoint's legacy links name (``name[:alias]``), for lookup.

    Raises ``Denied`` when ``Links`` is not a list of strings (dockerd would refuse it too).
    """
    links = settings.get("Links") if isinstance(settings, dict) else None
    if not links:
        return []
    if not isinstance(links, list) or not all(isinstance(link, str) and link for link in links):
        raise Denied(
            deny("bad_body", "an endpoint's Links is not a list of names", "use --link NAME:ALIAS")
        )
    return [link_target(link) for link in links]


def link_target(link: str) -> str:
    """The container a legacy link (``name[:alias]``, ``--link``) names."""
    return link.split(":", 1)[0].lstrip("/")


def pinned_links(links: list[str], full: dict[str, str]) -> list[str]:
    """Each link naming its container by the full ID that was checked; without an alias
    dockerd would name the link after what it was given, so that is kept as the alias."""
    return [
        f"{full[link_target(link)]}:{link.partition(':')[2] or link_target(link)}" for link in links
    ]


def pin_endpoint_links(settings: dict[str, Any], full: dict[str, str]) -> None:
    settings["Links"] = pinned_links(settings.get("Links") or [], full)


def check_connect_endpoint(
    settings: Any, network: Any, identity: Identity, state: State
) -> Decision | None:
    """A network connect's ``EndpointConfig`` for a non-admin: its ``NetworkID`` (by which
    dockerd would attach) may only name the network connected to, and is forwarded as its full
    ID; its links only the user's own containers, by full ID. None: allowed (settings pinned).
    """
    if settings is None:
        return None
    if not isinstance(settings, dict):
        return deny("bad_body", "EndpointConfig is not an object", "send EndpointConfig as {...}")
    network_id = settings.get("NetworkID") or ""
    if network_id:
        named = network_id in (network.id, network.name)
        if not named and not (isinstance(network_id, str) and network.id.startswith(network_id)):
            return deny(
                "network_endpoint",
                "EndpointConfig.NetworkID names another network than the one connected to",
                "drop EndpointConfig.NetworkID",
            )
        settings["NetworkID"] = network.id
    full: dict[str, str] = {}
    for name in endpoint_links(settings):
        container = state.related.get(f"container:{name}")
        if container is None or container.owner != identity.user:
            return not_found("container", name)
        full[name] = container.id or name
    if full:
        pin_endpoint_links(settings, full)
    return None
