"""A user's effective limits: defaults, then their groups (most generous wins), then their entry.

Every value remembers where it came from, so ``ds01 policy explain`` can say why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from formats.units import parse_duration, parse_size

from .identity import Identity
from .loader import PolicyDocument

# Keys given in units (the CLI shows them the same way).
SIZE_KEYS = frozenset({"memory", "shm_size"})
DURATION_KEYS = frozenset(
    {
        "idle_timeout",
        "max_runtime",
        "gpu_hold_after_stop",
        "container_hold_after_stop",
        "gpu_wait",
    }
)
# How to combine a key across several groups: the most generous value wins.
_UNLIMITED_IS_NONE = {
    "max_gpus",
    "max_mig_instances",
    "max_gpu_equivalents",
    "max_gpus_per_container",
    "max_containers",
    "max_networks",
    "max_cpus",
    "memory",
    "shm_size",
    "pids_limit",
    "idle_timeout",
    "max_runtime",
    "container_hold_after_stop",
    "gpu_wait",
    "allowed_mig_profiles",
}
_BOOLEANS = {"admin", "allow_full_gpu", "preempt_idle"}
_LISTS = {"bind_mounts", "allow"}
# Thresholds: a *higher* idle threshold is stricter, so generous = lower.
_LOWER_IS_GENEROUS = {"idle_cpu_percent", "idle_gpu_percent", "idle_network_bytes"}


# The one cap shared by every BuildKit build (policy key ``builds``): dockerd 20.10 runs all
# BuildKit RUN steps under its own cgroup parent, so they cannot be put under a user's aggregate
# (README "Builds"). By default all builds together get what one container gets by default.
BUILD_DEFAULTS: dict[str, Any] = {"cpus": 8, "memory": parse_size("32g"), "pids": 4096}


def build_cap(doc: PolicyDocument) -> dict[str, Any]:
    """The policy's ``builds`` cap (cpus, memory in bytes, pids; None = unlimited).

    Keys the policy leaves out keep :data:`BUILD_DEFAULTS`; an explicit null lifts that limit.
    """
    given = doc.data.get("builds") or {}
    return {
        **BUILD_DEFAULTS,
        **{k: parse_size(v) if k == "memory" else v for k, v in given.items()},
    }


@dataclass(frozen=True)
class Aggregate:
    """Limits for all of a user's containers together (policy key ``aggregate``).

    The kernel enforces them on the user's parent cgroup; None = unlimited.
    """

    cpus: float | None = None
    memory: int | None = None  # bytes
    pids: int | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        """The block as the policy writes it (memory in bytes), for cgroup writers and JSON."""
        return {"cpus": self.cpus, "memory": self.memory, "pids": self.pids}


RunAs = Literal["user", "root"]
Access = Literal["allow", "deny"]


@dataclass(frozen=True)
class Limits:
    """Effective limits for one user; sizes in bytes, durations in seconds, None = unlimited.

    One field per policy key; the defaults are the built-in values (:data:`BUILTIN_DEFAULTS`).
    """

    user: str
    group: str  # the primary DS01 group (for cgroup slice names and metrics)
    admin: bool = False
    priority: int = 0
    max_gpus: int | None = 0
    max_mig_instances: int | None = 0
    max_gpu_equivalents: float | None = None
    max_gpus_per_container: int | None = None
    allow_full_gpu: bool = False
    allowed_mig_profiles: tuple[str, ...] | None = None  # None = any profile
    max_containers: int | None = None
    # dockerd has ~31 address pools for networks in all (15 x /16, 16 x /20): one user must
    # not take them all, so there is a cap even when the policy names none.
    max_networks: int | None = 8
    gpu_wait: float | None = 0.0
    preempt_idle: bool = False
    max_cpus: float | None = None
    memory: int | None = None
    shm_size: int | None = None
    pids_limit: int | None = None
    aggregate: Aggregate = Aggregate()
    idle_timeout: float | None = None
    max_runtime: float | None = None
    gpu_hold_after_stop: float | None = 0.0
    container_hold_after_stop: float | None = None
    idle_cpu_percent: float = 2.0
    idle_gpu_percent: float = 5.0
    idle_network_bytes: int = 1_000_000
    run_as: RunAs = "user"
    bind_mounts: tuple[str, ...] = ("{home}",)
    allow: tuple[str, ...] = ()
    # Policy-wide settings every decision reads (the same for every user).
    unknown_users: Access = "allow"
    direct_access: Access = "allow"
    known: bool = True  # False: the user is in no group and has no entry
    # Where each per-user key's value came from (``ds01 policy explain`` shows it).
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_admin(self) -> bool:
        return self.admin

    def who(self) -> str:
        """How messages name whose limit applies: ``group students`` or ``user alice``."""
        return f"group {self.group}" if self.group != "default" else f"user {self.user}"

    def allows(self, feature: str) -> bool:
        return self.is_admin or feature in self.allow

    def as_dict(self) -> dict[str, Any]:
        """Every policy key and its value as plain data (lists, the aggregate as a dict)."""
        return {key: _plain(getattr(self, key)) for key in POLICY_KEYS}


def _plain(value: Any) -> Any:
    if isinstance(value, Aggregate):
        return value.as_dict()
    return list(value) if isinstance(value, tuple) else value


_NOT_POLICY_KEYS = frozenset({"user", "group", "known", "sources"})
# Every policy key Limits resolves, in the order ``ds01 policy explain`` lists them.
POLICY_KEYS: tuple[str, ...] = tuple(
    f.name for f in fields(Limits) if f.name not in _NOT_POLICY_KEYS
)
_POLICY_WIDE = ("unknown_users", "direct_access")
# The built-in value of each per-user key (normalised: bytes, seconds), as plain data.
BUILTIN_DEFAULTS: dict[str, Any] = {
    key: value
    for key, value in Limits(user="", group="default").as_dict().items()
    if key not in _POLICY_WIDE
}


def _normalise(key: str, value: Any) -> Any:
    if key in SIZE_KEYS:
        return parse_size(value)
    if key in DURATION_KEYS:
        return parse_duration(value)
    if key == "aggregate":  # only the keys given: the rest are inherited
        return {k: parse_size(v) if k == "memory" else v for k, v in value.items()}
    return value


def _more_generous(key: str, a: Any, b: Any) -> Any:
    if key in _BOOLEANS:
        return bool(a) or bool(b)
    if key in _LISTS:
        return list(dict.fromkeys([*a, *b]))
    if key == "run_as":  # root inside the container is the more generous
        return "root" if "root" in (a, b) else "user"
    if key == "aggregate":
        both = {k: _more_generous("max_cpus", a[k], b[k]) for k in a.keys() & b.keys()}
        return {**a, **b, **both}
    if a is None or b is None:
        return None if key in _UNLIMITED_IS_NONE or key == "max_cpus" else (a if b is None else b)
    if key == "allowed_mig_profiles":
        return list(dict.fromkeys([*a, *b]))
    if key in _LOWER_IS_GENEROUS:
        return min(a, b)
    return max(a, b)


def groups_of(doc: PolicyDocument, identity: Identity) -> list[str]:
    """The policy groups a user belongs to, by name or Unix group, in policy order."""
    out = []
    for name, group in (doc.data.get("groups") or {}).items():
        if identity.user in (group.get("members") or []) or set(
            group.get("unix_groups") or []
        ) & set(identity.groups):
            out.append(name)
    return out


def resolve(doc: PolicyDocument, identity: Identity) -> Limits:
    """The effective limits of ``identity`` under the policy ``doc``."""
    values = Limits(user=identity.user, group="default").as_dict()  # fresh lists and dicts
    sources = dict.fromkeys(BUILTIN_DEFAULTS, "built-in")
    for key, value in (doc.data.get("defaults") or {}).items():
        values[key], sources[key] = (
            _merge_aggregate(key, values[key], _normalise(key, value)),
            "defaults",
        )
    groups = groups_of(doc, identity)
    group_values: dict[str, Any] = {}
    for name in groups:
        for key, value in doc.data["groups"][name].items():
            if key in ("members", "unix_groups"):
                continue
            value = _normalise(key, value)
            if key in group_values:
                merged = _more_generous(key, group_values[key], value)
                if merged != group_values[key]:
                    sources[key] = f"group {name}"
                group_values[key] = merged
            else:
                group_values[key], sources[key] = value, f"group {name}"
    for key, value in group_values.items():
        values[key] = _merge_aggregate(key, values[key], value)
    user_entry = (doc.data.get("users") or {}).get(identity.user)
    for key, value in (user_entry or {}).items():
        values[key] = _merge_aggregate(key, values[key], _normalise(key, value))
        sources[key] = f"users.{identity.user}"
    for key in ("unknown_users", "direct_access"):  # policy-wide settings every decision reads
        values[key] = doc.data.get(key, "allow")
    return Limits(
        user=identity.user,
        group=groups[0] if groups else "default",
        known=bool(groups) or user_entry is not None,
        sources=sources,
        **_typed(values),
    )


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    """The merged plain values as Limits' field types (the schema has checked their shapes)."""
    out = {key: values[key] for key in POLICY_KEYS}
    out["aggregate"] = Aggregate(**values["aggregate"])
    for key in ("allowed_mig_profiles", "bind_mounts", "allow"):
        out[key] = None if values[key] is None else tuple(values[key])
    return out


def _merge_aggregate(key: str, base: Any, override: Any) -> Any:
    # A partial aggregate block overrides only the keys it names.
    if key == "aggregate":
        return {**base, **override}
    return override
