"""A policy reload rewrites every user's parent cgroup and the build cap (daemon glue).

Runs a real ``Daemon`` with the contract-tested in-memory cgroup backend in place of the kernel.
"""

from __future__ import annotations

from ds01d.daemon import Daemon
from policy.identity import Identity
from tests.unit.daemon_helpers import make_daemon
from tests.unit.fake_cgroups import FakeCgroupBackend

POLICY = "defaults:\n  aggregate: {{pids: {pids}}}\nbuilds: {{pids: {builds}}}\n"


def _daemon(tmp_path) -> tuple[Daemon, FakeCgroupBackend]:
    daemon = make_daemon(tmp_path, POLICY.format(pids=20, builds=100))
    backend = FakeCgroupBackend()
    daemon.cgroups = backend
    return daemon, backend


async def test_a_reload_writes_the_new_aggregate_and_build_cap(tmp_path) -> None:
    daemon, backend = _daemon(tmp_path)
    try:
        alice = Identity(uid=None, user="ds01-nobody-alice")
        assert await backend.ensure(alice, daemon.policy.limits(alice)) == []
        assert backend.kernel[alice.user]["pids.max"] == "20"
        (tmp_path / "policy.yaml").write_text(POLICY.format(pids=30, builds=200))
        assert daemon.policy.reload()
        assert backend.kernel[alice.user]["pids.max"] == "30"
        assert backend.builds["pids.max"] == "200"
    finally:
        daemon.audit.close()


async def test_a_rejected_reload_leaves_the_cgroups_as_they_were(tmp_path) -> None:
    daemon, backend = _daemon(tmp_path)
    try:
        alice = Identity(uid=None, user="ds01-nobody-alice")
        await backend.ensure(alice, daemon.policy.limits(alice))
        (tmp_path / "policy.yaml").write_text("defaults:\n  aggregate: {pids: -1}\n")
        assert not daemon.policy.reload()
        assert backend.kernel[alice.user]["pids.max"] == "20"
        assert backend.builds == {}
    finally:
        daemon.audit.close()
