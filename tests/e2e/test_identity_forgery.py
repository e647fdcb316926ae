"""A caller cannot become someone else by naming a cgroup after their container.

Other users' container IDs are world-readable in ``/proc/*/cgroup``, and a user can own a
cgroup of any name (systemd delegates a subtree to every user). Here a real Unix user puts
their shell into a cgroup they own named like another user's container, then talks to the
gateway from it: they must still be only themselves.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.stack.ds01 import IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

VICTIM, ATTACKER = "e2e-alice", "e2e-bob"
PIDS_HIERARCHY = Path("/sys/fs/cgroup/pids")


@pytest.fixture
def forged_cgroup(users) -> Iterator[Callable[[str], Path]]:
    """Make ``docker-<id>.scope`` under a v1 hierarchy, owned by the attacker; removed after."""
    if not (PIDS_HIERARCHY / "cgroup.procs").exists():
        if os.environ.get("CI"):  # CI's machine has one: a missing hierarchy is a failure
            pytest.fail("needs a writable cgroup v1 pids hierarchy")
        pytest.skip("needs a writable cgroup v1 pids hierarchy")
    made: list[Path] = []

    def make(container_id: str) -> Path:
        path = PIDS_HIERARCHY / f"docker-{container_id}.scope"
        path.mkdir()
        made.append(path)
        uid, gid, _ = users[ATTACKER]
        for item in (path, path / "cgroup.procs", path / "tasks"):
            os.chown(item, uid, gid)
        return path

    yield make
    for path in made:
        for _ in range(50):  # the attacker's processes have exited; the kernel lets go soon
            with contextlib.suppress(OSError):
                path.rmdir()
            if not path.exists():
                break
            time.sleep(0.1)


def as_attacker_in(stack, cgroup: Path, *docker_args: str) -> subprocess.CompletedProcess[str]:
    """Run ``docker ARGS`` as the attacker from a shell moved into ``cgroup`` first."""
    script = f'echo $$ > {cgroup}/cgroup.procs && cat /proc/self/cgroup && exec docker "$@"'
    env = {"DOCKER_HOST": stack.gateway, "HOME": "/tmp", "PATH": os.environ["PATH"]}
    cmd = ["runuser", "-u", ATTACKER, "--", "env", *(f"{k}={v}" for k, v in env.items())]
    return subprocess.run(
        [*cmd, "sh", "-c", script, "sh", *docker_args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_cgroup_named_after_a_victims_container_gives_nothing(clean, forged_cgroup):
    stack = clean
    run = stack.docker("run", "-d", "--name", "victim-box", IMAGE, "sleep", "300", user=VICTIM)
    assert run.returncode == 0, run.stderr
    victim_id = run.stdout.strip()
    own = stack.docker("create", "--name", "attacker-box", IMAGE, "true", user=ATTACKER)
    assert own.returncode == 0, own.stderr
    cgroup = forged_cgroup(victim_id)

    exec_ = as_attacker_in(stack, cgroup, "exec", victim_id, "id")
    assert f"pids:/docker-{victim_id}.scope" in exec_.stdout  # the forged cgroup was in effect
    assert exec_.returncode != 0
    assert f"No such container: {victim_id}" in exec_.stderr

    listed = as_attacker_in(stack, cgroup, "ps", "-a", "--format", "{{.Names}}")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1:] == ["attacker-box"]
    assert "victim-box" not in listed.stdout

    stopped = as_attacker_in(stack, cgroup, "stop", "victim-box")
    assert stopped.returncode != 0 and "No such container: victim-box" in stopped.stderr
    still = stack.docker("inspect", "-f", "{{.State.Running}}", victim_id, user=VICTIM)
    assert still.stdout.strip() == "true"
