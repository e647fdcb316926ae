"""The gateway socket is created without a permission race, and peers are known by the kernel."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from gateway.peer import peer_credentials
from gateway.server import Gateway
from gateway.types import PeerCred

from .fakes import PassThrough


def test_peer_credentials_are_the_connecting_process():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_credentials(a) == PeerCred(os.getpid(), os.getuid(), os.getgid())


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
async def test_socket_has_requested_mode(rig, mode):
    gateway = Gateway(PassThrough(), rig.upstream_path)
    await gateway.start(rig.path, mode=mode)
    try:
        st = os.stat(rig.path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == mode
        # No private bind directory is left behind.
        assert [n for n in os.listdir(rig.base) if n.startswith(".ds01-")] == []
    finally:
        await gateway.stop()
    assert not os.path.exists(rig.path)


async def test_stale_socket_is_replaced(rig):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(rig.path)
    stale.close()
    gateway = Gateway(PassThrough(), rig.upstream_path)
    await gateway.start(rig.path)
    try:
        client = socket.socket(socket.AF_UNIX)
        client.connect(rig.path)
        client.close()
    finally:
        await gateway.stop()


async def test_regular_file_at_the_path_is_not_deleted(rig):
    with open(rig.path, "w") as f:
        f.write("not a socket")
    with pytest.raises(FileExistsError):
        await Gateway(PassThrough(), rig.upstream_path).start(rig.path)
    with open(rig.path) as f:
        assert f.read() == "not a socket"


async def test_stop_leaves_a_newer_socket_alone(rig):
    """stop() removes only the socket it created, not one a successor put there."""
    gateway = Gateway(PassThrough(), rig.upstream_path)
    await gateway.start(rig.path)
    os.unlink(rig.path)
    other = socket.socket(socket.AF_UNIX)
    other.bind(rig.path)
    try:
        await gateway.stop()
        assert os.path.exists(rig.path)
    finally:
        other.close()
