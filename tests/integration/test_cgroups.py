"""Per-user aggregate limits, enforced by the real kernel (cgroupfs driver, cgroup v1 or v2).

First without Docker: processes put straight into a user's parent cgroup hit its pids, memory
and CPU limits. Then with a real private dockerd: two containers created with
``--cgroup-parent /ds01/<user>`` land under the same parent and share its limits, so one
container's use counts against the other's.

Every cgroup here belongs to a user name made up for the test (``ds01cg-<random>``), so the
processes in it are this test's own; teardown kills them and removes the cgroups.

They live under a parent of their own, ``/ds01-kernel-tests``, not ``/ds01``: any ds01d on the
host (another test run's stack) rewrites every user under ``/ds01`` with its own policy on each
policy reload (``UserCgroups.refresh``), which replaced these tests' 0.5 CPU and 20/30 pids with
that policy's defaults mid-test. What is checked, the kernel enforcing what the manager wrote,
does not depend on the parent's name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ds01d.host import cgroups
from ds01d.host.cgroups import LIMIT_CONTROLLERS, CgroupfsManager
from policy.slices import CGROUPFS_ROOT, cgroup_parent, cgroupfs_dir_name
from tests.harness.dockerd import PrivateDockerd
from tests.harness.host_ledger import claim_cgroups

MIB = 2**20
LIMITS = {"cpus": 0.5, "memory": 64 * MIB, "pids": 20}
# The tests' parent, out of reach of a running ds01d (see the module docstring).
TEST_PARENT = "ds01-kernel-tests"


def require_cgroups() -> None:
    """Skip where cgroups cannot be written (not root); on CI that is a failure."""
    reason = None
    if os.geteuid() != 0:
        reason = "needs root to create cgroups"
    elif not os.path.isdir("/sys/fs/cgroup"):
        reason = "no /sys/fs/cgroup"
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"cgroup tests cannot run on CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module", autouse=True)
def _private_parent() -> Iterator[None]:
    """Put the managers' ``/ds01`` at TEST_PARENT for this module; remove it afterwards."""
    if os.geteuid() == 0 and os.path.isdir("/sys/fs/cgroup"):
        claim_cgroups([TEST_PARENT])  # in the host ledger, should this teardown not run
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cgroups, "PARENT", TEST_PARENT)
        yield
    if os.geteuid() == 0 and os.path.isdir("/sys/fs/cgroup"):
        for point in CgroupfsManager().hierarchies().values():
            with contextlib.suppress(OSError):  # still in use by a concurrent run: it stays
                (point / TEST_PARENT).rmdir()


def parent_of(user: str) -> str:
    """The cgroup parent a container of the test ``user`` is created with."""
    return f"/{TEST_PARENT}/{cgroupfs_dir_name(user)}"


@pytest.fixture
def manager() -> CgroupfsManager:
    require_cgroups()
    return CgroupfsManager()


def _procs_files(manager: CgroupfsManager, user: str) -> list[Path]:
    """The cgroup.procs files a process must join to fall under the user's limits."""
    if manager.version == 2:
        return [manager.paths(user)[""] / "cgroup.procs"]
    dirs = {manager.user_dir(user, c) for c in (*LIMIT_CONTROLLERS, "cpuacct")}
    return [d / "cgroup.procs" for d in dirs if d is not None]


def _all_pids(manager: CgroupfsManager, user: str) -> set[int]:
    pids: set[int] = set()
    for top in manager.paths(user).values():
        if top.is_dir():
            for procs in (top / "cgroup.procs", *top.rglob("*/cgroup.procs")):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
    return pids


def _kill_all(manager: CgroupfsManager, user: str) -> None:
    """SIGKILL what is left in the test user's cgroups and wait until they are empty."""
    deadline = time.monotonic() + 10
    while (pids := _all_pids(manager, user)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


@contextlib.contextmanager
def _test_user(manager: CgroupfsManager, aggregate: dict) -> Iterator[str]:
    user = f"ds01cg-{uuid.uuid4().hex[:8]}"
    try:
        assert manager.ensure_user(user, aggregate) == []
        # Where a ds01d's policy reload would find it and rewrite its limits: not there.
        assert all(
            p.is_dir() and not (p.parent.parent / CGROUPFS_ROOT.strip("/") / p.name).exists()
            for p in manager.paths(user).values()
        )
        yield user
    finally:
        _kill_all(manager, user)
        stays: list[str] = []
        for _ in range(50):  # runc removes a dead container's cgroup a moment later
            if not (stays := manager.remove_user(user)):
                break
            time.sleep(0.1)
        assert stays == [], f"cgroups left behind: {stays}"
        assert all(not p.exists() for p in manager.paths(user).values())


@pytest.fixture
def user_cgroup(manager: CgroupfsManager) -> Iterator[str]:
    with _test_user(manager, LIMITS) as user:
        yield user


def _spawn_in(manager: CgroupfsManager, user: str, code: str, **kwargs) -> subprocess.Popen:
    """A Python child that joins the user's cgroup before it runs ``code`` (no race)."""
    files = _procs_files(manager, user)

    def join() -> None:  # runs in the child between fork and exec
        for procs in files:
            procs.write_text(str(os.getpid()))

    # preexec_fn (not joining after start): the child is limited from its first instruction.
    return subprocess.Popen([sys.executable, "-c", code], preexec_fn=join, text=True, **kwargs)


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- the kernel, without Docker ----------------------------------------------------------


def test_limits_are_read_back_from_the_kernel(manager: CgroupfsManager, user_cgroup: str):
    """What ds01d wrote is what the kernel holds, in every hierarchy the parent needs."""
    kernel = manager.limits(user_cgroup)
    if manager.version == 1:
        expected = {
            "cpu.cfs_period_us": "100000",
            "cpu.cfs_quota_us": "50000",
            "memory.limit_in_bytes": str(64 * MIB),
            "pids.max": "20",
        }
        if "memory.memsw.limit_in_bytes" in kernel:  # only with swap accounting
            expected["memory.memsw.limit_in_bytes"] = str(64 * MIB)
        # runc needs the parent in every hierarchy; a new cpuset must get cpus/mems to be usable
        cpuset = manager.user_dir(user_cgroup, "cpuset")
        if cpuset is not None:
            assert (cpuset / "cpuset.cpus").read_text().strip()
            assert (cpuset / "cpuset.mems").read_text().strip()
    else:
        expected = {"cpu.max": "50000 100000", "memory.max": str(64 * MIB), "pids.max": "20"}
        if "memory.swap.max" in kernel:
            expected["memory.swap.max"] = "0"
    assert kernel == expected
    assert all(p.is_dir() for p in manager.paths(user_cgroup).values())
    assert user_cgroup in manager.users()


def test_forks_beyond_pids_max_are_refused(manager: CgroupfsManager, user_cgroup: str):
    """pids.max=20: the process itself plus 19 children, then fork fails with EAGAIN."""
    code = """
import os
r, w = os.pipe()
kids = []
try:
    while len(kids) < 40:
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.read(r, 1)  # wait until the parent is done counting
            os._exit(0)
        kids.append(pid)
    print("forked", len(kids), "errno 0")
except OSError as exc:
    print("forked", len(kids), "errno", exc.errno)
os.close(w)
for pid in kids:
    os.waitpid(pid, 0)
"""
    proc = _spawn_in(manager, user_cgroup, code, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert out.split() == ["forked", "19", "errno", str(errno.EAGAIN)], out
    assert manager.usage(user_cgroup)["forks_refused"] >= 1


def test_memory_hog_is_oom_killed(manager: CgroupfsManager, user_cgroup: str):
    """memory=64m: 16 MB is fine, 200 MB gets the process SIGKILLed by the kernel."""
    small = _spawn_in(manager, user_cgroup, "x = b'1' * (16 << 20); print(len(x))", stdout=-1)
    assert small.communicate(timeout=30)[0].strip() == str(16 << 20)
    hog = _spawn_in(manager, user_cgroup, "x = b'1' * (200 << 20); print('survived')", stdout=-1)
    out, _ = hog.communicate(timeout=30)
    assert hog.returncode == -signal.SIGKILL, (hog.returncode, out)
    assert manager.usage(user_cgroup)["oom_kills"] >= 1


def test_cpu_quota_throttles(manager: CgroupfsManager, user_cgroup: str):
    """cpus=0.5: a busy loop gets about half a second of CPU per second, and is throttled."""
    code = "import time\nend = time.monotonic() + 1.0\nwhile time.monotonic() < end: pass\n"
    proc = _spawn_in(manager, user_cgroup, code)
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = rusage.ru_utime + rusage.ru_stime
    assert proc.returncode == 0
    assert 0.3 < cpu < 0.7, f"{cpu:.2f} s of CPU in 1 s with a 0.5 CPU quota"
    stat = (manager.user_dir(user_cgroup, "cpu") / "cpu.stat").read_text()
    assert int(dict(line.split() for line in stat.splitlines())["nr_throttled"]) > 0


def test_policy_change_updates_limits_in_place(manager: CgroupfsManager, user_cgroup: str):
    """New limits reach a cgroup with a running process; memory below current use is refused
    with a warning (the old limit stays), and the process keeps running throughout."""
    holder = _spawn_in(
        manager,
        user_cgroup,
        "import sys\nx = b'1' * (40 << 20)\nprint('held', flush=True)\nsys.stdin.read()",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert manager.usage(user_cgroup)["memory"] >= 40 * MIB
        memory_file = "memory.limit_in_bytes" if manager.version == 1 else "memory.max"

        warnings = manager.ensure_user(user_cgroup, {"cpus": 1, "memory": 16 * MIB, "pids": 40})
        assert len(warnings) == 1 and "already use" in warnings[0], warnings
        kernel = manager.limits(user_cgroup)
        assert kernel[memory_file] == str(64 * MIB)  # refused: the old limit stays
        assert kernel["pids.max"] == "40"  # the rest is applied all the same
        quota = kernel["cpu.cfs_quota_us"] if manager.version == 1 else kernel["cpu.max"].split()[0]
        assert quota == "100000"

        # Raising (memsw first in v1) and then lowering above current use both apply.
        for memory in (128 * MIB, 96 * MIB):
            assert manager.ensure_user(user_cgroup, {**LIMITS, "memory": memory}) == []
            kernel = manager.limits(user_cgroup)
            assert kernel[memory_file] == str(memory)
            if "memory.memsw.limit_in_bytes" in kernel:
                assert kernel["memory.memsw.limit_in_bytes"] == str(memory)
        assert holder.poll() is None  # nothing was restarted
    finally:
        holder.kill()
        holder.communicate(timeout=10)


def test_unusual_names_get_their_own_cgroup(manager: CgroupfsManager):
    """A user named like a control file, or with odd characters, still gets a directory that
    maps back to exactly that user."""
    suffix = uuid.uuid4().hex[:6]
    for user in (f"memory.ds01cg{suffix}", f"ds01cg {suffix}/x"):
        try:
            assert manager.ensure_user(user, LIMITS) == []
            name = cgroupfs_dir_name(user)
            assert "/" not in name and name != user
            assert cgroup_parent("cgroupfs", user, "g") == f"/ds01/{name}"
            assert manager.limits(user)["pids.max"] == "20"
            assert user in manager.users()
        finally:
            assert manager.remove_user(user) == []


# --- with a real dockerd ------------------------------------------------------------------


def _pid_of(dockerd: PrivateDockerd, container: str) -> int:
    return json.loads(dockerd.docker("inspect", container, check=True).stdout)[0]["State"]["Pid"]


def _pids_of(
    manager: CgroupfsManager, user: str, dockerd: PrivateDockerd, container: str
) -> list[int]:
    """The host pids in a container's cgroup (which sits under the user's parent)."""
    cid = json.loads(dockerd.docker("inspect", container, check=True).stdout)[0]["Id"]
    procs = manager.user_dir(user, "pids") / cid / "cgroup.procs"
    return [int(p) for p in procs.read_text().split()]


def _kill_sleepers(
    manager: CgroupfsManager, user: str, dockerd: PrivateDockerd, container: str
) -> None:
    """SIGKILL the container's ``sleep 301`` processes (its init, tini, reaps them)."""
    for pid in _pids_of(manager, user, dockerd, container):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00301\x00":
                os.kill(pid, signal.SIGKILL)


def _awk_string(mib: int, then: str = "print length(s)") -> str:
    # busybox awk doubling a string: the peak is about twice the final size.
    return f"awk 'BEGIN{{s=\"x\"; while (length(s) < {mib}*1048576) s = s s; {then}}}'"


@pytest.mark.docker
def test_two_containers_share_the_users_parent_and_its_limits(
    manager: CgroupfsManager, private_dockerd: PrivateDockerd, busybox_image: str
):
    """Both containers land under /ds01/<user>; what one uses counts against the other.

    ``--init`` gives each container a PID 1 that reaps orphans: a dead but unreaped process
    still counts against pids.max.
    """
    dockerd = private_dockerd
    # 84m: one 32 MB string build (peak ~67 MB) fits; on top of a 32 MB holder it does not.
    aggregate = {"cpus": 1, "memory": 84 * MIB, "pids": 30}
    names: list[str] = []
    with _test_user(manager, aggregate) as user:
        parent = parent_of(user)
        try:
            for tag in ("a", "b"):
                names.append(f"{user}-{tag}")
                dockerd.docker(
                    "run", "-d", "--init", "--name", names[-1], "--cgroup-parent", parent,
                    busybox_image, "sleep", "300",
                    check=True,
                )  # fmt: skip
            a, b = names

            # Both under the same parent, in every hierarchy (runc used what we pre-created).
            for name in names:
                cid = json.loads(dockerd.docker("inspect", name).stdout)[0]["Id"]
                lines = Path(f"/proc/{_pid_of(dockerd, name)}/cgroup").read_text().splitlines()
                assert lines and all(line.endswith(f":{parent}/{cid}") for line in lines), lines
            assert manager.usage(user)["pids"] == 4  # tini and sleep, twice

            # Memory: b alone can build a 32 MB string; with a's 32 MB held, it is OOM-killed.
            dockerd.docker(
                "exec", "-d", a, "sh", "-c",
                "echo $$ > /tmp/holder; exec " + _awk_string(32, 'system("sleep 301")'),
                check=True,
            )  # fmt: skip
            _wait_for(lambda: manager.usage(user)["memory"] >= 32 * MIB, "a to hold 32 MB")
            build = "echo 1000 > /proc/self/oom_score_adj; exec " + _awk_string(32)
            killed = dockerd.docker("exec", b, "sh", "-c", build)
            assert killed.returncode == 137, killed  # SIGKILL by the OOM killer
            assert manager.usage(user)["oom_kills"] >= 1
            dockerd.docker("exec", a, "sh", "-c", "kill $(cat /tmp/holder)", check=True)
            _wait_for(lambda: manager.usage(user)["memory"] < 16 * MIB, "a to let go")
            alone = dockerd.docker("exec", b, "sh", "-c", build)
            assert (alone.returncode, alone.stdout.strip()) == (0, str(32 * MIB)), alone

            # Pids: a holds 20 sleeps; b can then start only a few of its 15, then none.
            start = "for i in $(seq {n}); do sleep 301 >/dev/null 2>&1 & done; echo started {n}"
            ok = dockerd.docker("exec", a, "sh", "-c", start.format(n=20))
            assert ok.returncode == 0 and ok.stdout.strip() == "started 20", ok
            refused = dockerd.docker("exec", b, "sh", "-c", start.format(n=15))
            assert refused.returncode != 0 and "can't fork" in refused.stderr, refused
            assert manager.usage(user)["forks_refused"] >= 1
            assert manager.usage(user)["pids"] <= 30
            # From the host: at the limit, even `docker exec` cannot start a process.
            _kill_sleepers(manager, user, dockerd, a)
            _wait_for(lambda: manager.usage(user)["pids"] < 12, "a's sleeps to go")
            again = dockerd.docker("exec", b, "sh", "-c", start.format(n=15))
            assert again.returncode == 0 and again.stdout.strip() == "started 15", again
            # runc's own init (a Go program: several threads) counts too; make room for it.
            _kill_sleepers(manager, user, dockerd, b)
            _wait_for(lambda: manager.usage(user)["pids"] == 4, "b's sleeps to go")

            # CPU: cgroup v1 refuses a child quota above the parent's (v2 clamps it).
            more = dockerd.docker(
                "run", "--rm", "--cpus", "2", "--cgroup-parent", parent, busybox_image, "true"
            )
            if manager.version == 1:
                assert more.returncode != 0 and "cfs_quota_us: invalid argument" in more.stderr
                # ... and a lower aggregate than a running container's --cpus is refused too.
                names.append(f"{user}-c")
                dockerd.docker(
                    "run", "-d", "--name", names[-1], "--cpus", "0.5", "--cgroup-parent", parent,
                    busybox_image, "sleep", "300",
                    check=True,
                )  # fmt: skip
                warnings = manager.ensure_user(user, {**aggregate, "cpus": 0.25})
                assert len(warnings) == 1 and "--cpus" in warnings[0], warnings
                assert manager.limits(user)["cpu.cfs_quota_us"] == "100000"
            else:
                assert more.returncode == 0, more
        finally:
            if names:
                dockerd.docker("rm", "-f", *names)
