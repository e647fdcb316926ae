"""ds01d's core: one policy, one GPU broker, shared by the gateway and the AuthZ plugin.

Here the pure engine meets Docker: this module looks up the objects a request names, calls
``policy.engine.decide``, and records every decision (metrics, audit log).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from authz_plugin.authz import ALLOW, AuthzAnswer, AuthzRequest
from ds01d.container_owners import ContainerOwners
from ds01d.docker_client import DockerError
from ds01d.identities import identity_for_tls_user
from ds01d.image_owners import ImageOwners
from ds01d.policy_store import PolicyStore
from ds01d.ports import CgroupBackend, DockerApi
from ds01d.tickets import TOKEN_HEADER, Tickets
from formats.labels import LABEL_USER
from policy import images as image_rules
from policy.decision import Decision, deny
from policy.engine import decide, endpoint_of, needed_facts
from policy.facts import (
    NO_FACTS,
    FactRequests,
    ObjectRef,
    ParsedRequest,
    parse_request,
    related_key,
)
from policy.identity import Identity, direct_identity
from policy.limits import Limits
from policy.mounts import start_problem
from policy.routes import Route
from policy.slices import container_owner
from policy.state import ObjectFacts, Request, State
from policy.tls import without_rewrite

log = logging.getLogger("ds01.service")

# Where the start guard applies: bind sources re-checked, recorded GPUs re-acquired.
START_ENDPOINT = "/containers/{id}/start"
START_ENDPOINTS = frozenset({START_ENDPOINT, "/containers/{id}/restart"})
CREATE = "/containers/create"
_OWNERS_ONLY = FactRequests(image_owners=True)
DIRECT = direct_identity()  # an Identity is a value: one serves every direct request


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
        owner=container_owner(labels, info.get("HostConfig") or {}),
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


@dataclass(frozen=True)
class Verdict:
    """One request decided: its parse, the decision, and the limits and facts behind it."""

    parsed: ParsedRequest
    decision: Decision
    limits: Limits
    state: State
    seconds: float  # looking up and deciding
    # False: the final outcome is recorded later (on dockerd's answer, or by the create
    # saga once the GPU reservation is settled), so that one request is recorded once.
    recorded: bool = True


class _Lookups:
    """dockerd's view of the objects one request names: each looked up at most once."""

    def __init__(self, docker: DockerApi) -> None:
        self.docker = docker
        self._seen: dict[tuple[str, str], Any] = {}

    async def _once(self, key: tuple[str, str], fetch: Any) -> Any:
        if key not in self._seen:
            self._seen[key] = await fetch()
        return self._seen[key]

    async def container(self, ref: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._once(
            ("container", ref), lambda: self.docker.inspect_container(ref)
        )
        return result

    async def image(self, ref: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._once(
            ("image", ref), lambda: self.docker.inspect_image(ref)
        )
        return result

    async def facts(self, ref: ObjectRef) -> ObjectFacts | None:
        if ref.kind == "container":
            info = await self.container(ref.ref)
            return facts_from_container(info) if info else None
        if ref.kind == "exec":
            return await self._exec(ref.ref)
        inspect = (
            self.docker.inspect_volume if ref.kind == "volume" else self.docker.inspect_network
        )
        info = await self._once((ref.kind, ref.ref), lambda: inspect(ref.ref))
        return _facts_from_labelled(info, ref.kind) if info else None

    async def _exec(self, exec_id: str) -> ObjectFacts | None:
        info = await self._once(("exec", exec_id), lambda: self.docker.inspect_exec(exec_id))
        if not info:
            return None
        container = await self.container(info.get("ContainerID", ""))
        if not container:
            return None
        facts = facts_from_container(container, kind="exec")
        return replace(
            facts, id=exec_id, details={**facts.details, "container": container.get("Id")}
        )


class Service:
    def __init__(
        self,
        policy: PolicyStore,
        docker: DockerApi,
        *,
        gpus: Any = None,
        recorder: Recorder | None = None,
        cgroups: CgroupBackend | None = None,
        cgroup_driver: str = "cgroupfs",
        protected_paths: tuple[str, ...] = (),
        realpath: Any = None,
        exists: Any = None,
        is_user: Any = None,
        clock: Any = time.time,
    ) -> None:
        self.policy = policy
        self.docker = docker
        self.gpus = gpus
        self.recorder = recorder or NullRecorder()
        self.cgroups = cgroups
        self.clock = clock
        self.tickets = Tickets()
        self.owners = ContainerOwners(docker)  # whose each listed container is, verified
        self.image_owners = ImageOwners()  # the daemon gives it the state dir's file
        # What every decision's state shares: this host's facts.
        self._host_facts: dict[str, Any] = {
            "cgroup_driver": cgroup_driver,
            "host_cpus": os.cpu_count(),
            "protected_paths": protected_paths or State().protected_paths,
            **({"realpath": realpath} if realpath else {}),
            **({"exists": exists} if exists else {}),
            **({"is_user": is_user} if is_user else {}),
        }
        docker.headers[TOKEN_HEADER] = self.tickets.internal

    # ---- deciding ------------------------------------------------------------------------

    async def decide(
        self, request: Request | ParsedRequest, identity: Identity, door: str
    ) -> Verdict:
        """Look up the facts the request's rule declares, decide once, record. Never raises.

        A TLS user's decision is narrowed to what the plugin can carry out, and an allowed
        start passes the start guard, before the one record is made. An allowed create at the
        gateway is recorded by its saga, once its volumes and GPUs are settled.
        """
        parsed = request if isinstance(request, ParsedRequest) else parse_request(request)
        needs = needed_facts(parsed, identity)
        verdict = self._decide_at_once(parsed, identity, door, needs)
        if verdict is not None:
            return verdict
        started = time.perf_counter()
        limits = self.policy.limits(identity)
        state = self._state()
        lookup = _Lookups(self.docker)  # one request's lookups, shared with the start guard
        try:
            state = await self.gather(needs, identity, lookup)
            decision = self._decided(parsed, identity, limits, state)
            if identity.is_tls:
                decision = await self._tls_decision(parsed, identity, decision)
            if decision.allowed and not decision.decide_on_answer:
                decision = await self.start_guard(parsed, identity, lookup) or decision
        except DockerError as exc:
            decision = replace(
                deny(
                    "docker_unavailable",
                    f"could not look up the objects named ({exc.message})",
                    "try again; if it persists, ask an admin",
                    503,
                ),
                detail=f"DockerError: {exc.message}",
            )
        return self._verdict(door, parsed, identity, limits, state, decision, started)

    def decide_now(self, parsed: ParsedRequest, identity: Identity, door: str) -> Verdict | None:
        """``decide`` for a request that needs nothing looked up (most reads); None otherwise.

        Nothing to await means no task and no turn of the event loop, on a path both doors
        take for nearly every request.
        """
        return self._decide_at_once(parsed, identity, door, needed_facts(parsed, identity))

    def _decide_at_once(
        self, parsed: ParsedRequest, identity: Identity, door: str, needs: FactRequests
    ) -> Verdict | None:
        if identity.is_tls or parsed.endpoint in START_ENDPOINTS:
            return None
        started = time.perf_counter()
        state = self._known_state(needs)
        if state is None:
            return None
        limits = self.policy.limits(identity)
        decision = self._decided(parsed, identity, limits, state)
        return self._verdict(door, parsed, identity, limits, state, decision, started)

    def _verdict(
        self,
        door: str,
        parsed: ParsedRequest,
        identity: Identity,
        limits: Limits,
        state: State,
        decision: Decision,
        started: float,
    ) -> Verdict:
        """The verdict, recorded now unless its outcome is settled later."""
        seconds = time.perf_counter() - started
        deferred = decision.allowed and (
            decision.decide_on_answer or (door == "gateway" and parsed.endpoint == CREATE)
        )
        if not deferred:
            self.record(door, parsed, identity, decision, seconds, state)
        return Verdict(parsed, decision, limits, state, seconds, recorded=not deferred)

    def _decided(
        self, parsed: ParsedRequest, identity: Identity, limits: Limits, state: State
    ) -> Decision:
        decision = decide(parsed, identity, limits, state)
        route = parsed.route
        if decision.allowed and route is not None and route.endpoint in image_rules.FACT_ROUTES:
            decision = self.image_owners.claim_writes(route, identity, limits) or decision
        return decision

    def record(
        self,
        door: str,
        parsed: ParsedRequest,
        identity: Identity,
        decision: Decision,
        seconds: float,
        state: State | None = None,
    ) -> None:
        """The one place a decision is recorded (metrics and audit), GPU refusals included.

        A decision's log-only ``detail`` (an internal error's cause) goes to the log and the
        audit log, never to the user.
        """
        target = state.target if state is not None else None
        container = target.id if target is not None else None
        self.recorder.decision(door, parsed.route, identity, decision, seconds, container=container)
        if decision.detail:
            where = (
                f"{parsed.method} {parsed.route.path if parsed.route else parsed.request.target}"
            )
            log.warning("%s for %s: %s: %s", where, identity.user, decision.code, decision.detail)
            self.recorder.event(
                "decision_detail",
                user=identity.user,
                uid=identity.uid,
                endpoint=where,
                result="allow" if decision.allowed else "deny",
                reason=decision.code,
                detail=decision.detail,
            )

    def decide_on_answer(
        self, request: Request | ParsedRequest, identity: Identity, status: int, answer: bytes
    ) -> Decision | None:
        """Decide a read forwarded with ``decide_on_answer`` on the object dockerd returned.

        None: dockerd answered with an error of its own, which reaches the client unchanged.
        """
        started = time.perf_counter()
        parsed = request if isinstance(request, ParsedRequest) else parse_request(request)
        decided = self._answer_decision(parsed, identity, status, answer)
        if decided is not None:
            decision, state = decided
            self.record("gateway", parsed, identity, decision, time.perf_counter() - started, state)
            return decision
        return None

    def _answer_decision(
        self, parsed: ParsedRequest, identity: Identity, status: int, answer: bytes
    ) -> tuple[Decision, State] | None:
        route = parsed.route
        if route is None or status not in (200, 404):
            return None
        target: ObjectFacts | None = None
        if status == 200:
            try:
                target = _ANSWER_FACTS[route.endpoint](json.loads(answer))
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                refusal = deny(
                    "bad_answer",
                    "could not read the Docker daemon's answer, so it was withheld",
                    "try again; if it persists, ask an admin",
                    502,
                )
                return replace(refusal, detail=f"{type(exc).__name__}: {exc}"), self._state()
        state = self._state(target=target)
        return decide(parsed, identity, self.policy.limits(identity), state), state

    def _state(self, **facts: Any) -> State:
        """A state snapshot for one decision: now, this host, and the request's ``facts``."""
        return State(now=self.clock(), **self._host_facts, **facts)

    def _known_state(self, needs: FactRequests) -> State | None:
        """The State when ``needs`` asks dockerd for nothing; None when something must be
        fetched. The image ownership record is ds01d's own, at hand."""
        if needs == NO_FACTS:
            return self._state()
        if needs.target_in_answer:
            return self._state(target_in_answer=True)
        if needs == _OWNERS_ONLY:
            return self._state(related={image_rules.OWNERS_KEY: self.image_owners.facts()})
        return None

    async def gather(
        self, needs: FactRequests, identity: Identity, lookup: _Lookups | None = None
    ) -> State:
        """Fetch exactly what ``needs`` names, each object once, and build the State."""
        known = self._known_state(needs)
        if known is not None:
            return known
        lookup = lookup or _Lookups(self.docker)
        target = await lookup.facts(needs.target) if needs.target is not None else None
        related: dict[str, ObjectFacts] = {}
        for ref in needs.related:
            facts = await lookup.facts(ref)
            if facts is not None:
                related[related_key(ref)] = facts
        if needs.image_owners:
            related[image_rules.OWNERS_KEY] = self.image_owners.facts()
        for image in needs.images:
            info = await lookup.image(image)
            if info:
                related[image_rules.image_key(image)] = image_rules.image_facts(info, image)
        for tag in needs.tags:
            info = await lookup.image(tag)
            tagged = image_rules.image_facts(info, tag) if info else None
            if tagged is not None and image_rules.has_tag(tagged, tag):
                related[image_rules.tag_key(tag)] = tagged
        count = 0
        if needs.user_containers:
            owned = await self.docker.list_containers({"label": [f"{LABEL_USER}={identity.user}"]})
            count = len(owned)
        networks = 0
        if needs.user_networks:
            owner = json.dumps({"label": [f"{LABEL_USER}={identity.user}"]})
            networks = len(
                await self.docker.request("GET", "/networks", params={"filters": owner}) or []
            )
        return self._state(
            target=target, related=related, user_containers=count, user_networks=networks
        )

    # ---- the AuthZ plugin's view ---------------------------------------------------------

    def authz_request(self, req: AuthzRequest) -> AuthzAnswer | Awaitable[AuthzAnswer]:
        """The plugin's answer to an AuthZReq: at once unless a lookup is needed."""
        token = _header(req.headers, TOKEN_HEADER)
        if self.tickets.is_internal(token):
            return ALLOW
        if token is not None:
            ticket = self.tickets.redeem(token, req.method, req.uri, req.body)
            if ticket is None:
                return AuthzAnswer(False, "ds01: a gateway token that does not match its request")
            # The gateway decided on exactly these bytes (the ticket binds method, URI and
            # body), so the re-check is that binding; a start it did not guard is guarded here.
            if ticket.start_guarded or endpoint_of(req.method, req.uri) not in START_ENDPOINTS:
                return ALLOW
            request = parse_request(Request(req.method, req.uri, req.headers, req.body))
            return self._recheck(request, ticket.identity)
        request = parse_request(Request(req.method, req.uri, req.headers, req.body))
        if req.authn_method and not req.user:
            refusal = deny(
                "unknown_tls_user",
                "the TLS client certificate names no user (its CN is empty)",
                "ask an admin for a certificate whose CN is your user name",
            )
            return AuthzAnswer(False, refusal.message)
        if not req.user:  # dockerd's unix socket, which only root can reach
            identity = DIRECT
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
        verdict = self.decide_now(request, identity, "authz")
        if verdict is not None:
            return _answer(verdict.decision)
        return self._authz_decide(request, identity)

    async def _authz_decide(self, request: ParsedRequest, identity: Identity) -> AuthzAnswer:
        # decide() narrows a TLS user's decision (_tls_decision) and guards starts
        decision = (await self.decide(request, identity, "authz")).decision
        return _answer(decision)

    async def _tls_decision(
        self, request: ParsedRequest, identity: Identity, decision: Decision
    ) -> Decision:
        """A TLS user's decision as the plugin can carry it out: unchanged, or refused."""
        route = request.route
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
            decided = self._answer_decision(request, identity, 200 if info else 404, answer)
            decision = decided[0] if decided else deny("bad_answer", f"could not decide on {ref}")
        return without_rewrite(decision, route)

    async def _recheck(self, request: ParsedRequest, identity: Identity) -> AuthzAnswer:
        started = time.perf_counter()
        refusal = await self.start_guard(request, identity)
        if refusal is not None:
            self.record("authz", request, identity, refusal, time.perf_counter() - started)
            return AuthzAnswer(False, refusal.message)
        return ALLOW

    def authz_response(self, req: AuthzRequest) -> AuthzAnswer:
        """The plugin's answer to an AuthZRes: the request's ticket is spent."""
        self.tickets.finish(_header(req.headers, TOKEN_HEADER))
        return ALLOW

    async def start_guard(
        self, request: ParsedRequest, identity: Identity, lookup: _Lookups | None = None
    ) -> Decision | None:
        """On every container start or restart: its bind sources are still the ones checked,
        and its recorded GPUs are free (or are re-acquired)."""
        route = request.route
        if route is None or route.endpoint not in START_ENDPOINTS:
            return None
        info = await (lookup or _Lookups(self.docker)).container(route.params["id"])
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


def _answer(decision: Decision) -> AuthzAnswer:
    if decision.allowed and not decision.message:
        return ALLOW  # one value for nearly every answer: its bytes are made once
    return AuthzAnswer(decision.allowed, decision.message)


def _header(headers: dict[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None
