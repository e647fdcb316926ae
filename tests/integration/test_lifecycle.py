"""The lifecycle loop (``ds01d.lifecycle``) against a real private dockerd and kernel.

One scenario runs a dozen containers side by side under a policy with seconds-scale timeouts
and watches the loop warn, stop and remove exactly the ones the policy says; a dry-run loop
watches the same dockerd and touches nothing. GPU activity comes from a fake NVML. The readers
(cgroups, ``/proc``, the keep-alive marker) and the notifier are also tested on recorded files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from allocator.inventory import Gpu, Inventory, build_inventory
from allocator.ledger import Ledger, Reservation
from allocator.request import GpuRequest
from ds01d.docker_client import DockerClient
from ds01d.events import EventWatcher
from ds01d.gpus import GpuBroker
from ds01d.lifecycle.loop import Lifecycle, read_cpu_seconds, read_keepalive, read_net_bytes
from ds01d.notify import Notifier
from ds01d.observe.metrics import Metrics, iter_samples
from ds01d.policy_store import PolicyStore
from policy.identity import Identity
from policy.lifecycle import Stop, Warn
from policy.loader import parse_policy
from tests.conftest import require_docker
from tests.harness import (
    BUSYBOX_TAG,
    FAKE_HOOK_RECORD_ENV,
    PrivateDockerd,
    default_record_path,
    docker_binary,
    import_busybox_image,
    install_fake_hook,
)
from tests.unit.allocator.fake_pynvml import FakeGpu, FakeNvml, FakeProcess

CID = "0123456789ab" + "c" * 52
TTY_UID = 4321  # the uid on the idle container's label; owns the test's pseudo-terminal

POLICY = """\
sample_interval: 1s
startup_grace: 0s
stop_grace: 1s
keepalive_max: 1h
created_timeout: 3s
defaults:
  idle_timeout: 6s
users:
  runner: {idle_timeout: null, max_runtime: 8s}
  gone: {container_hold_after_stop: 2s}
  waiter: {max_gpus: 1, allow_full_gpu: true, gpu_wait: 1m}
  gpu: {max_gpus: 1, allow_full_gpu: true}
  gpuidle: {max_gpus: 1, allow_full_gpu: true}
exemptions:
  - {user: exempt, until: '2099-12-31', reason: integration test}
  - {user: dry, until: '2099-12-31', reason: watched by the dry run only}
"""

# The dry-run loop watches the same dockerd: only "dry" has a timeout under its policy.
DRY_POLICY = """\
sample_interval: 1s
startup_grace: 0s
created_timeout: null
users:
  dry: {idle_timeout: 3s}
"""

BUSY_LOOP = ["sh", "-c", "while :; do :; done"]
BUSY_GPU = "GPU-b0000000-0000-0000-0000-000000000000"  # NVML shows a process on it
IDLE_GPU = "GPU-10000000-0000-0000-0000-000000000000"


def gpu_container(uuid: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Labels and HostConfig of a container DS01 gave ``uuid``: the reconcile trusts a
    ``ds01.devices`` claim only when dockerd really gives the container those devices
    (``HostConfig.DeviceRequests``) and its owner's quota allows them (issue 11), so a bare
    label would leave the GPU free and the waiting create would get it at once."""
    request = {"Driver": "nvidia", "DeviceIDs": [uuid], "Capabilities": [["gpu"]]}
    return {"ds01.devices": uuid}, {"DeviceRequests": [request]}


# A tenth of a CPU: far above idle_cpu_percent (2%), without starving a two-core machine.
TENTH_CPU = {"NanoCpus": 100_000_000}

# name: (command, extra labels, extra HostConfig, start it?)
CONTAINERS: dict[str, tuple[list[str], dict[str, str], dict[str, Any], bool]] = {
    "idler": (["sleep", "3600"], {"ds01.uid": str(TTY_UID)}, {}, True),
    "busy": (BUSY_LOOP, {}, TENTH_CPU, True),
    "keeper": (["sh", "-c", "touch /tmp/ds01-keepalive; exec sleep 3600"], {}, {}, True),
    "caller": (["sleep", "3600"], {}, {}, True),  # kept alive by Lifecycle.keepalive()
    "runner": (BUSY_LOOP, {}, TENTH_CPU, True),
    "gone": (["true"], {}, {}, True),
    "never": (["sleep", "3600"], {}, {}, False),
    "exempt": (["sleep", "3600"], {}, {}, True),
    "gpu": (["sleep", "3600"], *gpu_container(BUSY_GPU), True),
    "gpuidle": (["sleep", "3600"], *gpu_container(IDLE_GPU), True),
    "dry": (["sleep", "3600"], {}, {}, True),
}
STOPPED = {"idler", "gpuidle", "runner"}
REMOVED = {"gone", "never"}
LEFT_RUNNING = {"busy", "keeper", "caller", "exempt", "gpu", "dry"}


class RecordingAudit:
    """Collects audit events as (event, fields), like ``AuditLog.record`` receives them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def record(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def about(self, container_id: str) -> list[tuple[str, str, str, Any]]:
        return [
            (event, f["result"], f["reason"], f.get("level"))
            for event, f in self.events
            if f["container"] == container_id
        ]


def fake_nvml() -> FakeNvml:
    """Two whole GPUs: one with a compute process on it, one with nothing."""
    return FakeNvml(
        [
            FakeGpu(BUSY_GPU, processes=[FakeProcess(pid=4242, usedGpuMemory=2**30)]),
            FakeGpu(IDLE_GPU),
        ]
    )


def two_gpus() -> Inventory:
    """The same two GPUs as the allocator sees them."""
    gpus = [
        Gpu(index, uuid, "fake GPU", 80 * 2**30) for index, uuid in enumerate([BUSY_GPU, IDLE_GPU])
    ]
    return build_inventory(gpus, [], source="test")


@pytest.fixture(scope="module")
def dockerd() -> Iterator[PrivateDockerd]:
    """A private dockerd of this module's own: the loop acts on every ds01.user container.

    The fake NVIDIA hook is on its PATH so containers with GPU DeviceRequests start."""
    require_docker()
    # Not tempfile.mkdtemp: its names may end in "_", which the containerd namespace derived
    # from the directory name must not (dockerd then refuses every container start).
    base = Path("/tmp") / f"ds01lc-{uuid.uuid4().hex[:10]}"
    base.mkdir()
    hook_dir = base / "hook"
    install_fake_hook(hook_dir)
    daemon = PrivateDockerd(
        base,
        extra_path=[str(hook_dir)],
        env={FAKE_HOOK_RECORD_ENV: default_record_path(hook_dir)},
    )
    try:
        daemon.start()
        import_busybox_image(daemon.host, BUSYBOX_TAG)
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


async def create(client: DockerClient, name: str) -> str:
    command, labels, host_config, start = CONTAINERS[name]
    body = {
        "Image": BUSYBOX_TAG,
        "Cmd": command,
        "Labels": {"ds01.user": name, **labels},
        "HostConfig": {"NetworkMode": "none", **host_config},
    }
    created = await client.request("POST", "/containers/create", params={"name": name}, body=body)
    if start:
        await client.request("POST", f"/containers/{created['Id']}/start")
    return created["Id"]


async def state_of(client: DockerClient, container_id: str) -> str:
    info = await client.inspect_container(container_id)
    return "removed" if info is None else info["State"]["Status"]


def read_pty(master: int) -> str:
    os.set_blocking(master, False)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.docker
async def test_lifecycle_warns_stops_and_removes(dockerd: PrivateDockerd, tmp_path: Path) -> None:
    """Idle, GPU-idle and over-runtime containers are warned and stopped (the GPU goes to a
    waiting create); stale ones are removed; busy, kept-alive, GPU-busy and exempt ones are
    left alone; the dry run touches nothing."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "dry.yaml").write_text(DRY_POLICY)
    store = PolicyStore(str(tmp_path / "policy.yaml"))
    broker = GpuBroker(
        Ledger(two_gpus()),
        limits_for=lambda user, uid: store.limits(Identity(uid=uid, user=user)),
        clock=time.time,
    )
    # The idle container's user "logs in" on a pseudo-terminal the notifier finds in a fake /dev.
    master, slave = os.openpty()
    os.chown(os.ttyname(slave), TTY_UID, -1)
    (tmp_path / "dev" / "pts").mkdir(parents=True)
    (tmp_path / "dev" / "pts" / "0").symlink_to(os.ttyname(slave))
    (tmp_path / "nodev").mkdir()
    audit, dry_audit, metrics = RecordingAudit(), RecordingAudit(), Metrics()
    client = DockerClient(dockerd.host)
    life = Lifecycle(
        client,
        store,
        broker,
        clock=time.time,
        nvml=fake_nvml(),
        notifier=Notifier(dev=str(tmp_path / "dev")),
        audit=audit,
        metrics=metrics,
    )
    dry = Lifecycle(
        client,
        PolicyStore(str(tmp_path / "dry.yaml")),
        None,
        clock=time.time,
        nvml=fake_nvml(),
        notifier=Notifier(dev=str(tmp_path / "nodev")),
        audit=dry_audit,
        dry_run=True,
    )
    ids: dict[str, str] = {}
    tasks: list[asyncio.Task[None]] = []
    seen_idle: set[str] = set()
    pending: asyncio.Task[Any] | None = None  # the waiting GPU create
    try:
        made = await asyncio.gather(*(create(client, name) for name in CONTAINERS))
        ids = dict(zip(CONTAINERS, made, strict=True))
        life.keepalive(ids["caller"])
        # The broker follows dockerd (ledger rebuilt from the ds01.devices claims, each backed
        # by DeviceRequests and its owner's quota: both GPUs held); a create waits for a GPU,
        # and gets the one the idle container gives back.
        events = EventWatcher(client, broker, time.time)
        tasks = [asyncio.create_task(events.follow())]
        await asyncio.wait_for(events.connected.wait(), 10)
        waiter = Identity(uid=None, user="waiter")
        wait = pending = asyncio.create_task(
            broker.reserve(
                waiter,
                store.limits(waiter),
                GpuRequest(count=1),
                {"Labels": {"ds01.wait": "1m"}},  # waiting is opt-in
                time.time(),
            )
        )
        tasks += [asyncio.create_task(life.run()), asyncio.create_task(dry.run())]
        started = time.monotonic()
        while time.monotonic() - started < 40:
            await asyncio.sleep(0.25)
            seen_idle |= broker.idle
            states = {name: await state_of(client, cid) for name, cid in ids.items()}
            settled = all(states[n] == "exited" for n in STOPPED) and all(
                states[n] == "removed" for n in REMOVED
            )
            # Survivors must outlive twice the idle timeout to prove they are left alone.
            if settled and time.monotonic() - started > 12:
                break
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await life.drain()

        assert states == {
            **dict.fromkeys(STOPPED, "exited"),
            **dict.fromkeys(REMOVED, "removed"),
            **dict.fromkeys(LEFT_RUNNING, "running"),
        }
        assert audit.about(ids["idler"]) == [
            ("warn", "ok", "idle", 80),
            ("warn", "ok", "idle", 95),
            ("stop", "ok", "idle", None),
        ]
        assert audit.about(ids["gpuidle"])[-1] == ("stop", "ok", "idle", None)
        assert audit.about(ids["runner"]) == [
            ("warn", "ok", "max_runtime", 75),
            ("warn", "ok", "max_runtime", 90),
            ("stop", "ok", "max_runtime", None),
        ]
        assert audit.about(ids["gone"]) == [("remove", "ok", "container_hold", None)]
        assert audit.about(ids["never"]) == [("remove", "ok", "created_timeout", None)]
        for name in LEFT_RUNNING:
            assert audit.about(ids[name]) == [], name

        # The notice file inside the stopped container has both warnings and the stop.
        copied = tmp_path / "notice"
        subprocess.run(
            [docker_binary(), "cp", f"{ids['idler']}:/tmp/ds01-notice", str(copied)],
            env={**os.environ, "DOCKER_HOST": dockerd.host},
            check=True,
            capture_output=True,
        )
        notice = copied.read_text().splitlines()
        assert [line.split(" has been idle")[0] for line in notice[:2]] == [
            f"ds01: container 'idler' ({ids['idler'][:12]})"
        ] * 2
        assert notice[2].startswith("ds01: stopping container 'idler'") and len(notice) == 3
        # ... and so did the user's terminal.
        terminal = read_pty(master)
        assert terminal.count("has been idle") == 2 and "stopping container 'idler'" in terminal

        # The idle container's GPU went to the create that was waiting for one.
        granted = await asyncio.wait_for(wait, 5)
        assert isinstance(granted, Reservation) and granted.device_ids == (IDLE_GPU,)

        # Idle containers were offered to the broker for preemption while they idled.
        assert ids["idler"] in seen_idle
        assert not seen_idle & {ids[n] for n in ("busy", "keeper", "caller", "gpu", "exempt")}

        counts = {
            (labels["action"], labels["reason"]): value
            for name, labels, value in iter_samples(metrics)
            if name == "ds01_lifecycle_actions_total"
        }
        assert counts == {
            ("warn", "idle"): 4,
            ("stop", "idle"): 2,
            ("warn", "max_runtime"): 2,
            ("stop", "max_runtime"): 1,
            ("remove", "container_hold"): 1,
            ("remove", "created_timeout"): 1,
        }

        # The dry run reported the stop it would have made, once, and warned nobody.
        assert {f["container"] for _, f in dry_audit.events} == {ids["dry"]}
        reported = dry_audit.about(ids["dry"])
        assert {result for _, result, _, _ in reported} == {"dry_run"}
        assert reported[-2:] == [("warn", "dry_run", "idle", 95), ("stop", "dry_run", "idle", None)]
        no_notice = dockerd.docker("exec", ids["dry"], "test", "-e", "/tmp/ds01-notice")
        assert no_notice.returncode == 1

        # What ds01 ps shows.
        busy = life.status(ids["busy"])
        assert busy is not None and busy["idle_seconds"] == 0.0 and busy["runtime_seconds"] > 10
        assert (busy["stop_at"], busy["stop_reason"]) == (None, None)
        exempt = life.status(ids["exempt"])
        assert exempt is not None and exempt["exempt"]["idle"]["reason"] == "integration test"
        assert exempt["idle_seconds"] > 6 and exempt["stop_at"] is None
        (idler,) = life.status_for_user("idler")
        assert [w["level"] for w in idler["warnings"]] == [80, 95, None]
    finally:
        for task in [*tasks, *([pending] if pending else [])]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for cid in ids.values():
            with contextlib.suppress(Exception):
                await client.request("DELETE", f"/containers/{cid}", params={"force": "1"})
        await client.close()
        os.close(master)
        os.close(slave)


# ---- the loop without dockerd: one bad container, dry run ------------------------------------


class FakeDocker:
    """Answers list and inspect from a table; records every other request."""

    def __init__(self, containers: list[dict[str, Any]]) -> None:
        self.containers = {c["Id"]: c for c in containers}
        self.requests: list[tuple[str, str]] = []

    async def list_containers(self, filters: Any = None) -> list[dict[str, Any]]:
        return [{"Id": cid} for cid in self.containers]

    async def inspect_container(self, ref: str) -> dict[str, Any] | None:
        return self.containers.get(ref)

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self.requests.append((method, path))
        return None


def exited(cid: str, user: str) -> dict[str, Any]:
    return {
        "Id": cid,
        "Name": f"/{user}",
        "Created": "2020-01-01T00:00:00Z",
        "Config": {"Labels": {"ds01.user": user}},
        "State": {
            "Status": "exited",
            "Pid": 0,
            "StartedAt": "2020-01-01T00:00:01Z",
            "FinishedAt": "2020-01-02T00:00:00Z",
        },
    }


def store_of(text: str) -> Any:
    """A real PolicyStore holding a fixed policy text (as if loaded from a file)."""
    store = PolicyStore(None)
    store.document = parse_policy(text)
    return store


async def test_one_bad_container_does_not_stop_the_loop(tmp_path: Path) -> None:
    """A container whose limits cannot be resolved is skipped; the others are still handled."""
    docker = FakeDocker([exited("a" * 64, "alice"), exited("b" * 64, "bob")])
    store = store_of("defaults:\n  container_hold_after_stop: 1h\n")

    def limits_for(user: str, uid: int | None) -> Any:
        if user == "alice":
            raise RuntimeError("broken directory service")
        return store.limits(Identity(uid=uid, user=user))

    life = Lifecycle(
        docker,
        store,
        None,
        clock=time.time,
        proc=str(tmp_path),
        notifier=Notifier(dev=str(tmp_path)),
        limits_for=limits_for,
    )
    actions = await life.tick()
    await life.drain()
    assert [a.container for a in actions] == ["b" * 64]
    assert docker.requests == [("DELETE", f"/containers/{'b' * 64}")]


async def test_dry_run_acts_on_nothing(tmp_path: Path) -> None:
    """Dry run: the removal is reported and audited once, and no request reaches dockerd."""
    docker = FakeDocker([exited("b" * 64, "bob")])
    audit = RecordingAudit()
    life = Lifecycle(
        docker,
        store_of("defaults:\n  container_hold_after_stop: 1h\n"),
        None,
        clock=time.time,
        proc=str(tmp_path),
        notifier=Notifier(dev=str(tmp_path)),
        audit=audit,
        dry_run=True,
    )
    first, second = await life.tick(), await life.tick()
    assert [type(a).__name__ for a in first] == ["Remove"] and second == []
    assert docker.requests == []
    assert audit.about("b" * 64) == [("remove", "dry_run", "container_hold", None)]


# ---- readers, on recorded files --------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


V1_CGROUP = f"""\
12:pids:/docker/{CID}
4:memory:/docker/{CID}
3:cpu,cpuacct:/docker/{CID}
1:name=systemd:/docker/{CID}
0::/docker/{CID}
"""
V2_CGROUP = f"0::/system.slice/docker-{CID}.scope\n"


def test_cpu_from_cgroup_v1(tmp_path: Path) -> None:
    """cgroup v1: cpuacct.usage (ns) under the hierarchy the cpuacct line names."""
    write(tmp_path / "cpu,cpuacct" / "docker" / CID / "cpuacct.usage", "2500000000\n")
    assert read_cpu_seconds(V1_CGROUP, tmp_path) == 2.5


def test_cpu_from_cgroup_v1_cpuacct_alone(tmp_path: Path) -> None:
    """cgroup v1 with cpuacct mounted on its own (as on this CI host)."""
    write(tmp_path / "cpuacct" / "docker" / CID / "cpuacct.usage", "1000\n")
    text = V1_CGROUP.replace("3:cpu,cpuacct:", "3:cpuacct:")
    assert read_cpu_seconds(text, tmp_path) == 1e-6


def test_cpu_from_cgroup_v2(tmp_path: Path) -> None:
    """cgroup v2: usage_usec in cpu.stat, at the root or under unified/ (hybrid hosts)."""
    stat = "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"
    write(tmp_path / "system.slice" / f"docker-{CID}.scope" / "cpu.stat", stat)
    assert read_cpu_seconds(V2_CGROUP, tmp_path) == 1.5
    hybrid = tmp_path / "hybrid"
    write(hybrid / "unified" / "system.slice" / f"docker-{CID}.scope" / "cpu.stat", stat)
    assert read_cpu_seconds(V2_CGROUP, hybrid) == 1.5


def test_cpu_unreadable(tmp_path: Path) -> None:
    """No cgroup file where the process says: unknown (which the rules treat as busy)."""
    assert read_cpu_seconds(V1_CGROUP, tmp_path) is None
    assert read_cpu_seconds("garbage", tmp_path) is None


# /proc/<pid>/net/dev of a container with two interfaces (columns narrowed to fit the page).
NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop ...
    lo: 9999999 100 0 0 0 0 0 0 9999999 100 0 0 0 0 0 0
  eth0:    1500  10 0 0 0 0 0 0     500   5 0 0 0 0 0 0
  eth1:     100   1 0 0 0 0 0 0      20   1 0 0 0 0 0 0
"""


def test_network_bytes(tmp_path: Path) -> None:
    """Received plus sent on every interface but lo; only lo (--network none) is 0."""
    write(tmp_path / "7" / "net" / "dev", NET_DEV)
    assert read_net_bytes(tmp_path, 7) == 1500 + 500 + 100 + 20
    write(tmp_path / "8" / "net" / "dev", "\n".join(NET_DEV.splitlines()[:3]))
    assert read_net_bytes(tmp_path, 8) == 0
    assert read_net_bytes(tmp_path, 9) is None


def test_network_of_host_namespace_is_unknown() -> None:
    """A process in our own network namespace (--network host) has no counters of its own."""
    assert read_net_bytes("/proc", os.getpid()) is None


def test_keepalive_marker(tmp_path: Path) -> None:
    """The marker's mtime; none when missing, or when /tmp is a link (it would be the host's)."""
    marker = write(tmp_path / "7" / "root" / "tmp" / "ds01-keepalive", "")
    os.utime(marker, (1_700_000_000, 1_700_000_000))
    assert read_keepalive(tmp_path, 7) == 1_700_000_000
    (tmp_path / "8" / "root").mkdir(parents=True)
    assert read_keepalive(tmp_path, 8) is None
    (tmp_path / "9" / "root").mkdir(parents=True)
    (tmp_path / "9" / "root" / "tmp").symlink_to(tmp_path / "7" / "root" / "tmp")
    assert read_keepalive(tmp_path, 9) is None


# ---- the notifier ----------------------------------------------------------------------------


def warning(message: str = "ds01: container 'x' has been idle") -> Warn:
    return Warn(CID, "idle", 80, 1_700_000_000.0, message)


def test_notice_file_appended(tmp_path: Path) -> None:
    """Each notice is a line appended to /tmp/ds01-notice inside the container."""
    (tmp_path / "7" / "root" / "tmp").mkdir(parents=True)
    notifier = Notifier(dev=str(tmp_path / "dev"), proc=str(tmp_path))
    first = notifier.notify(warning("one"), user="alice", uid=None, pid=7)
    notifier.notify(Stop(CID, "idle", "two\x1b[2J"), user="alice", uid=None, pid=7)
    assert first.notice_file
    assert (tmp_path / "7" / "root" / "tmp" / "ds01-notice").read_text() == "one\ntwo [2J\n"
    assert [n.kind for n in notifier.recent(CID)] == ["warn", "stop"]


@pytest.mark.parametrize("trap", ["tmp_link", "file_link", "fifo"])
def test_notice_file_never_follows_the_users_links(tmp_path: Path, trap: str) -> None:
    """A /tmp or notice file that is a link (it would resolve on the host) or a FIFO is left."""
    host = tmp_path / "host"
    host.mkdir()
    root = tmp_path / "7" / "root"
    root.mkdir(parents=True)
    if trap == "tmp_link":
        (root / "tmp").symlink_to(host)
    else:
        (root / "tmp").mkdir()
        if trap == "file_link":
            (root / "tmp" / "ds01-notice").symlink_to(host / "passwd")
        else:
            os.mkfifo(root / "tmp" / "ds01-notice")
    notifier = Notifier(dev=str(tmp_path / "dev"), proc=str(tmp_path))
    assert not notifier.notify(warning(), user="alice", uid=None, pid=7).notice_file
    assert list(host.iterdir()) == []


def test_terminals_of_the_user_only(tmp_path: Path) -> None:
    """Only the user's own terminals get the message, without terminal escapes."""
    mine_master, mine = os.openpty()
    other_master, other = os.openpty()
    try:
        os.chown(os.ttyname(mine), TTY_UID, -1)
        os.chown(os.ttyname(other), TTY_UID + 1, -1)
        pts = tmp_path / "dev" / "pts"
        pts.mkdir(parents=True)
        (pts / "3").symlink_to(os.ttyname(mine))
        (pts / "4").symlink_to(os.ttyname(other))
        (pts / "ptmx").touch()  # not a terminal of anyone's
        notifier = Notifier(dev=str(tmp_path / "dev"), proc=str(tmp_path))
        delivery = notifier.notify(
            warning("ds01: idle\x1b]0;owned\x07"), user="alice", uid=TTY_UID, pid=None
        )
        assert delivery.terminals == 1
        assert "ds01: idle ]0;owned \r" in read_pty(mine_master)
        assert read_pty(other_master) == ""
    finally:
        for fd in (mine_master, mine, other_master, other):
            os.close(fd)


def test_no_terminals_is_fine() -> None:
    """A user with no login session: the notice still reaches ds01 ps."""
    with tempfile.TemporaryDirectory() as empty:
        notifier = Notifier(dev=empty, proc=empty)
        delivery = notifier.notify(warning(), user="alice", uid=TTY_UID, pid=99)
    assert delivery.terminals == 0 and not delivery.notice_file
    assert [n.level for n in notifier.recent(CID)] == [80]
