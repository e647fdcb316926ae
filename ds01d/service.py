"""ds01d's core: one policy, one GPU broker, shared by the gateway and the AuthZ plugin.

Here the pure engine meets Docker: this module looks up the objects a request names, calls
``policy.engine.decide``, and records every decision (metrics, audit log).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from typing import Any, Protocol
from urllib.parse import quote

from authz_plugin.authz import AuthzAnswer, AuthzRequest
from ds01d.docker_client import DockerClient, DockerError
from ds01d.identities import identity_for_tls_user
from ds01d.image_owners import ImageOwners
from ds01d.policy_store import PolicyStore
from ds01d.tickets import TOKEN_HEADER, Tickets
from formats.labels import LABEL_USER
from policy import builds as build_rules
from policy import create as create_rules
from policy import images as image_rules
from policy import networks as network_rules
from policy.decision import Decision, deny
from policy.engine import ANSWER_NAMES_TARGET, decide, parse_body, route_of
from policy.identity import Identity, direct_identity
from policy.limits import Limits
from policy.mounts import start_problem
from policy.routes import Route
from policy.state import ObjectFacts, Request, State
from policy.tls import without_rewrite

log = logging.getLogger("ds01.service")

# Where the start guard applies: bind sources re-checked, recorded GPUs re-acquired.
START_ENDPOINT = "/containers/{id}/start"
START_ENDPOINTS = frozenset({START_ENDPOINT, "/containers/{id}/restart"})


class Recorder(Protocol):
    """Where decisions go besides the caller: metrics and the audit log."""

    def decision(
        self,
        door: str,
        route: Route | None,
        identity: Identity,
        decision: Decision,
        seconds: float,
        container: str | None = None,
    ) -> None: ...

    def event(self, event: str, **fields: Any) -> None: ...


class NullRecorder:
    audit = None

    def decision(self, *args: Any, **kwargs: Any) -> None:
        return None

    def event(self, *args: Any, **kwargs: Any) -> None:
        return None


def facts_from_container(info: dict[str, Any], kind: str = "container") -> ObjectFacts:
    labels = (info.get("Config") or {}).get("Labels") or {}
    return ObjectFacts(
        kind=kind,
        id=info.get("Id", ""),
        owner=labels.get(LABEL_USER),
        name=(info.get("Name") or "").lstrip("/"),
        running=bool((info.get("State") or {}).get("Running")),
        labels=labels,
        details={"HostConfig": info.get("HostConfig") or {}, "Mounts": info.get("Mounts") or []},
    )


def _facts_from_labelled(info: dict[str, Any], kind: str) -> ObjectFacts:
    labels = info.get("Labels") or {}
    return ObjectFacts(
        kind=kind,
        id=info.get("Id") or info.get("Name", ""),
        owner=labels.get(LABEL_USER),
        name=info.get("Name", ""),
        labels=labels,
    )


def _volume_facts(info: dict[str, Any]) -> ObjectFacts:
    return _facts_from_labelled(info, "volume")


# How the object a self-describing read returns becomes facts (engine.ANSWER_NAMES_TARGET).
_ANSWER_FACTS = {"/containers/{id}/json": facts_from_container, "/volumes/{name}": _volume_facts}


class Service:
    def __init__(
        self,
        policy: PolicyStore,
        docker: DockerClient,
        *,
        gpus: Any = None,
        recorder: Recorder | None = None,
        cgroups: Any = None,
        cgroup_driver: str = "cgroupfs",
        protected_paths: tuple[str, ...] = (),
        realpath: Any = None,
        exists: Any = None,
        clock: Any = time.time,
    ) -> None:
        self.policy = policy
        self.docker = docker
        self.gpus = gpus
        self.recorder = recorder or NullRecorder()
        self.cgroups = cgroups
        self.clock = clock
        self.tickets = Tickets()
        self.image_owners = ImageOwners()  # the daemon gives it the state dir's file
        # What every decision's state shares: this host's facts.
        self._host_facts: dict[str, Any] = {
            "cgroup_driver": cgroup_driver,
            "host_cpus": os.cpu_count(),
            "protected_paths": protected_paths or State().protected_paths,
            **({"realpath": realpath} if realpath else {}),
            **({"exists": exists} if exists else {}),
        }
        docker.headers[TOKEN_HEADER] = self.tickets.internal

    # ---- deciding ------------------------------------------------------------------------

    async def decide(
        self, request: Request, identity: Identity, door: str
    ) -> tuple[Decision, Limits]:
        """Look up what the request names, decide, record. Never raises."""
        started = time.perf_counter()
        route = route_of(request)
        limits = self.policy.limits(identity)
        state = State()
        try:
            if route is not None:
                state = await self.state_for(route, request, identity)
        except DockerError as exc:
            decision = deny(
                "docker_unavailable",
                f"could not look up the objects named ({exc.message})",
                "try again; if it persists, ask an admin",
                503,
            )
        else:
            decision = decide(request, identity, limits, state)
            if decision.allowed and route is not None and route.endpoint in image_rules.FACT_ROUTES:
                decision = self.image_owners.claim_writes(route, identity, limits) or decision
        if not decision.decide_on_answer:  # else decide_on_answer records the final one
            container = state.target.id if state.target else None
            self.recorder.decision(
                door, route, identity, decision, time.perf_counter() - started, container=container
            )
        return decision, limits

    def decide_on_answer(
        self, request: Request, identity: Identity, status: int, answer: bytes
    ) -> Decision | None:
        """Decide a read forwarded with ``decide_on_answer`` on the object dockerd returned.

        None: dockerd answered with an error of its own, which reaches the client unchanged.
        """
        started = time.perf_counter()
        route = route_of(request)
        if route is None or status not in (200, 404):
            return None
        target: ObjectFacts | None = None
        if status == 200:
            try:
                info = json.loads(answer)
                target = _ANSWER_FACTS[route.endpoint](info)
            except (ValueError, TypeError, AttributeError, KeyError):
                decision = deny(
                    "bad_answer",
                    "could not read the Docker daemon's answer, so it was withheld",
                    "try again; if it persists, ask an admin",
                    502,
                )
                self.recorder.decision("gateway", route, identity, decision, 0.0)
                return decision
        state = self._state(target=target)
        decision = decide(request, identity, self.policy.limits(identity), state)
        self.recorder.decision(
            "gateway",
            route,
            identity,
            decision,
            time.perf_counter() - started,
            container=target.id if target else None,
        )
        return decision

    def _state(self, **facts: Any) -> State:
        """A state snapshot for one decision: now, this host, and the request's ``facts``."""
        return State(now=self.clock(), **self._host_facts, **facts)

    async def state_for(self, route: Route, request: Request, identity: Identity) -> State:
        """The facts the engine needs for this route (owners of named objects, counts)."""
        if identity.is_direct:
            return self._state()
        if (route.method, route.endpoint) in ANSWER_NAMES_TARGET:
            return self._state(target_in_answer=True)
        endpoint, params = route.endpoint, route.params
        target: ObjectFacts | None = None
        related: dict[str, ObjectFacts] = {}
        count = 0
        if endpoint.startswith("/containers/{id}"):
            info = await self.docker.inspect_container(params["id"])
            target = facts_from_container(info) if info else None
        elif endpoint.startswith("/exec/{id}"):
            target = await self._exec_facts(params["id"])
        elif endpoint.startswith("/volumes/{name}"):
            info = await self.docker.inspect_volume(params["name"])
            target = _facts_from_labelled(info, "volume") if info else None
        elif endpoint.startswith("/networks/{id}"):
            info = await self.docker.inspect_network(params["id"])
            target = _facts_from_labelled(info, "network") if info else None
            body = _try_body(route, request)
            if body and body.get("Container"):
                info = await self.docker.inspect_container(body["Container"])
                if info:
                    related[f"container:{body['Container']}"] = facts_from_container(info)
        elif endpoint == "/commit" and route.q("container"):
            info = await self.docker.inspect_container(route.q("container"))
            target = facts_from_container(info) if info else None
        elif endpoint == "/volumes/create":
            body = _try_body(route, request)
            if body and body.get("Name"):
                info = await self.docker.inspect_volume(body["Name"])
                target = _facts_from_labelled(info, "volume") if info else None
        elif endpoint == "/containers/create":
            body = _try_body(route, request)
            if body is not None:
                for ref in create_rules.referenced_containers(body):
                    info = await self.docker.inspect_container(ref)
                    if info:
                        related[f"container:{ref}"] = facts_from_container(info)
                for name in create_rules.referenced_volumes(body):
                    info = await self.docker.inspect_volume(name)
                    if info:
                        related[f"volume:{name}"] = _facts_from_labelled(info, "volume")
                owned = await self.docker.list_containers(
                    {"label": [f"{LABEL_USER}={identity.user}"]}
                )
                count = len(owned)
        await self._network_facts(route, request, related)
        if endpoint in image_rules.FACT_ROUTES:
            related.update(await self.image_facts(route, request))
        return self._state(target=target, related=related, user_containers=count)

    async def image_facts(self, route: Route, request: Request) -> dict[str, ObjectFacts]:
        """The image record and dockerd's view of the images and tags a request names."""
        refs, tags = image_rules.lookups(route, _try_body(route, request))
        related = {image_rules.OWNERS_KEY: self.image_owners.facts()}
        for ref in refs:
            info = await self.docker._get_or_none(f"/images/{quote(ref, safe='/:@')}/json")
            if info:
                related[image_rules.image_key(ref)] = image_rules.image_facts(info, ref)
        for tag in tags:
            info = await self.docker._get_or_none(f"/images/{quote(tag, safe='/:@')}/json")
            facts = image_rules.image_facts(info, tag) if info else None
            if facts is not None and image_rules.has_tag(facts, tag):
                related[image_rules.tag_key(tag)] = facts
        return related

    async def _network_facts(
        self, route: Route, request: Request, related: dict[str, ObjectFacts]
    ) -> None:
        """Facts of the networks a build or a create names (``network:<ref>``)."""
        refs: list[str] = []
        if route.endpoint == "/build":
            ref = build_rules.referenced_network(route)
            refs = [ref] if ref else []
        elif route.endpoint == "/containers/create":
            body = _try_body(route, request)
            refs = network_rules.referenced_networks(body) if body is not None else []
        for ref in refs:
            info = await self.docker.inspect_network(ref)
            if info:
                related[f"network:{ref}"] = _facts_from_labelled(info, "network")

    async def _exec_facts(self, exec_id: str) -> ObjectFacts | None:
        info = await self.docker.inspect_exec(exec_id)
        if not info:
            return None
        container = await self.docker.inspect_container(info.get("ContainerID", ""))
        if not container:
            return None
        facts = facts_from_container(container, kind="exec")
        return replace(
            facts, id=exec_id, details={**facts.details, "container": container.get("Id")}
        )

    # ---- the AuthZ plugin's view ---------------------------------------------------------

    async def authz_request(self, req: AuthzRequest) -> AuthzAnswer:
        token = _header(req.headers, TOKEN_HEADER)
        if self.tickets.is_internal(token):
            return AuthzAnswer(True)
        if token is not None:
            ticket = self.tickets.redeem(token, req.method, req.uri, req.body)
            if ticket is None:
                return AuthzAnswer(False, "ds01: a gateway token that does not match its request")
            if ticket.start_guarded:  # the gateway just re-acquired this start's GPUs
                return AuthzAnswer(True)
            request = Request(req.method, req.uri, req.headers, req.body)
            return await self._recheck(request, ticket.identity)
        request = Request(req.method, req.uri, req.headers, req.body)
        if req.authn_method and not req.user:
            refusal = deny(
                "unknown_tls_user",
                "the TLS client certificate names no user (its CN is empty)",
                "ask an admin for a certificate whose CN is your user name",
            )
            return AuthzAnswer(False, refusal.message)
        if not req.user:  # dockerd's unix socket, which only root can reach
            identity = direct_identity()
        else:  # over TCP, dockerd names the client certificate's CN
            tls_user = identity_for_tls_user(req.user)
            if tls_user is None:
                refusal = deny(
                    "unknown_tls_user",
                    f"the TLS client certificate names {req.user!r}, who is no user of this host",
                    "ask an admin for a certificate whose CN is your user name",
                )
                return AuthzAnswer(False, refusal.message)
            identity = tls_user
        decision, _ = await self.decide(request, identity, "authz")
        if identity.is_tls:
            decision = await self._tls_decision(request, identity, decision)
        if decision.allowed:
            refusal = await self.start_guard(request, identity)
            if refusal is not None:
                return AuthzAnswer(False, refusal.message)
        return AuthzAnswer(decision.allowed, decision.message)

    async def _tls_decision(
        self, request: Request, identity: Identity, decision: Decision
    ) -> Decision:
        """A TLS user's decision as the plugin can carry it out: unchanged, or refused."""
        route = route_of(request)
        if decision.decide_on_answer and route is not None:
            # No answer to screen before dockerd runs it: look the object up instead.
            ref = route.params.get("id") or route.params.get("name") or ""
            volume = route.endpoint.startswith("/volumes")
            look_up = self.docker.inspect_volume if volume else self.docker.inspect_container
            try:
                info = await look_up(ref)
            except DockerError as exc:
                return deny("docker_unavailable", f"could not look up {ref} ({exc.message})")
            answer = json.dumps(info or {}).encode()
            decision = self.decide_on_answer(
                request, identity, 200 if info else 404, answer
            ) or deny("bad_answer", f"could not decide on {ref}")
        return without_rewrite(decision, route)

    async def _recheck(self, request: Request, identity: Identity) -> AuthzAnswer:
        # The gateway decided on exactly these bytes (the ticket binds method, URI and body),
        # so the re-check is that binding; a start the gateway did not guard is guarded here.
        refusal = await self.start_guard(request, identity)
        if refusal is not None:
            return AuthzAnswer(False, refusal.message)
        return AuthzAnswer(True)

    async def authz_response(self, req: AuthzRequest) -> AuthzAnswer:
        self.tickets.finish(_header(req.headers, TOKEN_HEADER))
        return AuthzAnswer(True)

    async def start_guard(self, request: Request, identity: Identity) -> Decision | None:
        """On every container start or restart: its bind sources are still the ones checked,
        and its recorded GPUs are free (or are re-acquired)."""
        route = route_of(request)
        if route is None or route.endpoint not in START_ENDPOINTS:
            return None
        info = await self.docker.inspect_container(route.params["id"])
        if info is None:
            return None
        refusal = self._bind_guard(info, identity)
        if refusal is not None or self.gpus is None:
            return refusal
        return await self.gpus.guard_start(info, identity, self.clock())

    def _bind_guard(self, info: dict[str, Any], identity: Identity) -> Decision | None:
        if identity.is_direct:  # root on dockerd's own socket
            return None
        limits = self.policy.limits(identity)
        problem = start_problem(info, identity, limits, self._state())
        if problem is None:
            return None
        name = (info.get("Name") or "").lstrip("/") or info.get("Id", "")[:12]
        return deny(
            "bind_changed",
            f"{name} was not started: {problem}",
            f"put the folder back, or recreate the container (docker rm {name}; docker run ...)",
        )


def _header(headers: dict[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def _try_body(route: Route, request: Request) -> dict[str, Any] | None:
    try:
        body = parse_body(route, request)
    except Exception:
        return None
    return body if isinstance(body, dict) else None
