"""Image ownership as real users: a user's image tags are theirs; others see them as missing.

alice builds ``e2e-alice/model``; bob can neither write over it (build, tag, import) nor over
a shared base image, and cannot inspect, save, remove or run it: to him it does not exist.
``docker images`` shows bob his own and the shared images only. The record survives a
restart of ds01d.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.harness.host_ledger import temp_dir
from tests.stack.ds01 import IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ALICE, BOB = "e2e-alice", "e2e-bob"


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr


@pytest.fixture(scope="module")
def files():
    """A build context and a tiny rootfs tar every test user can read."""
    base = temp_dir("ds01-img-")  # removed when the session ends
    os.chmod(base, 0o755)
    (base / "Dockerfile").write_text(f"FROM {IMAGE}\nRUN echo alice > /who\n")
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("who")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"bob\n"))
    (base / "rootfs.tar").write_bytes(data.getvalue())
    for path in base.iterdir():
        os.chmod(path, 0o644)
    return base


def build(stack, user: str, tag: str, context: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "DOCKER_HOST": stack.gateway,
        "DOCKER_BUILDKIT": "0",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
    }
    cmd = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items())]
    cmd += ["docker", "build", "-q", "-t", tag, str(context)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


@pytest.fixture
def model(clean, files):
    """alice's own image, built through the gateway; removed by alice afterwards."""
    tag = f"{ALICE}/model-{uuid.uuid4().hex[:6]}:latest"
    ok(build(clean, ALICE, tag, files))
    yield tag
    clean.docker("rmi", "-f", tag, direct=True)


def test_bob_cannot_write_over_alices_image_or_a_shared_one(clean, files, model):
    docker = clean.docker
    taken = f"the image name {model} belongs to another user"
    refused(docker("tag", IMAGE, model, user=BOB), taken)
    refused(build(clean, BOB, model, files), taken)
    refused(docker("import", f"{files}/rootfs.tar", model, user=BOB), taken)
    refused(docker("tag", IMAGE, IMAGE, user=BOB), f"{IMAGE} is a shared image")
    refused(docker("import", f"{files}/rootfs.tar", IMAGE, user=BOB), "is a shared image")
    # alice's image is still hers, unchanged
    assert ok(docker("run", "--rm", model, "cat", "/who", user=ALICE)).strip() == "alice"


def test_alices_image_looks_missing_to_bob(clean, model):
    docker = clean.docker
    missing = f"No such image: {model}"
    refused(docker("image", "inspect", model, user=BOB), missing)
    refused(docker("history", model, user=BOB), missing)
    refused(docker("save", "-o", f"/home/{BOB}/stolen.tar", model, user=BOB), missing)
    # rmi -f of a missing image is no error to the CLI: it says so, and nothing is removed
    assert missing in docker("rmi", "-f", model, user=BOB).stderr
    ok(docker("image", "inspect", model, user=ALICE))
    image_id = ok(docker("image", "inspect", "-f", "{{.Id}}", model, user=ALICE)).strip()
    short = image_id.removeprefix("sha256:")[:12]
    refused(docker("image", "inspect", short, user=BOB), f"No such image: {short}")
    refused(docker("tag", short, "e2e-bob/stolen", user=BOB), f"No such image: {short}")
    listed = ok(docker("images", "--format", "{{.Repository}}:{{.Tag}}", user=BOB)).split()
    assert model not in listed and IMAGE in listed
    assert model in ok(docker("images", "--format", "{{.Repository}}:{{.Tag}}", user=ALICE))


def test_bob_cannot_run_alices_image(clean, model):
    refused(clean.docker("run", "--rm", model, "true", user=BOB), f"No such image: {model}")


def test_bob_sees_his_own_and_shared_images_and_removes_his_own(clean):
    docker = clean.docker
    mine = f"{BOB}/tool-{uuid.uuid4().hex[:6]}:1"
    ok(docker("tag", IMAGE, mine, user=BOB))
    listed = ok(docker("images", "--format", "{{.Repository}}:{{.Tag}}", user=BOB)).split()
    assert mine in listed and IMAGE in listed
    assert mine not in ok(docker("images", "--format", "{{.Repository}}:{{.Tag}}", user=ALICE))
    refused(docker("rmi", IMAGE, user=BOB), "is shared (or also tagged by others)")
    ok(docker("rmi", mine, user=BOB))
    # bob's namespace stays his, even while nothing is in it
    refused(docker("tag", IMAGE, mine, user=ALICE), f"is in {BOB}'s namespace")
    # a plain name (allowed in Compose v1's project_service form) is free again once its
    # owner removed it; a public-looking plain name is refused outright
    refused(docker("tag", IMAGE, "lab-tool:1", user=BOB), "is outside your namespace")
    loose = f"lab_tool_{uuid.uuid4().hex[:6]}:1"
    ok(docker("tag", IMAGE, loose, user=BOB))
    refused(docker("tag", IMAGE, loose, user=ALICE), "belongs to another user")
    ok(docker("rmi", loose, user=BOB))
    ok(docker("tag", IMAGE, loose, user=ALICE))
    ok(docker("rmi", loose, user=ALICE))


def test_load_is_for_admins(clean, files):
    refused(
        clean.docker("load", "-i", f"{files}/rootfs.tar", user=BOB),
        "docker load is for admins",
    )


def test_the_record_survives_a_restart_of_ds01d(clean):
    docker = clean.docker
    kept = f"{ALICE}/keep-{uuid.uuid4().hex[:6]}:1"
    ok(docker("tag", IMAGE, kept, user=ALICE))
    try:
        clean.kill_ds01d()
        clean.start_ds01d()
        refused(docker("tag", IMAGE, kept, user=BOB), f"the image name {kept} belongs to")
        refused(docker("image", "inspect", kept, user=BOB), f"No such image: {kept}")
    finally:
        ok(docker("rmi", kept, user=ALICE))
