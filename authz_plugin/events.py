"""Following dockerd: container events drive the ledger; a periodic reconcile catches the rest.

Docker is the source of truth. Whenever the event stream (re)connects, the ledger is rebuilt
from container labels first, so anything that happened while we were not listening (a crash,
a restart of ds01d or dockerd) is accounted for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .docker_client import DockerClient
from .gpus import GpuBroker, container_summaries

log = logging.getLogger("ds01.events")

RECONCILE_SECONDS = 60.0
TICK_SECONDS = 2.0

Listener = Callable[[dict[str, Any]], Awaitable[None] | None]


class EventWatcher:
    def __init__(
        self, docker: DockerClient, broker: GpuBroker | None, clock: Callable[[], float]
    ) -> None:
        self.docker = docker
        self.broker = broker
        self.clock = clock
        self.listeners: list[Listener] = []
        self.connected = asyncio.Event()

    async def reconcile(self) -> None:
        if self.broker is None:
            return
        summaries = await container_summaries(self.docker)
        self.broker.rebuild(summaries, self.clock())

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
                log.warning(
                    "container %s holds GPUs the ledger lost; reconciling", container_id[:12]
                )
                await self.reconcile()
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
