"""Shared pytest fixtures: a session-wide private dockerd with the fake NVIDIA hook and image.

Also the session's side of the host ledger (tests/harness/host_ledger.py): every user, group,
cgroup, mode change, temp folder and plugin spec the harness makes is undone when the last test
session that uses it ends, so a second run starts from the same host state.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    BUSYBOX_TAG,
    FAKE_HOOK_RECORD_ENV,
    PrivateDockerd,
    default_record_path,
    host_ledger,
    import_busybox_image,
    install_fake_hook,
)
from tests.harness.images import BUSYBOX_SOURCE

_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def pytest_sessionstart(session: pytest.Session) -> None:
    """This session holds what it claims on the host until it ends."""
    host_ledger.start_session()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Undo the host changes no live session uses any more (failures are reported, not fatal)."""
    failures = host_ledger.end_session()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for failure in failures:
        if reporter is not None:
            reporter.write_line(f"host cleanup: {failure}", yellow=True)


def docker_unavailable_reason() -> str | None:
    """Why a real private dockerd cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (private dockerd, useradd)"
    for tool in ("dockerd", "containerd", "runc"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":" + _SBIN_PATH):
            return f"{tool} not installed (run scripts/setup-host.sh)"
    if not shutil.which("docker", path=os.environ.get("PATH", "") + ":" + _SBIN_PATH):
        return "docker CLI not installed (run scripts/setup-host.sh)"
    if not os.path.exists(BUSYBOX_SOURCE):
        return "busybox-static not installed (run scripts/setup-host.sh)"
    return None


def require_docker() -> None:
    """Skip when Docker cannot run here; on CI that is a failure, never a silent skip."""
    reason = docker_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"docker tests cannot run on CI: {reason}")
    pytest.skip(reason)


def new_base_dir(prefix: str = "ds01-") -> str:
    """A fresh, short directory under /tmp (unix socket paths must stay short), removed when
    the session ends at the latest."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    host_ledger.claim_path(path)
    return path


@pytest.fixture(scope="session")
def private_dockerd() -> Iterator[PrivateDockerd]:
    """A started private dockerd (no AuthZ plugin), fake NVIDIA hook on PATH, image imported."""
    require_docker()
    base = new_base_dir()
    hook_dir = os.path.join(base, "hook")
    install_fake_hook(hook_dir)
    daemon = PrivateDockerd(
        base,
        extra_path=[hook_dir],
        env={FAKE_HOOK_RECORD_ENV: default_record_path(hook_dir)},
    )
    try:
        daemon.start()
        import_busybox_image(daemon.host, BUSYBOX_TAG)
        yield daemon
    finally:
        daemon.stop()
        if not os.environ.get("DS01_KEEP_TMP"):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def busybox_image(private_dockerd: PrivateDockerd) -> str:
    """Tag of the busybox test image in the session's private dockerd."""
    return import_busybox_image(private_dockerd.host, BUSYBOX_TAG)


@pytest.fixture
def fake_hook_records(private_dockerd: PrivateDockerd) -> Path:
    """The JSONL file the fake NVIDIA hook appends to for the session's private dockerd."""
    return Path(private_dockerd.env[FAKE_HOOK_RECORD_ENV])
