"""policy.host_checks over recorded inputs: mountinfo texts, sysctl values, policy documents.

Nothing here reads this machine's mounts: the mountinfo files in tests/fixtures/host are
recorded from hosts laid out as the comments in each test say.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policy.host_checks import (
    Mount,
    bind_grants,
    is_per_user,
    mount_findings,
    mount_holding,
    mounts_serving,
    parse_mountinfo,
    policy_findings,
    root_with_binds_findings,
    shared_prefix_findings,
    static_base,
    sysctl_findings,
)

HOST = Path(__file__).resolve().parents[1] / "fixtures" / "host"
HARDENED = parse_mountinfo((HOST / "mountinfo-hardened.txt").read_text())
WEAK = parse_mountinfo((HOST / "mountinfo-weak.txt").read_text())


# ---- mountinfo ---------------------------------------------------------------------------------


def test_mountinfo_lines_become_mounts_with_their_per_mount_options():
    """Field 5 is the mount point (octal escapes undone), field 6 the per-mount options."""
    home = next(m for m in WEAK if m.point == "/home/big lab")
    assert home == Mount(
        "/home/big lab", frozenset({"rw", "nosuid", "relatime"}), "nfs4", "fs1:/export/lab"
    )
    root = next(m for m in HARDENED if m.point == "/")
    assert "nosuid" not in root.options  # "rw,errors=remount-ro" are the superblock's
    assert parse_mountinfo("garbage\n\n1 2 3\n") == []


def test_the_mount_holding_a_path_is_the_longest_mount_point_above_it():
    assert mount_holding("/home/alice/x", HARDENED).point == "/home"
    assert mount_holding("/data", HARDENED).point == "/data"
    assert mount_holding("/database", HARDENED).point == "/"  # not /data: a path prefix only
    assert mount_holding("/data", WEAK).point == "/"


def test_the_topmost_of_two_mounts_on_one_point_counts():
    """A later mountinfo line on the same point is mounted over the earlier one."""
    text = (
        "28 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "40 28 8:2 / /srv rw,relatime - ext4 /dev/sda2 rw\n"
        "41 40 8:3 / /srv rw,nosuid,nodev - ext4 /dev/sda3 rw\n"
    )
    mounts = parse_mountinfo(text)
    assert mount_holding("/srv/x", mounts).source == "/dev/sda3"
    assert [m.source for m in mounts_serving("/srv", mounts)] == ["/dev/sda3"]


def test_the_mounts_serving_a_folder_include_those_below_it():
    """A user's files under /home can lie on /home itself or on a mount inside it."""
    assert [m.point for m in mounts_serving("/home", WEAK)] == ["/home", "/home/big lab"]


# ---- which folders a prefix can reach -----------------------------------------------------------


@pytest.mark.parametrize(
    "prefix, per_user",
    [
        ("{home}", True),
        ("{home}/projects", True),
        ("/data/{user}", True),
        ("/scratch/u-{user}", True),
        ("/data", False),
        ("/", False),
        ("/home", False),
        ("{home}/..", False),  # every user's {home}/.. is /home
        ("/data/{user}/../shared", False),
    ],
)
def test_a_prefix_is_per_user_when_two_users_get_disjoint_folders(prefix, per_user):
    assert is_per_user(prefix) is per_user


@pytest.mark.parametrize(
    "prefix, base",
    [
        ("{home}", "/home"),
        ("{home}/work", "/home"),
        ("/data/{user}", "/data"),
        ("/scratch/u-{user}", "/scratch"),
        ("/data", "/data"),
        ("/data/", "/data"),
        ("/{user}", "/"),
    ],
)
def test_the_static_base_is_the_folder_every_expansion_lies_in(prefix, base):
    assert static_base(prefix) == base


def test_grants_skip_admins_and_default_to_home():
    """No bind_mounts in defaults means the built-in {home}; admins' prefixes limit nothing."""
    policy = {
        "defaults": {"max_cpus": 4},
        "groups": {
            "admins": {"admin": True, "bind_mounts": ["/"]},
            "lab": {"bind_mounts": ["/data/{user}", "/datasets"]},
        },
        "users": {"rita": {"bind_mounts": ["/srv/rita"]}},
    }
    assert [(g.path, g.prefix) for g in bind_grants(policy)] == [
        (("defaults", "bind_mounts", 0), "{home}"),
        (("groups", "lab", "bind_mounts", 0), "/data/{user}"),
        (("groups", "lab", "bind_mounts", 1), "/datasets"),
        (("users", "rita", "bind_mounts", 0), "/srv/rita"),
    ]


# ---- shared prefixes ----------------------------------------------------------------------------


def test_a_shared_prefix_is_a_finding_with_the_per_user_form():
    """`/data` gives every user the same folder; `/data/{user}` does not."""
    [finding] = shared_prefix_findings({"groups": {"lab": {"bind_mounts": ["/data"]}}})
    assert finding.key == "groups.lab.bind_mounts"
    assert finding.problem == (
        "/data is not per-user: every user groups.lab gives it reaches the same folder, and "
        "their containers (which run as them) read and write each other's files there wherever "
        "file permissions allow it"
    )
    assert finding.fix == "a per-user prefix is safer: /data/{user}, each folder owned by its user"
    assert shared_prefix_findings({"groups": {"lab": {"bind_mounts": ["/data/{user}"]}}}) == []


def test_the_default_home_prefix_is_per_user():
    assert shared_prefix_findings({}) == []
    assert shared_prefix_findings({"defaults": {"bind_mounts": ["{home}", "/data/{user}"]}}) == []


def test_a_shared_default_prefix_is_a_finding():
    [finding] = shared_prefix_findings({"defaults": {"bind_mounts": ["{home}", "/scratch"]}})
    assert finding.key == "defaults.bind_mounts" and "every user defaults gives" in finding.problem
    assert "/scratch/{user}" in finding.fix


def test_a_user_entry_is_shared_only_when_it_reaches_another_users_folder():
    """users.rita: /srv/rita is hers alone; users.rita: /home covers every {home}."""
    assert shared_prefix_findings({"users": {"rita": {"bind_mounts": ["/srv/rita"]}}}) == []
    [finding] = shared_prefix_findings({"users": {"rita": {"bind_mounts": ["/home"]}}})
    assert finding.key == "users.rita.bind_mounts"
    assert finding.problem == (
        "/home holds the folders {home} from defaults gives other users: rita's containers read "
        "and write their files there wherever file permissions allow it"
    )
    assert finding.fix == "narrow it to rita's own folder, one that no other prefix covers"
    two = {"users": {"rita": {"bind_mounts": ["/srv"]}, "sam": {"bind_mounts": ["/srv/sam"]}}}
    assert [f.key for f in shared_prefix_findings(two)] == ["users.rita.bind_mounts"]


def test_admin_prefixes_are_not_findings():
    policy = {"groups": {"admins": {"admin": True, "bind_mounts": ["/"]}}}
    assert policy_findings(policy) == []


# ---- run_as: root with bind mounts --------------------------------------------------------------


def test_run_as_root_with_bind_mounts_is_a_finding():
    """The pair is refused at create anyway; the finding says so and how to pick one."""
    policy = {"groups": {"builders": {"run_as": "root", "bind_mounts": ["/data/{user}"]}}}
    [finding] = root_with_binds_findings(policy)
    assert finding.key == "groups.builders.run_as"
    assert finding.problem == (
        "run_as: root together with bind_mounts /data/{user}: a container that runs as root may "
        "not bind-mount host folders, so DS01 refuses such a create anyway"
    )
    assert "bind_mounts: []" in finding.fix and "run_as: user" in finding.fix


def test_run_as_root_inherits_the_default_bind_mounts():
    """A group with run_as: root and no bind_mounts of its own still has the defaults' {home}."""
    [finding] = root_with_binds_findings({"groups": {"b": {"run_as": "root"}}})
    assert "{home} (inherited from defaults)" in finding.problem
    assert root_with_binds_findings({"groups": {"b": {"run_as": "root", "bind_mounts": []}}}) == []
    assert root_with_binds_findings({"groups": {"b": {"run_as": "user"}}}) == []
    assert root_with_binds_findings({"defaults": {"run_as": "root", "bind_mounts": []}}) == []
    [finding] = root_with_binds_findings({"defaults": {"run_as": "root"}})
    assert finding.key == "defaults.run_as"


# ---- nosuid / nodev -----------------------------------------------------------------------------


def test_a_hardened_host_has_no_mount_findings():
    policy = {"defaults": {"bind_mounts": ["{home}"]}, "groups": {"g": {"bind_mounts": ["/data"]}}}
    assert mount_findings(policy, HARDENED) == []


def test_a_home_mount_without_nosuid_nodev_is_a_finding_with_the_fstab_fix():
    """/home lacks both; the lab NFS mount inside it lacks nodev."""
    findings = mount_findings({}, WEAK)
    assert [f.key for f in findings] == ["/home", "/home/big lab"]
    home, lab = findings
    assert home.problem == (
        "/home (ext4 /dev/nvme0n1p3) holds /home ({home} from defaults) and is mounted without "
        "nosuid or nodev: a setuid file or device node left there works when run or opened "
        "from the host"
    )
    assert home.fix == (
        "add nosuid,nodev to the options of /home in /etc/fstab, then: "
        "mount -o remount,nosuid,nodev /home"
    )
    assert "without nodev:" in lab.problem


def test_a_prefix_on_the_root_filesystem_gets_a_nosuid_bind_mount_of_itself():
    """/data is a folder of /: remounting / nosuid would break the system; harden /data alone."""
    [finding] = mount_findings({"defaults": {"bind_mounts": ["/data/{user}"]}}, WEAK)
    assert finding.key == "/"
    assert "holds /data (/data/{user} from defaults)" in finding.problem
    assert finding.fix == (
        "mount /data on itself with nosuid,nodev: add `/data /data none bind,nosuid,nodev 0 0` "
        "to /etc/fstab, then: mount --bind /data /data && "
        "mount -o remount,bind,nosuid,nodev /data"
    )


def test_homes_elsewhere_are_checked_where_they_are():
    findings = mount_findings({}, HARDENED, home_root="/srv/home")
    assert [f.key for f in findings] == ["/"] and "holds /srv/home" in findings[0].problem


# ---- link protection ----------------------------------------------------------------------------


def test_link_protection_on_is_fine_and_off_is_a_finding_with_the_sysctl_fix():
    on = {"fs.protected_hardlinks": "1\n", "fs.protected_symlinks": "1\n"}
    assert sysctl_findings(on) == []
    [finding] = sysctl_findings({**on, "fs.protected_hardlinks": "0\n"})
    assert finding.key == "fs.protected_hardlinks"
    assert finding.problem.startswith("fs.protected_hardlinks is 0: users may hard-link files")
    assert finding.fix == (
        "sysctl -w fs.protected_hardlinks=1, and keep it across reboots: "
        "echo 'fs.protected_hardlinks = 1' >> /etc/sysctl.d/60-ds01.conf"
    )
    off = sysctl_findings({"fs.protected_hardlinks": "0", "fs.protected_symlinks": "0"})
    assert [f.key for f in off] == ["fs.protected_hardlinks", "fs.protected_symlinks"]


def test_unreadable_link_protection_is_a_finding():
    [finding] = sysctl_findings({"fs.protected_hardlinks": "1"})
    assert finding.key == "fs.protected_symlinks" and "unreadable" in finding.problem
