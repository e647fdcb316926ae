"""The gateway works out who a connection is once, on its first request, and keeps it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from ds01d.docker_client import DockerClient
from ds01d.gateway_handler import GatewayHandler
from ds01d.policy_store import PolicyStore
from ds01d.service import Service
from gateway.types import Client, Forward, PeerCred, RequestHead

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
