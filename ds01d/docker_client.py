"""The one chokepoint through which ds01d talks to the real dockerd (aiohttp over a unix socket)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from ds01d.ports import DockerApi
from ds01d.unix_http import socket_path

__all__ = ["API", "DockerClient", "DockerError", "socket_path", "stop_container"]

API = "/v1.41"  # dockerd 20.10 and newer all speak it


class DockerError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"dockerd answered {status}: {message}")
        self.status = status
        self.message = message


async def stop_container(docker: DockerApi, container_id: str, grace: float) -> None:
    """Stop a container the one way ds01d does: SIGTERM, then SIGKILL after ``grace`` seconds.

    ``grace`` is the policy's ``stop_grace`` (``policy.lifecycle.Settings``), for the lifecycle
    and preemption alike; dockerd takes whole seconds.
    """
    path = f"/containers/{quote(container_id, safe='')}/stop"
    await docker.request("POST", path, params={"t": str(math.ceil(max(grace, 0.0)))})


class DockerClient:
    """dockerd's API over its Unix socket (satisfies ``ds01d.ports.DockerApi``)."""

    def __init__(self, docker_host: str) -> None:
        self.path = socket_path(docker_host)
        self.headers: dict[str, str] = {}  # sent with every call (ds01d's internal token)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.UnixConnector(path=self.path, limit=32)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=60), headers=self.headers
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, *, params: dict[str, str] | None = None, body: Any = None
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self._client().request(
                method, f"http://docker{API}{path}", params=params, data=data, headers=headers
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # Callers handle DockerError (and explain it); a dead socket is one too.
            raise DockerError(503, f"dockerd is not reachable ({exc})") from exc
        if status >= 400:
            try:
                message = json.loads(text).get("message", text)
            except (ValueError, AttributeError):
                message = text
            raise DockerError(status, message)
        return json.loads(text) if text.strip() else None

    async def ping(self) -> dict[str, str]:
        try:
            async with self._client().get("http://docker/_ping") as resp:
                await resp.read()
                status, headers = resp.status, dict(resp.headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DockerError(503, f"dockerd is not reachable ({exc})") from exc
        if status != 200:
            raise DockerError(status, f"dockerd answered its ping with {status}")
        return headers

    async def _get_or_none(self, path: str) -> dict[str, Any] | None:
        """GET an object; None when dockerd says it does not exist."""
        try:
            return await self.request("GET", path)
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise

    async def inspect_container(self, ref: str) -> dict[str, Any] | None:
        return await self._get_or_none(f"/containers/{quote(ref, safe='')}/json")

    async def inspect_image(self, ref: str) -> dict[str, Any] | None:
        # A reference's slashes and tag colon stay as they are: dockerd routes /images/{name}.
        return await self._get_or_none(f"/images/{quote(ref, safe='/:@')}/json")

    async def inspect_volume(self, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(f"/volumes/{quote(name, safe='')}")

    async def inspect_network(self, ref: str) -> dict[str, Any] | None:
        return await self._get_or_none(f"/networks/{quote(ref, safe='')}")

    async def inspect_exec(self, exec_id: str) -> dict[str, Any] | None:
        return await self._get_or_none(f"/exec/{quote(exec_id, safe='')}/json")

    async def list_containers(
        self, filters: dict[str, list[str]] | None = None
    ) -> list[dict[str, Any]]:
        params = {"all": "1"}
        if filters:
            params["filters"] = json.dumps(filters)
        return await self.request("GET", "/containers/json", params=params) or []

    async def events(self, since: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """Docker events as they happen (no total timeout), one dict each."""
        params = {"filters": json.dumps({"type": ["container"]})}
        if since is not None:
            params["since"] = f"{since:.9f}"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self._client().get(
            f"http://docker{API}/events", params=params, timeout=timeout
        ) as resp:
            if resp.status != 200:
                raise DockerError(resp.status, await resp.text())
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)
