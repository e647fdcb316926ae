"""Following dockerd: container events drive the ledger; a periodic reconcile catches the rest.

Docker is the source of truth. Whenever the event stream (re)connects, the ledger is rebuilt
from container labels first, so anything that happened while we were not listening (a crash,
a restart of ds01d or dockerd) is accounted for.

A create the ledger did not expect (a ``ds01.devices`` claim it neither holds nor reserved:
an image label, root creating directly, a create in flight when ds01d restarted) costs one
inspect of that container, never a full reconcile; full reconciles that events ask for run
at most once per ``EVENT_RECONCILE_SECONDS``, however many events come.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ds01d.gpus import GpuBroker, container_summaries, inspect_summary
from ds01d.ports import DockerApi

log = logging.getLogger("ds01.events")

RECONCILE_SECONDS = 60.0
TICK_SECONDS = 2.0
# Events may ask for a full reconcile at most this often (the rest wait for that one).
EVENT_RECONCILE_SECONDS = 10.0

Listener = Callable[[dict[str, Any]], Awaitable[None] | None]


class EventWatcher:
    def __init__(
        self, docker: DockerApi, broker: GpuBroker | None, clock: Callable[[], float]
    ) -> None:
        self.docker = docker
        self.broker = broker
        self.clock = clock
        self.listeners: list[Listener] = []
        self.connected = asyncio.Event()
        self.reconcile_interval = EVENT_RECONCILE_SECONDS
        self._last_reconcile: float | None = None
        self._reconcile_soon: asyncio.Task[None] | None = None

    async def reconcile(self) -> None:
        if self.broker is None:
            return
        self._last_reconcile = self.clock()
        # Creates go on while dockerd is listed and inspected: what the ledger records
        # after this mark is newer than the listing and survives the rebuild.
        mark = self.broker.ledger.version
        summaries = await container_summaries(self.docker)
        self.broker.rebuild(summaries, self.clock(), since=mark)

    def request_reconcile(self) -> None:
        """A full reconcile soon: now if none ran for a while, else one at the interval's end.

        However many events ask, at most one runs per ``reconcile_interval`` seconds.
        """
        if self._reconcile_soon is not None and not self._reconcile_soon.done():
            return  # one is already due; it will see this event's container too
        last = self._last_reconcile
        delay = 0.0 if last is None else max(0.0, last + self.reconcile_interval - self.clock())
        self._reconcile_soon = asyncio.create_task(self._reconcile_after(delay))

    async def _reconcile_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self.reconcile()
        except Exception as exc:
            log.warning("reconcile failed: %s", exc)

    async def check_created(self, container_id: str) -> None:
        """An unexpected ``ds01.devices`` claim: verify that one container, nothing else."""
        if self.broker is None:
            return
        try:
            summary = await inspect_summary(self.docker, container_id)
        except Exception as exc:
            log.warning("inspect of %s failed (%s); reconciling", container_id[:12], exc)
            self.request_reconcile()
            return
        if summary is not None:
            self.broker.check_container(summary, self.clock())

    async def follow(self) -> None:
        """Forever: rebuild, then apply events as they come; reconnect after errors."""
        backoff = 0.5
        while True:
            try:
                since = self.clock()
                await self.reconcile()
                self.connected.set()
                backoff = 0.5
                async for event in self.docker.events(since=since):
                    await self.handle(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected.clear()
                log.warning("docker events interrupted (%s); reconnecting", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def handle(self, event: dict[str, Any]) -> None:
        action = (event.get("Action") or event.get("status") or "").split(":")[0]
        container_id = event.get("id") or (event.get("Actor") or {}).get("ID") or ""
        now = self.clock()
        if self.broker is not None and container_id:
            labels = (event.get("Actor") or {}).get("Attributes") or {}
            if action == "die":
                self.broker.container_died(container_id, now, labels)
            elif action == "destroy":
                self.broker.container_destroyed(container_id)
            elif action == "create" and not self.broker.accounts_for(container_id, labels):
                log.info("container %s claims GPUs; checking it", container_id[:12])
                await self.check_created(container_id)
        for listener in self.listeners:
            result = listener(event)
            if asyncio.iscoroutine(result):
                await result

    async def periodic(self) -> None:
        """Holds that ran out, queue deadlines, and a full reconcile now and then."""
        last = self.clock()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            if self.broker is not None:
                self.broker.tick(self.clock())
            if self.clock() - last >= RECONCILE_SECONDS:
                last = self.clock()
                try:
                    await self.reconcile()
                except Exception as exc:
                    log.warning("periodic reconcile failed: %s", exc)
