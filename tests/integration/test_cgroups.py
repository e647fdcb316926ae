"""Per-user aggregate limits enforced by the real kernel (cgroup v1 here, cgroupfs driver)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from authz_plugin.cgroups import CgroupfsManager
from tests.harness.dockerd import PrivateDockerd
from tests.harness.images import import_busybox_image

pytestmark = pytest.mark.docker

MEMORY = 64 * 2**20


@pytest.fixture
def user_cgroup():
    manager = CgroupfsManager()
    user = f"cgtest-{uuid.uuid4().hex[:6]}"
    warnings = manager.ensure_user(user, {"cpus": 0.5, "memory": MEMORY, "pids": 20})
    assert warnings == []
    yield manager, user
    manager.remove_user(user)


def join(manager: CgroupfsManager, user: str, pid: int) -> None:
    for path in manager.paths(user).values():
        (path / "cgroup.procs").write_text(str(pid))


def test_limits_are_read_back_from_the_kernel(user_cgroup):
    """What ds01d wrote is what the kernel holds."""
    manager, user = user_cgroup
    kernel = manager.limits(user)
    if manager.version == 1:
        assert kernel == {
            "cpu.cfs_period_us": "100000",
            "cpu.cfs_quota_us": "50000",
            "memory.limit_in_bytes": str(MEMORY),
            "pids.max": "20",
        }
    else:
        assert kernel == {"cpu.max": "50000 100000", "memory.max": str(MEMORY), "pids.max": "20"}


def test_pids_limit_refuses_forks(user_cgroup):
    """A process in the user's cgroup cannot fork beyond pids.max."""
    manager, user = user_cgroup
    script = "sleep 0.3; for i in $(seq 40); do sleep 5 & done 2>&1; wait"
    proc = subprocess.Popen(
        ["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    join(manager, user, proc.pid)
    out, _ = proc.communicate(timeout=30)
    assert "fork" in out.lower() or "resource temporarily unavailable" in out.lower(), out


def test_memory_limit_kills_the_hog(user_cgroup):
    """A process allocating past memory.limit is killed by the kernel (SIGKILL)."""
    manager, user = user_cgroup
    code = "import time; time.sleep(0.3); x = bytearray(200 * 2**20); x[::4096] = b'x' * len(x[::4096])"
    proc = subprocess.Popen([sys.executable, "-c", code])
    join(manager, user, proc.pid)
    assert proc.wait(timeout=30) == -9


def test_policy_change_updates_the_limits_in_place(user_cgroup):
    """ensure_user again with new values rewrites the limits; nothing is restarted."""
    manager, user = user_cgroup
    manager.ensure_user(user, {"cpus": 1, "memory": 2 * MEMORY, "pids": 40})
    assert manager.limits(user)["pids.max"] == "40"


def test_two_containers_share_the_users_parent(tmp_path):
    """Two containers of one user land under /ds01/<user>; together they cannot pass its pids
    limit, and each is accounted in the parent."""
    manager = CgroupfsManager()
    user = f"cgtest-{uuid.uuid4().hex[:6]}"
    manager.ensure_user(user, {"cpus": None, "memory": 256 * 2**20, "pids": 30})
    base = Path(tempfile.mkdtemp(prefix="ds01c-", dir="/tmp"))
    dockerd = PrivateDockerd(base)
    try:
        dockerd.start()
        image = import_busybox_image(dockerd.host)
        ids = []
        for _ in range(2):
            result = dockerd.docker(
                "run", "-d", "--cgroup-parent", f"/ds01/{user}", image, "sleep", "300"
            )
            assert result.returncode == 0, result.stderr
            ids.append(result.stdout.strip())
        for cid in ids:
            pid = json.loads(dockerd.docker("inspect", cid).stdout)[0]["State"]["Pid"]
            cgroups = Path(f"/proc/{pid}/cgroup").read_text()
            assert f"/ds01/{user}/{cid}" in cgroups
        assert int(manager.usage(user)["pids"]) >= 2
        # 2 sleeps already count; 40 more background sleeps would pass pids.max=30
        burst = dockerd.docker(
            "exec", ids[0], "sh", "-c", "for i in $(seq 40); do sleep 30 & done 2>&1; echo done"
        )
        assert (
            "can't fork" in burst.stdout + burst.stderr
            or "Resource temporarily unavailable" in burst.stdout
        )
        other = dockerd.docker("exec", ids[1], "sh", "-c", "sleep 1 & wait; echo forked")
        assert other.returncode != 0 or "forked" not in other.stdout  # the parent is full for both
    finally:
        dockerd.stop()
        time.sleep(0.2)
        for path in manager.paths(user).values():
            for child in path.iterdir() if path.exists() else ():
                if child.is_dir():
                    os.rmdir(child)
        manager.remove_user(user)
