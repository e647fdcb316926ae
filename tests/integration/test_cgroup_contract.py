"""The CgroupBackend contract: ``UserCgroups`` on a real cgroup tree and the unit tests' fake.

Each test runs twice, on ``UserCgroups(CgroupfsManager())`` under a parent of its own (not
``/ds01``, which a running ds01d rewrites on every policy reload) and on
``tests.unit.fake_cgroups.FakeCgroupBackend``, with the same assertions. The real one needs
root and a cgroup tree; its cgroups are claimed in the host ledger and removed afterwards.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import pytest

from ds01d.host import cgroups
from ds01d.host.cgroups import CgroupfsManager, UserCgroups
from ds01d.ports import CgroupBackend
from policy.identity import Identity
from policy.limits import Aggregate, Limits
from tests.harness.host_ledger import claim_cgroups
from tests.integration.test_cgroups import require_cgroups
from tests.unit.fake_cgroups import FakeCgroupBackend

MIB = 2**20
USAGE_KEYS = {"memory", "pids", "cpu_seconds", "oom_kills", "forks_refused"}
Claim = Callable[[str], None]


def limits_of(user: str, pids: int = 20) -> Limits:
    return Limits(user=user, group="default", aggregate=Aggregate(0.5, 64 * MIB, pids))


@pytest.fixture(params=["real", "fake"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[CgroupBackend, Claim]]:
    """The backend, and how to claim a user's cgroup before it is made (real one only)."""
    if request.param == "fake":
        yield FakeCgroupBackend(), lambda user: None
        return
    require_cgroups()
    parent, builds = (
        f"ds01-contract-{uuid.uuid4().hex[:6]}",
        f"ds01-contract-b{uuid.uuid4().hex[:6]}",
    )
    claim_cgroups([parent, builds, f"{builds}/buildkit"])
    manager = CgroupfsManager(build_parent=f"/{builds}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cgroups, "PARENT", parent)
        try:
            yield UserCgroups(manager), lambda user: claim_cgroups([f"{parent}/{user}"])
        finally:
            for user in manager.users():
                manager.remove_user(user)
            for point in manager.hierarchies().values():
                for rel in (parent, f"{builds}/buildkit", builds):
                    with contextlib.suppress(FileNotFoundError):
                        (point / rel).rmdir()


def new_user(claim: Claim) -> str:
    user = f"ds01cc-{uuid.uuid4().hex[:8]}"
    claim(user)
    return user


async def test_ensure_writes_the_aggregate_and_report_reads_it_back(backend) -> None:
    cg, claim = backend
    user = new_user(claim)
    assert await cg.ensure(Identity(uid=5000, user=user), limits_of(user)) == []
    (row,) = cg.report([user], limits_of)
    assert row["user"] == user
    assert row["aggregate"] == {"cpus": 0.5, "memory": 64 * MIB, "pids": 20}
    assert row["kernel"]["pids.max"] == "20"
    assert set(row["usage"]) == USAGE_KEYS and row["usage"]["pids"] == 0


async def test_refresh_rewrites_every_user_and_names_one_without_limits(backend) -> None:
    cg, claim = backend
    kept, unknown = new_user(claim), new_user(claim)
    for user in (kept, unknown):
        assert await cg.ensure(Identity(uid=5000, user=user), limits_of(user)) == []

    def limits_for(user: str) -> Limits:
        if user == unknown:
            raise KeyError(user)
        return limits_of(user, pids=30)

    assert cg.refresh(limits_for) == [f"{unknown}: no limits ('{unknown}')"]
    (row,) = cg.report([kept], limits_for)
    assert row["kernel"]["pids.max"] == "30"
    assert cg.refresh(limits_of) == []  # the unknown user's cgroup is still there, rewritten


async def test_a_name_that_cannot_be_a_cgroup_is_a_warning(backend) -> None:
    cg, _ = backend
    warnings = await cg.ensure(Identity(uid=5000, user=""), limits_of(""))
    assert warnings == [": empty user name: a cgroup cannot be named after it"]


def test_the_build_cap_is_written_again_without_complaint(backend) -> None:
    cg, _ = backend
    cap = {"cpus": 2, "memory": 256 * MIB, "pids": 100}
    assert cg.ensure_builds(cap) == []
    assert cg.ensure_builds(cap) == []
