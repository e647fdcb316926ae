"""The DS01 side of the gateway: who is asking, what the policy says, and the rewrite.

The data plane (``proxy.py``) hands every parsed request here and forwards what comes back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from ds01d.api import PREFIX as API_PREFIX
from ds01d.api import Api
from ds01d.container_owners import ContainerOwners
from ds01d.create_saga import CreateSaga
from ds01d.docker_client import DockerError
from ds01d.identities import IdentityCache
from ds01d.image_owners import answer_screen
from ds01d.notify import Notifier
from ds01d.ping import PingAnswer
from ds01d.service import START_ENDPOINTS, Service, Verdict
from ds01d.tickets import TOKEN_HEADER
from formats.labels import LABEL_USER
from gateway.types import Client, Forward, Reply, RequestHead
from policy import networks as network_rules
from policy.decision import Decision
from policy.engine import route_of
from policy.facts import ParsedRequest, parse_request, takes_json_body
from policy.identity import Identity
from policy.routes import Route
from policy.state import Request
from policy.strict_json import dumps_canonical

log = logging.getLogger("ds01.gateway")

# The AuthZ plugin sees request bodies only up to 1 MiB; the gateway buffers no more than
# that, so every body it approves is also one the plugin can check.
MAX_JSON_BODY = 2**20 - 1
# The most of dockerd's answer to a screened read (an inspect) the gateway reads to decide on.
MAX_SCREENED_ANSWER = 16 * 2**20
# A create's answer is its ID and warnings.
MAX_CREATE_ANSWER = 64 * 1024
# POST /session (BuildKit's client session) is hijacked too: dockerd switches it to h2c.
_HIJACKED = {"/containers/{id}/attach", "/exec/{id}/start", "/session"}
# Reads a non-admin sees screened (their networks and the predefined ones).
_NETWORK_READS = {"/networks", "/networks/{id}"}
# Answered by the gateway from dockerd's own recent answer (ds01d/ping.py).
PING = "/_ping"
# Answers that can name the container holding a name: told without its ID.
_CONFLICT_ANSWERS = {"/containers/create", "/containers/{id}/rename"}


def json_reply(status: int, message: str) -> Reply:
    return Reply(status=status, body=json.dumps({"message": message}).encode())


def deny_reply(decision: Decision) -> Reply:
    return json_reply(decision.status, decision.message)


class GatewayHandler:
    def __init__(self, service: Service, lifecycle: Any = None) -> None:
        self.service = service
        self.identity_for_uid = IdentityCache()
        self.api = Api(service, lifecycle)
        self.ping = PingAnswer(service.docker)
        # The lifecycle's notifier writes its warnings to terminals; the GPU queue's too.
        self.notifier: Notifier = getattr(lifecycle, "notifier", None) or Notifier()

    def body_limit(self, client: Client, head: RequestHead) -> int | None:
        route = route_of(Request(head.method, head.target))
        if route is not None and takes_json_body(route):
            return MAX_JSON_BODY
        return None

    async def identify(self, client: Client) -> Identity:
        """The user behind a connection, fixed for its life: worked out on its first request.

        Only the kernel's SO_PEERCRED uid counts, looked up through NSS (an unknown uid is
        ``uid:<n>``, which the policy's ``unknown_users`` decides). Nothing the caller can
        arrange (cgroup names, labels, headers) is consulted: a process inside a container
        reaches this socket with the uid it runs as, which DS01 sets to its owner's.
        """
        if client.context is None:
            client.context = self.identity_for_uid(client.peer.uid)
        identity: Identity = client.context
        return identity

    async def decide(
        self, client: Client, head: RequestHead, body: bytes | None
    ) -> Forward | Reply:
        try:
            return await self._decide(client, head, body)
        except DockerError as exc:
            return json_reply(
                502,
                f"ds01: the Docker daemon answered an internal lookup with an error ({exc.message})",
            )
        except Exception:
            log.exception("gateway decision failed")
            return json_reply(
                403, "ds01: internal error while deciding; denied (see the ds01d log)"
            )

    async def _decide(
        self, client: Client, head: RequestHead, body: bytes | None
    ) -> Forward | Reply:
        identity = await self.identify(client)
        if head.target.startswith(API_PREFIX):
            status, data = await self.api.handle(identity, head.method, head.target)
            return Reply(status=status, body=json.dumps(data, default=str).encode())
        headers = tuple((k, v) for k, v in head.headers if not k.lower().startswith("x-ds01-"))
        # Parsed once here; the service, the engine and the saga all use this one value.
        parsed = parse_request(Request(head.method, head.target, _header_map(headers), body))
        verdict = await self.service.decide(parsed, identity, "gateway")
        decision = verdict.decision
        if not decision.allowed:
            return deny_reply(decision)
        route = parsed.route
        assert route is not None  # decide() denies what does not route
        if route.endpoint == PING and not route.query:  # every command's first request
            reply = await self.ping.reply(head.method)
            if reply is not None:
                return reply
        # What dockerd executes is what was decided: the full IDs checked, the query as parsed.
        target = route.canonical_target(decision.params, decision.query)
        new_body = body
        on_response: Callable[[int, bytes], Reply | None] | None = None
        on_close: Callable[[bool], None] | None = None
        answer_limit = 0
        if decision.decide_on_answer:
            on_response, answer_limit = self._screen(parsed, identity), MAX_SCREENED_ANSWER
        if route.endpoint == "/containers/create":
            saga = self.create_saga(verdict, identity, client)
            prepared = await saga.prepare()
            if isinstance(prepared, Decision):
                return deny_reply(prepared)
            new_body, on_response, on_close = prepared, _no_reply(saga.on_response), saga.on_close
            answer_limit = MAX_CREATE_ANSWER
        elif decision.body is not None:
            new_body = dumps_canonical(decision.body)
        try:
            return await self._forward(
                verdict, identity, head, headers, target, new_body, on_response, on_close,
                answer_limit,
            )  # fmt: skip
        except BaseException:
            if on_close is not None:  # never leak what the saga reserved
                on_close(False)
            raise

    async def _forward(
        self,
        verdict: Verdict,
        identity: Identity,
        head: RequestHead,
        headers: tuple[tuple[str, str], ...],
        target: str,
        new_body: bytes | None,
        on_response: Callable[[int, bytes], Reply | None] | None,
        on_close: Callable[[bool], None] | None,
        answer_limit: int,
    ) -> Forward:
        """The Forward for an approved request: answer screens, a ticket, its headers."""
        route, limits = verdict.parsed.route, verdict.limits
        assert route is not None
        image_screen = answer_screen(self.service.image_owners, route, identity, limits)
        if image_screen is not None:  # image lists filtered, image owners recorded
            on_response, answer_limit = _image_answer(image_screen), MAX_SCREENED_ANSWER
        if not limits.is_admin:
            on_response, answer_limit = await self._owner_screens(
                route, identity, on_response, answer_limit
            )
        token = self.service.tickets.issue(
            identity,
            head.method,
            target,
            new_body,
            start_guarded=route.endpoint in START_ENDPOINTS,
        )
        if new_body is not None:
            # dockerd shows a body to its plugins only when it is labelled JSON; label every
            # body we approved, so the plugin's check sees exactly what dockerd executes.
            headers = tuple((k, v) for k, v in headers if k.lower() != "content-type")
            headers = (*headers, ("Content-Type", "application/json"))
        headers = (*headers, (TOKEN_HEADER, token))

        def closed(ok: bool) -> None:
            self.service.tickets.discard(token)
            if on_close is not None:
                on_close(ok)

        return Forward(
            head=RequestHead(head.method, target, headers, head.http_version),
            body=new_body,
            response_limit=answer_limit,
            on_response=on_response,
            on_close=closed,
            hijack=_hijacked(route, new_body),
        )

    def create_saga(
        self, verdict: Verdict, identity: Identity, client: Client | None = None
    ) -> CreateSaga:
        """The saga that carries out an approved create (ds01d/create_saga.py)."""
        service = self.service

        def record(decision: Decision) -> None:
            service.record("gateway", verdict.parsed, identity, decision, verdict.seconds)

        def tell(line: str) -> None:
            # The client's own terminal: the Docker API gives a waiting create no channel.
            if identity.uid is not None:
                pid = client.peer.pid if client is not None else None
                self.notifier.tell_client(pid, identity.uid, line)

        return CreateSaga(
            identity,
            verdict.limits,
            verdict.decision,
            verdict.state,
            docker=service.docker,
            gpus=service.gpus,
            cgroups=service.cgroups,
            clock=service.clock,
            record=record,
            event=service.recorder.event,
            tell=tell,
            created=lambda container_id: service.owners.created(container_id, identity.user),
        )

    def _screen(
        self, parsed: ParsedRequest, identity: Identity
    ) -> Callable[[int, bytes], Reply | None]:
        """The owner check of a self-describing read, made on dockerd's answer to it."""

        def on_response(status: int, answer: bytes) -> Reply | None:
            decision = self.service.decide_on_answer(parsed, identity, status, answer)
            if decision is None or decision.allowed:
                return None
            return deny_reply(decision)

        return on_response

    async def _owner_screens(
        self,
        route: Route,
        identity: Identity,
        on_response: Callable[[int, bytes], Reply | None] | None,
        answer_limit: int,
    ) -> tuple[Callable[[int, bytes], Reply | None] | None, int]:
        """Answers a non-admin may see only in part: container and network lists, network
        inspects, conflicts."""
        if route.method == "GET" and route.endpoint == "/containers/json":
            # dockerd filtered by the owner label; only containers verified as the user's stay
            return _screen_containers(self.service.owners, identity.user), MAX_SCREENED_ANSWER
        if route.method == "GET" and route.endpoint in _NETWORK_READS:
            owned = await self.service.docker.list_containers(
                {"label": [f"{LABEL_USER}={identity.user}"]}
            )
            own = frozenset(
                c.get("Id", "") for c in self.service.owners.screen(owned, identity.user)
            )
            return _screen_networks(route, identity.user, own), MAX_SCREENED_ANSWER
        if route.endpoint in _CONFLICT_ANSWERS:
            return _redact_conflicts(on_response), answer_limit or MAX_CREATE_ANSWER
        return on_response, answer_limit


def _screen_containers(owners: ContainerOwners, user: str) -> Callable[[int, bytes], Reply | None]:
    """``docker ps`` as a non-admin sees it: their verified containers (ds01d/container_owners)."""

    def on_response(status: int, answer: bytes) -> Reply | None:
        if status != 200:
            return None
        try:
            listed = json.loads(answer)
        except ValueError:
            listed = None
        if not isinstance(listed, list):
            return json_reply(502, "ds01: could not read the Docker daemon's container list")
        shown = owners.screen(listed, user)
        if len(shown) == len(listed):
            return None  # dockerd's own bytes, relayed unchanged
        return Reply(status=200, body=json.dumps(shown).encode())

    return on_response


def _screen_networks(
    route: Route, user: str, own: frozenset[str]
) -> Callable[[int, bytes], Reply | None]:
    """Network reads as a non-admin sees them (policy.networks decides what is shown)."""

    def on_response(status: int, answer: bytes) -> Reply | None:
        if status != 200:
            return None
        try:
            data = json.loads(answer)
            if route.endpoint == "/networks":
                shown: Any = network_rules.screen_network_list(data, user, own)
            else:
                shown = network_rules.screen_network(data, user, own)
        except (ValueError, TypeError, AttributeError):
            return json_reply(502, "ds01: could not read the Docker daemon's answer; withheld")
        if shown is None:  # named another user's network after all: as if missing
            return json_reply(404, f"network {route.params.get('id', '')} not found")
        return Reply(status=200, body=json.dumps(shown).encode())

    return on_response


def _redact_conflicts(
    inner: Callable[[int, bytes], Reply | None] | None,
) -> Callable[[int, bytes], Reply | None]:
    """A 409 name conflict told without the full ID of the container holding the name."""

    def on_response(status: int, answer: bytes) -> Reply | None:
        replaced = inner(status, answer) if inner is not None else None
        if replaced is not None or status != 409:
            return replaced
        try:
            message = json.loads(answer).get("message")
        except (ValueError, AttributeError):
            return None
        if not isinstance(message, str):
            return None
        redacted = network_rules.redact_conflict(message)
        return None if redacted == message else json_reply(409, redacted)

    return on_response


def _image_answer(
    screen: Callable[[int, bytes], bytes | None],
) -> Callable[[int, bytes], Reply | None]:
    """An image answer as a non-admin may see it (``image_owners.answer_screen``)."""

    def on_response(status: int, answer: bytes) -> Reply | None:
        try:
            replaced = screen(status, answer)
        except (ValueError, TypeError, AttributeError):
            return json_reply(502, "ds01: could not read the Docker daemon's answer; withheld")
        return None if replaced is None else Reply(status=status, body=replaced)

    return on_response


def _no_reply(inner: Callable[[int, bytes], None]) -> Callable[[int, bytes], Reply | None]:
    """A callback that watches dockerd's answer and leaves it as it is."""

    def on_response(status: int, answer: bytes) -> Reply | None:
        inner(status, answer)
        return None

    return on_response


def _hijacked(route: Route, body: bytes | None) -> bool:
    if route.endpoint not in _HIJACKED:
        return False
    if route.endpoint == "/exec/{id}/start" and body:
        try:
            return not json.loads(body).get("Detach")
        except (ValueError, AttributeError):
            return True
    return True


def _header_map(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in headers:
        out.setdefault(key, value)
    return out
