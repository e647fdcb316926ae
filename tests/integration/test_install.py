"""install.sh and uninstall.sh: a round trip leaves the host exactly as it was; the dockerd
fragment is accepted by a real dockerd and makes its socket root-only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.harness.dockerd import remove_plugin_spec, write_plugin_spec

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parents[2]


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes | None]]:
    """Every path under root with its type, mode and (for files) content."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        out[str(path.relative_to(root))] = (
            kind,
            stat.S_IMODE(st.st_mode),
            path.read_bytes() if kind == "file" else None,
        )
    return out


def fake_host(tmp_path: Path, daemon_json: dict | None) -> Path:
    root = tmp_path / "root"
    for d in ("etc/docker", "etc/systemd/system", "var/lib", "opt", "run"):
        (root / d).mkdir(parents=True)
    (root / "etc/hostname").write_text("gpu-server\n")
    if daemon_json is not None:
        (root / "etc/docker/daemon.json").write_text(json.dumps(daemon_json, indent=4))
        os.chmod(root / "etc/docker/daemon.json", 0o600)
    return root


def run(script: str, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(REPO / "packaging" / script), "--root", str(root), "--no-systemctl", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.parametrize(
    "daemon_json",
    [
        None,
        {
            "log-driver": "json-file",
            "exec-opts": ["native.cgroupdriver=systemd"],
            "authorization-plugins": ["other"],
        },
    ],
)
def test_install_then_uninstall_leaves_the_host_as_it_was(tmp_path, daemon_json):
    """Files, modes and directories are byte-identical after install + uninstall (twice installed)."""
    root = fake_host(tmp_path, daemon_json)
    before = snapshot(root)
    out = run("install.sh", root, "--no-pip")
    assert "(skipped) systemctl mask docker.socket" in out.stdout
    run("install.sh", root, "--no-pip")  # idempotent
    merged = json.loads((root / "etc/docker/daemon.json").read_text())
    assert merged["hosts"] == ["unix:///run/ds01/dockerd.sock"] and merged["group"] == "root"
    assert merged["authorization-plugins"][-1] == "ds01"
    if daemon_json:
        assert merged["log-driver"] == "json-file" and "other" in merged["authorization-plugins"]
        assert merged["exec-opts"] == ["native.cgroupdriver=systemd"]  # the admin's choice stays
    for path in (
        "etc/ds01/policy.yaml",
        "etc/systemd/system/ds01d.service",
        "etc/systemd/system/docker.service.d/ds01.conf",
        "etc/docker/plugins/ds01.spec",
    ):
        assert (root / path).is_file(), path
    run("uninstall.sh", root, "--purge")
    assert snapshot(root) == before


def test_uninstall_keeps_the_policy_unless_purged(tmp_path):
    """An admin's edited policy survives a plain uninstall."""
    root = fake_host(tmp_path, None)
    run("install.sh", root, "--no-pip")
    (root / "etc/ds01/policy.yaml").write_text("defaults: {max_cpus: 2}\n")
    run("uninstall.sh", root)
    assert (root / "etc/ds01/policy.yaml").read_text() == "defaults: {max_cpus: 2}\n"
    assert not (root / "etc/docker/daemon.json").exists()


def test_systemd_unit_verifies():
    """`systemd-analyze verify` accepts the unit (ExecStart pointed at this checkout's ds01d)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: scripts/setup-host.sh installs Debian's systemd"
    venv = REPO / ".venv" / "bin" / "ds01d"
    ds01d = shutil.which("ds01d") or (str(venv) if venv.exists() else "/bin/true")
    with tempfile.TemporaryDirectory() as tmp:
        unit = Path(tmp) / "ds01d.service"
        unit.write_text(
            (REPO / "packaging/ds01d.service")
            .read_text()
            .replace("/opt/ds01/venv/bin/ds01d", ds01d)
        )
        result = subprocess.run(
            [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
        )
    problems = [line for line in result.stderr.splitlines() if "ds01d.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_daemon_json_fragment_is_accepted_and_the_socket_is_root_only(tmp_path):
    """A real dockerd runs with the fragment (and a real ds01d as its plugin); its socket is 0660 root:root."""
    base = Path(tempfile.mkdtemp(prefix="ds01i-", dir="/tmp"))
    plugin = f"ds01i{os.getpid()}"
    fragment = json.loads((REPO / "packaging/daemon.json").read_text())
    fragment["hosts"] = [f"unix://{base}/real.sock"]
    fragment["authorization-plugins"] = [plugin]
    fragment.update(
        {
            "data-root": str(base / "data"),
            "exec-root": str(base / "exec"),
            "pidfile": str(base / "pid"),
            "bridge": "none",
            "iptables": False,
            "ip-masq": False,
            "storage-driver": "vfs",
        }
    )
    (base / "daemon.json").write_text(json.dumps(fragment))
    ds01d = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "authz_plugin.daemon",
            "--plugin-socket",
            str(base / "p.sock"),
            "--docker-host",
            f"unix://{base}/real.sock",
            "--inventory",
            "none",
            "--state-dir",
            str(base / "state"),
            "--no-cgroups",
        ],
        cwd=REPO,
    )
    dockerd = None
    try:
        for _ in range(100):
            if (base / "p.sock").exists():
                break
            time.sleep(0.05)
        write_plugin_spec(plugin, base / "p.sock")
        dockerd = subprocess.Popen(
            ["dockerd", "--config-file", str(base / "daemon.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sock = base / "real.sock"
        for _ in range(200):
            if (
                sock.exists()
                and subprocess.run(
                    ["docker", "-H", f"unix://{sock}", "version"], capture_output=True
                ).returncode
                == 0
            ):
                break
            time.sleep(0.1)
        st = sock.stat()
        assert stat.S_ISSOCK(st.st_mode) and (st.st_uid, st.st_gid) == (0, 0)
        assert stat.S_IMODE(st.st_mode) & 0o007 == 0
        info = json.loads(
            subprocess.run(
                ["docker", "-H", f"unix://{sock}", "info", "--format", "{{json .}}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert plugin in info["Plugins"]["Authorization"] and info["CgroupDriver"] == "cgroupfs"
    finally:
        if dockerd is not None:
            dockerd.send_signal(signal.SIGTERM)
            dockerd.wait(timeout=60)
        ds01d.terminate()
        ds01d.wait(timeout=30)
        remove_plugin_spec(plugin)
        subprocess.run(["umount", "-l", str(base / "exec")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
