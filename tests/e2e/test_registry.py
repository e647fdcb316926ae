"""`docker push` and `docker pull` through the gateway, against a local registry on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from tests.stack.ds01 import IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ALICE = "e2e-alice"


@pytest.fixture
def registry(tmp_path):
    """Debian's docker-registry (distribution 2.8) serving on a free loopback port."""
    binary = shutil.which("docker-registry")
    assert binary, "docker-registry missing: run scripts/setup-host.sh"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        "log:\n  level: error\n"
    )
    proc = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_push_and_pull_stream_their_progress(clean, registry):
    """A user tags, pushes, removes and pulls an image; progress streams back through the gateway."""
    name = f"{registry}/{ALICE}/busybox:1"  # a user writes names in their own namespace
    docker = clean.docker
    assert docker("tag", IMAGE, name, user=ALICE).returncode == 0
    push = docker("push", name, user=ALICE, timeout=120)
    assert push.returncode == 0, push.stderr
    assert "digest: sha256:" in push.stdout
    assert docker("rmi", name, user=ALICE).returncode == 0
    pull = docker("pull", name, user=ALICE, timeout=120)
    assert pull.returncode == 0, pull.stderr
    assert f"Downloaded newer image for {name}" in pull.stdout
    assert docker("run", "--rm", name, "echo", "pulled", user=ALICE).stdout.strip() == "pulled"
