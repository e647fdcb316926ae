"""``ds01d``: the AuthZ plugin, the gateway, the GPU broker and the lifecycle loops in one process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from allocator.inventory import InventoryError
from allocator.ledger import Ledger
from authz_plugin.server import PluginServer
from ds01d.docker_client import DockerClient, socket_path, stop_container
from ds01d.events import EventWatcher
from ds01d.gpus import GpuBroker
from ds01d.host.cgroups import CgroupfsManager, SystemdSliceManager, UserCgroups
from ds01d.host.dcgm_mapping import JobMappingDir
from ds01d.host.nvml import load_inventory
from ds01d.identities import is_unix_user
from ds01d.image_owners import FILE_NAME as IMAGE_OWNERS_FILE
from ds01d.image_owners import ImageOwners
from ds01d.lifecycle.loop import Lifecycle
from ds01d.observe.audit import AuditLog
from ds01d.observe.metrics import Metrics, serve_metrics
from ds01d.observe.recorder import Recorder
from ds01d.policy_store import PolicyStore
from ds01d.ports import CgroupBackend, DockerApi
from ds01d.service import Service
from gateway import limits as gl
from policy.build_cgroup import dockerd_cgroup_parent
from policy.gpu_audiences import gpu_audiences
from policy.lifecycle import effective, kind_of, settings_from_policy
from policy.limits import build_cap
from policy.loader import PolicyError

if TYPE_CHECKING:  # imported where the gateway starts: only when it is enabled
    from gateway.server import Gateway

log = logging.getLogger("ds01d")
_T = TypeVar("_T")

DEFAULT_PLUGIN_SOCKET = "/run/docker/plugins/ds01.sock"
POLICY_POLL_SECONDS = 2.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ds01d", description=__doc__)
    p.add_argument("--policy", help="policy YAML (default: the built-in default policy)")
    p.add_argument("--plugin-socket", default=DEFAULT_PLUGIN_SOCKET, help="AuthZ plugin socket")
    p.add_argument("--gateway-socket", help="serve the Docker API here (e.g. /var/run/docker.sock)")
    p.add_argument(
        "--gateway-mode", default="0666", help="permissions of the gateway socket (octal)"
    )
    p.add_argument(
        "--docker-host", default="unix:///run/ds01/dockerd.sock", help="the real dockerd"
    )
    _gateway_limit_flags(p)
    p.add_argument("--state-dir", default="/var/lib/ds01", help="audit log, job mapping, state")
    p.add_argument("--inventory", default="auto", help="GPU inventory: FILE, auto (NVML) or none")
    p.add_argument("--metrics-address", help="serve Prometheus /metrics on HOST:PORT")
    p.add_argument("--audit-log", help="audit log file (default: STATE_DIR/audit.jsonl)")
    p.add_argument(
        "--job-mapping-dir",
        help="dcgm-exporter --hpc-job-mapping-dir to keep (default: STATE_DIR/job-mapping)",
    )
    p.add_argument("--cgroup-driver", choices=["cgroupfs", "systemd"], help="default: dockerd's")
    p.add_argument(
        "--no-cgroups", action="store_true", help="do not manage per-user parent cgroups"
    )
    p.add_argument(
        "--build-cgroup-parent",
        help="dockerd's cgroup-parent, below which BuildKit runs every build "
        "(default: /ds01-builds, or ds01_builds.slice with the systemd driver)",
    )
    p.add_argument("--dry-run", action="store_true", help="lifecycle: report, stop nothing")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def _gateway_limit_flags(p: argparse.ArgumentParser) -> None:
    """What one gateway client may hold (README: "What one user cannot exhaust")."""
    g = p.add_argument_group("gateway limits")
    g.add_argument(
        "--gateway-max-per-user",
        type=int,
        default=gl.PER_UID_CONNECTIONS,
        help="open gateway connections per uid (default %(default)s)",
    )
    g.add_argument(
        "--gateway-max-root",
        type=int,
        default=gl.ROOT_CONNECTIONS,
        help="open gateway connections for uid 0 (default %(default)s)",
    )
    g.add_argument(
        "--gateway-max-connections",
        type=int,
        help="gateway connections in all (default: (open-file limit - reserve) / 2)",
    )
    g.add_argument(
        "--gateway-fd-reserve",
        type=int,
        default=gl.FD_RESERVE,
        help="file descriptors kept free for the plugin and ds01d's own work (%(default)s)",
    )
    g.add_argument(
        "--gateway-head-timeout",
        type=float,
        default=gl.HEAD_TIMEOUT_S,
        help="seconds to send a whole request head (default %(default)s)",
    )
    g.add_argument(
        "--gateway-idle-timeout",
        type=float,
        default=gl.IDLE_TIMEOUT_S,
        help="seconds a keep-alive connection may wait between requests (%(default)s)",
    )
    g.add_argument(
        "--gateway-body-timeout",
        type=float,
        default=gl.BODY_STALL_S,
        help="seconds a request body may pause before it is aborted (%(default)s)",
    )
    g.add_argument(
        "--gateway-body-budget",
        type=int,
        default=gl.BODY_BYTES_PER_UID,
        help="bytes of unfinished buffered request bodies per uid (default %(default)s)",
    )
    g.add_argument(
        "--gateway-discard-bytes",
        type=int,
        default=gl.DISCARD_BYTES,
        help="bytes of a refused upload read and dropped before closing (default %(default)s)",
    )
    g.add_argument(
        "--gateway-discard-time",
        type=float,
        default=gl.DISCARD_S,
        help="seconds a refused upload is read and dropped before closing (%(default)s)",
    )


def gateway_limits(args: argparse.Namespace) -> gl.GatewayLimits:
    """The gateway's limits from ds01d's flags."""
    return gl.GatewayLimits(
        per_uid=args.gateway_max_per_user,
        root=args.gateway_max_root,
        total=args.gateway_max_connections,
        fd_reserve=args.gateway_fd_reserve,
        head_timeout=args.gateway_head_timeout,
        idle_timeout=args.gateway_idle_timeout,
        body_stall=args.gateway_body_timeout,
        body_bytes_per_uid=args.gateway_body_budget,
        discard_bytes=args.gateway_discard_bytes,
        discard_time=args.gateway_discard_time,
    )


class Daemon:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stopping = asyncio.Event()
        state_dir = Path(args.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics()
        self.audit = AuditLog(
            args.audit_log or state_dir / "audit.jsonl", on_drop=self.metrics.audit_dropped
        )
        self.recorder = Recorder(
            self.metrics,
            self.audit,
            JobMappingDir(args.job_mapping_dir or state_dir / "job-mapping"),
        )
        self.policy = PolicyStore(args.policy, on_reload=self._policy_reloaded)
        self.metrics.set_policy(self.policy.document.source, self.policy.sha256)
        self.docker: DockerApi = DockerClient(args.docker_host)
        self.inventory = load_inventory(args.inventory)
        for problem in self.inventory.problems:
            log.warning("GPU inventory: %s", problem)
        self.broker = GpuBroker(
            Ledger(self.inventory),
            limits_for=self.policy.limits_for_user,
            clock=time.time,
            stop_container=self._stop_container,
        )
        self.broker.on_change = lambda: self.recorder.gpu_state(
            self.broker.ledger, len(self.broker.queue)
        )
        self.broker.record = self.recorder.event
        self.broker.on_wait_end = self.metrics.observe_queue_wait
        self.broker.hold_after_stop = self._gpu_hold_after_stop
        # Refusals name the holding containers, their state and when their holds end.
        self.broker.inspect = self.docker.inspect_container
        self.broker.created_timeout = lambda: (
            settings_from_policy(self.policy.document.data).created_timeout
        )
        self.broker.ledger.audiences = gpu_audiences(self.policy.document)  # who may use what
        self.cgroups: CgroupBackend | None = None if args.no_cgroups else self._cgroups(args)
        if self.cgroups is not None:  # BuildKit's shared cgroup holds the policy's builds cap
            self.cgroups.ensure_builds(build_cap(self.policy.document))
        self.service = Service(
            self.policy,
            self.docker,
            gpus=self.broker,
            cgroups=self.cgroups,
            recorder=self.recorder,
            cgroup_driver=args.cgroup_driver or self.policy.cgroup_driver,
            protected_paths=self._protected_paths(),
            realpath=os.path.realpath,
            exists=os.path.exists,
            is_user=is_unix_user,
        )
        self.service.image_owners = ImageOwners(state_dir / IMAGE_OWNERS_FILE)
        self.events = EventWatcher(self.docker, self.broker, time.time)
        self.lifecycle = Lifecycle(
            self.docker,
            self.policy,
            self.broker,
            audit=self.audit,
            metrics=self.metrics,
            dry_run=args.dry_run,
            limits_for=self.policy.limits_for_user,
        )
        self.runners: list[web.AppRunner] = []
        self.plugin: PluginServer | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.gateway: Gateway | None = None

    def _cgroups(self, args: argparse.Namespace) -> UserCgroups:
        driver = args.cgroup_driver or self.policy.cgroup_driver
        build_parent = args.build_cgroup_parent or dockerd_cgroup_parent(driver)
        if driver == "systemd":
            return UserCgroups(SystemdSliceManager(build_slice=build_parent))
        return UserCgroups(CgroupfsManager(build_parent=build_parent))

    def _policy_reloaded(self, ok: bool, detail: str) -> None:
        self.metrics.record_policy_reload(ok)
        self.recorder.event(
            "policy_reload",
            user=None,
            uid=None,
            result="ok" if ok else "error",
            reason=None if ok else detail,
        )
        if ok:
            self.metrics.set_policy(self.policy.document.source, detail)
            if getattr(self, "broker", None) is not None:  # placement follows the new groups
                self.broker.ledger.audiences = gpu_audiences(self.policy.document)
            # Not yet set while __init__ loads the policy the first time.
            cgroups: CgroupBackend | None = getattr(self, "cgroups", None)
            if cgroups is not None:  # new limits, containers keep running
                cgroups.refresh(self.policy.limits_for_user)
                cgroups.ensure_builds(build_cap(self.policy.document))

    def _gpu_hold_after_stop(
        self, user: str, uid: int | None, labels: dict[str, str]
    ) -> float | None:
        settings = settings_from_policy(self.policy.document.data)
        return effective(self.policy.limits_for_user(user, uid), settings, kind_of(labels))[
            "gpu_hold_after_stop"
        ]

    async def _stop_container(self, container_id: str, why: str) -> None:
        log.warning("stopping %s: %s", container_id[:12], why)
        grace = settings_from_policy(self.policy.document.data).stop_grace  # as the lifecycle
        await stop_container(self.docker, container_id, grace)

    def _protected_paths(self) -> tuple[str, ...]:
        paths = {
            "/var/run/docker.sock",
            "/run/docker.sock",
            "/run/docker/plugins",
            "/run/ds01",
            "/var/run/ds01",
            socket_path(self.args.docker_host),
            self.args.plugin_socket,
        }
        if self.args.gateway_socket:
            paths.add(self.args.gateway_socket)
        return tuple(sorted(paths))

    async def start(self) -> None:
        timed = self.recorder.timed_authz
        # The response phase only finishes a ticket (by its header): dockerd's answer, in
        # ResponseBody, is neither decoded nor read.
        self.plugin = PluginServer(
            timed(self.service.authz_request),
            timed(self.service.authz_response),
            read_answer=False,
        )
        await self.plugin.start(self.args.plugin_socket, 0o660)
        log.info("AuthZ plugin listening on %s", self.args.plugin_socket)
        if self.args.gateway_socket:
            from ds01d.gateway_handler import GatewayHandler
            from gateway.server import Gateway

            handler = GatewayHandler(self.service, lifecycle=self.lifecycle)
            gateway = Gateway(
                handler, socket_path(self.args.docker_host), limits=gateway_limits(self.args)
            )
            self.gateway = gateway
            await gateway.start(self.args.gateway_socket, mode=int(self.args.gateway_mode, 8))
            limits = gateway.limits
            log.info(
                "gateway listening on %s -> %s; at most %d connections in all, %d per user "
                "(root %d); head %gs, idle %gs, body pause %gs",
                self.args.gateway_socket,
                self.args.docker_host,
                gateway.admission.total,
                limits.per_uid,
                limits.root,
                limits.head_timeout,
                limits.idle_timeout,
                limits.body_stall,
            )
        if self.args.metrics_address:
            self.runners.append(await serve_metrics(self.metrics, self.args.metrics_address))
            log.info("metrics on http://%s/metrics", self.args.metrics_address)
        self.broker.on_change()
        self.tasks.append(asyncio.create_task(self._watch_policy()))
        self.events.listeners.append(self.service.owners.on_event)
        self.tasks.append(asyncio.create_task(self._scan_owners()))
        self.tasks.append(asyncio.create_task(self.events.follow()))
        self.tasks.append(asyncio.create_task(self.events.periodic()))
        self.tasks.append(asyncio.create_task(self.lifecycle.run()))

    async def _scan_owners(self) -> None:
        """Verify every labelled container once dockerd answers, so that the first
        ``docker ps`` after a start lists them (ds01d/container_owners.py)."""
        await self.events.connected.wait()
        try:
            await self.service.owners.scan()
        except Exception as exc:  # each list then verifies what it meets
            log.warning("could not verify the containers' owners at start: %s", exc)

    async def _watch_policy(self) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(POLICY_POLL_SECONDS)
            if self.policy.changed_on_disk():
                self.policy.reload()

    async def stop(self) -> None:
        self.stopping.set()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.lifecycle.drain()  # stops and removals already under way finish
        if self.gateway is not None:
            await self.gateway.stop()
        if self.plugin is not None:
            await self.plugin.cleanup()
        for runner in self.runners:
            await runner.cleanup()
        await self.docker.close()
        self.audit.close()


async def run(args: argparse.Namespace) -> int:
    daemon = Daemon(args)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, daemon.policy.reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stopping.set)
    await daemon.start()
    await daemon.stopping.wait()
    log.info("stopping")
    await daemon.stop()
    return 0


def _run_event_loop(main_coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ds01d on uvloop when it is installed (it is a dependency), else on asyncio's loop.

    Every request through the gateway takes several event-loop turns (client, both AuthZ
    calls, dockerd's answer); uvloop makes each turn cheaper, about a tenth of ds01d's CPU.
    """
    try:
        import uvloop
    except ImportError:
        log.info("uvloop is not installed; using asyncio's event loop")
        return asyncio.run(main_coro)
    return uvloop.run(main_coro)


def _raise_open_file_limit() -> None:
    before, now, hard = gl.raise_nofile()
    if now != before:
        log.info("open-file limit raised from %d to %d (the hard limit)", before, now)
    else:
        log.info("open-file limit %d (hard limit %d)", now, hard)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    _raise_open_file_limit()
    try:
        return _run_event_loop(run(args))
    except PolicyError as exc:
        print(f"ds01d: invalid policy: {exc}", file=sys.stderr)
        return 2
    except InventoryError as exc:
        print(f"ds01d: invalid GPU inventory: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ds01d: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
