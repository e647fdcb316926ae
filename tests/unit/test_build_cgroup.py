"""The shared BuildKit build cgroup: its names, the policy's ``builds`` cap, and its writing.

dockerd 20.10 runs every BuildKit RUN step in ``<its cgroup-parent>/buildkit/<id>``; DS01 points
that parent at ``/ds01-builds`` and caps ``/ds01-builds/buildkit`` (see policy/build_cgroup.py).
The kernel side is in tests/e2e/test_builds.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ds01d.host.cgroups import CgroupfsManager, SystemdSliceManager, UserCgroups
from policy.build_cgroup import (
    BUILD_CGROUPFS_PARENT,
    BUILD_SLICE,
    build_slice_text,
    buildkit_cgroup,
    dockerd_cgroup_parent,
)
from policy.limits import BUILD_DEFAULTS, build_cap
from policy.loader import PolicyError, parse_policy
from policy.slices import group_slice_name, parse_slice_unit_name

GIB = 2**30


def doc(text: str):
    return parse_policy(text, "policy.yaml")


# ---- names ---------------------------------------------------------------------------------


def test_dockerd_parent_per_driver() -> None:
    assert dockerd_cgroup_parent("cgroupfs") == "/ds01-builds" == BUILD_CGROUPFS_PARENT
    assert dockerd_cgroup_parent("systemd") == "ds01_builds.slice" == BUILD_SLICE
    assert buildkit_cgroup("/ds01-builds") == "/ds01-builds/buildkit"
    assert buildkit_cgroup("ds01-builds-x/") == "/ds01-builds-x/buildkit"


def test_build_slice_is_no_users_or_groups_slice() -> None:
    """``ds01-builds.slice`` would be the slice of a policy group called ``builds``."""
    assert parse_slice_unit_name(BUILD_SLICE) is None
    assert BUILD_SLICE not in {group_slice_name("builds"), group_slice_name("_builds")}
    assert not BUILD_SLICE.startswith("ds01-")  # not nested in ds01.slice by systemd


def test_build_slice_text_holds_the_cap() -> None:
    text = build_slice_text({"cpus": 2, "memory": GIB, "pids": 100})
    assert "Description=DS01: all BuildKit builds together" in text
    for line in ("CPUQuota=200%", f"MemoryMax={GIB}", "MemorySwapMax=0", "TasksMax=100"):
        assert line in text.splitlines()


# ---- the policy's builds cap ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cap"),
    [
        ("{}", BUILD_DEFAULTS),
        ("builds: {memory: 2g}", {**BUILD_DEFAULTS, "memory": 2 * GIB}),
        ("builds: {cpus: 1.5, pids: null}", {**BUILD_DEFAULTS, "cpus": 1.5, "pids": None}),
        ("builds: {}", BUILD_DEFAULTS),
    ],
    ids=["absent", "memory-only", "cpus-and-unlimited-pids", "empty"],
)
def test_build_cap(text: str, cap: dict) -> None:
    assert build_cap(doc(text)) == cap


def test_build_defaults() -> None:
    assert BUILD_DEFAULTS == {"cpus": 8, "memory": 32 * GIB, "pids": 4096}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("builds: {gpus: 1}", "builds.gpus: unknown key; did you mean cpus"),
        ("builds: {pids: 0}", "builds.pids"),
        ("builds: {cpus: 0}", "builds.cpus"),
        ("builds: {memory: lots}", "builds.memory"),
    ],
    ids=["unknown-key", "zero-pids", "zero-cpus", "bad-size"],
)
def test_bad_build_cap_is_refused(text: str, reason: str) -> None:
    with pytest.raises(PolicyError, match=reason):
        doc(text)


# ---- writing it (fake cgroup trees) --------------------------------------------------------


def fake_v1(tmp_path: Path, **kwargs) -> CgroupfsManager:
    mounts = {}
    for name in ("cpu,cpuacct", "memory", "pids", "cpuset"):
        (tmp_path / name).mkdir()
        for controller in name.split(","):
            mounts[controller] = str(tmp_path / name)
    (tmp_path / "cpuset" / "cpuset.cpus").write_text("0-3\n")
    (tmp_path / "cpuset" / "cpuset.mems").write_text("0\n")
    return CgroupfsManager(tmp_path, version=1, mounts=mounts, **kwargs)


def test_v1_build_cgroup_is_created_and_capped(tmp_path: Path) -> None:
    manager = fake_v1(tmp_path)
    assert manager.ensure_builds({"cpus": 2, "memory": GIB, "pids": 64}) == []
    assert manager.build_dir("memory") == tmp_path / "memory" / "ds01-builds" / "buildkit"
    assert manager.build_limits() == {
        "cpu.cfs_period_us": "100000",
        "cpu.cfs_quota_us": "200000",
        "memory.limit_in_bytes": str(GIB),
        "pids.max": "64",
    }
    # Only the buildkit level is capped: dockerd's parentless containers sit beside it.
    assert not (tmp_path / "memory" / "ds01-builds" / "memory.limit_in_bytes").exists()
    assert manager.users() == []  # never mistaken for a user under /ds01


def test_v1_build_cap_is_lifted_and_follows_the_parent(tmp_path: Path) -> None:
    manager = fake_v1(tmp_path, build_parent="/ds01-builds-test")
    manager.ensure_builds({"cpus": 2, "memory": GIB, "pids": 64})
    assert manager.ensure_builds({"cpus": None, "memory": None, "pids": None}) == []
    limits = manager.build_limits()
    assert (limits["cpu.cfs_quota_us"], limits["memory.limit_in_bytes"], limits["pids.max"]) == (
        "-1",
        "-1",
        "max",
    )
    assert (tmp_path / "pids" / "ds01-builds-test" / "buildkit" / "pids.max").is_file()


def test_v1_build_usage_is_counted_over_the_steps(tmp_path: Path) -> None:
    manager = fake_v1(tmp_path)
    manager.ensure_builds(BUILD_DEFAULTS)
    memory = manager.build_dir("memory")
    (memory / "memory.usage_in_bytes").write_text("4096\n")
    (memory / "step").mkdir()
    (memory / "step" / "memory.oom_control").write_text("under_oom 0\noom_kill 2\n")
    usage = manager.build_usage()
    assert usage["memory"] == 4096 and usage["oom_kills"] == 2


def test_v2_build_cgroup_delegates_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    (tmp_path / "ds01-builds").mkdir()
    (tmp_path / "ds01-builds" / "cgroup.controllers").write_text("cpu memory pids\n")
    manager = CgroupfsManager(tmp_path)
    assert manager.ensure_builds({"cpus": 1, "memory": GIB, "pids": 9}) == []
    assert (tmp_path / "ds01-builds" / "cgroup.subtree_control").read_text() == "+pids"
    assert manager.build_limits() == {
        "cpu.max": "100000 100000",
        "memory.max": str(GIB),
        "pids.max": "9",
    }


def test_systemd_build_slice_is_written_once(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    class Done:
        returncode, stdout, stderr = 0, "", ""

    manager = SystemdSliceManager(tmp_path, run=lambda cmd, **_: calls.append(cmd) or Done())
    cap = {"cpus": 1, "memory": GIB, "pids": 9}
    assert manager.ensure_builds(cap) == []
    assert manager.ensure_builds(cap) == []  # unchanged: no second daemon-reload
    assert calls == [["systemctl", "daemon-reload"]]
    assert (tmp_path / BUILD_SLICE).read_text() == build_slice_text(cap)
    assert manager.users() == []


def test_user_cgroups_reports_instead_of_raising(tmp_path: Path) -> None:
    """No cgroup v1 hierarchy: a warning, never an exception that could stop ds01d."""
    cgroups = UserCgroups(CgroupfsManager(tmp_path, version=1, mounts={}))
    [warning] = cgroups.ensure_builds(BUILD_DEFAULTS)
    assert warning.startswith("BuildKit builds: no cgroup v1 hierarchy is mounted")


# ---- dockerd's cgroup-parent at install ----------------------------------------------------


def _install_helper():
    spec = importlib.util.spec_from_file_location(
        "install_helper", Path(__file__).parents[2] / "packaging" / "install_helper.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FRAGMENT = json.loads((Path(__file__).parents[2] / "packaging" / "daemon.json").read_text())


@pytest.mark.parametrize(
    ("current", "parent", "warned"),
    [
        ({}, "/ds01-builds", False),
        ({"cgroup-parent": "/ds01-builds"}, "/ds01-builds", False),
        ({"cgroup-parent": "/lab"}, "/ds01-builds", True),
        ({"exec-opts": ["native.cgroupdriver=systemd"]}, BUILD_SLICE, False),
        (
            {"exec-opts": ["native.cgroupdriver=systemd"], "cgroup-parent": "lab.slice"},
            BUILD_SLICE,
            True,
        ),
    ],
    ids=["none", "already", "admins-cgroupfs", "systemd", "admins-systemd"],
)
def test_install_points_dockerd_at_the_build_cgroup(current, parent, warned) -> None:
    merged, warnings = _install_helper().merged_daemon_json(current, FRAGMENT)
    assert (
        merged["cgroup-parent"]
        == parent
        == dockerd_cgroup_parent("systemd" if parent == BUILD_SLICE else "cgroupfs")
    )
    replaced = [w for w in warnings if '"cgroup-parent"' in w]
    assert bool(replaced) == warned, warnings
    if warned:
        assert replaced[0].endswith(
            "DS01 caps BuildKit builds there; containers created without --cgroup-parent "
            "(admins', root's) now land there too"
        )
