"""The gateway works out who a connection is once, on its first request, and keeps it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from authz_plugin.docker_client import DockerClient
from authz_plugin.gateway.handler import GatewayHandler
from authz_plugin.gateway.types import Client, Forward, PeerCred, RequestHead
from authz_plugin.policy_store import PolicyStore
from authz_plugin.service import Service

PID = 4242
PING = RequestHead("GET", "/v1.41/_ping", (("Host", "docker"),))


@pytest.fixture
async def handler(tmp_path) -> AsyncIterator[GatewayHandler]:
    # dockerd is unreachable: any lookup would turn into a 502 reply
    service = Service(PolicyStore(None), DockerClient(f"unix://{tmp_path}/none.sock"))
    yield GatewayHandler(service)
    await service.docker.close()


async def test_identity_is_fixed_for_the_life_of_a_connection(tmp_path, handler):
    client = Client(PeerCred(PID, os.getuid(), os.getgid()))
    assert isinstance(await handler.decide(client, PING, None), Forward)
    first = client.context
    assert first is not None and first.uid == os.getuid()
    assert isinstance(await handler.decide(client, PING, None), Forward)
    assert client.context is first
