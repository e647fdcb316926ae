"""The dcgm-exporter job-mapping directory after allocations and releases."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from ds01d.host.dcgm_mapping import MAPPING_NAME, JobMappingDir, file_name, job_id, parse_name

# dcgm-exporter's own filter for mapping file names (internal/pkg/transformation/hpc.go).
EXPORTER_NAME = re.compile(r"^\d+(\.\d+)?$")


def listing(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def test_allocation_writes_one_file_per_device_with_the_owner(tmp_path: Path) -> None:
    """Whole GPUs are `<gpu>`, MIG instances `<gpu>.<gi>`; each file holds one owner line."""
    mapping = JobMappingDir(tmp_path / "jobs")
    assert mapping.update(
        {
            (0, None): job_id("rita", "train"),
            (2, 1): job_id("alice", "nb"),
            (2, 5): job_id("bob"),
        }
    )
    assert listing(tmp_path / "jobs") == {
        "0": "rita/train\n",
        "2.1": "alice/nb\n",
        "2.5": "bob\n",
    }
    assert mapping.read() == {(0, None): ["rita/train"], (2, 1): ["alice/nb"], (2, 5): ["bob"]}
    for entry in (tmp_path / "jobs").iterdir():
        assert EXPORTER_NAME.match(entry.name)  # every file is one the exporter reads
        assert stat.S_IMODE(entry.stat().st_mode) == 0o640  # root and the exporter's group
    assert stat.S_IMODE((tmp_path / "jobs").stat().st_mode) == 0o750


def test_mapping_files_are_not_world_readable_and_carry_the_exporter_group(
    tmp_path: Path,
) -> None:
    """Who holds which GPU is for root and the exporter's group only; old 0644 files too."""
    jobs = tmp_path / "jobs"
    jobs.mkdir(mode=0o755)
    (jobs / "0").write_text("rita\n")
    os.chmod(jobs / "0", 0o644)
    gid = os.getgid() if os.geteuid() != 0 else 4242
    mapping = JobMappingDir(jobs, group=gid)
    mapping.update({(0, None): "rita", (1, None): "alice"})
    for path in (jobs / "0", jobs / "1"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert path.stat().st_gid == gid
    assert stat.S_IMODE(jobs.stat().st_mode) == 0o750
    assert jobs.stat().st_gid == gid
    assert JobMappingDir(jobs).gid == 0  # no group named: root's


def test_release_removes_the_file_and_keeps_the_others(tmp_path: Path) -> None:
    """A released device's file disappears; the rest are left untouched."""
    mapping = JobMappingDir(tmp_path)
    mapping.update({(0, None): "rita/train", (1, None): "bob/eval"})
    before = (tmp_path / "0").stat().st_ino
    assert mapping.update({(0, None): "rita/train"})
    assert listing(tmp_path) == {"0": "rita/train\n"}
    assert (tmp_path / "0").stat().st_ino == before  # not rewritten
    assert mapping.update({})
    assert listing(tmp_path) == {}


def test_update_is_idempotent(tmp_path: Path) -> None:
    """The same assignments twice: the second call changes nothing, not even mtimes."""
    mapping = JobMappingDir(tmp_path)
    assignments = {(3, None): "alice/a", (4, 2): "bob/b"}
    assert mapping.update(assignments)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert not mapping.update(assignments)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps


def test_reassignment_rewrites_atomically(tmp_path: Path) -> None:
    """A device that changes hands gets the new owner, through a rename (new inode)."""
    mapping = JobMappingDir(tmp_path)
    mapping.update({(0, 1): "alice/old"})
    inode = (tmp_path / "0.1").stat().st_ino
    mapping.update({(0, 1): "bob/new"})
    assert listing(tmp_path) == {"0.1": "bob/new\n"}
    assert (tmp_path / "0.1").stat().st_ino != inode


def test_foreign_files_are_left_alone_and_crash_leftovers_cleaned(tmp_path: Path) -> None:
    """Only mapping-named files are ours; our own stale temp files are removed."""
    (tmp_path / "README").write_text("not ours\n")
    (tmp_path / "7").mkdir()  # a directory named like a GPU: not a file, not ours
    (tmp_path / ".ds01-abc123").write_text("half")
    (tmp_path / "5").write_text("stale/owner\n")  # from before a restart, now free
    mapping = JobMappingDir(tmp_path)
    mapping.update({(1, None): "alice"})
    assert sorted(os.listdir(tmp_path)) == ["1", "7", "README"]


def test_owner_is_always_a_single_line(tmp_path: Path) -> None:
    """A newline in an owner would make the exporter label a second, bogus job."""
    mapping = JobMappingDir(tmp_path)
    mapping.update({(0, None): "alice/evil\nroot", (1, None): "  ", (2, None): ""})
    assert listing(tmp_path) == {"0": "alice/evil root\n"}  # blank owners mean free


def test_clear_removes_every_mapping_file(tmp_path: Path) -> None:
    """clear() (uninstall) leaves the directory without mapping files."""
    mapping = JobMappingDir(tmp_path / "jobs")
    mapping.clear()  # no directory yet: nothing to do
    mapping.update({(0, None): "a", (0, 3): "b"})
    mapping.clear()
    assert listing(tmp_path / "jobs") == {}


def test_names() -> None:
    """File names round-trip and match the exporter's convention."""
    assert file_name((0, None)) == "0" and file_name((12, 3)) == "12.3"
    assert parse_name("12.3") == (12, 3) and parse_name("0") == (0, None)
    assert parse_name(".ds01-x") is None and parse_name("1.2.3") is None
    assert MAPPING_NAME.pattern == EXPORTER_NAME.pattern
    assert job_id("alice") == "alice" and job_id("alice", "nb") == "alice/nb"
    with pytest.raises(ValueError):
        file_name((-1, None))
