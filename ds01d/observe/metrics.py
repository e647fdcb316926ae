"""Prometheus metrics for ds01d, on an injectable registry, and the aiohttp ``/metrics`` app.

Events (decisions, lifecycle actions, reloads, audit drops) are counters and histograms that
callers bump. Current state (devices, holders, GPU-equivalents, containers, policy) is set
from plain-data snapshots (lists of dicts, shapes documented on each setter) and exported by a
custom collector, so a scrape always sees one whole snapshot and this module never imports
the allocator. Label values that come from requests are bounded: endpoints are route
templates, and every open-ended label keeps at most ``max_label_values`` distinct values, the
rest become ``other``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from importlib import metadata
from typing import NotRequired, TypedDict

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ds01d.observe.loop_metrics import LoopCounter, LoopHistogram

log = logging.getLogger("ds01.metrics")

DOORS = ("authz", "gateway")
DEVICE_STATES = ("free", "reserved", "allocated", "held", "unusable")
DEVICE_KINDS = ("gpu", "mig")
LIFECYCLE_ACTIONS = ("warn", "stop", "remove")
HOLDING_STATES = ("reserved", "allocated", "held")
OTHER = "other"

# A decision takes well under a millisecond; a create that asks dockerd or waits on a lock
# can take seconds. Twelve buckets from 100 µs to 10 s keep both ends visible.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0)
# Queue waits are seconds to hours (a GPU frees up when someone's job ends).
QUEUE_WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)


class DeviceRow(TypedDict):
    """One allocatable device in a ``set_devices`` snapshot.

    ``device``: a stable name, the UUID (``GPU-…``/``MIG-…``); ``kind``: ``gpu`` or ``mig``;
    ``state``: one of ``DEVICE_STATES``; ``profile``: the MIG profile (``1g.18gb``) or the GPU
    model; ``user``/``container``: the holder while reserved, allocated or held (``container``
    is the name, or None while only reserved).
    """

    device: str
    kind: str
    state: str
    profile: NotRequired[str]
    user: NotRequired[str | None]
    container: NotRequired[str | None]


class UsageRow(TypedDict):
    """One user in a ``set_gpu_usage`` snapshot: GPU-equivalents they hold now."""

    user: str
    group: str
    gpu_equivalents: float


class ContainerRow(TypedDict):
    """One container in a ``set_containers`` snapshot; ``state`` is Docker's State.Status."""

    user: str
    state: str


class _Bounded:
    """Caps the distinct values one label takes; values past the cap are reported as ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        value = value or "unknown"
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self.limit:
                return OTHER
            self._seen.add(value)
            return value


_warned: set[tuple[str, str]] = set()


def _enum(value: str | None, allowed: tuple[str, ...], what: str) -> str:
    # Metrics must never break the request that reports them: a bad value is counted as
    # "other" and logged once, instead of raising.
    if value in allowed:
        return value
    if (what, str(value)) not in _warned:
        _warned.add((what, str(value)))
        log.warning("metrics: %s %r is not one of %s; counted as %r", what, value, allowed, OTHER)
    return OTHER


def _endpoint(value: str | None) -> str:
    # A route template starts with "/"; anything else (a bare path fragment, a method...) is a
    # caller's mistake and would only add series.
    return value if value and value.startswith("/") else "unrouted"


class _Snapshot:
    """The latest snapshots, replaced whole under a lock and read by the collector."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.devices: dict[tuple[str, str], int] | None = None  # None: no snapshot yet
        self.holders: list[tuple[str, ...]] = []
        self.usage: dict[tuple[str, str], float] = {}
        self.containers: dict[tuple[str, str], int] = {}
        self.policy: tuple[str, str] | None = None


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: _Snapshot) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return self._families(_Snapshot())

    def collect(self) -> Iterable[Metric]:
        return self._families(self.snapshot)

    def _families(self, s: _Snapshot) -> list[Metric]:
        with s.lock:  # the setters replace whole dicts, so this is a consistent view
            devices, holders, usage = s.devices, s.holders, s.usage
            containers, policy = s.containers, s.policy
        dev = GaugeMetricFamily(
            "ds01_devices", "Allocatable devices by state and kind.", labels=["state", "kind"]
        )
        if devices is not None:
            # Every known combination is exported, zeros too, so panels never go blank.
            for state in (*DEVICE_STATES, OTHER):
                for kind in (*DEVICE_KINDS, OTHER):
                    count = devices.get((state, kind), 0)
                    if count or (state != OTHER and kind != OTHER):
                        dev.add_metric([state, kind], count)
        holder = GaugeMetricFamily(
            "ds01_device_holder_info",
            "1 for each device someone holds (reserved, allocated, or held after a stop).",
            labels=["device", "kind", "profile", "user", "container", "state"],
        )
        for labels in holders:
            holder.add_metric(list(labels), 1)
        eq = GaugeMetricFamily(
            "ds01_gpu_equivalents_held",
            "GPU-equivalents held per user (a whole GPU is 1, a MIG instance its share).",
            labels=["user", "group"],
        )
        for (user, group), value in sorted(usage.items()):
            eq.add_metric([user, group], value)
        ctr = GaugeMetricFamily(
            "ds01_containers", "Containers per owner by Docker state.", labels=["user", "state"]
        )
        for (user, state), count in sorted(containers.items()):
            ctr.add_metric([user, state], count)
        pol = GaugeMetricFamily(
            "ds01_policy_info",
            "The policy in force: its file and SHA-256.",
            labels=["source", "sha256"],
        )
        if policy is not None:
            pol.add_metric(list(policy), 1)
        return [dev, holder, eq, ctr, pol]


class Metrics:
    """Every ds01 metric, registered on ``registry`` (a fresh one unless given)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        version: str | None = None,
        max_label_values: int = 200,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._endpoints = _Bounded(max_label_values)
        self._reasons = _Bounded(max_label_values)
        # Counted on every request at both doors: updated from the event loop alone
        # (loop_metrics.py), each label set bounded once and remembered.
        self._decision_labels: dict[tuple[str, str, bool, str], tuple[str, ...]] = {}
        self._latency_labels: dict[tuple[str, str], str] = {}
        self._lifecycle_reasons = _Bounded(max_label_values)
        self.decisions = LoopCounter(
            "ds01_decisions_total",
            "Decisions by front door, route template, result and reason code.",
            ["door", "endpoint", "result", "reason"],
        )
        self.authz_duration = LoopHistogram(
            "ds01_authz_request_duration_seconds",
            "Time ds01d takes to answer one AuthZ call from dockerd (request or response "
            "phase; direct access, gateway tickets and ds01d's own calls alike).",
            "endpoint",
            LATENCY_BUCKETS,
        )
        self.gateway_duration = LoopHistogram(
            "ds01_gateway_request_duration_seconds",
            "Time ds01d takes to decide one gateway request: looking up the objects it names "
            "and applying the policy (not the GPU queue, forwarding, or dockerd's own work).",
            "endpoint",
            LATENCY_BUCKETS,
        )
        for collector in (self.decisions, self.authz_duration, self.gateway_duration):
            r.register(collector)
        self.queue_length = Gauge(
            "ds01_queue_length", "GPU requests waiting in the queue.", registry=r
        )
        self.queue_wait = Histogram(
            "ds01_queue_wait_seconds",
            "How long a GPU request waited in the queue before it was served or gave up.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.lifecycle_actions = Counter(
            "ds01_lifecycle_actions_total",
            "Lifecycle actions (warn, stop, remove) by reason (idle, max_runtime...).",
            ["action", "reason"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "ds01_policy_reloads_total", "Policy reloads by result.", ["result"], registry=r
        )
        self.audit_dropped_total = Counter(
            "ds01_audit_dropped_total",
            "Audit events dropped because the queue or the disk was full.",
            registry=r,
        )
        self.build_info = Gauge(
            "ds01_build_info", "The running ds01 version.", ["version"], registry=r
        )
        # Known label values start at zero, so rate() and increase() work from the first scrape.
        for result in ("ok", "error"):
            self.policy_reloads.labels(result=result)
        self.build_info.labels(version=version or _version()).set(1)
        self._snapshot = _Snapshot()
        r.register(_SnapshotCollector(self._snapshot))

    # -- events ------------------------------------------------------------------------------

    def record_decision(
        self,
        door: str,
        endpoint: str,
        allowed: bool,
        reason: str,
        seconds: float | None = None,
    ) -> None:
        """Count one decision; with ``seconds``, also observe that door's latency histogram.

        ``endpoint`` is the route template (``/containers/{id}/start``), never a raw path;
        ``reason`` is the decision's stable code (``ok`` for a plain allow).
        """
        key = (door, endpoint, allowed, reason)
        labels = self._decision_labels.get(key)
        if labels is None:
            if len(self._decision_labels) > 10_000:
                self._decision_labels.clear()
            labels = self._decision_labels[key] = (
                _enum(door, DOORS, "door"),
                self._endpoints(_endpoint(endpoint)),
                "allow" if allowed else "deny",
                self._reasons(reason or "ok"),
            )
        self.decisions.inc(labels)
        if seconds is not None:
            self.observe_latency(door, endpoint, seconds)

    def observe_latency(self, door: str, endpoint: str, seconds: float) -> None:
        """Observe one request's duration at the AuthZ plugin or the gateway."""
        key = (door, endpoint)
        label = self._latency_labels.get(key)
        if label is None:
            if len(self._latency_labels) > 10_000:
                self._latency_labels.clear()
            label = self._latency_labels[key] = self._endpoints(_endpoint(endpoint))
        histogram = self.authz_duration if door == "authz" else self.gateway_duration
        histogram.observe(label, seconds)

    def observe_queue_wait(self, seconds: float) -> None:
        """A GPU request left the queue (served, timed out or cancelled) after ``seconds``."""
        self.queue_wait.observe(max(0.0, seconds))

    def set_queue_length(self, length: int) -> None:
        self.queue_length.set(length)

    def record_lifecycle(self, action: str, reason: str) -> None:
        """Count a lifecycle ``warn``, ``stop`` or ``remove`` with its reason (``idle`` ...)."""
        self.lifecycle_actions.labels(
            action=_enum(action, LIFECYCLE_ACTIONS, "lifecycle action"),
            reason=self._lifecycle_reasons(reason),
        ).inc()

    def record_policy_reload(self, ok: bool) -> None:
        self.policy_reloads.labels(result="ok" if ok else "error").inc()

    def audit_dropped(self, count: int = 1) -> None:
        """The audit log dropped ``count`` events (pass as ``AuditLog(on_drop=...)``)."""
        self.audit_dropped_total.inc(count)

    # -- snapshots of current state ----------------------------------------------------------

    def set_devices(self, devices: Iterable[DeviceRow]) -> None:
        """Replace the device snapshot: feeds ``ds01_devices`` and ``ds01_device_holder_info``.

        ``devices``: one ``DeviceRow`` per allocatable device, e.g.
        ``{"device": "MIG-1a2b…", "kind": "mig", "state": "allocated", "profile": "1g.18gb",
        "user": "alice", "container": "train"}``. Holder rows are exported for the states
        reserved, allocated and held when ``user`` is set.
        """
        counts: Tally[tuple[str, str]] = Tally()
        holders: list[tuple[str, ...]] = []
        for row in devices:
            state = _enum(row["state"], DEVICE_STATES, "device state")
            kind = _enum(row["kind"], DEVICE_KINDS, "device kind")
            counts[(state, kind)] += 1
            user = row.get("user")
            if state in HOLDING_STATES and user:
                profile, container = row.get("profile") or "", row.get("container") or ""
                holders.append((row["device"], kind, profile, user, container, state))
        with self._snapshot.lock:
            self._snapshot.devices = dict(counts)
            self._snapshot.holders = sorted(holders)

    def set_gpu_usage(self, usage: Iterable[UsageRow]) -> None:
        """Replace ``ds01_gpu_equivalents_held``: one ``UsageRow`` per user holding anything.

        e.g. ``[{"user": "alice", "group": "students", "gpu_equivalents": 0.286}]``; users
        listed twice are summed; users left out are exported as absent (= 0).
        """
        held: dict[tuple[str, str], float] = {}
        for row in usage:
            key = (row["user"], row.get("group") or "default")
            held[key] = held.get(key, 0.0) + float(row["gpu_equivalents"])
        with self._snapshot.lock:
            self._snapshot.usage = held

    def set_containers(self, containers: Iterable[ContainerRow]) -> None:
        """Replace ``ds01_containers``: one ``ContainerRow`` per container DS01 knows.

        e.g. ``[{"user": "alice", "state": "running"}, {"user": "alice", "state": "exited"}]``;
        they are counted per (user, state).
        """
        counts: Tally[tuple[str, str]] = Tally(
            (row["user"] or "unknown", row["state"] or "unknown") for row in containers
        )
        with self._snapshot.lock:
            self._snapshot.containers = dict(counts)

    def set_policy(self, source: str, sha256: str) -> None:
        """The policy now in force (``ds01_policy_info``), after a successful load."""
        with self._snapshot.lock:
            self._snapshot.policy = (source, sha256)

    # -- introspection -----------------------------------------------------------------------

    def metric_names(self) -> frozenset[str]:
        """Every sample name a scrape can contain (with ``_total``, ``_bucket``... suffixes)."""
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"),
            "info": ("_info",),
        }
        names: set[str] = set()
        for family in self.registry.collect():
            for suffix in suffixes.get(family.type, ("",)):
                names.add(family.name + suffix)
        return frozenset(names)


def _version() -> str:
    try:
        return metadata.version("ds01")
    except metadata.PackageNotFoundError:
        return "unknown"


# -- serving -----------------------------------------------------------------------------------


async def metrics_app(metrics: Metrics) -> web.Application:
    """An aiohttp app serving ``GET /metrics`` from ``metrics.registry``."""

    async def handle(request: web.Request) -> web.Response:
        # The client library picks the format (classic text, or OpenMetrics when asked for).
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(metrics.registry), headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app


def parse_address(address: str) -> tuple[str, int] | str:
    """``HOST:PORT``, ``[v6]:PORT``, ``:PORT`` (all interfaces) or ``unix:/path``.

    Returns ``(host, port)`` or the unix socket path; raises ValueError with what was expected.
    """
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if not path.startswith("/"):
            raise ValueError(f"{address!r}: a unix socket address is unix:/absolute/path")
        return path
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT (e.g. 127.0.0.1:9401)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return (host or "0.0.0.0", int(port))


async def serve_metrics(metrics: Metrics, address: str) -> web.AppRunner:
    """Serve ``/metrics`` on ``address`` (``parse_address``); stop with ``runner.cleanup()``."""
    where = parse_address(address)
    runner = web.AppRunner(await metrics_app(metrics), access_log=None)
    await runner.setup()
    site: web.BaseSite
    if isinstance(where, str):
        site = web.UnixSite(runner, where)
    else:
        site = web.TCPSite(runner, where[0], where[1])
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def iter_samples(metrics: Metrics) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample now (for ``ds01 status`` without HTTP)."""
    for family in metrics.registry.collect():
        for sample in family.samples:
            yield sample.name, dict(sample.labels), sample.value
