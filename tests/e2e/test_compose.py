"""Docker Compose through the gateway, as a plain user (Debian's docker-compose, on docker-py)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess

import pytest

from tests.stack.ds01 import IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ALICE, BOB = "e2e-alice", "e2e-bob"
COMPOSE = f"""
services:
  web:
    image: {IMAGE}
    command: ["sleep", "300"]
    volumes: ["./data:/data"]
  worker:
    image: {IMAGE}
    command: ["sleep", "300"]
    network_mode: "service:web"
  bad:
    image: {IMAGE}
    command: ["true"]
    privileged: true
    profiles: ["bad"]
"""


def compose(stack, project: str, *args: str, user: str = ALICE) -> subprocess.CompletedProcess[str]:
    assert shutil.which("docker-compose"), "docker-compose missing: run scripts/setup-host.sh"
    env = [f"DOCKER_HOST={stack.gateway}", f"HOME=/home/{user}", f"PATH={os.environ['PATH']}"]
    return subprocess.run(
        [
            "runuser",
            "-u",
            user,
            "--",
            "env",
            *env,
            "docker-compose",
            "--project-directory",
            project,
            "-f",
            f"{project}/compose.yaml",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd="/tmp",
    )


def test_compose_project_is_governed(clean):
    """`up` creates the user's containers (limits, cgroup, labels); a privileged service is refused."""
    project = f"/home/{ALICE}/cproj"
    os.makedirs(f"{project}/data", exist_ok=True)
    with open(f"{project}/compose.yaml", "w") as f:
        f.write(COMPOSE)
    subprocess.run(["chown", "-R", f"{ALICE}:{ALICE}", project], check=True)
    up = compose(clean, project, "up", "-d", "web", "worker")
    assert up.returncode == 0, up.stderr
    ids = clean.docker(
        "ps", "-q", "--filter", "label=com.docker.compose.project=cproj", direct=True
    ).stdout.split()
    assert len(ids) == 2
    for info in json.loads(clean.docker("inspect", *ids, direct=True).stdout):
        assert info["Config"]["Labels"]["ds01.user"] == ALICE
        assert info["HostConfig"]["CgroupParent"] == f"/ds01/{ALICE}"
    assert sorted(clean.docker("ps", "--format", "{{.Names}}", user=BOB).stdout.split()) == []
    # Issue 10: the service runs as the user; what it writes in the bound folder is theirs.
    made = f"{project}/data/made-inside"
    if os.path.lexists(made):
        os.unlink(made)
    inside = compose(
        clean, project, "exec", "-T", "web", "sh", "-c", "touch /data/made-inside && id -u"
    )
    alice = pwd.getpwnam(ALICE)
    assert inside.returncode == 0, inside.stdout + inside.stderr
    assert inside.stdout.strip() == str(alice.pw_uid)
    assert (os.lstat(made).st_uid, os.lstat(made).st_gid) == (alice.pw_uid, alice.pw_gid)
    bad = compose(clean, project, "--profile", "bad", "up", "-d", "bad")
    assert bad.returncode != 0 and "--privileged is not allowed" in bad.stderr
    down = compose(clean, project, "down")
    assert down.returncode == 0, down.stderr
