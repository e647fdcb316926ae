"""Stress: 200 concurrent GPU creates from 20 users on a 4-GPU mixed server, then a crash.

Through the real gateway and a real dockerd with the fake NVIDIA hook. Afterwards no device is
held by two running containers, no quota is exceeded, every loser was told why, and after
`kill -9` of ds01d mid-burst the rebuilt ledger equals what the containers hold.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.harness.fake_nvidia_hook import read_hook_records
from tests.harness.users import ensure_user
from tests.stack.ds01 import IMAGE, Ds01Stack
from tests.stack.rawhttp import request as http

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

USERS = [f"st-u{i:02d}" for i in range(20)]
STUDENTS, RESEARCHERS = USERS[:14], USERS[14:]
PER_USER = 10
POLICY = f"""
defaults:
  max_mig_instances: 1
  max_gpus: 0
  max_gpus_per_container: 1
  gpu_wait: 0
  gpu_hold_after_stop: 0
groups:
  students:
    members: [{", ".join(STUDENTS)}]
  researchers:
    members: [{", ".join(RESEARCHERS)}]
    priority: 50
    allow_full_gpu: true
    max_gpus: 1
    max_mig_instances: 1
  admins:
    admin: true
    members: [root]
"""
CREATE = json.dumps(
    {
        "Image": IMAGE,
        "Cmd": ["sleep", "600"],
        "HostConfig": {"DeviceRequests": [{"Driver": "", "Count": 1, "Capabilities": [["gpu"]]}]},
    }
).encode()


def burst_as(user: str, sock_path: str, n: int) -> int:
    """Fork a child that becomes ``user`` and fires ``n`` concurrent create+start requests.

    Returns the read end of a pipe carrying one JSON line per request.
    """
    import pwd

    entry = pwd.getpwnam(user)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to the user, then hammer the gateway
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            lock = threading.Lock()
            out = os.fdopen(write_fd, "w")

            def one() -> None:
                row: dict = {"user": user}
                try:
                    status, body = http(sock_path, "POST", "/v1.41/containers/create", CREATE)
                    row.update(status=status, message=body.get("message"), id=body.get("Id"))
                    if status == 201:
                        start, answer = http(
                            sock_path, "POST", f"/v1.41/containers/{body['Id']}/start"
                        )
                        row.update(start=start, start_message=answer.get("message"))
                except (OSError, ValueError, IndexError) as exc:  # ds01d killed mid-request
                    row.update(status=0, message=f"connection: {exc!r}")
                with lock:
                    out.write(json.dumps(row) + "\n")
                    out.flush()

            threads = [threading.Thread(target=one) for _ in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out.close()
        finally:
            os._exit(0)
    os.close(write_fd)
    return read_fd, pid


def run_burst(stack: Ds01Stack, during=None) -> list[dict]:
    children = [burst_as(user, str(stack.gateway_socket), PER_USER) for user in USERS]
    if during is not None:
        during()
    rows = []
    for fd, pid in children:
        with os.fdopen(fd) as f:
            rows += [json.loads(line) for line in f if line.strip()]
        os.waitpid(pid, 0)
    return rows


def holdings(stack: Ds01Stack) -> dict[str, tuple[str, str, list[str]]]:
    """container id -> (owner, state, devices) for every container, from dockerd itself."""
    ids = stack.docker("ps", "-aq", "--no-trunc", direct=True).stdout.split()
    if not ids:
        return {}
    out = {}
    for info in json.loads(stack.docker("inspect", *ids, direct=True).stdout):
        labels = info["Config"]["Labels"] or {}
        env = dict(e.split("=", 1) for e in info["Config"]["Env"] or [])
        devices = [d for d in labels.get("ds01.devices", "").split(",") if d]
        assert env.get("NVIDIA_VISIBLE_DEVICES") == ",".join(devices)
        out[info["Id"]] = (labels.get("ds01.user"), info["State"]["Status"], devices)
    return out


def assert_no_double_booking(held: dict[str, tuple[str, str, list[str]]]) -> None:
    seen: dict[str, str] = {}
    for cid, (_, state, devices) in held.items():
        if state != "running":
            continue
        for device in devices:
            assert device not in seen, f"{device} held by {seen[device]} and {cid}"
            seen[device] = cid


def assert_quotas(held: dict[str, tuple[str, str, list[str]]]) -> None:
    per_user: dict[str, int] = {}
    for owner, _, devices in held.values():
        per_user[owner] = per_user.get(owner, 0) + len(devices)
    for owner, count in per_user.items():
        limit = 2 if owner in RESEARCHERS else 1  # max_gpus 1 + max_mig 1, or max_mig 1
        assert count <= limit, f"{owner} holds {count} devices"


@pytest.fixture(scope="module")
def stress_stack():
    for user in USERS:
        ensure_user(user)
    s = Ds01Stack(Path(tempfile.mkdtemp(prefix="ds01s-", dir="/tmp")), POLICY)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_200_concurrent_creates_never_double_book(stress_stack):
    """20 users x 10 concurrent GPU creates: one holder per device, quotas kept, losers told why."""
    stack = stress_stack
    stack.remove_all_containers()
    rows = run_burst(stack)
    assert len(rows) == len(USERS) * PER_USER
    winners = [r for r in rows if r["status"] == 201]
    losers = [r for r in rows if r["status"] != 201]
    assert winners and losers
    for row in losers:
        assert row["message"] and row["message"].startswith("ds01: "), row
        assert "To fix:" in row["message"], row
    for row in winners:
        assert row["start"] == 204, row
    held = holdings(stack)
    assert_no_double_booking(held)
    assert_quotas(held)
    # 13 devices (11 MIG + 2 whole GPUs): all of them were handed out, to different users
    assert sum(len(d) for _, _, d in held.values()) == 13
    records = {r["NVIDIA_VISIBLE_DEVICES"] for r in read_hook_records(stack.hook_records)}
    assert {d for _, _, devs in held.values() for d in devs} <= records


def ledger_view(stack: Ds01Stack) -> dict[str, str]:
    """device -> container id, as ds01d's ledger says (through `ds01 gpus`, as root = admin)."""
    result = stack.ds01("gpus", "--json")
    assert result.returncode == 0, result.stderr
    return {
        d["uuid"]: d["container"] for d in json.loads(result.stdout)["devices"] if d["container"]
    }


def test_kill_9_mid_burst_then_the_rebuilt_ledger_matches_docker(stress_stack):
    """ds01d killed with SIGKILL during a burst comes back with exactly what containers hold."""
    stack = stress_stack
    stack.remove_all_containers()
    time.sleep(1)

    def crash() -> None:
        time.sleep(0.3)
        stack.kill_ds01d(signal.SIGKILL)
        stack.start_ds01d()

    rows = run_burst(stack, during=crash)
    assert len(rows) == len(USERS) * PER_USER
    assert any(r["status"] == 0 for r in rows), "the kill did not land mid-burst"
    deadline = time.monotonic() + 30
    while True:  # the restarted ds01d rebuilds its ledger from labels when events connect
        held = holdings(stack)
        expected = {
            d: cid
            for cid, (_, state, devs) in held.items()
            for d in devs
            if state in ("running", "created")
        }
        view = ledger_view(stack)
        if view == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert_no_double_booking(held)
    assert_quotas(held)
    assert view == expected
