"""A student's first day, as a real Unix user against a running ds01d: ``ds01 setup`` and
``ds01 guide`` driven in a real terminal (tmux: keys in, screen out), the scripted
``--yes`` path without one, and ``devcontainer up`` on a project ``ds01 project init`` made.
Each ends with a container that runs as the user with a GPU from the fake inventory."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import POLICY
from tests.e2e.test_devcontainer import devcontainer
from tests.stack.ds01 import IMAGE, REPO, Ds01Stack, user_python

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ALICE = "e2e-alice"
HOME = f"/home/{ALICE}"
CLI = "ds01cli.cli"
INVENTORY = "tests/fixtures/inventory-small.yaml"


@pytest.fixture(scope="module")
def small(users):
    """ds01d with the small mixed inventory (one whole GPU, one split 3g + 2g)."""
    base = Path(tempfile.mkdtemp(prefix="ds01f-", dir="/tmp"))
    stack = Ds01Stack(base, POLICY, inventory=INVENTORY)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def site(small):
    """A clean stack and a lab template on the test image (no registry here to pull from)."""
    small.remove_all_containers()
    folder = Path(tempfile.mkdtemp(prefix="ds01-tpl-", dir="/tmp"))
    tpl = folder / "lab-busybox"
    tpl.mkdir()
    (tpl / "template.yaml").write_text(f"description: the lab's test image\nbase_image: {IMAGE}\n")
    (tpl / "Dockerfile").write_text(
        'FROM {{base_image}}\nENV HOME=/tmp\nWORKDIR /workspaces/{{project}}\nCMD ["sleep", "3600"]\n'
    )
    for path in (folder, tpl, *tpl.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    yield folder
    small.remove_all_containers()
    shutil.rmtree(folder, ignore_errors=True)


def fresh(name: str) -> str:
    """A project folder path under the user's home that does not exist yet."""
    path = f"{HOME}/{name}"
    shutil.rmtree(path, ignore_errors=True)
    return path


def user_env(stack) -> list[str]:
    return [
        f"DOCKER_HOST={stack.gateway}",
        f"PYTHONPATH={REPO}",
        f"HOME={HOME}",
        f"PATH={os.environ['PATH']}",
        "NO_COLOR=1",
        "TERM=xterm-256color",
    ]


def ds01(stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The ds01 CLI as the user, without a terminal."""
    cmd = ["runuser", "-u", ALICE, "--", "env", *user_env(stack), user_python(), "-m", CLI, *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd="/tmp", stdin=subprocess.DEVNULL
    )


class Terminal:
    """One tmux session (its own server socket) running a command as the user."""

    def __init__(self, stack, *args: str) -> None:
        self.server = f"ds01t-{secrets.token_hex(3)}"
        inner = shlex.join(
            ["runuser", "-u", ALICE, "--", "env", *user_env(stack), user_python(), "-m", CLI, *args]
        )
        # The exit status stays on the screen, and the pane stays open to be read.
        script = f"cd /tmp; {inner}; echo DS01-EXIT=$?; sleep 600"
        self.tmux("new-session", "-d", "-x", "160", "-y", "50", "bash", "-c", script)

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.server, *args], capture_output=True, text=True, check=True
        ).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-200")

    def wait_for(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            if "DS01-EXIT=" in screen and "DS01-EXIT=" not in text:
                break
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; the screen:\n{self.screen()}")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True)


@pytest.fixture
def terminals():
    made: list[Terminal] = []
    yield lambda stack, *args: made.append(Terminal(stack, *args)) or made[-1]
    for term in made:
        term.close()


def inspect(stack, name: str) -> dict:
    result = stack.docker("inspect", name, direct=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


def assert_runs_as_alice_with_a_gpu(stack, name: str, project: str) -> None:
    alice = pwd.getpwnam(ALICE)
    info = inspect(stack, name)
    assert info["State"]["Running"], info["State"]
    assert info["Config"]["User"] == f"{alice.pw_uid}:{alice.pw_gid}"
    labels = info["Config"]["Labels"]
    assert labels["ds01.user"] == ALICE
    assert labels["ds01.devices"].startswith("MIG-00000000-0000-0000-0000-0000000000b"), labels
    assert labels["org.ds01.project"] == project
    ps = ds01(stack, "ps", "--json")
    assert ps.returncode == 0, ps.stderr
    rows = {r["name"]: r for r in json.loads(ps.stdout)["containers"]}
    assert rows[name]["project"] == project


def test_setup_wizard_in_a_terminal_ends_with_a_gpu_project(site, small, terminals):
    """Typed as a student would: confirm, name, template, launch."""
    fresh("tty-proj")
    term = terminals(small, "setup", "--templates", str(site))
    screen = term.wait_for("Create a project folder")
    assert "You are e2e-alice, in group students." in screen
    assert "GPUs: up to 1 MIG instance(s) (a slice of a GPU), no whole GPUs at once." in screen
    assert "This server has 3 devices" in screen
    term.keys("y")
    term.wait_for("Project name:")
    term.keys("C-u", "tty-proj", "Enter")
    term.wait_for("lab-busybox: the lab's test image")
    term.keys("Enter")  # the lab's template is the default
    term.wait_for("Build and start it now")
    term.keys("y")
    screen = term.wait_for("DS01-EXIT=", timeout=240)
    assert "DS01-EXIT=0" in screen, screen
    assert "started. Inside it: docker exec -it tty-proj sh" in screen
    assert_runs_as_alice_with_a_gpu(small, "tty-proj", "tty-proj")

    # --guided, free a GPU: the one container holding one is offered; remove it.
    term = terminals(small, "--guided", "free-gpu")
    term.wait_for("Which container?")
    term.keys("Enter")
    term.wait_for("How?")
    term.keys("Enter")
    term.wait_for("docker rm -f tty-proj")
    term.keys("y")
    screen = term.wait_for("DS01-EXIT=")
    assert "DS01-EXIT=0" in screen and "removed; its GPU is free." in screen, screen
    assert small.docker("inspect", "tty-proj", direct=True).returncode != 0

    # --guided, get a GPU: the freed MIG instance comes back in a new container.
    term = terminals(small, "--guided")
    term.wait_for("What do you want to do?")
    term.keys("Enter")  # get-gpu is first
    term.wait_for("Container name:")
    term.keys("C-u", "guided-gpu", "Enter")
    term.wait_for("Image")
    term.keys("C-u", IMAGE, "Enter")
    term.wait_for("Start it now?")
    term.keys("y")
    screen = term.wait_for("DS01-EXIT=")
    assert "DS01-EXIT=0" in screen and "Done: guided-gpu has a GPU." in screen, screen
    info = inspect(small, "guided-gpu")
    assert info["Config"]["Labels"]["ds01.devices"].startswith("MIG-"), info["Config"]["Labels"]


def test_setup_yes_without_a_terminal(site, small):
    """The scripted path: no questions, the flags and the defaults."""
    folder = fresh("yes-proj")
    result = ds01(
        small, "setup", "--yes", "--project", "yes-proj", "--templates", str(site), "--launch"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Create a project folder (Dockerfile, Dev Container, README)? yes" in result.stdout
    assert f"wrote {folder}/Dockerfile" in result.stdout
    assert_runs_as_alice_with_a_gpu(small, "yes-proj", "yes-proj")

    why = ds01(small, "why", "yes-proj")
    assert why.stdout.splitlines()[0].endswith(", project yes-proj):"), why.stdout + why.stderr
    limits = ds01(small, "limits")
    assert "(project yes-proj)" in limits.stdout, limits.stdout + limits.stderr
    gpus = ds01(small, "gpus")  # whole UUIDs, to paste into --gpus device=
    assert "MIG-00000000-0000-0000-0000-0000000000b1" in gpus.stdout, gpus.stdout + gpus.stderr
    status = ds01(small, "status")  # a student gets the overview, not "for admins"
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("DS01: 3 devices, 2 free, 1 in use")
    assert "your own limits and containers: ds01 limits, ds01 ps" in status.stdout

    no_tty = ds01(small, "setup")
    assert no_tty.returncode == 1
    assert "this needs a terminal to ask on. To fix: pass --yes" in no_tty.stderr


def test_project_init_then_devcontainer_up_as_the_user(site, small):
    """A generated project opens as a Dev Container: built from its Dockerfile, as the user,
    with a GPU, named by its project in ds01 ps."""
    folder = fresh("dc-first")
    init = ds01(small, "project", "init", "dc-first", "--templates", str(site))
    assert init.returncode == 0, init.stderr
    assert f"wrote {folder}/.devcontainer/devcontainer.json" in init.stdout
    printed = ds01(small, "project", "launch", folder, "--print")
    assert printed.stdout.splitlines()[0].startswith("docker build -t e2e-alice/dc-first:latest")

    up = devcontainer(small, "up", "--workspace-folder", folder)
    assert up.returncode == 0, up.stdout + up.stderr
    container = json.loads(up.stdout.strip().splitlines()[-1])["containerId"]
    seen = devcontainer(small, "exec", "--workspace-folder", folder, "sh", "-c",
                        "id -u; printenv NVIDIA_VISIBLE_DEVICES; pwd")  # fmt: skip
    assert seen.returncode == 0, seen.stdout + seen.stderr
    uid, devices, cwd = seen.stdout.strip().splitlines()[-3:]
    assert uid == str(pwd.getpwnam(ALICE).pw_uid)
    assert devices.startswith("MIG-") and cwd == "/workspaces/dc-first"
    name = inspect(small, container)["Name"].lstrip("/")
    rows = {r["name"]: r for r in json.loads(ds01(small, "ps", "--json").stdout)["containers"]}
    assert rows[name]["project"] == "dc-first"
