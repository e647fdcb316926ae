"""import-ds01: the original resource-limits.yaml becomes a valid policy with the same limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ds01cli.import_ds01 import convert, hours, parse_members, seconds
from formats.units import parse_duration, parse_size
from policy.identity import Identity
from policy.limits import resolve
from policy.loader import parse_policy

FIXTURE = Path(__file__).parent.parent / "fixtures" / "ds01-resource-limits.yaml"


@pytest.fixture(scope="module")
def original() -> dict[str, Any]:
    return yaml.safe_load(FIXTURE.read_text())


@pytest.fixture(scope="module")
def converted(original: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    return convert(original)


def test_output_validates_with_the_policy_loader(converted: tuple[dict[str, Any], list]) -> None:
    """The converted policy loads with parse_policy, as `ds01 policy validate` would."""
    policy, _ = converted
    text = yaml.safe_dump(policy, sort_keys=False)
    assert "&id" not in text  # no shared objects: an admin edits each section on its own
    doc = parse_policy(text, "imported.yaml")
    assert set(doc.data["groups"]) == {"student", "researcher", "faculty", "admin", "admins"}
    assert doc.data["unknown_users"] == "allow"  # the original gave strangers default_group


def test_hour_keys_become_duration_strings(converted: tuple[dict[str, Any], list]) -> None:
    """`*_h` numbers become durations like 48h or 30m; null stays unlimited."""
    policy, _ = converted
    assert policy["defaults"]["max_runtime"] == "24h"
    assert policy["defaults"]["idle_timeout"] == "30m"
    assert policy["defaults"]["gpu_hold_after_stop"] == "15m"
    assert policy["groups"]["researcher"]["max_runtime"] == "48h"
    assert policy["users"]["r2001"]["idle_timeout"] is None
    assert policy["users"]["guest42"]["max_runtime"] == "3m"
    assert policy["container_types"]["devcontainer"] == {
        "idle_timeout": None,
        "max_runtime": "168h",
    }
    assert policy["startup_grace"] == "30m" and policy["keepalive_max"] == "24h"
    assert policy["stop_grace"] == "1m" and policy["created_timeout"] == "30m"
    assert hours(0.01) == "36s" and hours(1.5) == "90m" and seconds(0.5) == "0.5s"


def test_gpu_keys_and_their_legacy_names(converted: tuple[dict[str, Any], list]) -> None:
    """The GPU-equivalents quota and the per-container slot cap, whatever name they used."""
    policy, _ = converted
    groups = policy["groups"]
    assert groups["researcher"]["max_gpu_equivalents"] == 4.0
    assert groups["researcher"]["max_gpus_per_container"] == 3
    # faculty's legacy names were shadowed by the defaults' new names, which the original
    # reads first from the merged limits: faculty really had 1.0 and 1 (and it is reported).
    assert groups["faculty"]["max_gpu_equivalents"] == 1.0
    assert groups["faculty"]["max_gpus_per_container"] == 1
    assert groups["admin"]["max_gpu_equivalents"] is None  # null = unlimited, as before
    # One quota across kinds, as in the original: DS01's per-kind counts are switched off.
    assert policy["defaults"]["max_gpus"] is None
    assert policy["defaults"]["max_mig_instances"] is None


def test_aggregate_in_systemd_syntax_is_converted(converted: tuple[dict[str, Any], list]) -> None:
    """cpu_quota percent -> cpus, memory_max -> memory, tasks_max -> pids."""
    policy, _ = converted
    assert policy["groups"]["researcher"]["aggregate"] == {
        "cpus": 144,
        "memory": "320g",
        "pids": 327680,
    }
    # A group without aggregate had no per-user cap; it must not inherit the default group's.
    assert policy["groups"]["admin"]["aggregate"] == {"cpus": None, "memory": None, "pids": None}


def test_admins_from_access_control(converted: tuple[dict[str, Any], list]) -> None:
    """root, access_control.admin_users and admin_group bypassed the wrapper: DS01 admins."""
    policy, _ = converted
    assert policy["groups"]["admins"] == {
        "admin": True,
        "members": ["root", "labadmin"],
        "unix_groups": ["ds01-admin"],
    }


def test_every_unmapped_key_is_reported(converted: tuple[dict[str, Any], list]) -> None:
    """Each key that could not be carried over is listed by its path in the original."""
    _, unmapped = converted
    paths = {entry.split(": ", 1)[0] for entry in unmapped}
    assert paths == {
        "defaults.max_tasks",
        "groups.admin.max_tasks",
        "groups.faculty.storage_workspace",
        "groups.faculty.max_gpu_slots",  # shadowed by defaults.max_gpu_equivalents
        "groups.faculty.max_mig_per_container",  # shadowed by defaults.max_gpu_slots_per_container
        "groups.researcher.memory_swap",  # 96g swap; defaults' equal swap maps to no-swap
        "groups.student.aggregate.memory_high",
        "groups.researcher.aggregate.memory_high",
        "groups.researcher.aggregate.gpu_limit",  # disagrees with the quota
        "groups.student.policies.idle_detection_window",
        "groups.researcher.policies.idle_detection_window",
        "groups.researcher.members",  # s1002 listed twice
        "policies.idle_detection_window",
        "policies.gpu_hold_after_manual_stop_m",
        "container_types.devcontainer.sigterm_grace_s",
        "container_types.api",
        "container_types.unknown",
        "access_control.wrapper.enforcement_mode",
        "access_control.wrapper.debug_level",
        "access_control.wrapper.unknown_commands",
        "gpu_allocation",
        "monitoring",
        "bare_metal_access",
    }
    assert all(": " in entry and entry.split(": ", 1)[1] for entry in unmapped)
    assert len(unmapped) == len(paths)  # each reported once


# -- differential: every user keeps the limits the original gave them ------------------------

# The original's resolution, written from its documentation and code (get_resource_limits.py):
# a user override is defaults + override (aggregate: theirs, else their group's); a member
# gets defaults + their first group; anyone else defaults + default_group. GPU aliases are read
# from the merged dict, newest name first. Missing keys fall back to the code's built-ins.
_FALLBACKS = {
    "max_gpu_equivalents": 1.0,
    "allow_full_gpu": False,
    "priority": 10,
    "max_cpus": 16,
    "memory": "32g",
    "pids_limit": 4096,
    "max_containers_per_user": 3,
}
_GPUEQ = ("max_gpu_equivalents", "max_gpu_slots", "max_gpus_per_user", "max_mig_instances")
_PER_CONTAINER = ("max_gpu_slots_per_container", "max_gpus_per_container", "max_mig_per_container")


def original_limits(cfg: dict[str, Any], user: str) -> dict[str, Any]:
    base = {**_FALLBACKS, **cfg["defaults"]}
    overrides = cfg.get("user_overrides") or {}
    group_cfg = None
    for group in cfg["groups"].values():
        if user in group.get("members", []):
            group_cfg = group
            break
    if user in overrides:
        limits = {**base, **overrides[user]}
        # Aggregates alone still come from the group (or the default group) under an override.
        fallback = group_cfg or cfg["groups"][cfg["default_group"]]
        agg = overrides[user].get("aggregate", fallback.get("aggregate"))
    else:
        group_cfg = group_cfg or cfg["groups"][cfg["default_group"]]
        limits = {**base, **group_cfg}
        agg = group_cfg.get("aggregate")
    limits["_aggregate"] = agg
    return limits


def first(limits: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next(limits[k] for k in keys if k in limits)


def in_hours(value: float | None) -> float | None:
    return None if value is None else value * 3600


USERS = ["s1001", "s1002", "r2001", "f3001", "labadmin", "guest42", "stranger"]


@pytest.mark.parametrize("user", USERS)
def test_each_user_keeps_their_original_limits(
    original: dict[str, Any], converted: tuple[dict[str, Any], list], user: str
) -> None:
    """Resolving the converted policy gives every user what the original gave them."""
    doc = parse_policy(yaml.safe_dump(converted[0]))
    mine = resolve(doc, Identity(uid=1000, user=user))
    theirs = original_limits(original, user)
    assert mine.max_gpu_equivalents == first(theirs, _GPUEQ)
    assert mine.max_gpus_per_container == first(theirs, _PER_CONTAINER)
    assert mine.allow_full_gpu == theirs["allow_full_gpu"]
    assert mine.priority == theirs["priority"]
    assert mine.max_cpus == theirs["max_cpus"]
    assert mine.memory == parse_size(theirs["memory"])
    assert mine.shm_size == parse_size(theirs["shm_size"])
    assert mine.pids_limit == theirs["pids_limit"]
    assert mine.max_containers == theirs["max_containers_per_user"]
    assert mine.idle_timeout == in_hours(theirs.get("idle_timeout_h"))
    assert mine.max_runtime == in_hours(theirs.get("max_runtime_h"))
    assert mine.gpu_hold_after_stop == in_hours(theirs.get("gpu_hold_after_stop_h"))
    assert mine.container_hold_after_stop == in_hours(theirs.get("container_hold_after_stop_h"))
    agg = theirs["_aggregate"]
    if agg is None:
        assert mine.aggregate.as_dict() == {"cpus": None, "memory": None, "pids": None}
    else:
        assert mine.aggregate.cpus == float(agg["cpu_quota"].rstrip("%")) / 100
        assert mine.aggregate.memory == parse_size(agg["memory_max"].lower())
        assert mine.aggregate.pids == agg["tasks_max"]
    assert mine.max_gpus is None and mine.max_mig_instances is None
    assert not mine.is_admin or user == "labadmin"


# -- members files, override files, and odd inputs -------------------------------------------


def test_members_files_and_override_file_are_merged() -> None:
    """groups/*.members add to inline members; user-overrides.yaml wins over inline ones."""
    original = {
        "defaults": {"max_cpus": 8},
        "groups": {"student": {"members": ["a"]}, "researcher": {"max_cpus": 32}},
        "user_overrides": {"b": {"max_cpus": 2}},
    }
    members = {"student": parse_members("# students\nc  # Carol\n\n a\n"), "researcher": ["d"]}
    policy, unmapped = convert(original, members=members, user_overrides={"b": {"max_cpus": 4}})
    assert policy["groups"]["student"]["members"] == ["c", "a"]
    assert policy["groups"]["researcher"]["members"] == ["d"]
    assert policy["users"]["b"]["max_cpus"] == 4
    assert unmapped == []
    parse_policy(yaml.safe_dump(policy))


def test_default_group_values_move_to_defaults_and_other_groups_keep_theirs() -> None:
    """default_group's limits apply to strangers; other groups keep the original defaults."""
    original = {
        "defaults": {"max_cpus": 8, "memory": "16g"},
        "default_group": "student",
        "groups": {"student": {"max_cpus": 4}, "staff": {"members": ["s"], "memory": "64g"}},
    }
    policy, unmapped = convert(original)
    assert policy["defaults"]["max_cpus"] == 4
    assert policy["groups"]["staff"]["max_cpus"] == 8
    assert unmapped == []
    doc = parse_policy(yaml.safe_dump(policy))
    assert resolve(doc, Identity(uid=1, user="nobody")).max_cpus == 4
    assert resolve(doc, Identity(uid=2, user="s")).max_cpus == 8


def test_missing_default_group_is_reported() -> None:
    """A default_group that names no group is reported; strangers get defaults."""
    policy, unmapped = convert({"defaults": {"max_cpus": 2}, "default_group": "ghost"})
    assert unmapped == [
        "default_group: 'ghost' names no group; users in no group get defaults only"
    ]
    assert policy["defaults"]["max_cpus"] == 2


def test_legacy_string_durations_and_bad_values() -> None:
    """Older `idle_timeout: 48h` strings are read; values the schema refuses are reported."""
    original = {
        "defaults": {"idle_timeout": "0.5h", "max_runtime": "2d", "max_cpus": "lots"},
        "groups": {"x": {"max_runtime_h": "long", "memory": "a lot", "max_gpu_equivalents": "1"}},
        "aggregate_nonsense": 1,
    }
    policy, unmapped = convert(original)
    assert policy["defaults"]["idle_timeout"] == "30m"
    assert policy["defaults"]["max_runtime"] == "48h"
    paths = sorted(u.split(": ", 1)[0] for u in unmapped)
    assert paths == [
        "aggregate_nonsense",
        "defaults.max_cpus",
        "groups.x.max_gpu_equivalents",
        "groups.x.max_runtime_h",
        "groups.x.memory",
    ]
    parse_policy(yaml.safe_dump(policy))


def test_aggregate_limits_off_drops_every_aggregate() -> None:
    """enforcement.aggregate_limits: false meant no per-user caps; none are imported."""
    original = {
        "enforcement": {"aggregate_limits": False, "cgroup_driver": "cgroupfs"},
        "groups": {"student": {"aggregate": {"cpu_quota": "800%", "memory_max": "infinity"}}},
    }
    policy, unmapped = convert(original)
    assert "aggregate" not in policy["defaults"]
    assert "aggregate" not in policy["groups"]["student"]
    assert policy["cgroup_driver"] == "cgroupfs"
    assert unmapped == []


def test_legacy_gpu_names_throughout_are_honoured() -> None:
    """A file that uses the old names everywhere keeps its quotas (max_mig_instances...)."""
    original = {
        "defaults": {"max_mig_instances": 1, "max_mig_per_container": 1},
        "groups": {
            "researchers": {"members": ["r"], "max_mig_instances": 2, "max_gpu_slots": 3},
            "admins": {"members": ["a"], "max_mig_instances": None},
        },
    }
    policy, unmapped = convert(original)
    assert policy["defaults"]["max_gpu_equivalents"] == 1.0
    assert policy["defaults"]["max_gpus_per_container"] == 1
    # max_gpu_slots is read before max_mig_instances, so 3 wins and 2 is reported.
    assert policy["groups"]["researchers"]["max_gpu_equivalents"] == 3.0
    assert policy["groups"]["admins"]["max_gpu_equivalents"] is None
    assert unmapped == [
        "groups.researchers.max_mig_instances: superseded by max_gpu_slots (the original reads "
        "it first)"
    ]


def test_cpus_follow_the_original_fallbacks() -> None:
    """`max_cpus or cpus or 16`: null is not unlimited, and the old `cpus` name is read."""
    original = {
        "defaults": {"cpus": 8},
        "groups": {"a": {"max_cpus": None}, "b": {"cpus": 4}, "c": {"max_cpus": 2, "cpus": 9}},
    }
    policy, unmapped = convert(original)
    assert policy["defaults"]["max_cpus"] == 8
    assert [policy["groups"][g]["max_cpus"] for g in "abc"] == [8, 4, 2]
    assert [u.split(": ")[0] for u in unmapped] == ["groups.a.max_cpus", "groups.c.cpus"]


def test_not_a_mapping_is_refused() -> None:
    """A file that is not a mapping is not a resource-limits.yaml."""
    with pytest.raises(ValueError, match="resource-limits"):
        convert(["defaults"])  # type: ignore[arg-type]


def test_durations_parse_back() -> None:
    """Every duration string the importer writes is one the policy reads back exactly."""
    for h in (0.01, 0.05, 0.25, 0.5, 1, 1.5, 24, 48, 72, 168):
        assert parse_duration(hours(h)) == pytest.approx(h * 3600)
