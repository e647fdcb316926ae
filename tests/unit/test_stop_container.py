"""Stopping a container is one function with one grace period: the policy's ``stop_grace``.

The lifecycle (idle, max runtime) and the GPU broker's preemption both stop containers; both
go through ``ds01d.docker_client.stop_container`` with the policy's grace.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ds01d.docker_client import stop_container
from tests.unit.daemon_helpers import make_daemon


class RecordingDocker:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str] | None]] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self.calls.append((method, path, kwargs.get("params")))
        return None


def test_stop_container_sends_whole_seconds_of_grace() -> None:
    docker = RecordingDocker()
    asyncio.run(stop_container(docker, "abc", 29.5))  # type: ignore[arg-type]
    asyncio.run(stop_container(docker, "abc", 0))  # type: ignore[arg-type]
    assert docker.calls == [
        ("POST", "/containers/abc/stop", {"t": "30"}),
        ("POST", "/containers/abc/stop", {"t": "0"}),
    ]


def test_preemption_stops_with_the_policys_stop_grace(tmp_path) -> None:
    """Not a grace of its own (it was 10 s while the lifecycle used ``stop_grace``)."""
    daemon = make_daemon(tmp_path, "stop_grace: 45s\n")
    try:
        docker = RecordingDocker()
        daemon.docker = docker  # type: ignore[assignment]
        asyncio.run(daemon.broker.stop_container("c1", "preempted"))
        assert docker.calls == [("POST", "/containers/c1/stop", {"t": "45"})]
    finally:
        daemon.audit.close()
