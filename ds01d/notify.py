"""Lifecycle warnings delivered where the user looks: their terminals, a file in the container,
and ``ds01 ps``.

Every delivery is best effort: a terminal that is gone or a container without ``/tmp`` must
never keep a warning from the other places, nor take the lifecycle loop down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from policy.lifecycle import Remove, Stop, Warn

log = logging.getLogger("ds01.notify")

NOTICE_FILE = "ds01-notice"  # under the container's /tmp
# A notice file the user let grow (or pointed at something big) is not appended to any more.
NOTICE_MAX_BYTES = 64 * 1024
# Terminal escapes in a message could repaint or reprogram the user's terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONSOLE = re.compile(r"^tty\d+$")


@dataclass(frozen=True)
class Notice:
    """One warning or stop as ``ds01 ps`` shows it."""

    at: float
    container: str
    kind: str  # "warn" or "stop"
    reason: str
    level: int | None
    stop_at: float | None
    message: str


@dataclass(frozen=True)
class Delivery:
    """Where a notice got to, for the log and tests."""

    terminals: int
    notice_file: bool


class Notifier:
    """Delivers lifecycle notices; ``dev`` and ``proc`` are injectable for tests."""

    def __init__(
        self,
        *,
        dev: str = "/dev",
        proc: str = "/proc",
        clock: Callable[[], float] = time.time,
        keep: int = 10,
    ) -> None:
        self.dev = Path(dev)
        self.proc = Path(proc)
        self.clock = clock
        self.keep = keep
        self._recent: dict[str, deque[Notice]] = {}

    def notify(
        self, action: Warn | Stop | Remove, *, user: str, uid: int | None, pid: int | None
    ) -> Delivery:
        """Tell ``user`` (``uid``) about ``action`` on a container whose init process is ``pid``."""
        if isinstance(action, Remove):
            kind, level, stop_at = "remove", None, None
        elif isinstance(action, Stop):
            kind, level, stop_at = "stop", None, None
        else:
            kind, level, stop_at = "warn", action.level, action.stop_at
        notice = Notice(
            self.clock(), action.container, kind, action.reason, level, stop_at, action.message
        )
        self._recent.setdefault(action.container, deque(maxlen=self.keep)).append(notice)
        text = _CONTROL.sub(" ", action.message)
        terminals = self.write_terminals(uid, text) if uid is not None else 0
        written = self.append_notice(pid, text) if pid is not None else False
        log.info(
            "told %s about %s %s of %s (%d terminal(s), notice file %s)",
            user,
            kind,
            action.reason,
            action.container[:12],
            terminals,
            "written" if written else "not written",
        )
        return Delivery(terminals, written)

    # ---- what ds01 ps shows --------------------------------------------------------------

    def recent(self, container_id: str) -> list[Notice]:
        """The last notices about a container, oldest first."""
        return list(self._recent.get(container_id, ()))

    def forget(self, container_id: str) -> None:
        self._recent.pop(container_id, None)

    def known(self) -> set[str]:
        return set(self._recent)

    # ---- terminals -----------------------------------------------------------------------

    def terminals_of(self, uid: int) -> Iterator[Path]:
        """Terminal devices owned by ``uid``: its ssh/tmux ptys and console logins.

        Ownership, not utmp: servers often keep no login records, and login, sshd and tmux
        all hand the user the pty they are typing in.
        """
        candidates = sorted((self.dev / "pts").glob("[0-9]*"))
        if uid != 0:  # root owns every unused console: those are nobody's session
            candidates += sorted(p for p in self.dev.glob("tty*") if _CONSOLE.match(p.name))
        for path in candidates:
            try:
                info = path.stat()
            except OSError:
                continue
            if info.st_uid == uid and stat.S_ISCHR(info.st_mode):
                yield path

    def tell_client(self, pid: int | None, uid: int, text: str) -> int:
        """Write ``text`` to the terminal the client process ``pid`` runs in (its controlling
        terminal, when ``uid`` owns it), else to each of the user's terminals.

        For a create waiting in the GPU queue: the Docker API gives its client no channel,
        but `docker run` (or `devcontainer up` behind it) runs in a terminal the user sees.
        """
        text = _CONTROL.sub(" ", text)
        tty = controlling_tty(self.proc, pid) if pid else None
        own = [p for p in self.terminals_of(uid) if _rdev(p) == tty] if tty else []
        return self.write_terminals(uid, text, own or None)

    def write_terminals(self, uid: int, text: str, paths: list[Path] | None = None) -> int:
        """Write ``text`` to each of the user's terminals (or ``paths``); how many took it."""
        # \r\n: the terminal may be in raw mode (an editor); a bell would be rude at night.
        data = f"\r\n{text}\r\n".encode("utf-8", "replace")
        reached = 0
        for path in self.terminals_of(uid) if paths is None else paths:
            try:
                # O_NONBLOCK: a stuck terminal must not stall the loop. O_NOCTTY: never adopt it.
                fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                os.write(fd, data)
                reached += 1
            except OSError:
                pass
            finally:
                os.close(fd)
        return reached

    # ---- the notice file inside the container --------------------------------------------

    def append_notice(self, pid: int, text: str) -> bool:
        """Append ``text`` to ``/tmp/ds01-notice`` inside the container of ``pid``.

        The container's files are the user's: ``/tmp`` or the file may be symlinks aimed at
        the host (they would resolve against *our* root), a FIFO or a device node. So every
        step refuses to follow links and only a regular file is written.
        """
        line = (text + "\n").encode("utf-8", "replace")
        tmp = fd = -1
        try:
            tmp = open_container_tmp(self.proc, pid)
            fd = os.open(
                NOTICE_FILE,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK,
                0o644,
                dir_fd=tmp,
            )
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > NOTICE_MAX_BYTES:
                return False
            os.write(fd, line)
            return True
        except OSError as exc:
            log.debug("no notice file for pid %s: %s", pid, exc)
            return False
        finally:
            for opened in (fd, tmp):
                if opened >= 0:
                    with contextlib.suppress(OSError):
                        os.close(opened)


def controlling_tty(proc: str | os.PathLike[str], pid: int) -> int | None:
    """The device number of process ``pid``'s controlling terminal; None when it has none."""
    try:
        stat_line = (Path(proc) / str(pid) / "stat").read_text()
        # "pid (comm) state ppid pgrp session tty_nr ...": comm may hold spaces and parens.
        tty_nr = int(stat_line.rsplit(")", 1)[1].split()[4])
    except (OSError, ValueError, IndexError):
        return None
    return tty_nr or None


def _rdev(path: Path) -> int | None:
    try:
        return path.stat().st_rdev
    except OSError:
        return None


def open_container_tmp(proc: str | os.PathLike[str], pid: int) -> int:
    """A directory fd of ``/tmp`` inside the container whose init process is ``pid``.

    ``/proc/<pid>/root`` is the container's root; ``tmp`` under it must be a real directory,
    not a link (an absolute link would resolve on the host). The caller closes the fd.
    """
    root = os.open(Path(proc) / str(pid) / "root", os.O_RDONLY | os.O_DIRECTORY)
    try:
        return os.open("tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root)
    finally:
        os.close(root)
