"""The audit log: JSON lines, rotation, drops instead of failures, and the readers."""

from __future__ import annotations

import errno
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from ds01d.observe import audit
from ds01d.observe.audit import AuditLog, follow_events, read_events, tail


class Clock:
    """A controllable clock (seconds since the epoch)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_json_line_per_event_with_utc_time(tmp_path: Path) -> None:
    """Each record is one line with the standard fields, in order, and an ISO-8601 UTC time."""
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, clock=Clock(1_700_000_000.25)) as log:
        assert log.record(
            "decision",
            user="alice",
            uid=1001,
            endpoint="/containers/create",
            container="web",
            result="allow",
            reason="ok",
            changes=("memory 64g -> 32g",),
            request_id="r1",
        )
    (event,) = lines(log_path)
    assert event == {
        "time": "2023-11-14T22:13:20.250Z",
        "event": "decision",
        "user": "alice",
        "uid": 1001,
        "endpoint": "/containers/create",
        "container": "web",
        "result": "allow",
        "reason": "ok",
        "changes": ["memory 64g -> 32g"],
        "request_id": "r1",
    }
    assert list(event)[:4] == ["time", "event", "user", "uid"]


def test_unset_optional_fields_are_omitted_and_extras_cannot_clobber(tmp_path: Path) -> None:
    """None fields are left out; an extra named like a standard field is renamed, not merged."""
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, clock=Clock()) as log:
        log.record("policy_reload", user=None, uid=None, result="ok", time="forged")
    (event,) = lines(log_path)
    assert event["time"] != "forged" and event["extra_time"] == "forged"
    assert "endpoint" not in event and "container" not in event


def test_rotation_by_size_keeps_the_configured_number_of_backups(tmp_path: Path) -> None:
    """Past max_bytes the file moves to .1, .1 to .2 ...; the oldest beyond `backups` is gone."""
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, max_bytes=400, backups=2, clock=Clock()) as log:
        for i in range(40):
            log.record("decision", user="alice", uid=1001, reason=f"n{i:02d}")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 400
    events = list(read_events(log_path, backups=2))
    numbers = [int(e["reason"][1:]) for e in events]
    assert numbers == sorted(numbers)  # oldest first, across files
    assert numbers[-1] == 39 and numbers[0] > 0  # the oldest lines were rotated away


def test_zero_backups_truncates(tmp_path: Path) -> None:
    """With backups=0 the log is bounded by max_bytes alone."""
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, max_bytes=300, backups=0, clock=Clock()) as log:
        for i in range(30):
            log.record("decision", user="bob", uid=1002, reason=f"n{i}")
    assert [p.name for p in tmp_path.iterdir()] == ["audit.jsonl"]
    assert log_path.stat().st_size <= 300
    assert lines(log_path)[-1]["reason"] == "n29"


def test_full_disk_drops_and_counts_without_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """ENOSPC from the writer: record() still returns, drops are counted, one warning a minute."""
    drops: list[None] = []
    clock = Clock()
    log = AuditLog(tmp_path / "audit.jsonl", clock=clock, on_drop=lambda: drops.append(None))

    def full(data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(log, "_write", full)
    with caplog.at_level(logging.WARNING, logger="ds01.audit"):
        for _ in range(5):
            log.record("decision", user="alice", uid=1001, result="deny")
        assert log.flush()
        clock.now += 61
        log.record("decision", user="alice", uid=1001, result="deny")
        assert log.flush()
    assert log.dropped == 6 and len(drops) == 6
    warnings = [r for r in caplog.records if r.name == "ds01.audit"]
    assert len(warnings) == 2  # one at the first drop, one after a minute
    assert "No space left" in warnings[0].getMessage()
    assert "dropped 5 event(s)" in warnings[1].getMessage()

    monkeypatch.undo()  # the disk has space again: writing resumes
    log.record("decision", user="alice", uid=1001, result="allow")
    log.close()
    assert [e["result"] for e in lines(tmp_path / "audit.jsonl")] == ["allow"]


def test_short_write_leaves_a_torn_line_the_readers_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write cut short by a full disk counts as a drop; the next event starts on a new line."""
    log_path = tmp_path / "audit.jsonl"
    log = AuditLog(log_path, clock=Clock())
    real_write = AuditLog._write

    def half(self: AuditLog, data: bytes) -> int:
        return real_write(self, data[: len(data) // 2])

    monkeypatch.setattr(AuditLog, "_write", half)
    log.record("decision", user="alice", uid=1001, reason="torn")
    assert log.flush()
    monkeypatch.undo()
    log.record("decision", user="alice", uid=1001, reason="whole")
    log.close()
    assert log.dropped == 1
    assert [e["reason"] for e in read_events(log_path)] == ["whole"]


def test_full_queue_drops_instead_of_blocking(tmp_path: Path) -> None:
    """When the writer cannot keep up, record() returns False at once and counts the drop."""
    gate = threading.Event()
    log = AuditLog(tmp_path / "audit.jsonl", queue_size=2, clock=Clock())
    real_write = log._write

    def slow(data: bytes) -> int | None:
        gate.wait(5)
        return real_write(data)

    log._write = slow  # type: ignore[method-assign]
    results = [log.record("decision", user="u", uid=1, reason=str(i)) for i in range(10)]
    assert results.count(False) >= 6  # a batch of two in the writer, two queued at most
    assert log.dropped == results.count(False)
    gate.set()
    log.close()
    assert len(lines(tmp_path / "audit.jsonl")) == results.count(True)


def test_unserialisable_event_is_dropped_not_raised(tmp_path: Path) -> None:
    """A circular structure in `changes` is the log's problem, never the request's."""
    circular: list[Any] = []
    circular.append(circular)
    with AuditLog(tmp_path / "audit.jsonl", clock=Clock()) as log:
        assert log.record("decision", user="a", uid=1, changes=circular) is False
        assert log.record("decision", user="a", uid=1, changes={"path": Path("/x")})
    assert log.dropped == 1
    assert lines(tmp_path / "audit.jsonl")[0]["changes"] == {"path": "/x"}


def test_many_threads_recording_lose_nothing(tmp_path: Path) -> None:
    """Concurrent recorders: every event lands exactly once, each on its own intact line."""
    log_path = tmp_path / "audit.jsonl"
    log = AuditLog(log_path, max_bytes=64 * 1024, backups=50, queue_size=100_000, clock=Clock())
    start = threading.Barrier(16)

    def worker(n: int) -> None:
        start.wait()
        for i in range(500):
            log.record("decision", user=f"user{n}", uid=1000 + n, reason=f"{n}:{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert log.dropped == 0
    events = list(read_events(log_path, backups=50))
    assert len(events) == 16 * 500
    assert len({e["reason"] for e in events}) == 16 * 500
    for n in range(16):  # each thread's events stay in its own order
        mine = [int(e["reason"].split(":")[1]) for e in events if e["user"] == f"user{n}"]
        assert mine == list(range(500))


def test_records_after_close_are_dropped(tmp_path: Path) -> None:
    """close() flushes; anything recorded later is counted as dropped."""
    log = AuditLog(tmp_path / "audit.jsonl", clock=Clock())
    log.record("decision", user="a", uid=1)
    log.close()
    assert log.record("decision", user="a", uid=1) is False
    assert log.dropped == 1
    assert len(lines(tmp_path / "audit.jsonl")) == 1


def test_reopening_after_a_crash_mid_line_starts_a_new_line(tmp_path: Path) -> None:
    """A file left ending in half a line (a crash) does not swallow the next event."""
    log_path = tmp_path / "audit.jsonl"
    log_path.write_text('{"event":"decision","user":"a"}\n{"event":"deci')
    with AuditLog(log_path, clock=Clock()) as log:
        log.record("release", user="a", uid=1, container="web")
    assert [e["event"] for e in read_events(log_path)] == ["decision", "release"]


def test_tail_and_filters_span_rotated_files(tmp_path: Path) -> None:
    """tail(n) returns the last n matching events across files, oldest first."""
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, max_bytes=500, backups=10, clock=Clock()) as log:
        for i in range(30):
            log.record("decision", user="alice", uid=1, container=f"c{i % 3}", reason=str(i))
        assert log.flush()
        assert len(list(tmp_path.iterdir())) > 3
        last = log.tail(4, container="c1")
        assert [e["reason"] for e in last] == ["19", "22", "25", "28"]
        assert [e["reason"] for e in log.tail(2)] == ["28", "29"]
        odd = log.read_events(lambda e: int(e["reason"]) % 2 == 1, container="c0")
        assert [e["reason"] for e in odd] == ["3", "9", "15", "21", "27"]
    assert tail(log_path, 0) == []
    assert tail(tmp_path / "missing.jsonl", 5) == []


def test_follow_sees_new_events_across_a_rotation(tmp_path: Path) -> None:
    """follow_events yields appended events and keeps going when the file is rotated."""
    log_path = tmp_path / "audit.jsonl"
    log = AuditLog(log_path, max_bytes=300, backups=3, clock=Clock())
    log.record("decision", user="old", uid=1, reason="before")
    assert log.flush()
    stop = threading.Event()
    seen: list[str] = []
    arrived = threading.Semaphore(0)
    events = follow_events(log_path, poll_interval=0.01, stop=stop)

    def reader() -> None:
        for event in events:
            seen.append(event["reason"])
            arrived.release()

    thread = threading.Thread(target=reader)
    thread.start()
    threading.Event().wait(0.2)  # the follower opens the file and starts at its end
    for i in range(8):
        log.record("decision", user="new", uid=2, reason=str(i))
        assert log.flush()
        # One event at a time: a follower polls, so it can miss a file rotated twice
        # between two polls; with 50 MiB files that does not happen in practice.
        assert arrived.acquire(timeout=5)
    stop.set()
    thread.join(5)
    log.close()
    assert seen == [str(i) for i in range(8)]
    assert (tmp_path / "audit.jsonl.1").exists()  # it really rotated meanwhile


def test_format_time_is_utc_z() -> None:
    """Times are UTC with a Z suffix and milliseconds."""
    assert audit.format_time(0) == "1970-01-01T00:00:00.000Z"
