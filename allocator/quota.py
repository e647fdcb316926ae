"""A user's GPU quota (from the policy's ``Limits``) and what they already hold against it."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from . import refusal
from .inventory import Device, short_uuid
from .placement import GPUEQ_EPSILON
from .refusal import Refusal


class QuotaLimits(Protocol):
    """The GPU keys the allocator reads from a user's limits (``policy.limits.Limits`` has them).

    A Protocol, so the allocator below the policy never imports it; None = unlimited.
    """

    @property
    def is_admin(self) -> bool: ...
    @property
    def priority(self) -> int: ...
    @property
    def max_gpus(self) -> int | None: ...
    @property
    def max_mig_instances(self) -> int | None: ...
    @property
    def max_gpu_equivalents(self) -> float | None: ...
    @property
    def max_gpus_per_container(self) -> int | None: ...
    @property
    def allow_full_gpu(self) -> bool: ...
    @property
    def allowed_mig_profiles(self) -> Collection[str] | None: ...


@dataclass(frozen=True)
class Quota:
    """The GPU keys of a user's limits; None = unlimited. Admins have no GPU quota."""

    max_gpus: int | None = 0
    max_mig: int | None = 0
    max_gpueq: float | None = None
    per_container: int | None = None
    allow_full_gpu: bool = False
    profiles: frozenset[str] | None = None  # allowed MIG profiles; None = any
    priority: int = 0
    admin: bool = False

    @classmethod
    def from_limits(cls, limits: QuotaLimits) -> Quota:
        if limits.is_admin:
            # Admins are not rationed, but still never get a device someone else holds.
            return cls(None, None, None, None, True, None, int(limits.priority), admin=True)
        profiles = limits.allowed_mig_profiles
        return cls(
            max_gpus=limits.max_gpus,
            max_mig=limits.max_mig_instances,
            max_gpueq=None
            if limits.max_gpu_equivalents is None
            else float(limits.max_gpu_equivalents),
            per_container=limits.max_gpus_per_container,
            allow_full_gpu=bool(limits.allow_full_gpu),
            profiles=None if profiles is None else frozenset(profiles),
            priority=int(limits.priority),
        )

    def allows_profile(self, profile: str) -> bool:
        return self.profiles is None or profile in self.profiles


Holding = tuple[tuple[str, ...], "str | None"]  # (short device names, container id)


@dataclass(frozen=True)
class Usage:
    """What a user holds now: reserved, bound and held (stopped, in their grace) devices."""

    whole: int = 0
    mig: int = 0
    gpueq: float = 0.0
    holdings: tuple[Holding, ...] = ()

    @classmethod
    def of(cls, held: Iterable[tuple[Sequence[str], float, str | None]]) -> Usage:
        """From (device UUIDs, GPU-equivalents, container id) of each allocation."""
        whole = mig = 0
        gpueq = 0.0
        holdings = []
        for uuids, eq, container in held:
            whole += sum(1 for u in uuids if not u.startswith("MIG-"))
            mig += sum(1 for u in uuids if u.startswith("MIG-"))
            gpueq += eq
            holdings.append((tuple(short_uuid(u) for u in uuids), container))
        return cls(whole, mig, gpueq, tuple(holdings))

    def left(self, quota: Quota, kind: str) -> int | None:
        """How many more devices of ``kind`` the quota allows; None = unlimited."""
        limit, held = (quota.max_gpus, self.whole) if kind == "gpu" else (quota.max_mig, self.mig)
        return None if limit is None else max(0, limit - held)

    def gpueq_left(self, quota: Quota) -> float | None:
        return None if quota.max_gpueq is None else max(0.0, quota.max_gpueq - self.gpueq)


def check_counts(quota: Quota, usage: Usage, whole: int, mig: int) -> Refusal | None:
    """The count quotas for ``whole`` more whole GPUs and ``mig`` more MIG instances."""
    if quota.per_container is not None and whole + mig > quota.per_container:
        return refusal.per_container(quota.per_container, whole + mig)
    for code, asked, limit, held in (
        (refusal.QUOTA_GPUS, whole, quota.max_gpus, usage.whole),
        (refusal.QUOTA_MIG, mig, quota.max_mig, usage.mig),
    ):
        if asked and limit is not None and held + asked > limit:
            return refusal.quota_count(code, held, limit, asked, usage.holdings)
    return None


def check_gpueq(quota: Quota, usage: Usage, devices: Sequence[Device]) -> Refusal | None:
    """The GPU-equivalents quota for ``devices`` on top of what is held."""
    asked = sum(d.gpueq for d in devices)
    if quota.max_gpueq is not None and usage.gpueq + asked > quota.max_gpueq + GPUEQ_EPSILON:
        return refusal.quota_gpueq(usage.gpueq, quota.max_gpueq, asked, usage.holdings)
    return None


def check(quota: Quota, usage: Usage, devices: Sequence[Device]) -> Refusal | None:
    """Every quota for giving ``devices`` to a user who holds ``usage``."""
    whole = sum(1 for d in devices if not d.is_mig)
    return check_counts(quota, usage, whole, len(devices) - whole) or check_gpueq(
        quota, usage, devices
    )
