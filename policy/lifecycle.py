"""Lifecycle rules: when a container is warned, stopped or removed, as a pure function.

Samples, container facts, limits and ``now`` go in; a new per-container ``Tracker`` and a list
of ``Action`` values come out. No clock, no files, no Docker: ``ds01d.lifecycle`` reads
the cgroups, ``/proc`` and NVML, and carries out what this module decides.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, Literal

from formats.labels import LABEL_DEVICES, LABEL_USER, parse_devices, parse_uid
from formats.timestamps import parse_docker_time
from formats.units import format_duration, parse_duration

from .limits import Limits

# The label prefixes and keys that say what made a container (Dev Containers CLI, Compose).
DEVCONTAINER_PREFIX = "devcontainer."
COMPOSE_PROJECT = "com.docker.compose.project"
KINDS = ("devcontainer", "compose", "docker")
EXEMPTIBLE = ("idle", "max_runtime", "removal")

# Warning levels, in percent of the limit; the last one is the final notice before the stop.
IDLE_WARNINGS = (80, 95)
RUNTIME_WARNINGS = (75, 90)
# A keep-alive is read just before its sample is timed; allow for the clocks' rounding.
KEEPALIVE_SKEW = 1.0

Reason = Literal["idle", "max_runtime"]


# ----------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class Sample:
    """What one container did, measured at ``at``; counters are cumulative since it started.

    ``None`` means "could not be measured": an unknown CPU or GPU counts as activity (we never
    stop what we cannot see), an unknown network counter is ignored (host networking).
    """

    container_id: str
    at: float
    cpu_seconds: float | None
    net_bytes: int | None  # received + transmitted, every interface but lo
    gpu_busy: bool | None = None  # processes on its devices or utilisation over the threshold
    keepalive_at: float | None = None  # newest keep-alive: the marker file's mtime, or the call


@dataclass(frozen=True)
class ContainerInfo:
    """The facts about a container the rules need, from ``docker inspect``."""

    id: str
    name: str
    user: str
    kind: str  # "devcontainer", "compose" or "docker"
    state: str  # Docker's State.Status: created, running, paused, restarting, exited, dead
    created_at: float | None
    started_at: float | None  # None: never started
    finished_at: float | None  # None: has not stopped since it last started
    has_gpu: bool = False
    uid: int | None = None
    pid: int | None = None  # the init process on the host, while running
    devices: tuple[str, ...] = ()  # GPU-/MIG- UUIDs from the ds01.devices label

    @property
    def short(self) -> str:
        return self.id[:12]

    @property
    def label(self) -> str:
        """How messages name it: ``'train' (3f2a9c1b7d40)``."""
        return f"'{self.name}' ({self.short})" if self.name else self.short


@dataclass(frozen=True)
class Exemption:
    """A user left alone by some lifecycle rules until the end of ``until`` (UTC)."""

    user: str
    until: date
    reason: str
    scope: frozenset[str] = frozenset(EXEMPTIBLE)

    def covers(self, user: str, rule: str, now: float) -> bool:
        return (
            self.user == user
            and rule in self.scope
            and datetime.fromtimestamp(now, UTC).date() <= self.until
        )


@dataclass(frozen=True)
class Settings:
    """The policy's top-level lifecycle keys, in seconds; ``None`` = unlimited."""

    sample_interval: float = 60.0
    startup_grace: float = 300.0
    stop_grace: float = 30.0
    keepalive_max: float | None = 86400.0
    created_timeout: float | None = 3600.0
    high_demand_threshold: float | None = None  # None: idle timeouts never shrink
    high_demand_idle_factor: float = 0.5
    container_types: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    exemptions: tuple[Exemption, ...] = ()

    def exemption(self, user: str, rule: str, now: float) -> Exemption | None:
        return next((e for e in self.exemptions if e.covers(user, rule, now)), None)


@dataclass(frozen=True)
class Warn:
    container: str
    reason: Reason
    level: int  # percent of the limit reached
    stop_at: float
    message: str


@dataclass(frozen=True)
class Stop:
    container: str
    reason: Reason
    message: str


@dataclass(frozen=True)
class Remove:
    container: str
    reason: str  # "container_hold" (stopped too long) or "created_timeout" (never started)
    message: str


Action = Warn | Stop | Remove


@dataclass(frozen=True)
class Tracker:
    """What the rules remember about one run of a container between samples."""

    started_at: float | None = None  # the run this belongs to: a restart starts afresh
    last: Sample | None = None
    idle_since: float | None = None
    # reason -> (highest warning level sent, the stop time that warning promised)
    warned: Mapping[str, tuple[int, float]] = field(default_factory=dict)


# ----------------------------------------------------------------------------- inputs


def settings_from_policy(data: Mapping[str, Any]) -> Settings:
    """The lifecycle settings of a validated policy document (``PolicyDocument.data``)."""
    defaults = Settings()

    def seconds(key: str, default: float | None, null_means: float | None) -> float | None:
        if key not in data:
            return default
        value = parse_duration(data[key])
        return null_means if value is None else value

    # sample_interval, startup_grace and stop_grace have no sensible "unlimited": null is the
    # default. A zero interval would spin, so it is kept above a tenth of a second.
    interval = seconds("sample_interval", defaults.sample_interval, defaults.sample_interval)
    types = {
        kind: {key: parse_duration(value) for key, value in (values or {}).items()}
        for kind, values in (data.get("container_types") or {}).items()
    }
    exemptions = tuple(
        Exemption(
            user=entry["user"],
            until=date.fromisoformat(str(entry["until"])),
            reason=entry["reason"],
            scope=frozenset(entry.get("from") or EXEMPTIBLE),
        )
        for entry in data.get("exemptions") or ()
    )
    factor = data.get("high_demand_idle_factor")
    return Settings(
        sample_interval=max(0.1, interval or defaults.sample_interval),
        startup_grace=seconds("startup_grace", defaults.startup_grace, defaults.startup_grace)
        or 0.0,
        stop_grace=seconds("stop_grace", defaults.stop_grace, defaults.stop_grace) or 0.0,
        keepalive_max=seconds("keepalive_max", defaults.keepalive_max, None),
        created_timeout=seconds("created_timeout", defaults.created_timeout, None),
        high_demand_threshold=data.get("high_demand_threshold"),
        high_demand_idle_factor=defaults.high_demand_idle_factor if factor is None else factor,
        container_types=types,
        exemptions=exemptions,
    )


def kind_of(labels: Mapping[str, str]) -> str:
    """``devcontainer``, ``compose`` or ``docker``, from the labels the tools put on containers."""
    if any(key.startswith(DEVCONTAINER_PREFIX) for key in labels):
        return "devcontainer"
    if COMPOSE_PROJECT in labels:
        return "compose"
    return "docker"


def container_info(inspect: Mapping[str, Any]) -> ContainerInfo:
    """A ``ContainerInfo`` from a ``GET /containers/{id}/json`` answer."""
    config = inspect.get("Config") or {}
    labels = config.get("Labels") or {}
    state = inspect.get("State") or {}
    devices = parse_devices(labels.get(LABEL_DEVICES))
    uid = parse_uid(labels)
    pid = state.get("Pid")
    return ContainerInfo(
        id=inspect.get("Id", ""),
        name=(inspect.get("Name") or "").lstrip("/"),
        user=labels.get(LABEL_USER, ""),
        kind=kind_of(labels),
        state=state.get("Status") or "unknown",
        created_at=parse_docker_time(inspect.get("Created")),
        started_at=parse_docker_time(state.get("StartedAt")),
        finished_at=parse_docker_time(state.get("FinishedAt")),
        has_gpu=bool(devices),
        uid=uid,
        pid=pid if isinstance(pid, int) and pid > 0 else None,
        devices=devices,
    )


def gpu_busy(
    usages: Iterable[tuple[int | None, int | None]], idle_gpu_percent: float
) -> bool | None:
    """Busy if any device has a compute process or utilisation at the threshold; None: unknown.

    ``usages`` holds (process count, utilisation percent or None) per device. MIG instances
    report no utilisation, so their processes decide. A device NVML cannot read makes the
    answer unknown, unless another device is plainly busy.
    """
    unknown = False
    for processes, util in usages:
        if processes is None:
            unknown = True
        elif processes > 0 or (util is not None and util >= idle_gpu_percent):
            return True
    return None if unknown else False


def is_high_demand(allocated: float, total: float, settings: Settings) -> bool:
    """Whether the share of devices allocated reaches ``high_demand_threshold``."""
    if settings.high_demand_threshold is None or total <= 0:
        return False
    return allocated / total >= settings.high_demand_threshold


def effective(limits: Limits, settings: Settings, kind: str) -> dict[str, float | None]:
    """The user's lifecycle durations; ``container_types[kind]`` can only shorten them.

    A container's kind comes from labels whoever created it chose, so it proves nothing: its
    entry applies only where it is less generous than the user's own value (``None`` is
    unlimited). A label can make a container's limits stricter, never looser.
    """
    values: dict[str, float | None] = {
        "idle_timeout": limits.idle_timeout,
        "max_runtime": limits.max_runtime,
        "gpu_hold_after_stop": limits.gpu_hold_after_stop,
        "container_hold_after_stop": limits.container_hold_after_stop,
    }
    for key, value in (settings.container_types.get(kind) or {}).items():
        values[key] = _least(values.get(key), value)
    return values


def _least(own: float | None, kind: float | None) -> float | None:
    """The less generous of two durations, ``None`` being unlimited."""
    if own is None or kind is None:
        return kind if own is None else own
    return min(own, kind)


def life_start(info: ContainerInfo) -> float | None:
    """Where ``max_runtime`` counts from: dockerd's ``Created`` time, which no user sets.

    Counting from the last start would let a restart reset the limit; the container's life is
    the window instead (its start if dockerd gave no creation time).
    """
    return info.created_at if info.created_at is not None else info.started_at


# ----------------------------------------------------------------------------- the rules


def evaluate(
    info: ContainerInfo,
    tracker: Tracker | None,
    sample: Sample | None,
    limits: Limits,
    settings: Settings,
    now: float,
    high_demand: bool = False,
) -> tuple[Tracker, list[Action]]:
    """What to do about one container now, and what to remember until the next sample.

    ``sample`` is None when the container is not running or could not be measured; then no
    idle decision is made (runtime and removal rules still apply).
    """
    tracker = tracker or Tracker()
    if info.state == "running" and info.started_at is not None:
        return _running(info, tracker, sample, limits, settings, now, high_demand)
    if info.state in ("exited", "dead"):
        return Tracker(warned=_runtime_warnings(tracker)), _stale(info, limits, settings, now)
    if info.state == "created" and info.started_at is None:
        return Tracker(), _never_started(info, settings, now)
    return tracker, []  # paused, restarting, removing: wait until it settles


def _running(
    info: ContainerInfo,
    tracker: Tracker,
    sample: Sample | None,
    limits: Limits,
    settings: Settings,
    now: float,
    high_demand: bool,
) -> tuple[Tracker, list[Action]]:
    assert info.started_at is not None
    if tracker.started_at != info.started_at:  # restarted: a new run, a clean idle slate
        tracker = Tracker(started_at=info.started_at, warned=_runtime_warnings(tracker))
    values = effective(limits, settings, info.kind)
    actions: list[Action] = []
    if sample is not None:  # without a fresh sample there is no evidence either way
        idle_since = _idle_since(info, tracker, sample, limits, settings)
        tracker = replace(tracker, last=sample, idle_since=idle_since)
        timeout = _idle_timeout(values, settings, high_demand)
        exempt = settings.exemption(info.user, "idle", now)
        if idle_since is None or exempt is not None:
            tracker = _forget_warnings(tracker, "idle")  # active again: warnings start over
        elif timeout is not None:
            tracker, found = _deadline(
                info, tracker, "idle", idle_since, timeout, IDLE_WARNINGS, now
            )
            actions += found

    runtime = values["max_runtime"]
    born = life_start(info)
    if (
        runtime is not None
        and born is not None
        and settings.exemption(info.user, "max_runtime", now) is None
    ):
        if info.started_at >= born + runtime:  # started again after its life was used up
            actions.append(Stop(info.id, "max_runtime", _spent_message(info, runtime)))
        else:
            tracker, found = _deadline(
                info, tracker, "max_runtime", born, runtime, RUNTIME_WARNINGS, now
            )
            actions += found

    stops: list[Action] = [a for a in actions if isinstance(a, Stop)]
    return tracker, (stops[:1] if stops else actions)  # one stop says it all


def _idle_since(
    info: ContainerInfo,
    tracker: Tracker,
    sample: Sample,
    limits: Limits,
    settings: Settings,
) -> float | None:
    """When the container's current idle stretch began, or None if it is not idle."""
    assert info.started_at is not None
    previous = tracker.last
    grace_end = info.started_at + settings.startup_grace
    if previous is None or sample.at < grace_end:
        return None  # nothing to compare with yet, or still starting up
    kept_until = _keepalive_until(sample, settings)
    if kept_until is not None and sample.at < kept_until:
        return None
    if _active(previous, sample, limits, settings, info.has_gpu):
        return None
    start = tracker.idle_since if tracker.idle_since is not None else previous.at
    # Idle time counts neither the start-up grace nor the time a keep-alive covered.
    return max(start, grace_end, kept_until if kept_until is not None else start)


def _keepalive_until(sample: Sample, settings: Settings) -> float | None:
    # A marker dated in the future (touch -d 2099) is no keep-alive: it would hold for ever.
    if sample.keepalive_at is None or sample.keepalive_at > sample.at + KEEPALIVE_SKEW:
        return None
    if settings.keepalive_max is None:
        return math.inf
    return sample.keepalive_at + settings.keepalive_max


def _active(
    previous: Sample, sample: Sample, limits: Limits, settings: Settings, has_gpu: bool
) -> bool:
    """Whether anything happened between two samples (unknown CPU or GPU counts as activity)."""
    elapsed = sample.at - previous.at
    if elapsed <= 0 or sample.cpu_seconds is None or previous.cpu_seconds is None:
        return True
    cpu = sample.cpu_seconds - previous.cpu_seconds
    if cpu < 0:  # the counter went backwards: a new cgroup, so we cannot tell
        return True
    if 100.0 * cpu / elapsed >= limits.idle_cpu_percent:
        return True
    if sample.net_bytes is not None and previous.net_bytes is not None:
        # The threshold is bytes per sample interval; scale so a late sample is not "busy".
        moved = (sample.net_bytes - previous.net_bytes) * settings.sample_interval / elapsed
        if moved < 0 or moved >= limits.idle_network_bytes:
            return True
    return has_gpu and sample.gpu_busy is not False


def _idle_timeout(
    values: Mapping[str, float | None], settings: Settings, high_demand: bool
) -> float | None:
    timeout = values["idle_timeout"]
    if timeout is None or not high_demand:
        return timeout
    return timeout * settings.high_demand_idle_factor


def _deadline(
    info: ContainerInfo,
    tracker: Tracker,
    reason: Reason,
    start: float,
    limit: float,
    levels: tuple[int, ...],
    now: float,
) -> tuple[Tracker, list[Action]]:
    """Warnings as ``now`` passes each level of ``limit`` after ``start``, then the stop.

    Every container gets its final warning before it is stopped: if that warning is late (a
    sample came late, or high demand shortened the timeout), the stop waits the notice the
    final warning normally gives. The stop never comes before a time a warning promised.
    """
    final = levels[-1]
    sent, promised = tracker.warned.get(reason, (0, -math.inf))
    # A time once promised holds even if high demand shortens the timeout afterwards.
    target = max(start + limit, promised)
    percent = 100.0 * (now - start) / limit if limit > 0 else math.inf
    if percent >= 100 and sent >= final:
        if now >= target:
            return tracker, [Stop(info.id, reason, _stop_message(info, reason, now - start))]
        return tracker, []
    due = [level for level in levels if level > sent and percent >= level]
    if not due:
        return tracker, []
    level = final if percent >= 100 else max(due)  # a late sample sends only the latest
    notice = limit * (100 - final) / 100
    stop_at = max(target, now + notice) if percent >= 100 else target
    warned = {**tracker.warned, reason: (level, stop_at)}
    message = _warn_message(info, reason, now - start, limit, stop_at, now)
    return replace(tracker, warned=warned), [Warn(info.id, reason, level, stop_at, message)]


def _runtime_warnings(tracker: Tracker) -> dict[str, tuple[int, float]]:
    """The max_runtime warnings already sent: they hold for the container's life, not a run."""
    sent = tracker.warned.get("max_runtime")
    return {} if sent is None else {"max_runtime": sent}


def _forget_warnings(tracker: Tracker, reason: str) -> Tracker:
    if reason not in tracker.warned:
        return tracker
    return replace(tracker, warned={k: v for k, v in tracker.warned.items() if k != reason})


def _stale(info: ContainerInfo, limits: Limits, settings: Settings, now: float) -> list[Action]:
    hold = effective(limits, settings, info.kind)["container_hold_after_stop"]
    stopped = info.finished_at if info.finished_at is not None else info.created_at
    if hold is None or stopped is None or settings.exemption(info.user, "removal", now):
        return []
    if now - stopped < hold:
        return []
    message = (
        f"ds01: removed container {info.label}: stopped for {format_duration(now - stopped)} "
        f"(container_hold_after_stop is {format_duration(hold)})"
    )
    return [Remove(info.id, "container_hold", message)]


def _never_started(info: ContainerInfo, settings: Settings, now: float) -> list[Action]:
    timeout = settings.created_timeout
    if timeout is None or info.created_at is None:
        return []
    if settings.exemption(info.user, "removal", now) or now - info.created_at < timeout:
        return []
    message = (
        f"ds01: removed container {info.label}: created "
        f"{format_duration(now - info.created_at)} ago and never started "
        f"(created_timeout is {format_duration(timeout)})"
    )
    return [Remove(info.id, "created_timeout", message)]


# ----------------------------------------------------------------------------- messages


def _clock_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _warn_message(
    info: ContainerInfo,
    reason: Reason,
    elapsed: float,
    limit: float,
    stop_at: float,
    now: float,
) -> str:
    when = f"at {_clock_time(stop_at)} (in {format_duration(max(0.0, stop_at - now))})"
    if reason == "idle":
        return (
            f"ds01: container {info.label} has been idle for {format_duration(elapsed)} "
            f"(idle_timeout {format_duration(limit)}); it will be stopped {when}. "
            f"To keep it: use it, run `ds01 keepalive {info.name or info.short}`, "
            f"or touch /tmp/ds01-keepalive inside it"
        )
    return (
        f"ds01: container {info.label} was created {format_duration(elapsed)} ago "
        f"(max_runtime {format_duration(limit)}, counted from its creation); it will be "
        f"stopped {when}. Save your work; a restart does not reset this: create a new "
        f"container if you need more time"
    )


def _stop_message(info: ContainerInfo, reason: Reason, elapsed: float) -> str:
    if reason == "max_runtime":
        return (
            f"ds01: stopping container {info.label}: created {format_duration(elapsed)} ago "
            f"(max runtime limit reached, counted from its creation). Create a new container "
            f"to continue; starting this one again stops it again"
        )
    return (
        f"ds01: stopping container {info.label}: idle for {format_duration(elapsed)} "
        f"(idle limit reached). `docker start {info.name or info.short}` starts it again"
    )


def _spent_message(info: ContainerInfo, limit: float) -> str:
    return (
        f"ds01: stopping container {info.label}: its max_runtime of {format_duration(limit)} "
        f"counts from its creation and had already passed when it was started again. "
        f"Create a new container to continue"
    )


# ----------------------------------------------------------------------------- reporting


def describe(
    info: ContainerInfo,
    tracker: Tracker | None,
    limits: Limits,
    settings: Settings,
    now: float,
    high_demand: bool = False,
) -> dict[str, Any]:
    """What ``ds01 ps`` and ``ds01 limits`` show: idle time, runtime, when and why it stops.

    Times are epoch seconds, durations seconds; None where a rule does not apply.
    """
    tracker = tracker or Tracker()
    values = effective(limits, settings, info.kind)
    running = info.state == "running" and info.started_at is not None
    same_run = running and tracker.started_at == info.started_at
    idle_since = tracker.idle_since if same_run else None
    idle_timeout = _idle_timeout(values, settings, high_demand)
    exempt = {
        rule: {"until": e.until.isoformat(), "reason": e.reason}
        for rule in EXEMPTIBLE
        if (e := settings.exemption(info.user, rule, now)) is not None
    }
    stops: list[tuple[float, str]] = []
    if running and idle_since is not None and idle_timeout is not None and "idle" not in exempt:
        promised = tracker.warned.get("idle", (0, 0.0))[1]
        stops.append((max(idle_since + idle_timeout, promised), "idle"))
    runtime = values["max_runtime"]
    born = life_start(info)
    if running and runtime is not None and born is not None and "max_runtime" not in exempt:
        promised = tracker.warned.get("max_runtime", (0, 0.0))[1]
        stops.append((max(born + runtime, promised), "max_runtime"))
    stop_at, stop_reason = min(stops) if stops else (None, None)
    remove_at, remove_reason = _removal_time(info, values, settings, now, "removal" in exempt)
    return {
        "container": info.id,
        "name": info.name,
        "user": info.user,
        "kind": info.kind,
        "state": info.state,
        "idle_seconds": (now - idle_since if idle_since is not None else 0.0) if running else None,
        "runtime_seconds": now - born if running and born is not None else None,
        "idle_timeout": idle_timeout,
        "max_runtime": runtime,
        "high_demand": high_demand,
        "stop_at": stop_at,
        "stop_reason": stop_reason,
        "remove_at": remove_at,
        "remove_reason": remove_reason,
        "exempt": exempt,
    }


def _removal_time(
    info: ContainerInfo,
    values: Mapping[str, float | None],
    settings: Settings,
    now: float,
    exempt: bool,
) -> tuple[float | None, str | None]:
    if exempt:
        return None, None
    if info.state in ("exited", "dead"):
        hold = values["container_hold_after_stop"]
        stopped = info.finished_at if info.finished_at is not None else info.created_at
        if hold is not None and stopped is not None:
            return stopped + hold, "container_hold"
    timeout = settings.created_timeout
    never_started = info.state == "created" and info.started_at is None
    if never_started and timeout is not None and info.created_at is not None:
        return info.created_at + timeout, "created_timeout"
    return None, None
