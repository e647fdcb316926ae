"""``max_runtime`` counts over a container's life (from dockerd's ``Created``): restarts do not
reset it, and a container started again after its life is used up is stopped at once."""

from __future__ import annotations

from dataclasses import replace

from policy.lifecycle import Sample, Stop, Tracker, Warn, describe, evaluate

from .test_lifecycle_rules import HOUR, MINUTE, RUNNING, START, policy

BUSY = 50.0  # percent of a core: never idle, so only max_runtime acts
RUNTIME_2H = "defaults:\n  idle_timeout: null\n  max_runtime: 2h\n"


def replay(
    runs: list[tuple[int, int]], minutes: int = 300
) -> list[tuple[int, str, str, int | None]]:
    """Sample every minute; the container runs during each ``(start, stop)`` minute range.

    It was created 10 s before minute 0. Between runs it is stopped (exited); a lifecycle
    Stop ends the run it happens in. Returns ``(minute, action, reason, level)``.
    """
    limits, settings = policy(RUNTIME_2H)
    tracker: Tracker | None = None
    events: list[tuple[int, str, str, int | None]] = []
    stopped_at: float | None = None
    cpu = 0.0
    for m in range(minutes + 1):
        now = START + m * MINUTE
        run = next(((a, b) for a, b in runs if a <= m < b), None)
        if run is None or (stopped_at is not None and stopped_at >= START + run[0] * MINUTE):
            info = replace(RUNNING, state="exited", finished_at=stopped_at or now)
            sample = None
        else:
            info = replace(RUNNING, started_at=START + run[0] * MINUTE)
            cpu += BUSY / 100 * MINUTE
            sample = Sample(info.id, now, cpu, 0)
        tracker, actions = evaluate(info, tracker, sample, limits, settings, now)
        for action in actions:
            level = action.level if isinstance(action, Warn) else None
            events.append((m, type(action).__name__.lower(), action.reason, level))
            if isinstance(action, Stop):
                stopped_at = now
    return events


FULL_LIFE = [(90, "warn", "max_runtime", 75), (108, "warn", "max_runtime", 90)]


def test_a_restart_does_not_reset_max_runtime() -> None:
    """Stopped after an hour and started again: stopped 2 h after creation, not 2 h after the
    restart, and the warnings already sent are not sent again."""
    events = replay([(0, 60), (65, 400)])
    assert events == [*FULL_LIFE, (120, "stop", "max_runtime", None)]


def test_a_restart_after_a_warning_keeps_that_warning() -> None:
    events = replay([(0, 95), (100, 400)])
    assert events == [*FULL_LIFE, (120, "stop", "max_runtime", None)]


def test_started_again_after_the_limit_is_stopped_at_once() -> None:
    """Stopped by max_runtime, started again: stopped at the first sample, no fresh notice."""
    events = replay([(0, 150), (150, 400)])
    assert events[:3] == [*FULL_LIFE, (120, "stop", "max_runtime", None)]
    assert events[3:] == [(150, "stop", "max_runtime", None)]


def test_a_fresh_ds01d_stops_a_container_started_after_its_life() -> None:
    """No memory of earlier warnings is needed: the facts alone (Created, StartedAt) decide."""
    limits, settings = policy(RUNTIME_2H)
    info = replace(RUNNING, created_at=START - 3 * HOUR, started_at=START)
    sample = Sample(info.id, START + MINUTE, 0.0, 0)
    _, actions = evaluate(info, None, sample, limits, settings, START + MINUTE)
    assert actions == [
        Stop(
            info.id,
            "max_runtime",
            f"ds01: stopping container 'train' ({info.id[:12]}): its max_runtime of 2h "
            "counts from its creation and had already passed when it was started again. "
            "Create a new container to continue",
        )
    ]


def test_the_stop_message_says_a_restart_does_not_help() -> None:
    limits, settings = policy(RUNTIME_2H)
    tracker = Tracker(started_at=START, warned={"max_runtime": (90, START + 2 * HOUR - 10)})
    now = START + 2 * HOUR - 10  # 2 h after its creation
    _, actions = evaluate(RUNNING, tracker, Sample(RUNNING.id, now, 0.0, 0), limits, settings, now)
    assert [a.message for a in actions] == [
        f"ds01: stopping container 'train' ({RUNNING.id[:12]}): created 2h ago (max runtime "
        "limit reached, counted from its creation). Create a new container to continue; "
        "starting this one again stops it again"
    ]


def test_describe_counts_runtime_from_creation_across_restarts() -> None:
    limits, settings = policy(RUNTIME_2H)
    restarted = replace(RUNNING, created_at=START - HOUR, started_at=START)
    view = describe(restarted, Tracker(started_at=START), limits, settings, START + 10 * MINUTE)
    assert view["runtime_seconds"] == HOUR + 10 * MINUTE
    assert (view["stop_at"], view["stop_reason"]) == (START + HOUR, "max_runtime")
