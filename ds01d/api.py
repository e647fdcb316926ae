"""DS01's own small JSON API, served by the gateway under ``/ds01/v1/`` (never forwarded).

Because it is reached through the gateway socket, it knows who is asking (SO_PEERCRED):
``ds01 limits`` shows *your* limits without any login. Admin-only views say so when refused.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from allocator.ledger import Allocation
from ds01d.service import Service
from formats.labels import LABEL_DEVICES, LABEL_USER, parse_devices
from policy.engine import decide
from policy.identity import Identity
from policy.limits import Limits
from policy.state import Request, State

PREFIX = "/ds01/v1/"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _alloc_row(alloc: Allocation, ledger: Any, show_user: bool) -> dict[str, Any]:
    return {
        "devices": [
            {
                "uuid": u,
                "label": ledger.inventory.device(u).describe() if ledger.inventory.device(u) else u,
            }
            for u in alloc.devices
        ],
        "user": alloc.user if show_user else None,
        "container": alloc.container_id,
        "state": alloc.state.value,
        "since": alloc.since,
        "hold_until": alloc.hold_until,
        "gpueq": alloc.gpueq,
    }


class Api:
    def __init__(self, service: Service, lifecycle: Any = None) -> None:
        self.service = service
        self.lifecycle = lifecycle

    async def handle(
        self, identity: Identity, method: str, target: str
    ) -> tuple[int, dict[str, Any]]:
        split = urlsplit(target)
        name = split.path[len(PREFIX) :].strip("/")
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        limits = self.service.policy.limits(identity)
        parts = name.split("/")
        try:
            if method == "GET" and name == "whoami":
                return 200, self.whoami(identity, limits)
            if method == "GET" and name == "limits":
                return 200, await self.limits(identity, limits)
            if method == "GET" and name == "containers":
                return 200, await self.containers(identity, limits, query.get("all") == "1")
            if method == "GET" and name == "gpus":
                return 200, self.gpus(limits)
            if method == "GET" and parts[0] == "why" and len(parts) == 2:
                return 200, await self.why(identity, limits, parts[1])
            if method == "POST" and parts[0] == "keepalive" and len(parts) == 2:
                return 200, await self.keepalive(identity, limits, parts[1])
            if method == "GET" and name == "slices":
                return 200, self.slices(identity, limits)
            if method == "GET" and name == "users":
                self._admin(limits, "ds01 users")
                return 200, await self.users()
            if method == "GET" and parts[0] == "explain" and len(parts) == 2:
                return 200, self.explain(identity, limits, parts[1])
            if method == "GET" and name == "policy":
                return 200, self.policy(limits)
            if method == "GET" and name == "events":
                self._admin(limits, "ds01 events")
                return 200, self.events(int(query.get("n", "50")), query.get("since"))
        except ApiError as exc:
            return exc.status, {"message": str(exc)}
        except ValueError as exc:
            return 400, {"message": f"ds01: bad request ({exc})"}
        return 404, {"message": f"ds01: no such DS01 API call: {method} {split.path}"}

    @staticmethod
    def _admin(limits: Limits, what: str) -> None:
        if not limits.is_admin:
            raise ApiError(403, f"ds01: {what} is for admins. To fix: ask an admin of this server")

    def whoami(self, identity: Identity, limits: Limits) -> dict[str, Any]:
        return {
            "user": identity.user,
            "uid": identity.uid,
            "groups": sorted(identity.groups),
            "group": limits.group,
            "admin": limits.is_admin,
            "known": limits.known,
        }

    async def limits(self, identity: Identity, limits: Limits) -> dict[str, Any]:
        broker = self.service.gpus
        mine = [a for a in broker.ledger.allocations() if a.user == identity.user] if broker else []
        queue = []
        if broker is not None:
            for place, ticket in enumerate(broker.queue.tickets(), start=1):
                if ticket.user == identity.user:
                    queue.append(
                        {
                            "position": place,
                            "request": ticket.request.describe(),
                            "waiting_since": ticket.enqueued_at,
                            "deadline": ticket.deadline,
                        }
                    )
        containers = self.service.owners.screen(
            await self.service.docker.list_containers({"label": [f"{LABEL_USER}={identity.user}"]}),
            identity.user,
        )
        usage = broker.ledger.usage(identity.user) if broker else None
        return {
            **self.whoami(identity, limits),
            "limits": limits.as_dict(),
            "sources": limits.sources,
            "usage": {
                "containers": len(containers),
                "running": sum(1 for c in containers if c.get("State") == "running"),
                "whole_gpus": usage.whole if usage else 0,
                "mig_instances": usage.mig if usage else 0,
                "gpu_equivalents": usage.gpueq if usage else 0.0,
                "allocations": [_alloc_row(a, broker.ledger, True) for a in mine],
            },
            "queue": queue,
            "lifecycle": self._lifecycle_rows(containers),
        }

    def _lifecycle_rows(self, containers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per container: idle time, runtime, when and why it will be stopped."""
        if self.lifecycle is None:
            return []
        rows = []
        for c in containers:
            status = self.lifecycle.status(c.get("Id", ""))
            if status is not None:
                rows.append({"name": (c.get("Names") or ["?"])[0].lstrip("/"), **status})
        return rows

    async def containers(
        self, identity: Identity, limits: Limits, everyone: bool
    ) -> dict[str, Any]:
        if everyone:
            self._admin(limits, "ds01 ps --all")
        filters = None if everyone else {"label": [f"{LABEL_USER}={identity.user}"]}
        listed = await self.service.docker.list_containers(filters)
        if not everyone:
            listed = self.service.owners.screen(listed, identity.user)
        rows = []
        for c in listed:
            labels = c.get("Labels") or {}
            row = {
                "id": c.get("Id"),
                "name": (c.get("Names") or ["?"])[0].lstrip("/"),
                "user": labels.get(LABEL_USER),
                "image": c.get("Image"),
                "state": c.get("State"),
                "status": c.get("Status"),
                "created": c.get("Created"),
                "devices": list(parse_devices(labels.get(LABEL_DEVICES))),
            }
            if self.lifecycle is not None:
                row["lifecycle"] = self.lifecycle.status(c.get("Id", ""))
            rows.append(row)
        return {"containers": rows}

    def gpus(self, limits: Limits) -> dict[str, Any]:
        broker = self.service.gpus
        if broker is None:
            return {"gpus": [], "devices": [], "queue": [], "problems": ["no GPU broker"]}
        snap = broker.ledger.snapshot()
        admin = limits.is_admin
        devices = []
        for status in snap.devices:
            d, a = status.device, status.allocation
            devices.append(
                {
                    "uuid": status.uuid,
                    "label": d.describe() if d else status.uuid,
                    "kind": d.kind if d else "?",
                    "profile": d.profile if d else "",
                    "gpu_index": d.gpu_index if d else None,
                    "gpueq": d.gpueq if d else 0,
                    "state": a.state.value if a else ("free" if d else "lost"),
                    "user": (a.user if admin or a.user == limits.user else "(another user)")
                    if a
                    else None,
                    "container": (a.container_id if admin or a.user == limits.user else None)
                    if a
                    else None,
                    "since": a.since if a else None,
                    "hold_until": a.hold_until if a else None,
                }
            )
        queue = [
            {
                "position": i,
                "user": t.user if admin or t.user == limits.user else "(another user)",
                "priority": t.priority,
                "request": t.request.describe(),
                "waiting_since": t.enqueued_at,
            }
            for i, t in enumerate(broker.queue.tickets(), start=1)
        ]
        return {
            "gpus": [
                {
                    "index": g.index,
                    "uuid": g.uuid,
                    "name": g.name,
                    "mig": g.mig_enabled,
                    "usable": g.usable,
                    "problem": g.problem,
                }
                for g in snap.gpus
            ],
            "devices": devices,
            "queue": queue,
            "problems": list(snap.problems),
            "conflicts": [c.message for c in broker.conflicts] if admin else [],
        }

    async def _owned_container(
        self, identity: Identity, limits: Limits, ref: str
    ) -> dict[str, Any]:
        info = await self.service.docker.inspect_container(ref)
        if info is None or (
            self.service.owners.learn(info) != identity.user and not limits.is_admin
        ):
            raise ApiError(404, f"No such container: {ref}")
        return info

    async def why(self, identity: Identity, limits: Limits, ref: str) -> dict[str, Any]:
        """The audit trail of one of the caller's containers: decisions, allocations, stops."""
        info = await self._owned_container(identity, limits, ref)
        container_id = info["Id"]
        audit = getattr(self.service.recorder, "audit", None)

        def about_it(event: dict[str, Any]) -> bool:
            cid = event.get("container") or ""
            return bool(cid) and container_id.startswith(cid)

        events = audit.tail(200, about_it) if audit is not None else []
        return {
            "container": container_id,
            "name": info.get("Name", "").lstrip("/"),
            "events": events,
        }

    async def keepalive(self, identity: Identity, limits: Limits, ref: str) -> dict[str, Any]:
        info = await self._owned_container(identity, limits, ref)
        if self.lifecycle is None:
            raise ApiError(503, "ds01: the lifecycle loop is not running on this server")
        self.lifecycle.keepalive(info["Id"])
        return {"container": info["Id"], "kept_alive": True}

    async def users(self) -> dict[str, Any]:
        by_user: dict[str, dict[str, Any]] = {}
        for c in await self.service.docker.list_containers():
            user = (c.get("Labels") or {}).get(LABEL_USER) or "(outside DS01)"
            row = by_user.setdefault(
                user, {"user": user, "containers": 0, "running": 0, "gpueq": 0.0, "devices": 0}
            )
            row["containers"] += 1
            row["running"] += c.get("State") == "running"
        broker = self.service.gpus
        if broker is not None:
            for alloc in broker.ledger.allocations():
                row = by_user.setdefault(
                    alloc.user,
                    {"user": alloc.user, "containers": 0, "running": 0, "gpueq": 0.0, "devices": 0},
                )
                row["gpueq"] += alloc.gpueq
                row["devices"] += len(alloc.devices)
        for row in by_user.values():
            limits = self.service.policy.limits_for_user(row["user"])
            row["group"] = limits.group
            row["max_containers"] = limits.max_containers
            row["max_gpu_equivalents"] = limits.max_gpu_equivalents
        return {"users": sorted(by_user.values(), key=lambda r: r["user"])}

    def slices(self, identity: Identity, limits: Limits) -> dict[str, Any]:
        """Each user's aggregate limits as the policy says and as the kernel holds them."""
        cgroups = self.service.cgroups
        if cgroups is None:
            raise ApiError(
                503, "ds01: per-user cgroups are not managed on this server (--no-cgroups)"
            )
        users = [] if limits.is_admin else [identity.user]
        limits_for = self.service.policy.limits_for_user
        rows = cgroups.report(users, limits_for)
        for row in rows:
            row["group"] = limits_for(row["user"]).group
        return {"slices": rows}

    def explain(self, identity: Identity, limits: Limits, user: str) -> dict[str, Any]:
        """The limits ds01d applies to ``user`` now (their Unix groups included), where each
        value comes from, and whether they are refused outright. Others' are for admins."""
        if user != identity.user:
            self._admin(limits, "ds01 policy explain for another user")
        store = self.service.policy
        theirs = limits if user == identity.user else store.limits_for_user(user)
        who = identity if user == identity.user else Identity(uid=None, user=user)
        # Ask the engine, so the refusal is the one their next docker command would get.
        verdict = decide(Request("GET", "/containers/json"), who, theirs, State())
        refused = (
            {"code": verdict.code, "message": verdict.message}
            if verdict.code == "unknown_user"
            else None
        )
        return {
            "user": user,
            "group": theirs.group,
            "known": theirs.known,
            "admin": theirs.is_admin,
            "values": theirs.as_dict(),
            "sources": theirs.sources,
            "refused": refused,
            "policy": store.document.source,
            "sha256": store.sha256,
        }

    def policy(self, limits: Limits) -> dict[str, Any]:
        """The policy in force, and a rejected reload that left it in force (error: admins)."""
        store = self.service.policy
        rejected = store.rejected
        return {
            "source": store.document.source,
            "sha256": store.sha256,
            "loaded_at": store.loaded_at,
            "admin": limits.is_admin,
            "rejected": None
            if rejected is None
            else {
                "error": rejected.error if limits.is_admin else "(shown to admins)",
                "at": rejected.at,
            },
        }

    def events(self, n: int, since: str | None) -> dict[str, Any]:
        audit = getattr(self.service.recorder, "audit", None)
        if audit is None:
            return {"events": []}
        match = (lambda e: e.get("time", "") > since) if since else None
        return {"events": audit.tail(max(1, min(n, 1000)), match)}
