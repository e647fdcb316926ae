"""The create saga: what the edge carries out for an approved container create.

The policy approves a create and says what it needs (``Decision.body``, ``gpu_request``);
this object does it, step by step, with explicit states:

    NEW ─prepare()─► the user's cgroup ensured ─► named volumes created, owned
        ─► GPUs reserved (maybe after a wait) ─► body with the devices ─► FORWARDED
    FORWARDED ─201─► BOUND (the reservation becomes the container's allocation)
    FORWARDED ─anything else, or the client gone─► ROLLED_BACK
    any step failing ─► REFUSED (a denial) or raised; either way no reservation is left

"Never lose an allocation": a reservation exists only between ``RESERVED`` and
``BOUND``/``ROLLED_BACK``, and every path out of that window ends in one of the two. The
ports (dockerd, the GPU broker, cgroups, the recorder) are passed in, so that each step can
be failed in turn against fakes (tests/unit/test_create_saga.py).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from formats.labels import LABEL_USER
from policy import create as create_rules
from policy.decision import Decision, deny, not_found
from policy.facts import ObjectRef, related_key
from policy.identity import Identity
from policy.limits import Limits
from policy.state import State
from policy.strict_json import dumps_canonical

log = logging.getLogger("ds01.create")


class Docker(Protocol):
    async def request(
        self, method: str, path: str, *, params: dict[str, str] | None = None, body: Any = None
    ) -> Any: ...


class Broker(Protocol):
    async def reserve(
        self,
        identity: Identity,
        limits: Limits,
        request: Any,
        body: dict[str, Any],
        now: float,
        tell: Callable[[str], None] | None = None,
    ) -> Any: ...

    def bind(self, reservation: Any, container_id: str) -> None: ...

    def rollback(self, reservation: Any) -> None: ...


class Cgroups(Protocol):
    async def ensure(self, identity: Identity, limits: Limits) -> list[str]: ...


class Step(enum.Enum):
    NEW = "new"
    PREPARING = "preparing"  # cgroup, volumes
    RESERVED = "reserved"  # GPUs held for this create, not yet a container's
    FORWARDED = "forwarded"  # the body is on its way to dockerd
    CREATED = "created"  # dockerd created it (no GPUs)
    BOUND = "bound"  # dockerd created it and its reservation became its allocation
    REFUSED = "refused"  # a step refused; nothing is held
    ROLLED_BACK = "rolled_back"  # the create failed or the client left; reservation freed


NO_GPUS = deny("no_gpus", "this server has no GPUs to give", "run without --gpus", 409)
FAILED = deny("create_failed", "the create could not be prepared", "try again; nothing was kept")
CLIENT_GONE = deny("client_gone", "the client left before its create was made")


class CreateSaga:
    """One approved create, carried out. Use: ``prepare()``, then forward the bytes it
    returns with ``on_response`` and ``on_close`` as the forward's callbacks."""

    def __init__(
        self,
        identity: Identity,
        limits: Limits,
        decision: Decision,
        state: State,
        *,
        docker: Docker,
        gpus: Broker | None,
        cgroups: Cgroups | None,
        clock: Callable[[], float],
        record: Callable[[Decision], None],  # the service recorded nothing for this create
        event: Callable[..., None],
        tell: Callable[[str], None] | None = None,
        created: Callable[[str], None] | None = None,
    ) -> None:
        self.identity, self.limits, self.decision, self.state = identity, limits, decision, state
        self.created = created  # told the new container's ID before its creator sees it
        self.docker, self.gpus, self.cgroups, self.clock = docker, gpus, cgroups, clock
        self.record = record  # the one decision path: metrics and audit, GPU refusals too
        self.event = event  # the audit log's other events
        self.tell = tell  # a line for the client's terminal while the create waits for a GPU
        self.step = Step.NEW
        self.reservation: Any = None
        self.devices: list[str] = []
        self.container_id: str | None = None

    # ---- before forwarding ---------------------------------------------------------------

    async def prepare(self) -> bytes | Decision:
        """The body to forward, or the refusal to answer. On a refusal or an exception
        nothing is held (a reservation made is rolled back)."""
        self.step = Step.PREPARING
        body: dict[str, Any] = self.decision.body or {}
        try:
            await self._ensure_cgroup()
            refusal = await self._create_volumes(body)
            if refusal is None:
                refusal = await self._reserve(body)
            if refusal is not None:
                return self._refuse(refusal)
            gpueq = self.reservation.gpueq if self.reservation is not None else 0.0
            create_rules.apply_allocation(body, self.devices, gpueq, self.clock())
            raw = dumps_canonical(body)
        except BaseException as exc:
            self._rollback()  # never lose (or leak) an allocation
            self.step = Step.REFUSED  # the caller answers (or the client is gone): record it
            cause = CLIENT_GONE if isinstance(exc, asyncio.CancelledError) else FAILED
            self.record(replace(cause, detail=f"{type(exc).__name__}: {exc}"))
            raise
        self.record(self.decision)  # the create's one record, now that all is settled
        self.step = Step.FORWARDED
        return raw

    async def _ensure_cgroup(self) -> None:
        if self.cgroups is None or self.limits.is_admin:
            return
        for warning in await self.cgroups.ensure(self.identity, self.limits) or ():
            # dockerd would still create the parent (without limits): say so in the record
            self.event(
                "cgroup_warning",
                user=self.identity.user,
                uid=self.identity.uid,
                result="warn",
                reason=warning,
            )

    async def _create_volumes(self, body: dict[str, Any]) -> Decision | None:
        """Named volumes that did not exist when the policy looked: created owned (dockerd
        would create them unlabelled, invisible to their creator). Those it saw are not
        looked up again."""
        for name in dict.fromkeys(create_rules.referenced_volumes(body)):
            if related_key(ObjectRef("volume", name)) in self.state.related:
                continue
            labels = {LABEL_USER: self.identity.user}
            answer = await self.docker.request(
                "POST", "/volumes/create", body={"Name": name, "Labels": labels}
            )
            # dockerd answers an existing name with that volume: someone else's created since
            # the policy looked is refused as missing, as it would have been then.
            owner = ((answer or {}).get("Labels") or {}).get(LABEL_USER)
            if owner != self.identity.user and not self.limits.is_admin:
                return replace(not_found("volume", name), status=400)
        return None

    async def _reserve(self, body: dict[str, Any]) -> Decision | None:
        if self.decision.gpu_request is None:
            return None
        if self.gpus is None:
            return NO_GPUS
        # A client that hangs up while this waits cancels it (the gateway watches the client):
        # the broker takes the request out of the queue and nothing is reserved for it.
        outcome = await self.gpus.reserve(
            self.identity,
            self.limits,
            self.decision.gpu_request,
            body,
            self.clock(),
            tell=self.tell,
        )
        if isinstance(outcome, Decision):
            return outcome
        self.reservation, self.step = outcome, Step.RESERVED
        self.devices = list(outcome.device_ids)
        return None

    def _refuse(self, refusal: Decision) -> Decision:
        self._rollback()
        self.step = Step.REFUSED
        self.record(refusal)
        return refusal

    # ---- dockerd's answer and the end of the exchange ---------------------------------------

    def on_response(self, status: int, data: bytes) -> None:
        container_id = created_id(status, data)
        if container_id is None:
            return
        self.container_id = container_id
        if self.created is not None:
            self.created(container_id)
        self.event(
            "created",
            user=self.identity.user,
            uid=self.identity.uid,
            container=container_id,
            result="allow",
            changes=list(self.decision.changes),
            devices=self.devices,
        )
        if self.reservation is None:
            self.step = Step.CREATED
            return
        assert self.gpus is not None
        self.gpus.bind(self.reservation, container_id)
        self.step = Step.BOUND

    def on_close(self, ok: bool) -> None:
        """The exchange is over: a reservation not bound by now never will be."""
        if self.step is not Step.BOUND:
            self._rollback()

    def _rollback(self) -> None:
        if self.reservation is None or self.gpus is None:
            return
        reservation, self.reservation = self.reservation, None
        self.gpus.rollback(reservation)
        self.step = Step.ROLLED_BACK


def created_id(status: int, data: bytes) -> str | None:
    """The new container's ID from dockerd's 201 answer (None for anything else)."""
    if status != 201:
        return None
    try:
        value = json.loads(data).get("Id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None
