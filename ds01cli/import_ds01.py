"""Converting the original DS01's ``config/runtime/resource-limits.yaml`` into a DS01 policy.

Pure: data in, ``(policy dict, unmapped)`` out; ``ds01 import-ds01`` reads the files. Each
``unmapped`` entry is ``"path: why"`` for a key that could not be carried over, or whose
meaning could only partly be. The original resolves a user's limits differently from us, and
the conversion compensates so that every user keeps the limits they had:

- original: a user in ``user_overrides`` gets defaults + override (their group is ignored,
  except for ``aggregate``); a group member gets defaults + their *first* group; anyone else
  gets defaults + ``default_group``.
- DS01: defaults, then every group the user is in (most generous wins), then their entry.

So ``default_group``'s values are merged into ``defaults`` (we have no default group), other
groups get the original defaults back for the keys the default group set; users listed in
several groups stay only in the first; and override entries get the original defaults for
the keys their group (or the default group) would otherwise supply.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from formats.units import UnitError, format_size, parse_duration, parse_size
from policy.loader import PolicyError, parse_policy

Unmapped = list[str]

# Keys with the same name and meaning in both formats.
_SAME = ("allow_full_gpu", "priority", "memory", "shm_size", "pids_limit")
_SIZES = ("memory", "shm_size")
_RENAMED = {"max_containers_per_user": "max_containers"}
_LIFECYCLE = ("idle_timeout", "max_runtime", "gpu_hold_after_stop", "container_hold_after_stop")
# The original's GPU quota names, newest first; it reads the first one present.
_GPUEQ_KEYS = ("max_gpu_equivalents", "max_gpu_slots", "max_gpus_per_user", "max_mig_instances")
_PER_CONTAINER_KEYS = (
    "max_gpu_slots_per_container",
    "max_gpus_per_container",
    "max_mig_per_container",
)
# Per-group (and top-level) idle thresholds under `policies:`.
_THRESHOLDS = {
    "gpu_idle_threshold": "idle_gpu_percent",
    "cpu_idle_threshold": "idle_cpu_percent",
    "network_idle_threshold": "idle_network_bytes",
}
_NOT_ENFORCED = {
    "max_tasks": "read by nothing in the original; DS01 caps processes with pids_limit "
    "(per container) and aggregate.pids (per user)",
    "gpu_memory": "not enforced by the original (MIG bounds GPU memory); DS01 has no equivalent",
    "io_read_bps": "not enforced by the original; DS01 has no I/O limits",
    "io_write_bps": "not enforced by the original; DS01 has no I/O limits",
    "ulimit_nofile": "not enforced by the original; DS01 does not set ulimits",
    "storage_workspace": "storage quotas are not part of DS01",
    "storage_data": "storage quotas are not part of DS01",
    "storage_tmp": "the original mounted a tmpfs /tmp of this size; DS01 leaves /tmp to the "
    "image and --tmpfs (limited by memory)",
    "idle_detection_window": "DS01 has no consecutive-idle-checks setting; idle_timeout alone "
    "decides",
}
_SECTIONS_NOT_MAPPED = {
    "gpu_allocation": "DS01 finds GPUs and MIG instances itself (NVML or the inventory file) and "
    "weighs MIG instances by their compute slices",
    "monitoring": "DS01 sees every container through its gateway; there is no unmanaged-container "
    "detection to configure",
    "bare_metal_access": "DS01 governs Docker only; GPU access outside containers is not managed",
}
_TOP_POLICIES_MINUTES = {
    "grace_period_m": "startup_grace",
    "created_container_timeout_m": "created_timeout",
}
_ADMIN_GROUP = "admins"
# What the original's code used when no section set a key (get_resource_limits.py and
# gpu_allocator_v2.py fallbacks); written into defaults so nothing silently changes.
_ORIGINAL_FALLBACKS = {
    "max_gpu_equivalents": 1.0,
    "allow_full_gpu": False,
    "priority": 10,
    "max_cpus": 16,
    "memory": "32g",
    "shm_size": "16g",
    "pids_limit": 4096,
    "max_containers": 3,
}
# The original has one GPU quota across whole GPUs and MIG instances (GPU-equivalents, gated
# by allow_full_gpu); DS01's per-kind counts are switched off so that quota alone decides.
_NO_PER_KIND_COUNTS = {"max_gpus": None, "max_mig_instances": None}
_MISSING = object()


def parse_members(text: str) -> list[str]:
    """A ``groups/<name>.members`` file: one user name per line, ``#`` starts a comment."""
    names = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return list(dict.fromkeys(n for n in names if n))


def hours(value: float) -> str:
    """A duration string for a number of hours: 48 -> ``48h``, 0.5 -> ``30m``."""
    return seconds(value * 3600)


def seconds(value: float) -> str:
    """The plainest duration string for a number of seconds: ``2h``, ``15m``, ``36s``."""
    value = round(value, 3)
    if value and value % 3600 == 0:
        return f"{int(value // 3600)}h"
    if value and value % 60 == 0:
        return f"{int(value // 60)}m"
    return f"{int(value)}s" if value == int(value) else f"{value}s"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _Converter:
    def __init__(self) -> None:
        self.unmapped: Unmapped = []

    def drop(self, path: str, why: str) -> None:
        self.unmapped.append(f"{path}: {why}")

    # -- one limits section (defaults, a group, a user override) -----------------------------

    def limits(
        self, section: Any, path: str, *, aggregate: bool = True, base: Any = None
    ) -> dict[str, Any]:
        """One section's limits in DS01 names; ``base`` is the raw defaults it is merged over."""
        out: dict[str, Any] = {}
        if section is None:
            return out
        if not isinstance(section, Mapping):
            self.drop(path, f"expected a mapping of limits, found {type(section).__name__}")
            return out
        for key, value in section.items():
            key = str(key)
            where = f"{path}.{key}"
            if key == "members" or key in _GPUEQ_KEYS or key in _PER_CONTAINER_KEYS:
                continue  # members by the caller; GPU aliases below, in precedence order
            if key in ("max_cpus", "cpus"):
                self._cpus(section, key, value, where, base, out)
            elif key in _SAME:
                out[key] = self._size(value, where) if key in _SIZES else value
            elif key in _RENAMED:
                out[_RENAMED[key]] = value
            elif key.endswith("_h") and key[:-2] in _LIFECYCLE:
                self._duration(out, key[:-2], value, where, hours)
            elif key in _LIFECYCLE:  # older files: strings like "48h" or "0.5h"
                if f"{key}_h" in section:
                    self.drop(where, f"superseded by {key}_h in the same section")
                else:
                    self._duration(out, key, value, where, None)
            elif key == "memory_swap":
                self._swap(section, value, where)
            elif key == "aggregate":
                if aggregate:
                    agg = self.aggregate(value, where, section)
                    if agg:
                        out["aggregate"] = agg
                else:
                    self.drop(
                        where,
                        "ignored by the original (only groups and user overrides "
                        "have aggregate limits); not imported",
                    )
            elif key == "policies":
                out.update(self.thresholds(value, where))
            elif key in _NOT_ENFORCED:
                self.drop(where, _NOT_ENFORCED[key])
            else:
                self.drop(where, "unknown key; no DS01 equivalent")
        self._gpu_keys(section, path, out, base if isinstance(base, Mapping) else {})
        return out

    def _gpu_keys(
        self, section: Mapping[str, Any], path: str, out: dict[str, Any], base: Mapping[str, Any]
    ) -> None:
        # The original merges the section over the raw defaults, *then* reads the first alias
        # present; so a defaults key with a newer name shadows a group's older name.
        for keys, target in (
            (_GPUEQ_KEYS, "max_gpu_equivalents"),
            (_PER_CONTAINER_KEYS, "max_gpus_per_container"),
        ):
            present = [k for k in keys if k in section]
            if not present:
                continue
            merged = {**base, **section}
            first = next(k for k in keys if k in merged)
            value = merged[first]
            if first not in section:
                for key in present:
                    self.drop(
                        f"{path}.{key}",
                        f"{section[key]!r} was shadowed in the original by "
                        f"defaults.{first} ({value!r}), which it reads first; imported as "
                        f"{value!r} (set {target} if {section[key]!r} was meant)",
                    )
            else:
                for other in present[present.index(first) + 1 :]:
                    self.drop(
                        f"{path}.{other}", f"superseded by {first} (the original reads it first)"
                    )
            where = f"{path}.{first}" if first in section else f"defaults.{first}"
            if value is None:
                out[target] = None
            elif target == "max_gpu_equivalents" and _is_number(value) and value >= 0:
                out[target] = float(value)
            elif target == "max_gpus_per_container" and _is_number(value) and value >= 0:
                if value != int(value):
                    self.drop(where, f"{value!r} rounded down to {int(value)}")
                out[target] = int(value)
            elif first in section:
                self.drop(where, f"{value!r} is not a number; not imported")

    def _cpus(
        self, section: Mapping[str, Any], key: str, value: Any, where: str, base: Any, out: dict
    ) -> None:
        # The original reads `max_cpus or cpus or 16` from the merged limits: null (or 0) is
        # not unlimited there, and an older `cpus` only counts where no max_cpus is set.
        if key == "cpus":
            shadow = section.get("max_cpus") or (base or {}).get("max_cpus")
            if shadow:
                self.drop(
                    where, f"superseded by max_cpus ({shadow!r}), which the original reads first"
                )
                return
        if value:
            out["max_cpus"] = value
        elif key == "max_cpus" and section.get("cpus"):
            pass  # the older name supplies it (handled on its own key)
        else:
            fallback = (base or {}).get("cpus") or _ORIGINAL_FALLBACKS["max_cpus"]
            self.drop(
                where,
                f"{value!r} meant {fallback} CPUs in the original (it falls back "
                f"when the value is empty); imported as {fallback}",
            )
            out["max_cpus"] = fallback

    def _size(self, value: Any, where: str) -> Any:
        try:
            parsed = parse_size(value)
        except UnitError:
            return value  # left as is: validation reports and drops it
        return None if parsed is None else format_size(parsed)

    def _duration(self, out: dict[str, Any], key: str, value: Any, where: str, unit: Any) -> None:
        if value is None:
            out[key] = None
        elif unit is hours and _is_number(value) and value >= 0:
            out[key] = hours(value)
        elif unit is None and isinstance(value, str | int | float) and not isinstance(value, bool):
            try:
                parsed = parse_duration(value)
            except UnitError:
                self.drop(where, f"{value!r} is not a duration; not imported")
                return
            out[key] = None if parsed is None else seconds(parsed)
        else:
            self.drop(where, f"{value!r} is not a number of hours; not imported")

    def _swap(self, section: Mapping[str, Any], value: Any, where: str) -> None:
        memory = section.get("memory")
        try:
            same = memory is not None and parse_size(value) == parse_size(memory)
        except UnitError:
            same = False
        if not same:
            self.drop(
                where,
                "DS01 always sets --memory-swap equal to --memory (no swap); "
                f"{value!r} not imported",
            )

    def aggregate(self, value: Any, where: str, section: Mapping[str, Any]) -> dict[str, Any]:
        """``cpu_quota: "9600%"`` -> ``cpus: 96``, ``memory_max`` -> ``memory``, ``tasks_max``
        -> ``pids``; ``gpu_limit`` is the GPU-equivalents quota again."""
        out: dict[str, Any] = {}
        if not isinstance(value, Mapping):
            self.drop(where, "expected a mapping; not imported")
            return out
        for key, item in value.items():
            key = str(key)
            at = f"{where}.{key}"
            if key == "cpu_quota":
                cpus = _cpu_quota(item)
                if cpus is _MISSING:
                    self.drop(at, f"{item!r} is not a systemd CPUQuota like '9600%'")
                else:
                    out["cpus"] = cpus
            elif key == "memory_max":
                if _infinite(item):
                    out["memory"] = None
                else:
                    out["memory"] = self._size(item, at)
            elif key == "tasks_max":
                out["pids"] = None if _infinite(item) else item
            elif key == "memory_high":
                self.drop(
                    at, "DS01 has no soft (throttling) memory limit; only memory_max is imported"
                )
            elif key == "gpu_limit":
                self._gpu_limit(section, item, at)
            else:
                self.drop(at, "unknown aggregate key; no DS01 equivalent")
        return out

    def _gpu_limit(self, section: Mapping[str, Any], item: Any, at: str) -> None:
        quota = next((section[k] for k in _GPUEQ_KEYS if k in section), _MISSING)
        if quota is _MISSING:
            self.drop(
                at,
                "the original reports but does not enforce it; set "
                "max_gpu_equivalents to make it a quota",
            )
        elif quota != item:
            self.drop(
                at,
                f"{item!r} differs from the section's GPU quota {quota!r}; DS01 has one "
                "GPU quota (max_gpu_equivalents) and keeps that",
            )

    def thresholds(self, value: Any, where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not isinstance(value, Mapping):
            self.drop(where, "expected a mapping; not imported")
            return out
        for key, item in value.items():
            key = str(key)
            if key in _THRESHOLDS and _is_number(item) and item >= 0:
                target = _THRESHOLDS[key]
                out[target] = int(item) if target == "idle_network_bytes" else item
            elif key in _NOT_ENFORCED:
                self.drop(f"{where}.{key}", _NOT_ENFORCED[key])
            else:
                self.drop(f"{where}.{key}", "no DS01 equivalent")
        return out


def _cpu_quota(value: Any) -> Any:
    if _infinite(value):
        return None
    text = str(value).strip()
    try:
        cpus = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return _MISSING
    if cpus <= 0:
        return _MISSING
    return int(cpus) if cpus == int(cpus) else cpus


def _infinite(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() == "infinity")


def convert(
    original: Mapping[str, Any],
    *,
    members: Mapping[str, Sequence[str]] | None = None,
    user_overrides: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Unmapped]:
    """Convert a parsed ``resource-limits.yaml`` into a DS01 policy dict.

    ``members``: group -> users from the original's ``groups/<group>.members`` files (read
    them with ``parse_members``), added to any inline ``members:``. ``user_overrides``: the
    parsed ``user-overrides.yaml``, which wins over inline ``user_overrides:`` as in the
    original. Returns the policy (valid for ``policy.loader.parse_policy``) and the unmapped
    keys as ``"path: why"``.
    """
    if not isinstance(original, Mapping):
        raise ValueError("not a resource-limits.yaml: expected a mapping at the top level")
    c = _Converter()
    handled = {
        "defaults",
        "default_group",
        "groups",
        "user_overrides",
        "enforcement",
        "policies",
        "container_types",
        "access_control",
    }

    # defaults, with the top-level idle thresholds folded in (they apply to everyone).
    defaults_o = c.limits(original.get("defaults"), "defaults", aggregate=False)
    policies = original.get("policies") or {}
    top_level: dict[str, Any] = {}
    if isinstance(policies, Mapping):
        _top_policies(c, policies, defaults_o, top_level)
    else:
        c.drop("policies", "expected a mapping; not imported")

    for key, value in _ORIGINAL_FALLBACKS.items():
        defaults_o.setdefault(key, value)

    raw_defaults = _mapping(original.get("defaults"))
    groups = _groups(c, original.get("groups"), members or {}, raw_defaults)
    default_group = original.get("default_group", "student")
    defaults = {**_NO_PER_KIND_COUNTS, **copy.deepcopy(defaults_o)}
    if isinstance(default_group, str) and default_group in groups:
        _merge_default_group(c, default_group, groups, defaults_o, defaults)
    elif "default_group" in original:
        c.drop(
            "default_group",
            f"{default_group!r} names no group; users in no group get defaults only",
        )

    overrides = {**_mapping(original.get("user_overrides")), **_mapping(user_overrides)}
    users = _users(c, overrides, groups, raw_defaults, defaults_o, defaults)

    enforcement = original.get("enforcement") or {}
    if isinstance(enforcement, Mapping):
        for key, value in enforcement.items():
            if key == "cgroup_driver" and value in ("cgroupfs", "systemd"):
                top_level["cgroup_driver"] = value
            elif key == "aggregate_limits" and value is False:
                _drop_aggregates(defaults, groups, users)
            elif key != "aggregate_limits":
                c.drop(f"enforcement.{key}", f"{value!r}: no DS01 equivalent")
    types = _container_types(c, original.get("container_types"))
    if types:
        top_level["container_types"] = types

    admins = _admin_group(c, original.get("access_control"), groups)
    for key in original:
        if key in _SECTIONS_NOT_MAPPED:
            c.drop(str(key), _SECTIONS_NOT_MAPPED[key])
        elif key not in handled:
            c.drop(str(key), "unknown section; no DS01 equivalent")

    policy: dict[str, Any] = {"unknown_users": "allow", "defaults": defaults}
    policy["groups"] = {**groups, admins[0]: admins[1]}
    if users:
        policy["users"] = users
    policy.update(top_level)
    return _validated(c, policy), c.unmapped


def _mapping(value: Any) -> dict[str, Any]:
    return {str(k): v for k, v in value.items()} if isinstance(value, Mapping) else {}


def _top_policies(
    c: _Converter, policies: Mapping[str, Any], defaults: dict[str, Any], top: dict[str, Any]
) -> None:
    for key, value in policies.items():
        key = str(key)
        where = f"policies.{key}"
        number = _is_number(value) and value >= 0
        if key in _THRESHOLDS and number:
            target = _THRESHOLDS[key]
            defaults.setdefault(target, int(value) if target == "idle_network_bytes" else value)
        elif key == "high_demand_threshold" and number and value <= 1:
            top["high_demand_threshold"] = value
        elif key == "high_demand_idle_reduction" and number and 0 < value <= 1:
            # The original multiplies the idle timeout by this value under high demand.
            top["high_demand_idle_factor"] = value
        elif key in _TOP_POLICIES_MINUTES and number:
            top[_TOP_POLICIES_MINUTES[key]] = seconds(value * 60)
        elif key == "keepalive_max_duration_h" and number:
            top["keepalive_max"] = hours(value)
        elif key == "sigterm_grace_s" and number:
            top["stop_grace"] = seconds(value)
        elif key == "gpu_hold_after_manual_stop_m":
            c.drop(
                where,
                "DS01 has one hold time for every stop (gpu_hold_after_stop, per "
                "user); not imported",
            )
        elif key in _NOT_ENFORCED:
            c.drop(where, _NOT_ENFORCED[key])
        else:
            c.drop(where, f"{value!r}: no DS01 equivalent")


def _groups(
    c: _Converter,
    raw: Any,
    member_files: Mapping[str, Sequence[str]],
    raw_defaults: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    raw = _mapping(raw)
    first_group: dict[str, str] = {}
    for name, section in raw.items():
        group = c.limits(section, f"groups.{name}", base=raw_defaults)
        inline = section.get("members") if isinstance(section, Mapping) else None
        if inline is not None and not isinstance(inline, list):
            c.drop(f"groups.{name}.members", "expected a list of user names; not imported")
            inline = None
        listed = [*member_files.get(name, ()), *(str(u) for u in inline or ())]
        kept = []
        for user in dict.fromkeys(listed):
            if user in first_group:
                # The original stops at the first group that lists a user; DS01 would merge.
                c.drop(
                    f"groups.{name}.members",
                    f"{user} is also in {first_group[user]}, which "
                    "the original applies first; removed here",
                )
                continue
            first_group[user] = name
            kept.append(user)
        if kept:
            group = {"members": kept, **group}
        groups[name] = group
    for name in member_files:
        if name not in raw:
            c.drop(f"groups.{name}", "a members file for a group the YAML does not define")
    return groups


def _merge_default_group(
    c: _Converter,
    default_group: str,
    groups: dict[str, dict[str, Any]],
    defaults_o: dict[str, Any],
    defaults: dict[str, Any],
) -> None:
    dg = {k: v for k, v in groups[default_group].items() if k != "members"}
    defaults.update(copy.deepcopy(dg))
    for name, group in groups.items():
        if name == default_group:
            continue
        for key in dg:
            if key in group:
                continue
            if key == "aggregate":
                # The original gives a group without `aggregate` no per-user cap at all.
                group["aggregate"] = dict.fromkeys(dg["aggregate"])
            elif key in defaults_o:
                group[key] = defaults_o[key]
            else:
                c.drop(
                    f"groups.{name}.{key}",
                    f"members of {name} had the original's built-in "
                    f"default; DS01 gives them default_group {default_group}'s value "
                    f"{dg[key]!r} (set groups.{name}.{key} to change it)",
                )
        if "aggregate" in group and "aggregate" in dg:
            # An aggregate block replaced the default group's wholesale in the original.
            group["aggregate"] = {**dict.fromkeys(dg["aggregate"]), **group["aggregate"]}


def _users(
    c: _Converter,
    overrides: Mapping[str, Any],
    groups: Mapping[str, dict[str, Any]],
    raw_defaults: Mapping[str, Any],
    defaults_o: Mapping[str, Any],
    defaults: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    users: dict[str, dict[str, Any]] = {}
    for user, section in overrides.items():
        entry = c.limits(section, f"user_overrides.{user}", base=raw_defaults)
        mine = [g for g in groups.values() if user in g.get("members", ())]
        # What DS01 would give this user for each key absent from their entry...
        inherited = {k: v for k, v in defaults.items() if k not in _NO_PER_KIND_COUNTS}
        for group in mine:
            inherited.update((k, v) for k, v in group.items() if k != "members")
        # ...but the original gave them the plain defaults (their group did not count).
        for key, value in inherited.items():
            if key in entry or key == "aggregate":
                continue
            original = defaults_o.get(key, _MISSING)
            if original is _MISSING:
                c.drop(
                    f"user_overrides.{user}.{key}",
                    "the original gave this user its built-in "
                    f"default; DS01 gives them {value!r} from their group",
                )
            elif original != value:
                entry[key] = original
        if "aggregate" in entry and isinstance(inherited.get("aggregate"), Mapping):
            entry["aggregate"] = {**dict.fromkeys(inherited["aggregate"]), **entry["aggregate"]}
        users[user] = entry
    return users


def _drop_aggregates(
    defaults: dict[str, Any],
    groups: Mapping[str, dict[str, Any]],
    users: Mapping[str, dict[str, Any]],
) -> None:
    # aggregate_limits: false switched the per-user slices off: nothing to carry over.
    for section in (defaults, *groups.values(), *users.values()):
        section.pop("aggregate", None)


def _container_types(c: _Converter, raw: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind, section in _mapping(raw).items():
        where = f"container_types.{kind}"
        if kind not in ("devcontainer", "compose", "docker"):
            c.drop(
                where,
                "DS01 knows devcontainer, compose and docker containers; every other "
                "container counts as docker",
            )
            continue
        values: dict[str, Any] = {}
        for key, value in _mapping(section).items():
            at = f"{where}.{key}"
            if key.endswith("_h") and key[:-2] in _LIFECYCLE:
                c._duration(values, key[:-2], value, at, hours)
            elif key in _LIFECYCLE:
                c._duration(values, key, value, at, None)
            elif key == "sigterm_grace_s":
                c.drop(at, "DS01 has one stop_grace for every container; not imported")
            elif key == "default_mig_count":
                c.drop(at, "GPU counts come from the user's limits in DS01, not the container type")
            else:
                c.drop(at, "no DS01 equivalent")
        if values:
            out[kind] = values
    return out


def _admin_group(c: _Converter, raw: Any, groups: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    # The original's wrapper let root, access_control.admin_users and admin_group bypass it.
    name = _ADMIN_GROUP if _ADMIN_GROUP not in groups else "ds01-admins"
    members = ["root"]
    unix_groups: list[str] = []
    access = _mapping(raw)
    for key, value in access.items():
        if key == "admin_users" and isinstance(value, list):
            members += [str(u) for u in value if str(u) not in members]
        elif key == "admin_group" and isinstance(value, str) and value:
            unix_groups.append(value)
        elif key == "wrapper":
            for sub in _mapping(value):
                c.drop(
                    f"access_control.wrapper.{sub}",
                    "DS01 has no docker wrapper; the gateway and AuthZ plugin always enforce",
                )
        else:
            c.drop(f"access_control.{key}", "no DS01 equivalent")
    group: dict[str, Any] = {"admin": True, "members": members}
    if unix_groups:
        group["unix_groups"] = unix_groups
    return name, group


def _validated(c: _Converter, policy: dict[str, Any]) -> dict[str, Any]:
    """Drop (and report) whatever the policy schema refuses, until the policy loads."""
    for _ in range(200):
        try:
            parse_policy(yaml.safe_dump(policy, sort_keys=False), "imported policy")
        except PolicyError as error:
            path = error.path.split(".") if error.path else []
            if not path or not _remove(policy, path):
                raise
            c.drop(_original_path(path), f"{error.reason}; not imported")
            continue
        return policy
    raise ValueError("the imported policy does not validate")  # pragma: no cover


def _remove(policy: dict[str, Any], path: list[str]) -> bool:
    node: Any = policy
    for part in path[:-1]:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    if isinstance(node, dict) and path[-1] in node:
        del node[path[-1]]
        return True
    return False


def _original_path(path: list[str]) -> str:
    # Report in the original's vocabulary where the sections differ in name.
    if path[0] == "users":
        path = ["user_overrides", *path[1:]]
    return ".".join(path)
