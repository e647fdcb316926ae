"""install.sh and uninstall.sh: a round trip leaves the host exactly as it was; the dockerd
fragment, merged into an admin's daemon.json, is accepted by a real dockerd, makes its socket
root-only, and `ds01 doctor` passes on that deployment."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.dockerd import PrivateDockerd, remove_plugin_spec, write_plugin_spec
from tests.harness.host_ledger import temp_dir

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parents[2]

# Debian docker.io's units, as the installer finds them on a host (trimmed).
DEBIAN_DOCKER_SERVICE = """[Unit]
Description=Docker Application Container Engine
After=network-online.target docker.socket firewalld.service containerd.service
Wants=network-online.target containerd.service
Requires=docker.socket

[Service]
Type=notify
EnvironmentFile=-/etc/default/docker
ExecStart=/usr/sbin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock $DOCKER_OPTS
ExecReload=/bin/kill -s HUP $MAINPID

[Install]
WantedBy=multi-user.target
"""
DOCKER_SOCKET = """[Socket]
ListenStream=/run/docker.sock
SocketMode=0660
SocketUser=root
SocketGroup=docker
"""
ADMIN_DAEMON_JSON = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "exec-opts": ["native.cgroupdriver=cgroupfs"],
    "authorization-plugins": [],
}


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: type, mode, owner, and content and mtime (files) or target (links)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        key = str(path.relative_to(root))
        owner = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        if stat.S_ISLNK(st.st_mode):
            out[key] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[key] = ("dir", *owner)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[key] = ("file", *owner, digest, st.st_mtime_ns)
    return out


def host_state(paths: list[str]) -> dict[str, tuple | None]:
    """The real host's state of these absolute paths (None: absent)."""
    out: dict[str, tuple | None] = {}
    for path in paths:
        p = Path(path)
        if p.is_symlink():
            out[path] = ("link", os.readlink(p))
        elif p.is_file():
            out[path] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[path] = ("dir",) if p.is_dir() else None
    return out


def fake_host(tmp_path: Path, daemon_json: dict | str | None, unit: str | None = None) -> Path:
    root = tmp_path / "root"
    for d in ("etc/docker", "etc/systemd/system", "etc/default", "lib/systemd/system", "run"):
        (root / d).mkdir(parents=True)
    (root / "etc/hostname").write_text("gpu-server\n")
    (root / "etc/default/docker").write_text('#DOCKER_OPTS="--dns 8.8.8.8"\n')
    (root / "lib/systemd/system/docker.service").write_text(unit or DEBIAN_DOCKER_SERVICE)
    (root / "lib/systemd/system/docker.socket").write_text(DOCKER_SOCKET)
    if daemon_json is not None:
        text = daemon_json if isinstance(daemon_json, str) else json.dumps(daemon_json, indent=4)
        (root / "etc/docker/daemon.json").write_text(text)
        os.chmod(root / "etc/docker/daemon.json", 0o600)
        os.utime(root / "etc/docker/daemon.json", ns=(1_600_000_000_000_000_000,) * 2)
    return root


def run(script: str, root: Path, *extra: str, rc: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(REPO / "packaging" / script), "--root", str(root), "--no-systemctl", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == rc, result.stdout + result.stderr
    return result


def touched(root: Path) -> list[str]:
    """Every host path the manifest under ``root`` names (files and directories)."""
    manifest = json.loads((root / "var/lib/ds01/install-manifest.json").read_text())
    return sorted({*manifest["files"], *manifest["dirs"], "/var/lib/ds01/install-manifest.json"})


@pytest.mark.parametrize(
    "daemon_json",
    [None, ADMIN_DAEMON_JSON, '{\n  "debug":true ,"authorization-plugins":["other"]}\n'],
    ids=["no-daemon-json", "admin-keys", "odd-formatting"],
)
def test_install_then_uninstall_leaves_the_host_as_it_was(tmp_path, daemon_json):
    """Files, modes, owners, times and directories are as before after install (twice) +
    uninstall --purge; the real host is not touched."""
    root = fake_host(tmp_path, daemon_json)
    before = snapshot(root)
    out = run("install.sh", root, "--no-pip")
    assert "(skipped) systemctl enable ds01d.service" in out.stdout
    assert "mask" not in out.stdout  # docker.service requires docker.socket: never masked
    paths = touched(root)
    real_before = host_state(paths)
    again = run("install.sh", root, "--no-pip")  # idempotent: nothing rewritten
    assert "wrote" not in again.stdout and "merged" not in again.stdout
    assert "systemctl stop docker.service" not in again.stdout  # dockerd keeps running

    merged = json.loads((root / "etc/docker/daemon.json").read_text())
    assert merged["hosts"] == ["unix:///run/ds01/dockerd.sock"] and merged["group"] == "root"
    assert merged["authorization-plugins"][-1] == "ds01"
    assert merged["exec-opts"] == ["native.cgroupdriver=cgroupfs"]
    if daemon_json == ADMIN_DAEMON_JSON:
        assert merged["log-opts"] == ADMIN_DAEMON_JSON["log-opts"]
        assert stat.S_IMODE((root / "etc/docker/daemon.json").stat().st_mode) == 0o600
    if daemon_json is not None:
        backup = root / "var/lib/ds01/backup/etc/docker/daemon.json.orig"
        assert backup.read_bytes() == before_bytes(before, daemon_json)
    for path in (
        "etc/ds01/policy.yaml",
        "etc/systemd/system/ds01d.service",
        "etc/systemd/system/docker.service.d/ds01.conf",
        "etc/systemd/system/docker.socket.d/ds01.conf",
        "etc/docker/plugins/ds01.spec",
        "opt/ds01/README.md",
    ):
        assert (root / path).is_file(), path
    assert os.readlink(root / "usr/local/bin/ds01") == "/opt/ds01/venv/bin/ds01"
    dropin = (root / "etc/systemd/system/docker.service.d/ds01.conf").read_text()
    assert (
        "\nExecStart=/usr/sbin/dockerd --containerd=/run/containerd/containerd.sock $DOCKER_OPTS\n"
        in dropin
    )

    out = run("uninstall.sh", root, "--purge")
    assert "restored /etc/docker/daemon.json" in out.stdout or daemon_json is None
    assert snapshot(root) == before
    assert host_state(paths) == real_before


def before_bytes(before: dict, daemon_json: dict | str) -> bytes:
    text = daemon_json if isinstance(daemon_json, str) else json.dumps(daemon_json, indent=4)
    return text.encode()


def test_uninstall_keeps_the_policy_unless_purged(tmp_path):
    """An admin's edited policy (and ds01d's state) survive a plain uninstall; the rest goes."""
    root = fake_host(tmp_path, None)
    before = snapshot(root)
    run("install.sh", root, "--no-pip")
    (root / "etc/ds01/policy.yaml").write_text("defaults: {max_cpus: 2}\n")
    (root / "var/lib/ds01/audit.jsonl").write_text("{}\n")
    out = run("uninstall.sh", root)
    assert "kept /etc/ds01/policy.yaml" in out.stdout
    assert (root / "etc/ds01/policy.yaml").read_text() == "defaults: {max_cpus: 2}\n"
    assert (root / "var/lib/ds01/audit.jsonl").exists()
    assert not (root / "etc/docker/daemon.json").exists()
    left = set(snapshot(root)) - set(before)
    assert left == {
        "etc/ds01",
        "etc/ds01/policy.yaml",
        "var",
        "var/lib",
        "var/lib/ds01",
        "var/lib/ds01/audit.jsonl",
    }


def test_an_edited_daemon_json_is_restored_and_the_edit_kept_aside(tmp_path):
    """An admin's change to daemon.json after the install is not lost silently."""
    root = fake_host(tmp_path, ADMIN_DAEMON_JSON)
    original = (root / "etc/docker/daemon.json").read_bytes()
    run("install.sh", root, "--no-pip")
    merged = json.loads((root / "etc/docker/daemon.json").read_text())
    (root / "etc/docker/daemon.json").write_text(json.dumps({**merged, "debug": True}))
    out = run("uninstall.sh", root, "--purge")
    assert "edited after the install" in out.stdout
    assert (root / "etc/docker/daemon.json").read_bytes() == original
    assert json.loads((root / "etc/docker/daemon.json.ds01-uninstall").read_text())["debug"]


def test_a_changed_backup_stops_the_uninstall_before_any_change(tmp_path):
    """If the backup no longer matches its recorded hash, nothing is restored or removed."""
    root = fake_host(tmp_path, ADMIN_DAEMON_JSON)
    run("install.sh", root, "--no-pip")
    (root / "var/lib/ds01/backup/etc/docker/daemon.json.orig").write_text("{}")
    installed = snapshot(root)
    tool, log = fake_systemctl(tmp_path)
    out = subprocess.run(
        [
            "bash",
            str(REPO / "packaging/uninstall.sh"),
            "--root",
            str(root),
            "--systemctl",
            str(tool),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 3, out.stdout + out.stderr
    assert "was changed since the install" in out.stderr and "nothing was restored" in out.stderr
    assert calls(log) == []  # dockerd was not stopped either
    assert snapshot(root) == installed


def test_prefix_etc_and_a_docker_ce_unit(tmp_path):
    """--prefix and --etc reach the unit; docker-ce's /usr/bin/dockerd is kept in the drop-in."""
    unit = DEBIAN_DOCKER_SERVICE.replace(
        "/usr/sbin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock $DOCKER_OPTS",
        "/usr/bin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock",
    )
    root = fake_host(tmp_path, None, unit=unit)
    before = snapshot(root)
    run("install.sh", root, "--no-pip", "--prefix", "/srv/ds01", "--etc", "/usr/local/etc")
    service = (root / "etc/systemd/system/ds01d.service").read_text()
    assert "ExecStart=/srv/ds01/venv/bin/ds01d --policy /usr/local/etc/ds01/policy.yaml " in service
    assert "/opt/ds01" not in service and " /etc/ds01" not in service
    assert (root / "usr/local/etc/ds01/policy.yaml").is_file()
    dropin = (root / "etc/systemd/system/docker.service.d/ds01.conf").read_text()
    assert "\nExecStart=/usr/bin/dockerd --containerd=/run/containerd/containerd.sock\n" in dropin
    run("uninstall.sh", root, "--purge")
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("daemon_json", "default_docker", "why"),
    [
        ({"hosts": ["tcp://0.0.0.0:2375"]}, None, '"hosts"'),
        ("{broken", None, "not valid JSON"),
        (None, 'DOCKER_OPTS="-H tcp://0.0.0.0:2375"\n', "DOCKER_OPTS"),
    ],
    ids=["hosts-elsewhere", "invalid-json", "docker-opts-host"],
)
def test_a_host_ds01_cannot_take_over_is_refused_untouched(
    tmp_path, daemon_json, default_docker, why
):
    """Refusals come before any change, say why and what to do, and leave no trace."""
    root = fake_host(tmp_path, daemon_json)
    if default_docker:
        (root / "etc/default/docker").write_text(default_docker)
    before = snapshot(root)
    out = run("install.sh", root, "--no-pip", rc=3)
    assert "REFUSED" in out.stderr and why in out.stderr and "To fix" in out.stderr
    assert snapshot(root) == before


def fake_systemctl(tmp_path: Path, socket_state: str = "active") -> tuple[Path, Path]:
    """A systemctl that records its calls; `is-active docker.socket` answers socket_state."""
    log = tmp_path / "systemctl.log"
    tool = tmp_path / "systemctl"
    tool.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        'if [ "$1" = is-active ]; then\n'
        f'  case "$2" in docker.socket) echo {socket_state} ;; *) echo active ;; esac\n'
        "fi\n"
    )
    tool.chmod(0o755)
    return tool, log


def calls(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


@pytest.mark.parametrize("socket_state", ["active", "inactive"])
def test_the_systemctl_sequence(tmp_path, socket_state):
    """Install: reload, enable ds01d, stop dockerd and its socket, start ds01d then dockerd; a
    re-run restarts ds01d only; uninstall starts again exactly the docker units that ran."""
    root = fake_host(tmp_path, None)
    tool, log = fake_systemctl(tmp_path, socket_state)
    args = ("--no-pip", "--systemctl", str(tool))
    subprocess.run(
        ["bash", str(REPO / "packaging/install.sh"), "--root", str(root), *args],
        check=True,
        capture_output=True,
    )
    assert calls(log) == [
        "is-active docker.socket",
        "is-active docker.service",
        "daemon-reload",
        "enable ds01d.service",
        "stop docker.service docker.socket",
        "restart ds01d.service",
        "start docker.service",
    ]
    subprocess.run(
        ["bash", str(REPO / "packaging/install.sh"), "--root", str(root), *args],
        check=True,
        capture_output=True,
    )
    assert calls(log) == ["enable ds01d.service", "restart ds01d.service"]
    (root / "run/ds01").mkdir()
    (root / "run/ds01/dockerd.sock").write_text("")
    subprocess.run(
        ["bash", str(REPO / "packaging/uninstall.sh"), "--root", str(root), "--purge", *args[1:]],
        check=True,
        capture_output=True,
    )
    started = ["start docker.socket"] if socket_state == "active" else []
    assert calls(log) == [
        "stop docker.service docker.socket",
        "disable --now ds01d.service",
        "daemon-reload",
        *started,
        "start docker.service",
    ]
    assert not (root / "run/ds01").exists()


def test_uninstall_without_an_install_says_so(tmp_path):
    root = fake_host(tmp_path, None)
    out = run("uninstall.sh", root, rc=1)
    assert "not installed" in out.stderr


# ---- a real dockerd with the merged daemon.json ------------------------------------------------


class ConfiguredDockerd(PrivateDockerd):
    """The harness's private dockerd, configured by a daemon.json with "hosts" (no -H flag)."""

    def __init__(self, base: Path, config: dict) -> None:
        super().__init__(base)
        base.mkdir(parents=True, exist_ok=True)
        self.merged_config = base / "merged-daemon.json"
        self.merged_config.write_text(json.dumps(config))
        self._socket_path = Path(config["hosts"][0].removeprefix("unix://"))

    def command(self) -> list[str]:
        cmd = super().command()
        # daemon.json says them; a flag too is an error
        for flag in ("-H", "--exec-opt", "--cgroup-parent"):
            i = cmd.index(flag)
            del cmd[i : i + 2]
        cmd[cmd.index("--config-file") + 1] = str(self.merged_config)
        return cmd


def test_merged_daemon_json_runs_a_real_dockerd_behind_ds01d(tmp_path):
    """The installer's daemon.json (an admin's keys + DS01's) is accepted by a real dockerd;
    its socket is 0660 root:root (not group docker); dockerd asks ds01d; doctor passes."""
    root = fake_host(tmp_path, ADMIN_DAEMON_JSON)
    run("install.sh", root, "--no-pip")
    config = json.loads((root / "etc/docker/daemon.json").read_text())
    base = temp_dir("ds01i-")  # in the host ledger, should the cleanup below not run
    plugin = f"ds01i{os.getpid()}"
    real = base / "run/ds01/dockerd.sock"
    real.parent.mkdir(parents=True)  # as the docker drop-in's ExecStartPre does
    config["hosts"] = [f"unix://{real}"]
    config["authorization-plugins"] = [
        plugin if p == "ds01" else p for p in config["authorization-plugins"]
    ]
    policy = root / "etc/ds01/policy.yaml"
    dockerd = ConfiguredDockerd(base / "d", config)
    ds01d = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ds01d.daemon",
            "--policy",
            str(policy),
            "--plugin-socket",
            str(base / "p.sock"),
            "--gateway-socket",
            str(base / "gw.sock"),
            "--docker-host",
            f"unix://{real}",
            "--inventory",
            "none",
            "--state-dir",
            str(base / "state"),
            "--no-cgroups",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if (base / "p.sock").exists() and (base / "gw.sock").exists():
                break
            assert ds01d.poll() is None, "ds01d exited"
            time.sleep(0.05)
        write_plugin_spec(plugin, base / "p.sock")
        dockerd.start()
        st = real.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o660, 0, 0)
        info = json.loads(dockerd.docker("info", "--format", "{{json .}}", check=True).stdout)
        assert info["Plugins"]["Authorization"] == [plugin]
        assert info["CgroupDriver"] == "cgroupfs" and info["LoggingDriver"] == "json-file"
        # This box's own mounts and sysctls are not the installer's to fix: recorded ones.
        proc_sys = base / "proc-sys"
        (proc_sys / "fs").mkdir(parents=True)
        for name in ("protected_hardlinks", "protected_symlinks"):
            (proc_sys / "fs" / name).write_text("1\n")
        doctor = subprocess.run(
            [
                sys.executable,
                "-m",
                "ds01cli.cli",
                "doctor",
                "--unit",
                "/nonexistent",
                "--mountinfo",
                str(REPO / "tests/fixtures/host/mountinfo-hardened.txt"),
                "--proc-sys",
                str(proc_sys),
                "--daemon-json",
                str(dockerd.merged_config),
                "--gateway-socket",
                str(base / "gw.sock"),
                "--plugin-socket",
                str(base / "p.sock"),
                "--plugin-name",
                plugin,
                "--policy",
                str(policy),
                "--inventory",
                "none",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert "all checks passed" in doctor.stdout and "root-only" in doctor.stdout
    finally:
        dockerd.stop()  # by its pid, then unmounts what it left
        ds01d.send_signal(signal.SIGTERM)
        try:
            ds01d.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ds01d.kill()
            ds01d.wait(timeout=10)
        remove_plugin_spec(plugin)
        shutil.rmtree(base, ignore_errors=True)
