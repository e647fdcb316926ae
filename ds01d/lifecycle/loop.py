"""The lifecycle loop: samples every DS01 container and carries out ``policy.lifecycle``'s rules.

Each ``sample_interval`` it lists the containers labelled ``ds01.user``, measures the running
ones (CPU from their cgroup, network from their network namespace, keep-alives from a marker
file or ``ds01 keepalive``, GPU activity from NVML), asks ``policy.lifecycle.evaluate`` what to
do, and does it: warn the user, stop, remove. It also tells the GPU broker which containers
are idle, so higher-priority requests may preempt them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from ds01d.docker_client import DockerError, stop_container
from ds01d.host.nvml import nvml_usage
from ds01d.notify import Notifier, open_container_tmp
from ds01d.ports import DockerApi
from formats.labels import LABEL_USER
from policy.lifecycle import (
    Action,
    ContainerInfo,
    Remove,
    Sample,
    Settings,
    Stop,
    Tracker,
    Warn,
    container_info,
    describe,
    evaluate,
    gpu_busy,
    is_high_demand,
    settings_from_policy,
)
from policy.limits import Limits

log = logging.getLogger("ds01.lifecycle")

KEEPALIVE_FILE = "ds01-keepalive"  # under the container's /tmp
INSPECT_CONCURRENCY = 8


# ----------------------------------------------------------------------------- readers


def read_cpu_seconds(cgroup_file: str, cgroup_root: str | os.PathLike[str]) -> float | None:
    """CPU time of a cgroup, from a process's ``/proc/<pid>/cgroup`` text; None if unreadable.

    cgroup v1: ``cpuacct.usage`` (ns) in the cpuacct hierarchy, mounted alone or together with
    cpu. v2: ``usage_usec`` in ``cpu.stat``. On hybrid hosts the v1 controller holds the
    numbers (the unified tree has no controllers), so it is tried first.
    """
    root = Path(cgroup_root)
    unified = None
    for line in cgroup_file.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        relative = path.lstrip("/")
        if "cpuacct" in controllers.split(","):
            for mount in dict.fromkeys((controllers, "cpuacct", "cpu,cpuacct", "cpuacct,cpu")):
                usage = _read_number(root / mount / relative / "cpuacct.usage")
                if usage is not None:
                    return usage / 1e9
        elif hierarchy == "0" and controllers == "":
            unified = relative
    if unified is not None:
        for base in (root, root / "unified"):
            try:
                text = (base / unified / "cpu.stat").read_text()
            except OSError:
                continue
            for stat_line in text.splitlines():
                key, _, value = stat_line.partition(" ")
                if key == "usage_usec" and value.strip().isdigit():
                    return int(value) / 1e6
    return None


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def read_net_bytes(proc: str | os.PathLike[str], pid: int) -> int | None:
    """Bytes received plus sent on every interface but ``lo`` in the namespace of ``pid``.

    None when the container shares our network namespace (``--network host``): the counters
    would be the whole host's, not evidence that the container does anything.
    """
    base = Path(proc)
    with contextlib.suppress(OSError):
        if (base / str(pid) / "ns" / "net").stat().st_ino == (
            base / "self" / "ns" / "net"
        ).stat().st_ino:
            return None
    try:
        lines = (base / str(pid) / "net" / "dev").read_text().splitlines()
    except OSError:
        return None
    total = 0
    for line in lines[2:]:  # two header lines
        name, _, counters = line.partition(":")
        fields = counters.split()
        if name.strip() == "lo" or len(fields) < 9:
            continue
        try:
            total += int(fields[0]) + int(fields[8])  # rx bytes, tx bytes
        except ValueError:
            continue
    return total


def read_keepalive(proc: str | os.PathLike[str], pid: int) -> float | None:
    """The mtime of ``/tmp/ds01-keepalive`` in the container of ``pid``, or None.

    Read through ``/proc/<pid>/root`` so it works without exec, even in containers that have
    no shell; the marker itself is never followed if it is a link.
    """
    try:
        tmp = open_container_tmp(proc, pid)
    except OSError:
        return None
    try:
        return os.stat(KEEPALIVE_FILE, dir_fd=tmp, follow_symlinks=False).st_mtime
    except OSError:
        return None
    finally:
        os.close(tmp)


def _is_process_of(proc: Path, pid: int, container_id: str) -> str | None:
    """The cgroup text of ``pid`` if it still belongs to the container (pids get reused)."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    return text if container_id in text else None


# ----------------------------------------------------------------------------- the loop


class Lifecycle:
    """Samples DS01 containers and applies the lifecycle rules; see the module docstring.

    ``policy_store``: an ``ds01d.policy_store.PolicyStore`` (re-read every sample, so a
    reload applies at the next one). ``broker``: the ``GpuBroker`` whose ``idle`` set is kept
    current, or None. ``nvml``: a pynvml-like module (a fake in tests); None uses the real one.
    ``audit``: anything with ``record(event, **fields)``; ``metrics``: a ``Metrics``.
    """

    def __init__(
        self,
        docker: DockerApi,
        policy_store: Any,
        broker: Any = None,
        *,
        clock: Callable[[], float] = time.time,
        nvml: Any = None,
        cgroup_root: str = "/sys/fs/cgroup",
        proc: str = "/proc",
        notifier: Notifier | None = None,
        audit: Any = None,
        metrics: Any = None,
        dry_run: bool = False,
        limits_for: Callable[[str, int | None], Limits] | None = None,
    ) -> None:
        self.docker = docker
        self.policy_store = policy_store
        self.broker = broker
        self.clock = clock
        self.nvml = nvml
        self.cgroup_root = cgroup_root
        self.proc = Path(proc)
        self.notifier = notifier if notifier is not None else Notifier(proc=proc, clock=clock)
        self.audit = audit
        self.metrics = metrics
        self.dry_run = dry_run
        if limits_for is None:
            limits_for = getattr(broker, "limits_for", None) or self._limits_for
        self.limits_for = limits_for
        self.high_demand = False
        self._infos: dict[str, ContainerInfo] = {}
        self._trackers: dict[str, Tracker] = {}
        self._keepalives: dict[str, float] = {}
        self._pending: dict[str, asyncio.Task[None]] = {}  # stops and removals under way
        self._reported: set[tuple[str, str, float | None]] = set()  # dry run: said once
        self._document: Any = None
        self._settings = Settings()

    # ---- what the rest of ds01d calls ----------------------------------------------------

    async def run(self) -> None:
        """Sample and act every ``sample_interval`` until cancelled; errors are logged."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # dockerd restarting, a policy mid-reload...
                log.warning("lifecycle sample failed, trying again next interval: %s", exc)
            elapsed = loop.time() - started
            await asyncio.sleep(max(0.0, self.settings().sample_interval - elapsed))

    def keepalive(self, container_id: str) -> None:
        """``ds01 keepalive``: count the container as active from now (up to keepalive_max)."""
        self._keepalives[container_id] = self.clock()

    def status(self, container_id: str) -> dict[str, Any] | None:
        """Idle time, runtime, when and why it will be stopped or removed, recent warnings.

        None for a container the loop has not seen yet (created since the last sample).
        """
        info = self._infos.get(container_id)
        if info is None:
            return None
        try:
            limits = self.limits_for(info.user, info.uid)
        except Exception:  # `ds01 ps` must still list the container
            log.exception("lifecycle: no limits for %s of %s", info.short, info.user)
            return None
        out = describe(
            info,
            self._trackers.get(container_id),
            limits,
            self.settings(),
            self.clock(),
            self.high_demand,
        )
        out["warnings"] = [asdict(n) for n in self.notifier.recent(container_id)]
        out["dry_run"] = self.dry_run
        return out

    def status_for_user(self, user: str) -> list[dict[str, Any]]:
        """``status`` of each of ``user``'s containers the loop knows."""
        rows = (self.status(cid) for cid, info in self._infos.items() if info.user == user)
        return [row for row in rows if row is not None]

    def settings(self) -> Settings:
        document = self.policy_store.document
        if document is not self._document:  # parse once per policy (re)load
            self._settings = settings_from_policy(document.data)
            self._document = document
        return self._settings

    async def drain(self) -> None:
        """Wait for the stops and removals under way (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending.values()), return_exceptions=True)

    # ---- one sample ----------------------------------------------------------------------

    async def tick(self) -> list[Action]:
        """List, sample, evaluate and act once; the actions taken (or, dry run, reported)."""
        settings = self.settings()
        listed = await self.docker.list_containers({"label": [LABEL_USER]})
        infos = await self._inspect_all(entry.get("Id", "") for entry in listed)
        if self.metrics is not None:  # ds01_containers: DS01's containers per owner and state
            self.metrics.set_containers([{"user": i.user, "state": i.state} for i in infos])
        self.high_demand = self._demand(settings)
        samples = await self._sample_all([i for i in infos if i.state == "running"])
        now = self.clock()
        taken: list[Action] = []
        for info in infos:
            if info.id in self._pending:
                continue  # being stopped or removed: judge it again once that is done
            try:
                limits = self.limits_for(info.user, info.uid)
                tracker, actions = evaluate(
                    info,
                    self._trackers.get(info.id),
                    samples.get(info.id),
                    limits,
                    settings,
                    now,
                    self.high_demand,
                )
                self._trackers[info.id] = tracker
                for action in actions:
                    if self._apply(info, action, settings):
                        taken.append(action)
            except Exception:  # one container must never take the loop down
                log.exception("lifecycle: cannot evaluate container %s", info.id[:12])
        self._infos = {info.id: info for info in infos}
        self._forget_vanished()
        self._report_idle(settings, now)
        return taken

    async def _inspect_all(self, ids: Iterable[str]) -> list[ContainerInfo]:
        limit = asyncio.Semaphore(INSPECT_CONCURRENCY)

        async def one(container_id: str) -> ContainerInfo | None:
            async with limit:
                try:
                    found = await self.docker.inspect_container(container_id)
                except DockerError as exc:
                    log.warning("lifecycle: cannot inspect %s: %s", container_id[:12], exc)
                    return None
            return container_info(found) if found else None

        found = await asyncio.gather(*(one(i) for i in ids if i))
        return [info for info in found if info is not None and info.user]

    async def _sample_all(self, running: list[ContainerInfo]) -> dict[str, Sample]:
        devices = sorted({uuid for info in running for uuid in info.devices})
        usage = await asyncio.to_thread(nvml_usage, devices, self.nvml) if devices else {}
        # File reads of /proc and cgroupfs are quick, but a thread keeps the loop responsive
        # when there are hundreds of containers.
        return await asyncio.to_thread(self._read_samples, running, usage)

    def _read_samples(
        self, running: list[ContainerInfo], usage: dict[str, Any]
    ) -> dict[str, Sample]:
        samples = {}
        for info in running:
            try:
                sample = self._read_sample(info, usage)
            except Exception:
                log.exception("lifecycle: cannot sample container %s", info.id[:12])
                continue
            if sample is not None:
                samples[info.id] = sample
        return samples

    def _read_sample(self, info: ContainerInfo, usage: dict[str, Any]) -> Sample | None:
        if info.pid is None:
            return None
        cgroup_file = _is_process_of(self.proc, info.pid, info.id)
        if cgroup_file is None:
            return None  # it stopped (or restarted) since we inspected it
        marker = read_keepalive(self.proc, info.pid)
        called = self._keepalives.get(info.id)
        keepalive = max((t for t in (marker, called) if t is not None), default=None)
        busy = None
        if info.has_gpu:
            threshold = self.limits_for(info.user, info.uid).idle_gpu_percent
            busy = gpu_busy(
                (
                    (u.processes, u.gpu_util) if (u := usage.get(uuid)) else (None, None)
                    for uuid in info.devices
                ),
                threshold,
            )
        return Sample(
            container_id=info.id,
            at=self.clock(),
            cpu_seconds=read_cpu_seconds(cgroup_file, self.cgroup_root),
            net_bytes=read_net_bytes(self.proc, info.pid),
            gpu_busy=busy,
            keepalive_at=keepalive,
        )

    def _demand(self, settings: Settings) -> bool:
        """Whether the share of GPU-equivalents allocated reaches high_demand_threshold.

        Weighted by GPU-equivalents: seven 1g MIG slices held are one GPU's worth, not seven.
        """
        if self.broker is None or settings.high_demand_threshold is None:
            return False
        try:
            devices = [s for s in self.broker.ledger.snapshot().devices if s.device is not None]
        except Exception:
            log.exception("lifecycle: cannot read the GPU ledger")
            return False
        total = sum(s.device.gpueq for s in devices)
        allocated = sum(s.device.gpueq for s in devices if s.allocation is not None)
        return is_high_demand(allocated, total, settings)

    # ---- acting --------------------------------------------------------------------------

    def _apply(self, info: ContainerInfo, action: Action, settings: Settings) -> bool:
        """Carry out one action (stops and removals in the background); False if skipped."""
        kind = _kind(action)
        if self.dry_run:
            level = action.level if isinstance(action, Warn) else ""
            key = (info.id, f"{kind}:{action.reason}:{level}", info.started_at)
            if key in self._reported:
                return False  # the rules say it again every sample; report it once
            self._reported.add(key)
            log.warning(
                "dry run: would %s %s (%s): %s", kind, info.short, info.user, action.message
            )
            self._audit(kind, info, action, "dry_run")
            return True
        if isinstance(action, Warn):
            log.info("warning %s (%s): %s", info.short, info.user, action.message)
            self.notifier.notify(action, user=info.user, uid=self._uid(info), pid=info.pid)
            self._audit("warn", info, action, "ok")
            self._count("warn", action.reason)
            return True
        # Tell the user before the container (and with it the notice file) goes away.
        self.notifier.notify(action, user=info.user, uid=self._uid(info), pid=info.pid)
        if isinstance(action, Stop):
            work = self._stop(info, action, settings)
        else:
            work = self._remove(info, action)
        task = asyncio.create_task(work, name=f"ds01-lifecycle-{kind}-{info.short}")
        self._pending[info.id] = task
        task.add_done_callback(partial(self._done, info.id))
        return True

    def _done(self, container_id: str, _task: asyncio.Task[None]) -> None:
        self._pending.pop(container_id, None)

    async def _stop(self, info: ContainerInfo, action: Stop, settings: Settings) -> None:
        log.warning("stopping %s (%s): %s", info.short, info.user, action.message)
        stopping = stop_container(self.docker, info.id, settings.stop_grace)
        await self._act("stop", stopping, info, action)

    async def _remove(self, info: ContainerInfo, action: Remove) -> None:
        log.warning("removing %s (%s): %s", info.short, info.user, action.message)
        # v=0: anonymous volumes may hold the user's data; removing those is their call.
        params = {"force": "1", "v": "0"}
        removing = self.docker.request("DELETE", f"/containers/{info.id}", params=params)
        await self._act("remove", removing, info, action)

    async def _act(
        self,
        kind: str,
        call: Awaitable[Any],
        info: ContainerInfo,
        action: Stop | Remove,
    ) -> None:
        """One stop or removal, audited and counted; a container already gone is done."""
        try:
            await call
        except Exception as exc:
            if not (isinstance(exc, DockerError) and exc.status == 404):
                log.error("could not %s %s: %s", kind, info.short, exc)
                self._audit(kind, info, action, "error", error=str(exc))
                return
        self._audit(kind, info, action, "ok")
        self._count(kind, action.reason)

    def _audit(
        self, event: str, info: ContainerInfo, action: Action, result: str, **extra: Any
    ) -> None:
        if self.audit is None:
            return
        fields: dict[str, Any] = {
            "user": info.user,
            "uid": info.uid,
            "container": info.id,
            "result": result,
            "reason": action.reason,
            "message": action.message,
            "name": info.name,
            **extra,
        }
        if isinstance(action, Warn):
            fields.update(level=action.level, stop_at=action.stop_at)
        try:
            self.audit.record(event, **fields)
        except Exception:
            log.exception("lifecycle: cannot write the audit log")

    def _count(self, action: str, reason: str) -> None:
        if self.metrics is None:
            return
        record = getattr(self.metrics, "record_lifecycle", None) or getattr(
            self.metrics, "lifecycle_action", None
        )
        if record is not None:
            try:
                record(action, reason)
            except Exception:
                log.exception("lifecycle: cannot record a metric")

    # ---- bookkeeping ---------------------------------------------------------------------

    def _forget_vanished(self) -> None:
        for store in (self._trackers, self._keepalives):
            for container_id in set(store) - set(self._infos):
                del store[container_id]
        for container_id in self.notifier.known() - set(self._infos):
            self.notifier.forget(container_id)
        self._reported = {key for key in self._reported if key[0] in self._infos}

    def _report_idle(self, settings: Settings, now: float) -> None:
        """Tell the broker which running containers are idle (and not exempt): preemptable."""
        if self.broker is None:
            return
        idle = {
            cid
            for cid, info in self._infos.items()
            if info.state == "running"
            and (tracker := self._trackers.get(cid)) is not None
            and tracker.idle_since is not None
            and settings.exemption(info.user, "idle", now) is None
        }
        # In place: the broker (and its preemption plan) holds a reference to this set.
        self.broker.idle.clear()
        self.broker.idle.update(idle)

    def _uid(self, info: ContainerInfo) -> int | None:
        if info.uid is not None:
            return info.uid
        try:
            return pwd.getpwnam(info.user).pw_uid
        except KeyError:
            return None

    def _limits_for(self, user: str, uid: int | None) -> Limits:
        limits: Limits = self.policy_store.limits_for_user(user, uid)
        return limits


def _kind(action: Action) -> str:
    if isinstance(action, Warn):
        return "warn"
    return "stop" if isinstance(action, Stop) else "remove"
