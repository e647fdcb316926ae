"""packaging/: the systemd units, the dockerd fragment, the plugin spec and the install helper.

The files are checked for what they must say (and agree on), and by systemd's own
`systemd-analyze verify` and `security --offline` (Debian's systemd package), which work
without a running systemd.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from ds01d.daemon import build_parser as ds01d_parser
from policy.build_cgroup import dockerd_cgroup_parent

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "packaging"
_spec = importlib.util.spec_from_file_location("install_helper", PKG / "install_helper.py")
helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helper)

DEBIAN_DOCKER_SERVICE = "/lib/systemd/system/docker.service"
# Exposure score (tenths) from `systemd-analyze security`: 5.2 today; fail if hardening regresses.
MAX_EXPOSURE = 55


def unit_lines(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, duplicates kept (ExecStart= resets)."""
    return helper._unit_lines(str(path))


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for s, k, v in unit_lines(path) if (s, k) == (section, key)]


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.fail(
            "systemd-analyze is missing: it checks packaging/'s units. To fix: apt-get install "
            "systemd (scripts/setup-host.sh installs it); no running systemd is needed"
        )
    return tool


def ds01d_path() -> str:
    """An existing ds01d for ExecStart= (verify insists the command exists)."""
    venv = REPO / ".venv" / "bin" / "ds01d"
    return shutil.which("ds01d") or (str(venv) if venv.exists() else "/bin/true")


def exec_start_words(unit: Path) -> list[str]:
    (line,) = values(unit, "Service", "ExecStart")
    return shlex.split(line)


# ---- ds01d.service -----------------------------------------------------------------------------


def test_ds01d_unit_is_an_ini_file_with_the_expected_keys():
    """It parses as INI and says what the brief asks: simple, restart always, before docker."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(PKG / "ds01d.service")
    assert parser.sections() == ["Unit", "Service", "Install"]
    unit, service = parser["Unit"], parser["Service"]
    assert "docker.service" in unit["Before"].split()
    assert service["Type"] == "simple" and service["Restart"] == "always"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["User"] == "root"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectClock": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native",
        "SystemCallFilter": "@system-service",
    }.items():
        assert service[key] == value, key
    writable = service["ReadWritePaths"].split()
    assert {"/run", "/var/lib/ds01", "-/etc/systemd/system"} <= set(writable)


def test_ds01d_unit_leaves_out_what_would_break_ds01d():
    """Settings that hide ttys, cgroups, other processes or the host's /tmp are not used."""
    text = (PKG / "ds01d.service").read_text()
    set_keys = {k for _, k, _ in unit_lines(PKG / "ds01d.service")}
    for key in (
        "PrivateDevices",  # users' ttys
        "ProtectKernelTunables",  # /sys/fs/cgroup
        "ProtectControlGroups",
        "ProtectProc",  # /proc/<pid>/cgroup of other users
        "PrivateTmp",  # bind-mount sources must resolve as dockerd resolves them
        "PrivateUsers",
        "CapabilityBoundingSet",
    ):
        assert key not in set_keys, key
        assert f"{key}=" in text, f"{key}: say in a comment why it is not set"


def test_ds01d_command_line_is_valid_for_ds01d():
    """ExecStart= parses with ds01d's own argument parser and names the production layout."""
    words = exec_start_words(PKG / "ds01d.service")
    assert words[0] == "/opt/ds01/venv/bin/ds01d"
    args = ds01d_parser().parse_args(words[1:])
    assert args.policy == "/etc/ds01/policy.yaml"
    assert args.gateway_socket == "/var/run/docker.sock"
    assert args.docker_host == "unix:///run/ds01/dockerd.sock"
    assert args.plugin_socket == "/run/docker/plugins/ds01.sock"
    assert args.inventory == "auto" and args.state_dir == "/var/lib/ds01"
    assert args.metrics_address == "127.0.0.1:9401"


def test_readme_shows_the_same_ds01d_command():
    """The README's `ds01d ...` block has the unit's flags, value for value."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```sh\nds01d (.*?)```", readme, re.S)
    assert block, "README: the ds01d command block is gone"
    shown = shlex.split(block.group(1).replace("\\\n", " "))
    unit = exec_start_words(PKG / "ds01d.service")[1:]
    assert dict(zip(shown[::2], shown[1::2], strict=True)) == dict(
        zip(unit[::2], unit[1::2], strict=True)
    )


def test_ready_only_when_the_plugin_socket_is_served():
    """ExecStartPost waits for the plugin socket, so dockerd (ordered after) finds its plugin."""
    (post,) = values(PKG / "ds01d.service", "Service", "ExecStartPost")
    plugin = ds01d_parser().parse_args(exec_start_words(PKG / "ds01d.service")[1:]).plugin_socket
    assert f"-S {plugin}" in post and "timeout" in post
    assert "$" not in post.replace("$$", ""), "systemd would expand $VARS in ExecStartPost"


# ---- docker.service / docker.socket drop-ins ----------------------------------------------------


def test_docker_dropin_orders_dockerd_after_ds01d_and_drops_fd():
    conf = PKG / "docker.service.d" / "ds01.conf"
    assert values(conf, "Unit", "After") == ["ds01d.service"]
    assert values(conf, "Unit", "Wants") == ["ds01d.service"]
    starts = values(conf, "Service", "ExecStart")
    assert starts[0] == "" and len(starts) == 2, "ExecStart= must be reset, then set once"
    assert "fd://" not in starts[1] and "-H" not in shlex.split(starts[1])
    assert starts[1].startswith("/usr/sbin/dockerd ")
    assert values(conf, "Service", "ExecStartPre") == ["/bin/mkdir -p /run/ds01"]


def test_docker_socket_dropin_moves_it_off_the_gateway():
    """docker.socket stays (docker.service requires it) but no longer owns /var/run/docker.sock."""
    conf = PKG / "docker.socket.d" / "ds01.conf"
    listen = values(conf, "Socket", "ListenStream")
    assert listen[0] == "" and len(listen) == 2
    assert listen[1].startswith("/run/ds01/") and Path(listen[1]).name != "docker.sock"
    assert values(conf, "Socket", "SocketMode") == ["0600"]
    assert values(conf, "Socket", "SocketGroup") == ["root"]


# ---- daemon.json, plugin spec -------------------------------------------------------------------


def test_daemon_json_fragment():
    """Valid JSON: the root-only real socket ds01d forwards to, the plugin, cgroupfs, and
    the cgroup-parent below which BuildKit runs (ds01d's build cgroup for cgroupfs)."""
    fragment = json.loads((PKG / "daemon.json").read_text())
    args = ds01d_parser().parse_args(exec_start_words(PKG / "ds01d.service")[1:])
    assert fragment == {
        "hosts": [args.docker_host],
        "group": "root",
        "authorization-plugins": ["ds01"],
        "exec-opts": ["native.cgroupdriver=cgroupfs"],
        "cgroup-parent": dockerd_cgroup_parent("cgroupfs"),
    }
    assert args.build_cgroup_parent is None  # ds01d's default is that same parent


def test_plugin_spec_points_at_the_plugin_socket():
    args = ds01d_parser().parse_args(exec_start_words(PKG / "ds01d.service")[1:])
    assert (PKG / "ds01.spec").read_text() == f"unix://{args.plugin_socket}\n"


# ---- systemd's own checks ---------------------------------------------------------------------


def test_systemd_analyze_verifies_the_units(tmp_path):
    """`systemd-analyze verify` accepts ds01d.service and docker.service with both drop-ins."""
    tool = systemd_analyze()
    (tmp_path / "ds01d.service").write_text(
        (PKG / "ds01d.service").read_text().replace("/opt/ds01/venv/bin/ds01d", ds01d_path())
    )
    docker = Path(DEBIAN_DOCKER_SERVICE)
    units = ["ds01d.service"]
    if docker.exists() and shutil.which("dockerd", path="/usr/sbin:/usr/bin"):
        shutil.copy(docker, tmp_path / "docker.service")
        shutil.copy(docker.with_name("docker.socket"), tmp_path / "docker.socket")
        for name in ("docker.service.d", "docker.socket.d"):
            (tmp_path / name).mkdir()
            shutil.copy(PKG / name / "ds01.conf", tmp_path / name / "ds01.conf")
        units += ["docker.service", "docker.socket"]
    result = subprocess.run(
        [tool, "verify", *units],
        cwd=tmp_path,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [line for line in result.stderr.splitlines() if str(tmp_path) in line or "ds01" in line]
    assert result.returncode == 0 and not ours, result.stderr
    assert len(units) == 3, "docker.io's docker.service is needed to verify the drop-ins"


def test_systemd_analyze_security_exposure(tmp_path):
    """The hardening keeps systemd's exposure score at or below MAX_EXPOSURE / 10."""
    tool = systemd_analyze()
    unit = tmp_path / "ds01d.service"
    unit.write_text(
        (PKG / "ds01d.service").read_text().replace("/opt/ds01/venv/bin/ds01d", ds01d_path())
    )
    result = subprocess.run(
        [tool, "security", "--offline=true", f"--threshold={MAX_EXPOSURE}", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-600:] + result.stderr


# ---- scripts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["install.sh", "uninstall.sh"])
def test_scripts_parse_and_pass_shellcheck(script):
    """bash -n always; shellcheck where it is installed (CI must have it)."""
    path = PKG / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is missing on CI: apt-get install shellcheck")
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    result = subprocess.run([shellcheck, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", ["install.sh", "uninstall.sh"])
def test_scripts_refuse_unknown_options(script):
    result = subprocess.run(
        ["bash", str(PKG / script), "--bogus"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "unknown option --bogus" in result.stderr


# ---- install_helper: dockerd's command line -----------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (  # Debian docker.io
            "/usr/sbin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock $DOCKER_OPTS",
            "/usr/sbin/dockerd --containerd=/run/containerd/containerd.sock $DOCKER_OPTS",
        ),
        (  # docker-ce
            "/usr/bin/dockerd -H fd:// --containerd=/run/containerd/containerd.sock",
            "/usr/bin/dockerd --containerd=/run/containerd/containerd.sock",
        ),
        ("/usr/bin/dockerd --host=fd:// --debug", "/usr/bin/dockerd --debug"),
        ("-/usr/bin/dockerd -Hfd://", "-/usr/bin/dockerd"),
        ('/usr/bin/dockerd --label "a b"', '/usr/bin/dockerd --label "a b"'),
    ],
)
def test_dockerd_command_line_loses_only_fd(line, expected):
    assert helper.strip_fd_host(line, "x") == expected


@pytest.mark.parametrize(
    "line",
    [
        "/usr/bin/dockerd -H fd:// -H tcp://0.0.0.0:2375",
        "/usr/bin/dockerd -H unix:///var/run/docker.sock",
        "/usr/bin/dockerd --host=tcp://0.0.0.0:2376 --tlsverify",
    ],
)
def test_other_listeners_are_refused(line):
    """Another -H would let users around the gateway, or clash with daemon.json "hosts"."""
    with pytest.raises(helper.Refusal, match="also listens on"):
        helper.strip_fd_host(line, "x")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_effective_exec_start_follows_systemds_order(tmp_path):
    """Drop-ins are read in name order across directories (/etc masks /usr/lib): the last wins."""
    write(
        tmp_path / "usr/lib/systemd/system/docker.service",
        "[Service]\nExecStart=/usr/bin/dockerd -H fd:// \\\n  --containerd=/c.sock\n",
    )
    assert helper.docker_exec_start(str(tmp_path)) == "/usr/bin/dockerd --containerd=/c.sock"
    write(
        tmp_path / "usr/lib/systemd/system/docker.service.d/10-x.conf",
        "[Service]\nExecStart=\nExecStart=/usr/bin/dockerd -H fd:// --debug\n",
    )
    assert helper.docker_exec_start(str(tmp_path)) == "/usr/bin/dockerd --debug"
    write(tmp_path / "etc/systemd/system/docker.service.d/10-x.conf", "[Service]\nLimitNOFILE=1\n")
    assert helper.docker_exec_start(str(tmp_path)) == "/usr/bin/dockerd --containerd=/c.sock"
    write(tmp_path / "etc/systemd/system/docker.service.d/ds01.conf", "[Service]\nExecStart=/x\n")
    assert helper.docker_exec_start(str(tmp_path)) == "/usr/bin/dockerd --containerd=/c.sock"
    write(
        tmp_path / "etc/systemd/system/docker.service.d/override.conf",
        "[Service]\nExecStart=\nExecStart=/usr/bin/dockerd -H fd://\n",
    )
    with pytest.raises(helper.Refusal, match=r"override\.conf sets ExecStart"):
        helper.docker_exec_start(str(tmp_path))


def test_no_docker_unit_means_the_packaged_line(tmp_path):
    assert helper.docker_exec_start(str(tmp_path)) is None


def test_docker_opts_with_hosts_are_found(tmp_path):
    write(tmp_path / "etc/default/docker", '# DOCKER_OPTS="-H x"\nDOCKER_OPTS="--dns 8.8.8.8"\n')
    assert helper.default_docker_hosts(str(tmp_path)) == []
    write(tmp_path / "etc/default/docker", 'DOCKER_OPTS="-H tcp://0.0.0.0:2375 --host=unix:///s"\n')
    assert helper.default_docker_hosts(str(tmp_path)) == ["tcp://0.0.0.0:2375", "unix:///s"]


# ---- install_helper: daemon.json ----------------------------------------------------------------

FRAGMENT = json.loads((PKG / "daemon.json").read_text())


def test_merge_keeps_the_admins_keys():
    current = {"log-driver": "local", "authorization-plugins": ["other"], "group": "docker"}
    merged, warnings = helper.merged_daemon_json(current, FRAGMENT)
    assert merged["log-driver"] == "local"
    assert merged["authorization-plugins"] == ["other", "ds01"]
    assert merged["hosts"] == FRAGMENT["hosts"] and merged["group"] == "root"
    assert merged["exec-opts"] == ["native.cgroupdriver=cgroupfs"]
    assert any('"group": "docker"' in w for w in warnings)


def test_merge_is_idempotent():
    once, _ = helper.merged_daemon_json({}, FRAGMENT)
    twice, warnings = helper.merged_daemon_json(once, FRAGMENT)
    assert once == twice and not warnings


def test_merge_keeps_the_admins_cgroup_driver_and_says_what_to_do():
    merged, warnings = helper.merged_daemon_json(
        {"exec-opts": ["native.cgroupdriver=systemd"]}, FRAGMENT
    )
    assert merged["exec-opts"] == ["native.cgroupdriver=systemd"]
    assert any("cgroup_driver: systemd" in w for w in warnings)


def test_merge_warns_about_the_nvidia_default_runtime():
    _, warnings = helper.merged_daemon_json({"default-runtime": "nvidia"}, FRAGMENT)
    assert any("NVIDIA_VISIBLE_DEVICES=all" in w for w in warnings)


@pytest.mark.parametrize(
    "hosts", [["tcp://0.0.0.0:2376"], ["unix:///var/run/docker.sock"], ["fd://"]]
)
def test_other_hosts_are_refused(hosts):
    """An existing "hosts" elsewhere is refused, not overwritten: the admin decides."""
    with pytest.raises(helper.Refusal, match=r'remove\s+"hosts"'):
        helper.merged_daemon_json({"hosts": hosts}, FRAGMENT)


def test_unreadable_daemon_json_is_refused(tmp_path):
    write(tmp_path / "etc/docker/daemon.json", "{not json")
    with pytest.raises(helper.Refusal, match="not valid JSON"):
        helper.read_daemon_json(str(tmp_path))
    (tmp_path / "etc/docker/daemon.json").unlink()
    (tmp_path / "etc/docker/daemon.json").symlink_to("/nonexistent")
    with pytest.raises(helper.Refusal, match="symlink"):
        helper.read_daemon_json(str(tmp_path))
