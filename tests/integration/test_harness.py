"""Proves the test harness works: private dockerd, busybox image, fake GPU hook, Unix users."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.conftest import new_base_dir, require_docker
from tests.harness import (
    PrivateDockerd,
    build_busybox_rootfs,
    ensure_user,
    import_busybox_image,
    install_fake_hook,
    read_hook_records,
    remove_plugin_spec,
    remove_user,
    write_plugin_spec,
)
from tests.harness.fake_nvidia_hook import hook_main

TEST_USER = "ds01t-harness"


@pytest.mark.docker
def test_run_echo(private_dockerd: PrivateDockerd, busybox_image: str) -> None:
    result = private_dockerd.docker("run", "--rm", busybox_image, "echo", "hi", check=True)
    assert result.stdout == "hi\n"


@pytest.mark.docker
def test_image_has_users_and_tmp(private_dockerd: PrivateDockerd, busybox_image: str) -> None:
    result = private_dockerd.docker(
        "run", "--rm", "--user", "nobody", busybox_image,
        "sh", "-c", "id -u; stat -c %a /tmp; touch /tmp/x && echo ok",
        check=True,
    )  # fmt: skip
    assert result.stdout.split() == ["65534", "1777", "ok"]


@pytest.mark.docker
def test_fake_gpu_visible_and_recorded(
    private_dockerd: PrivateDockerd, busybox_image: str, fake_hook_records: Path
) -> None:
    mark = uuid.uuid4().hex
    result = private_dockerd.docker(
        "run", "--rm", "-e", f"DS01_MARK={mark}", "--gpus", '"device=GPU-aaaa"',
        busybox_image, "printenv", "NVIDIA_VISIBLE_DEVICES",
        check=True,
    )  # fmt: skip
    assert result.stdout == "GPU-aaaa\n"
    mine = [r for r in read_hook_records(fake_hook_records) if f"DS01_MARK={mark}" in r["env"]]
    assert len(mine) == 1
    assert mine[0]["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaaa"
    assert mine[0]["argv"] == ["prestart"]
    assert len(mine[0]["container_id"]) == 64


@pytest.mark.docker
def test_no_gpu_request_means_no_hook(
    private_dockerd: PrivateDockerd, busybox_image: str, fake_hook_records: Path
) -> None:
    mark = uuid.uuid4().hex
    result = private_dockerd.docker(
        "run", "--rm", "-e", f"DS01_MARK={mark}", busybox_image, "printenv",
        "NVIDIA_VISIBLE_DEVICES",
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    assert not [r for r in read_hook_records(fake_hook_records) if f"DS01_MARK={mark}" in r["env"]]


@pytest.mark.docker
def test_test_user_can_runuser() -> None:
    require_docker()
    try:
        uid, gid, home = ensure_user(TEST_USER)
        assert ensure_user(TEST_USER) == (uid, gid, home)  # idempotent
        result = subprocess.run(
            ["runuser", "-u", TEST_USER, "--", "id", "-u"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.strip() == str(uid)
        assert os.path.isdir(home)
    finally:
        remove_user(TEST_USER)
        remove_user(TEST_USER)  # idempotent


@pytest.mark.docker
def test_stop_kills_containers_and_is_idempotent() -> None:
    require_docker()
    base = new_base_dir()
    try:
        with PrivateDockerd(base, socket_mode=0o666) as daemon:
            assert os.stat(daemon.socket_path).st_mode & 0o777 == 0o666
            tag = import_busybox_image(daemon.host)
            daemon.docker("run", "-d", tag, "sleep", "300", check=True)
            pid = daemon.pid
        assert pid is not None and not os.path.exists(f"/proc/{pid}")
        assert not daemon.running and not os.path.exists(daemon.socket_path)
        assert base not in Path("/proc/self/mountinfo").read_text()
        leftovers = subprocess.run(["pgrep", "-f", base], capture_output=True, text=True).stdout
        assert leftovers == ""
        daemon.stop()  # idempotent
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.docker
def test_plugin_spec_roundtrip() -> None:
    require_docker()
    name = f"ds01t{uuid.uuid4().hex[:8]}"
    spec = write_plugin_spec(name, "/run/ds01-test/plugin.sock")
    try:
        assert spec.read_text().strip() == "unix:///run/ds01-test/plugin.sock"
    finally:
        remove_plugin_spec(name)
    assert not spec.exists()
    remove_plugin_spec(name)


@pytest.mark.docker
def test_a_killed_runs_plugin_spec_is_removed_by_the_next_one(tmp_path) -> None:
    """A spec pointing at a dead socket would slow every volume call of every dockerd."""
    require_docker()
    stale, live = (f"ds01t{uuid.uuid4().hex[:8]}" for _ in range(2))
    dead = write_plugin_spec(stale, tmp_path / "gone.sock")
    (tmp_path / "live.sock").touch()
    try:
        write_plugin_spec(live, tmp_path / "live.sock")
        assert not dead.exists()
        assert write_plugin_spec(live, tmp_path / "live.sock").exists()
    finally:
        remove_plugin_spec(stale)
        remove_plugin_spec(live)


def test_rootfs_tarball_layout() -> None:
    assert os.path.exists("/bin/busybox"), "busybox-static missing: run scripts/setup-host.sh"
    with tarfile.open(fileobj=io.BytesIO(build_busybox_rootfs())) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/busybox"].mode == 0o755
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["tmp"].mode == 0o1777
    assert "bin/printenv" in members and "etc/passwd" in members and "etc/group" in members


def test_hook_main_records_env(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    env = ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_VISIBLE_DEVICES=GPU-b"]
    (bundle / "config.json").write_text(json.dumps({"process": {"env": env}}))
    state = json.dumps({"id": "c1", "pid": 42, "bundle": str(bundle)})
    record = tmp_path / "rec.jsonl"
    rc = hook_main(
        ["nvidia-container-runtime-hook", "prestart"],
        default_record=str(record),
        stdin=io.StringIO(state),
        environ={},
    )
    assert rc == 0
    (rec,) = read_hook_records(record)
    # Last occurrence wins, as in the real toolkit and in runc's process env.
    assert rec["NVIDIA_VISIBLE_DEVICES"] == "GPU-b"
    assert rec["container_id"] == "c1" and rec["env"] == env


def test_installed_hook_runs(tmp_path: Path) -> None:
    hook = install_fake_hook(tmp_path / "h")
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"process": {"env": ["X=1"]}}))
    record = tmp_path / "out.jsonl"
    subprocess.run(
        [hook, "prestart"],
        input=json.dumps({"id": "c2", "bundle": str(bundle)}),
        text=True,
        check=True,
        env={"DS01_FAKE_HOOK_RECORD": str(record)},
    )
    assert [r["container_id"] for r in read_hook_records(record)] == ["c2"]
