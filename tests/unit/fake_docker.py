"""An in-memory dockerd behind ``ds01d.ports.DockerApi``, for unit tests of the daemon's glue.

It answers like the real one for what ds01d uses: lookups by full ID, name or unique ID prefix,
None for a missing object, ``DockerError`` with dockerd's status and message for a refused call
(a missing image, a taken name, an exec in a stopped container), an existing volume's name
answered with that volume, label filters on the container list, and container events.
tests/integration/test_docker_api_contract.py runs the same assertions on it and on a real
dockerd, so it cannot drift.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

from ds01d.docker_client import DockerError

_ids = itertools.count(1)


def _new_id() -> str:
    return hashlib.sha256(f"fake-{next(_ids)}-{time.time_ns()}".encode()).hexdigest()


def _by_ref(objects: dict[str, dict[str, Any]], ref: str, name_key: str) -> dict[str, Any] | None:
    """dockerd's lookup order: full ID, then name, then a unique ID prefix."""
    if ref in objects:
        return objects[ref]
    for obj in objects.values():
        if obj[name_key].lstrip("/") == ref.lstrip("/"):
            return obj
    matches = [obj for oid, obj in objects.items() if ref and oid.startswith(ref)]
    return matches[0] if len(matches) == 1 else None


def _labels_match(labels: dict[str, str], wanted: list[str]) -> bool:
    for item in wanted:
        key, eq, value = item.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


class FakeDockerApi:
    """dockerd in memory: containers, images, volumes, networks, execs and events."""

    def __init__(self, images: tuple[str, ...] = ()) -> None:
        self.headers: dict[str, str] = {}
        self.images: dict[str, dict[str, Any]] = {}
        for tag in images:
            image_id = "sha256:" + _new_id()
            self.images[image_id] = {"Id": image_id, "RepoTags": [tag], "Config": {"Labels": {}}}
        self.containers: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.networks: dict[str, dict[str, Any]] = {}
        self.execs: dict[str, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []  # container events, oldest first
        self._changed = asyncio.Event()
        self.closed = False
        self.pings = 0

    # -- lookups (None when missing, like DockerClient) -----------------------------------

    async def inspect_container(self, ref: str) -> dict[str, Any] | None:
        return _by_ref(self.containers, ref, "Name")

    async def inspect_image(self, ref: str) -> dict[str, Any] | None:
        return self._image(ref)

    async def inspect_volume(self, name: str) -> dict[str, Any] | None:
        return self.volumes.get(name)

    async def inspect_network(self, ref: str) -> dict[str, Any] | None:
        return _by_ref(self.networks, ref, "Name")

    async def inspect_exec(self, exec_id: str) -> dict[str, Any] | None:
        return self.execs.get(exec_id)

    async def list_containers(
        self, filters: dict[str, list[str]] | None = None
    ) -> list[dict[str, Any]]:
        wanted = (filters or {}).get("label", [])
        return [
            {
                "Id": c["Id"],
                "Names": [c["Name"]],
                "Image": c["Config"]["Image"],
                "Labels": c["Config"]["Labels"],
                "State": c["State"]["Status"],
            }
            for c in self.containers.values()
            if _labels_match(c["Config"]["Labels"], wanted)
        ]

    async def ping(self) -> dict[str, str]:
        self.pings += 1
        return {
            "Api-Version": "1.41",
            "Cache-Control": "no-cache, no-store, must-revalidate",
            "Content-Length": "2",
            "Content-Type": "text/plain; charset=utf-8",
            "Docker-Experimental": "false",
            "Ostype": "linux",
            "Pragma": "no-cache",
            "Server": "Docker/20.10.24 (linux)",
            "Date": "Mon, 30 Nov 2026 15:11:56 GMT",
        }

    async def events(self, since: float | None = None) -> AsyncIterator[dict[str, Any]]:
        seen = 0
        while True:
            while seen < len(self.log):
                event = self.log[seen]
                seen += 1
                if since is None or event["timeNano"] >= since * 1e9:
                    yield event
            self._changed.clear()
            await self._changed.wait()

    async def close(self) -> None:
        self.closed = True

    # -- calls ------------------------------------------------------------------------------

    async def request(
        self, method: str, path: str, *, params: dict[str, str] | None = None, body: Any = None
    ) -> Any:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        params = params or {}
        match method, parts:
            case "POST", ["containers", "create"]:
                return self._create_container(params.get("name", ""), body or {})
            case "POST", ["containers", ref, "start"]:
                container = self._container(ref)
                container["State"].update(Status="running", Running=True)
                self._event(container, "start")
                return None
            case "POST", ["containers", ref, "stop"]:
                container = self._container(ref)
                container["State"].update(Status="exited", Running=False)
                self._event(container, "die")
                return None
            case "POST", ["containers", ref, "exec"]:
                return self._create_exec(self._container(ref), body or {})
            case "DELETE", ["containers", ref]:
                container = self._container(ref)
                if container["State"]["Running"] and params.get("force") not in ("1", "true"):
                    raise DockerError(409, "You cannot remove a running container")
                del self.containers[container["Id"]]
                self._event(container, "destroy")
                return None
            case "POST", ["volumes", "create"]:
                return self._create_volume(body or {})
            case "DELETE", ["volumes", name]:
                if self.volumes.pop(name, None) is None:
                    raise DockerError(404, f"get {name}: no such volume")
                return None
            case "POST", ["networks", "create"]:
                return self._create_network(body or {})
            case "GET", ["networks"]:
                wanted = json.loads(params.get("filters") or "{}").get("label", [])
                return [
                    n
                    for n in self.networks.values()
                    if _labels_match(n.get("Labels") or {}, wanted)
                ]
            case "DELETE", ["networks", ref]:
                network = _by_ref(self.networks, ref, "Name")
                if network is None:
                    raise DockerError(404, f"network {ref} not found")
                del self.networks[network["Id"]]
                return None
        raise DockerError(404, "page not found")

    def _image(self, ref: str) -> dict[str, Any] | None:
        tag = ref if ":" in ref.rsplit("/", 1)[-1] or ref.startswith("sha256:") else f"{ref}:latest"
        for image_id, image in self.images.items():
            if tag in image["RepoTags"] or image_id == ref:
                return image
        return None

    def _container(self, ref: str) -> dict[str, Any]:
        container = _by_ref(self.containers, ref, "Name")
        if container is None:
            raise DockerError(404, f"No such container: {ref}")
        return container

    def _create_container(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        image = self._image(body.get("Image", ""))
        if image is None:
            ref = body.get("Image", "")
            raise DockerError(404, f"No such image: {ref if ':' in ref else ref + ':latest'}")
        cid = _new_id()
        name = name or f"fake_{cid[:8]}"
        if any(c["Name"] == f"/{name}" for c in self.containers.values()):
            raise DockerError(
                409, f'Conflict. The container name "/{name}" is already in use by container'
            )
        config = {"Image": body["Image"], "Labels": dict(body.get("Labels") or {})}
        self.containers[cid] = {
            "Id": cid,
            "Name": f"/{name}",
            "Image": image["Id"],
            "Config": config,
            "State": {"Status": "created", "Running": False, "FinishedAt": "0001-01-01T00:00:00Z"},
            "HostConfig": dict(body.get("HostConfig") or {}),
        }
        self._event(self.containers[cid], "create")
        return {"Id": cid, "Warnings": []}

    def _create_exec(self, container: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        if not container["State"]["Running"]:
            raise DockerError(409, f"Container {container['Id']} is not running")
        exec_id = _new_id()
        self.execs[exec_id] = {
            "ID": exec_id,
            "ContainerID": container["Id"],
            "Running": False,
            "ProcessConfig": {"entrypoint": (body.get("Cmd") or [""])[0]},
        }
        return {"Id": exec_id}

    def _create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("Name") or _new_id()
        # dockerd answers an existing name with that volume, labels unchanged.
        return self.volumes.setdefault(
            name, {"Name": name, "Driver": "local", "Labels": dict(body.get("Labels") or {})}
        )

    def _create_network(self, body: dict[str, Any]) -> dict[str, Any]:
        nid = _new_id()
        self.networks[nid] = {
            "Id": nid,
            "Name": body.get("Name", ""),
            "Driver": "bridge",
            "Labels": dict(body.get("Labels") or {}),
        }
        return {"Id": nid, "Warning": ""}

    def _event(self, container: dict[str, Any], action: str) -> None:
        attributes = {**container["Config"]["Labels"], "name": container["Name"].lstrip("/")}
        now = time.time_ns()
        self.log.append(
            {
                "Type": "container",
                "Action": action,
                "Actor": {"ID": container["Id"], "Attributes": attributes},
                "time": now // 10**9,
                "timeNano": now,
            }
        )
        self._changed.set()
