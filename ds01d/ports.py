"""The daemon's two seams to the host, as typed Protocols: dockerd's API and the cgroup backend.

The daemon is written against these, not against ``DockerClient`` or ``UserCgroups``, so the
unit tests can pass in-memory fakes. Each Protocol has one contract test that runs the same
assertions on the real implementation and on the unit tests' fake
(tests/integration/test_docker_api_contract.py, tests/integration/test_cgroup_contract.py), so
the fakes cannot drift from what the real thing does, errors included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from policy.identity import Identity
from policy.limits import Limits


class DockerApi(Protocol):
    """What ds01d asks of dockerd (``ds01d.docker_client.DockerClient`` is the real one).

    Lookups answer None for an object dockerd does not have (404); any other refusal, and an
    unreachable dockerd (503), raises ``DockerError`` with dockerd's status and message.
    """

    headers: dict[str, str]  # sent with every call (ds01d's internal token)

    async def request(
        self, method: str, path: str, *, params: dict[str, str] | None = None, body: Any = None
    ) -> Any:
        """One API call (``path`` without the ``/v1.41`` prefix); the decoded JSON answer."""
        ...

    async def inspect_container(self, ref: str) -> dict[str, Any] | None: ...

    async def inspect_image(self, ref: str) -> dict[str, Any] | None: ...

    async def inspect_volume(self, name: str) -> dict[str, Any] | None: ...

    async def inspect_network(self, ref: str) -> dict[str, Any] | None: ...

    async def inspect_exec(self, exec_id: str) -> dict[str, Any] | None: ...

    async def list_containers(
        self, filters: dict[str, list[str]] | None = None
    ) -> list[dict[str, Any]]:
        """Every container, stopped ones too (``docker ps -a``), as dockerd lists them."""
        ...

    async def ping(self) -> dict[str, str]:
        """The headers of dockerd's answer to ``GET /_ping`` (``Api-Version``, ``Ostype`` ...),
        what a client negotiates its API version from."""
        ...

    def events(self, since: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """Container events as they happen, from ``since`` (a Unix time) when given."""
        ...

    async def close(self) -> None: ...


class CgroupBackend(Protocol):
    """Each user's parent cgroup kept in line with the policy (``UserCgroups`` is the real one).

    Never raises for a failure of the host: it is returned as a warning (``"<user>: why"``), so
    a create goes on and the daemon stays up.
    """

    async def ensure(self, identity: Identity, limits: Limits) -> list[str]:
        """Before a create: the user's parent exists and holds their aggregate limits."""
        ...

    def refresh(self, limits_for: Callable[[str], Limits]) -> list[str]:
        """After a policy change: every existing user's parent gets their new limits."""
        ...

    def ensure_builds(self, cap: Mapping[str, Any]) -> list[str]:
        """The shared BuildKit build cgroup holds the policy's ``builds`` cap."""
        ...

    def report(self, users: list[str], limits_for: Callable[[str], Limits]) -> list[dict[str, Any]]:
        """For ``ds01 slices``: per user, the parent, policy and kernel limits, and current use."""
        ...
