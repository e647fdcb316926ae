"""`ds01 doctor` against faked hosts: each check passes on a good host and names the fix on a bad one."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from ds01cli.doctor import (
    Check,
    Host,
    build_parser,
    doctor,
    host_from_args,
    render,
    run_checks,
    unit_flags,
)

REPO = Path(__file__).resolve().parents[2]
HOST_FIXTURES = REPO / "tests/fixtures/host"
GOOD_INFO = {
    "ServerVersion": "20.10.24+dfsg1",
    "Plugins": {"Authorization": ["ds01"]},
    "CgroupDriver": "cgroupfs",
    "DefaultRuntime": "runc",
}
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown of a socket needs root")


def listening_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen()
    return sock


@pytest.fixture
def host(tmp_path: Path):
    """A faked well-deployed host: root-only real socket, gateway, live plugin, valid policy."""
    real = tmp_path / "real.sock"
    plugin = tmp_path / "ds01.sock"
    sockets = [listening_socket(real), listening_socket(plugin)]
    real.chmod(0o660)
    (tmp_path / "daemon.json").write_text(json.dumps({"hosts": [f"unix://{real}"]}))
    (tmp_path / "policy.yaml").write_text("defaults: {max_cpus: 4}\n")
    (tmp_path / "ds01.spec").write_text(f"unix://{plugin}\n")
    (tmp_path / "mountinfo").write_text((HOST_FIXTURES / "mountinfo-hardened.txt").read_text())
    (tmp_path / "sys/fs").mkdir(parents=True)
    for name in ("protected_hardlinks", "protected_symlinks"):
        (tmp_path / "sys/fs" / name).write_text("1\n")
    answers = {
        ("gw", "GET", "/ds01/v1/whoami"): (200, {}, {"user": "root"}),
        (str(real), "GET", "/info"): (200, {}, json.loads(json.dumps(GOOD_INFO))),
        (str(plugin), "POST", "/Plugin.Activate"): (200, {}, {"Implements": ["authz"]}),
    }

    def request(sock: str, method: str, path: str):
        key = (sock, method, path)
        if key not in answers:
            raise ConnectionRefusedError(111, "Connection refused")
        answer = answers[key]
        if isinstance(answer, OSError):
            raise answer
        return answer

    h = Host(
        daemon_json=str(tmp_path / "daemon.json"),
        gateway_socket="gw",
        plugin_socket=str(plugin),
        plugin_spec=str(tmp_path / "ds01.spec"),
        policy=str(tmp_path / "policy.yaml"),
        cgroup_root=str(tmp_path),
        request=request,
        nvml=lambda: SimpleNamespace(devices=[1, 2], problems=[]),
        mountinfo=str(tmp_path / "mountinfo"),
        proc_sys=str(tmp_path / "sys"),
    )
    h.answers = answers  # type: ignore[attr-defined]
    h.real = real  # type: ignore[attr-defined]
    h.info = answers[(str(real), "GET", "/info")][2]  # type: ignore[attr-defined]
    yield h
    for s in sockets:
        s.close()


def by_name(host: Host) -> dict[str, Check]:
    return {c.name: c for c in run_checks(host)}


def failing(host: Host) -> dict[str, Check]:
    return {name: c for name, c in by_name(host).items() if not c.ok}


# ---- the whole report ------------------------------------------------------------------------


def test_a_good_deployment_passes(host, capsys):
    """Every check passes, the table says so and the exit code is 0."""
    checks = run_checks(host)
    assert [c.name for c in checks] == [
        "dockerd socket",
        "gateway",
        "dockerd",
        "AuthZ plugin",
        "cgroup driver",
        "default runtime",
        "NVML",
        "policy",
        "bind prefixes",
        "bind mount options",
        "link protection",
    ]
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert doctor([], host) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and "FAIL" not in out and "To fix" not in out


def test_problems_exit_1_with_a_fix_line_each(host, capsys):
    """Each failing check prints FAIL and a `To fix:` line under it; the exit code is 1."""
    host.real.chmod(0o666)
    host.info["DefaultRuntime"] = "nvidia"
    assert doctor([], host) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL") == 2 and out.count("To fix:") == 2
    assert "2 problems found" in out


def test_the_table_is_aligned():
    """Details start in one column whatever the check names; fixes are indented under them."""
    text = render([Check("a", True, "first"), Check("longer name", False, "second", "do this")])
    lines = text.splitlines()
    assert lines[0].index("first") == lines[1].index("second") == lines[2].index("To fix:")


def test_json_output(host, capsys):
    """--json prints one object per check (name, ok, detail, fix, warn)."""
    assert doctor(["--json"], host) == 0
    data = json.loads(capsys.readouterr().out)
    assert {d["name"] for d in data} >= {"gateway", "policy"}
    assert all(set(d) == {"name", "ok", "detail", "fix", "warn"} for d in data)


def test_misuse_exits_2(capsys):
    assert doctor(["--no-such-flag"]) == 2


# ---- the real dockerd socket ------------------------------------------------------------------


def test_world_accessible_dockerd_socket_is_a_problem(host):
    """A dockerd socket every user can open lets them bypass DS01."""
    host.real.chmod(0o666)
    check = by_name(host)["dockerd socket"]
    assert not check.ok and "bypass" in check.detail and '"group": "root"' in check.fix


@needs_root
def test_dockerd_socket_in_a_group_is_a_problem(host):
    """Mode 0660 with group docker (or any group but root) lets that group bypass DS01."""
    os.chown(host.real, 0, 65534)
    check = by_name(host)["dockerd socket"]
    assert not check.ok and "members of" in check.detail and '"group": "root"' in check.fix


@needs_root
def test_dockerd_socket_owned_by_a_user_is_a_problem(host):
    os.chown(host.real, 1000, 0)
    assert not by_name(host)["dockerd socket"].ok


def test_root_only_modes_pass(host):
    """0660 and 0600 owned by root:root are fine."""
    for mode in (0o660, 0o600):
        host.real.chmod(mode)
        check = by_name(host)["dockerd socket"]
        assert check.ok and "root-only" in check.detail


def test_missing_dockerd_socket_is_a_problem(host):
    host.real.unlink()
    check = by_name(host)["dockerd socket"]
    assert not check.ok and "does not exist" in check.detail and "daemon.json" in check.fix


def test_the_real_socket_comes_from_daemon_json_or_the_flag(host, tmp_path):
    """Without --docker-host the socket in daemon.json "hosts" is checked; the flag wins."""
    other = tmp_path / "other.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(other))
        other.chmod(0o666)
        host.real_socket = str(other)
        assert not by_name(host)["dockerd socket"].ok
        host.real_socket = None
        assert by_name(host)["dockerd socket"].ok


# ---- the gateway ------------------------------------------------------------------------------


def test_dockerd_itself_on_the_user_socket_is_a_problem(host):
    """If /var/run/docker.sock is dockerd (404 on /ds01/v1/whoami), the gateway is not in front."""
    host.answers[("gw", "GET", "/ds01/v1/whoami")] = (
        404,
        {"server": "Docker/20.10.24 (linux)"},
        {"message": "page not found"},
    )
    check = by_name(host)["gateway"]
    assert not check.ok and "Docker/20.10.24" in check.detail and "docker.socket" in check.fix


def test_nothing_on_the_user_socket_is_a_problem(host):
    del host.answers[("gw", "GET", "/ds01/v1/whoami")]
    check = by_name(host)["gateway"]
    assert not check.ok and "refused" in check.detail and "start ds01d" in check.fix


# ---- dockerd's /info ------------------------------------------------------------------------


def test_unreadable_info_fails_dockerd_and_marks_what_depends_on_it(host):
    """No /info: dockerd fails, and the plugin, cgroup and runtime checks say they could not run."""
    del host.answers[(str(host.real), "GET", "/info")]
    problems = failing(host)
    assert set(problems) == {"dockerd", "AuthZ plugin", "cgroup driver", "default runtime"}
    assert "unknown" in problems["AuthZ plugin"].detail
    assert problems["cgroup driver"].detail.startswith("not checked")


def test_info_through_the_gateway_when_direct_access_is_denied(host):
    """A policy with direct_access: deny refuses /info on the real socket; the gateway answers."""
    host.answers[(str(host.real), "GET", "/info")] = (403, {}, {"message": "denied"})
    host.answers[("gw", "GET", "/info")] = (200, {}, GOOD_INFO)
    check = by_name(host)["dockerd"]
    assert check.ok and "gateway" in check.detail
    assert by_name(host)["AuthZ plugin"].ok


# ---- the AuthZ plugin -------------------------------------------------------------------------


def test_unregistered_plugin_is_a_problem(host):
    """dockerd not listing ds01 among its authorization plugins is reported with the daemon.json fix."""
    host.info["Plugins"]["Authorization"] = []
    check = by_name(host)["AuthZ plugin"]
    assert not check.ok and "authorization-plugins" in check.fix


def test_missing_plugin_socket_is_a_problem(host):
    """No plugin socket: ds01d is down (dockerd refuses everything); the spec alone is not enough."""
    Path(host.plugin_socket).unlink()
    check = by_name(host)["AuthZ plugin"]
    assert not check.ok and "spec file is there" in check.detail and "ds01d" in check.fix


def test_a_dead_plugin_socket_is_a_problem(host):
    """A stale socket file nobody answers on."""
    del host.answers[(host.plugin_socket, "POST", "/Plugin.Activate")]
    check = by_name(host)["AuthZ plugin"]
    assert not check.ok and "does not answer" in check.detail


def test_something_else_on_the_plugin_socket_is_a_problem(host):
    host.answers[(host.plugin_socket, "POST", "/Plugin.Activate")] = (404, {}, None)
    assert not by_name(host)["AuthZ plugin"].ok


# ---- cgroup driver, runtime -------------------------------------------------------------------


def test_cgroup_driver_mismatch_is_a_problem(host):
    """dockerd's cgroup driver must be the policy's."""
    host.info["CgroupDriver"] = "systemd"
    check = by_name(host)["cgroup driver"]
    assert not check.ok and "cgroup_driver: systemd" in check.fix


def test_cgroup_driver_follows_the_policy_and_the_flag(host):
    """The policy's cgroup_driver, overridden by ds01d's --cgroup-driver, must be dockerd's."""
    host.info["CgroupDriver"] = "systemd"
    Path(host.policy).write_text("cgroup_driver: systemd\n")
    assert by_name(host)["cgroup driver"].ok
    host.cgroup_driver = "cgroupfs"
    check = by_name(host)["cgroup driver"]
    assert not check.ok and "--cgroup-driver" in check.detail


def test_cgroup_version_is_reported(host):
    assert "cgroup v1" in by_name(host)["cgroup driver"].detail
    (Path(host.cgroup_root) / "cgroup.controllers").write_text("cpu memory\n")
    assert "cgroup v2" in by_name(host)["cgroup driver"].detail


def test_nvidia_default_runtime_is_a_problem(host):
    """An nvidia default runtime lets image ENV NVIDIA_VISIBLE_DEVICES=all through outside DS01."""
    host.info["DefaultRuntime"] = "nvidia"
    check = by_name(host)["default runtime"]
    assert (
        not check.ok
        and "NVIDIA_VISIBLE_DEVICES=all" in check.detail
        and "default-runtime" in check.fix
    )


# ---- GPUs ---------------------------------------------------------------------------------------


def test_nvml_unreachable_is_a_problem(host):
    """No NVML and no devices: say so and name the inventory-file alternative."""
    host.nvml = lambda: SimpleNamespace(devices=[], problems=["NVML library not found"])
    check = by_name(host)["NVML"]
    assert not check.ok and "NVML library not found" in check.detail and "--inventory" in check.fix


def test_nvml_that_raises_is_a_problem_not_a_crash(host):
    def broken():
        raise RuntimeError("driver/library version mismatch")

    host.nvml = broken
    check = by_name(host)["NVML"]
    assert not check.ok and "mismatch" in check.detail


def test_nvml_devices_with_notes_pass(host):
    host.nvml = lambda: SimpleNamespace(devices=[1], problems=["GPU 1: MIG pending reboot"])
    check = by_name(host)["NVML"]
    assert check.ok and "1 allocatable device " in check.detail and "pending" in check.detail


def test_an_inventory_file_replaces_nvml(host, tmp_path):
    """With --inventory FILE the file is checked instead of NVML; `none` is fine too."""
    host.inventory = str(REPO / "config/inventory.example.yaml")
    check = by_name(host)["GPU inventory"]
    assert check.ok and "inventory.example.yaml" in check.detail
    bad = tmp_path / "inv.yaml"
    bad.write_text("gpus: 3\n")
    host.inventory = str(bad)
    assert not by_name(host)["GPU inventory"].ok
    host.inventory = "none"
    assert by_name(host)["GPU inventory"].ok


# ---- policy -------------------------------------------------------------------------------------


def test_invalid_policy_is_a_problem(host, capsys):
    """An invalid policy is reported with file:line and the validate command; exit 1."""
    Path(host.policy).write_text("defaults:\n  memory: lots\n")
    check = by_name(host)["policy"]
    assert not check.ok and ":2 defaults.memory" in check.detail
    assert "ds01 policy validate" in check.fix
    assert doctor([], host) == 1
    assert "To fix:" in capsys.readouterr().out


def test_missing_policy_is_a_problem(host):
    Path(host.policy).unlink()
    check = by_name(host)["policy"]
    assert not check.ok and "missing" in check.detail and "default-policy.yaml" in check.fix


# ---- ds01d's own flags --------------------------------------------------------------------------


def test_flags_come_from_the_unit_and_the_command_line_wins(tmp_path):
    """The doctor checks what ds01d was started with (its unit's ExecStart) unless told otherwise."""
    unit = tmp_path / "ds01d.service"
    unit.write_text(
        "[Service]\n"
        "ExecStart=/opt/ds01/venv/bin/ds01d --policy /srv/p.yaml \\\n"
        "  --docker-host unix:///run/x/d.sock --inventory=/etc/ds01/inv.yaml "
        "--cgroup-driver systemd --no-cgroups\n"
        "ExecReload=/bin/kill -HUP $MAINPID\n"
    )
    flags = unit_flags(str(unit))
    assert flags["--policy"] == "/srv/p.yaml" and flags["--inventory"] == "/etc/ds01/inv.yaml"
    h = host_from_args(build_parser().parse_args(["--unit", str(unit)]))
    assert (h.policy, h.real_socket, h.cgroup_driver) == ("/srv/p.yaml", "/run/x/d.sock", "systemd")
    assert h.gateway_socket == "/var/run/docker.sock"
    h = host_from_args(build_parser().parse_args(["--unit", str(unit), "--policy", "/p.yaml"]))
    assert h.policy == "/p.yaml"
    assert unit_flags(str(tmp_path / "absent")) == {}


def test_the_packaged_unit_gives_the_production_layout():
    """The flags in packaging/ds01d.service are the doctor's defaults."""
    h = host_from_args(build_parser().parse_args(["--unit", str(REPO / "packaging/ds01d.service")]))
    default = host_from_args(build_parser().parse_args(["--unit", "/nonexistent"]))
    assert (h.policy, h.plugin_socket, h.gateway_socket, h.inventory) == (
        default.policy,
        default.plugin_socket,
        default.gateway_socket,
        default.inventory,
    )
    assert h.real_socket == "/run/ds01/dockerd.sock"


# ---- host hardening around run_as: user ---------------------------------------------------------


def checks_named(host: Host, name: str) -> list[Check]:
    return [c for c in run_checks(host) if c.name == name]


def test_a_home_mount_without_nosuid_nodev_is_a_problem_with_the_fstab_fix(host, capsys):
    """The filesystem holding {home} (the default prefix) must be nosuid,nodev: exit 1."""
    Path(host.mountinfo).write_text((HOST_FIXTURES / "mountinfo-weak.txt").read_text())
    home, lab = checks_named(host, "bind mount options")
    assert not home.ok and not home.warn
    assert home.detail.startswith("/home (ext4 /dev/nvme0n1p3) holds /home ({home} from defaults)")
    assert home.fix == (
        "add nosuid,nodev to the options of /home in /etc/fstab, then: "
        "mount -o remount,nosuid,nodev /home"
    )
    assert "/home/big lab" in lab.detail and "without nodev" in lab.detail
    assert doctor([], host) == 1
    assert "2 problems found" in capsys.readouterr().out


def test_a_hardened_host_names_the_folders_it_checked(host):
    Path(host.policy).write_text("defaults: {bind_mounts: ['{home}', '/data/{user}']}\n")
    [check] = checks_named(host, "bind mount options")
    assert check.ok and check.detail == "nosuid,nodev on every mount holding /data, /home"


def test_a_prefix_on_the_root_filesystem_gets_a_nosuid_bind_mount(host):
    Path(host.mountinfo).write_text((HOST_FIXTURES / "mountinfo-weak.txt").read_text())
    Path(host.policy).write_text("defaults: {bind_mounts: ['/scratch/{user}']}\n")
    [check] = checks_named(host, "bind mount options")
    assert not check.ok and check.fix.startswith("mount /scratch on itself with nosuid,nodev")


def test_unreadable_mountinfo_is_a_problem(host):
    Path(host.mountinfo).unlink()
    [check] = checks_named(host, "bind mount options")
    assert not check.ok and check.detail.startswith(host.mountinfo)


@pytest.mark.parametrize("sysctl", ["protected_hardlinks", "protected_symlinks"])
def test_link_protection_off_is_a_problem_with_the_sysctl_fix(host, sysctl):
    (Path(host.proc_sys) / "fs" / sysctl).write_text("0\n")
    [check] = checks_named(host, "link protection")
    assert not check.ok and check.detail.startswith(f"fs.{sysctl} is 0: ")
    assert check.fix == (
        f"sysctl -w fs.{sysctl}=1, and keep it across reboots: "
        f"echo 'fs.{sysctl} = 1' >> /etc/sysctl.d/60-ds01.conf"
    )


def test_link_protection_on_passes(host):
    [check] = checks_named(host, "link protection")
    assert check.ok and check.detail == "fs.protected_hardlinks = 1 and fs.protected_symlinks = 1"


def test_a_shared_prefix_is_a_warning_not_a_failure(host, capsys):
    """`/data` for a group: a warning with the per-user form; the exit code stays 0."""
    Path(host.policy).write_text("groups:\n  lab:\n    members: [a]\n    bind_mounts: [/data]\n")
    [check] = checks_named(host, "bind prefixes")
    assert not check.ok and check.warn
    assert check.detail.startswith("groups.lab.bind_mounts: /data is not per-user: every user")
    assert "read and write each other's files there wherever file permissions allow it" in (
        check.detail
    )
    assert check.fix == "a per-user prefix is safer: /data/{user}, each folder owned by its user"
    assert doctor([], host) == 0
    out = capsys.readouterr().out
    assert "warn  bind prefixes" in out and "1 warning found" in out and "FAIL" not in out


def test_run_as_root_with_bind_mounts_is_a_warning(host):
    """The pair is refused at create anyway; doctor says so (run_as read from the raw policy)."""
    Path(host.policy).write_text(
        "groups:\n  builders:\n    members: [b]\n    run_as: root\n    bind_mounts: ['/data/{user}']\n"
    )
    checks = checks_named(host, "bind prefixes")
    assert [c.detail.split(":")[0] for c in checks] == ["groups.builders.run_as"]
    assert checks[0].warn and "DS01 refuses such a create anyway" in checks[0].detail


def test_host_hardening_is_not_checked_without_a_usable_policy(host):
    Path(host.policy).write_text("defaults:\n  memory: lots\n")
    for name in ("bind prefixes", "bind mount options"):
        [check] = checks_named(host, name)
        assert not check.ok and check.detail == "not checked: the policy is unusable"


def test_the_host_tables_can_be_given(tmp_path):
    """--mountinfo, --proc-sys and --home-root point the hardening checks at recorded tables."""
    args = ["--unit", "/nonexistent", "--mountinfo", "/m", "--proc-sys", "/s", "--home-root", "/h"]
    h = host_from_args(build_parser().parse_args(args))
    assert (h.mountinfo, h.proc_sys, h.home_root) == ("/m", "/s", "/h")
    h = host_from_args(build_parser().parse_args(["--unit", "/nonexistent"]))
    assert (h.mountinfo, h.proc_sys, h.home_root) == ("/proc/self/mountinfo", "/proc/sys", "/home")
