"""Keeps a dcgm-exporter job-mapping directory in step with who holds which GPU or MIG instance.

dcgm-exporter, run with ``--hpc-job-mapping-dir DIR`` (or ``DCGM_HPC_JOB_MAPPING_DIR``),
re-reads DIR on every scrape: each regular file named ``<gpu>`` or ``<gpu>.<gpu instance id>``
(regex ``^\\d+(\\.\\d+)?$``) lists job ids, one per line, and every series of that GPU (or MIG
instance) gets an ``hpc_job="<line>"`` label, one copy of the series per line. We write one
line, the owner (``alice`` or ``alice/train``), so DCGM's utilisation carries the user.
Notes from its source: ``<gpu>`` is DCGM's GPU id (the NVML index on ordinary hosts) and the
instance id is NVML's GPU-instance id; ``<gpu>.<gi>`` files are only read by dcgm-exporter
releases with MIG support (4.5.3-4.8.2 and later), older ones ignore them; other names, such as
our ``.tmp`` files, are ignored, so writes are atomic (temp file + rename).
"""

from __future__ import annotations

import contextlib
import grp
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

DeviceKey = tuple[int, int | None]  # (GPU index, GPU-instance id or None for a whole GPU)

# The names dcgm-exporter reads; anything else in the directory is not ours to touch.
MAPPING_NAME = re.compile(r"^\d+(\.\d+)?$")
_TMP_PREFIX = ".ds01-"
# The files say who holds which GPU: readable only by root and the exporter's group.
FILE_MODE = 0o640
DIR_MODE = 0o750
# The exporter's group (name or gid) when the caller names none; unset: root's group.
GROUP_ENV = "DS01_JOB_MAPPING_GROUP"


def file_name(key: DeviceKey) -> str:
    """``0`` for GPU 0, ``2.1`` for GPU-instance 1 on GPU 2."""
    gpu, gi = key
    if gpu < 0 or (gi is not None and gi < 0):
        raise ValueError(f"not a device: {key!r}")
    return str(gpu) if gi is None else f"{gpu}.{gi}"


def parse_name(name: str) -> DeviceKey | None:
    """The device a mapping file names, or None if dcgm-exporter would ignore the file."""
    if not MAPPING_NAME.match(name):
        return None
    gpu, _, gi = name.partition(".")
    return (int(gpu), int(gi) if gi else None)


def job_id(user: str, container: str | None = None) -> str:
    """The job id we write: ``alice``, or ``alice/train`` when the container is known."""
    return f"{user}/{container}" if container else user


def owner_line(owner: str) -> str:
    # One line per job: a newline inside the owner would make dcgm-exporter duplicate every
    # series under a second, bogus job.
    return " ".join(owner.split()) if owner else ""


class JobMappingDir:
    """The mapping directory; ``update`` makes it say exactly who holds what."""

    def __init__(self, path: str | os.PathLike[str], group: str | int | None = None) -> None:
        self.path = Path(path)
        self.gid = resolve_group(group if group is not None else os.environ.get(GROUP_ENV))

    def update(self, assignments: Mapping[DeviceKey, str]) -> bool:
        """Make the directory match ``assignments`` ((gpu, gi|None) -> owner); True if changed.

        Files whose content is already right are not rewritten (idempotent, no churn for a
        poller); files of devices no longer assigned are removed. An empty owner means free.
        Raises OSError if the directory cannot be written (the caller logs and retries).
        """
        self.path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        self._restrict(self.path, DIR_MODE)
        wanted = {file_name(k): owner_line(v) for k, v in assignments.items()}
        wanted = {name: line for name, line in wanted.items() if line}
        changed = False
        for name, line in sorted(wanted.items()):
            content = f"{line}\n"
            target = self.path / name
            try:
                if target.read_text() == content:
                    self._restrict(target, FILE_MODE)
                    continue
            except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
                pass
            self._write_atomically(target, content)
            changed = True
        for entry in self.path.iterdir():
            if entry.name.startswith(_TMP_PREFIX) and entry.is_file():
                entry.unlink(missing_ok=True)  # left by a crash mid-write
            elif parse_name(entry.name) and entry.name not in wanted and entry.is_file():
                entry.unlink(missing_ok=True)
                changed = True
        return changed

    def read(self) -> dict[DeviceKey, list[str]]:
        """What dcgm-exporter would read now: device -> job lines."""
        out: dict[DeviceKey, list[str]] = {}
        if not self.path.is_dir():
            return out
        for entry in sorted(self.path.iterdir()):
            key = parse_name(entry.name)
            if key is not None and entry.is_file():
                out[key] = entry.read_text().splitlines()
        return out

    def clear(self) -> None:
        """Remove every mapping file (uninstall); other files are left alone."""
        if self.path.is_dir():
            self.update({})

    def _write_atomically(self, target: Path, content: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.path)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(content)
            # mkstemp makes 0600; the exporter's group must read it, nobody else
            self._restrict(Path(tmp), FILE_MODE)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _restrict(self, path: Path, mode: int) -> None:
        """``mode`` and the exporter's group on ``path`` (files an older ds01d made 0644 too)."""
        info = path.stat()
        if info.st_gid != self.gid and os.geteuid() == 0:
            os.chown(path, -1, self.gid)
        if info.st_mode & 0o7777 != mode:
            os.chmod(path, mode)


def resolve_group(group: str | int | None) -> int:
    """The gid of ``group`` (a name or a number); root's group when none is given."""
    if group is None or group == "":
        return 0
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    try:
        return grp.getgrnam(str(group)).gr_gid
    except KeyError:
        raise ValueError(f"no such group for the job-mapping files: {group}") from None
