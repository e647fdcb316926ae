"""A ledger of every change the test harness makes to the host, undone when the last user goes.

Tests need host state (Unix users and groups, ``/ds01/<user>`` cgroups, ``o+x`` on the
checkout's parents, ``/tmp/ds01*`` folders, plugin spec files). Each such thing is *claimed*
here when it is made or reused, and the ledger (a JSON file under /var/lib, so that a run that
dies is cleaned up by the next one) keeps, per thing, the test sessions that hold it. When a
session ends it lets go of its claims; a thing that nobody alive holds any more is undone, in
reverse order of creation. Sessions run in parallel on one host (several helpers, nested runs),
so a thing shared by two sessions (the e2e users) stays until the second one ends.

Only what the suite made is ever undone: a thing is entered in the ledger when it did not exist
before, or (users only) when it carries the suite's marker (GECOS ``ds01-test``), which only
``ensure_user`` writes. A failing undo step is logged and the rest go on.

A session is alive while its process holds the abstract Unix socket
``@ds01-tests-session-<pid>`` (the kernel drops it when the process dies, so a killed run never
looks alive); another abstract socket serves as the lock around the ledger.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("ds01.tests.host_ledger")

LEDGER = Path(os.environ.get("DS01_TEST_LEDGER", "/var/lib/ds01-tests/ledger.json"))
USER_MARKER = "ds01-test"
_LOCK_NAME = "ds01-tests-host-lock"
_SESSION_PREFIX = "ds01-tests-session-"
CGROUP_ROOT = Path("/sys/fs/cgroup")

_session: socket.socket | None = None


def _enabled() -> bool:
    """Only root changes the host (and only root can write the ledger)."""
    return os.geteuid() == 0


def _session_id() -> str:
    return str(os.getpid())


def start_session() -> None:
    """Mark this process as a live test session (idempotent)."""
    global _session
    if _session is not None or not _enabled():
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(f"\0{_SESSION_PREFIX}{_session_id()}")
    _session = sock
    # A process that uses the harness outside pytest (a demo) still lets go when it exits.
    atexit.register(end_session)


def live_sessions() -> set[str]:
    """Ids of the test sessions whose process is alive (from /proc/net/unix)."""
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()
    except OSError:
        return set()
    marker = "@" + _SESSION_PREFIX
    return {
        line.rsplit(marker, 1)[1].strip()
        for line in lines[1:]
        if line.rstrip().split(" ")[-1].startswith(marker)
    }


@contextlib.contextmanager
def _host_lock(timeout: float = 300.0) -> Iterator[None]:
    """Serialise ledger changes (and the creation they record) across processes."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.bind(f"\0{_LOCK_NAME}")
            break
        except OSError:
            if time.monotonic() > deadline:
                sock.close()
                raise TimeoutError("another test session holds the host ledger lock") from None
            time.sleep(0.05)
    try:
        yield
    finally:
        sock.close()


def _load() -> list[dict[str, Any]]:
    try:
        return json.loads(LEDGER.read_text())["entries"]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError) as exc:
        log.warning("host ledger %s unreadable (%s); starting a new one", LEDGER, exc)
        return []


def _save(entries: list[dict[str, Any]]) -> None:
    if not entries:
        LEDGER.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            LEDGER.parent.rmdir()
        return
    LEDGER.parent.mkdir(parents=True, exist_ok=True)
    tmp = LEDGER.with_suffix(".tmp")
    tmp.write_text(json.dumps({"entries": entries}, indent=1))
    tmp.replace(LEDGER)


def _find(entries: list[dict[str, Any]], kind: str, target: str) -> dict[str, Any] | None:
    return next((e for e in entries if e["kind"] == kind and e["target"] == target), None)


def claim(
    kind: str,
    target: str | os.PathLike[str],
    make: Callable[[], bool] | None = None,
    **data: Any,
) -> bool:
    """Hold `kind`/`target` for this session; run `make` (under the lock) to create it.

    `make` returns True when it created the thing (it is then entered as the suite's), False
    when it found it already there. A thing already in the ledger only gains this session as a
    holder; one that exists but is not in the ledger is not the suite's and is never recorded.
    Returns whether the thing is the suite's (in the ledger).
    """
    target = os.fspath(target)
    if not _enabled():
        if make is not None:
            make()
        return False
    start_session()
    with _host_lock():
        entries = _load()
        entry = _find(entries, kind, target)
        created = make() if make is not None else True
        if entry is None and not created:
            return False
        if entry is None:
            entry = {"kind": kind, "target": target, "holders": [], **data}
            entries.append(entry)
        if _session_id() not in entry["holders"]:
            entry["holders"].append(_session_id())
        _save(entries)
        return True


def is_claimed(kind: str, target: str | os.PathLike[str]) -> bool:
    """Whether the ledger holds `kind`/`target` (some session still uses it)."""
    if not _enabled():
        return False
    with _host_lock():
        return _find(_load(), kind, os.fspath(target)) is not None


def release(kind: str, target: str | os.PathLike[str]) -> None:
    """Let go of one claim now (e.g. at a fixture's end); undone if nobody else holds it."""
    if not _enabled():
        return
    _finish(lambda e: e["kind"] == kind and e["target"] == os.fspath(target))


def end_session() -> list[str]:
    """Let go of all this session's claims; undo what no live session holds. Returns failures."""
    global _session
    if not _enabled():
        return []
    failures = _finish(lambda e: True)
    if _session is not None:
        _session.close()
        _session = None
    return failures


def _finish(mine: Callable[[dict[str, Any]], bool]) -> list[str]:
    """Drop this session's holds on matching entries and dead sessions' holds on all, then
    undo every entry nobody holds, newest first. Failures are logged and kept."""
    failures: list[str] = []
    me = _session_id()
    with _host_lock():
        alive = live_sessions()
        if _session is not None:
            alive.add(me)
        entries = _load()
        for entry in entries:
            entry["holders"] = [
                h for h in entry["holders"] if h in alive and not (h == me and mine(entry))
            ]
        kept = []
        for entry in reversed(entries):
            if entry["holders"]:
                kept.append(entry)
                continue
            try:
                UNDO[entry["kind"]](entry)
            except Exception as exc:  # one failed step must not stop the rest
                message = f"undo {entry['kind']} {entry['target']}: {type(exc).__name__}: {exc}"
                log.warning("%s", message)
                failures.append(message)
        _save(list(reversed(kept)))
    return failures


# --- what each kind of thing is, and how it is undone ----------------------------------------


def is_marked_user(name: str) -> bool:
    """Whether `name` is a Unix user the test suite created (its GECOS is the marker)."""
    try:
        return pwd.getpwnam(name).pw_gecos == USER_MARKER
    except KeyError:
        return False


def _undo_user(entry: dict[str, Any]) -> None:
    name = entry["target"]
    if not is_marked_user(name):
        return  # gone already, or no longer ours: never delete someone else's user
    # userdel exits 12 when it cannot remove the mail spool, which is harmless here.
    result = subprocess.run(["userdel", "-r", "-f", name], capture_output=True, text=True)
    if result.returncode not in (0, 12):
        raise RuntimeError(f"userdel {name} failed ({result.returncode}): {result.stderr.strip()}")


def _undo_group(entry: dict[str, Any]) -> None:
    name = entry["target"]
    result = subprocess.run(["getent", "group", name], capture_output=True, text=True)
    if result.returncode != 0:
        return
    result = subprocess.run(["groupdel", name], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"groupdel {name} failed ({result.returncode}): {result.stderr.strip()}")


def _undo_mode(entry: dict[str, Any]) -> None:
    path = Path(entry["target"])
    current = stat.S_IMODE(path.stat().st_mode)
    original = int(entry["mode"])
    # Put the original back only if nobody changed the mode in a way of their own since.
    if current == original | int(entry["added"]):
        os.chmod(path, original)


def _undo_cgroup(entry: dict[str, Any]) -> None:
    path = Path(entry["target"])
    if not path.is_dir():
        return
    # rmdir only ever removes an empty cgroup: one with tasks or children is refused (EBUSY).
    # Empty children (a container cgroup runc did not remove) are the suite's too.
    children = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for child in children:
        with contextlib.suppress(OSError):
            child.rmdir()
    for _ in range(20):  # the kernel lets go of a cgroup a moment after its last task exits
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    path.rmdir()


def _unmount_under(root: str) -> None:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 5:
            point = fields[4].encode().decode("unicode_escape")
            if point == root or point.startswith(root + "/"):
                points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _undo_path(entry: dict[str, Any]) -> None:
    path = entry["target"]
    if os.environ.get("DS01_KEEP_TMP") and os.path.isdir(path):
        log.warning("DS01_KEEP_TMP: kept %s", path)  # for reading the logs of a failed run
        return
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        _unmount_under(path)
        shutil.rmtree(path)


def _undo_dir(entry: dict[str, Any]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(entry["target"])  # only while empty: what others put there stays


UNDO: dict[str, Callable[[dict[str, Any]], None]] = {
    "dir": _undo_dir,
    "user": _undo_user,
    "group": _undo_group,
    "mode": _undo_mode,
    "cgroup": _undo_cgroup,
    "path": _undo_path,
}


# --- claims the harness makes ----------------------------------------------------------------


def temp_dir(prefix: str = "ds01-") -> Path:
    """A fresh directory under /tmp (short, for unix sockets), removed when the session ends."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    claim("path", path)
    return path


def claim_path(path: str | os.PathLike[str]) -> None:
    """Record a file or folder the suite just made (removed when nobody holds it)."""
    claim("path", path)


def make_dirs(path: Path) -> None:
    """``mkdir -p path``; each folder it creates is removed again (if empty) at the end."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for directory in reversed(missing):
        claim("dir", directory, make=functools.partial(_mkdir, directory))


def _absent(path: Path) -> bool:
    return not path.exists()


def _mkdir(path: Path) -> bool:
    try:
        path.mkdir()
    except FileExistsError:
        return False
    return True


def add_mode_bits(path: Path, bits: int) -> None:
    """Add permission `bits` to `path` if it lacks them; the original mode comes back later."""

    def make() -> bool:
        original = stat.S_IMODE(path.stat().st_mode)
        if original & bits == bits:
            return False
        os.chmod(path, original | bits)
        data["mode"] = original
        return True

    data: dict[str, Any] = {}
    if not _enabled():
        make()
        return
    start_session()
    with _host_lock():
        entries = _load()
        entry = _find(entries, "mode", os.fspath(path))
        if entry is None and not make():
            return
        if entry is None:
            entry = {"kind": "mode", "target": os.fspath(path), "holders": [], "added": bits}
            entry.update(data)
            entries.append(entry)
        if _session_id() not in entry["holders"]:
            entry["holders"].append(_session_id())
        _save(entries)


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy: each v1 one (named ones too) and v2's root."""
    if not CGROUP_ROOT.is_dir():
        return []
    points = [CGROUP_ROOT] if (CGROUP_ROOT / "cgroup.procs").exists() else []
    for child in sorted(CGROUP_ROOT.iterdir()):
        if child.is_dir() and not child.is_symlink() and (child / "cgroup.procs").exists():
            points.append(child)
    return points


def claim_cgroups(relative: list[str]) -> None:
    """Claim cgroup dirs (``ds01``, ``ds01/<user>``) in every hierarchy, parents first.

    Called before the thing that makes them (ds01d) starts: those that do not exist yet are
    the suite's to remove; those that do are left alone unless the ledger already has them.
    """
    for point in cgroup_hierarchies():
        for rel in relative:
            path = point / rel
            claim("cgroup", path, make=functools.partial(_absent, path))


def ensure_claimed_user(name: str, create: Callable[[], None]) -> None:
    """Claim user `name`: create it (marked) if missing, adopt it if it carries the marker."""

    def make() -> bool:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            create()
            return True
        return entry.pw_gecos == USER_MARKER

    claim("user", name, make=make)


def ensure_claimed_group(name: str, create: Callable[[], None]) -> None:
    """Claim group `name`: create it if missing (then it is the suite's to delete)."""
    import grp

    def make() -> bool:
        try:
            grp.getgrnam(name)
        except KeyError:
            create()
            return True
        return False

    claim("group", name, make=make)


def ds01_cgroups() -> set[Path]:
    """DS01's cgroup dirs now (``ds01*`` and one level below, in every hierarchy)."""
    found: set[Path] = set()
    for point in cgroup_hierarchies():
        for top in point.glob("ds01*"):
            if top.is_dir():
                found.add(top)
                found.update(p for p in top.iterdir() if p.is_dir())
    return found


def claim_new_cgroups(before: set[Path]) -> None:
    """Claim the DS01 cgroup dirs that appeared since `before` (ds01d made them for tests).

    Parents first, so that undoing newest-first removes children before their parent.
    """
    for path in sorted(ds01_cgroups() - before, key=lambda p: len(p.parts)):
        claim("cgroup", path)


def adopt_legacy(users: list[str], groups: list[str]) -> list[str]:
    """Mark and clean up test users and groups that runs before the ledger left (no marker).

    For a host whose earlier test runs predate this ledger: the caller names them. A user is
    taken only with an empty GECOS (as ``useradd`` without ``-c`` leaves it); its ``ds01``
    cgroups go with it. Refused while another test session is alive (it may be using them).
    """
    start_session()
    others = live_sessions() - {_session_id()}
    if others:
        raise RuntimeError(f"test sessions {sorted(others)} are running; try again later")
    for point in cgroup_hierarchies():  # a /ds01 that holds only these users' dirs: theirs too
        parent = point / "ds01"
        if parent.is_dir() and {p.name for p in parent.iterdir() if p.is_dir()} <= set(users):
            claim("cgroup", parent)
    for name in users:
        try:
            if pwd.getpwnam(name).pw_gecos != "":
                continue
        except KeyError:
            continue
        subprocess.run(["usermod", "-c", USER_MARKER, name], check=True)
        claim("user", name)
        for point in cgroup_hierarchies():
            if (point / "ds01" / name).is_dir():
                claim("cgroup", point / "ds01" / name)
    for name in groups:
        if subprocess.run(["getent", "group", name], capture_output=True).returncode == 0:
            claim("group", name)
    return end_session()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Clean test users/groups older runs left.")
    parser.add_argument("--users", nargs="*", default=[])
    parser.add_argument("--groups", nargs="*", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    for failure in adopt_legacy(args.users, args.groups):
        print(failure)
