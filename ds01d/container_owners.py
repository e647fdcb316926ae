"""Who owns each container, as verified, for the lists a user sees (``docker ps``, ``ds01 ps``).

dockerd can filter a list only by label, and a label can come from an image (dockerd copies
an image's labels onto the containers it makes itself, such as a legacy build's steps). So a
list filtered by ``ds01.user=<me>`` is screened again here: an entry stays only when DS01
verified that container as the user's (``policy.slices.container_owner``: the label and the
user's cgroup parent). The IDs come from the create saga (DS01 made the container), an
inspect (the verification itself), and a scan at start; a listed container not yet verified
is left out of that one list and verified in the background, so a list never shows a
container unchecked (a container DS01 creates is known before its creator sees its ID).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from ds01d.ports import DockerApi
from formats.labels import LABEL_USER
from policy.slices import container_owner

log = logging.getLogger("ds01.owners")


class ContainerOwners:
    def __init__(self, docker: DockerApi) -> None:
        self.docker = docker
        self.owners: dict[str, str | None] = {}  # container ID -> verified owner (None: no one)
        self._pending: set[str] = set()
        self._worker: asyncio.Task[None] | None = None

    # -- what is known --------------------------------------------------------------------

    def created(self, container_id: str, user: str) -> None:
        """DS01 created this container for ``user`` (its label and cgroup parent say so)."""
        self.owners[container_id] = user

    def learn(self, info: dict[str, Any]) -> str | None:
        """Verify a container from its inspect; its owner, remembered."""
        owner = container_owner(
            (info.get("Config") or {}).get("Labels") or {}, info.get("HostConfig") or {}
        )
        container_id = info.get("Id")
        if isinstance(container_id, str) and container_id:
            self.owners[container_id] = owner
        return owner

    def forget(self, container_id: str) -> None:
        self.owners.pop(container_id, None)

    def on_event(self, event: dict[str, Any]) -> None:
        """A Docker event (an EventWatcher listener): destroyed containers are forgotten, and
        a labelled one created outside DS01 is verified before anyone lists it."""
        if event.get("Type", "container") != "container":
            return
        action = (event.get("Action") or event.get("status") or "").split(":")[0]
        container_id = event.get("id") or (event.get("Actor") or {}).get("ID") or ""
        if not container_id:
            return
        if action == "destroy":
            self.forget(container_id)
        elif action == "create" and container_id not in self.owners:
            attributes = (event.get("Actor") or {}).get("Attributes") or {}
            if attributes.get(LABEL_USER):
                self.verify_soon([container_id])

    # -- screening lists --------------------------------------------------------------------

    def screen(self, entries: Iterable[Any], user: str) -> list[Any]:
        """The entries of a container list that are ``user``'s; unknown ones are left out
        and verified soon."""
        shown, unknown = [], []
        for entry in entries:
            container_id = entry.get("Id") if isinstance(entry, dict) else None
            if not isinstance(container_id, str) or container_id not in self.owners:
                if isinstance(container_id, str) and container_id:
                    unknown.append(container_id)
                continue
            if self.owners[container_id] == user:
                shown.append(entry)
        if unknown:
            self.verify_soon(unknown)
        return shown

    # -- verifying -------------------------------------------------------------------------

    async def scan(self) -> None:
        """Verify every container that claims an owner (at start: lists then show them)."""
        listed = await self.docker.list_containers({"label": [LABEL_USER]})
        await self.verify([c.get("Id", "") for c in listed if c.get("Id") not in self.owners])

    async def verify(self, container_ids: Iterable[str]) -> None:
        for container_id in container_ids:
            info = await self.docker.inspect_container(container_id)
            if info is None:
                self.forget(container_id)
            else:
                self.learn(info)

    def verify_soon(self, container_ids: Iterable[str]) -> None:
        """Verify these in the background, one at a time, each once however often asked."""
        self._pending.update(c for c in container_ids if c not in self.owners)
        if self._pending and (self._worker is None or self._worker.done()):
            self._worker = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._pending:
            container_id = self._pending.pop()
            try:
                await self.verify([container_id])
            except Exception as exc:  # dockerd away: the next list asks again
                log.warning("could not verify container %s: %s", container_id[:12], exc)
