"""Per-user parent cgroups as data (names, slice units, kernel files), and the managers' logic
on fake cgroup trees and a fake systemctl (no root, no kernel, no systemd needed)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ds01d.host.cgroups import (
    CgroupError,
    CgroupfsManager,
    SystemdSliceManager,
    UserCgroups,
    parse_v1_mounts,
)
from policy.identity import Identity
from policy.limits import resolve
from policy.loader import parse_policy
from policy.slices import (
    cgroup_parent,
    cgroupfs_dir_name,
    cgroupfs_settings,
    cgroupfs_user_from_dir,
    parent_slice_texts,
    parse_slice_unit_name,
    slice_unit_name,
    slice_unit_text,
    slice_units,
    systemd_escape,
    systemd_unescape,
)

MIB, GIB = 2**20, 2**30

POLICY = parse_policy(
    """\
defaults:
  aggregate: {cpus: 16, memory: 64g, pids: 16384}
groups:
  phd-students:
    members: [anne-marie]
    aggregate: {cpus: 2.5, memory: 8g}
  researchers:
    members: [rita]
    aggregate: {cpus: null, memory: null, pids: null}
"""
)


def limits_of(user: str):
    return resolve(POLICY, Identity(uid=1001, user=user))


# ---- names ---------------------------------------------------------------------------------

ESCAPES = [
    ("alice", "alice"),
    ("anne-marie", "anne\\x2dmarie"),
    ("j.doe", "j.doe"),
    (".hidden", "\\x2ehidden"),
    ("a b", "a\\x20b"),
    ("müller", "m\\xc3\\xbcller"),
    ("x_1:2", "x_1:2"),
    ("a\\b", "a\\x5cb"),
    ("x%y", "x\\x25y"),
    ("A.B-c", "A.B\\x2dc"),
    ("a/b", "a\\x2fb"),  # systemd-escape gives "a-b" (a path); a name must never nest
]


@pytest.mark.parametrize(("name", "escaped"), ESCAPES)
def test_escape_table(name: str, escaped: str) -> None:
    """Names are escaped as `systemd-escape` does, so a dash never nests a slice."""
    assert systemd_escape(name) == escaped
    assert systemd_unescape(escaped) == name


@pytest.mark.skipif(not shutil.which("systemd-escape"), reason="systemd-escape not installed")
@pytest.mark.parametrize(("name", "escaped"), [e for e in ESCAPES if "/" not in e[0]])
def test_escape_matches_the_real_systemd_escape(name: str, escaped: str) -> None:
    real = subprocess.run(["systemd-escape", "--", name], capture_output=True, text=True)
    assert real.stdout.strip() == systemd_escape(name) == escaped


@given(st.text(min_size=1))
def test_escape_round_trips_and_never_nests(name: str) -> None:
    escaped = systemd_escape(name)
    assert "-" not in escaped and "/" not in escaped and not escaped.startswith(".")
    assert systemd_unescape(escaped) == name


@pytest.mark.parametrize(
    ("user", "directory"),
    [
        ("alice", "alice"),
        ("e2e-alice", "e2e-alice"),  # dashes are fine in a directory name
        ("j.doe", "j.doe"),
        ("a/b", "a\\x2fb"),  # never a path separator
        ("..", "\\x2e."),
        (".x", "\\x2ex"),
        ("a b", "a\\x20b"),
        ("tasks", "\\x74asks"),  # a control file's name in every cgroup directory
        ("memory.max", "\\x6demory.max"),
        ("cgroup.procs", "\\x63group.procs"),
        ("cpu", "cpu"),  # no dot: cannot clash with "cpu.<file>"
        ("mem.ory", "mem.ory"),
    ],
)
def test_cgroupfs_dir_names(user: str, directory: str) -> None:
    assert cgroupfs_dir_name(user) == directory
    assert cgroupfs_user_from_dir(directory) == user


@given(st.text(min_size=1))
def test_cgroupfs_dir_names_are_safe_and_map_back(user: str) -> None:
    name = cgroupfs_dir_name(user)
    assert "/" not in name and name not in (".", "..") and "\x00" not in name
    assert cgroupfs_user_from_dir(name) == user  # so no two users share a directory


def test_empty_names_are_refused() -> None:
    with pytest.raises(ValueError, match="empty user name"):
        cgroup_parent("cgroupfs", "", "g")
    with pytest.raises(ValueError, match="empty group name"):
        cgroup_parent("systemd", "alice", "")


def test_cgroup_parent_per_driver() -> None:
    """cgroupfs: /ds01/<user>; systemd: ds01-<group>-<user>.slice, both escaped."""
    assert cgroup_parent("cgroupfs", "alice", "students") == "/ds01/alice"
    assert cgroup_parent("cgroupfs", "anne-marie", "phd-students") == "/ds01/anne-marie"
    assert cgroup_parent("systemd", "alice", "students") == "ds01-students-alice.slice"
    assert (
        cgroup_parent("systemd", "anne-marie", "phd-students")
        == "ds01-phd\\x2dstudents-anne\\x2dmarie.slice"
    )


@pytest.mark.parametrize(("user", "group"), [("alice", "default"), ("a-b.c", "phd-students")])
def test_slice_names_parse_back(user: str, group: str) -> None:
    assert parse_slice_unit_name(slice_unit_name(user, group)) == (user, group)


@pytest.mark.parametrize("unit", ["ds01.slice", "ds01-students.slice", "user-1000.slice", "x"])
def test_other_units_are_not_user_slices(unit: str) -> None:
    assert parse_slice_unit_name(unit) is None


# ---- systemd slice units -------------------------------------------------------------------


def test_slice_units_for_a_policy() -> None:
    """The unit files for a user of a group with its own aggregate limits (golden text)."""
    limits = limits_of("anne-marie")
    assert limits.group == "phd-students"
    units = slice_units("anne-marie", limits.group, limits.aggregate.as_dict())
    assert units == {
        "ds01.slice": (
            "# Written by ds01d; changes here are overwritten.\n"
            "[Unit]\n"
            "Description=DS01 containers\n"
        ),
        "ds01-phd\\x2dstudents.slice": (
            "# Written by ds01d; changes here are overwritten.\n"
            "[Unit]\n"
            "Description=DS01 containers of group phd-students\n"
        ),
        "ds01-phd\\x2dstudents-anne\\x2dmarie.slice": (
            "# Written by ds01d from the DS01 policy; changes here are overwritten.\n"
            "[Unit]\n"
            "Description=DS01 containers of anne-marie\n"
            "\n"
            "[Slice]\n"
            "CPUAccounting=yes\n"
            "MemoryAccounting=yes\n"
            "TasksAccounting=yes\n"
            "CPUQuota=250%\n"
            "MemoryMax=8589934592\n"
            "MemorySwapMax=0\n"
            "TasksMax=16384\n"  # inherited from defaults: only the keys given are overridden
        ),
    }


def test_unlimited_slice() -> None:
    """Unlimited: MemoryMax/TasksMax=infinity, no CPUQuota (systemd has no infinity for it)."""
    limits = limits_of("rita")
    assert slice_unit_text("rita", limits.group, limits.aggregate.as_dict()).endswith(
        "[Slice]\n"
        "CPUAccounting=yes\n"
        "MemoryAccounting=yes\n"
        "TasksAccounting=yes\n"
        "MemoryMax=infinity\n"
        "TasksMax=infinity\n"
    )


def test_slice_description_is_taken_literally() -> None:
    """systemd expands %n etc. in Description=, and a newline would start a new directive."""
    assert "Description=DS01 containers of x%%n\n" in slice_unit_text("x%n", "g", {})
    text = slice_unit_text("x\nMemoryMax=infinity", "g", {"memory": GIB})
    assert "Description=DS01 containers of x\\x0aMemoryMax=infinity\n" in text
    assert [ln for ln in text.splitlines() if ln.startswith("MemoryMax")] == [f"MemoryMax={GIB}"]
    groups = parent_slice_texts("a\rb")
    assert groups["ds01-a\\x0db.slice"].endswith("Description=DS01 containers of group a\\x0db\n")


@pytest.mark.parametrize(("cpus", "quota"), [(0.5, "50%"), (1, "100%"), (0.001, "1%")])
def test_slice_cpu_quota_percent(cpus: float, quota: str) -> None:
    assert f"CPUQuota={quota}\n" in slice_unit_text("a", "g", {"cpus": cpus})


# ---- cgroupfs kernel files -----------------------------------------------------------------


def test_cgroupfs_settings_v1() -> None:
    assert cgroupfs_settings({"cpus": 0.5, "memory": 64 * MIB, "pids": 20}, 1) == {
        "cpu.cfs_period_us": "100000",
        "cpu.cfs_quota_us": "50000",
        "memory.limit_in_bytes": "67108864",
        "memory.memsw.limit_in_bytes": "67108864",
        "pids.max": "20",
    }
    # The period goes before the quota: the order is the order to write in.
    assert list(cgroupfs_settings({}, 1))[:2] == ["cpu.cfs_period_us", "cpu.cfs_quota_us"]


def test_cgroupfs_settings_v2() -> None:
    assert cgroupfs_settings({"cpus": 2.5, "memory": 8 * GIB, "pids": 100}, 2) == {
        "cpu.max": "250000 100000",
        "memory.max": "8589934592",
        "memory.swap.max": "0",
        "pids.max": "100",
    }


def test_cgroupfs_settings_unlimited() -> None:
    unlimited = {"cpus": None, "memory": None, "pids": None}
    assert cgroupfs_settings(unlimited, 1) == {
        "cpu.cfs_period_us": "100000",
        "cpu.cfs_quota_us": "-1",
        "memory.limit_in_bytes": "-1",
        "memory.memsw.limit_in_bytes": "-1",
        "pids.max": "max",
    }
    assert cgroupfs_settings({}, 2) == {
        "cpu.max": "max 100000",
        "memory.max": "max",
        "memory.swap.max": "max",
        "pids.max": "max",
    }


def test_cgroupfs_settings_edges() -> None:
    # The kernel refuses a quota under 1 ms: a tiny share gets the smallest one it takes.
    assert cgroupfs_settings({"cpus": 0.001}, 2)["cpu.max"] == "1000 100000"
    assert cgroupfs_settings({"cpus": 1.234567}, 1)["cpu.cfs_quota_us"] == "123457"
    with pytest.raises(ValueError, match="cgroup version"):
        cgroupfs_settings({}, 3)


# ---- finding the v1 hierarchies ------------------------------------------------------------

MOUNTINFO = """\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
31 25 0:28 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
33 31 0:30 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
34 31 0:31 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/my\\040pids rw - cgroup cgroup rw,pids
37 31 0:34 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset,clone_children
38 40 0:32 / /elsewhere/memory rw - cgroup cgroup rw,memory
"""


def test_v1_mounts_from_mountinfo() -> None:
    assert parse_v1_mounts(MOUNTINFO, {"cpu", "cpuacct", "memory", "pids", "cpuset"}) == {
        "unified": "/sys/fs/cgroup/unified",
        "name=systemd": "/sys/fs/cgroup/systemd",
        "cpu": "/sys/fs/cgroup/cpu,cpuacct",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
        "memory": "/sys/fs/cgroup/memory",  # the first mount wins, as in runc
        "pids": "/sys/fs/cgroup/my pids",
        "cpuset": "/sys/fs/cgroup/cpuset",
    }


# ---- CgroupfsManager on fake trees ---------------------------------------------------------


def fake_v1(tmp_path: Path) -> CgroupfsManager:
    """A v1 layout: cpu,cpuacct co-mounted, memory, pids, cpuset with its root values."""
    mounts = {}
    for name in ("cpu,cpuacct", "memory", "pids", "cpuset"):
        (tmp_path / name).mkdir()
        for controller in name.split(","):
            mounts[controller] = str(tmp_path / name)
    (tmp_path / "cpuset" / "cpuset.cpus").write_text("0-3\n")
    (tmp_path / "cpuset" / "cpuset.mems").write_text("0\n")
    return CgroupfsManager(tmp_path, version=1, mounts=mounts)


def test_v1_tree_is_created_and_limited(tmp_path: Path) -> None:
    manager = fake_v1(tmp_path)
    aggregate = {"cpus": 2, "memory": GIB, "pids": 50}
    # (a real kernel creates the control files; here the writes create them)
    assert manager.ensure_user("alice", aggregate) == []
    assert set(manager.paths("alice")) == {"cpu,cpuacct", "memory", "pids", "cpuset"}
    assert manager.limits("alice") == {
        "cpu.cfs_period_us": "100000",
        "cpu.cfs_quota_us": "200000",
        "memory.limit_in_bytes": str(GIB),
        "pids.max": "50",
    }  # memsw: only where the kernel has the file
    assert manager.users() == ["alice"]
    assert manager.ensure_user("alice", aggregate) == []  # idempotent


def test_v1_cpuset_values_are_copied_into_new_cgroups(tmp_path: Path) -> None:
    manager = fake_v1(tmp_path)
    # A new cpuset directory starts with empty values, as the kernel makes it.
    for d in (tmp_path / "cpuset" / "ds01", tmp_path / "cpuset" / "ds01" / "bob"):
        d.mkdir()
        (d / "cpuset.cpus").write_text("\n")
        (d / "cpuset.mems").write_text("\n")
    manager.ensure_user("bob", {})
    user = tmp_path / "cpuset" / "ds01" / "bob"
    assert (user / "cpuset.cpus").read_text() == "0-3"
    assert (user / "cpuset.mems").read_text() == "0"


def test_v1_memsw_is_kept_above_the_limit(tmp_path: Path, monkeypatch) -> None:
    """memsw >= limit at every step: memsw goes first when raising, last when lowering."""
    manager = fake_v1(tmp_path)
    manager.ensure_user("carol", {"memory": GIB})
    user = tmp_path / "memory" / "ds01" / "carol"
    (user / "memory.memsw.limit_in_bytes").write_text(str(GIB))
    writes: list[str] = []
    real_write = Path.write_text

    def record(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if self.name.startswith("memory."):
            writes.append(f"{self.name}={data}")
        return real_write(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", record)
    manager.ensure_user("carol", {"memory": 2 * GIB})
    manager.ensure_user("carol", {"memory": GIB // 2})
    manager.ensure_user("carol", {"memory": None})
    assert writes == [
        f"memory.memsw.limit_in_bytes={2 * GIB}",
        f"memory.limit_in_bytes={2 * GIB}",
        f"memory.limit_in_bytes={GIB // 2}",
        f"memory.memsw.limit_in_bytes={GIB // 2}",
        "memory.memsw.limit_in_bytes=-1",
        "memory.limit_in_bytes=-1",
    ]


def test_refused_limits_are_warnings(tmp_path: Path) -> None:
    """A limit the kernel refuses is reported; the other limits are still written."""
    manager = fake_v1(tmp_path)
    manager.ensure_user("dave", {})
    pids_max = tmp_path / "pids" / "ds01" / "dave" / "pids.max"
    pids_max.unlink()
    pids_max.mkdir()  # writing it now fails
    warnings = manager.ensure_user("dave", {"cpus": 1, "pids": 10})
    assert len(warnings) == 1 and warnings[0].startswith("dave: cannot set pids.max=10")
    assert manager.limits("dave")["cpu.cfs_quota_us"] == "100000"


def test_missing_v1_controller_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    manager = CgroupfsManager(tmp_path, version=1, mounts={"memory": str(tmp_path / "memory")})
    warnings = manager.ensure_user("erin", {"memory": GIB, "pids": 5})
    assert warnings == [
        "erin: the cpu controller is not mounted, its limit is not enforced",
        "erin: the pids controller is not mounted, its limit is not enforced",
    ]
    assert manager.limits("erin") == {"memory.limit_in_bytes": str(GIB)}


def fake_v2(tmp_path: Path) -> CgroupfsManager:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    # What the kernel shows in /ds01 once the root delegates cpu, memory and pids.
    (tmp_path / "ds01").mkdir()
    (tmp_path / "ds01" / "cgroup.controllers").write_text("cpu memory pids\n")
    return CgroupfsManager(tmp_path)


def test_v2_enables_controllers_and_writes_limits(tmp_path: Path) -> None:
    manager = fake_v2(tmp_path)
    assert manager.version == 2
    assert manager.ensure_user("alice", {"cpus": 0.5, "memory": GIB, "pids": 7}) == []
    # One controller per write (the fake keeps the last one; the kernel keeps them all).
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+pids"
    assert (tmp_path / "ds01" / "cgroup.subtree_control").read_text() == "+pids"
    assert manager.limits("alice") == {
        "cpu.max": "50000 100000",
        "memory.max": str(GIB),
        "pids.max": "7",
    }
    assert manager.paths("alice") == {"": tmp_path / "ds01" / "alice"}


def test_v2_never_lowers_memory_below_current_use(tmp_path: Path) -> None:
    """v2 would OOM-kill to get there; DS01 keeps the old limit and says so, like v1."""
    manager = fake_v2(tmp_path)
    manager.ensure_user("bob", {"memory": GIB})
    (tmp_path / "ds01" / "bob" / "memory.current").write_text(str(GIB // 2))
    warnings = manager.ensure_user("bob", {"memory": GIB // 4, "pids": 9})
    assert len(warnings) == 1 and "already use" in warnings[0]
    assert manager.limits("bob")["memory.max"] == str(GIB)
    assert manager.limits("bob")["pids.max"] == "9"


def test_v2_usage(tmp_path: Path) -> None:
    manager = fake_v2(tmp_path)
    manager.ensure_user("carol", {})
    user = tmp_path / "ds01" / "carol"
    (user / "memory.current").write_text("1048576\n")
    (user / "pids.current").write_text("3\n")
    (user / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    (user / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    (user / "pids.events").write_text("max 2\n")
    assert manager.usage("carol") == {
        "memory": 1048576,
        "pids": 3,
        "cpu_seconds": 2.5,
        "oom_kills": 1,
        "forks_refused": 2,
    }
    assert manager.usage("nobody-yet") == dict.fromkeys(manager.usage("carol"))


def test_remove_user_removes_empty_cgroups_only(tmp_path: Path) -> None:
    manager = fake_v1(tmp_path)
    manager.ensure_user("fred", {"pids": 5})
    for path in manager.paths("fred").values():
        for child in path.iterdir():  # a real cgroup's control files cannot be unlinked
            child.unlink()
    (manager.paths("fred")["memory"] / "leftover-container").mkdir()
    assert manager.remove_user("fred") == []
    assert not any(p.exists() for p in manager.paths("fred").values())
    assert manager.remove_user("fred") == []  # nothing there: nothing to do


def test_a_file_in_the_way_is_a_clear_error(tmp_path: Path) -> None:
    manager = fake_v1(tmp_path)
    (tmp_path / "memory" / "ds01").write_text("not a directory")
    with pytest.raises(CgroupError, match="a file has that name"):
        manager.ensure_user("gina", {})


# ---- SystemdSliceManager with a fake systemctl --------------------------------------------


class FakeSystemctl:
    def __init__(self, returncode: int = 0, stdout: str = "", stderr: str = "") -> None:
        self.calls: list[list[str]] = []
        self.result = SimpleNamespace(returncode=returncode, stdout=stdout, stderr=stderr)

    def __call__(self, args: list[str], **kwargs: Any) -> SimpleNamespace:
        self.calls.append(args)
        return self.result


def test_slice_files_written_and_reloaded_once(tmp_path: Path) -> None:
    run = FakeSystemctl()
    manager = SystemdSliceManager(tmp_path, run=run)
    aggregate = {"cpus": 4, "memory": 16 * GIB, "pids": 1000}
    assert manager.ensure_user("alice", aggregate, "students") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ds01-students-alice.slice",
        "ds01-students.slice",
        "ds01.slice",
    ]
    assert (tmp_path / "ds01-students-alice.slice").read_text() == slice_unit_text(
        "alice", "students", aggregate
    )
    assert run.calls == [["systemctl", "daemon-reload"]]
    # Unchanged: no reload. Changed: rewritten and reloaded (that reaches running slices).
    assert manager.ensure_user("alice", aggregate, "students") == []
    assert len(run.calls) == 1
    assert manager.ensure_user("alice", {**aggregate, "pids": 5}, "students") == []
    assert run.calls[-1] == ["systemctl", "daemon-reload"] and len(run.calls) == 2
    assert "TasksMax=5\n" in (tmp_path / "ds01-students-alice.slice").read_text()
    assert manager.users() == [("alice", "students")]


def test_failed_reload_is_a_warning(tmp_path: Path) -> None:
    run = FakeSystemctl(returncode=1, stderr="Access denied")
    warnings = SystemdSliceManager(tmp_path, run=run).ensure_user("bob", {}, "g")
    assert len(warnings) == 1 and "Access denied" in warnings[0]


def test_no_systemctl_at_all_is_a_warning(tmp_path: Path) -> None:
    def missing(args: list[str], **kwargs: Any) -> None:
        raise FileNotFoundError(2, "No such file or directory", "systemctl")

    warnings = SystemdSliceManager(tmp_path, run=missing).ensure_user("bob", {}, "g")
    assert len(warnings) == 1 and "No such file" in warnings[0]


def test_skip_systemctl_writes_files_only(tmp_path: Path) -> None:
    run = FakeSystemctl()
    manager = SystemdSliceManager(tmp_path, run=run, skip_systemctl=True)
    assert manager.ensure_user("carol", {"memory": GIB}, "g") == []
    assert run.calls == [] and (tmp_path / "ds01-g-carol.slice").exists()
    assert manager.usage("carol", "g") == {"memory": None, "pids": None, "cpu_seconds": None}


def test_slice_usage_from_systemctl_show(tmp_path: Path) -> None:
    run = FakeSystemctl(stdout="MemoryCurrent=4096\nTasksCurrent=3\nCPUUsageNSec=[not set]\n")
    manager = SystemdSliceManager(tmp_path, run=run)
    assert manager.usage("dave", "g") == {"memory": 4096, "pids": 3, "cpu_seconds": None}
    assert run.calls[-1][:2] == ["systemctl", "show"] and run.calls[-1][-1] == "ds01-g-dave.slice"


def test_remove_slice(tmp_path: Path) -> None:
    run = FakeSystemctl()
    manager = SystemdSliceManager(tmp_path, run=run)
    manager.ensure_user("erin", {}, "g")
    assert manager.remove_user("erin", "g") == []
    assert not (tmp_path / "ds01-g-erin.slice").exists() and manager.users() == []


# ---- UserCgroups: what the daemon calls ----------------------------------------------------


def test_ensure_never_raises(tmp_path: Path) -> None:
    """A cgroup tree that cannot be written gives a warning, not an exception."""
    (tmp_path / "memory").write_text("a file where a hierarchy should be")
    manager = CgroupfsManager(tmp_path, version=1, mounts={"memory": str(tmp_path / "memory")})
    cgroups = UserCgroups(manager)
    limits = limits_of("anne-marie")
    warnings = asyncio.run(cgroups.ensure(Identity(uid=1, user="anne-marie"), limits))
    assert len(warnings) == 1 and warnings[0].startswith("anne-marie: cannot create cgroup")


def test_refresh_rewrites_every_existing_user(tmp_path: Path) -> None:
    manager = fake_v1(tmp_path)
    manager.ensure_user("anne-marie", {"pids": 1})
    manager.ensure_user("rita", {"pids": 1})
    assert UserCgroups(manager).refresh(limits_of) == []
    assert manager.limits("anne-marie")["cpu.cfs_quota_us"] == "250000"
    assert manager.limits("rita")["pids.max"] == "max"


def test_refresh_keeps_slice_names(tmp_path: Path) -> None:
    """A slice keeps its name (its containers run in it) even if the user changed group."""
    manager = SystemdSliceManager(tmp_path, run=FakeSystemctl())
    manager.ensure_user("anne-marie", {}, "old-group")
    UserCgroups(manager).refresh(limits_of)
    text = (tmp_path / slice_unit_name("anne-marie", "old-group")).read_text()
    assert "CPUQuota=250%\n" in text


def test_report_rows(tmp_path: Path) -> None:
    manager = fake_v1(tmp_path)
    manager.ensure_user("anne-marie", limits_of("anne-marie").aggregate.as_dict())
    rows = UserCgroups(manager).report([], limits_of)
    assert [(r["user"], r["parent"]) for r in rows] == [("anne-marie", "/ds01/anne-marie")]
    assert rows[0]["kernel"]["memory.limit_in_bytes"] == str(8 * GIB)
    assert set(rows[0]["usage"]) == {"memory", "pids", "cpu_seconds", "oom_kills", "forks_refused"}
