"""The GPU queue as students meet it (issue 14, items 1-3): real users, the docker CLI through
the gateway, a real dockerd with the fake NVIDIA hook.

1. A create that finds no free device answers at once with the queue state and how to wait;
   one that asks to wait (``--label ds01.wait=...``) sees its place on its terminal.
2. A waiting client that goes away leaves the queue at once; nothing is created for it, and
   the next waiter is served.
3. The quota message names the container that holds the GPU, its state, when its hold ends
   and the command that frees it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.stack.ds01 import IMAGE, Ds01Stack, small_gpu_stack, without_containers

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ANN, BEN, CAL, DOT, ADA = "gq-ann", "gq-ben", "gq-cal", "gq-dot", "gq-ada"

# Students may use MIG instances only: the small inventory's two, so two holders fill it.
POLICY = f"""
created_timeout: 1h
defaults:
  max_gpus: 0
  max_mig_instances: 1
  max_gpus_per_container: 1
  gpu_hold_after_stop: 1h
  gpu_wait: 15m
groups:
  students:
    members: [{ANN}, {BEN}, {CAL}, {DOT}]
  admins:
    admin: true
    members: [{ADA}]
"""


@pytest.fixture(scope="module")
def queue_stack():
    with small_gpu_stack(POLICY, (ANN, BEN, CAL, DOT, ADA), "ds01q-") as stack:
        yield stack


@pytest.fixture
def stack(queue_stack):
    with without_containers(queue_stack):
        yield queue_stack


def hold_both(stack: Ds01Stack) -> None:
    """ANN and BEN each hold one of the two MIG instances, in running containers."""
    for user, name in ((ANN, "held-ann"), (BEN, "held-ben")):
        ran = stack.docker(
            "run", "-d", "--name", name, "--gpus", "1", IMAGE, "sleep", "300", user=user
        )
        assert ran.returncode == 0, ran.stderr


def waiting(stack: Ds01Stack) -> list[dict]:
    """The GPU queue as an admin sees it (``ds01 gpus --json``), users named."""
    answer = stack.ds01("gpus", "--json", user=ADA)
    return json.loads(answer.stdout or "{}").get("queue", [])


def until_queued(stack: Ds01Stack, count: int) -> list[dict]:
    deadline = time.monotonic() + 30
    queue = waiting(stack)
    while len(queue) < count and time.monotonic() < deadline:
        time.sleep(0.3)
        queue = waiting(stack)
    return queue


def docker_as(stack: Ds01Stack, user: str, *args: str) -> subprocess.Popen[str]:
    """A docker CLI run as ``user`` through the gateway, in the background."""
    env = {"DOCKER_HOST": stack.gateway, "PATH": os.environ["PATH"], "HOME": "/tmp"}
    cmd = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items()), *args]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def descendant(pid: int, name: str) -> int | None:
    """The first process called ``name`` below ``pid`` (runuser forks the command)."""
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            if Path(f"/proc/{current}/comm").read_text().strip() == name:
                return current
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return None


def containers_of(stack: Ds01Stack, user: str) -> list[str]:
    listed = stack.docker("ps", "-aq", "--filter", f"label=ds01.user={user}", direct=True)
    return listed.stdout.split()


# ---- 1. waiting is opt-in, and visible ---------------------------------------------------


def test_busy_create_answers_at_once_with_the_queue_and_how_to_wait(stack):
    """Without ``ds01.wait`` a create that finds every device busy does not hang (as
    `devcontainer up` seemed to): it answers at once with its place and how to wait."""
    hold_both(stack)
    try:
        result = stack.docker("run", "--rm", "--gpus", "1", IMAGE, "true", user=CAL, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a busy create without ds01.wait waited silently instead of answering")
    assert result.returncode != 0
    err = result.stderr
    assert "no free GPU" in err, err
    assert "#1 in the queue" in err, err
    assert "--label ds01.wait=15m" in err, err
    assert "2 running" in err, err  # who holds the devices: states, not other users' names
    assert not waiting(stack)


def test_a_waiting_create_shows_its_place_on_the_terminal(stack):
    """``--label ds01.wait=2m`` waits; the client's terminal gets a progress line at once,
    `ds01 limits` shows the wait, and the freed device is given to it."""
    hold_both(stack)
    env = f"DOCKER_HOST={stack.gateway} PATH={os.environ['PATH']} HOME=/tmp"
    inner = f"env {env} docker run --rm --label ds01.wait=2m --gpus 1 {IMAGE} true"
    client = subprocess.Popen(
        ["runuser", "-u", CAL, "--", "script", "-qec", inner, "/dev/null"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        queue = until_queued(stack, 1)
        assert queue and queue[0]["user"] == CAL, queue
        limits = stack.ds01("limits", user=CAL).stdout
        assert "place 1 in the GPU queue" in limits and "of at most 2m" in limits, limits
        assert stack.docker("rm", "-f", "held-ann", user=ANN).returncode == 0
        out, _ = client.communicate(timeout=90)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, out
    assert "ds01: waiting for 1 GPU: #1 in the queue" in out, out
    assert "of at most 2m; Ctrl-C to give up" in out, out


# ---- 2. a client that goes away ---------------------------------------------------------


def test_a_client_that_goes_away_leaves_the_queue_and_gets_nothing(stack):
    """Killing a waiting `docker run` takes its request out of the queue at once: the freed
    device goes to the next waiter, and nothing is created or held for the one that left."""
    hold_both(stack)
    wait = ("--label", "ds01.wait=1m", "--gpus", "1", IMAGE)
    gone = docker_as(stack, CAL, "docker", "run", "--rm", *wait, "true")
    next_one = None
    try:
        assert [q["user"] for q in until_queued(stack, 1)] == [CAL]
        next_one = docker_as(
            stack, DOT, "docker", "run", "-d", "--name", "nx", *wait, "sleep", "60"
        )
        assert [q["user"] for q in until_queued(stack, 2)] == [CAL, DOT]
        cli = descendant(gone.pid, "docker")
        assert cli is not None
        os.kill(cli, signal.SIGKILL)
        gone.wait(timeout=30)
        deadline = time.monotonic() + 20
        queue = waiting(stack)
        while [q["user"] for q in queue] != [DOT] and time.monotonic() < deadline:
            time.sleep(0.3)
            queue = waiting(stack)
        assert [q["user"] for q in queue] == [DOT], "the abandoned request is still queued"
        assert stack.docker("rm", "-f", "held-ann", user=ANN).returncode == 0
        _, err = next_one.communicate(timeout=60)
        assert next_one.returncode == 0, err
    finally:
        for proc in (gone, next_one):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    time.sleep(1)  # a wrongly served create would be forwarded by now
    assert containers_of(stack, CAL) == []
    limits = json.loads(stack.ds01("limits", "--json", user=CAL).stdout)
    assert limits["usage"]["allocations"] == [] and limits["queue"] == [], limits


# ---- 3. the quota message ----------------------------------------------------------------


def test_quota_message_names_a_stopped_holder_and_how_to_free_it(stack):
    """A stopped container keeps its GPU for gpu_hold_after_stop and `docker ps` does not
    list it: the refusal names it, says until when it holds, and how to free it."""
    ran = stack.docker(
        "run", "-d", "--name", "kept", "--gpus", "1", IMAGE, "sleep", "300", user=ANN
    )
    assert ran.returncode == 0, ran.stderr
    assert stack.docker("stop", "-t", "0", "kept", user=ANN).returncode == 0
    time.sleep(0.5)
    result = stack.docker("run", "--rm", "--gpus", "1", IMAGE, "true", user=ANN)
    assert result.returncode != 0
    err = result.stderr
    assert "GPU quota reached: you hold 1 of 1 MIG instance" in err, err
    assert "container kept, stopped" in err and "gpu_hold_after_stop" in err, err
    assert "`docker rm kept`" in err and "docker ps -a" in err and "ds01 ps" in err, err
    assert "(`docker ps`)" not in err, err


def test_quota_message_names_a_created_holder(stack):
    """A created, never started container holds its GPU until created_timeout."""
    made = stack.docker("create", "--name", "fresh", "--gpus", "1", IMAGE, "true", user=BEN)
    assert made.returncode == 0, made.stderr
    result = stack.docker("run", "--rm", "--gpus", "1", IMAGE, "true", user=BEN)
    assert result.returncode != 0
    err = result.stderr
    assert "container fresh, created (never started)" in err, err
    assert "created_timeout" in err and "`docker rm fresh`" in err, err
