"""The audit log: one JSON line per decision, allocation, release, lifecycle or admin action.

Recording never blocks or fails a request: ``record`` only serialises the event and puts it on
a bounded in-memory queue; a background thread writes and rotates the file. When the queue is
full or the disk is (``ENOSPC``, any ``OSError``), the event is dropped and counted, and a
warning is logged at most once a minute. The readers (``read_events``, ``tail``,
``follow_events``) serve ``ds01 why <container>`` and ``ds01 events`` and read the rotated
files too.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("ds01.audit")

Event = dict[str, Any]
Match = Callable[[Event], bool]

DEFAULT_MAX_BYTES = 50 * 2**20
DEFAULT_BACKUPS = 5
DEFAULT_QUEUE_SIZE = 10_000
# The log names users and containers: readable by root and the admin group, not by everyone.
FILE_MODE = 0o640
WARN_INTERVAL = 60.0  # seconds between two "events are being dropped" warnings

# Keys every line has, in this order, so `jq` users and `grep` users both find them easily.
_CORE = ("time", "event", "user", "uid", "endpoint", "container", "result", "reason", "changes")


def format_time(timestamp: float) -> str:
    """ISO-8601 UTC with milliseconds: ``2025-03-01T12:00:00.000Z``."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rotated_paths(path: str | os.PathLike[str], backups: int) -> list[Path]:
    """The log's files, oldest first: ``path.N`` ... ``path.1``, ``path``."""
    base = Path(path)
    return [base.with_name(f"{base.name}.{i}") for i in range(backups, 0, -1)] + [base]


class _Flush:
    """A marker the writer sets once everything queued before it is written."""

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class AuditLog:
    """An append-only JSON-lines file with size-based rotation and a non-blocking writer.

    ``on_drop`` is called (from whichever thread dropped the event, with no arguments) once
    per dropped event, so metrics can count drops: ``AuditLog(..., on_drop=metrics.audit_dropped)``.
    It must be cheap and must not raise; if it does, the error is swallowed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        clock: Callable[[], float] = time.time,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        if max_bytes <= 0 or backups < 0 or queue_size <= 0:
            raise ValueError("max_bytes and queue_size must be positive, backups not negative")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.clock = clock
        self.on_drop = on_drop
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._dropped = 0
        self._unreported = 0  # drops since the last warning
        self._last_warning: float | None = None
        self._closed = False
        self._file: Any = None  # an unbuffered binary file, opened lazily by the writer
        self._size = 0
        self._torn = False  # the last write was cut short: start the next one on a new line
        self._thread = threading.Thread(target=self._run, name="ds01-audit", daemon=True)
        self._thread.start()

    # -- the caller's side: cheap, never raises, never waits -------------------------------

    @property
    def dropped(self) -> int:
        """Events dropped so far (queue full, disk full, unserialisable, or after close)."""
        return self._dropped

    def record(
        self,
        event: str,
        *,
        user: str | None,
        uid: int | None,
        endpoint: str | None = None,
        container: str | None = None,
        result: str | None = None,
        reason: str | None = None,
        changes: Any = None,
        **extra: Any,
    ) -> bool:
        """Queue one event; True if queued, False if dropped. Never raises, never blocks.

        ``event`` names what happened (``decision``, ``allocate``, ``release``, ``stop``,
        ``remove``, ``policy_reload``, ``admin``...). Optional fields left as None are omitted
        from the line; ``extra`` keys follow the standard ones (a key that clashes with a
        standard one is stored as ``extra_<key>``).
        """
        try:
            fields: Event = {
                "time": format_time(self.clock()),
                "event": event,
                "user": user,
                "uid": uid,
            }
            optional = {
                "endpoint": endpoint,
                "container": container,
                "result": result,
                "reason": reason,
                "changes": _jsonable(changes),
            }
            fields.update((k, v) for k, v in optional.items() if v is not None)
            for key, value in extra.items():
                fields[f"extra_{key}" if key in _CORE else key] = value
            # Serialise now: the caller may mutate its objects after we return.
            line = json.dumps(fields, ensure_ascii=False, default=str, separators=(",", ":"))
            data = (line + "\n").encode("utf-8", "backslashreplace")
        except Exception:  # a circular structure or a broken __str__: never the caller's problem
            self._drop("an event could not be serialised")
            return False
        if self._closed:
            self._drop("the audit log is closed")
            return False
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            self._drop("the audit queue is full (the disk may be slow)")
            return False
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything recorded so far is written (or dropped); False on timeout."""
        if not self._thread.is_alive():
            return True
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the writer and close the file; later records are dropped."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- readers (for `ds01 why` and `ds01 events`) -----------------------------------------

    def read_events(self, match: Match | None = None, **equals: Any) -> Iterator[Event]:
        """Events from the rotated files and the current one, oldest first."""
        return read_events(self.path, match, backups=self.backups, **equals)

    def tail(self, n: int, match: Match | None = None, **equals: Any) -> list[Event]:
        """The last ``n`` matching events, oldest first."""
        return tail(self.path, n, match, backups=self.backups, **equals)

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            # Drain what is already there so one flush covers many events.
            while len(batch) < 1024:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = False
            for entry in batch:
                if entry is _STOP:
                    stop = True
                elif isinstance(entry, _Flush):
                    entry.done.set()
                elif isinstance(entry, bytes):
                    self._write_event(entry)
            if stop:
                self._close_file()
                # Anything recorded between close() and the stop marker is still written above;
                # whatever raced in after it is dropped and counted, never silently lost.
                while True:
                    try:
                        leftover = self._queue.get_nowait()
                    except queue.Empty:
                        return
                    if isinstance(leftover, _Flush):
                        leftover.done.set()
                    elif isinstance(leftover, bytes):
                        self._drop("the audit log is closed")

    def _write_event(self, data: bytes) -> None:
        try:
            if self._file is None:
                self._open()
            if self._torn:
                data = b"\n" + data
            if self._size > 0 and self._size + len(data) > self.max_bytes:
                self._rotate()
            written = self._write(data)
        except OSError as exc:  # ENOSPC, EDQUOT, EIO, a missing directory: drop, keep serving
            # A raw write that raises wrote nothing, so the line state is unchanged.
            self._drop(f"cannot write {self.path}: {exc.strerror or exc}")
            return
        self._size += written or 0
        if written is not None and written < len(data):
            # A short write leaves half a line: the reader skips it, the next event starts fresh.
            self._torn = True
            self._drop(f"short write to {self.path} (disk full?)")
        else:
            self._torn = False

    def _write(self, data: bytes) -> int | None:
        """One ``write`` of an unbuffered O_APPEND file (tests patch this to fail)."""
        return self._file.write(data)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        self._file = os.fdopen(fd, "ab", buffering=0)
        self._size = os.fstat(fd).st_size
        if self._size:
            # A previous run may have died mid-line; don't glue our first event onto it.
            with open(self.path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                self._torn = existing.read(1) != b"\n"

    def _rotate(self) -> None:
        self._close_file()
        try:
            files = rotated_paths(self.path, self.backups)
            if self.backups == 0:
                self.path.unlink(missing_ok=True)
            else:
                files[0].unlink(missing_ok=True)
                for older, newer in itertools.pairwise(files):
                    if newer.exists():
                        newer.rename(older)
        except OSError as exc:
            # Better a log over its size than a lost event: keep appending to the current file.
            self._warn(f"cannot rotate {self.path}: {exc.strerror or exc}")
        self._open()

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    # -- drops -------------------------------------------------------------------------------

    def _drop(self, why: str) -> None:
        with self._lock:
            self._dropped += 1
            self._unreported += 1
        self._warn(why)
        if self.on_drop is not None:
            with contextlib.suppress(Exception):
                self.on_drop()

    def _warn(self, why: str) -> None:
        # At most one warning a minute: a full disk must not also flood the journal.
        with self._lock:
            now = self.clock()
            if self._last_warning is not None and now - self._last_warning < WARN_INTERVAL:
                return
            count, self._unreported, self._last_warning = self._unreported, 0, now
        if count:
            log.warning(
                "audit: dropped %d event(s): %s (%d dropped in total)", count, why, self._dropped
            )
        else:
            log.warning("audit: %s", why)


def _jsonable(changes: Any) -> Any:
    # Decisions carry changes as a tuple of strings; JSON wants a list.
    if isinstance(changes, tuple | set | frozenset):
        return list(changes)
    return changes


# -- reading ---------------------------------------------------------------------------------


def _matcher(match: Match | None, equals: Mapping[str, Any]) -> Match:
    def ok(event: Event) -> bool:
        if any(event.get(key) != value for key, value in equals.items()):
            return False
        return match is None or bool(match(event))

    return ok


def _events_in(file: Path) -> Iterator[Event]:
    try:
        handle = open(file, "rb")  # noqa: SIM115 - closed below, generator-friendly
    except FileNotFoundError:
        return
    with handle:
        for raw in handle:
            event = _parse(raw)
            if event is not None:
                yield event


def _parse(raw: bytes) -> Event | None:
    # Torn lines (a disk that filled up mid-write) and foreign text are skipped, not fatal.
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def read_events(
    path: str | os.PathLike[str],
    match: Match | None = None,
    *,
    backups: int = DEFAULT_BACKUPS,
    **equals: Any,
) -> Iterator[Event]:
    """Matching events from ``path.N`` ... ``path.1`` then ``path``, oldest first.

    ``equals`` are field=value filters (``container="web"``, ``user="alice"``); ``match`` is
    any predicate on the event dict. Unparseable lines are skipped.
    """
    ok = _matcher(match, equals)
    for file in rotated_paths(path, backups):
        for event in _events_in(file):
            if ok(event):
                yield event


def tail(
    path: str | os.PathLike[str],
    n: int,
    match: Match | None = None,
    *,
    backups: int = DEFAULT_BACKUPS,
    **equals: Any,
) -> list[Event]:
    """The last ``n`` matching events, oldest first (reads newest files first, stops early)."""
    if n <= 0:
        return []
    ok = _matcher(match, equals)
    newest_first: list[Event] = []
    for file in reversed(rotated_paths(path, backups)):
        found = [e for e in _events_in(file) if ok(e)]
        newest_first.extend(reversed(found))
        if len(newest_first) >= n:
            break
    return list(reversed(newest_first[:n]))


def follow_events(
    path: str | os.PathLike[str],
    match: Match | None = None,
    *,
    poll_interval: float = 0.5,
    stop: threading.Event | None = None,
    from_start: bool = False,
    **equals: Any,
) -> Iterator[Event]:
    """Yield events as they are appended (``ds01 events --follow``); survives rotation.

    Starts at the end of the current file unless ``from_start``; returns when ``stop`` is set.
    """
    ok = _matcher(match, equals)
    base = Path(path)
    stop = stop or threading.Event()
    handle = None
    inode = None
    pending = b""
    try:
        while not stop.is_set():
            if handle is None:
                try:
                    handle = open(base, "rb")  # noqa: SIM115 - closed in finally / on rotation
                except FileNotFoundError:
                    stop.wait(poll_interval)
                    continue
                inode = os.fstat(handle.fileno()).st_ino
                if not from_start:
                    handle.seek(0, os.SEEK_END)
                from_start = True  # after a rotation, the new file is read from its start
            chunk = handle.read()
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    event = _parse(raw)
                    if event is not None and ok(event):
                        yield event
                continue
            try:
                current = os.stat(base).st_ino
            except FileNotFoundError:
                current = None
            if current != inode:
                # Rotated: what was appended just before the rename is still in the old file.
                pending += handle.read()
                for raw in pending.split(b"\n"):
                    event = _parse(raw)
                    if event is not None and ok(event):
                        yield event
                handle.close()
                handle, pending = None, b""
                continue
            stop.wait(poll_interval)
    finally:
        if handle is not None:
            handle.close()
