"""Why a GPU request was refused: the user's message, the fix, a stable code, the holders.

Every refusal text the allocator produces is built here, so messages stay consistent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

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

# Stopped and created containers keep their GPUs too, and `docker ps` lists neither.
_FREE_ONE = (
    "remove a container you no longer need (`docker rm NAME`; `docker ps -a` or `ds01 ps` "
    "lists them all, stopped and created ones included)"
)


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
class HeldContainer:
    """One allocation as its owner should see it: the container, its state, its hold's end.

    ``state``: running, stopped, created (never started) or "being created"; ``until``: when
    its hold ends by itself (None: while it runs, or unknown), ``until_key`` the policy key
    that sets that time (gpu_hold_after_stop, created_timeout).
    """

    devices: tuple[str, ...]  # short device names
    container_id: str | None
    name: str | None
    state: str
    until: float | None = None
    until_key: str | None = None

    @property
    def called(self) -> str:
        return self.name or (self.container_id or "")[:12]

    def describe(self, now: float) -> str:
        """``MIG-1a2b3c4d…: container kept, stopped; holds it 59m more (gpu_hold_after_stop)``."""
        devices = ", ".join(self.devices)
        if self.container_id is None:
            return f"{devices}: a container being created"
        return f"{devices}: container {self.called}, {self.state}{self._end(now)}"

    def _end(self, now: float) -> str:
        if self.until is not None:
            left = format_duration(max(0.0, self.until - now))
            return f"; holds it {left} more ({self.until_key})" if self.until_key else ""
        if self.state == "running":
            return "; holds it while it runs, then for gpu_hold_after_stop"
        if self.state == "stopped":
            return "; holds it until it is removed"
        return ""

    @property
    def frees_it(self) -> str:
        """The command that frees its devices now."""
        return f"`docker rm {'-f ' if self.state == 'running' else ''}{self.called}`"


@dataclass(frozen=True)
class Refusal:
    """A GPU request that cannot be met: ``reason`` and ``fix`` are for the user."""

    code: str
    reason: str
    fix: str
    holders: tuple[Holder, ...] = ()
    waitable: bool = False  # True when a freed device could satisfy it later
    # A quota refusal's reason around its holdings, and the key an admin would raise: so the
    # daemon can name the holding containers (``name_holders``), which the ledger cannot.
    parts: tuple[str, str] | None = None
    limit_key: str = ""

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
    head = f"GPU quota reached: you hold {held} of {limit} {_plural(limit, one, many)}"
    tail = f" and asked for {asked} more" if held < limit else ""
    reason = head + _holdings(holdings) + tail
    if held == 0:
        return Refusal(
            code,
            reason,
            f"ask for at most {limit} (`--gpus {limit}`), or ask an admin for a higher {key}",
        )
    fix = f"{_FREE_ONE}, or ask an admin for a higher {key}"
    return Refusal(code, reason, fix, parts=(head, tail), limit_key=key)


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
    head = (
        f"GPU quota reached: you hold {format_gpueq(held)} of {format_gpueq(limit)} GPU-equivalents"
    )
    tail = f" and this request needs {format_gpueq(asked)} more"
    reason = head + _holdings(holdings) + tail
    key = "max_gpu_equivalents"
    if held == 0:
        return Refusal(
            QUOTA_GPUEQ,
            reason,
            f"ask for a smaller MIG instance, or ask an admin for a higher {key}",
        )
    fix = f"{_FREE_ONE}, or ask an admin for a higher {key}"
    return Refusal(QUOTA_GPUEQ, reason, fix, parts=(head, tail), limit_key=key)


def name_holders(refusal: Refusal, held: Sequence[HeldContainer], now: float) -> Refusal:
    """A quota refusal that names the containers holding the quota, their state, when each
    hold ends and the command that frees one (the daemon looks the containers up)."""
    if refusal.parts is None or not held:
        return refusal
    head, tail = refusal.parts
    reason = f"{head} ({'; '.join(h.describe(now) for h in held)}){tail}"
    ready = [h for h in held if h.container_id is not None]
    if not ready:
        return replace(refusal, reason=reason)
    best = min(ready, key=lambda h: h.state == "running")  # a stopped one first
    fix = (
        f"free one with {best.frees_it} (`docker ps -a` or `ds01 ps` lists your containers, "
        f"stopped and created ones too), or ask an admin for a higher {refusal.limit_key}"
    )
    return replace(refusal, reason=reason, fix=fix)


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


def busy_states(held: Sequence[HeldContainer], now: float) -> str:
    """How the busy devices are held, without whose (other users' containers are private):
    ``held by 2 running, 1 stopped (the first frees in 12m) containers``."""
    parts = []
    for state in ("running", "stopped", "created (never started)", "being created"):
        group = [h for h in held if h.state == state]
        if not group:
            continue
        ends = [h.until for h in group if h.until is not None]
        text = f"{len(group)} {state}"
        if ends:
            text += f" (the first frees in {format_duration(max(0.0, min(ends) - now))})"
        parts.append(text)
    return f"held by {', '.join(parts)}" if parts else ""
