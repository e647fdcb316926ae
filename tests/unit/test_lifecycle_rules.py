"""The lifecycle rules (``policy.lifecycle``): timelines of samples in, warnings and stops out.

Each case replays a container minute by minute against a policy and lists what the rules did,
as ``(minute, action, reason, level)``; minutes count from the container's start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date

import pytest
import yaml

from formats.timestamps import parse_docker_time
from policy.identity import Identity
from policy.lifecycle import (
    ContainerInfo,
    Remove,
    Sample,
    Settings,
    Stop,
    Tracker,
    Warn,
    container_info,
    describe,
    evaluate,
    gpu_busy,
    is_high_demand,
    kind_of,
    settings_from_policy,
)
from policy.limits import Limits, resolve
from policy.loader import parse_policy

START = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
MINUTE = 60.0
HOUR = 3600.0
ALICE = Identity(uid=1001, user="alice", groups=frozenset({"alice"}), home="/home/alice")

BASE_POLICY = """\
sample_interval: 60s
startup_grace: 0s
defaults:
  idle_timeout: 1h
"""

RUNNING = ContainerInfo(
    id="c" * 64,
    name="train",
    user="alice",
    kind="docker",
    state="running",
    created_at=START - 10,
    started_at=START,
    finished_at=None,
)


@dataclass(frozen=True)
class Act:
    """What the container does during one minute."""

    cpu_percent: float = 0.0  # of one core
    net: int = 0  # bytes moved this minute
    gpu: bool | None = None
    keepalive_at: float | None = None  # the newest keep-alive, absolute time


def policy(extra: str = "", user: Identity = ALICE) -> tuple[Limits, Settings]:
    """Limits and settings of BASE_POLICY with ``extra`` (YAML) laid over it, key by key."""
    data = yaml.safe_load(BASE_POLICY)
    for key, value in (yaml.safe_load(extra) or {}).items():
        data[key] = {**data[key], **value} if key == "defaults" else value
    doc = parse_policy(yaml.safe_dump(data))
    return resolve(doc, user), settings_from_policy(doc.data)


def simulate(
    extra: str = "",
    *,
    minutes: int = 180,
    activity: Callable[[int], Act] = lambda m: Act(),
    info: ContainerInfo = RUNNING,
    high_demand: Callable[[int], bool] = lambda m: False,
) -> list[tuple[int, str, str, int | None]]:
    """Sample once a minute from the start; stop replaying at the first Stop."""
    limits, settings = policy(extra)
    tracker: Tracker | None = None
    cpu, net = 0.0, 0
    events: list[tuple[int, str, str, int | None]] = []
    for m in range(minutes + 1):
        now = START + m * MINUTE
        act = activity(m)
        cpu += act.cpu_percent / 100 * MINUTE
        net += act.net
        sample = Sample(info.id, now, cpu, net, act.gpu, act.keepalive_at)
        tracker, actions = evaluate(info, tracker, sample, limits, settings, now, high_demand(m))
        for action in actions:
            level = action.level if isinstance(action, Warn) else None
            events.append((m, type(action).__name__.lower(), action.reason, level))
        if any(isinstance(a, Stop) for a in actions):
            break
    return events


IDLE_1H = [(48, "warn", "idle", 80), (57, "warn", "idle", 95), (60, "stop", "idle", None)]
GPU_INFO = replace(RUNNING, has_gpu=True, devices=("GPU-0",))

TIMELINES = [
    pytest.param("", {}, IDLE_1H, id="idle: warned at 80% and 95%, stopped at 100%"),
    pytest.param("", {"activity": lambda m: Act(cpu_percent=50)}, [], id="busy CPU never stopped"),
    pytest.param(
        "", {"activity": lambda m: Act(cpu_percent=1.5)}, IDLE_1H, id="CPU below threshold is idle"
    ),
    pytest.param(
        "defaults:\n  idle_timeout: 1h\n  idle_cpu_percent: 0.5\n",
        {"activity": lambda m: Act(cpu_percent=1.0)},
        [],
        id="the user's idle_cpu_percent is the threshold",
    ),
    pytest.param(
        "", {"activity": lambda m: Act(net=5_000_000)}, [], id="network traffic is activity"
    ),
    pytest.param(
        "", {"activity": lambda m: Act(net=100_000)}, IDLE_1H, id="a trickle of network is idle"
    ),
    pytest.param(
        "",
        {"activity": lambda m: Act(gpu=True), "info": GPU_INFO},
        [],
        id="GPU busy is not idle",
    ),
    pytest.param(
        "",
        {"activity": lambda m: Act(gpu=None), "info": GPU_INFO},
        [],
        id="GPU that cannot be read is not idle",
    ),
    pytest.param(
        "", {"activity": lambda m: Act(gpu=False), "info": GPU_INFO}, IDLE_1H, id="idle GPU"
    ),
    pytest.param(
        "keepalive_max: 2h\n",
        {
            "minutes": 240,
            "activity": lambda m: Act(keepalive_at=START + 30 * MINUTE) if m >= 30 else Act(),
        },
        [(198, "warn", "idle", 80), (207, "warn", "idle", 95), (210, "stop", "idle", None)],
        id="keep-alive at 30m holds for keepalive_max (2h), then idle counts again",
    ),
    pytest.param(
        "",
        {
            "minutes": 24 * 60 + 120,
            "activity": lambda m: Act(keepalive_at=START + 10 * MINUTE) if m >= 10 else Act(),
        },
        [
            (24 * 60 + 58, "warn", "idle", 80),
            (24 * 60 + 67, "warn", "idle", 95),
            (24 * 60 + 70, "stop", "idle", None),
        ],
        id="keepalive_max defaults to 24h",
    ),
    pytest.param(
        "",
        {"activity": lambda m: Act(keepalive_at=START + 100 * HOUR)},
        IDLE_1H,
        id="a keep-alive dated in the future is ignored",
    ),
    pytest.param(
        "startup_grace: 5m\n",
        {},
        [(53, "warn", "idle", 80), (62, "warn", "idle", 95), (65, "stop", "idle", None)],
        id="idle time starts after the start-up grace",
    ),
    pytest.param(
        "defaults:\n  idle_timeout: null\n  max_runtime: 10h\n",
        {"minutes": 11 * 60, "activity": lambda m: Act(cpu_percent=90)},
        [
            (450, "warn", "max_runtime", 75),
            (540, "warn", "max_runtime", 90),
            (600, "stop", "max_runtime", None),
        ],
        id="max_runtime: warned at 75% and 90%, stopped at 100%",
    ),
    pytest.param(
        "defaults:\n  idle_timeout: 1h\n  max_runtime: 2h\n",
        {"activity": lambda m: Act(cpu_percent=90) if m < 100 else Act()},
        [
            (90, "warn", "max_runtime", 75),
            (108, "warn", "max_runtime", 90),
            (120, "stop", "max_runtime", None),
        ],
        id="max_runtime stops before idle would",
    ),
    pytest.param(
        "container_types:\n  devcontainer:\n    idle_timeout: 30m\n",
        {"info": replace(RUNNING, kind="devcontainer")},
        [(24, "warn", "idle", 80), (29, "warn", "idle", 95), (30, "stop", "idle", None)],
        id="container_types.devcontainer shortens the user's idle_timeout",
    ),
    pytest.param(
        "container_types:\n  devcontainer:\n    idle_timeout: 2h\n",
        {"info": replace(RUNNING, kind="devcontainer")},
        IDLE_1H,
        id="a kind chosen by label never lengthens the user's idle_timeout",
    ),
    pytest.param(
        "container_types:\n  devcontainer:\n    idle_timeout: 2h\n",
        {},
        IDLE_1H,
        id="container_types for another kind do not apply",
    ),
    pytest.param(
        "container_types:\n  compose:\n    idle_timeout: null\n",
        {"info": replace(RUNNING, kind="compose")},
        IDLE_1H,
        id="container_types.compose: null (unlimited) does not lift the user's idle_timeout",
    ),
    pytest.param(
        "exemptions:\n  - {user: alice, until: '2023-12-31', reason: thesis}\n",
        {},
        [],
        id="an active exemption leaves the user alone",
    ),
    pytest.param(
        "exemptions:\n  - {user: alice, until: '2023-11-14', reason: thesis}\n",
        {},
        [(107, "warn", "idle", 95), (110, "stop", "idle", None)],
        id="an exemption holds through its last day (UTC); then a final warning with notice",
    ),
    pytest.param(
        "exemptions:\n  - {user: alice, until: '2023-11-13', reason: thesis}\n",
        {},
        IDLE_1H,
        id="an expired exemption does nothing",
    ),
    pytest.param(
        "exemptions:\n  - {user: bob, until: '2023-12-31', reason: thesis}\n",
        {},
        IDLE_1H,
        id="another user's exemption does nothing",
    ),
    pytest.param(
        "defaults:\n  idle_timeout: 1h\n  max_runtime: 2h\n"
        "exemptions:\n  - {user: alice, until: '2023-12-31', reason: run, from: [max_runtime]}\n",
        {},
        IDLE_1H,
        id="an exemption from max_runtime still idle-stops",
    ),
    pytest.param(
        "defaults:\n  idle_timeout: 1h\n  max_runtime: 2h\n"
        "exemptions:\n  - {user: alice, until: '2023-12-31', reason: run, from: [idle]}\n",
        {},
        [
            (90, "warn", "max_runtime", 75),
            (108, "warn", "max_runtime", 90),
            (120, "stop", "max_runtime", None),
        ],
        id="an exemption from idle still stops at max_runtime",
    ),
    pytest.param(
        "",
        {"high_demand": lambda m: True},
        [(24, "warn", "idle", 80), (29, "warn", "idle", 95), (30, "stop", "idle", None)],
        id="high demand halves the idle timeout by default",
    ),
    pytest.param(
        "high_demand_idle_factor: 0.25\n",
        {"high_demand": lambda m: True},
        [(12, "warn", "idle", 80), (15, "warn", "idle", 95), (15 + 1, "stop", "idle", None)],
        id="high_demand_idle_factor, and a stop after a late final warning",
    ),
    pytest.param(
        "",
        {"high_demand": lambda m: m >= 50},
        [(48, "warn", "idle", 80), (50, "warn", "idle", 95), (60, "stop", "idle", None)],
        id="high demand after a warning: the promised stop time holds",
    ),
    pytest.param(
        "",
        {"activity": lambda m: Act(cpu_percent=50) if m == 50 else Act()},
        [
            (48, "warn", "idle", 80),
            (50 + 48, "warn", "idle", 80),
            (50 + 57, "warn", "idle", 95),
            (110, "stop", "idle", None),
        ],
        id="activity after a warning starts the idle clock and the warnings over",
    ),
]


@pytest.mark.parametrize(("extra", "options", "expected"), TIMELINES)
def test_timeline(extra: str, options: dict, expected: list) -> None:
    """The rules warn and stop exactly when the table says."""
    assert simulate(extra, **options) == expected


def test_sparse_samples_still_warn_before_stopping() -> None:
    """A sample that comes after the whole timeout sends the final warning; the stop follows
    only after the notice the final warning normally gives (5% of the idle timeout)."""
    limits, settings = policy()
    sample = Sample(RUNNING.id, START, 0.0, 0, None, None)
    tracker, actions = evaluate(RUNNING, None, sample, limits, settings, START)
    assert actions == []
    later = START + 2 * HOUR
    tracker, actions = evaluate(
        RUNNING, tracker, replace(sample, at=later), limits, settings, later
    )
    assert [(type(a), a.level, a.stop_at) for a in actions] == [(Warn, 95, later + 180)]
    for now, expected in ((later + 179, []), (later + 180, [Stop])):
        _, actions = evaluate(RUNNING, tracker, replace(sample, at=now), limits, settings, now)
        assert [type(a) for a in actions] == expected


def test_messages_name_the_container_and_the_way_out() -> None:
    """Warnings say how long, when, and how to keep the container; stops say how to restart."""
    limits, settings = policy()
    first = Sample(RUNNING.id, START, 0.0, 0)
    tracker, _ = evaluate(RUNNING, None, first, limits, settings, START)
    now = START + 48 * MINUTE
    _, (warning,) = evaluate(RUNNING, tracker, replace(first, at=now), limits, settings, now)
    assert isinstance(warning, Warn)
    assert warning.message == (
        f"ds01: container 'train' ({'c' * 12}) has been idle for 48m (idle_timeout 1h); "
        "it will be stopped at 2023-11-14 23:13 UTC (in 12m). To keep it: use it, run "
        "`ds01 keepalive train`, or touch /tmp/ds01-keepalive inside it"
    )
    assert warning.stop_at == START + HOUR


def test_no_sample_no_idle_decision() -> None:
    """Without a fresh sample (the container could not be measured) nothing is idle-stopped."""
    limits, settings = policy()
    tracker = Tracker(started_at=START, idle_since=START, warned={"idle": (95, START + HOUR)})
    _, actions = evaluate(RUNNING, tracker, None, limits, settings, START + 2 * HOUR)
    assert actions == []


def test_unknown_cpu_is_activity() -> None:
    """A CPU counter that could not be read, or went backwards, never makes a container idle."""
    limits, settings = policy()
    tracker = None
    for m, cpu in enumerate([5.0, None, 5.0, 1.0]):
        now = START + m * MINUTE
        sample = Sample(RUNNING.id, now, cpu, 0)
        tracker, _ = evaluate(RUNNING, tracker, sample, limits, settings, now)
        assert tracker.idle_since is None, m


def test_restart_starts_afresh() -> None:
    """A container started again is a new run: its old idle time and warnings are gone."""
    limits, settings = policy()
    old = Tracker(
        started_at=START - HOUR,
        last=Sample(RUNNING.id, START - 1, 0.0, 0),
        idle_since=START - HOUR,
        warned={"idle": (95, START)},
    )
    sample = Sample(RUNNING.id, START + 10, 0.0, 0)
    tracker, actions = evaluate(RUNNING, old, sample, limits, settings, START + 10)
    assert actions == [] and tracker == Tracker(started_at=START, last=sample)


REMOVALS = [
    pytest.param(
        "defaults:\n  container_hold_after_stop: 1d\n",
        replace(RUNNING, state="exited", finished_at=START),
        [(23 * HOUR, None), (24 * HOUR, "container_hold")],
        id="a stopped container is removed after container_hold_after_stop",
    ),
    pytest.param(
        "",
        replace(RUNNING, state="exited", finished_at=START),
        [(365 * 24 * HOUR, None)],
        id="no container_hold_after_stop: kept for ever",
    ),
    pytest.param(
        "defaults:\n  container_hold_after_stop: 1d\n"
        "container_types:\n  compose:\n    container_hold_after_stop: 1h\n",
        replace(RUNNING, state="exited", finished_at=START, kind="compose"),
        [(HOUR - 1, None), (HOUR, "container_hold")],
        id="container_types.compose shortens the hold",
    ),
    pytest.param(
        "defaults:\n  container_hold_after_stop: 1h\n"
        "container_types:\n  compose:\n    container_hold_after_stop: 30d\n",
        replace(RUNNING, state="exited", finished_at=START, kind="compose"),
        [(HOUR - 1, None), (HOUR, "container_hold")],
        id="a kind chosen by label never lengthens the hold",
    ),
    pytest.param(
        "defaults:\n  container_hold_after_stop: 1d\n",
        replace(RUNNING, state="dead", finished_at=START),
        [(24 * HOUR, "container_hold")],
        id="a dead container is removed like a stopped one",
    ),
    pytest.param(
        "defaults:\n  container_hold_after_stop: 1d\n"
        "exemptions:\n  - {user: alice, until: '2023-12-31', reason: data, from: [removal]}\n",
        replace(RUNNING, state="exited", finished_at=START),
        [(30 * 24 * HOUR, None)],
        id="an exemption from removal keeps it",
    ),
    pytest.param(
        "",
        replace(RUNNING, state="created", started_at=None, created_at=START),
        [(HOUR - 1, None), (HOUR, "created_timeout")],
        id="created but never started: removed after created_timeout (default 1h)",
    ),
    pytest.param(
        "created_timeout: 10m\n",
        replace(RUNNING, state="created", started_at=None, created_at=START),
        [(9 * MINUTE, None), (10 * MINUTE, "created_timeout")],
        id="created_timeout from the policy",
    ),
    pytest.param(
        "created_timeout: null\n",
        replace(RUNNING, state="created", started_at=None, created_at=START),
        [(30 * 24 * HOUR, None)],
        id="created_timeout null: never removed",
    ),
    pytest.param(
        "defaults:\n  idle_timeout: 1m\n  max_runtime: 1m\n",
        replace(RUNNING, state="paused"),
        [(24 * HOUR, None)],
        id="paused containers are left as they are",
    ),
]


@pytest.mark.parametrize(("extra", "info", "checks"), REMOVALS)
def test_removal(extra: str, info: ContainerInfo, checks: list) -> None:
    """Stopped and never-started containers are removed exactly when their time is up."""
    limits, settings = policy(extra)
    for offset, reason in checks:
        _, actions = evaluate(info, None, None, limits, settings, START + offset)
        assert [a.reason for a in actions] == ([reason] if reason else []), offset
        assert all(isinstance(a, Remove) for a in actions)


# ---- describe: what ds01 ps shows -----------------------------------------------------------


def test_describe_idle_container() -> None:
    """An idle container shows its idle time, runtime, and the idle stop time."""
    limits, settings = policy("defaults:\n  idle_timeout: 1h\n  max_runtime: 1d\n")
    tracker = Tracker(started_at=START, idle_since=START + 10 * MINUTE)
    now = START + 30 * MINUTE
    view = describe(RUNNING, tracker, limits, settings, now)
    assert view["idle_seconds"] == 20 * MINUTE
    assert view["runtime_seconds"] == 30 * MINUTE + 10  # created 10 s before it started
    assert (view["stop_at"], view["stop_reason"]) == (START + 70 * MINUTE, "idle")
    assert (view["remove_at"], view["exempt"]) == (None, {})


def test_describe_busy_container_shows_runtime_limit() -> None:
    """A busy container shows when max_runtime stops it; high demand shortens the idle timeout."""
    limits, settings = policy("defaults:\n  idle_timeout: 1h\n  max_runtime: 1d\n")
    view = describe(RUNNING, Tracker(started_at=START), limits, settings, START + HOUR, True)
    assert view["idle_seconds"] == 0.0
    # max_runtime counts from creation, 10 s before the start
    assert (view["stop_at"], view["stop_reason"]) == (START - 10 + 24 * HOUR, "max_runtime")
    assert view["idle_timeout"] == 30 * MINUTE


def test_describe_exempt_and_stopped() -> None:
    """Exemptions are shown with their reason; a stopped container shows its removal time."""
    limits, settings = policy(
        "defaults:\n  container_hold_after_stop: 2d\n"
        "exemptions:\n  - {user: alice, until: '2023-12-31', reason: thesis, from: [idle]}\n"
    )
    exited = replace(RUNNING, state="exited", finished_at=START)
    view = describe(exited, None, limits, settings, START + HOUR)
    assert view["exempt"] == {"idle": {"until": "2023-12-31", "reason": "thesis"}}
    assert (view["idle_seconds"], view["runtime_seconds"], view["stop_at"]) == (None, None, None)
    assert (view["remove_at"], view["remove_reason"]) == (START + 48 * HOUR, "container_hold")


# ---- inputs ---------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    """Without lifecycle keys: 60s samples, 5m grace, 30s stop grace, 24h keep-alive, 1h."""
    assert settings_from_policy({}) == Settings(
        sample_interval=60.0,
        startup_grace=300.0,
        stop_grace=30.0,
        keepalive_max=86400.0,
        created_timeout=3600.0,
        high_demand_threshold=None,
        high_demand_idle_factor=0.5,
    )


def test_settings_from_policy() -> None:
    """Durations are parsed, exemptions typed, container types kept per kind."""
    doc = parse_policy(
        "sample_interval: 30s\nstartup_grace: 15m\nstop_grace: 1m\nkeepalive_max: null\n"
        "created_timeout: 2h\nhigh_demand_threshold: 0.8\nhigh_demand_idle_factor: 0.25\n"
        "container_types:\n  devcontainer: {idle_timeout: 4h, max_runtime: null}\n"
        "exemptions:\n  - {user: alice, until: '2030-01-31', reason: thesis, from: [idle]}\n"
    )
    settings = settings_from_policy(doc.data)
    assert (settings.sample_interval, settings.startup_grace, settings.stop_grace) == (
        30.0,
        900.0,
        60.0,
    )
    assert (settings.keepalive_max, settings.created_timeout) == (None, 7200.0)
    assert (settings.high_demand_threshold, settings.high_demand_idle_factor) == (0.8, 0.25)
    assert settings.container_types == {
        "devcontainer": {"idle_timeout": 14400.0, "max_runtime": None}
    }
    (exemption,) = settings.exemptions
    assert (exemption.user, exemption.until, exemption.scope) == (
        "alice",
        date(2030, 1, 31),
        frozenset({"idle"}),
    )


@pytest.mark.parametrize(
    ("labels", "kind"),
    [
        (
            {"devcontainer.local_folder": "/home/a/p", "com.docker.compose.project": "p"},
            "devcontainer",
        ),
        ({"com.docker.compose.project": "web"}, "compose"),
        ({"ds01.user": "alice"}, "docker"),
        ({}, "docker"),
    ],
)
def test_kind_of(labels: dict[str, str], kind: str) -> None:
    """Dev Container labels win over Compose's (the CLI uses Compose), else plain docker."""
    assert kind_of(labels) == kind


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("2023-11-14T22:13:20Z", START),
        ("2023-11-14T22:13:20.5Z", START + 0.5),
        ("2023-11-14T22:13:20.123456789Z", START + 0.123456),
        ("2023-11-15T00:13:20+02:00", START),
        ("0001-01-01T00:00:00Z", None),
        ("", None),
        (None, None),
        ("yesterday", None),
    ],
)
def test_parse_docker_time(text: str | None, epoch: float | None) -> None:
    """Inspect timestamps (nanoseconds, zones) to epoch seconds; Docker's zero time is None."""
    assert parse_docker_time(text) == (pytest.approx(epoch) if epoch is not None else None)


def test_container_info_from_inspect() -> None:
    """The facts the rules need, read from a docker inspect answer."""
    info = container_info(
        {
            "Id": "a" * 64,
            "Name": "/web",
            "Created": "2023-11-14T22:13:10Z",
            "Config": {
                "Labels": {
                    "ds01.user": "alice",
                    "ds01.uid": "1001",
                    "ds01.devices": "GPU-1, MIG-2",
                    "com.docker.compose.project": "site",
                }
            },
            "State": {
                "Status": "running",
                "Pid": 4242,
                "StartedAt": "2023-11-14T22:13:20Z",
                "FinishedAt": "0001-01-01T00:00:00Z",
            },
        }
    )
    assert info == ContainerInfo(
        id="a" * 64,
        name="web",
        user="alice",
        kind="compose",
        state="running",
        created_at=START - 10,
        started_at=START,
        finished_at=None,
        has_gpu=True,
        uid=1001,
        pid=4242,
        devices=("GPU-1", "MIG-2"),
    )


@pytest.mark.parametrize(
    ("usages", "busy"),
    [
        ([(0, 0)], False),
        ([(1, 0)], True),
        ([(0, 10)], True),
        ([(0, 4)], False),
        ([(0, None)], False),  # MIG: no utilisation, no processes
        ([(None, None)], None),
        ([(None, None), (2, None)], True),
        ([(None, None), (0, 0)], None),
        ([], False),
    ],
)
def test_gpu_busy(usages: list, busy: bool | None) -> None:
    """Processes or utilisation at the threshold (5%) are busy; unreadable devices unknown."""
    assert gpu_busy(usages, 5.0) is busy


@pytest.mark.parametrize(
    ("allocated", "total", "threshold", "high"),
    [(8, 10, 0.8, True), (7.9, 10, 0.8, False), (10, 10, None, False), (0, 0, 0.5, False)],
)
def test_high_demand(allocated: float, total: float, threshold: float | None, high: bool) -> None:
    """High demand: the allocated share reaches the threshold; no threshold, never."""
    assert is_high_demand(allocated, total, Settings(high_demand_threshold=threshold)) is high
