"""VS Code Dev Containers, unchanged: the real `devcontainer` CLI through the gateway."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess

import pytest

from tests.stack.ds01 import IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ALICE = "e2e-alice"


def devcontainer(stack, *args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("devcontainer"), (
        "the Dev Containers CLI is missing: run scripts/setup-host.sh"
    )
    env = [f"DOCKER_HOST={stack.gateway}", f"HOME=/home/{ALICE}", f"PATH={os.environ['PATH']}"]
    return subprocess.run(
        ["runuser", "-u", ALICE, "--", "env", *env, "devcontainer", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_devcontainer_up_and_exec_as_a_plain_user(clean, tmp_path):
    """`devcontainer up` and `exec` work; the container is the user's, in their cgroup, with
    their limits, and the workspace bind mount under their home is allowed."""
    project = f"/home/{ALICE}/dc-project"
    os.makedirs(f"{project}/.devcontainer", exist_ok=True)
    with open(f"{project}/.devcontainer/devcontainer.json", "w") as f:
        json.dump({"name": "dc-project", "image": IMAGE}, f)
    with open(f"{project}/hello.txt", "w") as f:
        f.write("from the host\n")
    subprocess.run(["chown", "-R", f"{ALICE}:{ALICE}", project], check=True)

    up = devcontainer(clean, "up", "--workspace-folder", project)
    assert up.returncode == 0, up.stdout + up.stderr
    result = json.loads(up.stdout.strip().splitlines()[-1])
    assert result["outcome"] == "success"
    container = result["containerId"]

    run = devcontainer(
        clean,
        "exec",
        "--workspace-folder",
        project,
        "sh",
        "-c",
        "cat /workspaces/dc-project/hello.txt; grep memory /proc/self/cgroup",
    )
    assert run.returncode == 0, run.stderr
    assert "from the host" in run.stdout
    assert f"/ds01/{ALICE}/" in run.stdout

    # Issue 10: the container runs as the user, so what it writes in the workspace is theirs.
    made = f"{project}/made-inside"
    if os.path.lexists(made):
        os.unlink(made)
    inside = devcontainer(
        clean, "exec", "--workspace-folder", project, "sh", "-c",
        "touch /workspaces/dc-project/made-inside && id -u",
    )  # fmt: skip
    alice = pwd.getpwnam(ALICE)
    assert inside.returncode == 0, inside.stdout + inside.stderr
    assert inside.stdout.strip().splitlines()[-1] == str(alice.pw_uid)
    assert (os.lstat(made).st_uid, os.lstat(made).st_gid) == (alice.pw_uid, alice.pw_gid)

    info = json.loads(clean.docker("inspect", container, direct=True).stdout)[0]
    labels = info["Config"]["Labels"]
    assert labels["ds01.user"] == ALICE
    assert labels["devcontainer.local_folder"] == project
    assert info["HostConfig"]["CgroupParent"] == f"/ds01/{ALICE}"
    assert info["HostConfig"]["Memory"] == 512 * 2**20


def test_ds01_init_project_gets_a_gpu_in_its_dev_container(clean):
    """`ds01 init` writes a devcontainer.json that gets a GPU (a MIG instance) through the gateway."""
    project = f"/home/{ALICE}/init-project"
    os.makedirs(project, exist_ok=True)
    subprocess.run(["chown", f"{ALICE}:{ALICE}", project], check=True)
    init = clean.ds01("init", project, "--image", IMAGE, "--force", user=ALICE)
    assert init.returncode == 0, init.stderr
    up = devcontainer(clean, "up", "--workspace-folder", project)
    assert up.returncode == 0, up.stdout + up.stderr
    seen = devcontainer(
        clean, "exec", "--workspace-folder", project, "printenv", "NVIDIA_VISIBLE_DEVICES"
    )
    assert seen.stdout.strip().startswith("MIG-"), seen.stdout + seen.stderr
