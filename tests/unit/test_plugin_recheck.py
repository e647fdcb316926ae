"""What the AuthZ plugin re-checks on a request the gateway already decided."""

from __future__ import annotations

import pytest

from authz_plugin.authz import AuthzRequest, settled
from ds01d.docker_client import DockerClient, DockerError
from ds01d.policy_store import PolicyStore
from ds01d.service import Service
from ds01d.tickets import TOKEN_HEADER
from policy.identity import Identity

ALICE = Identity(uid=1001, user="alice", groups=frozenset({"alice"}), home="/home/alice")


def _service(tmp_path) -> Service:
    # dockerd is unreachable: any lookup the plugin makes raises DockerError
    return Service(PolicyStore(None), DockerClient(f"unix://{tmp_path}/none.sock"))


def _start_request(service: Service, guarded: bool) -> AuthzRequest:
    start = "/v1.41/containers/web/start"
    token = service.tickets.issue(ALICE, "POST", start, None, start_guarded=guarded)
    return AuthzRequest(user="", method="POST", uri=start, headers={TOKEN_HEADER: token}, body=None)


async def test_the_plugin_does_not_repeat_a_start_guard_the_gateway_ran(tmp_path):
    """The gateway re-acquired the start's GPUs a moment ago: no second inspect for it."""
    service = _service(tmp_path)
    service.gpus = object()  # any start guard now needs dockerd, which is unreachable here
    assert (await settled(service.authz_request(_start_request(service, guarded=True)))).allow
    with pytest.raises(DockerError):  # a start the gateway did not guard is guarded here
        await settled(service.authz_request(_start_request(service, guarded=False)))
    await service.docker.close()
