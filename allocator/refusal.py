"""Why a GPU request was refused: the user's message, the fix, a stable code, the holders.

Every refusal text the allocator produces is built here, so messages stay consistent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from formats.labels import format_gpueq
from formats.units import format_duration

QUOTA_GPUS = "quota_gpus"
QUOTA_MIG = "quota_mig"
QUOTA_GPUEQ = "quota_gpueq"
PER_CONTAINER = "per_container"
NO_FULL_GPU = "no_full_gpu"
PROFILE_NOT_ALLOWED = "profile_not_allowed"
NO_CAPACITY = "no_capacity"
DEVICE_BUSY = "device_busy"
UNKNOWN_DEVICE = "unknown_device"
CODES = frozenset(
    {
        QUOTA_GPUS,
        QUOTA_MIG,
        QUOTA_GPUEQ,
        PER_CONTAINER,
        NO_FULL_GPU,
        PROFILE_NOT_ALLOWED,
        NO_CAPACITY,
        DEVICE_BUSY,
        UNKNOWN_DEVICE,
    }
)
# Waiting helps only when someone else has to let go of a device.
WAITABLE = frozenset({NO_CAPACITY, DEVICE_BUSY})

_FREE_ONE = "stop or remove a container holding a GPU (`docker ps`)"


@dataclass(frozen=True)
class Holder:
    """Who holds one device: for messages and ``ds01 gpus``."""

    device: str  # UUID
    label: str  # "GPU 1 MIG 3g.40gb (MIG-1a2b3c4d…)"
    user: str
    container_id: str | None  # None while the create is in flight
    state: str  # reserved | bound | held
    since: float
    hold_until: float | None = None

    def describe(self, now: float) -> str:
        """``GPU 2 (GPU-5f6c0d2e…): bob's container 3f2a1b0c9d8e, for 2h5m``."""
        return f"{self.label}: {self.whose(now)}"

    def whose(self, now: float) -> str:
        """``bob's container 3f2a1b0c9d8e, for 2h5m`` (with the hold left, when stopped)."""
        if self.state == "promised":
            return "an earlier request waiting in the queue"
        if self.container_id is None:
            what = f"{self.user}'s container being created"
        else:
            what = f"{self.user}'s container {self.container_id[:12]}"
        if self.state == "held" and self.hold_until is not None:
            left = format_duration(max(0.0, self.hold_until - now))
            what += f" (stopped; kept for it {left} more)"
        return f"{what}, for {format_duration(max(0.0, now - self.since))}"


@dataclass(frozen=True)
class Refusal:
    """A GPU request that cannot be met: ``reason`` and ``fix`` are for the user."""

    code: str
    reason: str
    fix: str
    holders: tuple[Holder, ...] = ()
    waitable: bool = False  # True when a freed device could satisfy it later

    def __post_init__(self) -> None:
        if self.code not in CODES:  # codes are a stable interface (metrics, tests)
            raise ValueError(f"unknown refusal code {self.code!r}")

    @property
    def message(self) -> str:
        """The one-paragraph text a user sees: what happened, then what to do."""
        return f"{self.reason}. To fix: {self.fix}."


# ----------------------------------------------------------------------------- builders


def _plural(n: float, one: str, many: str | None = None) -> str:
    return one if n == 1 else (many or one + "s")


def _holdings(held: Sequence[tuple[Sequence[str], str | None]]) -> str:
    """``(MIG-1a2b3c4d…, container 3f2a1b0c9d8e; GPU-…, a container being created)``."""
    parts = []
    for devices, container in held:
        where = f"container {container[:12]}" if container else "a container being created"
        parts.append(f"{', '.join(devices)}, {where}")
    return f" ({'; '.join(parts)})" if parts else ""


_UNITS = {
    QUOTA_GPUS: ("whole GPU", "whole GPUs", "max_gpus"),
    QUOTA_MIG: ("MIG instance", "MIG instances", "max_mig_instances"),
}


def quota_count(
    code: str,
    held: int,
    limit: int,
    asked: int,
    holdings: Sequence[tuple[Sequence[str], str | None]],
) -> Refusal:
    """A whole-GPU or MIG-instance count quota (``quota_gpus`` / ``quota_mig``)."""
    one, many, key = _UNITS[code]
    if limit == 0:
        return Refusal(
            code,
            f"your GPU policy gives you no {many} ({key} is 0)",
            f"ask an admin for GPU access (a higher {key})",
        )
    reason = f"GPU quota reached: you hold {held} of {limit} {_plural(limit, one, many)}"
    reason += _holdings(holdings)
    if held < limit:
        reason += f" and asked for {asked} more"
    if held == 0:
        return Refusal(
            code,
            reason,
            f"ask for at most {limit} (`--gpus {limit}`), or ask an admin for a higher {key}",
        )
    return Refusal(code, reason, f"{_FREE_ONE}, or ask an admin for a higher {key}")


def quota_gpueq(
    held: float, limit: float, asked: float, holdings: Sequence[tuple[Sequence[str], str | None]]
) -> Refusal:
    """The GPU-equivalents quota: whole GPUs count 1, MIG instances their share of slices."""
    if limit <= 0:
        return Refusal(
            QUOTA_GPUEQ,
            "your GPU policy gives you no GPU-equivalents (max_gpu_equivalents is 0)",
            "ask an admin for GPU access (a higher max_gpu_equivalents)",
        )
    reason = (
        f"GPU quota reached: you hold {format_gpueq(held)} of {format_gpueq(limit)} "
        f"GPU-equivalents{_holdings(holdings)} and this request needs "
        f"{format_gpueq(asked)} more"
    )
    fix = "ask for a smaller MIG instance, " if held == 0 else f"{_FREE_ONE}, "
    return Refusal(QUOTA_GPUEQ, reason, fix + "or ask an admin for a higher max_gpu_equivalents")


def per_container(limit: int, asked: int) -> Refusal:
    return Refusal(
        PER_CONTAINER,
        f"at most {limit} {_plural(limit, 'GPU')} per container; you asked for {asked}",
        f"ask for fewer (`--gpus {limit}`), or spread the work over several containers",
    )


def no_full_gpu(device_label: str | None = None) -> Refusal:
    what = f"{device_label} is a whole GPU" if device_label else "you asked for a whole GPU"
    return Refusal(
        NO_FULL_GPU,
        f"your GPU policy gives MIG instances, not whole GPUs, and {what}",
        "use `--gpus 1` to get a MIG instance, or ask an admin for allow_full_gpu",
    )


def profile_not_allowed(profile_text: str, allowed: Iterable[str] | None) -> Refusal:
    allowed_text = ", ".join(allowed) if allowed is not None else "any"
    return Refusal(
        PROFILE_NOT_ALLOWED,
        f"{profile_text} is not allowed for you (allowed MIG profiles: {allowed_text or 'none'})",
        "use `--gpus 1` to get an instance you may use, or ask an admin to allow the profile",
    )


def no_allowed_profile(allowed: Iterable[str]) -> Refusal:
    return Refusal(
        PROFILE_NOT_ALLOWED,
        "none of this server's MIG instances has a profile you may use "
        f"(allowed MIG profiles: {', '.join(allowed) or 'none'})",
        "ask an admin to allow a profile this server has (`ds01 gpus` lists them)",
    )


def no_capacity(
    what: str,
    holders: Sequence[Holder],
    now: float,
    *,
    show_holders: bool,
    waitable: bool = True,
    fix: str | None = None,
) -> Refusal:
    """Nothing free that fits; admins see who holds what, everyone sees how many users."""
    reason = f"no free GPU: {what}"
    if holders:
        if show_holders:
            reason += "; in use: " + "; ".join(h.describe(now) for h in holders)
        else:
            users = {h.user for h in holders}
            reason += (
                f"; {len(holders)} {_plural(len(holders), 'device')} in use by "
                f"{len(users)} {_plural(len(users), 'user')}"
            )
    if fix is None and waitable:
        fix = (
            "try again later (`ds01 gpus` shows who holds what and the queue), or stop one of "
            "your own containers holding a GPU"
        )
    elif fix is None:
        fix = "ask for fewer GPUs (`--gpus 1`); `ds01 gpus` lists this server's devices"
    return Refusal(NO_CAPACITY, reason, fix, tuple(holders), waitable=waitable)


def device_busy(holder: Holder, now: float, *, recreate: bool = False) -> Refusal:
    """A named device is held by another container; the message names the holder."""
    fix = "ask for any free GPU instead (`--gpus 1`), or try again when it is released"
    if recreate:
        fix = (
            "recreate the container to get a free GPU (`docker rm` it, then `docker run "
            "--gpus 1 ...` again); your files in volumes and bind mounts are kept"
        )
    reason = f"{holder.label} is in use by {holder.whose(now)}"
    return Refusal(DEVICE_BUSY, reason, fix, (holder,), waitable=True)


def unknown_device(device_id: str, why: str = "") -> Refusal:
    return Refusal(
        UNKNOWN_DEVICE,
        f"no GPU or MIG instance {device_id!r} that DS01 can allocate on this server"
        + (f": {why}" if why else ""),
        "see `ds01 gpus` for the devices, or ask for any free one with `--gpus 1`",
    )
