"""Where decisions and GPU state go besides the caller: Prometheus, the audit log, DCGM's map.

One place turns a Decision into its metric sample and its audit line, so both always agree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

from allocator.ledger import Ledger, State
from authz_plugin.authz import Authorizer, AuthzAnswer, AuthzRequest
from ds01d.host.dcgm_mapping import JobMappingDir
from ds01d.observe.audit import AuditLog
from ds01d.observe.metrics import DeviceRow, Metrics
from policy.decision import Decision
from policy.engine import endpoint_of
from policy.identity import Identity
from policy.routes import Route

log = logging.getLogger("ds01.recorder")

_METRIC_STATE = {State.RESERVED: "reserved", State.BOUND: "allocated", State.HELD: "held"}
# Reads that happen constantly and change nothing are counted but not written to the audit log.
_QUIET = {
    "/_ping",
    "/version",
    "/info",
    "/events",
    "/containers/json",
    "/images/json",
    "/containers/{id}/json",
    "/exec/{id}/json",
    "/volumes",
    "/networks",
}


class Recorder:
    def __init__(
        self,
        metrics: Metrics | None,
        audit: AuditLog | None,
        job_mapping: JobMappingDir | None = None,
    ) -> None:
        self.metrics = metrics
        self.audit = audit
        self.job_mapping = job_mapping

    def decision(
        self,
        door: str,
        route: Route | None,
        identity: Identity,
        decision: Decision,
        seconds: float,
        container: str | None = None,
    ) -> None:
        endpoint = route.endpoint if route else "unroutable"
        if self.metrics is not None:
            # The AuthZ door's latency is timed around each whole plugin call (timed_authz),
            # which also covers the calls that need no decision (gateway tickets).
            timed = seconds if door != "authz" else None
            self.metrics.record_decision(door, endpoint, decision.allowed, decision.code, timed)
        if self.audit is None:
            return
        if (
            decision.allowed
            and endpoint in _QUIET
            # direct access is audited for what it does, not for root's routine reads; an
            # admin reading another user's object is; the owner filter on a list is routine
            and (not decision.audited or identity.is_direct)
        ):
            return
        self.audit.record(
            "decision" if not decision.audited else "admin",
            user=identity.user,
            uid=identity.uid,
            endpoint=f"{route.method} {route.path}" if route else endpoint,
            container=container,
            result="allow" if decision.allowed else "deny",
            reason=decision.code if decision.allowed else decision.message,
            changes=list(decision.changes) or None,
            door=door,
            channel=identity.channel.value,
        )

    def timed_authz(self, authorize: Authorizer) -> Authorizer:
        """``authorize`` observing ``ds01_authz_request_duration_seconds`` on every call.

        Every AuthZ call dockerd makes is timed, whatever answers it: a decision for direct
        access, the re-check of a gateway ticket, ds01d's own calls, and the response phase.
        An answer given at once stays at once (no coroutine around it).
        """

        def timed(req: AuthzRequest) -> AuthzAnswer | Awaitable[AuthzAnswer]:
            started = time.perf_counter()
            try:
                answer = authorize(req)
            except BaseException:
                self._observe_authz(req, started)
                raise
            if isinstance(answer, AuthzAnswer):
                self._observe_authz(req, started)
                return answer
            return self._timed_later(req, answer, started)

        return timed

    async def _timed_later(
        self, req: AuthzRequest, pending: Awaitable[AuthzAnswer], started: float
    ) -> AuthzAnswer:
        try:
            return await pending
        finally:
            self._observe_authz(req, started)

    def _observe_authz(self, req: AuthzRequest, started: float) -> None:
        if self.metrics is not None:
            endpoint = endpoint_of(req.method, req.uri)
            self.metrics.observe_latency("authz", endpoint, time.perf_counter() - started)

    def event(self, event: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.record(event, **fields)

    def gpu_state(self, ledger: Ledger, queue_length: int) -> None:
        """Mirror the ledger into metrics and dcgm-exporter's job-mapping directory."""
        snapshot = ledger.snapshot()
        rows: list[DeviceRow] = []
        usage: dict[tuple[str, str], float] = {}
        mapping: dict[tuple[int, int | None], str] = {}
        for status in snapshot.devices:
            device, alloc = status.device, status.allocation
            state = (
                "unusable"
                if device is None
                else (_METRIC_STATE.get(alloc.state) if alloc else "free")
            )
            row: DeviceRow = {
                "device": status.uuid,
                "kind": device.kind if device else "gpu",
                "state": state or "free",
                "profile": device.profile if device else "",
            }
            if alloc is not None:
                row["user"], row["container"] = alloc.user, (alloc.container_id or "")[:12] or None
                key = (alloc.user, alloc.group)
                if device is not None:
                    usage[key] = usage.get(key, 0.0) + device.gpueq
                    if device.kind == "gpu" or device.gi_id is not None:  # dcgm names GPU.GI
                        gi = device.gi_id if device.kind == "mig" else None
                        mapping[(device.gpu_index, gi)] = (
                            f"{alloc.user}/{(alloc.container_id or 'creating')[:12]}"
                        )
            rows.append(row)
        if self.metrics is not None:
            self.metrics.set_devices(rows)
            self.metrics.set_gpu_usage(
                [{"user": u, "group": g, "gpu_equivalents": v} for (u, g), v in usage.items()]
            )
            self.metrics.set_queue_length(queue_length)
        if self.job_mapping is not None:
            try:
                self.job_mapping.update(mapping)
            except OSError as exc:
                log.warning("cannot update the DCGM job-mapping directory: %s", exc)
