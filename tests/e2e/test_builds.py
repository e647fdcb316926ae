"""``docker build`` through the gateway as real users: both builders work and are governed.

The legacy builder's RUN steps run in the user's cgroup with the policy's limits; BuildKit
(the distribution's docker 20.10 CLI, which speaks BuildKit's session protocol over a hijacked
``POST /session`` without buildx) works; host networking, other users' network namespaces and
BuildKit's direct API are refused.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ds01d.host.cgroups import CgroupfsManager
from tests.e2e.conftest import POLICY
from tests.harness.host_ledger import claim_cgroups, temp_dir
from tests.stack.ds01 import IMAGE, Ds01Stack
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
    base = temp_dir("ds01-build-")  # removed when the session ends
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
    base = temp_dir("ds01-bigctx-")
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


# ---- BuildKit's shared build cgroup ----------------------------------------------------------
# dockerd 20.10 runs every BuildKit RUN step in <its cgroup-parent>/buildkit/<id>, whatever the
# build asks; DS01 caps that cgroup with the policy's ``builds``. This stack has a parent of its
# own (as tests/integration/test_cgroups.py does): every ds01d on the host writes its policy's
# cap into /ds01-builds/buildkit, which would race with the cap checked here.

BUILD_POLICY = POLICY + "builds: {cpus: 1, memory: 300m, pids: 64}\n"
MIB = 2**20
# The RUN step reports where it runs and the memory limit the kernel applies to it (v1's
# hierarchical_memory_limit: the lowest limit of the step's cgroup and all above it).
CGROUP_DOCKERFILE = f"""FROM {IMAGE}
RUN echo "memcg: $(grep -E '^[0-9]+:memory:' /proc/self/cgroup)"; \\
    echo "limit: $(grep '^hierarchical_memory_limit ' /sys/fs/cgroup/memory/memory.stat)"
"""
# 100 sleeping children: more tasks than the cap's 64, fewer than the legacy builder's 512.
FORK_DOCKERFILE = f"""FROM {IMAGE}
RUN i=0; while [ $i -lt 100 ]; do sleep 60 & i=$((i+1)); done; echo "started all $i"; kill $(jobs -p)
"""


def _context(name: str, dockerfile: str) -> Path:
    base = temp_dir(f"ds01-{name}-")
    os.chmod(base, 0o755)
    (base / "Dockerfile").write_text(dockerfile)
    os.chmod(base / "Dockerfile", 0o644)
    return base


def _remove_tree(manager: CgroupfsManager, parent: str) -> None:
    """Remove ``parent`` (a cgroup directory name) in every hierarchy, children first."""
    for point in manager.hierarchies().values():
        top = point / parent
        if not top.is_dir():
            continue
        for sub in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if sub.is_dir():
                with contextlib.suppress(OSError):
                    sub.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


@pytest.fixture(scope="module")
def build_stack(users):
    """A stack whose dockerd runs with --cgroup-parent=/<parent of its own>, ds01d capping it."""
    if CgroupfsManager().version != 1:
        pytest.skip("the step reads cgroup v1's hierarchical_memory_limit")
    parent = f"ds01-builds-e2e-{secrets.token_hex(3)}"
    claim_cgroups([parent])  # in the host ledger, should the teardown below not run
    base = Path(tempfile.mkdtemp(prefix="ds01b-", dir="/tmp"))
    stack = Ds01Stack(base, BUILD_POLICY, extra_args=("--build-cgroup-parent", f"/{parent}"))
    stack.dockerd.cgroup_parent = f"/{parent}"
    stack.start()
    stack.build_parent = parent
    try:
        yield stack
    finally:
        stack.stop()
        _remove_tree(CgroupfsManager(), parent)


def _buildkit_dir(stack, controller: str) -> Path:
    manager = CgroupfsManager(build_parent=f"/{stack.build_parent}")
    directory = manager.build_dir(controller)
    assert directory is not None, f"no {controller} hierarchy"
    return directory


def test_ds01d_caps_the_build_cgroup_at_start(build_stack):
    """Before any build: ds01d wrote the policy's builds cap into <parent>/buildkit."""
    assert (_buildkit_dir(build_stack, "memory") / "memory.limit_in_bytes").read_text().strip() == (
        str(300 * MIB)
    )
    assert (_buildkit_dir(build_stack, "pids") / "pids.max").read_text().strip() == "64"
    assert (_buildkit_dir(build_stack, "cpu") / "cpu.cfs_quota_us").read_text().strip() == "100000"


def test_buildkit_step_runs_in_the_capped_build_cgroup(build_stack):
    """DOCKER_BUILDKIT=1 as a real user: the RUN step is in <parent>/buildkit/<id>, and the
    kernel holds it to the builds cap (300m), not to the user's 512m or 2g."""
    context = _context("bkcg", CGROUP_DOCKERFILE)
    result = build(
        build_stack, ALICE, "--progress=plain", "--network", "none", buildkit=True, context=context
    )
    assert result.returncode == 0, result.stderr
    assert f":memory:/{build_stack.build_parent}/buildkit/" in result.stderr, result.stderr
    assert f"limit: hierarchical_memory_limit {300 * MIB}" in result.stderr, result.stderr


def test_buildkit_steps_share_the_pids_cap(build_stack):
    """The cap is enforced: a step that starts 100 processes hits the builds pids cap (64)."""
    context = _context("bkfork", FORK_DOCKERFILE)
    result = build(
        build_stack, BOB, "--progress=plain", "--network", "none", buildkit=True, context=context
    )
    assert result.returncode != 0, result.stderr
    assert "started all 100" not in result.stderr
    assert "can't fork" in result.stderr, result.stderr


def test_legacy_step_stays_in_the_users_cgroup(build_stack):
    """DOCKER_BUILDKIT=0: the step is the user's container, with the per-container limit."""
    context = _context("lgcg", CGROUP_DOCKERFILE)
    result = build(build_stack, ALICE, buildkit=False, context=context)
    assert result.returncode == 0, result.stderr
    assert f":memory:/ds01/{ALICE}/" in result.stdout, result.stdout
    assert f"limit: hierarchical_memory_limit {512 * MIB}" in result.stdout, result.stdout
    forks = build(build_stack, BOB, buildkit=False, context=_context("lgfork", FORK_DOCKERFILE))
    assert forks.returncode == 0 and "started all 100" in forks.stdout, forks.stderr


def test_a_policy_reload_changes_the_build_cap(build_stack):
    memory = _buildkit_dir(build_stack, "memory") / "memory.limit_in_bytes"
    build_stack.set_policy(BUILD_POLICY.replace("memory: 300m, pids: 64", "memory: 400m"))
    deadline = time.monotonic() + 30
    while memory.read_text().strip() != str(400 * MIB) and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        assert memory.read_text().strip() == str(400 * MIB)
        # pids left out: back to the default cap, not the old 64
        assert (_buildkit_dir(build_stack, "pids") / "pids.max").read_text().strip() == "4096"
    finally:
        build_stack.set_policy(BUILD_POLICY)
