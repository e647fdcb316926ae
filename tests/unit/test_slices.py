"""Per-user cgroup names and limits as data: slice units, escaping, cgroupfs files."""

from __future__ import annotations

import pytest

from policy.slices import (
    cgroup_parent,
    cgroupfs_settings,
    slice_unit_name,
    slice_unit_text,
    systemd_escape,
)


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ("alice", "alice"),
        ("anne-marie", "anne\\x2dmarie"),
        ("j.doe", "j.doe"),
        (".hidden", "\\x2ehidden"),
        ("a b", "a\\x20b"),
        ("müller", "m\\xc3\\xbcller"),
        ("x_1:2", "x_1:2"),
    ],
)
def test_systemd_escape_matches_systemd_escape(name, escaped):
    """Names are escaped as `systemd-escape` does, so a dash never nests a slice."""
    assert systemd_escape(name) == escaped


def test_cgroup_parent_per_driver():
    """cgroupfs: /ds01/<user>; systemd: ds01-<group>-<user>.slice."""
    assert cgroup_parent("cgroupfs", "alice", "students") == "/ds01/alice"
    assert (
        cgroup_parent("systemd", "anne-marie", "phd-students")
        == "ds01-phd\\x2dstudents-anne\\x2dmarie.slice"
    )
    assert slice_unit_name("alice", "students") == "ds01-students-alice.slice"


def test_slice_unit_for_a_policy():
    """The unit file holds the aggregate limits in systemd's units."""
    text = slice_unit_text("alice", "students", {"cpus": 16, "memory": 64 * 2**30, "pids": 4096})
    assert text == (
        "# Written by ds01d from /etc/ds01/policy.yaml; changes here are overwritten.\n"
        "[Unit]\n"
        "Description=DS01 containers of alice (students)\n"
        "\n"
        "[Slice]\n"
        "CPUAccounting=yes\n"
        "MemoryAccounting=yes\n"
        "TasksAccounting=yes\n"
        "CPUQuota=1600%\n"
        "MemoryMax=68719476736\n"
        "TasksMax=4096\n"
    )


def test_unlimited_slice_has_no_quota():
    """Unlimited values become infinity (memory, tasks) or no CPUQuota line."""
    text = slice_unit_text("bob", "researchers", {"cpus": None, "memory": None, "pids": None})
    assert "CPUQuota" not in text and "MemoryMax=infinity" in text and "TasksMax=infinity" in text


def test_cgroupfs_files_v1_and_v2():
    """The kernel files and values for both cgroup versions, limited and unlimited."""
    limited = {"cpus": 0.5, "memory": 64 * 2**20, "pids": 20}
    assert cgroupfs_settings(limited, 1) == {
        "cpu/cpu.cfs_period_us": "100000",
        "cpu/cpu.cfs_quota_us": "50000",
        "memory/memory.limit_in_bytes": "67108864",
        "pids/pids.max": "20",
    }
    assert cgroupfs_settings(limited, 2) == {
        "cpu.max": "50000 100000",
        "memory.max": "67108864",
        "pids.max": "20",
    }
    assert cgroupfs_settings({}, 1)["memory/memory.limit_in_bytes"] == "-1"
    assert cgroupfs_settings({}, 2) == {
        "cpu.max": "max 100000",
        "memory.max": "max",
        "pids.max": "max",
    }
