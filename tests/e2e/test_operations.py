"""Operating DS01: /metrics after a scripted workload, the audit trail, DCGM's job mapping,
and the admin commands against a running ds01d."""

from __future__ import annotations

import json
import socket
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.users import ensure_user
from tests.stack.ds01 import IMAGE, Ds01Stack

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

USER, ADMIN = "ops-olga", "ops-adam"
POLICY = f"""
defaults:
  max_mig_instances: 1
  gpu_hold_after_stop: 0
groups:
  students:
    members: [{USER}]
  admins:
    admin: true
    members: [{ADMIN}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ops():
    ensure_user(USER)
    ensure_user(ADMIN)
    port = free_port()
    s = Ds01Stack(
        Path(tempfile.mkdtemp(prefix="ds01o-", dir="/tmp")),
        POLICY,
        extra_args=("--metrics-address", f"127.0.0.1:{port}"),
    )
    s.metrics_url = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]
    s.start()
    try:
        yield s
    finally:
        s.stop()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_what_the_workload_did(ops):
    """Three allowed runs, two refusals, one GPU held: the scrape says exactly that."""
    before = scrape(ops.metrics_url)
    for _ in range(3):
        assert ops.docker("create", IMAGE, "true", user=USER).returncode == 0
    assert ops.docker("create", "--privileged", IMAGE, "true", user=USER).returncode != 0
    assert ops.docker("create", "--cap-add", "NET_ADMIN", IMAGE, "true", user=USER).returncode != 0
    assert (
        ops.docker(
            "run", "-d", "--name", "gpu", "--gpus", "1", IMAGE, "sleep", "300", user=USER
        ).returncode
        == 0
    )
    time.sleep(0.3)
    after = scrape(ops.metrics_url)
    create = {"door": "gateway", "endpoint": "/containers/create"}

    def delta(**labels: str) -> float:
        name = "ds01_decisions_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(**create, result="allow", reason="ok") == 4
    assert delta(**create, result="deny", reason="privileged") == 1
    assert delta(**create, result="deny", reason="cap_add") == 1
    assert value(after, "ds01_devices", kind="mig", state="allocated") == 1
    held = [k for k in after if k[0] == "ds01_device_holder_info" and ("user", USER) in k[1]]
    assert len(held) == 1
    assert value(after, "ds01_gpu_equivalents_held", user=USER, group="students") == pytest.approx(
        1 / 7, abs=1e-3
    )
    assert (
        value(after, "ds01_gateway_request_duration_seconds_count", endpoint="/containers/create")
        >= 6
    )


def test_job_mapping_follows_allocations_and_releases(ops):
    """dcgm-exporter's mapping directory names the holder while held, and forgets it after."""
    mapping = ops.state_dir / "job-mapping"
    ops.remove_all_containers()
    time.sleep(0.5)
    assert (
        ops.docker(
            "run", "-d", "--name", "mapped", "--gpus", "1", IMAGE, "sleep", "300", user=USER
        ).returncode
        == 0
    )
    time.sleep(0.3)
    files = {p.name: p.read_text().strip() for p in mapping.iterdir() if not p.name.startswith(".")}
    assert len(files) == 1
    ((name, owner),) = files.items()
    assert name.startswith("0.") or name.startswith("1.")  # GPU.GI of a MIG instance
    assert owner.startswith(f"{USER}/")
    assert ops.docker("rm", "-f", "mapped", user=USER).returncode == 0
    deadline = time.monotonic() + 10
    while (
        any(not p.name.startswith(".") for p in mapping.iterdir()) and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert not [p for p in mapping.iterdir() if not p.name.startswith(".")]


def test_audit_log_records_decisions_allocations_and_releases(ops):
    """One JSON line per decision, allocation and release, with who, what and why."""
    ops.remove_all_containers()
    assert (
        ops.docker(
            "run", "-d", "--name", "aud", "--gpus", "1", IMAGE, "sleep", "300", user=USER
        ).returncode
        == 0
    )
    assert ops.docker("rm", "-f", "aud", user=USER).returncode == 0
    time.sleep(0.5)
    events = ops.audit_events()
    kinds = {e["event"] for e in events if e.get("user") == USER}
    assert {"decision", "created", "allocate", "release"} <= kinds
    denial = next(e for e in events if e.get("result") == "deny" and e.get("user") == USER)
    assert (
        denial["reason"].startswith("ds01: ") and denial["uid"] is not None and denial["endpoint"]
    )
    created = next(e for e in events if e["event"] == "created" and e["user"] == USER)
    assert any(c.startswith("CgroupParent=") for c in created["changes"])


def test_admin_commands_against_the_running_daemon(ops):
    """`ds01 status/gpus/users/events` work for an admin and are refused to a student."""
    assert (
        ops.docker(
            "run", "-d", "--name", "st", "--gpus", "1", IMAGE, "sleep", "300", user=USER
        ).returncode
        == 0
    )
    status = ops.ds01("status", user=ADMIN)
    assert status.returncode == 0 and "in use" in status.stdout and USER in status.stdout
    gpus = json.loads(ops.ds01("gpus", "--json", user=ADMIN).stdout)
    assert any(d["user"] == USER for d in gpus["devices"])
    users = json.loads(ops.ds01("users", "--json", user=ADMIN).stdout)
    assert any(u["user"] == USER and u["gpueq"] > 0 for u in users["users"])
    events = ops.ds01("events", "-n", "5", "--json", user=ADMIN)
    assert events.returncode == 0 and len(events.stdout.strip().splitlines()) == 5
    refused = ops.ds01("events", user=USER)
    assert refused.returncode == 1 and "for admins" in refused.stderr
    mine = json.loads(ops.ds01("gpus", "--json", user=USER).stdout)
    assert all(d["user"] in (None, USER) for d in mine["devices"])
    why = json.loads(ops.ds01("why", "st", "--json", user=USER).stdout)
    assert {e["event"] for e in why["events"]} >= {"created", "allocate"}
    assert ops.ds01("why", "st", user=ADMIN).returncode == 0


def test_doctor_on_a_running_deployment(ops):
    """`ds01 doctor` finds the gateway, the plugin and the policy; a socket in group docker is
    reported with its fix."""
    result = ops.ds01(
        "doctor",
        "--gateway-socket",
        str(ops.gateway_socket),
        "--docker-host",
        ops.dockerd.host,
        "--plugin-socket",
        str(ops.plugin_socket),
        "--plugin-name",
        ops.plugin_name,
        "--policy",
        str(ops.policy_file),
    )
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok ") and "gateway" in line for line in lines), result.stdout
    assert any(line.startswith("ok ") and "AuthZ plugin" in line for line in lines), result.stdout
    assert any(line.startswith("ok ") and "policy" in line for line in lines), result.stdout
    assert result.returncode in (0, 1)
