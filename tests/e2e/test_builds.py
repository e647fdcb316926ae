"""``docker build`` through the gateway as real users: both builders work and are governed.

The legacy builder's RUN steps run in the user's cgroup with the policy's limits; BuildKit
(the distribution's docker 20.10 CLI, which speaks BuildKit's session protocol over a hijacked
``POST /session`` without buildx) works; host networking, other users' network namespaces and
BuildKit's direct API are refused.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.stack.ds01 import IMAGE
from tests.stack.rawhttp import as_user, request

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ALICE, BOB = "e2e-alice", "e2e-bob"
# The distribution's CLI: BuildKit through dockerd's session API, no buildx plugin needed.
BUILDKIT_CLI = "/usr/bin/docker"
DOCKERFILE = f"""FROM {IMAGE}
RUN echo "cgroup: $(cat /proc/self/cgroup | tail -n 1)"; \\
    echo "memory: $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
"""


@pytest.fixture(scope="module")
def context():
    """A build context every test user can read."""
    base = Path(tempfile.mkdtemp(prefix="ds01-build-", dir="/tmp"))
    os.chmod(base, 0o755)
    (base / "Dockerfile").write_text(DOCKERFILE)
    os.chmod(base / "Dockerfile", 0o644)
    return base


def build(stack, user: str, *args: str, buildkit: bool, context: Path):
    """``docker build ARGS CONTEXT`` as ``user`` through the gateway."""
    cli = BUILDKIT_CLI if buildkit else "docker"
    env = {
        "DOCKER_HOST": stack.gateway,
        "DOCKER_BUILDKIT": "1" if buildkit else "0",
        "DOCKER_CLI_HINTS": "false",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.path.expanduser(f"~{user}"),
    }
    cmd = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items())]
    cmd += [cli, "build", "--no-cache", *args, str(context)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


def test_legacy_build_runs_in_the_users_cgroup_with_their_memory_limit(clean, context):
    """DOCKER_BUILDKIT=0: the RUN step is a container under /ds01/<user>, capped at 512m."""
    result = build(clean, ALICE, "-t", "e2e-alice/legacy:1", buildkit=False, context=context)
    assert result.returncode == 0, result.stderr
    assert f"cgroup: 0::/ds01/{ALICE}/" in result.stdout or (f":/ds01/{ALICE}/" in result.stdout), (
        result.stdout
    )
    assert "memory: 536870912" in result.stdout, result.stdout


def test_buildkit_build_passes(clean, context):
    """DOCKER_BUILDKIT=1: the session (hijacked, h2c) and the version=2 build both pass.

    The private dockerd has no bridge network, so the RUN step runs with --network none.
    """
    result = build(
        clean,
        ALICE,
        "--progress=plain",
        "--network",
        "none",
        "-t",
        "e2e-alice/bk:1",
        buildkit=True,
        context=context,
    )
    assert result.returncode == 0, result.stderr
    assert "cgroup: " in result.stderr, result.stderr  # the RUN step's output
    images = clean.docker("image", "inspect", "e2e-alice/bk:1", direct=True)
    assert images.returncode == 0


@pytest.mark.parametrize("buildkit", [False, True], ids=["legacy", "buildkit"])
def test_build_network_host_is_refused(clean, context, buildkit):
    result = build(clean, BOB, "--network", "host", buildkit=buildkit, context=context)
    assert result.returncode != 0
    assert "docker build --network host is not allowed" in result.stderr, result.stderr


def test_build_cannot_join_another_users_container(clean, context):
    """--network container:<alice's ID> would run bob's RUN steps in alice's namespace."""
    started = clean.docker("run", "-d", IMAGE, "sleep", "300", user=ALICE)
    assert started.returncode == 0, started.stderr
    alice_id = started.stdout.strip()
    result = build(
        clean, BOB, "--network", f"container:{alice_id}", buildkit=False, context=context
    )
    assert result.returncode != 0
    assert "is not allowed (RUN steps would join that container's network namespace)" in (
        result.stderr
    ), result.stderr


def test_build_cgroup_parent_is_refused(clean, context):
    result = build(clean, BOB, "--cgroup-parent", f"/ds01/{ALICE}", buildkit=False, context=context)
    assert result.returncode != 0
    assert "--cgroup-parent is chosen by DS01" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def big_context():
    """A build context far larger than the socket buffers: refused while still uploading."""
    base = Path(tempfile.mkdtemp(prefix="ds01-bigctx-", dir="/tmp"))
    os.chmod(base, 0o755)
    (base / "Dockerfile").write_text(DOCKERFILE)
    (base / "blob").write_bytes(os.urandom(32 * 2**20))
    for path in base.iterdir():
        os.chmod(path, 0o644)
    return base


def test_refusal_reaches_a_build_still_uploading_its_context(clean, big_context):
    """The gateway refuses on the head, then reads the context to its end before closing, so
    the CLI shows the refusal, not "write: broken pipe"."""
    result = build(
        clean, BOB, "--cgroup-parent", f"/ds01/{ALICE}", buildkit=False, context=big_context
    )
    assert result.returncode != 0
    assert "broken pipe" not in result.stderr, result.stderr
    assert "--cgroup-parent is chosen by DS01" in result.stderr, result.stderr


def test_refusal_reaches_docker_load_of_a_real_image(clean):
    """docker load is for admins: a user's upload of a saved image (megabytes of layers)
    gets that answer, not a broken pipe."""
    tar = f"/home/{BOB}/saved.tar"
    saved = clean.docker("save", "-o", tar, IMAGE, user=BOB)
    assert saved.returncode == 0, saved.stderr
    try:
        assert os.path.getsize(tar) > 1_000_000
        result = clean.docker("load", "-i", tar, user=BOB)
        assert result.returncode != 0
        assert "broken pipe" not in result.stderr, result.stderr
        assert "docker load is for admins" in result.stderr, result.stderr
    finally:
        os.unlink(tar)


def test_buildkit_direct_api_is_refused(stack):
    """POST /grpc (buildx's docker driver) carries entitlements DS01 cannot read."""
    headers = {"Upgrade": "h2c", "Connection": "Upgrade"}
    status, answer = as_user(
        BOB, lambda: request(str(stack.gateway_socket), "POST", "/v1.41/grpc", b"", headers)
    )
    assert status == 403
    assert "use docker build with DOCKER_BUILDKIT=1" in answer["message"]
