"""The gateway works out who a connection is once, on its first request, and keeps it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from authz_plugin.docker_client import DockerClient
from authz_plugin.gateway.handler import GatewayHandler
from authz_plugin.gateway.types import Client, Forward, PeerCred, Reply, RequestHead
from authz_plugin.policy_store import PolicyStore
from authz_plugin.service import Service

PID = 4242
PING = RequestHead("GET", "/v1.41/_ping", (("Host", "docker"),))


@pytest.fixture
async def handler(tmp_path) -> AsyncIterator[GatewayHandler]:
    # dockerd is unreachable: any container lookup turns into a 502 reply
    service = Service(PolicyStore(None), DockerClient(f"unix://{tmp_path}/none.sock"))
    yield GatewayHandler(service, proc=str(tmp_path))
    await service.docker.close()


def _cgroup(tmp_path, path: str) -> None:
    (tmp_path / str(PID)).mkdir(exist_ok=True)
    (tmp_path / str(PID) / "cgroup").write_text(f"12:memory:{path}\n")


async def test_identity_is_fixed_for_the_life_of_a_connection(tmp_path, handler):
    _cgroup(tmp_path, "/user.slice")
    client = Client(PeerCred(PID, os.getuid(), os.getgid()))
    assert isinstance(await handler.decide(client, PING, None), Forward)
    first = client.context
    assert first is not None and first.uid == os.getuid()
    # the pid now looks like a container process (pid reuse): this connection is unchanged
    _cgroup(tmp_path, "/docker/" + "ab" * 32)
    assert isinstance(await handler.decide(client, PING, None), Forward)
    assert client.context is first


async def test_a_new_connection_is_identified_afresh(tmp_path, handler):
    _cgroup(tmp_path, "/docker/" + "ab" * 32)
    client = Client(PeerCred(PID, os.getuid(), os.getgid()))
    answer = await handler.decide(client, PING, None)
    # a process in a container is its owner's, which takes a lookup dockerd cannot answer here
    # (an unreachable dockerd is explained as such, not as an internal error)
    assert isinstance(answer, Reply) and answer.status == 502
    assert b"dockerd is not reachable" in answer.body
    assert client.context is None  # not remembered: the next request tries again
