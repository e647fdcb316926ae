"""Effective limits: defaults, then every group (most generous per key), then the user's entry."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from allocator.quota import Quota, QuotaLimits
from policy.identity import Identity
from policy.limits import BUILTIN_DEFAULTS, POLICY_KEYS, Aggregate, Limits, groups_of, resolve
from policy.loader import PolicyDocument, default_policy_text, parse_policy

GI = 2**30
ROOT = Path(__file__).resolve().parents[2]


def doc_of(text: str) -> PolicyDocument:
    """A validated policy document from YAML text."""
    return parse_policy(text)


def alice(*groups: str) -> Identity:
    """The user alice, in the given Unix groups."""
    return Identity(uid=1001, user="alice", groups=frozenset(groups), home="/home/alice")


LAB = doc_of(
    """\
unknown_users: deny
direct_access: deny
defaults:
  max_mig_instances: 1
  max_cpus: 8
  memory: 32g
  idle_timeout: 48h
  aggregate:
    cpus: 16
    memory: 64g
    pids: 16384
groups:
  students:
    members: [alice, bob]
    max_cpus: 4
    memory: 16g
  researchers:
    unix_groups: [lab]
    max_mig_instances: 2
    memory: 64g
    allow_full_gpu: true
    priority: 50
users:
  rita:
    max_gpus: 4
"""
)


# ---- one layer at a time -------------------------------------------------------------------


def test_empty_policy_gives_built_in_defaults() -> None:
    """With no policy sections every value is the built-in one, normalised to bytes/seconds."""
    limits = resolve(doc_of(""), alice())
    expected = {k: v for k, v in BUILTIN_DEFAULTS.items()}
    expected["gpu_wait"] = 0.0
    expected["gpu_hold_after_stop"] = 0.0
    expected |= {"unknown_users": "allow", "direct_access": "allow"}
    assert limits.as_dict() == expected
    assert set(limits.sources.values()) == {"built-in"}
    assert limits.group == "default"
    assert limits.known is False


def test_defaults_only() -> None:
    """A user in no group gets defaults (units parsed) and built-ins for keys defaults omit."""
    limits = resolve(LAB, Identity(uid=2000, user="zoe"))
    assert limits.max_cpus == 8
    assert limits.memory == 32 * GI
    assert limits.idle_timeout == 48 * 3600
    assert limits.max_mig_instances == 1
    assert limits.max_gpus == 0
    assert limits.allow_full_gpu is False
    assert limits.sources["memory"] == "defaults"
    assert limits.sources["max_gpus"] == "built-in"
    assert limits.group == "default"


def test_one_group_by_members() -> None:
    """A user named in ``members`` gets that group's values over the defaults."""
    limits = resolve(LAB, alice())
    assert (limits.max_cpus, limits.memory) == (4, 16 * GI)
    assert limits.max_mig_instances == 1  # not set by the group: defaults
    assert limits.group == "students"
    assert limits.sources["max_cpus"] == "group students"
    assert limits.sources["max_mig_instances"] == "defaults"
    assert limits.known is True


def test_one_group_by_unix_groups() -> None:
    """A user whose Unix groups include one in ``unix_groups`` gets that group's values."""
    limits = resolve(LAB, Identity(uid=3000, user="carol", groups=frozenset({"users", "lab"})))
    assert limits.group == "researchers"
    assert (limits.max_mig_instances, limits.memory, limits.allow_full_gpu) == (2, 64 * GI, True)
    assert limits.max_cpus == 8  # from defaults
    assert limits.sources["allow_full_gpu"] == "group researchers"


def test_unix_group_names_are_not_user_names() -> None:
    """A user whose *name* is a Unix group in ``unix_groups`` is not a member for that."""
    limits = resolve(LAB, Identity(uid=3001, user="lab"))
    assert limits.group == "default"
    assert limits.known is False


def test_members_and_unix_groups_are_not_limits() -> None:
    """The membership keys of a group never appear among the resolved values."""
    limits = resolve(LAB, alice("lab"))
    assert "members" not in limits.as_dict()
    assert "unix_groups" not in limits.as_dict()


def test_groups_of_lists_groups_in_policy_order() -> None:
    """groups_of returns every matching group, by members or Unix group, in file order."""
    assert groups_of(LAB, alice("lab")) == ["students", "researchers"]
    assert groups_of(LAB, alice()) == ["students"]
    assert groups_of(LAB, Identity(uid=1, user="nobody")) == []


def test_primary_group_is_the_first_in_policy_order() -> None:
    """``group`` is the first matching group as written in the policy, not the most generous."""
    assert resolve(LAB, alice("lab")).group == "students"


# ---- several groups: the most generous value per key ---------------------------------------

GENEROUS: list[tuple[str, Any, Any, Any]] = [
    ("max_cpus", 4, 8, 8),
    ("max_cpus", None, 8, None),
    ("max_cpus", 0.5, 2.5, 2.5),
    ("max_gpus", 1, None, None),
    ("max_gpus", 1, 3, 3),
    ("max_mig_instances", 2, 1, 2),
    ("max_gpu_equivalents", 0.5, 2.0, 2.0),
    ("max_gpu_equivalents", None, 2.0, None),
    ("max_gpus_per_container", 1, None, None),
    ("max_containers", 5, 20, 20),
    ("max_containers", None, 20, None),
    ("pids_limit", 2048, 4096, 4096),
    ("memory", "16g", "64g", 64 * GI),
    ("memory", None, "64g", None),
    ("shm_size", "2g", "512m", 2 * GI),
    ("idle_timeout", "1h", "48h", 48 * 3600.0),
    ("idle_timeout", None, "48h", None),
    ("max_runtime", "7d", "1d", 7 * 86400.0),
    ("container_hold_after_stop", "1d", None, None),
    ("gpu_wait", "5m", None, None),
    ("gpu_wait", "5m", "1h", 3600.0),
    ("gpu_hold_after_stop", "15m", "1h", 3600.0),
    ("priority", 10, 50, 50),
    ("priority", -5, 0, 0),
    ("admin", False, True, True),
    ("allow_full_gpu", True, False, True),
    ("allow_full_gpu", False, False, False),
    ("preempt_idle", False, True, True),
    ("bind_mounts", ["{home}", "/data"], ["/scratch", "/data"], ["{home}", "/data", "/scratch"]),
    ("allow", ["privileged"], ["cap_add", "privileged"], ["privileged", "cap_add"]),
    ("allowed_mig_profiles", ["1g.10gb"], ["3g.40gb"], ["1g.10gb", "3g.40gb"]),
    ("allowed_mig_profiles", None, ["3g.40gb"], None),
    ("idle_cpu_percent", 5.0, 1.0, 1.0),
    ("idle_gpu_percent", 10, 2, 2),
    ("idle_network_bytes", 10, 1000, 10),
]


def two_groups(key: str, first: Any, second: Any) -> PolicyDocument:
    """A policy where alice is in group ``a`` (key=first) and group ``b`` (key=second)."""
    data = {
        "defaults": {"max_cpus": 1, "memory": "1g"},
        "groups": {
            "a": {"members": ["alice"], key: first},
            "b": {"unix_groups": ["lab"], key: second},
        },
    }
    return doc_of(yaml.safe_dump(data, sort_keys=False))


def as_set_if_list(value: Any) -> Any:
    return set(value) if isinstance(value, list) else value


@pytest.mark.parametrize(("key", "first", "second", "expected"), GENEROUS)
def test_several_groups_most_generous_wins(
    key: str, first: Any, second: Any, expected: Any
) -> None:
    """For a user in two groups each key takes the more generous of the two values."""
    assert resolve(two_groups(key, first, second), alice("lab")).as_dict()[key] == expected


@pytest.mark.parametrize(("key", "first", "second", "expected"), GENEROUS)
def test_several_groups_order_does_not_matter(
    key: str, first: Any, second: Any, expected: Any
) -> None:
    """Swapping which group holds which value gives the same limit (lists: same members)."""
    value = resolve(two_groups(key, second, first), alice("lab")).as_dict()[key]
    assert as_set_if_list(value) == as_set_if_list(expected)


def test_several_groups_each_key_independently() -> None:
    """The most generous value is chosen per key, so one group can win one key and lose another."""
    limits = resolve(LAB, alice("lab"))
    assert limits.max_cpus == 4  # only students set it; researchers inherit no opinion
    assert limits.memory == 64 * GI  # researchers' 64g beats students' 16g
    assert limits.max_mig_instances == 2
    assert limits.allow_full_gpu is True
    assert limits.priority == 50
    assert limits.sources["memory"] == "group researchers"
    assert limits.sources["max_cpus"] == "group students"


def test_a_tie_keeps_the_first_group_as_source() -> None:
    """When two groups give the same value the source names the first one."""
    limits = resolve(two_groups("max_gpus", 2, 2), alice("lab"))
    assert limits.max_gpus == 2
    assert limits.sources["max_gpus"] == "group a"


def test_a_less_generous_later_group_keeps_the_earlier_source() -> None:
    """The source is the group whose value won, not the last group read."""
    limits = resolve(two_groups("memory", "64g", "16g"), alice("lab"))
    assert limits.memory == 64 * GI
    assert limits.sources["memory"] == "group a"


# ---- the users: entry ----------------------------------------------------------------------


def test_user_entry_overrides_groups_even_when_stricter() -> None:
    """A ``users:`` entry is applied last and wins, generous or not."""
    doc = doc_of(
        """\
defaults:
  memory: 32g
groups:
  big:
    members: [alice]
    memory: 128g
    max_gpus: 4
users:
  alice:
    memory: 8g
"""
    )
    limits = resolve(doc, alice())
    assert limits.memory == 8 * GI
    assert limits.max_gpus == 4
    assert limits.sources["memory"] == "users.alice"
    assert limits.sources["max_gpus"] == "group big"


def test_user_entry_alone_makes_a_known_user() -> None:
    """A user with a ``users:`` entry but no group is known and gets the entry over defaults."""
    limits = resolve(LAB, Identity(uid=1002, user="rita"))
    assert limits.known is True
    assert limits.max_gpus == 4
    assert limits.group == "default"
    assert limits.sources["max_gpus"] == "users.rita"


def test_user_entry_can_set_unlimited() -> None:
    """``null`` in a user entry lifts a limit that defaults and groups set."""
    doc = doc_of("defaults:\n  memory: 32g\nusers:\n  alice:\n    memory: null\n")
    assert resolve(doc, alice()).memory is None


def test_user_entry_applies_only_to_that_user() -> None:
    """Another user's entry does not touch alice's limits."""
    limits = resolve(LAB, alice())
    assert limits.max_gpus == 0
    assert "users.rita" not in limits.sources.values()


@pytest.mark.parametrize(
    ("user", "groups", "known"),
    [
        ("zoe", frozenset(), False),
        ("zoe", frozenset({"users", "docker"}), False),
        ("alice", frozenset(), True),
        ("carol", frozenset({"lab"}), True),
        ("rita", frozenset(), True),
    ],
)
def test_known_means_in_a_group_or_with_an_entry(
    user: str, groups: frozenset[str], known: bool
) -> None:
    """``known`` is False only for a user in no policy group and without a ``users:`` entry."""
    assert resolve(LAB, Identity(uid=5000, user=user, groups=groups)).known is known


# ---- aggregate: partial blocks merge key by key --------------------------------------------


def test_partial_aggregate_in_a_group_keeps_the_other_keys() -> None:
    """A group that sets only ``aggregate.cpus`` inherits memory and pids from defaults."""
    doc = doc_of(
        """\
defaults:
  aggregate: {cpus: 16, memory: 64g, pids: 1000}
groups:
  g:
    members: [alice]
    aggregate: {cpus: 32}
"""
    )
    limits = resolve(doc, alice())
    assert limits.aggregate.as_dict() == {"cpus": 32, "memory": 64 * GI, "pids": 1000}
    assert limits.aggregate.cpus == 32
    assert limits.aggregate.memory == 64 * GI


def test_partial_aggregate_in_defaults_keeps_built_ins() -> None:
    """Defaults that set only ``aggregate.memory`` leave cpus and pids at the built-in (None)."""
    limits = resolve(doc_of("defaults:\n  aggregate:\n    memory: 8g\n"), alice())
    assert limits.aggregate.as_dict() == {"cpus": None, "memory": 8 * GI, "pids": None}


def test_partial_aggregates_in_two_groups_merge_most_generous() -> None:
    """Two groups' partial aggregate blocks combine key by key, most generous on overlap."""
    doc = doc_of(
        """\
defaults:
  aggregate: {cpus: 4, memory: 8g, pids: 100}
groups:
  a:
    members: [alice]
    aggregate: {cpus: 32, memory: 16g}
  b:
    unix_groups: [lab]
    aggregate: {memory: 128g, cpus: 8, pids: null}
"""
    )
    assert resolve(doc, alice("lab")).aggregate.as_dict() == {
        "cpus": 32,
        "memory": 128 * GI,
        "pids": None,
    }


def test_partial_aggregate_in_a_user_entry_overrides_only_its_keys() -> None:
    """A user's ``aggregate: {pids: 5}`` changes pids and keeps the group-merged cpus/memory."""
    doc = doc_of(
        """\
defaults:
  aggregate: {cpus: 16, memory: 64g, pids: 1000}
groups:
  g:
    members: [alice]
    aggregate: {cpus: 32}
users:
  alice:
    aggregate: {pids: 5}
"""
    )
    limits = resolve(doc, alice())
    assert limits.aggregate.as_dict() == {"cpus": 32, "memory": 64 * GI, "pids": 5}
    assert limits.sources["aggregate"] == "users.alice"


def test_resolving_does_not_change_the_built_ins_or_the_document() -> None:
    """Merging aggregate blocks and lists leaves BUILTIN_DEFAULTS and the policy data intact."""
    builtin_before = copy.deepcopy(BUILTIN_DEFAULTS)
    data_before = copy.deepcopy(LAB.data)
    resolve(LAB, alice("lab"))
    resolve(doc_of("defaults:\n  aggregate: {cpus: 2}\n"), alice())
    assert builtin_before == BUILTIN_DEFAULTS
    assert data_before == LAB.data


# ---- sources and policy-wide settings ------------------------------------------------------


def test_sources_name_every_layer() -> None:
    """Each value's source is ``built-in``, ``defaults``, ``group NAME`` or ``users.NAME``."""
    doc = doc_of(
        """\
defaults:
  max_cpus: 8
groups:
  g:
    members: [alice]
    memory: 64g
users:
  alice:
    max_gpus: 1
"""
    )
    sources = resolve(doc, alice()).sources
    assert sources["pids_limit"] == "built-in"
    assert sources["max_cpus"] == "defaults"
    assert sources["memory"] == "group g"
    assert sources["max_gpus"] == "users.alice"
    assert set(BUILTIN_DEFAULTS) <= set(sources)


@pytest.mark.parametrize(
    ("text", "unknown", "direct"),
    [
        ("", "allow", "allow"),
        ("unknown_users: deny\n", "deny", "allow"),
        ("direct_access: deny\n", "allow", "deny"),
        ("unknown_users: deny\ndirect_access: deny\n", "deny", "deny"),
    ],
)
def test_policy_wide_settings_are_in_limits(text: str, unknown: str, direct: str) -> None:
    """``unknown_users`` and ``direct_access`` are copied into the limits, defaulting to allow."""
    limits = resolve(doc_of(text), alice())
    assert limits.unknown_users == unknown
    assert limits.direct_access == direct


# ---- the Limits value ----------------------------------------------------------------------


def test_limits_fields_are_typed_values() -> None:
    """Each key is a typed field: sizes in bytes, durations as seconds, lists as tuples."""
    limits = resolve(LAB, alice())
    assert (limits.max_cpus, limits.memory, limits.idle_timeout) == (4, 16 * GI, 48 * 3600.0)
    assert isinstance(limits.aggregate, Aggregate)
    assert limits.bind_mounts == ("{home}",)
    assert limits.as_dict()["bind_mounts"] == ["{home}"]
    with pytest.raises(AttributeError):
        _ = limits.no_such_limit  # type: ignore[attr-defined]  # the point of the test


def test_every_schema_limit_is_a_field() -> None:
    """The policy schema's per-user keys and Limits' fields are the same set, so none is lost."""
    schema = json.loads((ROOT / "config" / "policy.schema.json").read_text())
    assert set(schema["$defs"]["limits"]["properties"]) == set(BUILTIN_DEFAULTS)
    assert set(POLICY_KEYS) == set(BUILTIN_DEFAULTS) | {"unknown_users", "direct_access"}


def test_limits_satisfy_the_allocators_protocol() -> None:
    """The allocator reads Limits through its QuotaLimits Protocol (mypy checks the types)."""
    quota: QuotaLimits = resolve(LAB, alice())
    assert Quota.from_limits(quota).max_mig == 1


@pytest.mark.parametrize(
    ("admin", "allow", "feature", "expected"),
    [
        (False, [], "privileged", False),
        (False, ["cap_add"], "cap_add", True),
        (False, ["cap_add"], "privileged", False),
        (True, [], "privileged", True),
    ],
)
def test_allows_features(admin: bool, allow: list[str], feature: str, expected: bool) -> None:
    """``allows`` is true for admins and for features listed in ``allow``."""
    limits = Limits(user="u", group="g", admin=admin, allow=tuple(allow))
    assert limits.is_admin is admin
    assert limits.allows(feature) is expected


def test_default_policy_makes_root_and_ds01_admin_admins() -> None:
    """Under the shipped policy root (by name) and ds01-admin members (by group) are admins."""
    doc = parse_policy(default_policy_text())
    assert resolve(doc, Identity(uid=0, user="root")).is_admin
    assert resolve(doc, Identity(uid=1500, user="dana", groups=frozenset({"ds01-admin"}))).is_admin
    student = resolve(doc, Identity(uid=1600, user="sam"))
    assert not student.is_admin
    assert student.memory == 32 * GI
    assert student.aggregate.as_dict() == {"cpus": 16, "memory": 64 * GI, "pids": 16384}
    assert student.gpu_hold_after_stop == 15 * 60
