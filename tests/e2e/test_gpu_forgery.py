"""Forged GPU claims end to end (issue 11): ``ds01.*`` labels from an image, or put on a
container by root straight on dockerd, give nobody a device. Real users, a real dockerd with
the fake nvidia hook and a small inventory file."""

from __future__ import annotations

import json
import time

import pytest

from tests.harness.dockerd import docker as harness_docker
from tests.harness.images import build_busybox_rootfs
from tests.stack.ds01 import IMAGE, Ds01Stack, small_gpu_stack, without_containers

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

WHOLE = "GPU-00000000-0000-0000-0000-0000000000a0"
MIG_3G = "MIG-00000000-0000-0000-0000-0000000000b1"
MIG_2G = "MIG-00000000-0000-0000-0000-0000000000b2"
EVERY = f"{WHOLE},{MIG_3G},{MIG_2G}"
FORGER, OTHER = "gpu-fox", "gpu-ned"
FORGED_IMAGE = "ds01-forged:latest"

POLICY = f"""
defaults:
  max_gpus: 0
  max_mig_instances: 1
  max_gpus_per_container: 1
  gpu_hold_after_stop: 0
  gpu_wait: 0
groups:
  students:
    members: [{FORGER}, {OTHER}]
    priority: 10
"""


@pytest.fixture(scope="module")
def forgery():
    with small_gpu_stack(POLICY, (FORGER, OTHER), "ds01f-") as s:
        harness_docker(
            "import",
            "--change",
            f"LABEL ds01.devices={EVERY} ds01.user={FORGER} ds01.gpueq=0",
            "--change",
            'CMD ["/bin/sh"]',
            "-",
            FORGED_IMAGE,
            host=s.dockerd.host,
            input=build_busybox_rootfs(),
            check=True,
        )
        yield s


@pytest.fixture
def stack(forgery):
    with without_containers(forgery):
        yield forgery


def holders(stack: Ds01Stack) -> dict[str, str | None]:
    """Device UUID -> its holder's user, as `ds01 gpus` shows it."""
    shown = json.loads(stack.ds01("gpus", "--json", user=OTHER).stdout or "{}")
    devices = shown.get("devices", [])
    assert devices, shown
    return {d["uuid"]: d["user"] for d in devices}


def settled(stack: Ds01Stack, container: str) -> list[str]:
    """Wait until ds01d has looked at ``container`` (an audited conflict names it)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [
            e.get("reason", "")
            for e in stack.audit_events()
            if e.get("event") == "gpu_conflict" and e.get("container") == container
        ]
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"ds01d never reported {container[:12]}")


def a_gpu_for(stack: Ds01Stack, user: str) -> str:
    result = stack.docker(
        "run", "--rm", "--gpus", "1", IMAGE, "printenv", "NVIDIA_VISIBLE_DEVICES", user=user
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_image_labels_claiming_every_gpu_give_nothing(stack):
    """Containers of an image labelled with every UUID hold nothing: not after their create
    events, not after a full reconcile (ds01d restarted); another user still gets a GPU."""
    made = stack.docker("create", "--name", "forged", FORGED_IMAGE, "true", user=FORGER)
    assert made.returncode == 0, made.stderr
    # Root straight on dockerd: nothing blanks the image's labels on this one.
    direct = stack.docker("create", FORGED_IMAGE, "true", direct=True)
    assert direct.returncode == 0, direct.stderr
    cid = direct.stdout.strip()
    labels = json.loads(stack.docker("inspect", cid, direct=True).stdout)[0]["Config"]["Labels"]
    assert labels["ds01.devices"] == EVERY
    assert any("ignored" in c for c in settled(stack, cid))
    assert set(holders(stack).values()) == {None}
    stack.kill_ds01d()
    stack.start_ds01d()  # a full rebuild from Docker
    assert set(holders(stack).values()) == {None}
    assert a_gpu_for(stack, OTHER).startswith("MIG-")
    assert a_gpu_for(stack, FORGER).startswith("MIG-")  # nothing counted against their quota


def test_root_created_container_with_forged_labels_gives_nothing(stack):
    """Root straight on dockerd, labels naming every device but no DeviceRequests: ignored."""
    made = stack.docker(
        "create",
        "--label",
        f"ds01.devices={EVERY}",
        "--label",
        f"ds01.user={FORGER}",
        IMAGE,
        "sleep",
        "60",
        direct=True,
    )
    assert made.returncode == 0, made.stderr
    cid = made.stdout.strip()
    assert any("ignored" in c for c in settled(stack, cid))
    assert set(holders(stack).values()) == {None}
    assert a_gpu_for(stack, OTHER).startswith("MIG-")
    assert a_gpu_for(stack, FORGER).startswith("MIG-")  # nothing counted against their quota


def test_root_created_container_on_other_devices_does_not_move_the_claim(stack):
    """Labels name the whole GPU, DeviceRequests a MIG instance: the label is not believed;
    the whole GPU stays free and what it really has is not double-booked once it runs."""
    made = stack.docker(
        "create",
        "--gpus",
        f"device={MIG_3G}",
        "--label",
        f"ds01.devices={WHOLE}",
        "--label",
        f"ds01.user={FORGER}",
        IMAGE,
        "sleep",
        "60",
        direct=True,
    )
    assert made.returncode == 0, made.stderr
    cid = made.stdout.strip()
    assert any("ignored" in c for c in settled(stack, cid))
    assert holders(stack)[WHOLE] is None and holders(stack)[MIG_3G] is None
