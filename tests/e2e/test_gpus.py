"""GPUs end to end: `docker run --gpus` as real users, through the gateway, to a real dockerd
whose nvidia device driver runs the fake runtime hook (no GPU needed)."""

from __future__ import annotations

import json
import time

import pytest

from tests.harness.fake_nvidia_hook import read_hook_records
from tests.stack.ds01 import IMAGE, small_gpu_stack, without_containers

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

WHOLE = "GPU-00000000-0000-0000-0000-0000000000a0"
MIG_3G = "MIG-00000000-0000-0000-0000-0000000000b1"
MIG_2G = "MIG-00000000-0000-0000-0000-0000000000b2"
STUDENT, OTHER, RESEARCHER, WAITER = "gpu-sam", "gpu-tom", "gpu-rey", "gpu-uma"

POLICY = f"""
defaults:
  max_gpus: 0
  max_mig_instances: 1
  max_gpus_per_container: 1
  gpu_hold_after_stop: 0
  gpu_wait: 30s
groups:
  students:
    members: [{STUDENT}, {OTHER}, {WAITER}]
    priority: 10
  researchers:
    members: [{RESEARCHER}]
    priority: 50
    allow_full_gpu: true
    max_gpus: 1
"""


@pytest.fixture(scope="module")
def gpu_stack():
    with small_gpu_stack(POLICY, (STUDENT, OTHER, RESEARCHER, WAITER), "ds01g-") as stack:
        yield stack


@pytest.fixture
def gpus(gpu_stack):
    with without_containers(gpu_stack):
        yield gpu_stack


def env_of(stack, name: str) -> dict[str, str]:
    info = json.loads(stack.docker("inspect", name, direct=True).stdout)[0]
    return dict(e.split("=", 1) for e in info["Config"]["Env"])


def test_mig_only_user_gets_a_mig_instance_inside_the_container(gpus):
    """`--gpus 1` as a student yields one MIG instance, visible inside and seen by the hook."""
    result = gpus.docker(
        "run",
        "--name",
        "g1",
        "--gpus",
        "1",
        IMAGE,
        "printenv",
        "NVIDIA_VISIBLE_DEVICES",
        user=STUDENT,
    )
    assert result.returncode == 0, result.stderr
    device = result.stdout.strip()
    assert device.startswith("MIG-"), device
    # best fit: the smallest instance that fits is taken, the 3g stays free
    assert device == MIG_2G
    records = [
        r for r in read_hook_records(gpus.hook_records) if r.get("NVIDIA_VISIBLE_DEVICES") == device
    ]
    assert records, "the fake nvidia hook did not see the device"
    labels = json.loads(gpus.docker("inspect", "g1", direct=True).stdout)[0]["Config"]["Labels"]
    assert labels["ds01.devices"] == device and labels["ds01.gpueq"] == "0.2857"


def test_researcher_gets_a_whole_gpu(gpus):
    """A user allowed full GPUs gets the empty whole GPU for `--gpus 1`."""
    result = gpus.docker(
        "run", "--rm", "--gpus", "1", IMAGE, "printenv", "NVIDIA_VISIBLE_DEVICES", user=RESEARCHER
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == WHOLE


def test_gpus_all_means_what_the_policy_allows(gpus):
    """`--gpus all` is the user's allowance (one MIG instance), never every device."""
    result = gpus.docker(
        "run", "--rm", "--gpus", "all", IMAGE, "printenv", "NVIDIA_VISIBLE_DEVICES", user=STUDENT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().count(",") == 0 and result.stdout.strip().startswith("MIG-")


def test_env_var_cannot_smuggle_gpus(gpus):
    """`-e NVIDIA_VISIBLE_DEVICES=all` is removed; the container sees `void`."""
    result = gpus.docker(
        "run",
        "--rm",
        "-e",
        "NVIDIA_VISIBLE_DEVICES=all",
        IMAGE,
        "printenv",
        "NVIDIA_VISIBLE_DEVICES",
        user=STUDENT,
    )
    assert result.stdout.strip() == "void", result.stderr


def test_quota_refusal_says_what_is_held(gpus):
    """A second GPU container over the quota is refused, naming the held device and a fix;
    the refusal is recorded as one (issue 14.4), not as the policy's allow before it."""
    seen = len(gpus.audit_events())
    assert (
        gpus.docker(
            "run", "-d", "--name", "q1", "--gpus", "1", IMAGE, "sleep", "300", user=STUDENT
        ).returncode
        == 0
    )
    result = gpus.docker("run", "--rm", "--gpus", "1", IMAGE, "true", user=STUDENT)
    assert result.returncode != 0
    assert "GPU quota reached: you hold 1 of 1 MIG instance" in result.stderr
    assert "To fix:" in result.stderr
    creates = _create_decisions(gpus, STUDENT, seen, until="deny")
    assert [e["result"] for e in creates] == ["allow", "deny"], creates
    assert "GPU quota reached" in creates[1]["reason"], creates


def _create_decisions(stack, user: str, seen: int, until: str) -> list[dict]:
    """The audit log's create decisions for ``user`` after the first ``seen`` lines, once one
    with result ``until`` is there (the log is written in the background)."""
    deadline = time.monotonic() + 15
    while True:
        creates = [
            e
            for e in stack.audit_events()[seen:]
            if e.get("event") == "decision"
            and e.get("user") == user
            and e.get("endpoint") == "POST /containers/create"
        ]
        if any(e["result"] == until for e in creates) or time.monotonic() > deadline:
            return creates
        time.sleep(0.2)


def test_device_is_released_on_stop_and_start_reacquires_or_is_refused(gpus):
    """Stopping frees the device (hold 0); another user takes it; the first start is refused."""
    assert (
        gpus.docker(
            "run", "-d", "--name", "r1", "--gpus", "1", IMAGE, "sleep", "300", user=STUDENT
        ).returncode
        == 0
    )
    first = env_of(gpus, "r1")["NVIDIA_VISIBLE_DEVICES"]
    assert gpus.docker("stop", "-t", "0", "r1", user=STUDENT).returncode == 0
    time.sleep(0.5)
    taken = gpus.docker(
        "run", "-d", "--name", "r2", "--gpus", f"device={first}", IMAGE, "sleep", "300", user=OTHER
    )
    assert taken.returncode == 0, taken.stderr
    refused = gpus.docker("start", "r1", user=STUDENT)
    assert refused.returncode != 0
    assert f"{OTHER}'s container" in refused.stderr and "recreate" in refused.stderr.lower(), (
        refused.stderr
    )
    # once free again, the start re-acquires the recorded device
    assert gpus.docker("rm", "-f", "r2", user=OTHER).returncode == 0
    time.sleep(0.5)
    assert gpus.docker("start", "r1", user=STUDENT).returncode == 0


def test_restart_of_a_regranted_container_is_refused(gpus):
    """docker restart re-acquires the recorded device like start: a device re-granted to
    another user while the container was stopped is never shared (issue 11)."""
    ok = gpus.docker(
        "run", "-d", "--name", "rs1", "--gpus", "1", IMAGE, "sleep", "300", user=STUDENT
    )
    assert ok.returncode == 0, ok.stderr
    first = env_of(gpus, "rs1")["NVIDIA_VISIBLE_DEVICES"]
    assert gpus.docker("stop", "-t", "0", "rs1", user=STUDENT).returncode == 0
    time.sleep(0.5)
    taken = gpus.docker(
        "run", "-d", "--name", "rs2", "--gpus", f"device={first}", IMAGE, "sleep", "300", user=OTHER
    )
    assert taken.returncode == 0, taken.stderr
    for door in ({"user": STUDENT}, {"direct": True}):  # the gateway, and the plugin alone
        refused = gpus.docker("restart", "-t", "0", "rs1", **door)
        assert refused.returncode != 0
        assert f"{OTHER}'s container" in refused.stderr, refused.stderr
        state = json.loads(gpus.docker("inspect", "rs1", direct=True).stdout)[0]["State"]
        assert not state["Running"]


def test_direct_start_cannot_take_a_held_device(gpus):
    """The AuthZ plugin guards starts that bypass the gateway, too."""
    assert (
        gpus.docker(
            "run", "-d", "--name", "h1", "--gpus", "1", IMAGE, "sleep", "300", user=STUDENT
        ).returncode
        == 0
    )
    held = env_of(gpus, "h1")["NVIDIA_VISIBLE_DEVICES"]
    assert (
        gpus.docker(
            "create",
            "--name",
            "sneaky",
            "--gpus",
            f"device={held}",
            IMAGE,
            "sleep",
            "300",
            direct=True,
        ).returncode
        == 0
    )
    result = gpus.docker("start", "sneaky", direct=True)
    assert result.returncode != 0
    assert f"{held} is held by {STUDENT}'s container" in result.stderr, result.stderr


def test_waiting_request_gets_the_freed_device(gpus):
    """A create that finds every MIG instance held waits in the queue and gets the freed one."""
    import threading

    assert (
        gpus.docker(
            "run", "-d", "--name", "w1", "--gpus", "1", IMAGE, "sleep", "300", user=STUDENT
        ).returncode
        == 0
    )
    assert (
        gpus.docker(
            "run", "-d", "--name", "w2", "--gpus", "1", IMAGE, "sleep", "300", user=OTHER
        ).returncode
        == 0
    )
    freed = env_of(gpus, "w1")["NVIDIA_VISIBLE_DEVICES"]
    now = gpus.docker(
        "run", "--rm", "--label", "ds01.wait=0s", "--gpus", "1", IMAGE, "true", user=WAITER
    )
    assert now.returncode != 0 and "no free GPU" in now.stderr, now.stderr
    outcome = {}
    waiter = threading.Thread(
        target=lambda: outcome.setdefault(
            "r",
            gpus.docker(
                "run",
                "--rm",
                "--label",
                "ds01.wait=30s",
                "--gpus",
                "1",
                IMAGE,
                "printenv",
                "NVIDIA_VISIBLE_DEVICES",
                user=WAITER,
            ),
        )
    )
    waiter.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until the request is in the queue
        queue = json.loads(gpus.ds01("gpus", "--json", user=WAITER).stdout or "{}").get("queue", [])
        if queue:
            break
        time.sleep(0.2)
    assert queue and queue[0]["user"] == WAITER
    assert gpus.docker("rm", "-f", "w1", user=STUDENT).returncode == 0
    waiter.join(timeout=60)
    assert outcome["r"].returncode == 0, outcome["r"].stderr
    assert outcome["r"].stdout.strip() == freed
