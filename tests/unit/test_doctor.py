"""`ds01 doctor` against faked hosts: each check passes on a good host and names the fix on a bad one."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from authz_plugin.doctor import Host, doctor, run_checks

GOOD_INFO = {
    "Plugins": {"Authorization": ["ds01"]},
    "CgroupDriver": "cgroupfs",
    "DefaultRuntime": "runc",
}


@pytest.fixture
def host(tmp_path: Path):
    """A faked well-deployed host: root-only real socket, gateway, plugin, valid policy."""
    real = tmp_path / "real.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(real))
    real.chmod(0o660)
    (tmp_path / "daemon.json").write_text(json.dumps({"hosts": [f"unix://{real}"]}))
    (tmp_path / "policy.yaml").write_text("defaults: {max_cpus: 4}\n")
    (tmp_path / "ds01.spec").write_text("unix:///run/docker/plugins/ds01.sock\n")
    answers = {
        ("gw", "/ds01/v1/whoami"): (200, {}, {"user": "root"}),
        (str(real), "/info"): (200, {}, dict(GOOD_INFO)),
    }

    def get(sock: str, path: str):
        key = ("gw" if sock == "gw" else sock, path)
        if key not in answers:
            raise ConnectionRefusedError(111, "refused")
        return answers[key]

    h = Host(
        daemon_json=str(tmp_path / "daemon.json"),
        gateway_socket="gw",
        plugin_socket=str(tmp_path / "none"),
        plugin_spec=str(tmp_path / "ds01.spec"),
        policy=str(tmp_path / "policy.yaml"),
        get=get,
        nvml=lambda: SimpleNamespace(devices=[1, 2], problems=[]),
    )
    h.answers = answers  # type: ignore[attr-defined]
    h.real = real  # type: ignore[attr-defined]
    yield h
    listener.close()


def by_name(host: Host) -> dict:
    return {c.name: c for c in run_checks(host)}


def test_a_good_deployment_passes(host, capsys):
    """Every check passes and the exit code is 0."""
    assert all(c.ok for c in run_checks(host))
    assert doctor([], host) == 0
    assert "all checks passed" in capsys.readouterr().out


def test_world_accessible_dockerd_socket_is_a_problem(host):
    """A dockerd socket users can open lets them bypass DS01."""
    host.real.chmod(0o666)
    check = by_name(host)["dockerd socket"]
    assert not check.ok and "bypass" in check.detail and '"group": "root"' in check.fix


def test_dockerd_itself_on_the_user_socket_is_a_problem(host):
    """If /var/run/docker.sock is dockerd (404 on /ds01/v1/whoami), the gateway is not in front."""
    host.answers[("gw", "/ds01/v1/whoami")] = (
        404,
        {"server": "Docker/20.10.24 (linux)"},
        {"message": "page not found"},
    )
    check = by_name(host)["gateway"]
    assert not check.ok and "Docker/20.10.24" in check.detail


def test_unregistered_plugin_is_a_problem(host):
    """dockerd not listing ds01 among its authorization plugins is reported with the daemon.json fix."""
    host.answers[(str(host.real), "/info")][2]["Plugins"]["Authorization"] = []
    check = by_name(host)["AuthZ plugin"]
    assert not check.ok and "authorization-plugins" in check.fix


def test_cgroup_driver_mismatch_is_a_problem(host):
    """dockerd's cgroup driver must be the policy's."""
    host.answers[(str(host.real), "/info")][2]["CgroupDriver"] = "systemd"
    assert not by_name(host)["cgroup driver"].ok


def test_nvidia_default_runtime_is_a_problem(host):
    """An nvidia default runtime lets image ENV NVIDIA_VISIBLE_DEVICES=all through outside DS01."""
    host.answers[(str(host.real), "/info")][2]["DefaultRuntime"] = "nvidia"
    check = by_name(host)["default runtime"]
    assert (
        not check.ok
        and "NVIDIA_VISIBLE_DEVICES=all" in check.detail
        and "default-runtime" in check.fix
    )


def test_nvml_unreachable_is_a_problem(host):
    """No NVML and no devices: say so and name the inventory-file alternative."""
    host.nvml = lambda: SimpleNamespace(devices=[], problems=["NVML library not found"])
    check = by_name(host)["NVML"]
    assert not check.ok and "--inventory" in check.fix


def test_invalid_policy_is_a_problem(host, capsys):
    """An invalid policy is reported with file:line and the validate command; exit 1."""
    Path(host.policy).write_text("defaults:\n  memory: lots\n")
    check = by_name(host)["policy"]
    assert not check.ok and ":2 defaults.memory" in check.detail
    assert doctor([], host) == 1
    assert "To fix:" in capsys.readouterr().out
