"""Per-user parent cgroups on the host: created, limited, read back and removed (root only).

Every DS01 container of a user is created with ``HostConfig.CgroupParent`` set to the user's
parent (``policy.slices.cgroup_parent``); the kernel then enforces the user's ``aggregate``
limits on all their containers together.

- cgroupfs driver (:class:`CgroupfsManager`): ds01d creates ``/ds01/<user>`` itself and writes
  the limits into the kernel files, cgroup v1 (one hierarchy per controller, found in
  /proc/self/mountinfo) or v2 (one unified tree).
- systemd driver (:class:`SystemdSliceManager`): ds01d writes ``ds01-<group>-<user>.slice``
  units (plus their parent slices) and runs ``systemctl daemon-reload``.

Facts this relies on (checked against the kernel, runc 1.1 and systemd, see the tests):

- runc (dockerd 20.10, cgroupfs) creates a container's cgroup at ``<parent>/<id>`` in every
  mounted v1 hierarchy, creating missing parents on the way; for cpuset it also copies
  ``cpuset.cpus``/``cpuset.mems`` into parents whose values are empty. Pre-creating the parent is
  therefore safe; DS01 copies the cpuset values itself all the same, so a parent it made is
  never left unusable (an empty cpuset refuses tasks with ENOSPC).
- CFS bandwidth is hierarchical. In v1 the kernel refuses (EINVAL) a child quota above its
  parent's, so a container asking for more ``--cpus`` than the user's aggregate fails to start,
  and lowering the aggregate below a running container's ``--cpus`` is refused; v2 clamps.
- Lowering memory below current use: v1 reclaims what it can and otherwise refuses (EBUSY);
  v2 would reclaim and then OOM-kill, so DS01 does not write a ``memory.max`` below
  ``memory.current``. Either way the old limit stays, a warning says so, and the next
  ensure/refresh tries again. Containers are never restarted for a policy change.
- ``memory.memsw.limit_in_bytes`` must stay >= ``memory.limit_in_bytes``, so the two are written
  in the order that keeps that true.
- pids.max counts threads and unreaped zombies, and runc's own init (a Go program, several
  threads) needs room: a user at the limit cannot even ``docker exec`` into their containers.
- v1 counts OOM kills and refused forks only in the cgroup the process ran in (the container's),
  v2 also in the parent; :meth:`CgroupfsManager.usage` sums v1's over the user's subtree.
- systemd re-applies the cgroup settings of every active unit after ``daemon-reload`` (units are
  serialised and deserialised, and deserialising invalidates their realised cgroup settings), so
  a changed slice file reaches running containers without ``set-property``. ``set-property``
  would also leave drop-ins in system.control that shadow later edits of the unit file.

Nothing here may take the daemon down: :class:`UserCgroups` (what the daemon calls) logs and
returns problems instead of raising.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from policy.build_cgroup import (
    BUILD_CGROUPFS_PARENT,
    BUILD_SLICE,
    build_slice_text,
    buildkit_cgroup,
)
from policy.identity import Identity
from policy.limits import Limits
from policy.slices import (
    CGROUPFS_ROOT,
    SLICE_PREFIX,
    cgroup_parent,
    cgroupfs_dir_name,
    cgroupfs_settings,
    cgroupfs_user_from_dir,
    controller_of,
    parse_slice_unit_name,
    slice_unit_name,
    slice_units,
)

log = logging.getLogger("ds01.cgroups")

PARENT = CGROUPFS_ROOT.strip("/")
# Controllers whose files DS01 writes or reads; every other v1 hierarchy just gets the directory.
LIMIT_CONTROLLERS = ("cpu", "memory", "pids")
_V2_CONTROLLERS = ("cpu", "memory", "pids")
# v1 controllers when /proc/cgroups cannot be read.
_KNOWN_V1 = frozenset(
    {
        "cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer", "net_cls",
        "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc",
    }
)  # fmt: skip
UNIFIED = "unified"  # key of a hybrid host's cgroup2 mount among the v1 hierarchies
_UNLIMITED = 1 << 62  # anything at or above this is "no limit" (v1 prints 9223372036854771712)


class CgroupError(RuntimeError):
    """The user's parent cgroup could not be set up at all (message says why and what to do)."""


def cgroup_version(root: str | os.PathLike[str] = "/sys/fs/cgroup") -> int:
    """2 when ``root`` is a unified (cgroup2) mount, else 1."""
    return 2 if os.path.exists(os.path.join(root, "cgroup.controllers")) else 1


def kernel_controllers(proc_cgroups: str = "/proc/cgroups") -> frozenset[str]:
    """The v1 controllers the kernel has and enables (first column of /proc/cgroups)."""
    try:
        with open(proc_cgroups) as f:
            lines = f.read().splitlines()
    except OSError:
        return _KNOWN_V1
    names = set()
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and not line.startswith("#") and fields[3] == "1":
            names.add(fields[0])
    return frozenset(names) or _KNOWN_V1


def _unescape_mount(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \040, \011, \012, \134.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_v1_mounts(mountinfo: str, controllers: Iterable[str] = _KNOWN_V1) -> dict[str, str]:
    """controller -> mount point of each cgroup v1 hierarchy in a mountinfo text.

    Co-mounted controllers (``cpu,cpuacct``) map to the same point; named hierarchies appear as
    ``name=systemd``, a hybrid host's cgroup2 mount as ``unified``. The first mount of a
    hierarchy wins, as runc's lookup does.
    """
    known = set(controllers)
    out: dict[str, str] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        point = _unescape_mount(fields[4])
        if tail[0] == "cgroup2":
            # Hybrid hosts also mount the unified tree (controller-less, e.g. .../unified);
            # runc puts containers there too, so it is one more hierarchy to create and clean.
            out.setdefault(UNIFIED, point)
            continue
        for option in tail[2].split(","):
            if option in known or option.startswith("name="):
                out.setdefault(option, point)
    return out


def v1_mounts(
    mountinfo: str = "/proc/self/mountinfo", proc_cgroups: str = "/proc/cgroups"
) -> dict[str, str]:
    """controller -> mount point of this host's cgroup v1 hierarchies."""
    with open(mountinfo) as f:
        return parse_v1_mounts(f.read(), kernel_controllers(proc_cgroups))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _keyed(text: str | None, key: str) -> int | None:
    """The value of ``key`` in a flat-keyed file (cpu.stat, memory.events, pids.events)."""
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return _int(value.strip())
    return None


def _subtree_sum(top: Path | None, file: str, key: str) -> int | None:
    """``key`` of ``file`` summed over ``top`` and every cgroup below it (None: no ``top``)."""
    if top is None or not top.is_dir():
        return None
    total = 0
    for directory in (top, *(p for p in top.rglob("*") if p.is_dir())):
        total += _keyed(_read(directory / file), key) or 0
    return total


def _usage(
    memory: int | None, pids: int | None, cpu: float | None, oom: int | None, refused: int | None
) -> dict[str, Any]:
    return {
        "memory": memory,
        "pids": pids,
        "cpu_seconds": None if cpu is None else round(cpu, 3),
        "oom_kills": oom,
        "forks_refused": refused,
    }


def _as_limit(value: str | None) -> float:
    """A memory limit as a number; -1, "max" and v1's huge "unlimited" all mean infinity."""
    number = _int(value)
    if number is None or number < 0 or number >= _UNLIMITED:
        return float("inf")
    return float(number)


def _why(exc: OSError, name: str) -> str:
    """A plain-words reason for a refused write to a cgroup file."""
    if exc.errno == errno.EBUSY and name.startswith("memory."):
        return "the user's containers already use more than that"
    if exc.errno == errno.EINVAL and name.startswith("cpu."):
        return (
            "a running container of the user has a higher CPU limit (--cpus) than this, and "
            "cgroup v1 refuses a parent quota below a child's"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{exc.strerror}: ds01d must run as root with a writable cgroup tree"
    return exc.strerror or str(exc)


class CgroupfsManager:
    """The user's parent cgroup ``/ds01/<user>`` under the cgroupfs driver (v1 or v2)."""

    def __init__(
        self,
        root: str | os.PathLike[str] = "/sys/fs/cgroup",
        mountinfo: str = "/proc/self/mountinfo",
        *,
        version: int | None = None,
        mounts: Mapping[str, str] | None = None,
        proc_cgroups: str = "/proc/cgroups",
        build_parent: str = BUILD_CGROUPFS_PARENT,
    ) -> None:
        self.root = Path(root)
        # dockerd's cgroup-parent: BuildKit's RUN steps land in <build_parent>/buildkit/<id>.
        self.build_parent = build_parent
        self.version = version or cgroup_version(self.root)
        if self.version == 2:
            self.mounts: dict[str, str] = {}
        elif mounts is not None:
            self.mounts = dict(mounts)
        else:
            try:
                self.mounts = v1_mounts(mountinfo, proc_cgroups)
            except OSError as exc:  # reported by ensure_user, never at daemon start
                log.warning("cannot read %s: %s", mountinfo, exc)
                self.mounts = {}
        # One ensure at a time: the memory/memsw order depends on what is there now.
        self._lock = threading.Lock()

    # -- where things are -------------------------------------------------------------------

    def hierarchies(self) -> dict[str, Path]:
        """Each hierarchy's mount point, keyed by its controllers (``cpu,cpuacct``); v2: ""."""
        if self.version == 2:
            return {"": self.root}
        by_point: dict[str, list[str]] = {}
        for controller, point in self.mounts.items():
            by_point.setdefault(point, []).append(controller)
        return {",".join(sorted(names)): Path(point) for point, names in by_point.items()}

    def parent_dir(self, controller: str = "") -> Path | None:
        """``/ds01`` in the hierarchy of ``controller`` (None: that controller is not mounted)."""
        if self.version == 2:
            return self.root / PARENT
        point = self.mounts.get(controller)
        return Path(point) / PARENT if point else None

    def user_dir(self, user: str, controller: str = "") -> Path | None:
        """``/ds01/<user>`` in the hierarchy of ``controller`` (None: not mounted)."""
        parent = self.parent_dir(controller)
        return parent / cgroupfs_dir_name(user) if parent else None

    def paths(self, user: str) -> dict[str, Path]:
        """The user's directory in every hierarchy (v1), or the one directory (v2: key "")."""
        name = cgroupfs_dir_name(user)
        return {key: point / PARENT / name for key, point in self.hierarchies().items()}

    def _user_rel(self, user: str) -> tuple[str, ...]:
        # PARENT is read at each call: the kernel tests move it out of a running ds01d's reach.
        return (PARENT, cgroupfs_dir_name(user))

    def _build_rel(self) -> tuple[str, ...]:
        return tuple(buildkit_cgroup(self.build_parent).strip("/").split("/"))

    def _dir(self, rel: tuple[str, ...], controller: str = "") -> Path | None:
        """``rel`` in the hierarchy of ``controller`` (v2: the one tree; None: not mounted)."""
        if self.version == 2:
            return self.root.joinpath(*rel)
        point = self.mounts.get(controller)
        return Path(point).joinpath(*rel) if point else None

    def build_dir(self, controller: str = "") -> Path | None:
        """``<build parent>/buildkit``, where every BuildKit RUN step runs, in ``controller``."""
        return self._dir(self._build_rel(), controller)

    # -- create and limit -------------------------------------------------------------------

    def ensure_user(self, user: str, aggregate: Mapping[str, Any]) -> list[str]:
        """Create the user's parent cgroup if needed and write its limits; idempotent.

        Also updates the limits of an existing cgroup in place (containers keep running).
        Returns warnings for limits the kernel refused; raises :class:`CgroupError` only when
        the cgroup cannot be created at all.
        """
        return self._ensure(self._user_rel(user), user, aggregate)

    def ensure_builds(self, cap: Mapping[str, Any]) -> list[str]:
        """Create ``<build parent>/buildkit`` if needed and write the policy's ``builds`` cap.

        Only BuildKit's executor puts processes there (containers without a CgroupParent go to
        ``<build parent>/<id>``, outside the cap); same warnings and errors as ensure_user.
        """
        return self._ensure(self._build_rel(), "BuildKit builds", cap)

    def _ensure(self, rel: tuple[str, ...], label: str, aggregate: Mapping[str, Any]) -> list[str]:
        with self._lock:
            if self.version == 2:
                warnings = self._create_v2(rel)
            else:
                warnings = self._create_v1(rel, label)
            warnings += self._write_limits(rel, label, aggregate)
        for warning in warnings:
            log.warning("cgroup limits: %s", warning)
        return warnings

    def _mkdir(self, path: Path) -> bool:
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise CgroupError(f"cannot create cgroup {path}: a file has that name") from None
            return False
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {path}: {_why(exc, '')}") from exc
        return True

    def _create_v1(self, rel: tuple[str, ...], label: str) -> list[str]:
        if not self.mounts:
            raise CgroupError(
                "no cgroup v1 hierarchy is mounted (see /proc/self/mountinfo); "
                "run ds01d with --no-cgroups or mount the cgroup controllers"
            )
        warnings = [
            f"{label}: the {c} controller is not mounted, its limit is not enforced"
            for c in LIMIT_CONTROLLERS
            if c not in self.mounts
        ]
        # Every hierarchy, not just the limited ones: runc puts the container under the same
        # parent in each of them anyway, and remove_user then finds one tree everywhere.
        for key, point in self.hierarchies().items():
            above = point
            for name in rel:
                directory = above / name
                created = self._mkdir(directory)
                if "cpuset" in key.split(","):
                    self._copy_cpuset(directory, above)
                if created and "memory" in key.split(","):
                    warnings += self._hierarchical_memory(directory)
                above = directory
        return warnings

    @staticmethod
    def _copy_cpuset(directory: Path, above: Path) -> None:
        # A new v1 cpuset starts with empty cpus/mems and refuses tasks (ENOSPC) until they are
        # set; copy them from the parent, as runc does for the parents it creates.
        for name in ("cpuset.cpus", "cpuset.mems"):
            if _read(directory / name) == "":
                value = _read(above / name)
                if value:
                    try:
                        (directory / name).write_text(value)
                    except OSError as exc:
                        raise CgroupError(
                            f"cannot set {directory / name} to {value!r}: {_why(exc, name)}"
                        ) from exc

    @staticmethod
    def _hierarchical_memory(directory: Path) -> list[str]:
        # Kernels before 5.x could start a memcg with use_hierarchy=0, in which case the
        # children's memory is not charged to the parent and the aggregate limit does nothing.
        # It can only be switched on while the cgroup has no children, i.e. right now.
        flag = directory / "memory.use_hierarchy"
        if _read(flag) != "0":
            return []
        try:
            flag.write_text("1")
        except OSError as exc:
            return [f"{directory}: memory.use_hierarchy stays 0 ({exc.strerror}): "
                    "the memory limit will not cover the containers"]  # fmt: skip
        return []

    def _create_v2(self, rel: tuple[str, ...]) -> list[str]:
        if not (self.root / "cgroup.controllers").exists():
            raise CgroupError(f"{self.root} is not a cgroup v2 mount")
        directory = self.root
        warnings = self._enable_v2(directory)
        # The limits live in the last directory (/ds01/<user>), so every one above it must
        # delegate the controllers; runc enables them in the last one itself when it creates a
        # container below it.
        for i, name in enumerate(rel):
            directory = directory / name
            self._mkdir(directory)
            if i < len(rel) - 1:
                warnings += self._enable_v2(directory)
        return warnings

    @staticmethod
    def _enable_v2(directory: Path) -> list[str]:
        available = set((_read(directory / "cgroup.controllers") or "").split())
        enabled = set((_read(directory / "cgroup.subtree_control") or "").split())
        warnings = []
        for name in _V2_CONTROLLERS:
            if name in enabled:
                continue
            if name not in available:
                warnings.append(f"the {name} controller is not available in {directory}")
                continue
            try:  # one at a time: a refused controller must not block the others
                (directory / "cgroup.subtree_control").write_text(f"+{name}")
            except OSError as exc:
                warnings.append(f"cannot enable {name} in {directory}: {_why(exc, '')}")
        return warnings

    def _write_limits(
        self, rel: tuple[str, ...], label: str, aggregate: Mapping[str, Any]
    ) -> list[str]:
        settings = cgroupfs_settings(aggregate, self.version)
        warnings: list[str] = []
        memory = {k: settings.pop(k) for k in list(settings) if controller_of(k) == "memory"}
        for name, value in settings.items():
            directory = self._dir(rel, controller_of(name))
            if directory is not None:
                warnings += self._write(label, directory / name, value)
        directory = self._dir(rel, "memory")
        if directory is not None:
            if self.version == 1:
                warnings += self._write_memory_v1(label, directory, memory)
            else:
                warnings += self._write_memory_v2(label, directory, memory)
        return warnings

    @staticmethod
    def _write(user: str, path: Path, value: str, optional: bool = False) -> list[str]:
        if optional and not path.exists():
            return []  # e.g. memsw without swap accounting: nothing to keep in step
        try:
            path.write_text(value)
        except OSError as exc:
            return [f"{user}: cannot set {path.name}={value} ({_why(exc, path.name)})"]
        return []

    def _write_memory_v1(self, user: str, directory: Path, values: dict[str, str]) -> list[str]:
        limit, memsw = values["memory.limit_in_bytes"], values["memory.memsw.limit_in_bytes"]
        limit_file = directory / "memory.limit_in_bytes"
        memsw_file = directory / "memory.memsw.limit_in_bytes"
        raising = _as_limit(limit) > _as_limit(_read(limit_file))
        if raising:  # memsw >= limit at every step: memsw goes up first
            warnings = self._write(user, memsw_file, memsw, optional=True)
            return warnings + self._write(user, limit_file, limit)
        warnings = self._write(user, limit_file, limit)
        if warnings:  # the limit stayed (EBUSY): a lower memsw would now be refused too
            return warnings
        return self._write(user, memsw_file, memsw, optional=True)

    def _write_memory_v2(self, user: str, directory: Path, values: dict[str, str]) -> list[str]:
        limit = values["memory.max"]
        current = _int(_read(directory / "memory.current"))
        warnings = []
        if current is not None and _as_limit(limit) < current:
            # v2 would reclaim and then OOM-kill the user's processes to get there; like v1,
            # keep the old limit and say so (the next ensure or policy reload tries again).
            warnings.append(
                f"{user}: cannot set memory.max={limit} (the user's containers already use "
                f"{current} bytes); the old limit stays until their use drops"
            )
        else:
            warnings += self._write(user, directory / "memory.max", limit)
        return warnings + self._write(
            user, directory / "memory.swap.max", values["memory.swap.max"], optional=True
        )

    # -- read back --------------------------------------------------------------------------

    def limits(self, user: str) -> dict[str, str]:
        """The limits the kernel holds now (file name -> content); absent files are left out."""
        return self._limits_at(self._user_rel(user))

    def build_limits(self) -> dict[str, str]:
        """The cap the kernel holds now on every BuildKit build together (as :meth:`limits`)."""
        return self._limits_at(self._build_rel())

    def _limits_at(self, rel: tuple[str, ...]) -> dict[str, str]:
        out = {}
        for name in cgroupfs_settings({}, self.version):
            directory = self._dir(rel, controller_of(name))
            value = _read(directory / name) if directory else None
            if value is not None:
                out[name] = value
        return out

    def usage(self, user: str) -> dict[str, Any]:
        """What the user's containers use together now (None: not known / no cgroup yet).

        memory (bytes, page cache included), pids (tasks now), cpu_seconds (since the cgroup
        was made), oom_kills (processes the kernel killed for memory) and forks_refused (forks
        refused by the pids controller). v2 counts the last two hierarchically in the parent;
        v1 counts them only in the cgroup the process ran in, so they are summed over the
        user's cgroup and its children (the containers that still exist).
        """
        return self._usage_at(self._user_rel(user))

    def build_usage(self) -> dict[str, Any]:
        """What every BuildKit build uses together now (as :meth:`usage`; not per user)."""
        return self._usage_at(self._build_rel())

    def _usage_at(self, rel: tuple[str, ...]) -> dict[str, Any]:
        if self.version == 2:
            base = self.root.joinpath(*rel)
            usec = _keyed(_read(base / "cpu.stat"), "usage_usec")
            return _usage(
                memory=_int(_read(base / "memory.current")),
                pids=_int(_read(base / "pids.current")),
                cpu=None if usec is None else usec / 1e6,
                oom=_keyed(_read(base / "memory.events"), "oom_kill"),
                refused=_keyed(_read(base / "pids.events"), "max"),
            )
        cpuacct, mem = self._dir(rel, "cpuacct"), self._dir(rel, "memory")
        pids_dir = self._dir(rel, "pids")
        nanos = _int(_read(cpuacct / "cpuacct.usage")) if cpuacct else None
        return _usage(
            memory=_int(_read(mem / "memory.usage_in_bytes")) if mem else None,
            pids=_int(_read(pids_dir / "pids.current")) if pids_dir else None,
            cpu=None if nanos is None else nanos / 1e9,
            oom=_subtree_sum(mem, "memory.oom_control", "oom_kill"),
            refused=_subtree_sum(pids_dir, "pids.events", "max"),
        )

    def users(self) -> list[str]:
        """Users that have a parent cgroup (in any limited hierarchy)."""
        names: set[str] = set()
        for controller in ("",) if self.version == 2 else LIMIT_CONTROLLERS:
            parent = self.parent_dir(controller)
            if parent is None or not parent.is_dir():
                continue
            names.update(p.name for p in parent.iterdir() if p.is_dir())
        return sorted(cgroupfs_user_from_dir(n) for n in names)

    # -- remove -----------------------------------------------------------------------------

    def remove_user(self, user: str) -> list[str]:
        """Remove the user's parent cgroup where it is empty; returns the directories that stay.

        Empty children (left by a container whose cgroup was not cleaned up) go first; a
        cgroup that still has tasks is refused by the kernel (EBUSY) and stays.
        """
        stays = []
        with self._lock:
            for directory in self.paths(user).values():
                if not directory.is_dir():
                    continue
                for sub in sorted(
                    (p for p in directory.rglob("*") if p.is_dir()),
                    key=lambda p: len(p.parts),
                    reverse=True,
                ):
                    with contextlib.suppress(OSError):
                        sub.rmdir()
                try:
                    directory.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    stays.append(f"{directory} ({exc.strerror})")
        return stays


class SystemdSliceManager:
    """The user's slice unit under the systemd cgroup driver.

    ``skip_systemctl`` (hosts without systemd, dry runs): the unit files are written and
    nothing is run. ``run`` is ``subprocess.run`` or a stand-in for tests.
    """

    def __init__(
        self,
        unit_dir: str | os.PathLike[str] = "/etc/systemd/system",
        run: Callable[..., Any] = subprocess.run,
        skip_systemctl: bool = False,
        systemctl: str = "systemctl",
        build_slice: str = BUILD_SLICE,
    ) -> None:
        self.unit_dir = Path(unit_dir)
        # dockerd's cgroup-parent: BuildKit's RUN steps are scopes directly in this slice.
        self.build_slice = build_slice
        self.run = run
        self.skip_systemctl = skip_systemctl
        self.systemctl = systemctl
        self._lock = threading.Lock()

    def _systemctl(self, *args: str) -> tuple[bool, str]:
        """Run systemctl; (ok, stdout or the reason it failed). Never raises."""
        if self.skip_systemctl:
            return False, "systemctl skipped"
        try:
            result = self.run(
                [self.systemctl, *args], capture_output=True, text=True, check=False, timeout=60
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return False, f"{self.systemctl} {args[0]}: {exc}"
        if result.returncode != 0:
            detail = (result.stderr or result.stdout or "").strip()
            return False, f"{self.systemctl} {args[0]} failed ({result.returncode}): {detail}"
        return True, result.stdout or ""

    def _write_unit(self, name: str, text: str) -> bool:
        path = self.unit_dir / name
        if _read_raw(path) == text:
            return False
        tmp = path.with_name(f".{name}.ds01-tmp")
        try:  # whole file or nothing: systemd may read it at any moment
            self.unit_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise CgroupError(f"cannot write {path}: {_why(exc, '')}") from exc
        return True

    def ensure_user(
        self, user: str, aggregate: Mapping[str, Any], group: str = "default"
    ) -> list[str]:
        """Write the user's slice (and its parents) if it changed, then daemon-reload."""
        with self._lock:
            changed = [
                name
                for name, text in slice_units(user, group, aggregate).items()
                if self._write_unit(name, text)
            ]
            if not changed or self.skip_systemctl:
                return []
            # daemon-reload re-applies cgroup settings to active slices (see module docstring).
            ok, detail = self._systemctl("daemon-reload")
        if ok:
            return []
        log.warning("slice units: %s", detail)
        return [f"{user}: {', '.join(changed)} written but not loaded: {detail}"]

    def ensure_builds(self, cap: Mapping[str, Any]) -> list[str]:
        """Write the build slice with the policy's ``builds`` cap if it changed, then reload."""
        with self._lock:
            if not self._write_unit(self.build_slice, build_slice_text(cap)):
                return []
            if self.skip_systemctl:
                return []
            ok, detail = self._systemctl("daemon-reload")
        if ok:
            return []
        log.warning("slice units: %s", detail)
        return [f"BuildKit builds: {self.build_slice} written but not loaded: {detail}"]

    def users(self) -> list[tuple[str, str]]:
        """``(user, group)`` of every user slice unit in the unit directory."""
        try:
            names = [p.name for p in self.unit_dir.glob(f"{SLICE_PREFIX}-*.slice")]
        except OSError:
            return []
        return sorted(filter(None, map(parse_slice_unit_name, names)))

    def limits(self, user: str, group: str = "default") -> dict[str, str]:
        """The limits systemd holds for the slice now (its property names), or {}."""
        return self._show(user, group, ("CPUQuotaPerSecUSec", "MemoryMax", "TasksMax"))

    def usage(self, user: str, group: str = "default") -> dict[str, Any]:
        """What the slice's containers use now, as systemd accounts it (None: unknown)."""
        shown = self._show(user, group, ("MemoryCurrent", "TasksCurrent", "CPUUsageNSec"))
        nanos = _int(shown.get("CPUUsageNSec"))
        return {
            "memory": _int(shown.get("MemoryCurrent")),
            "pids": _int(shown.get("TasksCurrent")),
            "cpu_seconds": None if nanos is None else round(nanos / 1e9, 3),
        }

    def _show(self, user: str, group: str, props: tuple[str, ...]) -> dict[str, str]:
        unit = slice_unit_name(user, group)
        ok, out = self._systemctl("show", f"--property={','.join(props)}", unit)
        if not ok:
            return {}
        shown = dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)
        # systemd prints "[not set]" (or 2^64-1) for values it does not track.
        return {k: v for k, v in shown.items() if v not in ("", "[not set]")}

    def remove_user(self, user: str, group: str = "default") -> list[str]:
        """Delete the user's slice unit file (the parents stay for other users)."""
        path = self.unit_dir / slice_unit_name(user, group)
        try:
            path.unlink()
        except FileNotFoundError:
            return []
        except OSError as exc:
            return [f"cannot remove {path}: {_why(exc, '')}"]
        ok, detail = self._systemctl("daemon-reload")
        return [] if ok or self.skip_systemctl else [detail]


def _read_raw(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


class UserCgroups:
    """What the daemon calls: keep each user's parent cgroup in line with the policy.

    Never raises: a failure is logged and returned, so a create goes on (dockerd then makes
    the parent itself, without the aggregate limits) and the daemon stays up.
    """

    def __init__(self, manager: CgroupfsManager | SystemdSliceManager) -> None:
        self.manager = manager

    def ensure_sync(self, user: str, group: str, aggregate: Mapping[str, Any]) -> list[str]:
        try:
            if isinstance(self.manager, SystemdSliceManager):
                return self.manager.ensure_user(user, aggregate, group)
            return self.manager.ensure_user(user, aggregate)
        except (CgroupError, OSError, ValueError) as exc:
            log.error("cannot set up the parent cgroup of %s: %s", user, exc)
            return [f"{user}: {exc}"]

    def ensure_builds(self, cap: Mapping[str, Any]) -> list[str]:
        """At start and after a policy change: the shared build cgroup holds the ``builds`` cap.

        BuildKit's RUN steps of every user run there (dockerd's cgroup-parent), not in a user's
        parent; see ``policy/build_cgroup.py``.
        """
        try:
            return self.manager.ensure_builds(cap)
        except (CgroupError, OSError, ValueError) as exc:
            log.error("cannot set up the BuildKit build cgroup: %s", exc)
            return [f"BuildKit builds: {exc}"]

    async def ensure(self, identity: Identity, limits: Limits) -> list[str]:
        """Before a create: the user's parent cgroup exists and holds their aggregate limits."""
        return await asyncio.to_thread(
            self.ensure_sync, identity.user, limits.group, limits.aggregate.as_dict()
        )

    def refresh(self, limits_for: Callable[[str], Limits]) -> list[str]:
        """After a policy change: rewrite every existing user's limits; containers keep running."""
        warnings: list[str] = []
        if isinstance(self.manager, SystemdSliceManager):
            existing = self.manager.users()
        else:
            existing = [(user, "") for user in self.manager.users()]
        for user, group in existing:
            try:
                limits = limits_for(user)
            except Exception as exc:  # one unknown user must not stop the others
                warnings.append(f"{user}: no limits ({exc})")
                continue
            # A slice keeps its name (its containers run in it); the group only names new ones.
            warnings += self.ensure_sync(user, group or limits.group, limits.aggregate.as_dict())
        return warnings

    def report(self, users: list[str], limits_for: Callable[[str], Limits]) -> list[dict[str, Any]]:
        """For ``ds01 slices``: each user's policy limits, the kernel's, and current use."""
        rows = []
        if isinstance(self.manager, SystemdSliceManager):
            known = self.manager.users()
            wanted = set(users) if users else {u for u, _ in known}
            pairs = [(u, g) for u, g in known if u in wanted]
            pairs += [(u, limits_for(u).group) for u in sorted(wanted - {u for u, _ in pairs})]
        else:
            pairs = [(u, "") for u in (users or self.manager.users())]
        for user, group in pairs:
            limits = limits_for(user)
            if isinstance(self.manager, SystemdSliceManager):
                kernel = self.manager.limits(user, group)
                usage = self.manager.usage(user, group)
            else:
                kernel, usage = self.manager.limits(user), self.manager.usage(user)
            rows.append(
                {
                    "user": user,
                    "parent": slice_unit_name(user, group)
                    if group
                    else cgroup_parent("cgroupfs", user, ""),
                    "aggregate": limits.aggregate.as_dict(),
                    "kernel": kernel,
                    "usage": usage,
                }
            )
        return rows
